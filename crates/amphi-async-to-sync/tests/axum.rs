//! The axum example (`examples/axum.rs`, shown in the README) served on a loopback port and
//! called over HTTP/1.1 with hyper-util's client: blocking code on a plain thread and in
//! `spawn_blocking` tasks of handlers calling the app's async store, and the mistake of calling
//! it on the handler itself refused.

#[path = "../examples/axum.rs"]
#[allow(dead_code)]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use example::{app, import, invoice, Prices};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long a request may take before the test gives up (not a timing assert: a bound that
/// keeps a broken build from hanging).
const PATIENCE: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Serves `app(prices)` on 127.0.0.1:0 in the background; returns its address.
async fn serve(prices: Prices) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move { axum::serve(listener, app(prices)).await });
    addr
}

/// One request; the status and the body as text.
async fn call(
    client: &HttpClient,
    method: Method,
    uri: String,
    body: &str,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("a valid request");
    let resp = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("an answer in time")
        .expect("the request went through");
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
    )
}

/// As the example's `main`: blocking code on a plain thread (no runtime of its own) fills the
/// async store first, then axum serves it.
#[test]
fn blocking_code_on_a_thread_and_in_handlers_calls_the_async_store() {
    let prices = Prices::default();
    let seeding = prices.clone();
    let stored = std::thread::spawn(move || import(&seeding, "1=100\n2=250\nnot a price"))
        .join()
        .expect("the importer thread")
        .expect("async_to_sync from a plain thread");
    assert_eq!(stored, 2);
    // The same store, read back from another plain thread.
    let reading = prices.clone();
    let total = std::thread::spawn(move || invoice(&reading, &[1, 2]))
        .join()
        .expect("the invoice thread")
        .expect("async_to_sync from a plain thread");
    assert_eq!(total, Some(350));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let addr = serve(prices).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let get = |path: &str| call(&client, Method::GET, format!("http://{addr}{path}"), "");

        assert_eq!(
            get("/invoice/1,2").await,
            (StatusCode::OK, "total 350".to_owned())
        );
        let answer = call(
            &client,
            Method::POST,
            format!("http://{addr}/prices"),
            "3=120\n4=80",
        )
        .await;
        assert_eq!(answer, (StatusCode::OK, "imported 2".to_owned()));
        assert_eq!(
            get("/invoice/1,3,4").await,
            (StatusCode::OK, "total 300".to_owned())
        );
        assert_eq!(get("/invoice/1,9").await.0, StatusCode::NOT_FOUND);
        assert_eq!(get("/invoice/1,x").await.0, StatusCode::BAD_REQUEST);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calling_blocking_code_on_the_handler_itself_is_refused_not_a_panic() {
    let prices = Prices::default();
    let addr = serve(prices).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let uri = format!("http://{addr}/invoice-inline/1");
    for _ in 0..3 {
        let (status, body) = call(&client, Method::GET, uri.clone(), "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.starts_with("wrong context: "), "{body}");
        assert!(
            body.contains(".await"),
            "the message says what to do: {body}"
        );
    }
    // The worker was not blocked: the server still answers.
    let (status, _) = call(&client, Method::GET, format!("http://{addr}/invoice/9"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The README shows the example's code, below its `//!` header, verbatim.
#[test]
fn the_readme_shows_the_example() {
    let example = include_str!("../examples/axum.rs");
    let code: String = example
        .lines()
        .skip_while(|line| line.starts_with("//!"))
        .skip_while(|line| line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect();
    let readme = include_str!("../README.md");
    let block = format!("```rust,no_run\n{code}```\n");
    assert!(
        readme.contains(&block),
        "README.md's axum section is out of date: paste examples/axum.rs (below its header) into it"
    );
}

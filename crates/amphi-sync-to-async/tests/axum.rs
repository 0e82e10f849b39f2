//! The axum example (`examples/axum.rs`, shown in the README) served on a loopback port and
//! called over HTTP/1.1 with hyper-util's client: blocking work through the pool, the
//! thread-sensitive resource, and the 503 when the pool stays full.

#[path = "../examples/axum.rs"]
#[allow(dead_code)]
mod example;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amphi_core::ThreadSensitive;
use amphi_sync_to_async::{sync_to_async, BlockingPool};
use bytes::Bytes;
use example::{app, AppState};
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long anything here may take before the test gives up (not a timing assert: a bound
/// that keeps a broken build from hanging).
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `app(state)` on 127.0.0.1:0 in the background; returns its address.
async fn serve(state: AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One request; the status, the `Retry-After` header if any, and the body as text.
async fn call(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: Method,
    uri: String,
) -> (StatusCode, Option<String>, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .expect("a valid request");
    let resp = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .expect("an answer in time")
        .expect("the request went through");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().expect("an ASCII header").to_owned());
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the whole body")
        .to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("a UTF-8 body");
    (status, retry_after, text)
}

fn state(pool: BlockingPool) -> AppState {
    AppState {
        pool,
        db: ThreadSensitive::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_work_runs_through_the_pool() {
    let pool = BlockingPool::new(4);
    let addr = serve(state(pool.clone())).await;
    let client = client();
    for (n, primes) in [(10, "4"), (100, "25"), (10_000, "1229")] {
        let (status, _, body) =
            call(&client, Method::GET, format!("http://{addr}/primes/{n}")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, primes), "n = {n}");
    }
    for bad in ["x", "-1", "1000001"] {
        let (status, _, _) =
            call(&client, Method::GET, format!("http://{addr}/primes/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(pool.in_flight(), 0, "a refused n took no slot");
}

/// One visit; the count it answered, after checking where it ran.
async fn visit(client: &Client<HttpConnector, Empty<Bytes>>, addr: SocketAddr) -> u64 {
    let (status, _, body) = call(client, Method::POST, format!("http://{addr}/visits")).await;
    assert_eq!(status, StatusCode::OK);
    let count = body
        .strip_prefix("visit ")
        .and_then(|rest| rest.strip_suffix(" on amphi-thread-sensitive"))
        .unwrap_or_else(|| panic!("not a visit counted on the context's thread: {body:?}"));
    count.parse().expect("a count")
}

// A context's thread may have served an earlier context of this test binary, and keeps its
// `thread_local!` values, so the counts are checked from the first one on, not from 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visits_are_counted_on_the_one_thread_sensitive_thread() {
    let addr = serve(state(BlockingPool::new(4))).await;
    let client = client();
    let first = visit(&client, addr).await;
    for more in 1..=4 {
        assert_eq!(visit(&client, addr).await, first + more);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_with_retry_after_and_recovers() {
    let pool = BlockingPool::new(1).queue_timeout(Duration::from_millis(50));
    let addr = serve(state(pool.clone())).await;
    let client = client();
    let before = visit(&client, addr).await;

    // Hold the pool's only slot with a blocking call that waits for the test's word.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let holder = tokio::spawn(sync_to_async(move || wait.recv()).pool(&pool).into_future());
    let start = Instant::now();
    while pool.in_flight() < 1 {
        assert!(start.elapsed() < PATIENCE, "the holder never took the slot");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    for (method, path) in [(Method::GET, "/primes/10"), (Method::POST, "/visits")] {
        let (status, retry_after, _) = call(&client, method, format!("http://{addr}{path}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{path}");
    }

    release.send(()).expect("the holder is waiting");
    holder
        .await
        .expect("the holder task")
        .expect("the holder's call")
        .expect("the release came");
    assert_eq!(pool.in_flight(), 0);
    let (status, _, body) = call(&client, Method::GET, format!("http://{addr}/primes/10")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "4"));
    // The refused visit never ran: the next one served is the next one counted.
    assert_eq!(visit(&client, addr).await, before + 1);
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

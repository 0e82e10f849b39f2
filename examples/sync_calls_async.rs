//! A blocking handler using an async client through `async_to_sync`.
//!
//! ```sh
//! cargo run --example sync_calls_async
//! curl http://127.0.0.1:8000/report
//! ```
//!
//! `/report` is blocking code (think a legacy view) that needs data from an async-only client:
//! here hyper's HTTP client, fetching `/upstream` from this same server. `async_to_sync` runs
//! the client's future on the server's runtime and blocks only the handler's own thread while
//! it waits; the request context and cancellation cross with it.

use std::net::SocketAddr;

use amphi::prelude::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Where the upstream service listens; put in the app state once the server is bound.
#[derive(Clone, Copy)]
struct Upstream(SocketAddr);

/// An async client call: one GET over HTTP/1.1 with hyper.
async fn fetch(
    addr: SocketAddr,
    path: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// Blocking code calling the async client.
fn report(req: SyncRequest) -> SyncResponse {
    let Some(Upstream(addr)) = req.state().get::<Upstream>() else {
        return http::Response::new(SyncBody::from("not ready\n"));
    };
    let answer = async_to_sync(fetch(addr, "/upstream"));
    let text = match answer {
        Ok(Ok(body)) => format!("report: upstream said {body:?}\n"),
        Ok(Err(e)) => format!("report: upstream failed: {e}\n"),
        // async_to_sync itself refused (for example, called from an async task).
        Err(e) => format!("report: {e}\n"),
    };
    http::Response::new(SyncBody::from(text))
}

#[tokio::main]
async fn main() -> Result<(), ServeError> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let upstream = async_fn(|_req| async {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        http::Response::new(AsyncBody::from("42 widgets"))
    });
    let router = Router::new()
        .mount_async("/upstream", upstream)
        .mount_sync("/report", sync_fn(report));
    let state = State::new();
    let serving = Server::new(router)
        .state(state.clone())
        .bind(bind.as_str())
        .await?;
    let addr = serving.local_addr().unwrap();
    state.insert(Upstream(addr));
    println!("listening on http://{addr}");
    serving.run_until(shutdown_signal()).await
}

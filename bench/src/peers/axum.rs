//! axum on `axum::serve` (hyper-util's auto builder underneath). With `offload`, every handler
//! runs its work in `spawn_blocking`.

use std::io;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;

pub(super) fn run(bind: SocketAddr, blocking_threads: usize, offload: bool) -> io::Result<()> {
    super::runtime(blocking_threads)?.block_on(async move {
        let app = if offload {
            Router::new()
                .route("/hello", get(hello_blocking))
                .route("/sleep", get(sleep_blocking))
                .route("/echo", post(echo_blocking))
        } else {
            Router::new()
                .route("/hello", get(|| async { super::HELLO_ASYNC }))
                .route("/sleep", get(sleep_async))
                .route(
                    "/echo",
                    post(|body: Body| async move { Response::new(body) }),
                )
        };
        let listener = tokio::net::TcpListener::bind(bind).await?;
        super::announce(listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    })
}

async fn sleep_async(uri: Uri) -> &'static str {
    tokio::time::sleep(super::sleep_ms(uri.query())).await;
    "slept"
}

async fn hello_blocking() -> Response {
    match tokio::task::spawn_blocking(|| super::HELLO_SYNC).await {
        Ok(body) => body.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn sleep_blocking(uri: Uri) -> Response {
    let dur = super::sleep_ms(uri.query());
    match tokio::task::spawn_blocking(move || std::thread::sleep(dur)).await {
        Ok(()) => "slept".into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn echo_blocking(body: Bytes) -> Response {
    match tokio::task::spawn_blocking(move || body).await {
        Ok(body) => body.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

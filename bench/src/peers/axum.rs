//! axum on `axum::serve` (hyper-util's auto builder underneath). With `offload`, every handler
//! runs its work in `spawn_blocking`. The async app also serves `GET /ws`, a websocket echo on
//! `axum::extract::ws` (tokio-tungstenite, the codec amphi's server uses) as its docs write it,
//! and `GET /tuned/ws`, the same echo with amphi's codec buffers (see [`TUNED_READ_BUFFER`]);
//! `/tuned/hello` answers as `/hello` does, for the harness's readiness check.

use std::io;
use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
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
                .route(
                    "/ws",
                    any(|ws: WebSocketUpgrade| async move { ws.on_upgrade(ws_echo) }),
                )
                .route("/tuned/hello", get(|| async { super::HELLO_ASYNC }))
                .route(
                    "/tuned/ws",
                    any(|ws: WebSocketUpgrade| async move {
                        ws.read_buffer_size(TUNED_READ_BUFFER)
                            .write_buffer_size(0)
                            .on_upgrade(ws_echo)
                    }),
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

/// `/tuned/ws`'s read buffer, as amphi's server configures the codec (`ws.rs`, `codec()`):
/// tungstenite's default is 128 KiB, which it zero-fills up to its capacity before each read, so
/// every socket that has read once keeps 128 KiB resident. `write_buffer_size(0)` writes each
/// message at once instead of gathering up to 128 KiB, as amphi does too.
const TUNED_READ_BUFFER: usize = 4 * 1024;

/// Sends every text and binary message back; the text `close` closes with 1000, as amphi's
/// `mixed` example does. Pings are the codec's (answered on the next write or flush).
async fn ws_echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let msg = match msg {
            Message::Text(t) if t.as_str() == "close" => {
                let _ = socket
                    .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1000,
                        reason: "bye".into(),
                    })))
                    .await;
                return;
            }
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(msg).await.is_err() {
            return;
        }
    }
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

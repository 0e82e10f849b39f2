//! Smoke test: an async websocket echo over HTTP/1.1 (the full suite is tests/websocket.rs).

mod support;
use amphi::prelude::*;
use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use support::*;
use tokio_tungstenite::tungstenite::Message as M;

fn echo() -> impl AsyncHandler {
    asgi_fn(|scope, mut receive, mut send| async move {
        let Scope::WebSocket(_s) = scope else {
            return Ok(());
        };
        let Event::WebSocketConnect = receive.receive().await? else {
            return Ok(());
        };
        send.send(Message::WebSocketAccept {
            subprotocol: None,
            headers: HeaderMap::new(),
        })
        .await?;
        loop {
            match receive.receive().await? {
                Event::WebSocketReceive(d) => send.send(Message::WebSocketSend(d)).await?,
                Event::WebSocketDisconnect { .. } => return Ok(()),
                _ => {}
            }
        }
    })
}

#[tokio::test]
async fn smoke() {
    init_tracing();
    let serving = Server::new(Router::new().mount_async("/ws", echo()))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = serving.local_addr().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(M::text("hi")).await.unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m, M::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(m) = ws.next().await {
        eprintln!("{m:?}");
        if m.is_err() {
            break;
        }
    }
    serving.shutdown().await.unwrap();
}

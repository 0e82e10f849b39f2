//! The websocket sugar of both handler kinds over the real server and a real client, HTTP/1.1
//! and HTTP/2: an async `WebSocket` and a sync `BlockingWebSocket` (on the server's blocking
//! pool) echo, choose a subprotocol, deny, close with their code, see the client's close, and
//! a sync handler sees a client that drops as a failed `recv` and a flipped token.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use amphi::Accept;
use support::ws::{connect, WS_BOTH};
use support::*;
use tokio_tungstenite::tungstenite::Message as M;

/// What the sync handlers saw when their session ended, by path.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

impl Seen {
    fn push(&self, path: &str, what: String) {
        self.0.lock().unwrap().push((path.to_owned(), what));
    }

    async fn for_path(&self, path: &str) -> String {
        let mut found = None;
        eventually(&format!("the handler at {path} reports"), || {
            found = self
                .0
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, w)| w.clone());
            found.is_some()
        })
        .await;
        found.unwrap()
    }
}

fn sync_app(seen: Seen) -> impl SyncHandler {
    sync_fn(|_req: SyncRequest| "a page").websocket(move |req: SyncWebSocketRequest| {
        let path = req.scope().raw_path().to_owned();
        if path.ends_with("/deny") {
            return req.deny();
        }
        if path.ends_with("/login") {
            return req.deny_with((http::StatusCode::UNAUTHORIZED, "log in first (sync)"));
        }
        let accept = match req.subprotocols().contains(&"chat") {
            true => Accept::new().with_subprotocol("chat"),
            false => Accept::new(),
        };
        let ws = req.accept_with(accept)?;
        for message in &ws {
            match message {
                Ok(WebSocketData::Text(t)) if t == "close" => return ws.close(4001, "asked"),
                Ok(data) => ws.send(data)?,
                Err(e) => {
                    let token = ws.cancellation().is_cancelled();
                    seen.push(&path, format!("{:?} token={token}", e.kind()));
                    return Err(e);
                }
            }
        }
        let frame = ws.close_frame().map(|f| (f.code(), f.reason().to_owned()));
        seen.push(&path, format!("closed {frame:?}"));
        Ok(())
    })
}

fn async_app() -> impl AsyncHandler {
    websocket_fn(|req: WebSocketRequest| async move {
        if req.scope().raw_path().ends_with("/deny") {
            return req.deny().await;
        }
        if req.scope().raw_path().ends_with("/login") {
            return req
                .deny_with((http::StatusCode::UNAUTHORIZED, "log in first (async)"))
                .await;
        }
        let accept = match req.subprotocols().contains(&"chat") {
            true => Accept::new().with_subprotocol("chat"),
            false => Accept::new(),
        };
        let mut ws = req.accept_with(accept).await?;
        while let Some(data) = ws.recv().await? {
            match data {
                WebSocketData::Text(t) if t == "close" => return ws.close(4001, "asked").await,
                data => ws.send(data).await?,
            }
        }
        Ok(())
    })
}

async fn start(seen: &Seen) -> Serving {
    start_with(seen, 8).await
}

async fn start_with(seen: &Seen, blocking_threads: usize) -> Serving {
    init_tracing();
    let router = Router::new()
        .mount_sync("/sync", sync_app(seen.clone()))
        .mount_async("/async", async_app());
    Server::new(router)
        .blocking_threads(blocking_threads)
        .queue_timeout(Duration::from_millis(100))
        .grace_period(Duration::from_secs(5))
        .bind("127.0.0.1:0")
        .await
        .expect("binding the test server")
}

#[tokio::test]
async fn both_kinds_echo_choose_a_subprotocol_and_close_with_their_code() {
    let seen = Seen::default();
    let serving = start(&seen).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        for mount in ["/sync", "/async"] {
            let what = format!("{mount} over {proto:?}");
            let (mut ws, headers) = connect(addr, proto, &format!("{mount}/ws"), &["chat"])
                .await
                .unwrap_or_else(|r| panic!("{what} refused: {r:?}"));
            assert_eq!(headers["sec-websocket-protocol"], "chat", "{what}");
            ws.send(M::text("hello")).await.unwrap();
            assert_eq!(ws.recv().await, M::text("hello"), "{what}");
            ws.send(M::binary(vec![1u8, 2, 3])).await.unwrap();
            assert_eq!(ws.recv().await, M::binary(vec![1u8, 2, 3]), "{what}");
            ws.send(M::text("close")).await.unwrap();
            assert_eq!(
                ws.close_frame().await,
                Some((4001, "asked".to_owned())),
                "{what}"
            );
        }
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_kinds_deny_with_403() {
    let seen = Seen::default();
    let serving = start(&seen).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        for mount in ["/sync", "/async"] {
            let refused = connect(addr, proto, &format!("{mount}/deny"), &[])
                .await
                .err()
                .unwrap_or_else(|| panic!("{mount} over {proto:?} accepted"));
            assert_eq!(refused.status, 403, "{mount} over {proto:?}");
        }
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn both_kinds_deny_with_a_response_of_their_own() {
    let seen = Seen::default();
    let serving = start(&seen).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        for (mount, kind) in [("/sync", "sync"), ("/async", "async")] {
            let what = format!("{mount} over {proto:?}");
            let refused = connect(addr, proto, &format!("{mount}/login"), &[])
                .await
                .err()
                .unwrap_or_else(|| panic!("{what} accepted"));
            assert_eq!(refused.status, 401, "{what}");
            assert_eq!(refused.body, format!("log in first ({kind})"), "{what}");
            assert_eq!(
                refused.headers["content-type"], "text/plain; charset=utf-8",
                "{what}"
            );
        }
    }
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sync_websocket_on_a_full_pool_is_a_503() {
    let seen = Seen::default();
    let serving = start_with(&seen, 1).await;
    let addr = serving.local_addr().unwrap();
    // The one blocking slot: a socket held open by its sync handler.
    let (mut held, _) = connect(addr, support::ws::WsProto::H1, "/sync/ws", &[])
        .await
        .expect("the first sync websocket");
    held.send(M::text("hi")).await.unwrap();
    assert_eq!(held.recv().await, M::text("hi"));
    for proto in WS_BOTH {
        let refused = connect(addr, proto, "/sync/ws", &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("a second sync websocket over {proto:?} was accepted"));
        assert_eq!(refused.status, 503, "{proto:?}");
        assert_eq!(refused.headers["retry-after"], "1");
    }
    // Async websockets need no slot.
    let (mut other, _) = connect(addr, support::ws::WsProto::H2, "/async/ws", &[])
        .await
        .expect("an async websocket");
    other.send(M::text("free")).await.unwrap();
    assert_eq!(other.recv().await, M::text("free"));
    assert_eq!(
        serving.blocking_pool().in_flight(),
        1,
        "the socket holds its slot"
    );
    held.close(1000, "").await;
    assert_eq!(held.close_frame().await.map(|c| c.0), Some(1000));
    eventually("the slot comes back", || {
        serving.blocking_pool().in_flight() == 0
    })
    .await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_sync_handler_sees_the_clients_close_and_its_drop() {
    let seen = Seen::default();
    let serving = start(&seen).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        let closing = format!("/sync/closing-{proto:?}");
        let (mut ws, _) = connect(addr, proto, &closing, &[]).await.unwrap();
        ws.send(M::text("x")).await.unwrap();
        assert_eq!(ws.recv().await, M::text("x"));
        ws.close(1000, "done").await;
        assert_eq!(
            seen.for_path(&closing).await,
            "closed Some((1000, \"done\"))"
        );

        let dropping = format!("/sync/dropping-{proto:?}");
        let (mut ws, _) = connect(addr, proto, &dropping, &[]).await.unwrap();
        ws.send(M::text("y")).await.unwrap();
        assert_eq!(ws.recv().await, M::text("y"));
        drop(ws);
        assert_eq!(
            seen.for_path(&dropping).await,
            "ConnectionAborted token=true"
        );
    }
    serving.shutdown().await.unwrap();
}

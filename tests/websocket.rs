//! Websockets end to end with a real client (tokio-tungstenite) over HTTP/1.1 upgrades and
//! HTTP/2 extended CONNECT: echo, fragments, ping, subprotocols, denial, close codes both
//! ways, limits, a client that drops mid-message, graceful shutdown, and many sockets at once.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::WebSocketLimits;
use amphi::WebSocketData;
use bytes::Bytes;
use http::HeaderMap;
use support::ws::{connect, Client, WsProto, WS_BOTH};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as M;

/// What the handlers saw: each session's disconnect code and reason, by path.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, u16, String)>>>);

impl Seen {
    fn push(&self, path: &str, code: u16, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push((path.to_owned(), code, reason.to_owned()));
    }

    async fn code_for(&self, path: &str) -> (u16, String) {
        let mut found = None;
        eventually(
            &format!("the handler at {path} sees its disconnect"),
            || {
                found = self
                    .0
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(p, _, _)| p == path)
                    .map(|(_, c, r)| (*c, r.clone()));
                found.is_some()
            },
        )
        .await;
        found.unwrap()
    }
}

/// The async app, on the raw protocol: `/ws/deny` closes before accepting (403); anything
/// else accepts (with `chat` when offered) and echoes, and the text `close` closes with 1000.
fn async_app(seen: Seen) -> impl AsyncHandler {
    asgi_fn(move |scope, mut receive, mut send| {
        let seen = seen.clone();
        async move {
            let Scope::WebSocket(scope) = scope else {
                return Ok(());
            };
            let path = scope.raw_path().to_owned();
            let Event::WebSocketConnect = receive.receive().await? else {
                return Ok(());
            };
            if path.contains("/slow-accept") {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if path.ends_with("/deny") {
                return send
                    .send(Message::WebSocketClose {
                        code: 1000,
                        reason: String::new(),
                    })
                    .await;
            }
            let subprotocol = scope
                .subprotocols()
                .into_iter()
                .find(|p| *p == "chat")
                .map(str::to_owned);
            let mut headers = HeaderMap::new();
            headers.insert("x-session", "1".parse().unwrap());
            let accepted = send
                .send(Message::WebSocketAccept {
                    subprotocol,
                    headers,
                })
                .await;
            if let Err(e) = accepted {
                // The client left before the answer: accepting fails as a disconnect.
                assert!(e.is_disconnected(), "{e}");
                seen.push(&path, 1006, "accept failed");
                return Ok(());
            }
            loop {
                match receive.receive().await? {
                    Event::WebSocketReceive(WebSocketData::Text(t)) if t == "close" => {
                        return send
                            .send(Message::WebSocketClose {
                                code: 1000,
                                reason: "bye".into(),
                            })
                            .await;
                    }
                    Event::WebSocketReceive(data) => {
                        send.send(Message::WebSocketSend(data)).await?
                    }
                    Event::WebSocketDisconnect { code, reason } => {
                        seen.push(&path, code, &reason);
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
    })
}

async fn start(seen: &Seen, limits: WebSocketLimits) -> Serving {
    init_tracing();
    let router = Router::new().mount_async("/a", async_app(seen.clone()));
    Server::new(router)
        .websockets(limits)
        .grace_period(Duration::from_secs(5))
        .bind("127.0.0.1:0")
        .await
        .expect("binding the test server")
}

async fn open(serving: &Serving, proto: WsProto, path: &str) -> Client {
    let addr = serving.local_addr().unwrap();
    connect(addr, proto, path, &[])
        .await
        .unwrap_or_else(|r| panic!("{path} refused: {r:?}"))
        .0
}

#[tokio::test]
async fn text_and_binary_messages_are_echoed() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    for proto in WS_BOTH {
        let mut ws = open(&serving, proto, "/a/echo").await;
        ws.send(M::text("hello")).await.unwrap();
        assert_eq!(ws.recv().await, M::text("hello"), "{proto:?}");
        ws.send(M::binary(vec![0u8, 1, 2, 255])).await.unwrap();
        assert_eq!(ws.recv().await, M::binary(vec![0u8, 1, 2, 255]));
        // A big one, in both directions.
        let big = "x".repeat(1 << 20);
        ws.send(M::text(big.clone())).await.unwrap();
        assert_eq!(ws.recv().await, M::text(big));
        ws.send(M::text("close")).await.unwrap();
        assert_eq!(
            ws.close_frame().await,
            Some((1000, "bye".into())),
            "{proto:?}"
        );
    }
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn fragments_are_reassembled_and_pings_answered() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    for proto in WS_BOTH {
        let mut ws = open(&serving, proto, "/a/fragments").await;
        let first = Frame::message(Bytes::from("frag"), OpCode::Data(Data::Text), false);
        let middle = Frame::message(Bytes::from("men"), OpCode::Data(Data::Continue), false);
        let last = Frame::message(Bytes::from("ted"), OpCode::Data(Data::Continue), true);
        for f in [first, middle, last] {
            ws.send(M::Frame(f)).await.unwrap();
        }
        assert_eq!(ws.recv().await, M::text("fragmented"), "{proto:?}");
        ws.send(M::Ping(Bytes::from("are you there")))
            .await
            .unwrap();
        loop {
            match ws.next().await {
                Some(Ok(M::Pong(p))) => {
                    assert_eq!(p, "are you there");
                    break;
                }
                Some(Ok(M::Ping(_))) => continue,
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        ws.close(1000, "").await;
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1000));
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn subprotocols_are_negotiated_and_the_handler_headers_sent() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        let (mut ws, headers) = connect(addr, proto, "/a/chat", &["v2.chat", "chat"])
            .await
            .expect("accepted");
        assert_eq!(
            headers.get("sec-websocket-protocol").map(|v| v.as_bytes()),
            Some(&b"chat"[..]),
            "{proto:?}"
        );
        assert_eq!(
            headers.get("x-session").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        ws.close(1000, "").await;
        // None offered: none chosen.
        let (mut ws, headers) = connect(addr, proto, "/a/plain", &[]).await.unwrap();
        assert!(headers.get("sec-websocket-protocol").is_none());
        ws.close(1000, "").await;
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_close_before_accept_is_a_403() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        let refused = connect(addr, proto, "/a/deny", &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.status, http::StatusCode::FORBIDDEN, "{proto:?}");
    }
    // Nothing mounted there: a 404, not a websocket.
    let refused = connect(addr, WsProto::H1, "/nowhere", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, http::StatusCode::NOT_FOUND);
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn close_codes_travel_both_ways() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    for proto in WS_BOTH {
        let tag = format!("{proto:?}");
        // The client closes with a code and reason: the handler sees them.
        let path = format!("/a/client-close-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        ws.close(4000, "done here").await;
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(4000));
        assert_eq!(seen.code_for(&path).await, (4000, "done here".into()));
        // A close frame without a code: 1005.
        let path = format!("/a/no-code-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        ws.send(M::Close(None)).await.unwrap();
        assert_eq!(seen.code_for(&path).await.0, 1005);
        drop(ws);
        // The connection drops without a close: 1006.
        let path = format!("/a/dropped-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        ws.send(M::text("ping")).await.unwrap();
        assert_eq!(ws.recv().await, M::text("ping"));
        drop(ws);
        assert_eq!(seen.code_for(&path).await.0, 1006, "{tag}");
    }
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oversized_message_is_1009_and_invalid_utf8_is_1007() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default().max_message_bytes(1024)).await;
    for proto in WS_BOTH {
        let tag = format!("{proto:?}");
        let path = format!("/a/big-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        ws.send(M::text("x".repeat(1000))).await.unwrap();
        assert_eq!(ws.recv().await, M::text("x".repeat(1000)));
        ws.send(M::binary(vec![0u8; 2000])).await.unwrap();
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1009), "{tag}");
        assert_eq!(seen.code_for(&path).await.0, 1009);
        // Over the limit in fragments, each one under it.
        let path = format!("/a/big-fragments-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        for (i, last) in [(0, false), (1, false), (2, true)] {
            let op = if i == 0 { Data::Text } else { Data::Continue };
            let f = Frame::message(Bytes::from("y".repeat(600)), OpCode::Data(op), last);
            let _ = ws.send(M::Frame(f)).await;
        }
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1009), "{tag}");
        let path = format!("/a/utf8-{tag}");
        let mut ws = open(&serving, proto, &path).await;
        let bad = Frame::message(
            Bytes::from_static(&[0x68, 0xff, 0xfe]),
            OpCode::Data(Data::Text),
            true,
        );
        ws.send(M::Frame(bad)).await.unwrap();
        assert_eq!(ws.close_frame().await.map(|c| c.0), Some(1007), "{tag}");
        assert_eq!(seen.code_for(&path).await.0, 1007);
    }
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_gone_mid_message_ends_its_session_and_leaks_nothing() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    for proto in WS_BOTH {
        let path = format!("/a/half-{proto:?}");
        let mut ws = open(&serving, proto, &path).await;
        let half = Frame::message(Bytes::from("half a mess"), OpCode::Data(Data::Text), false);
        ws.send(M::Frame(half)).await.unwrap();
        drop(ws);
        assert_eq!(seen.code_for(&path).await.0, 1006, "{proto:?}");
    }
    eventually("nothing in flight", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_closes_open_sockets_with_1001() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    let mut clients = Vec::new();
    for proto in WS_BOTH {
        for i in 0..3 {
            let mut ws = open(&serving, proto, &format!("/a/open-{proto:?}-{i}")).await;
            ws.send(M::text("hi")).await.unwrap();
            assert_eq!(ws.recv().await, M::text("hi"));
            clients.push(ws);
        }
    }
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(serving.shutdown());
    for ws in &mut clients {
        assert_eq!(
            ws.close_frame().await,
            Some((1001, "server shutting down".into()))
        );
    }
    within("the server stops", stopping).await.unwrap().unwrap();
    // Well within the 5 s grace period: the sockets closed, nothing had to be cut.
    assert!(started.elapsed() < Duration::from_secs(5));
    for proto in WS_BOTH {
        for i in 0..3 {
            assert_eq!(
                seen.code_for(&format!("/a/open-{proto:?}-{i}")).await.0,
                1001
            );
        }
    }
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Raises this process's open-files limit to its hard limit (the sockets of both ends of a
/// thousand websockets live in this process).
fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sockets_held_by_async_handlers_keep_memory_flat() {
    raise_fd_limit();
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    let mut clients = Vec::new();
    for i in 0..1000 {
        clients.push(open(&serving, WsProto::H1, &format!("/a/many-{i}")).await);
    }
    let round = |clients: &mut Vec<Client>, n: usize| {
        let clients = std::mem::take(clients);
        async move {
            let mut out = Vec::new();
            let mut tasks = tokio::task::JoinSet::new();
            for (i, mut ws) in clients.into_iter().enumerate() {
                tasks.spawn(async move {
                    for j in 0..n {
                        let m = M::text(format!("{i}-{j}"));
                        ws.send(m.clone()).await.unwrap();
                        assert_eq!(ws.recv().await, m);
                    }
                    (i, ws)
                });
            }
            while let Some(r) = tasks.join_next().await {
                out.push(r.unwrap());
            }
            out.sort_by_key(|(i, _)| *i);
            out.into_iter().map(|(_, ws)| ws).collect::<Vec<_>>()
        }
    };
    clients = within("a first round", round(&mut clients, 2)).await;
    let after_first = rss();
    clients = within("ten more rounds", round(&mut clients, 10)).await;
    let after_more = rss();
    // Flat: ten more rounds of messages over the same thousand sockets add nothing per
    // message (a leak of one small allocation per message would be 10,000 of them).
    assert!(
        after_more < after_first + 16 * 1024 * 1024,
        "memory grew from {after_first} to {after_more} bytes"
    );
    assert_eq!(serving.in_flight(), 1000, "a thousand sessions open");
    drop(clients);
    eventually("every session ends", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_sockets_are_pinged_and_dropped_when_they_do_not_answer() {
    let seen = Seen::default();
    let limits = WebSocketLimits::default()
        .ping_interval(Some(Duration::from_millis(200)), Duration::from_millis(300));
    let serving = start(&seen, limits).await;
    for proto in WS_BOTH {
        // A client that reads answers the pings (the codec does) and stays.
        let path = format!("/a/alive-{proto:?}");
        let mut alive = open(&serving, proto, &path).await;
        let mut pinged = 0;
        while pinged < 3 {
            match alive.next().await {
                Some(Ok(M::Ping(_))) => pinged += 1,
                other => panic!("expected pings, got {other:?}"),
            }
        }
        alive.send(M::text("still here")).await.unwrap();
        assert_eq!(alive.recv().await, M::text("still here"));
        // A client that never reads never answers: dropped, and its handler sees 1006.
        let path = format!("/a/silent-{proto:?}");
        let _silent = open(&serving, proto, &path).await;
        assert_eq!(seen.code_for(&path).await.0, 1006, "{proto:?}");
        alive.close(1000, "").await;
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn past_the_cap_on_open_sockets_a_handshake_is_a_503() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default().max_open(2)).await;
    let addr = serving.local_addr().unwrap();
    let mut first = open(&serving, WsProto::H1, "/a/one").await;
    let _second = open(&serving, WsProto::H2, "/a/two").await;
    for proto in WS_BOTH {
        let refused = connect(addr, proto, "/a/three", &[])
            .await
            .err()
            .expect("refused");
        assert_eq!(
            refused.status,
            http::StatusCode::SERVICE_UNAVAILABLE,
            "{proto:?}"
        );
        assert_eq!(
            refused.headers.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
    // A place comes free when a socket closes.
    first.close(1000, "").await;
    assert_eq!(first.close_frame().await.map(|c| c.0), Some(1000));
    eventually("the first session ends", || serving.in_flight() == 1).await;
    let mut third = open(&serving, WsProto::H1, "/a/three").await;
    third.send(M::text("in")).await.unwrap();
    assert_eq!(third.recv().await, M::text("in"));
    serving.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_gone_during_the_handshake_leaks_nothing() {
    let seen = Seen::default();
    let serving = start(&seen, WebSocketLimits::default()).await;
    let addr = serving.local_addr().unwrap();
    let request = format!(
        "GET /a/slow-accept HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // Sends the handshake and leaves before the handler accepts.
    let _ = raw_exchange(addr, request.as_bytes(), Duration::from_millis(50)).await;
    assert_eq!(
        seen.code_for("/a/slow-accept").await,
        (1006, "accept failed".into())
    );
    eventually("nothing in flight", || serving.in_flight() == 0).await;
    serving.shutdown().await.unwrap();
}

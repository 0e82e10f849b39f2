//! Fault suite: the client goes away mid-upload, mid-download, or while the handler is still
//! working, over HTTP/1.1 and HTTP/2, for both handler kinds.
//!
//! What must hold every time: the handler is cancelled (sync: its token flips and body reads
//! fail with `ErrorKind::Disconnected`, which is `io::ErrorKind::ConnectionAborted`; body
//! writes fail the same way and the body's cleanup runs; async: the future is dropped at its
//! next await, and its token flips), its blocking slot comes back, the server's in-flight count
//! goes back to zero, nothing stays alive (each handler holds a [`Live`] guard), and the access
//! log says `client gone`.

mod support;

use std::io::Read;

use amphi::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use support::*;
use tokio::sync::mpsc;

/// The most 16 KiB chunks a download handler writes: bounded, so a handler that is never
/// cancelled still ends (after the test has failed).
const MAX_CHUNKS: usize = 20_000;
const CHUNK: usize = 16 * 1024;

/// The last path segment names what the handler does; the segments before it make each
/// test's paths (and so its access log lines) its own.
fn action(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

fn describe(e: &std::io::Error) -> String {
    format!(
        "{:?} {:?}",
        e.kind(),
        amphi::Error::from_io(e).map(|e| e.kind())
    )
}

fn router(probe: &Probe) -> Router {
    let p = probe.clone();
    let sync_app = sync_fn(move |mut req: SyncRequest| {
        let live = p.live.enter();
        p.token(req.uri().path(), req.cancellation());
        match action(req.path()) {
            "upload" => {
                let mut buf = [0u8; 4096];
                let mut first = true;
                let failed = loop {
                    match req.body_mut().read(&mut buf) {
                        Ok(0) => break None,
                        Ok(_) if first => {
                            first = false;
                            p.say("sync reading");
                        }
                        Ok(_) => {}
                        Err(e) => break Some(e),
                    }
                };
                match failed {
                    Some(e) => p.say(format!("sync read failed: {}", describe(&e))),
                    None => p.say("sync read the whole body"),
                }
                let flipped = req.cancellation().wait_timeout(PATIENCE);
                p.say(format!("sync token flipped: {flipped}"));
                http::Response::new(SyncBody::from("done"))
            }
            "download" => {
                let (p1, p2) = (p.clone(), p.clone());
                let body = SyncBody::writer(move |w| {
                    let _live = live;
                    for _ in 0..MAX_CHUNKS {
                        if let Err(e) = w.send(Bytes::from(vec![b'x'; CHUNK])) {
                            p1.say(format!("sync write failed: {}", describe(&e)));
                            return Err(e);
                        }
                    }
                    p1.say("sync wrote everything");
                    Ok(())
                })
                .on_close(move || p2.say("sync body closed"));
                http::Response::new(body)
            }
            "download-chunks" => {
                // An iterator body: it must not be pulled again once a write failed, so it
                // never gets to its last chunk.
                let (p1, p2) = (p.clone(), p.clone());
                let chunks = (0..MAX_CHUNKS).map(move |i| {
                    let _live = &live;
                    if i + 1 == MAX_CHUNKS {
                        p1.say("sync iterator exhausted");
                    }
                    Bytes::from(vec![b'x'; CHUNK])
                });
                let body = SyncBody::chunks(chunks).on_close(move || p2.say("sync body closed"));
                http::Response::new(body)
            }
            "work" => {
                p.say("sync working");
                let flipped = req.cancellation().wait_timeout(PATIENCE);
                p.say(format!("sync token flipped: {flipped}"));
                http::Response::new(SyncBody::from("done"))
            }
            _ => http::Response::new(SyncBody::from("hello sync")),
        }
    });
    let p = probe.clone();
    let async_app = asgi_fn(move |scope, mut receive, mut send| {
        let p = p.clone();
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let _live = p.live.enter();
            p.token(scope.uri().path(), scope.context().token());
            let dropped = Dropped(p.clone());
            match action(scope.path()) {
                "upload" => {
                    let mut first = true;
                    loop {
                        match receive.receive().await? {
                            Event::Request { more_body, .. } => {
                                if first {
                                    first = false;
                                    p.say("async reading");
                                }
                                if !more_body {
                                    p.say("async read the whole body");
                                    break;
                                }
                            }
                            Event::Disconnect => {
                                // The client is gone: wait for the token as well, so the test
                                // sees it flip (or the future is dropped first).
                                p.say("async saw disconnect");
                                let token = scope.context().token().clone();
                                let flipped =
                                    tokio::time::timeout(PATIENCE, token.cancelled()).await;
                                p.say(format!("async token flipped: {}", flipped.is_ok()));
                                break;
                            }
                            _ => break,
                        }
                    }
                }
                "download" => {
                    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                        .await?;
                    for _ in 0..MAX_CHUNKS {
                        if let Err(e) = send.send(Message::body(vec![b'x'; CHUNK], true)).await {
                            p.say(format!("async send failed: {e}"));
                            return Err(e);
                        }
                    }
                    p.say("async wrote everything");
                }
                "work" => {
                    p.say("async working");
                    tokio::time::sleep(PATIENCE).await;
                    p.say("async work finished");
                }
                _ => {}
            }
            std::mem::forget(dropped);
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            send.send(Message::body("hello async", false)).await
        }
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

async fn start(probe: &Probe) -> Serving {
    capture_logs();
    let server = Server::new(router(probe)).blocking_threads(4);
    within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

/// The next event that is not one of `optional` must be `want`.
async fn expect_after(rx: &mut mpsc::UnboundedReceiver<String>, optional: &[&str], want: &str) {
    loop {
        let got = within(&format!("event {want:?}"), rx.recv()).await;
        match got.as_deref() {
            Some(g) if g == want => return,
            Some(g) if optional.contains(&g) => continue,
            other => panic!("expected {want:?} (after any of {optional:?}), got {other:?}"),
        }
    }
}

/// The token of the request for `path` flips (the guard that flips it runs just after the
/// handler's future is dropped, so this may take a moment).
async fn assert_token_flips(probe: &Probe, path: &str) {
    let token = probe.token_of(path);
    within(&format!("{path}: the token to flip"), token.cancelled()).await;
}

/// The access log line for `path` says the client went away.
async fn assert_logged_client_gone(path: &str) {
    let needle = format!("path={path} ");
    capture_logs()
        .wait_for(&["amphi::access", &needle, "outcome=client gone"])
        .await;
}

fn tag(test: &str, proto: Proto) -> String {
    format!("{test}-{}", if proto == Proto::H1 { "h1" } else { "h2" })
}

/// Sends `req` on `conn` from a task the test can abort (dropping the connection).
fn send_in_task(
    mut conn: Conn,
    req: http::Request<Body>,
) -> tokio::task::JoinHandle<hyper::Result<http::Response<hyper::body::Incoming>>> {
    tokio::spawn(async move { conn.send(req).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_upload_cancels_both_kinds() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for mount in ["s", "a"] {
            let path = format!("/{mount}/{}/upload", tag("upload", proto));
            let conn = Conn::open(addr, proto).await;
            let (tx, body) = channel();
            let req = conn.request(Method::POST, &path).body(body).unwrap();
            let pending = send_in_task(conn, req);
            within("sending a chunk", tx.send(Bytes::from(vec![b'u'; 1000])))
                .await
                .unwrap();
            if mount == "s" {
                expect(&mut rx, "sync reading").await;
                pending.abort(); // drops the connection, the body still open
                expect(
                    &mut rx,
                    "sync read failed: ConnectionAborted Some(Disconnected)",
                )
                .await;
                expect(&mut rx, "sync token flipped: true").await;
            } else {
                expect(&mut rx, "async reading").await;
                pending.abort();
                // Dropped at once when the connection's end reaches hyper first; else it gets
                // `http.disconnect` from `receive` and its token flips.
                let got = within("the async handler to stop", rx.recv())
                    .await
                    .unwrap();
                if got == "async saw disconnect" {
                    let got = within("the async handler to stop", rx.recv())
                        .await
                        .unwrap();
                    assert!(
                        got == "async token flipped: true" || got == "async dropped",
                        "{got}"
                    );
                } else {
                    assert_eq!(got, "async dropped");
                }
                assert_token_flips(&probe, &path).await;
            }
            // The body sender was alive throughout: the body never ended cleanly.
            drop(tx);
            assert_nothing_leaks(&serving, &probe).await;
            // The broken body is logged (debug); the access line says `client gone`, whether
            // the handler was dropped or answered (to nobody).
            capture_logs()
                .wait_for(&[
                    "DEBUG",
                    "request body read failed; treating it as a disconnect",
                ])
                .await;
            let line = capture_logs()
                .wait_for(&["amphi::access", &format!("path={path} ")])
                .await;
            assert!(line.contains("outcome=client gone"), "{line}");
        }
    }
    assert_eq!(probe.live.total(), 4);
}

/// Reads at least `bytes` of the response body, then drops the body and the connection.
async fn read_some_then_leave(
    conn: Conn,
    resp: http::Response<hyper::body::Incoming>,
    bytes: usize,
) {
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0;
    while got < bytes {
        let frame = within("a body frame", body.frame())
            .await
            .expect("the body goes on")
            .expect("a frame");
        got += frame.data_ref().map_or(0, |d| d.len());
    }
    drop(body);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_download_cancels_both_kinds_and_runs_cleanup() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for (mount, action) in [
            ("s", "download"),
            ("s", "download-chunks"),
            ("a", "download"),
        ] {
            let path = format!("/{mount}/{}/{action}", tag("download", proto));
            let mut conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, &path).body(empty()).unwrap();
            let resp = within("the head", conn.send(req)).await.expect("a head");
            read_some_then_leave(conn, resp, 4 * CHUNK).await;
            match action {
                "download" if mount == "s" => {
                    expect(
                        &mut rx,
                        "sync write failed: ConnectionAborted Some(Disconnected)",
                    )
                    .await;
                    expect(&mut rx, "sync body closed").await;
                }
                // The iterator is dropped at the failed write, before its end.
                "download-chunks" => expect(&mut rx, "sync body closed").await,
                _ => expect(&mut rx, "async dropped").await,
            }
            assert_nothing_leaks(&serving, &probe).await;
            assert_token_flips(&probe, &path).await;
            assert_logged_client_gone(&path).await;
        }
    }
    assert_eq!(probe.live.total(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_the_handler_works_cancels_both_kinds() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for mount in ["s", "a"] {
            let path = format!("/{mount}/{}/work", tag("work", proto));
            let conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, &path).body(empty()).unwrap();
            let pending = send_in_task(conn, req);
            if mount == "s" {
                expect(&mut rx, "sync working").await;
                assert_eq!(serving.blocking_pool().in_flight(), 1);
                pending.abort();
                expect(&mut rx, "sync token flipped: true").await;
            } else {
                expect(&mut rx, "async working").await;
                pending.abort();
                expect(&mut rx, "async dropped").await;
                assert_token_flips(&probe, &path).await;
            }
            assert_nothing_leaks(&serving, &probe).await;
            assert_logged_client_gone(&path).await;
        }
    }
    assert_eq!(probe.live.total(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_cancels_its_handler_and_the_connection_carries_on() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe).await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H2).await;
    for mount in ["s", "a"] {
        let path = format!("/{mount}/reset/work");
        let req = conn.request(Method::GET, &path).body(empty()).unwrap();
        let mut sender = conn.h2_sender();
        // Dropping the response future resets the stream (RST_STREAM), not the connection.
        let pending = tokio::spawn(async move { sender.send_request(req).await });
        if mount == "s" {
            expect(&mut rx, "sync working").await;
            pending.abort();
            expect(&mut rx, "sync token flipped: true").await;
        } else {
            expect(&mut rx, "async working").await;
            pending.abort();
            expect(&mut rx, "async dropped").await;
        }
        assert_nothing_leaks(&serving, &probe).await;
        assert_token_flips(&probe, &path).await;
        assert_logged_client_gone(&path).await;
        // The connection itself is fine.
        assert!(!conn.is_closed());
        let r = conn.get(&format!("/{mount}/reset/hello")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_nothing_leaks(&serving, &probe).await;
}

/// What cancelled handlers say on their way out, in an order that varies across requests.
const AFTERMATH: &[&str] = &[
    "sync token flipped: true",
    "sync write failed: ConnectionAborted Some(Disconnected)",
    "sync body closed",
    "async dropped",
];

/// Many disconnects of every shape in a row (bounded): the counts come back to zero every
/// time, so nothing leaks a little per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_disconnects_leak_nothing() {
    const ROUNDS: usize = 10;
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe).await;
    let addr = serving.local_addr().unwrap();
    let mut handlers = 0;
    for round in 0..ROUNDS {
        let proto = if round % 2 == 0 { Proto::H1 } else { Proto::H2 };
        for mount in ["s", "a"] {
            let path = format!("/{mount}/repeat/work");
            let conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, &path).body(empty()).unwrap();
            let pending = send_in_task(conn, req);
            let started = if mount == "s" {
                "sync working"
            } else {
                "async working"
            };
            expect_after(&mut rx, AFTERMATH, started).await;
            pending.abort();
            handlers += 1;
            let path = format!("/{mount}/repeat/download");
            let mut conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, &path).body(empty()).unwrap();
            let resp = within("the head", conn.send(req)).await.expect("a head");
            read_some_then_leave(conn, resp, CHUNK).await;
            handlers += 1;
        }
        assert_nothing_leaks(&serving, &probe).await;
    }
    assert_eq!(probe.live.total(), handlers);
    // Every request was cancelled.
    let tokens: Vec<_> = probe
        .tokens
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(tokens.len(), handlers);
    for t in tokens {
        within("every token to flip", t.cancelled()).await;
    }
}

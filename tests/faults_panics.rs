//! Fault suite: handlers that panic (before and after their response started) and handlers
//! that break the protocol, for both kinds, over HTTP/1.1 and HTTP/2.
//!
//! What must hold: before the response started the client gets a 500; after, the response is
//! cut (the body ends with an error, never cleanly), and the server logs why at error level.
//! A sync body's cleanup (`on_close`) runs on every path. Nothing leaks: no live handler, no
//! blocking slot, nothing in flight. And the server carries on, on the same connection when
//! the response was not cut.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use amphi::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use support::*;

/// Counts cleanups (`on_close`) of sync bodies.
#[derive(Clone, Default)]
struct Closed(Arc<AtomicUsize>);

impl Closed {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Panics when dropped.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        panic!("async drop panic on purpose");
    }
}

fn action(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

fn router(live: &Live, closed: &Closed) -> Router {
    let (l, c) = (live.clone(), closed.clone());
    let sync_app = sync_fn(move |req: SyncRequest| {
        let guard = l.enter();
        let c = c.clone();
        match action(req.path()) {
            "panic-early" => panic!("sync early panic on purpose"),
            "panic-in-body" => {
                let parts = (0..4).map(move |i| {
                    let _live = &guard;
                    if i == 2 {
                        panic!("sync body panic on purpose");
                    }
                    Bytes::from(vec![b'x'; 1000])
                });
                http::Response::new(SyncBody::chunks(parts).on_close(move || c.bump()))
            }
            "panic-in-writer" => {
                let body = SyncBody::writer(move |w| {
                    let _live = guard;
                    w.send(Bytes::from("first"))?;
                    panic!("sync writer panic on purpose")
                });
                http::Response::new(body.on_close(move || c.bump()))
            }
            "error-in-body" => {
                let parts = (0..3).map(|i| {
                    if i == 1 {
                        Err(std::io::Error::other("sync body error on purpose"))
                    } else {
                        Ok(Bytes::from("part"))
                    }
                });
                http::Response::new(SyncBody::try_chunks(parts).on_close(move || c.bump()))
            }
            // A streamed body shorter than the Content-Length it declares.
            "short-body" => {
                let mut r = http::Response::new(
                    SyncBody::chunks([Bytes::from("only ten b")]).on_close(move || c.bump()),
                );
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("100"));
                r
            }
            _ => http::Response::new(SyncBody::from("hello sync")),
        }
    });
    let l = live.clone();
    let async_app = asgi_fn(move |scope, _receive, mut send| {
        let l = l.clone();
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let _live = l.enter();
            let ok = || Message::start(StatusCode::OK, HeaderMap::new());
            match action(scope.path()) {
                "panic-early" => panic!("async early panic on purpose"),
                "panic-in-body" => {
                    send.send(ok()).await?;
                    send.send(Message::body("part", true)).await?;
                    tokio::task::yield_now().await;
                    send.send(Message::body("part", true)).await?;
                    tokio::task::yield_now().await;
                    panic!("async body panic on purpose")
                }
                "error-in-body" => {
                    send.send(ok()).await?;
                    send.send(Message::body("part", true)).await?;
                    tokio::task::yield_now().await;
                    Err(Error::handler(std::io::Error::other(
                        "async body error on purpose",
                    )))
                }
                "error-early" => Err(Error::handler(std::io::Error::other(
                    "async early error on purpose",
                ))),
                "silent" => Ok(()),
                "body-first" => send.send(Message::body("too early", false)).await,
                "double-start" => {
                    send.send(ok()).await?;
                    send.send(ok()).await
                }
                "half" => {
                    send.send(ok()).await?;
                    send.send(Message::body("half", true)).await
                }
                "after-end" => {
                    send.send(ok()).await?;
                    send.send(Message::body("done", false)).await?;
                    // Past the end: an error for the handler, the response is already whole.
                    let late = send.send(Message::body("late", false)).await;
                    assert!(late.as_ref().is_err_and(Error::is_protocol), "{late:?}");
                    late
                }
                "panic-on-drop" => {
                    // Dropped when the client leaves; its drop panics.
                    let _bomb = PanicOnDrop;
                    send.send(ok()).await?;
                    send.send(Message::body("part", true)).await?;
                    std::future::pending::<()>().await;
                    Ok(())
                }
                _ => {
                    send.send(ok()).await?;
                    send.send(Message::body("hello async", false)).await
                }
            }
        }
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

async fn start(live: &Live, closed: &Closed) -> Serving {
    capture_logs();
    let server = Server::new(router(live, closed)).blocking_threads(4);
    within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

async fn assert_nothing_leaks(serving: &Serving, live: &Live) {
    eventually("no live handler, no slot taken, nothing in flight", || {
        live.now() == 0 && serving.blocking_pool().in_flight() == 0 && serving.in_flight() == 0
    })
    .await;
}

/// Sends `GET path` and returns the status and whether the body ended cleanly.
async fn status_and_ending(conn: &mut Conn, path: &str) -> (StatusCode, bool) {
    let req = conn.request(Method::GET, path).body(empty()).unwrap();
    let resp = within(path, conn.send(req)).await.expect("a response head");
    let status = resp.status();
    (status, within(path, body_ends_cleanly(resp)).await)
}

fn tag(proto: Proto) -> &'static str {
    if proto == Proto::H1 {
        "h1"
    } else {
        "h2"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_response_is_a_500_and_the_connection_carries_on() {
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["s", "a"] {
            let path = format!("/{mount}/early-{}/panic-early", tag(proto));
            let (status, clean) = status_and_ending(&mut conn, &path).await;
            assert_eq!(
                (status, clean),
                (StatusCode::INTERNAL_SERVER_ERROR, true),
                "{path}"
            );
            // The same connection serves the next request of either kind.
            assert_eq!(conn.get("/s/hello").await.text(), "hello sync");
            assert_eq!(conn.get("/a/hello").await.text(), "hello async");
            let access = format!("path={path} ");
            capture_logs()
                .wait_for(&["amphi::access", &access, "status=500", "outcome=complete"])
                .await;
        }
    }
    let logs = capture_logs();
    for kind in ["sync", "async"] {
        let message = format!("{kind} early panic on purpose");
        logs.wait_for(&[
            "ERROR",
            "handler panicked before its response started",
            &message,
        ])
        .await;
    }
    assert_nothing_leaks(&serving, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_or_error_after_the_response_started_cuts_it_and_cleanup_runs() {
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    let mut sync_bodies = 0;
    let mut cut = 0;
    for proto in BOTH {
        for (mount, action) in [
            ("s", "panic-in-body"),
            ("s", "panic-in-writer"),
            ("s", "error-in-body"),
            ("a", "panic-in-body"),
            ("a", "error-in-body"),
        ] {
            let path = format!("/{mount}/late-{}/{action}", tag(proto));
            let mut conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, &path).body(empty()).unwrap();
            let access = format!("path={path} ");
            // A sync producer runs a few chunks ahead of the connection, so its failure may
            // reach the server before the head went out: then it is a clean 500. Once the
            // head is on its way the response is cut: the body ends with an error, or (HTTP/1.1)
            // the connection closes before the buffered head was flushed. Never a clean 200.
            match within(&path, conn.send(req)).await {
                Ok(resp) if resp.status() == StatusCode::INTERNAL_SERVER_ERROR => {
                    assert!(
                        mount == "s",
                        "{path}: an async handler's head goes out first"
                    );
                    assert!(within(&path, body_ends_cleanly(resp)).await);
                    capture_logs()
                        .wait_for(&["amphi::access", &access, "status=500", "outcome=complete"])
                        .await;
                }
                Ok(resp) => {
                    assert_eq!(resp.status(), StatusCode::OK, "{path}");
                    assert!(
                        !within(&path, body_ends_cleanly(resp)).await,
                        "{path}: the body ended cleanly instead of being cut"
                    );
                    capture_logs()
                        .wait_for(&["amphi::access", &access, "status=200", "outcome=cut"])
                        .await;
                    cut += 1;
                }
                Err(e) => {
                    // HTTP/1.1: closed before the head; HTTP/2: the stream was reset.
                    assert!(
                        proto == Proto::H2 || e.is_incomplete_message(),
                        "{path}: {e}"
                    );
                    capture_logs()
                        .wait_for(&["amphi::access", &access, "status=200", "outcome=cut"])
                        .await;
                    cut += 1;
                }
            }
            if mount == "s" {
                sync_bodies += 1;
                eventually("the sync body's cleanup", || closed.get() == sync_bodies).await;
            }
            // The server carries on.
            assert_eq!(get(addr, proto, "/a/hello").await.status, StatusCode::OK);
        }
    }
    // The async ones at least were cut, over both protocols.
    assert!(cut >= 4, "only {cut} responses were cut");
    let logs = capture_logs();
    for message in ["sync body panic on purpose", "sync writer panic on purpose"] {
        logs.wait_for(&["ERROR", "panicked", message]).await;
    }
    logs.wait_for(&[
        "ERROR",
        "panicked after its response started; cutting it",
        "async body panic on purpose",
    ])
    .await;
    logs.wait_for(&["sync body error on purpose"]).await;
    logs.wait_for(&[
        "WARN",
        "failed after its response started; cutting it",
        "async body error on purpose",
    ])
    .await;
    assert_nothing_leaks(&serving, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handlers_breaking_the_protocol_get_a_500_and_an_error_log() {
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for action in [
            "silent",
            "body-first",
            "double-start",
            "half",
            "error-early",
        ] {
            let path = format!("/a/misuse-{}/{action}", tag(proto));
            let (status, _) = status_and_ending(&mut conn, &path).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            // Not cut: the same connection goes on.
            assert_eq!(conn.get("/a/hello").await.text(), "hello async", "{path}");
        }
        // A message after the end is the handler's error; the response was already whole.
        let path = format!("/a/misuse-{}/after-end", tag(proto));
        let r = conn.get(&path).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "done"));
    }
    let logs = capture_logs();
    for needles in [
        &[
            "ERROR",
            "protocol misuse: handler returned without sending a response",
            "path=/a/misuse-h1/silent",
        ][..],
        &[
            "ERROR",
            "protocol misuse by a handler",
            "sent before http.response.start",
        ][..],
        &[
            "ERROR",
            "protocol misuse by a handler",
            "http.response.start sent a second time",
        ][..],
        &[
            "ERROR",
            "protocol misuse: handler returned before finishing its response",
            "path=/a/misuse-h1/half",
        ][..],
        &[
            "ERROR",
            "handler failed before its response started",
            "async early error on purpose",
        ][..],
        &["WARN", "handler failed after completing its response"][..],
    ] {
        logs.wait_for(needles).await;
    }
    assert_nothing_leaks(&serving, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_body_shorter_than_its_content_length_is_cut() {
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    for (i, proto) in BOTH.into_iter().enumerate() {
        let path = format!("/s/short-{}/short-body", tag(proto));
        let mut conn = Conn::open(addr, proto).await;
        let req = conn.request(Method::GET, &path).body(empty()).unwrap();
        // Whichever the server sees first: the whole (short) body, refused as a 500; or the
        // head, then a body that ends early, cut (with the head, or before hyper flushed it).
        match within(&path, conn.send(req)).await {
            Ok(resp) if resp.status() == StatusCode::INTERNAL_SERVER_ERROR => {}
            Ok(resp) => {
                assert_eq!(resp.status(), StatusCode::OK, "{path}");
                assert!(
                    !within(&path, body_ends_cleanly(resp)).await,
                    "{path}: 10 bytes of a declared 100 ended cleanly"
                );
            }
            Err(e) => assert!(
                proto == Proto::H2 || e.is_incomplete_message(),
                "{path}: {e}"
            ),
        }
        eventually("the body's cleanup", || closed.get() == i + 1).await;
        assert_eq!(get(addr, proto, "/s/hello").await.status, StatusCode::OK);
    }
    assert_nothing_leaks(&serving, &live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_drop_panics_when_cancelled_does_not_take_the_server_down() {
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let req = conn
            .request(Method::GET, "/a/bomb/panic-on-drop")
            .body(empty())
            .unwrap();
        let resp = within("the head", conn.send(req)).await.expect("a head");
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
        drop(conn); // the handler is dropped, and its drop panics
        assert_nothing_leaks(&serving, &live).await;
        // Still serving, both kinds.
        assert_eq!(get(addr, proto, "/s/hello").await.text(), "hello sync");
        assert_eq!(get(addr, proto, "/a/hello").await.text(), "hello async");
    }
}

/// Panics in a row, bounded: every one is a 500 and nothing accumulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_panics_leak_nothing() {
    const ROUNDS: usize = 50;
    let (live, closed) = (Live::new(), Closed::default());
    let serving = start(&live, &closed).await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H2).await;
    for i in 0..ROUNDS {
        let mount = if i % 2 == 0 { "s" } else { "a" };
        let r = conn.get(&format!("/{mount}/many/panic-early")).await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_nothing_leaks(&serving, &live).await;
    assert_eq!(live.total(), ROUNDS);
}

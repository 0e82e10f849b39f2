//! End-to-end tests of the server's own behaviour (routing, limits, failures, lifespan,
//! shutdown), with small handlers written for each test, over real sockets.

mod support;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use support::*;
use tokio::sync::mpsc;

async fn start(server: Server) -> Serving {
    init_tracing();
    within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

fn text(s: impl Into<String>) -> SyncResponse {
    http::Response::new(SyncBody::from(s.into()))
}

async fn respond(
    send: &mut Sender,
    status: StatusCode,
    body: impl Into<Bytes>,
) -> Result<(), Error> {
    send.send(Message::start(status, HeaderMap::new())).await?;
    send.send(Message::body(body, false)).await
}

/// What tests observe from inside handlers.
#[derive(Clone)]
struct Probe {
    events: mpsc::UnboundedSender<String>,
    /// Opened by the test to let blocked handlers finish.
    gate: CancellationToken,
    /// Opened by the test to let `panic-later` handlers panic.
    panic_gate: CancellationToken,
    calls: Arc<AtomicUsize>,
}

impl Probe {
    fn new() -> (Probe, mpsc::UnboundedReceiver<String>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Probe {
                events,
                gate: CancellationToken::new(),
                panic_gate: CancellationToken::new(),
                calls: Arc::new(AtomicUsize::new(0)),
            },
            rx,
        )
    }

    fn say(&self, what: impl Into<String>) {
        let _ = self.events.send(what.into());
    }
}

/// Waits for the next event, skipping lifespan startup unless it is the one wanted.
async fn expect_event(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    loop {
        let got = within(&format!("event {want:?}"), rx.recv()).await;
        if got.as_deref() == Some("startup") && want != "startup" {
            continue;
        }
        assert_eq!(got.as_deref(), Some(want));
        return;
    }
}

/// A sync app and an async app with routes for the tests below.
fn test_router(probe: &Probe) -> Router {
    let p = probe.clone();
    let sync_app = sync_fn(move |mut req: SyncRequest| {
        p.calls.fetch_add(1, Ordering::SeqCst);
        match req.path() {
            "/hello" => text("hello sync"),
            "/where" => text(format!(
                "{} {} {}",
                req.root_path(),
                req.path(),
                req.client().map(|a| a.port()).unwrap_or(0)
            )),
            "/read" => {
                let mut all = Vec::new();
                match req.body_mut().read_to_end(&mut all) {
                    Ok(n) => text(format!("read {n}")),
                    Err(e) => text(format!("read failed: {e}")),
                }
            }
            "/block" => {
                p.say("sync started");
                let released = loop {
                    if p.gate.wait_timeout(Duration::from_millis(5)) {
                        break true;
                    }
                    if req.cancellation().is_cancelled() {
                        break false;
                    }
                };
                if !released {
                    p.say("sync cancelled");
                }
                text("sync released")
            }
            "/state" => text(
                req.state()
                    .get::<Tag>()
                    .map_or("no state".to_owned(), |t| t.0.to_owned()),
            ),
            "/panic" => panic!("sync panic on purpose"),
            "/panic-later" => {
                let gate = p.panic_gate.clone();
                let parts = (0..3).map(move |i| {
                    if i == 1 {
                        gate.wait();
                        panic!("sync body panic on purpose");
                    }
                    Bytes::from("part")
                });
                http::Response::new(SyncBody::chunks(parts))
            }
            _ => http::Response::builder()
                .status(404)
                .body(SyncBody::empty())
                .unwrap(),
        }
    });
    let p = probe.clone();
    let async_app = asgi_fn(move |scope, mut receive, mut send| {
        let p = p.clone();
        async move {
            let scope = match scope {
                Scope::Http(s) => s,
                Scope::Lifespan(l) => loop {
                    match receive.receive().await? {
                        Event::Startup => {
                            l.state().insert(Tag("from lifespan"));
                            p.say("startup");
                            send.send(Message::StartupComplete).await?;
                        }
                        Event::Shutdown => {
                            p.say("shutdown");
                            return send.send(Message::ShutdownComplete).await;
                        }
                        _ => {}
                    }
                },
                _ => return Ok(()),
            };
            p.calls.fetch_add(1, Ordering::SeqCst);
            match scope.path() {
                "/hello" => respond(&mut send, StatusCode::OK, "hello async").await,
                "/where" => {
                    let port = scope.client().map(|a| a.port()).unwrap_or(0);
                    let body = format!("{} {} {port}", scope.root_path(), scope.path());
                    respond(&mut send, StatusCode::OK, body).await
                }
                "/read" => {
                    // Propagating the error: the server answers 413 if the body was too large.
                    let mut n = 0;
                    while let Event::Request { body, more_body } = receive.receive().await? {
                        n += body.len();
                        if !more_body {
                            break;
                        }
                    }
                    respond(&mut send, StatusCode::OK, format!("read {n}")).await
                }
                "/block" => {
                    p.say("async started");
                    struct Dropped(Probe);
                    impl Drop for Dropped {
                        fn drop(&mut self) {
                            self.0.say("async dropped");
                        }
                    }
                    let guard = Dropped(p.clone());
                    p.gate.cancelled().await;
                    std::mem::forget(guard);
                    respond(&mut send, StatusCode::OK, "async released").await
                }
                "/context" => {
                    #[derive(Clone)]
                    struct Mark(u32);
                    scope.context().insert(Mark(7));
                    let seen = sync_to_async(|| {
                        Context::current()
                            .and_then(|c| c.get::<Mark>())
                            .map(|m| m.0)
                    })
                    .await?;
                    respond(&mut send, StatusCode::OK, format!("{seen:?}")).await
                }
                "/state" => {
                    let t = scope.state().get::<Tag>().map_or("no state", |t| t.0);
                    respond(&mut send, StatusCode::OK, t).await
                }
                "/panic" => panic!("async panic on purpose"),
                "/panic-later" => {
                    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                        .await?;
                    send.send(Message::body("part", true)).await?;
                    p.panic_gate.cancelled().await;
                    panic!("async body panic on purpose")
                }
                "/silent" => Ok(()),
                "/half" => {
                    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                        .await?;
                    send.send(Message::body("half", true)).await
                }
                "/misuse" => {
                    // A body before the start: the sender refuses it; the handler gives up.
                    send.send(Message::body("too early", false)).await
                }
                "/stream" => {
                    send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                        .await?;
                    for _ in 0..100 {
                        send.send(Message::body(vec![b'x'; 1000], true)).await?;
                    }
                    send.send(Message::body(Bytes::new(), false)).await
                }
                _ => respond(&mut send, StatusCode::NOT_FOUND, "").await,
            }
        }
    });
    let nested = Router::new().mount_async(
        "/v1",
        asgi_fn(|scope, _r, mut send| async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let body = format!("{} {}", scope.root_path(), scope.path());
            respond(&mut send, StatusCode::OK, body).await
        }),
    );
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
        .nest("/api", nested)
}

#[derive(Clone)]
struct Tag(&'static str);

fn test_server(probe: &Probe) -> Server {
    Server::new(test_router(probe))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_answer_over_http1_and_http2_on_one_port() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let r = conn.get("/s/hello").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "hello sync"));
        let r = conn.get("/a/hello").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "hello async"));
        let want = if proto == Proto::H1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        assert_eq!(r.version, want);
    }
    within("shutdown", serving.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_of_both_kinds_run_concurrently_on_one_connection() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let conn = Conn::open(serving.local_addr().unwrap(), Proto::H2).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let path = if i % 2 == 0 { "/s/hello" } else { "/a/hello" };
        let req = conn.request(Method::GET, path).body(empty()).unwrap();
        let mut sender = conn.h2_sender();
        tasks.push(tokio::spawn(async move {
            sender.ready().await.expect("an open connection");
            let resp = sender.send_request(req).await.expect("sending");
            Reply::read(resp).await.expect("reading").status
        }));
    }
    for t in tasks {
        assert_eq!(within("a stream", t).await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_connection_across_kinds() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let mut conn = Conn::open(serving.local_addr().unwrap(), Proto::H1).await;
    let port = conn.local_addr.port();
    for i in 0..6 {
        let path = if i % 2 == 0 { "/s/where" } else { "/a/where" };
        let r = conn.get(path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().ends_with(&format!(" {port}")), "{}", r.text());
    }
    assert!(!conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_handler_left_unread_is_discarded_and_the_connection_kept() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;
    for path in ["/s/hello", "/a/hello"] {
        // The handler answers before any of the body was sent, and never reads it.
        let (tx, body) = channel();
        let req = conn.request(Method::POST, path).body(body).unwrap();
        let r = conn.fetch(req).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        for _ in 0..3 {
            tx.send(Bytes::from(vec![b'x'; 1000])).await.unwrap();
        }
        drop(tx);
        let r = conn.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
    }
    assert!(!conn.is_closed());

    // Too much left unread (declared or sent): the server does not read it, and the
    // connection closes after the response.
    for case in ["sent", "declared"] {
        let declared = case == "declared";
        let mut conn = Conn::open(addr, Proto::H1).await;
        let (tx, body) = channel();
        let mut req = conn.request(Method::POST, "/s/hello");
        if declared {
            req = req.header(http::header::CONTENT_LENGTH, 1024 * 1024);
        }
        let r = conn.fetch(req.body(body).unwrap()).await;
        assert_eq!(r.status, StatusCode::OK);
        let feed = tokio::spawn(async move {
            for _ in 0..if declared { 0 } else { 64 } {
                if tx.send(Bytes::from(vec![b'x'; 16 * 1024])).await.is_err() {
                    break;
                }
            }
        });
        conn.closed().await;
        feed.abort();
    }

    // A client that waits to be asked for its body (`Expect: 100-continue`) is not asked for
    // what is left unread: the connection closes after the response rather than waiting (5 s)
    // for a body. (An async handler that never reads is never asked for it at all; a sync
    // handler's body is read ahead from its first chunk, which asks.)
    for path in ["/a/hello", "/s/hello"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\nexpect: 100-continue\r\n\r\n"
        );
        let (out, closed) = raw_exchange(addr, head.as_bytes(), Duration::from_secs(4)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.contains("HTTP/1.1 200 OK"), "{path}: {out}");
        if path.starts_with("/a") {
            assert!(!out.contains("100 Continue"), "{out}");
        }
        assert!(closed, "{path}: the connection stayed open: {out}");
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_sets_root_path_and_falls_back_to_404() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        assert_eq!(
            conn.get("/s/where").await.text(),
            "/s /where 0".replace(" 0", &format!(" {}", conn.local_addr.port()))
        );
        assert_eq!(conn.get("/api/v1/x/y?q=1").await.text(), "/api/v1 /x/y");
        assert_eq!(conn.get("/api/v1").await.text(), "/api/v1 ");
        assert_eq!(conn.get("/nowhere").await.status, StatusCode::NOT_FOUND);
        assert_eq!(conn.get("/sx/hello").await.status, StatusCode::NOT_FOUND);
        // Inside the nested router but matching none of its mounts.
        assert_eq!(conn.get("/api/v2").await.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_headers_without_the_body() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for path in ["/s/hello", "/a/hello"] {
            let req = conn.request(Method::HEAD, path).body(empty()).unwrap();
            let r = conn.fetch(req).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body.is_empty());
            assert_eq!(
                r.header("content-length"),
                Some(if path.starts_with("/s") { "10" } else { "11" })
            );
        }
        // The connection is still usable.
        assert_eq!(conn.get("/a/hello").await.text(), "hello async");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_413_before_the_handler_runs() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe).max_body_bytes(1000)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for path in ["/s/read", "/a/read"] {
            let mut conn = Conn::open(addr, proto).await;
            let r = conn.post(path, full(vec![b'a'; 1001])).await;
            assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{path} {proto:?}");
        }
    }
    assert_eq!(probe.calls.load(Ordering::SeqCst), 0, "no handler ran");
    // At the limit is fine.
    let mut conn = Conn::open(addr, Proto::H1).await;
    assert_eq!(
        conn.post("/s/read", full(vec![b'a'; 1000])).await.text(),
        "read 1000"
    );
    assert_eq!(
        conn.post("/a/read", full(vec![b'a'; 1000])).await.text(),
        "read 1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_is_413_for_both_kinds() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe).max_body_bytes(1000)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for path in ["/s/read", "/a/read"] {
            let mut conn = Conn::open(addr, proto).await;
            let chunks = (0..5).map(|_| Bytes::from(vec![b'a'; 300]));
            let r = conn.post(path, chunked(chunks)).await;
            assert_eq!(
                r.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{path} {proto:?}: {}",
                r.text()
            );
            let mut conn = Conn::open(addr, proto).await;
            let chunks = (0..3).map(|_| Bytes::from(vec![b'a'; 300]));
            assert_eq!(conn.post(path, chunked(chunks)).await.text(), "read 900");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_pool_is_503_with_retry_after_async_unaffected_then_recovers() {
    let (probe, mut rx) = Probe::new();
    let server = test_server(&probe)
        .blocking_threads(1)
        .queue_timeout(Duration::from_millis(50));
    let serving = start(server).await;
    let addr = serving.local_addr().unwrap();
    // Take the only blocking slot.
    let mut blocker = Conn::open(addr, Proto::H1).await;
    let blocked = tokio::spawn(async move { blocker.get("/s/block").await });
    expect_event(&mut rx, "sync started").await;
    assert_eq!(serving.blocking_pool().in_flight(), 1);
    for proto in BOTH {
        let r = get(addr, proto, "/s/hello").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("retry-after"), Some("1"));
        // Async handlers do not need a blocking slot.
        let r = get(addr, proto, "/a/hello").await;
        assert_eq!(r.text(), "hello async");
    }
    probe.gate.cancel();
    assert_eq!(
        within("the blocked request", blocked).await.unwrap().text(),
        "sync released"
    );
    eventually("the slot to come back", || {
        serving.blocking_pool().in_flight() == 0
    })
    .await;
    assert_eq!(get(addr, Proto::H1, "/s/hello").await.text(), "hello sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_before_the_response_is_500_and_the_server_carries_on() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for path in ["/s/panic", "/a/panic"] {
            let r = conn.get(path).await;
            assert_eq!(
                r.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path} {proto:?}"
            );
        }
        // Same connection, still serving both kinds.
        assert_eq!(conn.get("/s/hello").await.text(), "hello sync");
        assert_eq!(conn.get("/a/hello").await.text(), "hello async");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_after_the_response_started_cuts_it() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    let mut responses = Vec::new();
    for proto in BOTH {
        for path in ["/s/panic-later", "/a/panic-later"] {
            let mut conn = Conn::open(addr, proto).await;
            let req = conn.request(Method::GET, path).body(empty()).unwrap();
            let resp = within("the head", conn.send(req)).await.expect("a head");
            assert_eq!(resp.status(), StatusCode::OK);
            responses.push((conn, resp, path, proto));
        }
    }
    // Every head has arrived: now the handlers panic.
    probe.panic_gate.cancel();
    for (_conn, resp, path, proto) in responses {
        assert!(
            !within("the body", body_ends_cleanly(resp)).await,
            "{path} {proto:?} was not cut"
        );
    }
    for proto in BOTH {
        assert_eq!(get(addr, proto, "/a/hello").await.status, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_misuse_is_500_or_a_cut() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for path in ["/a/silent", "/a/misuse", "/a/half"] {
            let mut conn = Conn::open(addr, proto).await;
            let r = conn.get(path).await;
            assert_eq!(
                r.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path} {proto:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_async_response_arrives_whole() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    for proto in BOTH {
        let r = get(serving.local_addr().unwrap(), proto, "/a/stream").await;
        assert_eq!(r.body.len(), 100_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_context_is_current_inside_async_handlers() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let r = get(serving.local_addr().unwrap(), Proto::H1, "/a/context").await;
    assert_eq!(r.text(), "Some(7)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_blocking_and_async_handlers() {
    let (probe, mut rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let req = conn.request(Method::GET, "/s/block").body(empty()).unwrap();
        let pending = tokio::spawn(async move {
            let _ = conn.send(req).await;
        });
        expect_event(&mut rx, "sync started").await;
        pending.abort(); // drops the connection
        expect_event(&mut rx, "sync cancelled").await;

        let mut conn = Conn::open(addr, proto).await;
        let req = conn.request(Method::GET, "/a/block").body(empty()).unwrap();
        let pending = tokio::spawn(async move {
            let _ = conn.send(req).await;
        });
        expect_event(&mut rx, "async started").await;
        pending.abort();
        expect_event(&mut rx, "async dropped").await;
    }
    eventually("the blocking slot to come back", || {
        serving.blocking_pool().in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let (probe, mut rx) = Probe::new();
    // A header timeout longer than every wait below: it also closes idle keep-alive
    // connections, and here only the shutdown may.
    let serving = start(
        test_server(&probe)
            .grace_period(Duration::from_secs(60))
            .header_read_timeout(Some(Duration::from_secs(120))),
    )
    .await;
    expect_event(&mut rx, "startup").await;
    let addr = serving.local_addr().unwrap();
    let mut in_flight = Vec::new();
    for (proto, path, started) in [
        (Proto::H1, "/s/block", "sync started"),
        (Proto::H1, "/a/block", "async started"),
        (Proto::H2, "/s/block", "sync started"),
        (Proto::H2, "/a/block", "async started"),
    ] {
        let mut conn = Conn::open(addr, proto).await;
        in_flight.push(tokio::spawn(async move { conn.get(path).await }));
        expect_event(&mut rx, started).await;
    }
    let mut idle = Conn::open(addr, Proto::H1).await;
    assert_eq!(idle.get("/a/hello").await.status, StatusCode::OK);

    let handle = serving.shutdown_handle();
    let done = tokio::spawn(serving.wait());
    handle.shutdown();
    // The listener closes at once...
    let mut refused = false;
    within("new connections to be refused", async {
        while !refused {
            refused = tokio::net::TcpStream::connect(addr).await.is_err();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // ...and idle keep-alive connections are closed.
    idle.closed().await;
    // In-flight requests of both kinds still finish.
    assert!(!done.is_finished());
    probe.gate.cancel();
    for (i, r) in in_flight.into_iter().enumerate() {
        let r = within("an in-flight request", r).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert!(r.text().ends_with("released"));
    }
    within("the server to stop", done).await.unwrap().unwrap();
    // Lifespan shutdown ran after draining.
    expect_event(&mut rx, "shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_still_running_at_the_grace_deadline_are_cut_and_cancelled() {
    let (probe, mut rx) = Probe::new();
    let serving = start(test_server(&probe).grace_period(Duration::from_millis(200))).await;
    expect_event(&mut rx, "startup").await;
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;
    let req = conn.request(Method::GET, "/s/block").body(empty()).unwrap();
    let pending = tokio::spawn(async move { conn.send(req).await.map(|_| ()) });
    expect_event(&mut rx, "sync started").await;
    within("the server to stop", serving.shutdown())
        .await
        .unwrap();
    let mut seen = vec![
        within("an event", rx.recv()).await.unwrap(),
        within("an event", rx.recv()).await.unwrap(),
    ];
    seen.sort();
    assert_eq!(seen, ["shutdown", "sync cancelled"]);
    assert!(
        within("the client", pending).await.unwrap().is_err(),
        "the request was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifespan_state_reaches_both_kinds() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    assert_eq!(
        get(addr, Proto::H1, "/s/state").await.text(),
        "from lifespan"
    );
    assert_eq!(
        get(addr, Proto::H2, "/a/state").await.text(),
        "from lifespan"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifespan_startup_failure_stops_the_server_before_it_listens() {
    init_tracing();
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let good = asgi_fn(move |scope, mut receive, mut send| {
        let ev = ev.clone();
        async move {
            if let Scope::Lifespan(_) = scope {
                loop {
                    match receive.receive().await? {
                        Event::Startup => send.send(Message::StartupComplete).await?,
                        Event::Shutdown => {
                            ev.lock().unwrap().push("good shut down");
                            return send.send(Message::ShutdownComplete).await;
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
    });
    let bad = asgi_fn(|scope, mut receive, mut send| async move {
        if let Scope::Lifespan(_) = scope {
            receive.receive().await?;
            send.send(Message::StartupFailed {
                message: "no database".into(),
            })
            .await?;
        }
        Ok(())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new()
        .mount_async("/good", good)
        .mount_async("/bad", bad);
    let err = within("startup", Server::new(router).serve_listener(listener))
        .await
        .unwrap_err();
    assert!(err.is_startup(), "{err}");
    assert!(err.to_string().contains("no database"), "{err}");
    assert!(err.to_string().contains("/bad"), "{err}");
    assert_eq!(*events.lock().unwrap(), ["good shut down"]);
    // Nothing is listening.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let panics = asgi_fn(|scope, _r, _s| async move {
        if let Scope::Lifespan(_) = scope {
            panic!("startup exploded");
        }
        Ok(())
    });
    let err = within(
        "startup",
        Server::new(Router::new().mount_async("/", panics)).bind("127.0.0.1:0"),
    )
    .await
    .unwrap_err();
    assert!(
        err.is_startup() && err.to_string().contains("startup exploded"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_are_431() {
    let (probe, _rx) = Probe::new();
    let serving = start(
        test_server(&probe)
            .max_headers(20)
            .max_header_bytes(16 * 1024),
    )
    .await;
    let addr = serving.local_addr().unwrap();
    let mut many = String::from("GET /a/hello HTTP/1.1\r\nHost: x\r\n");
    for i in 0..40 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let (out, _) = raw_exchange(addr, many.as_bytes(), PATIENCE).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let big = format!(
        "GET /a/hello HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(32 * 1024)
    );
    let (out, _) = raw_exchange(addr, big.as_bytes(), PATIENCE).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // A normal request still works.
    let (out, _) = raw_exchange(
        addr,
        b"GET /a/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

/// The default limit (100) is left to hyper rather than set, so it needs its own check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_header_limit_is_100() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe)).await;
    let addr = serving.local_addr().unwrap();
    let head = |n: usize| {
        let mut h = String::from("GET /a/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 2..n {
            h.push_str(&format!("x-h{i}: v\r\n"));
        }
        h + "\r\n"
    };
    let (out, _) = raw_exchange(addr, head(100).as_bytes(), PATIENCE).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (out, _) = raw_exchange(addr, head(101).as_bytes(), PATIENCE).await;
    assert!(
        out.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_clients_are_cut_at_the_header_timeout() {
    let (probe, _rx) = Probe::new();
    let server = test_server(&probe).header_read_timeout(Some(Duration::from_millis(300)));
    let serving = start(server).await;
    let addr = serving.local_addr().unwrap();
    // Half a request head, then nothing (slowloris).
    let (out, closed) = raw_exchange(addr, b"GET /a/hello HTTP/1.1\r\nHost: x\r\n", PATIENCE).await;
    assert!(closed, "the server closed the connection");
    assert!(!out.starts_with(b"HTTP/1.1 200"));
    // Nothing at all.
    let (_, closed) = raw_exchange(addr, b"", PATIENCE).await;
    assert!(closed, "the server closed the silent connection");
    // A prompt client is served.
    let (out, _) = raw_exchange(
        addr,
        b"GET /a/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
}

/// The header timeout runs only while a connection waits for a head: a request that takes
/// longer is served, and the keep-alive connection is closed once it has idled for the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_spares_requests_in_progress_and_closes_idle_keep_alive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = Duration::from_millis(300);
    let (probe, mut rx) = Probe::new();
    let serving = start(test_server(&probe).header_read_timeout(Some(timeout))).await;
    let mut stream = tokio::net::TcpStream::connect(serving.local_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /s/block HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    expect_event(&mut rx, "sync started").await;
    tokio::time::sleep(timeout * 3).await;
    probe.gate.cancel();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    within("the blocked response", async {
        while !out.ends_with(b"sync released") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-request: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let idle = std::time::Instant::now();
    let n = within("the idle connection to close", stream.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "the connection stayed usable");
    assert!(idle.elapsed() >= timeout - Duration::from_millis(50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_over_a_unix_socket() {
    let (probe, _rx) = Probe::new();
    let dir = std::env::temp_dir().join(format!("amphi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    init_tracing();
    let serving = within("binding", test_server(&probe).bind_unix(&path))
        .await
        .unwrap();
    assert!(serving.local_addr().is_none());
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for p in ["/s/where", "/a/where"] {
        let req = http::Request::get(p)
            .header("host", "local")
            .body(empty())
            .unwrap();
        let r = within("a request", async {
            sender.ready().await.unwrap();
            Reply::read(sender.send_request(req).await.unwrap())
                .await
                .unwrap()
        })
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().ends_with(" 0"), "no client address: {}", r.text());
    }
    within("shutdown", serving.shutdown()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_connections_wait_for_a_free_one() {
    let (probe, _rx) = Probe::new();
    let serving = start(test_server(&probe).max_connections(1)).await;
    let addr = serving.local_addr().unwrap();
    let mut first = Conn::open(addr, Proto::H1).await;
    assert_eq!(first.get("/a/hello").await.status, StatusCode::OK);
    // The second connection is accepted by the kernel but not served while the first is open.
    let second = tokio::spawn(async move { get(addr, Proto::H1, "/a/hello").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "served past the connection limit");
    drop(first);
    let r = within("the second connection to be served", second)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

/// Records the fields of every `amphi::access` event.
mod access_capture {
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};

    pub(crate) type Lines = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

    pub(crate) struct Capture(pub(crate) Lines);

    struct Fields(BTreeMap<String, String>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            if event.metadata().target() == "amphi::access" {
                let mut fields = Fields(BTreeMap::new());
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.0);
            }
        }
    }
}

// A current-thread runtime, so the server's tasks (where access lines are logged) run on the
// thread whose default subscriber captures them.
#[tokio::test(flavor = "current_thread")]
async fn every_request_gets_an_access_log_line() {
    use tracing_subscriber::layer::SubscriberExt;
    let lines = access_capture::Lines::default();
    let subscriber = tracing_subscriber::registry().with(access_capture::Capture(lines.clone()));
    let _default = tracing::subscriber::set_default(subscriber);
    let (probe, _rx) = Probe::new();
    let serving = Server::new(test_router(&probe))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = serving.local_addr().unwrap();
    let mut conn = Conn::open(addr, Proto::H1).await;
    conn.get("/s/hello").await;
    conn.get("/a/stream").await;
    conn.get("/nowhere").await;
    conn.get("/a/panic").await;
    within("shutdown", serving.shutdown()).await.unwrap();
    let lines = lines.lock().unwrap().clone();
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l.get("path").map(String::as_str) == Some(path))
            .unwrap_or_else(|| panic!("no access line for {path}: {lines:?}"))
            .clone()
    };
    let l = find("/s/hello");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["status"], "200");
    assert_eq!(l["bytes"], "10");
    assert_eq!(l["kind"], "sync");
    assert_eq!(l["outcome"], "complete");
    assert!(l.contains_key("duration_us"));
    let l = find("/a/stream");
    assert_eq!(
        (l["kind"].as_str(), l["bytes"].as_str()),
        ("async", "100000")
    );
    let l = find("/nowhere");
    assert_eq!((l["kind"].as_str(), l["status"].as_str()), ("none", "404"));
    assert_eq!(find("/a/panic")["status"], "500");
}

/// A sync handler answers with a whole `http::Response`, version included; the version on the
/// wire is the connection's, whichever path the request took (a GET's body is complete at the
/// call and skips the event protocol, a POST's streams in through it). A handler's `HTTP/3`
/// once reached hyper on the GET path, which panicked in the connection task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handlers_response_version_does_not_reach_the_wire() {
    let app = sync_fn(|req: SyncRequest| {
        let version = if req.query_string() == "v=3" {
            http::Version::HTTP_3
        } else {
            http::Version::HTTP_10
        };
        http::Response::builder()
            .version(version)
            .body(SyncBody::from("ok"))
            .unwrap()
    });
    let serving = start(Server::new(Router::new().mount_sync("/", app))).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let want = if proto == Proto::H1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_2
        };
        let mut conn = Conn::open(addr, proto).await;
        for path in ["/?v=3", "/?v=1"] {
            let r = conn.get(path).await;
            assert_eq!(
                (r.status, r.text(), r.version),
                (StatusCode::OK, "ok", want)
            );
            let r = conn.post(path, full("x")).await;
            assert_eq!(
                (r.status, r.text(), r.version),
                (StatusCode::OK, "ok", want)
            );
        }
    }
    within("shutdown", serving.shutdown()).await.unwrap();
}

/// A sync handler reads the same body whichever way it arrives: with its head (handed over
/// whole), in pieces sent at once, or in pieces still on their way when the handler runs. The
/// declared length comes with a `Content-Length` body only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_handler_reads_the_whole_body_however_it_arrives() {
    let app = sync_fn(|mut req: SyncRequest| {
        let declared = req.body_mut().content_length();
        let mut got = String::new();
        let read = req.body_mut().read_to_string(&mut got);
        text(format!("{declared:?} {} {got}", read.is_ok()))
    });
    let serving = start(Server::new(Router::new().mount_sync("/", app))).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let r = conn.post("/", full(r#"{"name":"ada"}"#)).await;
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, r#"Some(14) true {"name":"ada"}"#)
        );
        let r = conn
            .post("/", chunked([Bytes::from("one "), Bytes::from("two")]))
            .await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "None true one two"));
        // The second piece comes only once the handler may be waiting for it.
        let (tx, body) = channel();
        let pending = tokio::spawn({
            let mut conn = Conn::open(addr, proto).await;
            async move { conn.post("/", body).await }
        });
        tx.send(Bytes::from("first ")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Bytes::from("second")).await.unwrap();
        drop(tx);
        let r = within("the streamed body's answer", pending).await.unwrap();
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, "None true first second")
        );
    }
    within("shutdown", serving.shutdown()).await.unwrap();
}

/// The size of each of the three chunks of `shapes_router`'s large bodies: more than the
/// connection's write buffer (`DEFAULT_MAX_HEADER_BYTES`, 64 KiB).
const LARGE_CHUNK: usize = 200 * 1024;

/// A router whose handlers answer with bodies of every shape a connection writes: a small
/// full body, and bodies of several chunks larger than the connection's write buffer.
fn shapes_router() -> Router {
    let sync_app = sync_fn(|req: SyncRequest| match req.path() {
        "/small" => text("small sync"),
        _ => {
            let chunks = (0..3u8).map(|i| Bytes::from(vec![b'a' + i; LARGE_CHUNK]));
            http::Response::new(SyncBody::chunks(chunks))
        }
    });
    let async_app = asgi_fn(|scope, _receive, mut send| async move {
        let Scope::Http(scope) = scope else {
            return Ok(());
        };
        if scope.path() == "/small" {
            return respond(&mut send, StatusCode::OK, "small async").await;
        }
        send.send(Message::start(StatusCode::OK, HeaderMap::new()))
            .await?;
        for i in 0..3u8 {
            send.send(Message::body(vec![b'a' + i; LARGE_CHUNK], true))
                .await?;
        }
        send.send(Message::body(Bytes::new(), false)).await
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flattened_writes_send_the_same_responses_as_vectored_ones() {
    // Pipelined on one connection: small and large bodies of both kinds, the large ones in
    // chunks bigger than the write buffer, then a request that closes the connection.
    let request = b"GET /s/small HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /a/large HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /a/small HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /s/large HTTP/1.1\r\nhost: x\r\n\r\n\
        GET /s/small HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let large: Vec<u8> = (0..3u8)
        .flat_map(|i| std::iter::repeat_n(b'a' + i, LARGE_CHUNK))
        .collect();
    for flatten in [false, true] {
        let serving = start(Server::new(shapes_router()).flatten_writes(flatten)).await;
        let addr = serving.local_addr().unwrap();
        let (bytes, closed) = raw_exchange(addr, request, Duration::from_secs(10)).await;
        assert!(
            closed,
            "flatten {flatten}: the last request closes the connection"
        );
        let (responses, rest) = parse_responses(&bytes, false);
        assert_eq!(
            responses.len(),
            5,
            "flatten {flatten}: every request answered"
        );
        assert!(
            rest.is_empty(),
            "flatten {flatten}: nothing after the answers"
        );
        let got: Vec<&[u8]> = responses.iter().map(|r| &r.body[..]).collect();
        assert_eq!(got[0], b"small sync");
        assert!(
            got[1] == &large[..],
            "flatten {flatten}: the async large body"
        );
        assert_eq!(got[2], b"small async");
        assert!(
            got[3] == &large[..],
            "flatten {flatten}: the sync large body"
        );
        assert_eq!(got[4], b"small sync");
        assert!(responses.iter().all(|r| r.status == 200));
        within("shutdown", serving.shutdown()).await.unwrap();
    }
}

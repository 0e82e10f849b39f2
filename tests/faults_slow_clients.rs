//! Fault suite: slow clients. Hundreds of connections trickling their request heads
//! (slowloris) while normal clients keep being served, all slow ones closed after the header
//! timeout; and request bodies that trickle forever or stall, which the minimum body rate
//! bounds (`Server::min_body_rate`), for both handler kinds, without cutting an upload that
//! keeps up or a handler that reads slowly.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amphi::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Slowloris connections opened at once. 500 is the figure and runs in about four
/// seconds on a loaded 2-core machine (1000 sockets in one process: far below the usual
/// descriptor limits); lower it here if a box cannot take it.
const SLOW_CONNECTIONS: usize = 500;
/// Long enough for normal clients to be served while every slow connection is still open,
/// on a loaded machine.
const HEADER_TIMEOUT: Duration = Duration::from_millis(3000);
/// How often a slow client sends one more header line.
const TRICKLE_EVERY: Duration = Duration::from_millis(100);

/// The body-rate settings of the body tests: after the grace period, 1000 bytes/s.
const MIN_RATE: u64 = 1000;
const RATE_GRACE: Duration = Duration::from_millis(300);
/// The slow readers' pause after their first read: longer than the grace period plus what
/// their whole body ([`SLOW_BODY`] bytes) earns at the minimum rate.
const SLOW_PAUSE: Duration = Duration::from_millis(1200);
/// The body a slow reader gets: 100 bytes, then 8 chunks of 50 (more than the 4 chunks a
/// sync handler's body reads ahead, so the server stops reading while the handler pauses).
const SLOW_BODY: usize = 500;

fn router(events: mpsc::UnboundedSender<String>) -> Router {
    let ev = events.clone();
    let sync_app = sync_fn(move |mut req: SyncRequest| match req.path() {
        "/read" | "/read-slowly" => {
            let slowly = req.path() == "/read-slowly";
            let mut buf = [0u8; 1024];
            let mut total = 0;
            loop {
                let n = match req.body_mut().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = ev.send(format!(
                            "sync read failed: {:?} {:?}",
                            e.kind(),
                            amphi::Error::from_io(&e).map(|e| e.kind())
                        ));
                        return http::Response::builder()
                            .status(StatusCode::REQUEST_TIMEOUT)
                            .body(SyncBody::from("too slow"))
                            .unwrap();
                    }
                };
                total += n;
                if slowly && total == n {
                    // A handler that takes its time after its first read, far longer than
                    // the body's allowance: its own slowness is not held against the client.
                    std::thread::sleep(SLOW_PAUSE);
                }
                if slowly && total == SLOW_BODY {
                    let _ = ev.send("sync read slowly".to_owned());
                }
            }
            http::Response::new(SyncBody::from(format!("read {total}")))
        }
        _ => http::Response::new(SyncBody::from("hello sync")),
    });
    let async_app = asgi_fn(move |scope, mut receive, mut send| {
        let ev = events.clone();
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let body = match scope.path() {
                "/read" | "/read-slowly" => {
                    let slowly = scope.path() == "/read-slowly";
                    let mut total = 0;
                    loop {
                        match receive.receive().await {
                            Ok(Event::Request { body, more_body }) => {
                                let first = total == 0 && !body.is_empty();
                                total += body.len();
                                if slowly && first {
                                    tokio::time::sleep(SLOW_PAUSE).await;
                                }
                                if slowly && total == SLOW_BODY {
                                    let _ = ev.send("async read slowly".to_owned());
                                }
                                if !more_body {
                                    break;
                                }
                            }
                            Ok(_) => break,
                            Err(e) => {
                                let _ = ev.send(format!("async receive failed: {:?}", e.kind()));
                                // Propagated: the server answers 408.
                                return Err(e);
                            }
                        }
                    }
                    format!("read {total}")
                }
                _ => "hello async".to_owned(),
            };
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            send.send(Message::body(body, false)).await
        }
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

async fn start(
    server: impl FnOnce(Router) -> Server,
) -> (Serving, mpsc::UnboundedReceiver<String>) {
    init_tracing();
    let (tx, rx) = mpsc::unbounded_channel();
    let serving = within("binding", server(router(tx)).bind("127.0.0.1:0"))
        .await
        .expect("the server starts");
    (serving, rx)
}

/// How one slowloris connection ended.
#[derive(Debug)]
struct SlowEnd {
    /// From before connecting until the server closed the connection.
    after: Duration,
    /// What the server sent, if anything.
    got: Vec<u8>,
}

/// Opens a connection, sends the start of a request head, then one header line every
/// [`TRICKLE_EVERY`] until the server closes the connection (bounded by [`PATIENCE`]).
async fn slowloris(addr: SocketAddr, i: usize) -> SlowEnd {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut read, mut write) = stream.into_split();
    let path = if i % 2 == 0 { "/s/hello" } else { "/a/hello" };
    let _ = write
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    within("the server to close a slow connection", async {
        loop {
            tokio::select! {
                r = read.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick() => {
                    // A failed write means the server is gone too; the read will say so.
                    let _ = write.write_all(b"X-Trickle: 1\r\n").await;
                }
            }
        }
    })
    .await;
    SlowEnd {
        after: started.elapsed(),
        got,
    }
}

/// Other ways to hold a connection without ever completing a request head. Each is ended by
/// a different deadline: hyper's header timeout ends a head that started; the server's
/// first-request deadline ends a connection that never sends one.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Connects and sends nothing: not even its protocol is known.
    Silent,
    /// Sends the HTTP/2 preface and an empty SETTINGS frame, then nothing.
    H2Silent,
    /// Sends a whole request on a keep-alive connection, reads the response, then trickles
    /// the next head.
    SecondHead,
}

/// Connections of each [`Shape`], next to the slowloris ones.
const PER_SHAPE: usize = 10;

/// Opens a connection that holds the server the way `shape` says, until the server closes it
/// (bounded by [`PATIENCE`]); `got` is what came after the first response, if any.
async fn slow_shape(addr: SocketAddr, shape: Shape, i: usize) -> SlowEnd {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut read, mut write) = stream.into_split();
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    let mut trickle = false;
    match shape {
        Shape::Silent => {}
        Shape::H2Silent => {
            let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            preface.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, no settings
            write.write_all(&preface).await.unwrap();
        }
        Shape::SecondHead => {
            let path = if i % 2 == 0 { "/s/hello" } else { "/a/hello" };
            let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
            write
                .write_all(format!("{head}\r\n").as_bytes())
                .await
                .unwrap();
            let mut first = Vec::new();
            within("the first response", async {
                while parse_responses(&first, false).0.is_empty() {
                    let n = read.read(&mut buf).await.expect("the first response");
                    assert!(n > 0, "closed before the first response");
                    first.extend_from_slice(&buf[..n]);
                }
            })
            .await;
            let (responses, rest) = parse_responses(&first, false);
            assert_eq!(responses[0].status, 200, "the first request of {shape:?}");
            got = rest;
            write.write_all(head.as_bytes()).await.unwrap();
            trickle = true;
        }
    }
    let mut tick = tokio::time::interval(TRICKLE_EVERY);
    let what = format!("the server to close a {shape:?} connection");
    within(&what, async {
        loop {
            tokio::select! {
                r = read.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick(), if trickle => {
                    let _ = write.write_all(b"X-Trickle: 1\r\n").await;
                }
            }
        }
    })
    .await;
    SlowEnd {
        after: started.elapsed(),
        got,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served() {
    let (serving, _rx) = start(|r| Server::new(r).header_read_timeout(Some(HEADER_TIMEOUT))).await;
    let addr = serving.local_addr().unwrap();
    let mut slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|i| tokio::spawn(slowloris(addr, i)))
        .collect();
    for shape in [Shape::Silent, Shape::H2Silent, Shape::SecondHead] {
        for i in 0..PER_SHAPE {
            slow.push(tokio::spawn(slow_shape(addr, shape, i)));
        }
    }

    // Normal clients, both kinds, both protocols, on fresh connections (a new connection
    // must send its first request within the header timeout too, and an idle keep-alive one
    // is closed at it), served while the slow ones trickle.
    let mut served = 0;
    let mut served_while_all_slow_open = 0;
    let deadline = Instant::now() + PATIENCE;
    while !slow.iter().all(|s| s.is_finished()) && Instant::now() < deadline {
        for proto in BOTH {
            let mut conn = Conn::open(addr, proto).await;
            for (path, want) in [("/s/hello", "hello sync"), ("/a/hello", "hello async")] {
                let r = conn.get(path).await;
                assert_eq!((r.status, r.text()), (StatusCode::OK, want));
                served += 1;
                if !slow.iter().any(|s| s.is_finished()) {
                    served_while_all_slow_open += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ends = Vec::new();
    for s in slow {
        ends.push(within("a slow connection", s).await.unwrap());
    }
    for end in ends {
        assert!(
            end.after >= HEADER_TIMEOUT,
            "closed before the header timeout: {end:?}"
        );
        // Closed without a response, or with a 4xx (408), never served.
        let (responses, _) = parse_responses(&end.got, false);
        assert!(
            responses.iter().all(|r| (400..500).contains(&r.status)),
            "a slow client was answered: {:?}",
            String::from_utf8_lossy(&end.got)
        );
    }
    assert!(
        served_while_all_slow_open >= 4,
        "only {served_while_all_slow_open} of {served} normal requests were served while all \
         {SLOW_CONNECTIONS} slow connections were open"
    );
    eventually("nothing in flight", || serving.in_flight() == 0).await;
    assert_eq!(
        get(addr, Proto::H2, "/s/hello").await.status,
        StatusCode::OK
    );
}

/// A chunked request for `path` whose body is one byte every `every`, up to `bytes` bytes
/// (or until the server closes); returns the complete responses, what else came, and how
/// long the server took to end it.
async fn trickle_body(
    addr: SocketAddr,
    path: &str,
    every: Duration,
    bytes: usize,
) -> (Vec<RawResponse>, Vec<u8>, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut read, mut write) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    within("the server to end a trickling body", async {
        loop {
            tokio::select! {
                r = read.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tick.tick(), if sent < bytes => {
                    sent += 1;
                    let _ = write.write_all(b"1\r\nx\r\n").await;
                }
            }
        }
    })
    .await;
    let (responses, rest) = parse_responses(&got, false);
    (responses, rest, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_forever_is_cut_by_the_minimum_rate() {
    let (serving, mut rx) = start(|r| {
        Server::new(r)
            .min_body_rate(MIN_RATE, RATE_GRACE)
            .blocking_threads(2)
    })
    .await;
    let addr = serving.local_addr().unwrap();
    for (path, event) in [
        ("/s/read", "sync read failed: TimedOut Some(TimedOut)"),
        ("/a/read", "async receive failed: TimedOut"),
    ] {
        // 20 bytes/s, far below the minimum, for as long as the server lets it (the byte
        // count only bounds the test if the guarantee is broken).
        let (responses, rest, after) =
            trickle_body(addr, path, Duration::from_millis(50), 10_000).await;
        assert!(
            rest.is_empty(),
            "{path}: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(responses.len(), 1, "{path}");
        assert_eq!(responses[0].status, 408, "{path}");
        assert!(
            after >= RATE_GRACE,
            "{path}: cut within the grace period ({after:?})"
        );
        let got = within("the handler's report", rx.recv()).await;
        assert_eq!(got.as_deref(), Some(event));
        eventually("the blocking slot to come back", || {
            serving.blocking_pool().in_flight() == 0 && serving.in_flight() == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_after_the_grace_period() {
    let (serving, mut rx) = start(|r| Server::new(r).min_body_rate(MIN_RATE, RATE_GRACE)).await;
    let addr = serving.local_addr().unwrap();
    for (path, event) in [
        ("/s/read", "sync read failed: TimedOut Some(TimedOut)"),
        ("/a/read", "async receive failed: TimedOut"),
    ] {
        // Three bytes, then silence with the connection open.
        let (responses, rest, after) = trickle_body(addr, path, Duration::from_millis(10), 3).await;
        assert!(rest.is_empty());
        assert_eq!(responses.len(), 1, "{path}");
        assert_eq!(responses[0].status, 408, "{path}");
        assert!(after >= RATE_GRACE, "{path}: {after:?}");
        let got = within("the handler's report", rx.recv()).await;
        assert_eq!(got.as_deref(), Some(event));
    }
    eventually("nothing in flight", || {
        serving.blocking_pool().in_flight() == 0 && serving.in_flight() == 0
    })
    .await;
}

/// Uploads [`SLOW_BODY`] bytes to a handler that pauses after its first read: the head, then
/// 100 bytes, then 8 chunks of 50, each a moment after the other (so the handler waits for
/// the client at first), and the end of the body only once the handler says it has read the
/// rest (so it waits for the client again, briefly, long after its first wait). Returns the
/// one response.
async fn upload_to_a_slow_reader(
    addr: SocketAddr,
    path: &str,
    read_all: &str,
    events: &mut mpsc::UnboundedReceiver<String>,
) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connecting");
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let chunk = |n: usize| format!("{n:x}\r\n{}\r\n", "s".repeat(n));
    tokio::time::sleep(Duration::from_millis(50)).await;
    write.write_all(chunk(100).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    write
        .write_all(chunk(50).repeat(8).as_bytes())
        .await
        .unwrap();
    let got = within("the slow reader to read the body", events.recv()).await;
    assert_eq!(got.as_deref(), Some(read_all), "{path}");
    // A write error means the server has given up already; the response says why.
    let _ = write.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = within("the response", read.read_to_end(&mut out)).await;
    let (mut responses, rest) = parse_responses(&out, false);
    assert!(
        responses.len() == 1 && rest.is_empty(),
        "{path}: {:?}",
        String::from_utf8_lossy(&out)
    );
    responses.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_keep_up_and_handlers_that_read_slowly_are_not_cut() {
    let (serving, mut rx) = start(|r| Server::new(r).min_body_rate(MIN_RATE, RATE_GRACE)).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        // A big body sent at once.
        for path in ["/s/read", "/a/read"] {
            let r = conn.post(path, full(vec![b'a'; 1 << 20])).await;
            assert_eq!(r.text(), "read 1048576", "{path} {proto:?}");
        }
        // A body that keeps up: 100 bytes every 20 ms (5000 bytes/s) for 600 ms, twice the
        // grace period.
        for path in ["/s/read", "/a/read"] {
            let (tx, body) = channel();
            let req = conn.request(http::Method::POST, path).body(body).unwrap();
            let sending = tokio::spawn(async move {
                for _ in 0..30 {
                    if tx.send(Bytes::from(vec![b'k'; 100])).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let r = conn.fetch(req).await;
            assert_eq!(
                (r.status, r.text()),
                (StatusCode::OK, "read 3000"),
                "{path} {proto:?}"
            );
            within("the sender", sending).await.unwrap();
        }
    }
    // Handlers that pause after their first read for far longer than the whole body's
    // allowance (grace period plus 500 bytes at the rate): a sync one while the server has
    // read ahead all it buffers, an async one while it does not ask. Only the time spent
    // waiting for the client counts, so neither is cut.
    for (path, read_all) in [
        ("/s/read-slowly", "sync read slowly"),
        ("/a/read-slowly", "async read slowly"),
    ] {
        let r = upload_to_a_slow_reader(addr, path, read_all, &mut rx).await;
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (200, "read 500"),
            "{path}"
        );
    }
    eventually("nothing in flight", || serving.in_flight() == 0).await;
}

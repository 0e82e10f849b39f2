//! Fault suite: clients that stop reading a streamed response (slow read), which the minimum
//! response rate bounds (`Server::min_response_rate`), for both handler kinds: over HTTP/1.1
//! from a raw socket that never reads past the head, and over HTTP/2 from a client that keeps
//! its connection alive but never reads the body (its flow-control window runs out). The
//! connection is cut, the handler dropped (its token flips; a sync producer's next write fails
//! and its blocking slot comes back), one warning says why, and other clients are served. A
//! reader that keeps up, even far below loopback speed, is not cut.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use amphi::prelude::*;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// The size of every response chunk.
const CHUNK: usize = 64 * 1024;
/// Chunks of an endless response: 128 MiB, far more than the kernel's socket buffers hold, and
/// bounded so that a handler that is never cancelled still ends (after the test has failed).
const ENDLESS: usize = 2048;

/// The settings of the server that cuts: a rate high enough that the credit a client earns
/// from what the kernel buffers for it (a few MiB) is spent within a second, and a short grace.
const CUT_RATE: u64 = 16 * 1024 * 1024;
const CUT_GRACE: Duration = Duration::from_millis(300);

/// The settings of the server a steady reader uses, and its pace: six times the minimum rate,
/// 48 KiB every 16 ms (3 MiB/s, far below loopback speed, so the server does wait for it).
const STEADY_RATE: u64 = 512 * 1024;
const STEADY_GRACE: Duration = Duration::from_millis(100);
const STEADY_STEP: usize = 48 * 1024;
const STEADY_EVERY: Duration = Duration::from_millis(16);
/// The steady reader's response: 6 MiB, more than the kernel takes at once (about 4 MiB), so
/// the last part of it goes out only as fast as the client reads.
const STEADY_CHUNKS: usize = 96;

/// A handler that takes longer than the grace period between chunks: its own slowness is not
/// held against the client.
const SLOW_CHUNKS: usize = 2;
const SLOW_PAUSE: Duration = Duration::from_millis(600);

/// How many chunks the response for `path` has, and the pause before each: the last segment
/// says `endless`, `steady` or `slow`.
fn plan(path: &str) -> (usize, Duration) {
    match path.rsplit('/').next() {
        Some("endless") => (ENDLESS, Duration::ZERO),
        Some("steady") => (STEADY_CHUNKS, Duration::ZERO),
        Some("slow") => (SLOW_CHUNKS, SLOW_PAUSE),
        _ => (0, Duration::ZERO),
    }
}

fn router(probe: &Probe) -> Router {
    let p = probe.clone();
    let sync_app = sync_fn(move |req: SyncRequest| {
        let (chunks, pause) = plan(req.path());
        if chunks == 0 {
            return http::Response::new(SyncBody::from("hello sync"));
        }
        let live = p.live.enter();
        p.token(req.uri().path(), req.cancellation());
        let (p1, p2) = (p.clone(), p.clone());
        let body = SyncBody::writer(move |w| {
            let _live = live;
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            for _ in 0..chunks {
                std::thread::sleep(pause);
                if let Err(e) = w.send(chunk.clone()) {
                    p1.say(format!(
                        "sync write failed: {:?} {:?}",
                        e.kind(),
                        amphi::Error::from_io(&e).map(|e| e.kind())
                    ));
                    return Err(e);
                }
            }
            p1.say("sync wrote everything");
            Ok(())
        })
        .on_close(move || p2.say("sync body closed"));
        http::Response::new(body)
    });
    let p = probe.clone();
    let async_app = asgi_fn(move |scope, _receive, mut send| {
        let p = p.clone();
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            let (chunks, pause) = plan(scope.path());
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            if chunks == 0 {
                return send.send(Message::body("hello async", false)).await;
            }
            let _live = p.live.enter();
            p.token(scope.uri().path(), scope.context().token());
            let dropped = Dropped(p.clone());
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            for _ in 0..chunks {
                tokio::time::sleep(pause).await;
                send.send(Message::body(chunk.clone(), true)).await?;
            }
            std::mem::forget(dropped);
            p.say("async wrote everything");
            send.send(Message::body(Bytes::new(), false)).await
        }
    });
    Router::new()
        .mount_sync("/s", sync_app)
        .mount_async("/a", async_app)
}

async fn start(probe: &Probe, rate: u64, grace: Duration) -> Serving {
    capture_logs();
    let server = Server::new(router(probe))
        .blocking_threads(4)
        .min_response_rate(rate, grace);
    within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts")
}

/// The handler of `path` (mounted at `/s` or `/a`) wrote its whole response, a sync
/// producer's cleanup ran, and its token never flipped.
async fn expect_completed(
    rx: &mut mpsc::UnboundedReceiver<String>,
    probe: &Probe,
    mount: &str,
    path: &str,
) {
    if mount == "s" {
        expect(rx, "sync wrote everything").await;
        expect(rx, "sync body closed").await;
    } else {
        expect(rx, "async wrote everything").await;
    }
    assert!(!probe.token_of(path).is_cancelled(), "{path}");
}

/// The handler of `path` was cancelled the way a client that left cancels it: a sync producer's
/// write failed and its cleanup ran, an async handler's future was dropped; its token flipped.
async fn assert_handler_cancelled(
    rx: &mut mpsc::UnboundedReceiver<String>,
    probe: &Probe,
    path: &str,
) {
    if path.starts_with("/s/") {
        expect(
            rx,
            "sync write failed: ConnectionAborted Some(Disconnected)",
        )
        .await;
        expect(rx, "sync body closed").await;
    } else {
        expect(rx, "async dropped").await;
    }
    let token = probe.token_of(path);
    within(&format!("{path}: the token to flip"), token.cancelled()).await;
}

/// The warning that says why, and the access line, for `path`.
async fn assert_logged_too_slow(path: &str) {
    let needle = format!("path={path} ");
    capture_logs()
        .wait_for(&[
            "WARN amphi_server",
            &needle,
            "the client took the response slower than the minimum rate",
        ])
        .await;
    capture_logs()
        .wait_for(&["amphi::access", &needle, "status=200", "outcome=cut"])
        .await;
}

/// A raw HTTP/1.1 connection with a small receive buffer (so the kernel holds less for it).
async fn raw_connect(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(16 * 1024)
        .expect("setting SO_RCVBUF");
    within("connecting", socket.connect(addr))
        .await
        .expect("connecting")
}

/// Sends `GET path` and reads until the response head is in; returns what was read.
async fn request_and_read_head(stream: &mut TcpStream, path: &str) -> Vec<u8> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    within("the response head", async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.expect("reading the head");
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// Reads until the server closes; returns how many bytes came.
async fn read_to_close(stream: &mut TcpStream) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 256 * 1024];
    within("the server to close the connection", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_and_its_handler_cancelled() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe, CUT_RATE, CUT_GRACE).await;
    let addr = serving.local_addr().unwrap();
    for mount in ["s", "a"] {
        let path = format!("/{mount}/h1-stops/endless");
        let mut stream = raw_connect(addr).await;
        let asked = Instant::now();
        request_and_read_head(&mut stream, &path).await;
        // From here on the client reads nothing, with its connection open.
        assert_handler_cancelled(&mut rx, &probe, &path).await;
        assert!(
            asked.elapsed() >= CUT_GRACE,
            "{path}: cut within the grace period ({:?})",
            asked.elapsed()
        );
        assert_nothing_leaks(&serving, &probe).await;
        assert_logged_too_slow(&path).await;
        // The connection was cut: what the kernel had buffered arrives, then the end, and the
        // chunked body never got its last chunk.
        let read = read_to_close(&mut stream).await;
        assert!(read < ENDLESS * CHUNK, "{path}: {read} bytes");
        // Other clients are served.
        for proto in BOTH {
            let r = get(addr, proto, &format!("/{mount}/hello")).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    serving.shutdown().await.unwrap();
}

/// At the default minimum rate, the credit a client earns from what the kernel buffers for it
/// would let a client that reads nothing hold its handler for hours: the stall timeout is what
/// cuts it. (With the stall timeout out of the way, this test times out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_the_stall_timeout_at_the_default_rate() {
    const STALL: Duration = Duration::from_secs(1);
    let (probe, mut rx) = Probe::new();
    capture_logs();
    let server = Server::new(router(&probe))
        .blocking_threads(4)
        .min_response_rate(amphi::server::DEFAULT_MIN_RESPONSE_RATE, CUT_GRACE)
        .response_stall_timeout(STALL);
    let serving = within("binding", server.bind("127.0.0.1:0"))
        .await
        .expect("the server starts");
    let addr = serving.local_addr().unwrap();
    for mount in ["s", "a"] {
        let path = format!("/{mount}/h1-stalls/endless");
        let mut stream = raw_connect(addr).await;
        request_and_read_head(&mut stream, &path).await;
        assert_handler_cancelled(&mut rx, &probe, &path).await;
        assert_nothing_leaks(&serving, &probe).await;
        assert_logged_too_slow(&path).await;
        let read = read_to_close(&mut stream).await;
        assert!(read < ENDLESS * CHUNK, "{path}: {read} bytes");
        let r = get(addr, Proto::H1, &format!("/{mount}/hello")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_reading_is_cut_and_its_handler_cancelled() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe, CUT_RATE, CUT_GRACE).await;
    let addr = serving.local_addr().unwrap();
    for mount in ["s", "a"] {
        let path = format!("/{mount}/h2-stops/endless");
        // hyper's client answers pings and keeps its connection alive, but only opens the
        // stream's window again when the body is read: the server's stream stalls.
        let mut conn = Conn::open(addr, Proto::H2).await;
        let req = conn.request(Method::GET, &path).body(empty()).unwrap();
        let resp = within("the head", conn.send(req)).await.expect("a head");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_handler_cancelled(&mut rx, &probe, &path).await;
        assert_nothing_leaks(&serving, &probe).await;
        assert_logged_too_slow(&path).await;
        conn.closed().await;
        drop(resp);
        let r = get(addr, Proto::H2, &format!("/{mount}/hello")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_keeps_up_is_not_cut() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe, STEADY_RATE, STEADY_GRACE).await;
    let addr = serving.local_addr().unwrap();
    for mount in ["s", "a"] {
        let path = format!("/{mount}/h1-steady/steady");
        let mut stream = raw_connect(addr).await;
        let mut got = request_and_read_head(&mut stream, &path).await;
        let mut buf = vec![0u8; STEADY_STEP];
        within("reading the whole response at a steady pace", async {
            // The chunked body ends with a zero-size chunk.
            while !got.ends_with(b"\r\n0\r\n\r\n") {
                let mut step = 0;
                while step < STEADY_STEP && !got.ends_with(b"\r\n0\r\n\r\n") {
                    let n = stream
                        .read(&mut buf[..STEADY_STEP - step])
                        .await
                        .expect("reading");
                    assert!(n > 0, "{path}: cut after {} bytes", got.len());
                    step += n;
                    got.extend_from_slice(&buf[..n]);
                }
                tokio::time::sleep(STEADY_EVERY).await;
            }
        })
        .await;
        let (responses, rest) = parse_responses(&got, false);
        assert!(rest.is_empty(), "{path}");
        assert_eq!(responses.len(), 1, "{path}");
        assert_eq!(responses[0].body.len(), STEADY_CHUNKS * CHUNK, "{path}");
        expect_completed(&mut rx, &probe, mount, &path).await;
        assert_nothing_leaks(&serving, &probe).await;
    }
    assert!(capture_logs()
        .matching(&["h1-steady", "slower than the minimum rate"])
        .is_empty());
    serving.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_produces_slowly_is_not_cut() {
    let (probe, mut rx) = Probe::new();
    let serving = start(&probe, CUT_RATE, CUT_GRACE).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for mount in ["s", "a"] {
            let path = format!("/{mount}/slow-producer-{proto:?}/slow");
            let r = conn.get(&path).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.body.len(), SLOW_CHUNKS * CHUNK, "{path}");
            expect_completed(&mut rx, &probe, mount, &path).await;
        }
    }
    assert_nothing_leaks(&serving, &probe).await;
    assert!(capture_logs()
        .matching(&["slow-producer", "slower than the minimum rate"])
        .is_empty());
    serving.shutdown().await.unwrap();
}

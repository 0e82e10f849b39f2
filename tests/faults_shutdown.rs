//! Fault suite: graceful shutdown under sustained (bounded) load, for both handler kinds over
//! both protocols, in process and for the `mixed` example binary under SIGTERM.
//!
//! What must hold: every request the server accepted before the signal completes with a 2xx,
//! whole (none is reset or cut); requests arriving after it are refused before any handler
//! runs (connection refused, keep-alive closed, HTTP/2 GOAWAY) and nothing else; the server's
//! future returns `Ok` within the grace period, and the example process exits 0.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amphi::prelude::*;
use http::{HeaderMap, Method, StatusCode};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

/// Load clients, each sending requests back to back on one connection at a time.
const CLIENTS: usize = 8;
/// The most requests one load client sends (the bound on the load if shutdown never came).
const MAX_REQUESTS_PER_CLIENT: usize = 400;
/// How long each loaded request works.
const WORK: Duration = Duration::from_millis(20);
/// Requests completed before the signal is sent.
const BEFORE_SIGNAL: usize = 40;

/// What the handlers record.
#[derive(Clone, Default)]
struct Seen {
    /// The `x-id` of every request a handler started on.
    started: Arc<Mutex<HashSet<u64>>>,
    gate: CancellationToken,
}

fn id_of(headers: &http::HeaderMap) -> Option<u64> {
    headers.get("x-id")?.to_str().ok()?.parse().ok()
}

fn router(seen: &Seen, events: mpsc::UnboundedSender<String>) -> Router {
    let (s, ev) = (seen.clone(), events.clone());
    let sync_app = sync_fn(move |req: SyncRequest| {
        if let Some(id) = id_of(req.headers()) {
            s.started.lock().unwrap().insert(id);
        }
        match req.path() {
            "/gated" => {
                let _ = ev.send("sync gated".into());
                assert!(s.gate.wait_timeout(PATIENCE), "the gate never opened");
                http::Response::new(SyncBody::from("released sync"))
            }
            _ => {
                std::thread::sleep(WORK);
                http::Response::new(SyncBody::from("worked sync"))
            }
        }
    });
    let s = seen.clone();
    let async_app = asgi_fn(move |scope, _receive, mut send| {
        let (s, ev) = (s.clone(), events.clone());
        async move {
            let Scope::Http(scope) = scope else {
                return Ok(());
            };
            if let Some(id) = id_of(scope.headers()) {
                s.started.lock().unwrap().insert(id);
            }
            let body = match scope.path() {
                "/gated" => {
                    let _ = ev.send("async gated".into());
                    within("the gate", s.gate.cancelled()).await;
                    "released async"
                }
                _ => {
                    tokio::time::sleep(WORK).await;
                    "worked async"
                }
            };
            send.send(Message::start(StatusCode::OK, HeaderMap::new()))
                .await?;
            send.send(Message::body(body, false)).await
        }
    });
    Router::new()
        .mount_sync("/s/shut", sync_app)
        .mount_async("/a/shut", async_app)
}

/// What a load client's request came to.
#[derive(Debug)]
enum Outcome {
    /// A response: its status and whether its body arrived whole.
    Answered(StatusCode, bool),
    /// No response: the error (connection closed, refused stream, ...).
    Failed(#[allow(dead_code)] String),
}

/// Sends requests back to back, opening a new connection whenever the last one failed,
/// until a connection is refused or `MAX_REQUESTS_PER_CLIENT` were sent.
async fn load_client(
    addr: std::net::SocketAddr,
    proto: Proto,
    path: &'static str,
    ids: Arc<AtomicU64>,
    done: Arc<AtomicUsize>,
) -> Vec<(u64, Outcome)> {
    let mut outcomes = Vec::new();
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_REQUESTS_PER_CLIENT {
        let c = match conn.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => match within("connecting", Conn::try_open(addr, proto)).await {
                Ok(c) => conn.insert(c),
                Err(_) => break, // refused: the server stopped listening
            },
        };
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let req = c
            .request(Method::GET, path)
            .header("x-id", id.to_string())
            .body(empty())
            .unwrap();
        let outcome = match within("a loaded request", c.send(req)).await {
            Ok(resp) => {
                let status = resp.status();
                Outcome::Answered(status, within("a body", body_ends_cleanly(resp)).await)
            }
            Err(e) => {
                conn = None;
                Outcome::Failed(e.to_string())
            }
        };
        if matches!(outcome, Outcome::Answered(..)) {
            done.fetch_add(1, Ordering::SeqCst);
        }
        outcomes.push((id, outcome));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_accepted_before_shutdown_completes_under_load() {
    let logs = capture_logs();
    let seen = Seen::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = Server::new(router(&seen, tx))
        .grace_period(Duration::from_secs(20))
        .blocking_threads(8);
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();

    // Requests that are surely in flight when the signal comes: they wait for a gate.
    let mut gated = Vec::new();
    for (proto, path, started) in [
        (Proto::H1, "/s/shut/gated", "sync gated"),
        (Proto::H2, "/s/shut/gated", "sync gated"),
        (Proto::H1, "/a/shut/gated", "async gated"),
        (Proto::H2, "/a/shut/gated", "async gated"),
    ] {
        let mut conn = Conn::open(addr, proto).await;
        gated.push(tokio::spawn(async move { conn.get(path).await }));
        let got = within("a gated request to start", rx.recv()).await;
        assert_eq!(got.as_deref(), Some(started));
    }

    // The load: both kinds, both protocols, requests back to back.
    let ids = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let proto = if c % 2 == 0 { Proto::H1 } else { Proto::H2 };
        let path = if c % 4 < 2 {
            "/s/shut/work"
        } else {
            "/a/shut/work"
        };
        clients.push(tokio::spawn(load_client(
            addr,
            proto,
            path,
            ids.clone(),
            done.clone(),
        )));
    }
    eventually("the load to get going", || {
        done.load(Ordering::SeqCst) >= BEFORE_SIGNAL
    })
    .await;

    let handle = serving.shutdown_handle();
    let stopped = tokio::spawn(serving.wait());
    handle.shutdown();
    // The listener closes at once; the server keeps draining while the gate is shut.
    within("new connections to be refused", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        !stopped.is_finished(),
        "the server stopped with requests in flight"
    );
    seen.gate.cancel();

    for g in gated {
        let r = within("a gated request", g).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.text().starts_with("released"), "{}", r.text());
    }
    let mut outcomes: HashMap<u64, Outcome> = HashMap::new();
    for c in clients {
        outcomes.extend(within("a load client", c).await.unwrap());
    }
    within("the server to stop", stopped)
        .await
        .unwrap()
        .expect("the serve future returns Ok");

    // Every request a handler started on was answered with a 2xx, whole.
    let started = seen.started.lock().unwrap().clone();
    assert!(started.len() >= BEFORE_SIGNAL);
    for id in &started {
        match outcomes.get(id) {
            Some(Outcome::Answered(status, true)) if status.is_success() => {}
            other => panic!("request {id} was accepted but ended {other:?}"),
        }
    }
    // Whatever failed never reached a handler, and nothing was answered but with a 2xx.
    for (id, outcome) in &outcomes {
        match outcome {
            Outcome::Answered(status, whole) => {
                assert!(status.is_success() && *whole, "request {id}: {outcome:?}");
                assert!(
                    started.contains(id),
                    "request {id} answered without a handler"
                );
            }
            Outcome::Failed(_) => assert!(!started.contains(id)),
        }
    }
    // The server's own view: no request it accepted was cut or lost.
    for path in [
        "/s/shut/work",
        "/a/shut/work",
        "/s/shut/gated",
        "/a/shut/gated",
    ] {
        let lines = logs.matching(&["amphi::access", &format!("path={path} ")]);
        assert!(!lines.is_empty(), "{path}: no access lines");
        for l in lines {
            assert!(
                l.contains("outcome=complete") && l.contains("status=200"),
                "{l}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mixed_example_drains_and_exits_0_on_sigterm() {
    let bin = mixed_binary();
    let mut child = tokio::process::Command::new(&bin)
        .args(["--bind", "127.0.0.1:0", "--grace-ms", "20000"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the mixed example");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("the example to listen", stdout.next_line())
        .await
        .unwrap()
        .expect("a first line on stdout");
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    // Its log, kept for the assertions below.
    let stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    assert_eq!(
        get(addr, Proto::H1, "/async/hello").await.status,
        StatusCode::OK
    );

    // Requests of both kinds over both protocols, still working when the signal comes.
    let mut in_flight = Vec::new();
    for (proto, path) in [
        (Proto::H1, "/sync/sleep?ms=1500"),
        (Proto::H2, "/sync/sleep?ms=1500"),
        (Proto::H1, "/async/sleep?ms=1500"),
        (Proto::H2, "/async/sleep?ms=1500"),
    ] {
        let mut conn = Conn::open(addr, proto).await;
        in_flight.push(tokio::spawn(async move { conn.get(path).await }));
    }
    // The requests are written at once and an idle server reads them within milliseconds;
    // the handlers then sleep for far longer than this.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().expect("the child is running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("running kill");
    assert!(kill.success());

    for r in in_flight {
        let r = within("an in-flight request", r).await.unwrap();
        assert_eq!((r.status, r.text()), (StatusCode::OK, "slept 1500 ms"));
    }
    let status = within("the example to exit", child.wait()).await.unwrap();
    assert!(status.success(), "the example exited with {status}");
    let log = within("the example's log", log).await.unwrap();
    let log = log.join("\n");
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("shut down"), "{log}");
    assert!(!log.contains("outcome=\"cut"), "{log}");
}

/// A client whose connection was accepted just before the drain, and whose request arrives just
/// after it started, is served (a connection closed before its first request would be a failed
/// request for it; nothing on the wire told it the server was going).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_just_before_the_drain_gets_its_first_request_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = Seen::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    let server = Server::new(router(&seen, tx)).grace_period(Duration::from_secs(10));
    let serving = within("binding", server.bind("127.0.0.1:0")).await.unwrap();
    let addr = serving.local_addr().unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Accepted: the server counts the connection (one request proves the accept loop ran).
    assert_eq!(
        get(addr, Proto::H1, "/a/shut/x").await.status,
        StatusCode::OK
    );
    let stopping = tokio::spawn(serving.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream
        .write_all(b"GET /a/shut/late HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within("the late request's answer", stream.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("worked async"), "{text}");
    within("the shutdown", stopping).await.unwrap().unwrap();
}

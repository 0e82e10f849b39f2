//! The load-balancer-friendly drain: health answers 200 while serving and 503 from the start
//! of shutdown; with a drain delay the listener keeps accepting and serving both kinds for
//! the delay, then the graceful shutdown runs as usual. In-process and in the `mixed` binary
//! (SIGTERM with `--drain-delay-ms`).

mod support;

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

use std::process::Stdio;
use std::time::Duration;

use amphi::prelude::*;
use amphi::server::{Health, ServerStatus};
use http::StatusCode;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Long enough for the steps below to run inside it on a loaded machine.
const DELAY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_first_and_the_listener_accepts_through_the_drain_delay() {
    init_tracing();
    let router = app::router()
        .mount_async("/health/ready", Health::new())
        .mount_sync(
            "/draining",
            sync_fn(|req: SyncRequest| {
                let draining = ServerStatus::of(req.state()).is_some_and(|s| s.is_draining());
                http::Response::new(SyncBody::from(draining.to_string()))
            }),
        );
    let serving = Server::new(router)
        .drain_delay(DELAY)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let ok = get(addr, proto, "/healthz").await;
        assert_eq!((ok.status, ok.text()), (StatusCode::OK, "ok\n"));
        assert_eq!(ok.header("cache-control"), Some("no-store"));
        assert_eq!(get(addr, proto, "/draining").await.text(), "false");
    }
    assert!(!serving.is_draining());
    // A keep-alive connection from before, as a balancer keeps.
    let mut kept = Conn::open(addr, Proto::H1).await;
    assert_eq!(kept.get("/async/hello").await.status, StatusCode::OK);

    serving.shutdown_handle().shutdown();
    eventually("the server to start draining", || serving.is_draining()).await;
    // Within the delay: health says 503 on new connections of both protocols, every other
    // route is served as before, and handlers can read the status too.
    for proto in BOTH {
        for path in ["/healthz", "/health/ready"] {
            let r = get(addr, proto, path).await;
            assert_eq!(
                (r.status, r.text()),
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                "{proto:?} {path}"
            );
            if proto == Proto::H1 {
                assert_eq!(
                    r.header("connection"),
                    Some("close"),
                    "probers do not linger"
                );
            }
        }
        assert_eq!(get(addr, proto, "/sync/hello").await.status, StatusCode::OK);
        assert_eq!(
            get(addr, proto, "/async/hello").await.status,
            StatusCode::OK
        );
        assert_eq!(get(addr, proto, "/draining").await.text(), "true");
    }
    assert_eq!(
        kept.get("/sync/hello").await.status,
        StatusCode::OK,
        "kept connections are served"
    );

    // Then the usual graceful shutdown: the listener closes and the server ends.
    within("the drain delay and the drain", serving.wait())
        .await
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed after the drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_drain_delay_the_listener_closes_at_once() {
    init_tracing();
    let serving = Server::new(app::router())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = serving.local_addr().unwrap();
    assert_eq!(amphi::server::DEFAULT_DRAIN_DELAY, Duration::ZERO);
    // A request in flight keeps the server draining while we look.
    let mut conn = Conn::open(addr, Proto::H1).await;
    let slow = tokio::spawn(async move { conn.get("/async/sleep?ms=1500").await });
    eventually("the request to be in flight", || serving.in_flight() == 1).await;
    serving.shutdown_handle().shutdown();
    eventually("draining", || serving.is_draining()).await;
    within("the listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let r = within("the in-flight request", slow).await.unwrap();
    assert_eq!((r.status, r.text()), (StatusCode::OK, "slept 1500 ms"));
    within("the server to end", serving.wait()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_answers_503_on_healthz_after_sigterm_for_its_drain_delay_then_exits_0() {
    let mut child = tokio::process::Command::new(mixed_binary())
        .args(["--bind", "127.0.0.1:0", "--drain-delay-ms"])
        .arg(DELAY.as_millis().to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("mixed to listen", stdout.next_line())
        .await
        .unwrap()
        .unwrap();
    let addr: std::net::SocketAddr = line
        .strip_prefix("listening on http://")
        .unwrap()
        .parse()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all.join("\n")
    });
    assert_eq!(
        get(addr, Proto::H1, "/healthz").await.status,
        StatusCode::OK
    );
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    within("healthz to turn 503", async {
        while get(addr, Proto::H1, "/healthz").await.status != StatusCode::SERVICE_UNAVAILABLE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        get(addr, Proto::H2, "/sync/hello").await.status,
        StatusCode::OK,
        "still serving"
    );
    let status = within("mixed to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    let log = within("the log", log).await.unwrap();
    assert!(
        log.contains("health answers 503; still accepting for 3s"),
        "{log}"
    );
    assert!(log.contains("shut down"), "{log}");
}

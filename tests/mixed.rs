//! End-to-end tests of the `mixed` example's contract (see design.md): every route under both
//! mounts, over HTTP/1.1 and HTTP/2, with a real client on loopback.
//!
//! The app is the example's own code (`examples/mixed/app.rs`), so these tests check exactly
//! what `cargo run --example mixed` serves.

mod support;

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::*;

async fn start(flags: &[&str]) -> amphi::Serving {
    init_tracing();
    let mut args = vec!["--bind", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let opts = app::Options::parse(args.into_iter().map(Into::into)).expect("valid flags");
    within("binding", opts.server().bind(opts.bind.as_str()))
        .await
        .expect("the mixed app starts")
}

const MOUNTS: [&str; 2] = ["/sync", "/async"];

fn kind(mount: &str) -> &str {
    &mount[1..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_stream_sleep_and_404_under_both_mounts() {
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for m in MOUNTS {
            let r = conn.get(&format!("{m}/hello")).await;
            assert_eq!(
                (r.status, r.text()),
                (StatusCode::OK, &*format!("hello from {}", kind(m)))
            );

            let r = conn.get(&format!("{m}/stream?chunks=7&size=1000")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.body.len(), 7000);
            assert!(r.body.iter().all(|&b| b == b'x'));

            let r = conn.get(&format!("{m}/sleep?ms=20")).await;
            assert_eq!((r.status, r.text()), (StatusCode::OK, "slept 20 ms"));

            assert_eq!(
                conn.get(&format!("{m}/nothing-here")).await.status,
                StatusCode::NOT_FOUND
            );

            let req = conn
                .request(Method::HEAD, &format!("{m}/hello"))
                .body(empty())
                .unwrap();
            let r = conn.fetch(req).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body.is_empty());
        }
        for path in ["/", "/hello", "/syncx/hello", "/asyncx"] {
            assert_eq!(conn.get(path).await.status, StatusCode::NOT_FOUND, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_describes_the_request_below_its_mount() {
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for m in MOUNTS {
            let req = conn
                .request(Method::GET, &format!("{m}/info?a=1&b=%20x"))
                .header("x-probe", "yes")
                .body(empty())
                .unwrap();
            let r = conn.fetch(req).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("content-type"), Some("application/json"));
            let j = r.json();
            assert_eq!(j["method"], "GET");
            assert_eq!(j["path"], "/info");
            assert_eq!(j["root_path"], m);
            assert_eq!(j["query_string"], "a=1&b=%20x");
            assert_eq!(
                j["http_version"],
                if proto == Proto::H1 { "1.1" } else { "2" }
            );
            assert_eq!(j["scheme"], "http");
            assert_eq!(j["client"], conn.local_addr.to_string());
            assert_eq!(j["server"], addr.to_string());
            let headers = j["headers"].as_array().unwrap();
            assert!(
                headers.iter().any(|h| h[0] == "x-probe" && h[1] == "yes"),
                "{headers:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_streams_five_mebibytes_back_chunked_and_with_content_length() {
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    let payload: Bytes = (0..5 * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    for proto in BOTH {
        for m in MOUNTS {
            let mut conn = Conn::open(addr, proto).await;
            let r = conn.post(&format!("{m}/echo"), full(payload.clone())).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(
                r.body == payload,
                "{m} {proto:?} content-length echo differs"
            );

            let chunks = payload.chunks(64 * 1024).map(Bytes::copy_from_slice);
            let r = conn.post(&format!("{m}/echo"), chunked(chunks)).await;
            assert_eq!(r.status, StatusCode::OK);
            assert!(r.body == payload, "{m} {proto:?} chunked echo differs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_the_body_limit_is_413_for_both_kinds() {
    let serving = start(&["--max-body", "1024"]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        for m in MOUNTS {
            let mut conn = Conn::open(addr, proto).await;
            let r = conn
                .post(&format!("{m}/echo"), full(vec![b'a'; 2048]))
                .await;
            assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{m} {proto:?}");
            // Chunked: a 413 when the first piece is over the limit, a cut response when the
            // echo had already started; never a complete echo.
            let mut conn = Conn::open(addr, proto).await;
            let req = conn
                .request(Method::POST, &format!("{m}/echo"))
                .body(chunked([Bytes::from(vec![b'a'; 64 * 1024])]))
                .unwrap();
            if let Ok(resp) = within("the echo", conn.send(req)).await {
                if resp.status() == StatusCode::OK {
                    assert!(
                        !within("the body", body_ends_cleanly(resp)).await,
                        "{m} {proto:?}"
                    );
                } else {
                    assert_eq!(
                        resp.status(),
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "{m} {proto:?}"
                    );
                }
            }
            // Within the limit works.
            let mut conn = Conn::open(addr, proto).await;
            let r = conn
                .post(
                    &format!("{m}/echo"),
                    chunked([Bytes::from("ab"), Bytes::from("cd")]),
                )
                .await;
            assert_eq!(r.text(), "abcd");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_are_500_and_the_server_carries_on() {
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        for m in MOUNTS {
            for _ in 0..3 {
                let r = conn.get(&format!("{m}/panic")).await;
                assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
            }
            assert_eq!(conn.get(&format!("{m}/hello")).await.status, StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_async_and_async_calls_sync_on_one_app_thread() {
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    for proto in BOTH {
        let r = get(addr, proto, "/sync/call-async").await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "async result: 42"));
    }
    let first = get(addr, Proto::H1, "/async/call-sync").await.json();
    let second = get(addr, Proto::H2, "/async/call-sync").await.json();
    assert_eq!(first["thread"], second["thread"], "one app-wide thread");
    assert_eq!(
        second["count"].as_u64().unwrap(),
        first["count"].as_u64().unwrap() + 1
    );

    // Concurrent calls over one HTTP/2 connection queue on that one thread.
    let conn = Conn::open(addr, Proto::H2).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let req = conn
            .request(Method::GET, "/async/call-sync")
            .body(empty())
            .unwrap();
        let mut sender = conn.h2_sender();
        tasks.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            Reply::read(sender.send_request(req).await.unwrap())
                .await
                .unwrap()
                .json()
        }));
    }
    let mut counts = BTreeSet::new();
    for t in tasks {
        let j = within("a call-sync", t).await.unwrap();
        assert_eq!(j["thread"], first["thread"]);
        counts.insert(j["count"].as_u64().unwrap());
    }
    let base = second["count"].as_u64().unwrap();
    assert_eq!(counts, (base + 1..=base + 10).collect());
    let c = get(addr, Proto::H1, "/async/counters").await.json();
    assert_eq!(c["call_sync"], 12);
}

async fn cancelled_sync(addr: std::net::SocketAddr) -> u64 {
    get(addr, Proto::H1, "/async/counters").await.json()["cancelled_sync"]
        .as_u64()
        .expect("a cancelled_sync counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturation_is_503_async_is_unaffected_and_cancellation_frees_the_slots() {
    let serving = start(&["--blocking-threads", "2", "--queue-timeout-ms", "50"]).await;
    let addr = serving.local_addr().unwrap();
    assert_eq!(cancelled_sync(addr).await, 0);
    // Take every blocking slot with work that runs until its client leaves.
    let mut holders = Vec::new();
    for proto in BOTH {
        let mut conn = Conn::open(addr, proto).await;
        let req = conn
            .request(Method::GET, "/sync/cancellable?ms=600000")
            .body(empty())
            .unwrap();
        holders.push(tokio::spawn(async move {
            let _ = conn.send(req).await;
            std::future::pending::<()>().await;
        }));
    }
    eventually("both slots taken", || {
        serving.blocking_pool().in_flight() == 2
    })
    .await;
    for proto in BOTH {
        let r = get(addr, proto, "/sync/hello").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{proto:?}");
        assert_eq!(r.header("retry-after"), Some("1"));
        let r = get(addr, proto, "/async/hello").await;
        assert_eq!(r.text(), "hello from async");
        let r = get(addr, proto, "/async/sleep?ms=5").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // The clients leave: the blocking handlers see their tokens flip and stop.
    for h in holders {
        h.abort();
    }
    within("the cancellations to be counted", async {
        while cancelled_sync(addr).await < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    eventually("the slots to come back", || {
        serving.blocking_pool().in_flight() == 0
    })
    .await;
    for proto in BOTH {
        assert_eq!(
            get(addr, proto, "/sync/hello").await.text(),
            "hello from sync"
        );
    }
    // A cancellable call left alone finishes its work.
    let r = get(addr, Proto::H1, "/sync/cancellable?ms=5").await;
    assert_eq!(r.text(), "worked 5 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests_of_both_kinds() {
    let serving = start(&["--grace-ms", "30000"]).await;
    let addr = serving.local_addr().unwrap();
    let mut in_flight = Vec::new();
    for (proto, path) in [
        (Proto::H1, "/sync/sleep?ms=400"),
        (Proto::H2, "/async/sleep?ms=400"),
        (Proto::H2, "/sync/sleep?ms=400"),
        (Proto::H1, "/async/sleep?ms=400"),
    ] {
        let mut conn = Conn::open(addr, proto).await;
        in_flight.push(tokio::spawn(async move { conn.get(path).await }));
    }
    eventually("the requests to be in flight", || serving.in_flight() == 4).await;
    let done = tokio::spawn(serving.shutdown());
    within("new connections to be refused", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for r in in_flight {
        let r = within("an in-flight request", r).await.unwrap();
        assert_eq!((r.status, r.text()), (StatusCode::OK, "slept 400 ms"));
    }
    within("the server to stop", done).await.unwrap().unwrap();
}

#[test]
fn flags_parse() {
    let o = app::Options::parse(
        [
            "--bind",
            "0.0.0.0:9000",
            "--blocking-threads",
            "8",
            "--queue-timeout-ms",
            "250",
            "--max-body",
            "4096",
            "--header-timeout-ms",
            "1500",
            "--grace-ms",
            "2000",
        ]
        .into_iter()
        .map(Into::into),
    )
    .unwrap();
    assert_eq!(o.bind, "0.0.0.0:9000");
    assert_eq!(o.blocking_threads, 8);
    assert_eq!(o.queue_timeout, Duration::from_millis(250));
    assert_eq!(o.max_body, 4096);
    assert_eq!(o.header_timeout, Duration::from_millis(1500));
    assert_eq!(o.grace, Duration::from_millis(2000));
    let d = app::Options::parse(std::iter::empty()).unwrap();
    assert_eq!(d.bind, "127.0.0.1:8000");
    assert!(app::Options::parse(["--frobnicate".into()]).is_err());
    assert!(app::Options::parse(["--blocking-threads".into(), "zero".into()]).is_err());
    assert!(app::Options::parse(["--blocking-threads".into(), "0".into()]).is_err());
}

#[test]
fn deployment_flags_parse_and_refuse_bad_combinations() {
    let parse = |args: &[&str]| app::Options::parse(args.iter().map(Into::into));
    let o = parse(&[
        "--uds",
        "/run/amphi.sock",
        "--reuse-port",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
        "--tls-client-ca",
        "ca.pem",
        "--trusted-proxies",
        "127.0.0.1, 10.0.0.0/8, unix",
        "--root-path",
        "/app",
        "--drain-delay-ms",
        "1500",
    ])
    .unwrap();
    assert_eq!(
        o.uds.as_deref(),
        Some(std::path::Path::new("/run/amphi.sock"))
    );
    assert!(o.reuse_port);
    let (cert, key) = o.tls.clone().unwrap();
    assert_eq!(
        (cert.to_str(), key.to_str()),
        (Some("c.pem"), Some("k.pem"))
    );
    assert!(o.trusted_proxies.contains("10.9.8.7".parse().unwrap()));
    assert!(o.trusted_proxies.trusts_unix());
    assert_eq!(o.root_path.as_deref(), Some("/app"));
    assert_eq!(o.drain_delay, Duration::from_millis(1500));
    assert_eq!(parse(&["--fd", "3"]).unwrap().fd, Some(3));
    let d = parse(&[]).unwrap();
    assert!(d.trusted_proxies.is_empty() && d.tls.is_none() && !d.reuse_port);
    assert_eq!(d.drain_delay, Duration::ZERO);
    for bad in [
        &["--tls-cert", "c.pem"][..],
        &["--tls-key", "k.pem"],
        &["--tls-client-ca", "ca.pem"],
        &["--uds", "/x.sock", "--fd", "3"],
        &["--trusted-proxies", "10.0.0.0/33"],
        &["--root-path", "app"],
        &["--fd", "three"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} is refused");
    }
}

/// Every flag with the default it shows in `--help`.
fn flags_and_defaults() -> [(&'static str, String); 7] {
    let ms = |d: Duration| d.as_millis().to_string();
    [
        ("--bind", "127.0.0.1:8000".to_owned()),
        (
            "--blocking-threads",
            amphi::server::DEFAULT_BLOCKING_THREADS.to_string(),
        ),
        (
            "--queue-timeout-ms",
            ms(amphi::server::DEFAULT_QUEUE_TIMEOUT),
        ),
        (
            "--max-body",
            amphi::server::DEFAULT_MAX_BODY_BYTES.to_string(),
        ),
        (
            "--header-timeout-ms",
            ms(amphi::server::DEFAULT_HEADER_READ_TIMEOUT),
        ),
        ("--grace-ms", ms(amphi::server::DEFAULT_GRACE_PERIOD)),
        ("--drain-delay-ms", ms(amphi::server::DEFAULT_DRAIN_DELAY)),
    ]
}

/// The flags without a default: each has its own described line in `--help`.
const OPTIONAL_FLAGS: [&str; 8] = [
    "--uds",
    "--fd",
    "--reuse-port",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
    "--trusted-proxies",
    "--root-path",
];

/// Checks that `help` describes every flag on its own line, with its default.
fn assert_describes_every_flag(help: &str) {
    for flag in OPTIONAL_FLAGS {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("no line for {flag} in the help:\n{help}"));
        assert!(
            line.split_whitespace().count() > 3,
            "{flag} is described: {line}"
        );
    }
    for (flag, default) in flags_and_defaults() {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("no line for {flag} in the help:\n{help}"));
        let description = line.trim_start()[flag.len()..].trim_start();
        // `<VALUE>`, then words, then the default.
        let described = description
            .split_once('>')
            .is_some_and(|(_, words)| words.split_whitespace().count() > 3);
        assert!(described, "{flag} is described: {line}");
        assert!(
            line.ends_with(&format!("[default: {default}]")),
            "{flag} shows its default {default}: {line}"
        );
    }
}

#[test]
fn help_describes_every_flag_with_its_default() {
    let err = app::Options::parse(["--help".into()]).expect_err("--help is not options");
    assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    assert!(!err.use_stderr(), "help goes to stdout");
    assert_describes_every_flag(&err.to_string());
}

#[test]
fn the_binary_prints_help_to_stdout_and_rejects_bad_flags_with_exit_2() {
    let bin = mixed_binary();
    let help = std::process::Command::new(&bin)
        .arg("--help")
        .output()
        .expect("running mixed --help");
    assert_eq!(help.status.code(), Some(0), "--help exits 0");
    assert!(help.stderr.is_empty(), "nothing on stderr");
    let stdout = String::from_utf8(help.stdout).expect("utf-8 help");
    assert!(
        stdout.contains("Usage: mixed [--bind ADDR | --uds PATH | --fd N]"),
        "{stdout}"
    );
    assert_describes_every_flag(&stdout);

    for bad in [
        &["--frobnicate"][..],
        &["--blocking-threads", "0"],
        &["--max-body", "lots"],
        &["--bind"],
    ] {
        let out = std::process::Command::new(&bin)
            .args(bad)
            .output()
            .expect("running mixed with a bad flag");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: exit 2; stderr: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{bad:?}: nothing on stdout");
        assert!(stderr.starts_with("error: "), "{bad:?}: {stderr}");
        for (flag, _) in flags_and_defaults() {
            assert!(
                stderr.contains(flag),
                "{bad:?}: the usage names {flag}: {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn ws_echoes_and_closes_on_request_under_both_mounts() {
    use support::ws::{connect, WS_BOTH};
    use tokio_tungstenite::tungstenite::Message as M;
    let serving = start(&[]).await;
    let addr = serving.local_addr().unwrap();
    for proto in WS_BOTH {
        for m in MOUNTS {
            let what = format!("{m}/ws over {proto:?}");
            let (mut ws, _) = connect(addr, proto, &format!("{m}/ws"), &[])
                .await
                .unwrap_or_else(|r| panic!("{what} refused: {r:?}"));
            ws.send(M::text("hello")).await.unwrap();
            assert_eq!(ws.recv().await, M::text("hello"), "{what}");
            ws.send(M::binary(vec![7u8; 3])).await.unwrap();
            assert_eq!(ws.recv().await, M::binary(vec![7u8; 3]), "{what}");
            ws.send(M::text("close")).await.unwrap();
            assert_eq!(ws.close_frame().await, Some((1000, "bye".into())), "{what}");
            // Anything else under the mount is not a websocket.
            let refused = connect(addr, proto, &format!("{m}/hello"), &[]).await.err();
            assert_eq!(
                refused.map(|r| r.status),
                Some(StatusCode::FORBIDDEN),
                "{what}"
            );
        }
    }
    serving.shutdown().await.unwrap();
}

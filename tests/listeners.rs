//! Where a server listens: two servers on one port with `SO_REUSEPORT` (in one process and as
//! two `mixed` processes), a socket inherited through systemd socket activation and through
//! `--fd`, pre-opened TCP and unix listeners, and `--uds`.

mod support;

#[path = "../examples/mixed/app.rs"]
#[allow(dead_code)]
mod app;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;

use amphi::prelude::*;
use amphi::server::Listener;
use http::StatusCode;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A router answering `name` everywhere.
fn named(name: &'static str) -> Router {
    Router::new().mount_async(
        "/",
        async_fn(move |_req| async move { http::Response::new(AsyncBody::from(name)) }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_a_port_with_reuse_port_and_both_answer() {
    init_tracing();
    let a = Server::new(named("a"))
        .reuse_port(true)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = a.local_addr().unwrap();
    // Without the option on the second socket, the port is taken.
    let err = Server::new(named("x"))
        .bind(addr)
        .await
        .expect_err("the port is in use");
    assert!(err.is_bind(), "{err}");
    let b = Server::new(named("b"))
        .reuse_port(true)
        .bind(addr)
        .await
        .unwrap();
    assert_eq!(b.local_addr(), Some(addr));
    // The kernel picks a listener per connection by a hash of its addresses: new connections
    // reach both. Bounded: 2^-200 odds that 200 connections all land on one.
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let reply = get(addr, Proto::H1, "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        seen.insert(reply.text().to_owned());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
    // One stops: the other carries the port alone.
    a.shutdown().await.unwrap();
    for _ in 0..20 {
        assert_eq!(get(addr, Proto::H2, "/").await.text(), "b");
    }
    b.shutdown().await.unwrap();
}

/// Reads `mixed`'s first line: where it listens.
async fn listening(child: &mut tokio::process::Child) -> String {
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    within("mixed to listen", stdout.next_line())
        .await
        .unwrap()
        .expect("a first line on stdout")
}

fn http_addr(line: &str) -> SocketAddr {
    line.strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap()
}

fn mixed() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(mixed_binary());
    c.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn pid_of(addr: SocketAddr) -> u64 {
    let reply = get(addr, Proto::H1, "/async/info").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()["pid"].as_u64().unwrap()
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = within("mixed to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mixed_processes_share_a_port_with_reuse_port() {
    let mut first = mixed()
        .args(["--bind", "127.0.0.1:0", "--reuse-port"])
        .spawn()
        .unwrap();
    let addr = http_addr(&listening(&mut first).await);
    let mut second = mixed()
        .args(["--bind", &addr.to_string(), "--reuse-port"])
        .spawn()
        .unwrap();
    assert_eq!(http_addr(&listening(&mut second).await), addr);
    let pids = BTreeSet::from([
        u64::from(first.id().unwrap()),
        u64::from(second.id().unwrap()),
    ]);
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        seen.insert(pid_of(addr).await);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, pids, "both processes answer on the one port");
    let second_pid = u64::from(second.id().unwrap());
    stop(first).await;
    for _ in 0..20 {
        assert_eq!(pid_of(addr).await, second_pid);
    }
    stop(second).await;
}

/// A listening socket for a child's stdin (fd 0), from which the child's shell or flags take
/// it.
fn listening_socket() -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_serves_a_socket_passed_by_systemd_socket_activation() {
    let (listener, addr) = listening_socket();
    // What systemd does for a `.socket` unit: the socket at fd 3, `LISTEN_FDS=1`, and
    // `LISTEN_PID` the pid of the service (sh's own pid, which `exec` keeps).
    let script = r#"exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec "$0" "$@""#;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(mixed_binary())
        // Ignored: the inherited socket wins.
        .args(["--bind", "127.0.0.1:1"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(http_addr(&listening(&mut child).await), addr);
    for proto in BOTH {
        for path in ["/sync/hello", "/async/hello"] {
            assert_eq!(get(addr, proto, path).await.status, StatusCode::OK);
        }
    }
    let info = get(addr, Proto::H1, "/sync/info").await.json();
    assert_eq!(info["pid"].as_u64(), child.id().map(u64::from));
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_ignores_a_socket_activation_meant_for_another_process() {
    let (listener, _) = listening_socket();
    let script = r#"exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=1; exec "$0" "$@""#;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(mixed_binary())
        .args(["--bind", "127.0.0.1:0"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // It binds its own port instead.
    let addr = http_addr(&listening(&mut child).await);
    assert_eq!(
        get(addr, Proto::H1, "/async/hello").await.status,
        StatusCode::OK
    );
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_serves_the_socket_at_fd_n() {
    let (listener, addr) = listening_socket();
    let mut child = mixed()
        .args(["--fd", "0"])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .spawn()
        .unwrap();
    assert_eq!(http_addr(&listening(&mut child).await), addr);
    assert_eq!(
        get(addr, Proto::H2, "/sync/hello").await.text(),
        "hello from sync"
    );
    stop(child).await;

    // Not a socket: a clear failure, exit 1.
    let out = std::process::Command::new(mixed_binary())
        .args(["--fd", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot serve fd 0"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_opened_tcp_and_unix_listeners_are_served() {
    init_tracing();
    let (listener, addr) = listening_socket();
    let serving = Server::new(app::router())
        .serve_on(Listener::from(listener))
        .await
        .unwrap();
    assert_eq!(serving.local_addr(), Some(addr));
    for proto in BOTH {
        assert_eq!(
            get(addr, proto, "/async/hello").await.status,
            StatusCode::OK
        );
    }
    serving.shutdown().await.unwrap();

    let dir = std::env::temp_dir().join(format!("amphi-listeners-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pre.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let serving = Server::new(app::router())
        .serve_on(Listener::from(unix))
        .await
        .unwrap();
    assert_eq!(serving.local_addr(), None);
    assert_eq!(unix_get(&path, "/sync/hello").await, "hello from sync");
    serving.shutdown().await.unwrap();

    // The same through tokio's listener.
    let path = dir.join("tokio.sock");
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    let serving = Server::new(app::router())
        .serve_unix_listener(unix)
        .await
        .unwrap();
    assert_eq!(unix_get(&path, "/async/hello").await, "hello from async");
    serving.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET path` over HTTP/1.1 on the unix socket at `sock`: the body.
async fn unix_get(sock: &std::path::Path, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within("a request over a unix socket", async {
        let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let (responses, _) = parse_responses(&out, false);
        assert_eq!(responses.len(), 1, "{}", String::from_utf8_lossy(&out));
        assert_eq!(responses[0].status, 200);
        String::from_utf8(responses[0].body.clone()).unwrap()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_listens_on_a_unix_socket_with_uds() {
    let dir = std::env::temp_dir().join(format!("amphi-uds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mixed.sock");
    let mut child = mixed().arg("--uds").arg(&path).spawn().unwrap();
    assert_eq!(
        listening(&mut child).await,
        format!("listening on unix:{}", path.display())
    );
    assert_eq!(unix_get(&path, "/async/hello").await, "hello from async");
    assert_eq!(unix_get(&path, "/sync/hello").await, "hello from sync");
    stop(child).await;
    let _ = std::fs::remove_dir_all(&dir);
}

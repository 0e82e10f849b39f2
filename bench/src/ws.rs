//! The websocket cases' client side (tokio-tungstenite, the codec every server here uses):
//!
//! - `amphi-bench ws-load ...`: the echo load client, run by the harness as a process of its
//!   own (as wrk is), so its CPU is not counted as the server's. N connections each send a
//!   small text message and wait for its echo, for a fixed time; it prints the same
//!   `AMPHI_BENCH` summary line as the wrk script. Bounded: connecting, each round trip and
//!   the run have deadlines, and it exits by itself.
//! - [`hold_idle`]: opens N websockets from the harness process (a handshake and one echo
//!   each), leaves them idle, and reads the server's RSS and thread count.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::load::{self, LoadResult};
use crate::probe;

type Ws = WebSocketStream<TcpStream>;

/// How long one connect + handshake, and one round trip, may take before it counts as an error.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// One run of the echo load client, as the harness starts it.
#[derive(Debug, Clone)]
pub struct WsLoad {
    pub addr: SocketAddr,
    pub path: String,
    pub conns: usize,
    pub threads: usize,
    pub secs: u64,
    pub bytes: usize,
}

impl WsLoad {
    fn args(&self) -> Vec<String> {
        vec![
            "ws-load".into(),
            "--addr".into(),
            self.addr.to_string(),
            "--path".into(),
            self.path.clone(),
            "--conns".into(),
            self.conns.to_string(),
            "--threads".into(),
            self.threads.to_string(),
            "--secs".into(),
            self.secs.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
        ]
    }

    /// Runs the client as a child process (this binary's `ws-load`) and parses its summary.
    pub fn run(&self, scratch: &Path) -> Result<LoadResult, String> {
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let out = scratch.join(format!("ws-load-{}.out", std::process::id()));
        let err = scratch.join(format!("ws-load-{}.err", std::process::id()));
        let out_file =
            std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let err_file =
            std::fs::File::create(&err).map_err(|e| format!("{}: {e}", err.display()))?;
        let mut child = Command::new(me)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("spawn ws-load: {e}"))?;
        // Connecting (bounded by STEP_TIMEOUT), the run, the last round trips and closing.
        let deadline =
            Instant::now() + Duration::from_secs(self.secs + 3 * STEP_TIMEOUT.as_secs() + 5);
        load::wait_bounded(&mut child, deadline)?;
        let text =
            std::fs::read_to_string(&out).map_err(|e| format!("read ws-load output: {e}"))?;
        let err_text = std::fs::read_to_string(&err).unwrap_or_default();
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        load::parse_summary(&text).ok_or_else(|| {
            let why = err_text.lines().next().unwrap_or("no summary");
            format!("ws-load: {why}")
        })
    }
}

/// `amphi-bench ws-load --addr A --path P --conns N --threads T --secs S --bytes B`.
pub fn load_main(args: &[String]) -> Result<(), String> {
    let mut addr: Option<SocketAddr> = None;
    let mut path = "/ws".to_owned();
    let (mut conns, mut threads, mut secs, mut bytes) = (64usize, 1usize, 5u64, 32usize);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().map_err(|e| format!("--addr {value}: {e}"))?),
            "--path" => path = value.clone(),
            "--conns" => conns = num(value)?.clamp(1, 10_000) as usize,
            "--threads" => threads = num(value)?.clamp(1, 64) as usize,
            // Bounded: a run never lasts more than ten minutes.
            "--secs" => secs = num(value)?.clamp(1, 600),
            "--bytes" => bytes = num(value)?.clamp(1, 1 << 20) as usize,
            _ => return Err(format!("ws-load: unknown flag {flag}")),
        }
    }
    let addr = addr.ok_or("ws-load needs --addr")?;
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;
    let totals = rt.block_on(echo_load(
        addr,
        path,
        conns,
        Duration::from_secs(secs),
        bytes,
    ))?;
    println!("{}", totals.summary_line());
    Ok(())
}

/// What one echo run counted.
#[derive(Debug, Default)]
struct Totals {
    /// Round-trip times of the echoes that came back whole, in µs.
    latencies_us: Vec<u32>,
    errors: u64,
    elapsed: Duration,
}

impl Totals {
    /// The wrk script's line: requests, duration (µs), p50, p99 (µs), errors.
    fn summary_line(&self) -> String {
        let mut sorted: Vec<f64> = self.latencies_us.iter().map(|&v| f64::from(v)).collect();
        sorted.sort_by(f64::total_cmp);
        format!(
            "AMPHI_BENCH {} {} {:.0} {:.0} {}",
            sorted.len(),
            self.elapsed.as_micros(),
            load::percentile(&sorted, 50.0),
            load::percentile(&sorted, 99.0),
            self.errors
        )
    }
}

/// A websocket client over a fresh loopback connection (`TCP_NODELAY`, as the servers set).
async fn connect(addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let step = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (ws, _response) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp)
            .await
            .map_err(|e| format!("handshake ws://{addr}{path}: {e}"))?;
        Ok(ws)
    };
    tokio::time::timeout(STEP_TIMEOUT, step)
        .await
        .map_err(|_| format!("handshake ws://{addr}{path}: timed out"))?
}

/// Sends `payload` as text and waits for a text message back; `Ok(true)` when it is the same.
async fn round_trip(ws: &mut Ws, payload: &Utf8Bytes) -> Result<bool, String> {
    ws.send(Message::Text(payload.clone()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t == *payload),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => return Ok(false),
            Some(Ok(Message::Close(_))) | None => return Err("closed by the server".to_owned()),
            Some(Err(e)) => return Err(format!("recv: {e}")),
        }
    }
}

/// `conns` connections, all connected before the clock starts, each doing round trips one
/// after the other until `secs` have passed.
async fn echo_load(
    addr: SocketAddr,
    path: String,
    conns: usize,
    secs: Duration,
    bytes: usize,
) -> Result<Totals, String> {
    let payload = Utf8Bytes::from("x".repeat(bytes));
    // Every task reaches the gate, connected or not, so the gate always opens.
    let gate = Arc::new(tokio::sync::Barrier::new(conns + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (gate, payload, path) = (gate.clone(), payload.clone(), path.clone());
        tasks.spawn(async move {
            let ws = connect(addr, &path).await;
            gate.wait().await;
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => return (Vec::new(), 1u64, Some(e)),
            };
            let deadline = tokio::time::Instant::now() + secs;
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut failure = None;
            while tokio::time::Instant::now() < deadline {
                let start = Instant::now();
                match tokio::time::timeout(STEP_TIMEOUT, round_trip(&mut ws, &payload)).await {
                    Ok(Ok(true)) => latencies
                        .push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)),
                    Ok(Ok(false)) => errors += 1,
                    Ok(Err(e)) => {
                        errors += 1;
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {
                        errors += 1;
                        failure = Some("round trip timed out".to_owned());
                        break;
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            (latencies, errors, failure)
        });
    }
    gate.wait().await;
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        let (latencies, errors, failure) = joined.map_err(|e| format!("client task: {e}"))?;
        totals.latencies_us.extend(latencies);
        totals.errors += errors;
        if first_failure.is_none() {
            first_failure = failure;
        }
    }
    totals.elapsed = started.elapsed();
    if let Some(e) = first_failure {
        eprintln!("ws-load: {e}");
    }
    if totals.latencies_us.is_empty() {
        return Err(format!(
            "ws-load: no echo came back ({} errors)",
            totals.errors
        ));
    }
    Ok(totals)
}

/// What holding idle websockets cost a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsIdle {
    pub wanted: usize,
    /// Sockets that completed their echo and were still open when RSS was read.
    pub alive: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub threads_before: u64,
    pub threads_after: u64,
}

impl WsIdle {
    /// RSS growth per open socket, in bytes.
    pub fn bytes_per_socket(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0
            / self.alive.max(1) as f64
    }
}

/// `Threads:` of a process.
pub fn threads(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no Threads for pid {pid}"))
}

/// Opens `n` websockets to `path` (at most `batch` handshaking at once), echoes one message
/// on each, leaves them idle for `settle`, then reads the server's RSS and threads and closes
/// them all.
pub fn hold_idle(
    addr: SocketAddr,
    path: &str,
    pid: u32,
    n: usize,
    batch: usize,
    settle: Duration,
) -> Result<WsIdle, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let rss_before_kib = probe::rss_kib(pid)?;
    let threads_before = threads(pid)?;
    rt.block_on(async move {
        let mut held = open_idle(addr, path, n, batch).await;
        tokio::time::sleep(settle).await;
        // Open and idle: nothing to read yet (or a ping). Closed: the stream ends or fails.
        let alive = held
            .iter_mut()
            .map(|ws| match ws.next().now_or_never() {
                None => true,
                Some(Some(Ok(m))) => !m.is_close(),
                Some(_) => false,
            })
            .filter(|&open| open)
            .count();
        let rss_after_kib = probe::rss_kib(pid)?;
        let threads_after = threads(pid)?;
        drop(held);
        Ok(WsIdle {
            wanted: n,
            alive,
            rss_before_kib,
            rss_after_kib,
            threads_before,
            threads_after,
        })
    })
}

/// `amphi-bench ws-hold --addr A [--path P] [--sockets N] [--secs S]`: opens N idle websockets
/// (a handshake and one echo each), holds them S seconds (at most 600) and exits, for looking
/// at a server with a profiler meanwhile (valgrind's dhat or massif).
pub fn hold_main(args: &[String]) -> Result<(), String> {
    let mut addr: Option<SocketAddr> = None;
    let mut path = "/ws".to_owned();
    let (mut n, mut secs) = (1000usize, 5u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().map_err(|e| format!("--addr {value}: {e}"))?),
            "--path" => path = value.clone(),
            "--sockets" => n = num(value)?.clamp(1, 20_000) as usize,
            "--secs" => secs = num(value)?.min(600),
            _ => return Err(format!("ws-hold: unknown flag {flag}")),
        }
    }
    let addr = addr.ok_or("ws-hold needs --addr")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let held = open_idle(addr, &path, n, 100).await;
        println!("holding {} of {n} websockets for {secs} s", held.len());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        drop(held);
    });
    Ok(())
}

/// Opens up to `n` websockets, `batch` at a time, each with one echo; stops at the first
/// batch with a failure (and says so) or after a minute.
async fn open_idle(addr: SocketAddr, path: &str, n: usize, batch: usize) -> Vec<Ws> {
    let payload = Utf8Bytes::from_static("idle");
    {
        let mut held: Vec<Ws> = Vec::with_capacity(n);
        let started = Instant::now();
        while held.len() < n && started.elapsed() < Duration::from_secs(60) {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch.min(n - held.len()) {
                let (path, payload) = (path.to_owned(), payload.clone());
                set.spawn(async move {
                    let mut ws = connect(addr, &path).await?;
                    match tokio::time::timeout(STEP_TIMEOUT, round_trip(&mut ws, &payload)).await {
                        Ok(Ok(true)) => Ok(ws),
                        Ok(Ok(false)) => Err("echo came back different".to_owned()),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("echo timed out".to_owned()),
                    }
                });
            }
            let mut failures = 0;
            let mut first = None;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(ws)) => held.push(ws),
                    Ok(Err(e)) => {
                        failures += 1;
                        first.get_or_insert(e);
                    }
                    Err(e) => {
                        failures += 1;
                        first.get_or_insert(format!("task: {e}"));
                    }
                }
            }
            if failures > 0 && held.len() < n {
                // Refused or out of something: stop instead of hammering.
                eprintln!(
                    "  ws idle: {failures} sockets failed at {} open ({})",
                    held.len(),
                    first.unwrap_or_default()
                );
                break;
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_parses_as_the_wrk_summary() {
        let t = Totals {
            latencies_us: vec![300, 100, 200, 400],
            errors: 2,
            elapsed: Duration::from_secs(2),
        };
        let r = load::parse_summary(&t.summary_line()).unwrap();
        assert_eq!((r.requests, r.errors), (4, 2));
        assert!((r.rps - 2.0).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p99_us), (200.0, 400.0));
    }

    /// The client against the axum peer's `/ws`, in this process: echoes come back whole, and
    /// idle sockets stay open.
    #[test]
    fn echo_load_and_hold_idle_against_the_axum_peer() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // The peer runs until the test process exits.
        std::thread::spawn(move || crate::peers::serve("axum", addr, 4));
        let ready = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            probe::get_status(addr, "/hello").is_ok_and(|s| s == 200)
        });
        assert!(ready, "the axum peer did not come up");

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let totals = rt
            .block_on(echo_load(
                addr,
                "/ws".into(),
                3,
                Duration::from_millis(300),
                16,
            ))
            .unwrap();
        assert_eq!(totals.errors, 0);
        assert!(!totals.latencies_us.is_empty());

        let idle = hold_idle(addr, "/ws", std::process::id(), 20, 8, Duration::ZERO).unwrap();
        assert_eq!((idle.wanted, idle.alive), (20, 20));
        assert!(idle.threads_after >= 1);
    }

    #[test]
    fn bytes_per_socket_is_the_growth_over_the_open_sockets() {
        let m = WsIdle {
            wanted: 1000,
            alive: 500,
            rss_before_kib: 1000,
            rss_after_kib: 1500,
            threads_before: 3,
            threads_after: 3,
        };
        assert_eq!(m.bytes_per_socket(), 1024.0);
    }
}

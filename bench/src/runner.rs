//! Orchestration: which servers, which cases, in which order, and the bounded lifecycle of each
//! server process.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, LoadResult, Wrk};
use crate::probe::{self, IdleMemory, Latency};
use crate::ws::{self, WsIdle, WsLoad};
use crate::{chart, peers, python, report};

/// Blocking slots every blocking server gets (tokio's blocking pool cap, astra's workers,
/// amphi's `--blocking-threads`).
pub const BLOCKING_SLOTS: usize = 256;
/// Connections for the hello and echo cases.
pub const CONNS: usize = 64;
/// Connections for the 10 ms sleep case: one per blocking slot.
pub const SLEEP_CONNS: usize = 256;
/// The sleep in the sleep case, and its ideal rate: every slot busy all the time.
pub const SLEEP_MS: u64 = 10;
pub const SLEEP_IDEAL_RPS: f64 = (SLEEP_CONNS as f64) * 1000.0 / (SLEEP_MS as f64);
/// The echo case's request body.
pub const ECHO_BYTES: usize = 64 * 1024;
/// HTTP/2: connections x concurrent streams per connection (64 requests in flight, like h1).
pub const H2_CONNS: usize = 16;
pub const H2_STREAMS: usize = 4;
/// Isolation: slow requests that hold every blocking slot (plus a queue behind them).
pub const HOLDERS: usize = BLOCKING_SLOTS + 64;
pub const HOLD_MS: u64 = 500;
/// Websocket echo: connections, each with one small text message in flight.
pub const WS_CONNS: usize = 64;
pub const WS_BYTES: usize = 32;
/// The ws-memory case: blocking slots for amphi's sync mount, which holds one per socket.
pub const WS_IDLE_BLOCKING: usize = 1100;
/// Isolation: the paced probe.
pub const PROBE_CONNS: usize = 4;
pub const PROBE_INTERVAL: Duration = Duration::from_millis(4);

/// The throughput cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    H1Hello,
    H2Hello,
    Sleep,
    Echo,
    WsEcho,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::H1Hello,
        Case::H2Hello,
        Case::Sleep,
        Case::Echo,
        Case::WsEcho,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Case::H1Hello => "h1-hello",
            Case::H2Hello => "h2-hello",
            Case::Sleep => "sleep",
            Case::Echo => "echo",
            Case::WsEcho => "ws-echo",
        }
    }

    pub fn title(self) -> String {
        match self {
            Case::H1Hello => format!("GET /hello, HTTP/1.1 keep-alive, {CONNS} connections (wrk)"),
            Case::H2Hello => format!(
                "GET /hello, HTTP/2 (h2c), {H2_CONNS} connections x {H2_STREAMS} streams (h2load)"
            ),
            Case::Sleep => format!(
                "GET /sleep?ms={SLEEP_MS}, {SLEEP_CONNS} connections, {BLOCKING_SLOTS} blocking slots \
                 (ideal {} req/s)",
                report::thousands(SLEEP_IDEAL_RPS)
            ),
            Case::Echo => format!("POST /echo, 64 KiB body, {CONNS} connections (wrk)"),
            Case::WsEcho => format!(
                "websocket echo: {WS_CONNS} connections, one {WS_BYTES}-byte text message in \
                 flight on each (harness client; round trips/s)"
            ),
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Case::H1Hello => "hello, HTTP/1.1",
            Case::H2Hello => "hello, HTTP/2",
            Case::Sleep => "10 ms blocking sleep",
            Case::Echo => "64 KiB echo",
            Case::WsEcho => "websocket echo",
        }
    }

    /// Whether the case speaks websocket (only servers with a `/ws` route run it).
    pub fn is_ws(self) -> bool {
        self == Case::WsEcho
    }

    /// The server the case's ratios are taken against: raw hyper for http, axum's
    /// `extract::ws` for websockets (raw hyper has no websocket).
    pub fn floor(self) -> &'static str {
        if self.is_ws() {
            "axum"
        } else {
            "hyper"
        }
    }
}

/// How a target's handlers run: drives the chart's colours and the report's grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Async,
    Blocking,
    Amphi,
    Python,
}

/// One server under test, as a command line with `{addr}` and `{port}` placeholders.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub what: String,
    pub kind: Kind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    /// Mount prefix of the routes ("" for peers, "/async" or "/sync" for amphi).
    pub prefix: String,
    /// Speaks h2c with prior knowledge.
    pub h2: bool,
    /// Seconds to wait for readiness.
    pub start_secs: u64,
    /// Cases this server cannot run, and why (reported as n/a).
    pub unsupported: Vec<(Case, &'static str)>,
    /// Serves a websocket echo at `{prefix}/ws` (the websocket cases run only these).
    pub ws: bool,
    /// Runs the http cases (every target but the websocket-only variant of a peer).
    pub http: bool,
}

impl Target {
    fn runs(&self, case: Case) -> bool {
        if case.is_ws() {
            self.ws
        } else {
            self.http
        }
    }
}

#[derive(Debug)]
pub struct Options {
    pub duration: u64,
    pub warmup: u64,
    pub rounds: usize,
    pub servers: Option<Vec<String>>,
    pub cases: Option<Vec<String>>,
    pub wrk_threads: usize,
    pub idle_conns: usize,
    pub idle_ws: usize,
    pub amphi_bin: Option<PathBuf>,
    pub no_amphi: bool,
    pub with_python: bool,
    pub chart: Option<PathBuf>,
    pub command_line: String,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            duration: 5,
            warmup: 1,
            rounds: 1,
            servers: None,
            cases: None,
            wrk_threads: 1,
            idle_conns: 10_000,
            idle_ws: 1_000,
            amphi_bin: None,
            no_amphi: false,
            with_python: false,
            chart: None,
            command_line: std::iter::once("all")
                .chain(args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" "),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: &String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
            let list = |v: &String| v.split(',').map(str::to_owned).collect::<Vec<_>>();
            match flag.as_str() {
                "--duration" => o.duration = num(value()?)?.max(1),
                "--warmup" => o.warmup = num(value()?)?,
                "--rounds" => o.rounds = num(value()?)?.max(1) as usize,
                "--servers" => o.servers = Some(list(value()?)),
                "--cases" => o.cases = Some(list(value()?)),
                "--wrk-threads" => o.wrk_threads = num(value()?)?.max(1) as usize,
                "--idle-conns" => o.idle_conns = num(value()?)? as usize,
                "--idle-ws" => o.idle_ws = num(value()?)?.max(1) as usize,
                "--amphi-bin" => o.amphi_bin = Some(PathBuf::from(value()?)),
                "--chart" => o.chart = Some(PathBuf::from(value()?)),
                "--no-amphi" => o.no_amphi = true,
                "--with-python" => o.with_python = true,
                _ => return Err(format!("unknown option {flag}\n{}", crate::USAGE)),
            }
        }
        Ok(o)
    }

    fn wants_case(&self, key: &str) -> bool {
        self.cases
            .as_ref()
            .is_none_or(|c| c.iter().any(|k| k == key))
    }

    fn wants_server(&self, name: &str) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|s| s.iter().any(|k| k == name))
    }
}

/// The repository root (bench/..).
pub fn repo_root() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).to_path_buf()
}

/// Where scratch files, logs, the venv and results.md go: bench/target.
pub fn scratch_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("amphi-bench")
}

/// Everything one run measured; the report is rendered from this.
#[derive(Debug, Default)]
pub struct Results {
    pub targets: Vec<(String, String, Kind)>,
    /// (case, target) -> one result per round.
    pub cases: BTreeMap<(Case, String), Vec<Result<LoadResult, String>>>,
    pub isolation: Option<Result<Isolation, String>>,
    pub memory: Vec<(String, Result<IdleMemory, String>)>,
    pub ws_memory: Vec<(String, Result<WsIdle, String>)>,
    pub options: String,
    pub skipped: Vec<String>,
    /// Where amphi's binary came from.
    pub amphi: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    pub unloaded: Latency,
    pub loaded: Latency,
    pub holders: LoadResult,
    pub blocking_slots: usize,
}

impl Results {
    /// The median-throughput round of a cell.
    pub fn cell(&self, case: Case, target: &str) -> Option<Result<LoadResult, String>> {
        let runs = self.cases.get(&(case, target.to_owned()))?;
        let mut ok: Vec<LoadResult> = runs
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        if ok.is_empty() {
            return runs.first().cloned();
        }
        ok.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        Some(Ok(ok[ok.len() / 2]))
    }

    /// `a`'s requests/s over `b`'s, round by round: each round runs every server once, so
    /// these ratios compare servers measured minutes apart at most. Rounds in which either
    /// failed are left out.
    pub fn round_ratios(&self, case: Case, a: &str, b: &str) -> Vec<f64> {
        let (Some(ra), Some(rb)) = (
            self.cases.get(&(case, a.to_owned())),
            self.cases.get(&(case, b.to_owned())),
        ) else {
            return Vec::new();
        };
        ra.iter()
            .zip(rb)
            .filter_map(|(x, y)| match (x, y) {
                (Ok(x), Ok(y)) if y.rps > 0.0 => Some(x.rps / y.rps),
                _ => None,
            })
            .collect()
    }
}

pub fn run(opts: Options) -> Result<(), String> {
    load::ensure_tools()?;
    raise_nofile();
    let scratch = scratch_dir();
    fs::create_dir_all(scratch.join("logs")).map_err(|e| format!("{}: {e}", scratch.display()))?;

    let mut results = Results {
        options: format!(
            "`cargo run --release --manifest-path bench/Cargo.toml -- {}`: {} s per case after a \
             {} s warm-up, {} round(s) (median by requests/s), {} client thread(s)",
            opts.command_line, opts.duration, opts.warmup, opts.rounds, opts.wrk_threads
        ),
        ..Results::default()
    };
    // Isolation and memory pick their servers from all targets; the throughput cases run the
    // ones --servers names.
    let all_targets = targets(&opts, &mut results.skipped)?;
    results.amphi = match (&opts.amphi_bin, opts.no_amphi) {
        (_, true) => "left out (--no-amphi)".to_owned(),
        (Some(bin), _) => format!("{} (given with --amphi-bin)", bin.display()),
        (None, _) => "`cargo build --release --example mixed` from this repository".to_owned(),
    };
    let targets: Vec<&Target> = all_targets
        .iter()
        .filter(|t| opts.wants_server(&t.name))
        .collect();
    results.targets = targets
        .iter()
        .map(|t| (t.name.clone(), t.what.clone(), t.kind))
        .collect();

    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| opts.wants_case(c.key()))
        .collect();
    if !cases.is_empty() {
        for round in 0..opts.rounds {
            for &target in &targets {
                if !cases.iter().any(|&c| target.runs(c)) {
                    continue;
                }
                eprintln!("[round {}/{}] {}", round + 1, opts.rounds, target.name);
                let server = match Server::start(target, &scratch) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("  start failed: {e}");
                        for case in cases.iter().filter(|&&c| target.runs(c)) {
                            results
                                .cases
                                .entry((*case, target.name.clone()))
                                .or_default()
                                .push(Err(e.clone()));
                        }
                        continue;
                    }
                };
                for &case in cases.iter().filter(|&&c| target.runs(c)) {
                    let r = run_case(case, target, &server, &opts, &scratch);
                    match &r {
                        Ok(r) => eprintln!(
                            "  {:9} {:>10.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us  errors {} of {}  cpu {:.1} us/req",
                            case.key(), r.rps, r.p50_us, r.p99_us, r.errors, r.requests, r.cpu_us_per_req.unwrap_or(0.0)
                        ),
                        Err(e) => eprintln!("  {:9} failed: {e}", case.key()),
                    }
                    results
                        .cases
                        .entry((case, target.name.clone()))
                        .or_default()
                        .push(r);
                }
            }
        }
    }

    if opts.wants_case("isolation") {
        if let Some(amphi) = all_targets.iter().find(|t| t.name == "amphi-sync") {
            eprintln!("isolation: amphi /async/hello while /sync/sleep holds every blocking slot");
            results.isolation = Some(isolation(amphi, &opts, &scratch));
        } else {
            results
                .skipped
                .push("isolation: needs amphi (the mixed example)".to_owned());
        }
    }

    if opts.wants_case("memory") {
        for target in all_targets
            .iter()
            .filter(|t| matches!(t.name.as_str(), "hyper" | "axum" | "amphi-async"))
        {
            eprintln!(
                "memory: {} holding {} idle keep-alive connections",
                target.name, opts.idle_conns
            );
            // amphi's header-read timeout (10 s by default) also closes keep-alive connections
            // idle that long; lift it here so the case measures what holding them costs.
            let mut target = target.clone();
            if target.kind == Kind::Amphi {
                target
                    .args
                    .extend(["--header-timeout-ms".to_owned(), "120000".to_owned()]);
            }
            let target = &target;
            let r = Server::start(target, &scratch).and_then(|server| {
                probe::hold_idle(
                    server.addr,
                    &format!("{}/hello", target.prefix),
                    server.pid(),
                    opts.idle_conns,
                    200,
                    Duration::from_secs(2),
                )
            });
            match &r {
                Ok(m) => eprintln!(
                    "  rss {} KiB -> {} KiB with {} of {} connections open",
                    m.rss_before_kib, m.rss_after_kib, m.alive, m.wanted
                ),
                Err(e) => eprintln!("  failed: {e}"),
            }
            results.memory.push((target.name.clone(), r));
        }
    }

    if opts.wants_case("ws-memory") {
        for target in all_targets.iter().filter(|t| {
            matches!(
                t.name.as_str(),
                "axum" | "axum-ws-tuned" | "amphi-async" | "amphi-sync"
            )
        }) {
            eprintln!(
                "ws-memory: {} holding {} idle websockets",
                target.name, opts.idle_ws
            );
            let r = ws_memory(target, &opts, &scratch);
            match &r {
                Ok(m) => eprintln!(
                    "  rss {} KiB -> {} KiB, threads {} -> {}, {} of {} sockets open ({:.0} bytes per socket)",
                    m.rss_before_kib,
                    m.rss_after_kib,
                    m.threads_before,
                    m.threads_after,
                    m.alive,
                    m.wanted,
                    m.bytes_per_socket()
                ),
                Err(e) => eprintln!("  failed: {e}"),
            }
            results.ws_memory.push((target.name.clone(), r));
        }
    }

    let markdown = report::render(&results);
    println!("{markdown}");
    let md_path = scratch.join("results.md");
    fs::write(&md_path, &markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let chart_path = opts
        .chart
        .clone()
        .unwrap_or_else(|| repo_root().join("docs/benchmarks-chart.svg"));
    if let Some(dir) = chart_path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    fs::write(&chart_path, chart::render(&results))
        .map_err(|e| format!("{}: {e}", chart_path.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), chart_path.display());
    Ok(())
}

fn run_case(
    case: Case,
    target: &Target,
    server: &Server,
    opts: &Options,
    scratch: &Path,
) -> Result<LoadResult, String> {
    let base = format!("http://{}{}", server.addr, target.prefix);
    let wrk = |path: &str, conns: usize, post: Option<usize>, secs: u64| Wrk {
        url: format!("{base}{path}"),
        conns,
        threads: opts.wrk_threads,
        secs,
        post_body: post,
        timeout_secs: 5,
    };
    if let Some((_, why)) = target.unsupported.iter().find(|(c, _)| *c == case) {
        return Err((*why).to_owned());
    }
    let measure = |secs: u64| -> Result<LoadResult, String> {
        match case {
            Case::H1Hello => wrk("/hello", CONNS, None, secs).run(scratch),
            Case::H2Hello if !target.h2 => Err("no h2c".to_owned()),
            Case::H2Hello => load::h2load(
                &format!("{base}/hello"),
                H2_CONNS,
                H2_STREAMS,
                opts.wrk_threads,
                secs,
                scratch,
            ),
            Case::Sleep => {
                wrk(&format!("/sleep?ms={SLEEP_MS}"), SLEEP_CONNS, None, secs).run(scratch)
            }
            Case::Echo => wrk("/echo", CONNS, Some(ECHO_BYTES), secs).run(scratch),
            Case::WsEcho => WsLoad {
                addr: server.addr,
                path: format!("{}/ws", target.prefix),
                conns: WS_CONNS,
                threads: opts.wrk_threads,
                secs,
                bytes: WS_BYTES,
            }
            .run(scratch),
        }
    };
    if opts.warmup > 0 {
        measure(opts.warmup)?;
    }
    let cpu_before = probe::group_cpu_us(server.pid());
    let mut result = measure(opts.duration)?;
    let cpu = probe::group_cpu_us(server.pid()).saturating_sub(cpu_before);
    if result.requests > 0 {
        result.cpu_us_per_req = Some(cpu as f64 / result.requests as f64);
    }
    Ok(result)
}

/// The ws-memory case for one server: a fresh process, `--idle-ws` idle websockets.
fn ws_memory(target: &Target, opts: &Options, scratch: &Path) -> Result<WsIdle, String> {
    let mut target = target.clone();
    if target.name == "amphi-sync" {
        // A blocking websocket holds a blocking slot (a thread) for as long as it is open.
        let slots = WS_IDLE_BLOCKING.max(opts.idle_ws + 64).to_string();
        if let Some(i) = target.args.iter().position(|a| a == "--blocking-threads") {
            if let Some(v) = target.args.get_mut(i + 1) {
                *v = slots;
            }
        }
    }
    let server = Server::start(&target, scratch)?;
    // Let the readiness probe's connection go and the runtime settle before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    ws::hold_idle(
        server.addr,
        &format!("{}/ws", target.prefix),
        server.pid(),
        opts.idle_ws,
        100,
        Duration::from_secs(2),
    )
}

fn isolation(amphi: &Target, opts: &Options, scratch: &Path) -> Result<Isolation, String> {
    let server = Server::start(amphi, scratch)?;
    let hello = "/async/hello";
    // Warm the connection path, then the unloaded baseline.
    probe::paced_latency(server.addr, hello, PROBE_CONNS, PROBE_INTERVAL, 1)?;
    let unloaded = probe::paced_latency(
        server.addr,
        hello,
        PROBE_CONNS,
        PROBE_INTERVAL,
        opts.duration,
    )?;
    eprintln!(
        "  unloaded: p50 {:.0} us, p99 {:.0} us",
        unloaded.p50_us, unloaded.p99_us
    );
    let settle = 2;
    let holders = Wrk {
        url: format!("http://{}/sync/sleep?ms={HOLD_MS}", server.addr),
        conns: HOLDERS,
        threads: 1,
        secs: settle + opts.duration + 1,
        post_body: None,
        timeout_secs: 10,
    }
    .spawn(scratch)?;
    std::thread::sleep(Duration::from_secs(settle));
    let loaded = probe::paced_latency(
        server.addr,
        hello,
        PROBE_CONNS,
        PROBE_INTERVAL,
        opts.duration,
    );
    let holders = holders.finish()?;
    let loaded = loaded?;
    eprintln!(
        "  loaded:   p50 {:.0} us, p99 {:.0} us (holders: {:.0} req/s, {} errors)",
        loaded.p50_us, loaded.p99_us, holders.rps, holders.errors
    );
    Ok(Isolation {
        unloaded,
        loaded,
        holders,
        blocking_slots: BLOCKING_SLOTS,
    })
}

fn targets(opts: &Options, skipped: &mut Vec<String>) -> Result<Vec<Target>, String> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut out = Vec::new();
    let what = |name: &str| -> &'static str {
        match name {
            "hyper" => "raw hyper 1 + hyper-util auto builder, handlers inline (the floor)",
            "hyper-blocking" => "raw hyper + a hand-written spawn_blocking per request",
            "axum" => "axum 0.8, async handlers; `/ws` on `extract::ws` (tokio-tungstenite 0.29)",
            "axum-blocking" => "axum 0.8, every handler in spawn_blocking",
            "actix" => "actix-web 4, every handler in web::block",
            "astra" => "astra 0.4: blocking server on hyper, a worker thread per connection",
            _ => "",
        }
    };
    for &name in peers::PEERS {
        out.push(Target {
            name: name.to_owned(),
            what: what(name).to_owned(),
            kind: if name.contains("blocking") || name == "actix" || name == "astra" {
                Kind::Blocking
            } else {
                Kind::Async
            },
            program: me.clone(),
            args: vec![
                "serve".into(),
                name.into(),
                "--bind".into(),
                "{addr}".into(),
                "--blocking-threads".into(),
                BLOCKING_SLOTS.to_string(),
            ],
            cwd: None,
            env: Vec::new(),
            prefix: String::new(),
            h2: true,
            start_secs: 30,
            unsupported: if name == "astra" {
                // The handler runs inside the connection future's poll, and the request body is
                // fed by that same future: reading it blocks forever (seen with curl and wrk).
                vec![(Case::Echo, "astra 0.4 hangs reading a request body")]
            } else {
                Vec::new()
            },
            ws: name == "axum",
            http: true,
        });
    }
    // The same axum process's `/tuned/ws`: amphi's codec buffers (4 KiB read buffer, no write
    // buffering), so the websocket cases also compare like with like.
    if let Some(axum) = out.iter().find(|t| t.name == "axum") {
        let mut tuned = axum.clone();
        tuned.name = "axum-ws-tuned".to_owned();
        tuned.what =
            "the axum peer's `/tuned/ws`: `extract::ws` with amphi's codec buffers (4 KiB read, \
             no write buffering); websocket cases only"
                .to_owned();
        tuned.prefix = "/tuned".to_owned();
        tuned.http = false;
        out.push(tuned);
    }
    let want_amphi = !opts.no_amphi
        && (opts.wants_server("amphi-async")
            || opts.wants_server("amphi-sync")
            || opts.wants_case("isolation")
            || opts.wants_case("memory")
            || opts.wants_case("ws-memory"));
    if want_amphi {
        match amphi_binary(opts) {
            Ok(bin) => {
                for (name, prefix, what) in [
                    (
                        "amphi-async",
                        "/async",
                        "amphi `mixed` example, the AsyncHandler mount",
                    ),
                    (
                        "amphi-sync",
                        "/sync",
                        "amphi `mixed` example, the SyncHandler mount",
                    ),
                ] {
                    out.push(Target {
                        name: name.to_owned(),
                        what: what.to_owned(),
                        kind: Kind::Amphi,
                        program: bin.clone(),
                        args: vec![
                            "--bind".into(),
                            "{addr}".into(),
                            "--blocking-threads".into(),
                            BLOCKING_SLOTS.to_string(),
                            "--queue-timeout-ms".into(),
                            "10000".into(),
                        ],
                        cwd: None,
                        env: vec![("RUST_LOG".into(), "warn".into())],
                        prefix: prefix.to_owned(),
                        h2: true,
                        start_secs: 30,
                        unsupported: Vec::new(),
                        ws: true,
                        http: true,
                    });
                }
            }
            Err(e) => {
                eprintln!("amphi left out: {e}");
                skipped.push(format!("amphi: {e}"));
            }
        }
    }
    if opts.with_python {
        match python::targets(&scratch_dir()) {
            Ok(ts) => out.extend(ts),
            Err(e) => {
                eprintln!("python left out: {e}");
                skipped.push(format!("python: {e}"));
            }
        }
    }
    Ok(out)
}

/// The `mixed` example built in release mode from the workspace, as users run it.
pub fn amphi_binary(opts: &Options) -> Result<PathBuf, String> {
    if let Some(bin) = &opts.amphi_bin {
        return if bin.is_file() {
            Ok(bin.clone())
        } else {
            Err(format!("{} not found", bin.display()))
        };
    }
    let root = repo_root();
    eprintln!(
        "building amphi: cargo build --release --example mixed (in {})",
        root.display()
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--example", "mixed"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --example mixed failed ({status})"
        ));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root.join(d))
        .unwrap_or_else(|| root.join("target"));
    let bin = target_dir.join("release/examples/mixed");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("built, but {} is missing", bin.display()))
    }
}

/// Lift the soft open-files limit to the hard one; children inherit it. The memory case needs
/// 10,000 sockets on each side.
pub fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open files limit: {n}"),
        Err(e) => eprintln!("could not raise the open files limit: {e}"),
    }
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("{e}"))
}

/// A server process, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(target: &Target, scratch: &Path) -> Result<Server, String> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = scratch.join("logs").join(format!("{}.log", target.name));
        let log =
            fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("{e}"))?;
        let mut cmd = Command::new(&target.program);
        for arg in &target.args {
            cmd.arg(
                arg.replace("{addr}", &addr.to_string())
                    .replace("{port}", &port.to_string()),
            );
        }
        if let Some(cwd) = &target.cwd {
            cmd.current_dir(cwd);
        }
        cmd.envs(target.env.iter().map(|(k, v)| (k, v)));
        // Own process group, so a server that forks workers (gunicorn) is stopped whole.
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", target.program.display()))?;
        let mut server = Server { child, addr };
        let deadline = Instant::now() + Duration::from_secs(target.start_secs);
        let path = format!("{}/hello", target.prefix);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("{} exited early ({status}):\n{log}", target.name));
            }
            if let Ok(200) = probe::get_status(addr, &path) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready on {addr} after {} s",
                    target.name, target.start_secs
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the port's sockets and the kernel settle before the next server starts.
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(rps: f64) -> Result<LoadResult, String> {
        Ok(LoadResult {
            requests: rps as u64 * 5,
            rps,
            p50_us: 100.0,
            p99_us: 200.0,
            errors: 0,
            cpu_us_per_req: None,
        })
    }

    #[test]
    fn ratios_pair_the_servers_round_by_round_and_skip_failed_rounds() {
        let mut cases = BTreeMap::new();
        cases.insert(
            (Case::H1Hello, "a".to_owned()),
            vec![
                rate(90.0),
                rate(80.0),
                Err("wrk failed".to_owned()),
                rate(50.0),
            ],
        );
        cases.insert(
            (Case::H1Hello, "b".to_owned()),
            vec![rate(100.0), rate(100.0), rate(100.0), rate(200.0)],
        );
        let r = Results {
            targets: Vec::new(),
            cases,
            isolation: None,
            memory: Vec::new(),
            ws_memory: Vec::new(),
            options: String::new(),
            skipped: Vec::new(),
            amphi: String::new(),
        };
        assert_eq!(
            r.round_ratios(Case::H1Hello, "a", "b"),
            vec![0.9, 0.8, 0.25]
        );
        assert!(r.round_ratios(Case::H2Hello, "a", "b").is_empty());
        // The median round of a cell is the middle of its successful rounds.
        assert_eq!(r.cell(Case::H1Hello, "a").unwrap().unwrap().rps, 80.0);
    }
}

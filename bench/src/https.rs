//! The https case: `GET /hello` over TLS, HTTP/1.1 and HTTP/2 chosen by ALPN, amphi's `mixed`
//! (`--tls-cert`/`--tls-key`, both mounts) against raw hyper + tokio-rustls (`hyper-tls`),
//! driven by h2load. Every round runs each server once; the report gives each round's ratio.
//! The certificate is a throwaway one made with rcgen in bench/target.

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::{self, LoadResult};
use crate::runner::{self, Options};
use crate::{probe, report};

/// Connections: as the plain hello cases (64 over HTTP/1.1; 16 x 4 streams over HTTP/2).
const H1_CONNS: usize = runner::CONNS;
const H2_CONNS: usize = runner::H2_CONNS;
const H2_STREAMS: usize = runner::H2_STREAMS;

struct Tls {
    cert: PathBuf,
    key: PathBuf,
}

fn certificate(scratch: &Path) -> Result<Tls, String> {
    let dir = scratch.join("tls");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .map_err(|e| format!("rcgen: {e}"))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    fs::write(&key, made.key_pair.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(Tls { cert, key })
}

/// One server process, killed (with its group) when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn start(name: &str, program: &Path, args: &[String], scratch: &Path) -> Result<Proc, String> {
        let port = runner::free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = scratch.join("logs").join(format!("https-{name}.log"));
        let log =
            fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .args(args.iter().map(|a| a.replace("{addr}", &addr.to_string())))
            .env("RUST_LOG", "warn")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        let mut p = Proc { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                let log = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("{name} exited early ({status}):\n{log}"));
            }
            let said = fs::read_to_string(&log_path).unwrap_or_default();
            if said.contains("listening on https://") && TcpStream::connect(addr).is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!("{name} not listening on {addr} after 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// (server, path) pairs measured, the floor first.
const SERVERS: [(&str, &str); 3] = [
    ("hyper-tls", "/hello"),
    ("amphi-async", "/async/hello"),
    ("amphi-sync", "/sync/hello"),
];

pub fn run(opts: &Options) -> Result<(), String> {
    if !load::have("h2load") {
        return Err("the https case needs h2load (Debian: nghttp2-client)".to_owned());
    }
    runner::raise_nofile();
    let scratch = runner::scratch_dir();
    fs::create_dir_all(scratch.join("logs")).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let tls = certificate(&scratch)?;
    let amphi = runner::amphi_binary(opts)?;
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let (cert, key) = (
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    // [protocol][server] -> req/s per round
    let mut rps: Vec<Vec<Vec<LoadResult>>> = vec![vec![Vec::new(); SERVERS.len()]; 2];
    for round in 0..opts.rounds {
        for (s, (name, path)) in SERVERS.iter().enumerate() {
            eprintln!("[https round {}/{}] {name}", round + 1, opts.rounds);
            let proc = if *name == "hyper-tls" {
                let args = [
                    "serve",
                    "hyper-tls",
                    "--bind",
                    "{addr}",
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                ];
                Proc::start(name, &me, &args.map(str::to_owned), &scratch)?
            } else {
                let args = [
                    "--bind",
                    "{addr}",
                    "--blocking-threads",
                    "256",
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                ];
                Proc::start(name, &amphi, &args.map(str::to_owned), &scratch)?
            };
            let url = format!("https://{}{path}", proc.addr);
            for (p, (conns, streams, extra)) in [
                (H1_CONNS, 1, &["--h1"][..]),
                (H2_CONNS, H2_STREAMS, &[][..]),
            ]
            .into_iter()
            .enumerate()
            {
                let measure = |secs| {
                    load::h2load_with(
                        &url,
                        conns,
                        streams,
                        opts.wrk_threads,
                        secs,
                        &scratch,
                        extra,
                    )
                };
                if opts.warmup > 0 {
                    measure(opts.warmup)?;
                }
                let cpu_before = probe::group_cpu_us(proc.child.id());
                let mut r = measure(opts.duration)?;
                let cpu = probe::group_cpu_us(proc.child.id()).saturating_sub(cpu_before);
                if r.requests > 0 {
                    r.cpu_us_per_req = Some(cpu as f64 / r.requests as f64);
                }
                eprintln!(
                    "  {:8} {:>10.0} req/s  p50 {:>8.0} us  p99 {:>8.0} us  errors {} of {}  cpu {:.1} us/req",
                    ["https-h1", "https-h2"][p], r.rps, r.p50_us, r.p99_us, r.errors, r.requests,
                    r.cpu_us_per_req.unwrap_or(0.0)
                );
                rps[p][s].push(r);
            }
        }
    }
    let md = render(opts, &rps);
    println!("{md}");
    let path = scratch.join("https-results.md");
    fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn render(opts: &Options, rps: &[Vec<Vec<LoadResult>>]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "HTTPS hello: `cargo run --release --manifest-path bench/Cargo.toml -- {}`; {} s per case \
         after a {} s warm-up, {} round(s), h2load with {} client thread(s), TLS 1.3 (rustls, \
         ring) on both sides of each server.\n\n{}\n",
        opts.command_line.replacen("all", "https", 1),
        opts.duration,
        opts.warmup,
        opts.rounds,
        opts.wrk_threads,
        report::machine()
    );
    for (p, title) in [
        format!("HTTP/1.1 over TLS (ALPN http/1.1), {H1_CONNS} connections"),
        format!("HTTP/2 over TLS (ALPN h2), {H2_CONNS} connections x {H2_STREAMS} streams"),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(md, "**{title}**\n");
        let _ = writeln!(
            md,
            "| server | req/s (median) | p50 | p99 | CPU/req | errors | vs hyper-tls, per round |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let floor: Vec<f64> = rps[p][0].iter().map(|r| r.rps).collect();
        for (s, (name, _)) in SERVERS.iter().enumerate() {
            let runs = &rps[p][s];
            let mine: Vec<f64> = runs.iter().map(|r| r.rps).collect();
            let mut sorted = runs.clone();
            sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            let Some(mid) = sorted.get(sorted.len() / 2) else {
                continue;
            };
            let ratios: Vec<f64> = mine.iter().zip(&floor).map(|(a, b)| a / b).collect();
            let ratio = if s == 0 {
                "1".to_owned()
            } else {
                format!(
                    "**{:.2} x** ({})",
                    median(&ratios),
                    ratios
                        .iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {:.1} us | {} | {ratio} |",
                report::thousands(mid.rps),
                report::dur(mid.p50_us),
                report::dur(mid.p99_us),
                mid.cpu_us_per_req.unwrap_or(0.0),
                mid.errors,
            );
        }
        md.push('\n');
    }
    md
}

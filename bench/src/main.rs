//! amphi's side-by-side load harness.
//!
//! `cargo run --release --manifest-path bench/Cargo.toml -- all` builds amphi's `mixed` example in
//! release mode, starts each server on a loopback port, drives it with wrk and h2load, and prints
//! markdown tables (also written to `bench/target/results.md`) and an SVG chart
//! (`docs/benchmarks-chart.svg`). `serve NAME` runs one peer server and `ws-load` the websocket
//! echo client; the runner starts both as processes of their own.
//! See docs/benchmarks.md for what each case measures.

#![forbid(unsafe_code)]

mod chart;
mod https;
mod load;
mod peers;
mod probe;
mod python;
mod report;
mod runner;
mod ws;

use std::net::SocketAddr;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  amphi-bench all [options]            build, run every case against every server, report
  amphi-bench https [--duration SECS] [--warmup SECS] [--rounds N] [--amphi-bin PATH]
                                       HTTPS hello over HTTP/1.1 and HTTP/2 (ALPN): amphi
                                       against raw hyper + tokio-rustls (h2load)
  amphi-bench serve NAME [--bind ADDR] [--blocking-threads N] [--tls-cert P --tls-key P]
                                       run one peer server (hyper, hyper-blocking, axum,
                                       axum-blocking, actix, astra, hyper-tls)
  amphi-bench ws-load --addr ADDR [--path /ws] [--conns 64] [--threads 1] [--secs 5] [--bytes 32]
                                       websocket echo load client (the ws-echo case runs it)
  amphi-bench ws-hold --addr ADDR [--path /ws] [--sockets 1000] [--secs 5]
                                       hold idle websockets open (to profile a server meanwhile)
options for `all`:
  --duration SECS      measured seconds per case (default 5)
  --warmup SECS        warm-up seconds before each case (default 1)
  --rounds N           repeat the whole matrix N times, report the median run (default 1)
  --servers A,B        only these servers (names as in the table)
  --cases A,B          only these cases: h1-hello,h2-hello,sleep,echo,ws-echo,isolation,
                       memory,ws-memory
  --wrk-threads N      wrk/h2load client threads (default 1)
  --idle-conns N       connections held open in the memory case (default 10000)
  --idle-ws N          websockets held open in the ws-memory case (default 1000)
  --amphi-bin PATH     use this `mixed` binary instead of building it
  --no-amphi           leave amphi out (peers only)
  --with-python        also run a Django app under gunicorn, uvicorn and granian (venv in bench/target)
  --chart PATH         where to write the SVG chart (default docs/benchmarks-chart.svg)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("ws-load") => ws::load_main(&args[1..]),
        Some("ws-hold") => ws::hold_main(&args[1..]),
        Some("all") => runner::Options::parse(&args[1..]).and_then(runner::run),
        Some("https") => runner::Options::parse(&args[1..]).and_then(|o| https::run(&o)),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &[String]) -> Result<(), String> {
    let name = args.first().ok_or_else(|| USAGE.to_owned())?;
    let mut bind: SocketAddr = "127.0.0.1:8000".parse().map_err(|e| format!("{e}"))?;
    let mut blocking = 256usize;
    let (mut cert, mut key) = (None, None);
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--bind" => bind = value.parse().map_err(|e| format!("--bind {value}: {e}"))?,
            "--blocking-threads" => {
                blocking = value
                    .parse()
                    .map_err(|e| format!("--blocking-threads {value}: {e}"))?
            }
            "--tls-cert" => cert = Some(std::path::PathBuf::from(value)),
            "--tls-key" => key = Some(std::path::PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if name == "hyper-tls" {
        let (Some(cert), Some(key)) = (cert, key) else {
            return Err("hyper-tls needs --tls-cert and --tls-key".to_owned());
        };
        return peers::serve_tls(bind, &cert, &key).map_err(|e| format!("serve {name}: {e}"));
    }
    peers::serve(name, bind, blocking).map_err(|e| format!("serve {name}: {e}"))
}

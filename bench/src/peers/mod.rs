//! The peer servers amphi is measured against. Each serves the same three routes:
//!
//! - `GET /hello` -> 200 `hello from async` (async peers) or `hello from sync` (blocking peers)
//! - `GET /sleep?ms=N` -> waits N ms: a tokio timer on async peers, `thread::sleep` on a
//!   blocking thread on blocking peers
//! - `POST /echo` -> 200 with the request body. Async peers stream it straight back; blocking
//!   peers collect it and hand it to a blocking thread, which is what users of those stacks write.
//! - `GET /ws` (axum only): a websocket echo on `axum::extract::ws`, against amphi's
//!   `/async/ws` and `/sync/ws`; `GET /tuned/ws` the same with amphi's codec buffers.
//!
//! Every peer prints `listening on http://ADDR` once bound, like amphi's `mixed` example.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

mod actix;
mod astra;
mod axum;
mod hyper;
mod hyper_tls;

pub use hyper_tls::run as serve_tls;

/// The names `serve` accepts, in the order the report lists them.
pub const PEERS: &[&str] = &[
    "hyper",
    "hyper-blocking",
    "axum",
    "axum-blocking",
    "actix",
    "astra",
];

/// Runs the named peer until the process is killed.
pub fn serve(name: &str, bind: SocketAddr, blocking_threads: usize) -> io::Result<()> {
    match name {
        "hyper" => hyper::run(bind, blocking_threads, false),
        "hyper-blocking" => hyper::run(bind, blocking_threads, true),
        "axum" => axum::run(bind, blocking_threads, false),
        "axum-blocking" => axum::run(bind, blocking_threads, true),
        "actix" => actix::run(bind),
        "astra" => astra::run(bind, blocking_threads),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown peer {other:?}; expected one of {PEERS:?}"),
        )),
    }
}

/// A tokio runtime configured the way amphi's server runs: multi-thread, default worker count
/// (one per core), all drivers, and a blocking pool capped at `blocking_threads`.
fn runtime(blocking_threads: usize) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads.max(1))
        .build()
}

fn announce(addr: SocketAddr) {
    announce_as("http", addr)
}

fn announce_as(scheme: &str, addr: SocketAddr) {
    let mut out = io::stdout().lock();
    // The harness waits for this line (and then for a 200 from /hello).
    let _ = writeln!(out, "listening on {scheme}://{addr}");
    let _ = out.flush();
}

/// `ms=N` from a query string; 0 when absent or malformed.
fn sleep_ms(query: Option<&str>) -> Duration {
    let ms = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(ms)
}

const HELLO_ASYNC: &str = "hello from async";
const HELLO_SYNC: &str = "hello from sync";

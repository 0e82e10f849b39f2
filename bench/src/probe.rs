//! A minimal HTTP/1.1 client for the cases wrk cannot express: readiness checks, a paced
//! latency probe (isolation case), and thousands of idle keep-alive connections (memory case).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::percentile;

/// How far a buffer holds one complete response: `Some((status, consumed))` when it does.
fn parse_response(buf: &[u8]) -> io::Result<Option<(u16, usize)>> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("non-utf8 head"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if chunked {
        let mut pos = 0;
        loop {
            let Some(eol) = body[pos..].windows(2).position(|w| w == b"\r\n") else {
                return Ok(None);
            };
            let size_str = std::str::from_utf8(&body[pos..pos + eol]).map_err(|_| bad("chunk"))?;
            let size_hex = size_str.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("chunk size"))?;
            pos += eol + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                return Ok((body.len() >= pos + 2).then_some((status, head_end + 4 + pos + 2)));
            }
            if body.len() < pos + size + 2 {
                return Ok(None);
            }
            pos += size + 2;
        }
    }
    let len = content_length.unwrap_or(0);
    Ok((body.len() >= len).then_some((status, head_end + 4 + len)))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

fn request(path: &str, close: bool) -> String {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {conn}\r\n\r\n")
}

/// One blocking GET over a fresh connection; the status code.
pub fn get_status(addr: SocketAddr, path: &str) -> io::Result<u16> {
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request(path, true).as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, _)) = parse_response(&buf)? {
            return Ok(status);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One GET on a kept-alive async connection; the status code.
async fn get_on(stream: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> io::Result<u16> {
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, _)) = parse_response(buf)? {
            return Ok(status);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Latency of a paced probe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub errors: u64,
}

/// Sends GET `path` on `conns` keep-alive connections, one request per connection every
/// `interval`, for `secs` seconds, and reports the latency distribution. Pacing keeps the probe
/// from saturating the CPU itself, so what it sees is scheduling delay, not its own load.
pub fn paced_latency(
    addr: SocketAddr,
    path: &str,
    conns: usize,
    interval: Duration,
    secs: u64,
) -> Result<Latency, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let req = request(path, false).into_bytes();
    rt.block_on(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..conns {
            let req = req.clone();
            tasks.spawn(async move {
                // Stagger the connections across one interval.
                tokio::time::sleep(interval * i as u32 / conns.max(1) as u32).await;
                let mut samples = Vec::new();
                let mut errors = 0u64;
                let mut buf = Vec::with_capacity(4096);
                let mut stream = None;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    if stream.is_none() {
                        stream = TcpStream::connect(addr).await.ok();
                        if let Some(s) = &stream {
                            let _ = s.set_nodelay(true);
                        }
                    }
                    let Some(s) = stream.as_mut() else {
                        errors += 1;
                        continue;
                    };
                    let start = Instant::now();
                    let outcome =
                        tokio::time::timeout(Duration::from_secs(10), get_on(s, &req, &mut buf))
                            .await;
                    match outcome {
                        Ok(Ok(200)) => samples.push(start.elapsed().as_secs_f64() * 1e6),
                        Ok(Ok(_)) => errors += 1,
                        _ => {
                            errors += 1;
                            stream = None;
                        }
                    }
                }
                (samples, errors)
            });
        }
        let mut all = Vec::new();
        let mut errors = 0;
        while let Some(joined) = tasks.join_next().await {
            let (samples, e) = joined.map_err(|e| format!("probe task: {e}"))?;
            all.extend(samples);
            errors += e;
        }
        all.sort_by(f64::total_cmp);
        Ok(Latency {
            samples: all.len(),
            p50_us: percentile(&all, 50.0),
            p99_us: percentile(&all, 99.0),
            max_us: all.last().copied().unwrap_or(0.0),
            errors,
        })
    })
}

/// What holding idle connections cost a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleMemory {
    pub wanted: usize,
    /// Connections that completed a request and were still open when RSS was read.
    pub alive: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
}

/// CPU time (user + system) used so far by every process in process group `pgid` (the
/// harness starts each server as its own group), in microseconds.
pub fn group_cpu_us(pgid: u32) -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let tick = *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    });
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after "pid (comm) ": state ppid pgrp ... utime(14th) stime(15th).
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 && f[2].parse::<u32>().ok() == Some(pgid) {
            ticks += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        }
    }
    ticks * 1_000_000 / tick.max(1)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for pid {pid}"))
}

/// Opens `n` connections to `addr` (at most `batch` connecting at once), sends one GET `path`
/// on each and keeps them open and idle; then reads the server's RSS, and closes them all.
pub fn hold_idle(
    addr: SocketAddr,
    path: &str,
    pid: u32,
    n: usize,
    batch: usize,
    settle: Duration,
) -> Result<IdleMemory, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let req = request(path, false).into_bytes();
    let rss_before_kib = rss_kib(pid)?;
    rt.block_on(async move {
        let mut held: Vec<TcpStream> = Vec::with_capacity(n);
        let started = Instant::now();
        while held.len() < n && started.elapsed() < Duration::from_secs(60) {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..batch.min(n - held.len()) {
                let req = req.clone();
                set.spawn(async move {
                    let mut stream = TcpStream::connect(addr).await?;
                    let mut buf = Vec::with_capacity(512);
                    match get_on(&mut stream, &req, &mut buf).await? {
                        200 => Ok::<_, io::Error>(stream),
                        status => Err(io::Error::other(format!("status {status}"))),
                    }
                });
            }
            let mut failures = 0;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok(Ok(stream)) => held.push(stream),
                    _ => failures += 1,
                }
            }
            if failures > 0 && held.len() < n {
                // Out of sockets or refused: stop instead of hammering.
                eprintln!(
                    "  idle: {failures} connections failed at {} open",
                    held.len()
                );
                break;
            }
        }
        tokio::time::sleep(settle).await;
        let mut alive = 0;
        let mut probe = [0u8; 1];
        for stream in &held {
            // Idle and open: nothing to read yet. Closed: EOF (Ok(0)).
            if let Err(e) = stream.try_read(&mut probe) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    alive += 1;
                }
            }
        }
        let rss_after_kib = rss_kib(pid)?;
        drop(held);
        Ok(IdleMemory {
            wanted: n,
            alive,
            rss_before_kib,
            rss_after_kib,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn content_length_response() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(r).unwrap(), Some((200, r.len())));
        assert_eq!(parse_response(&r[..r.len() - 1]).unwrap(), None);
    }

    #[test]
    fn chunked_response() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), Some((200, r.len())));
        assert_eq!(parse_response(&r[..r.len() - 2]).unwrap(), None);
    }

    #[test]
    fn no_body() {
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), Some((404, r.len())));
    }
}

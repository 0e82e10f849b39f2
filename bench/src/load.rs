//! Driving load generators: wrk (HTTP/1.1 keep-alive) and h2load (HTTP/2 prior knowledge).
//! Every run is bounded: the tool stops itself after its duration, and the harness kills it if
//! it overruns by more than a grace period.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one load run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors, timeouts and non-2xx/3xx responses.
    pub errors: u64,
    /// Server CPU time (user + system, all its processes) per completed request, in µs. On a
    /// machine shared with the load generator this is steadier than requests/s.
    pub cpu_us_per_req: Option<f64>,
}

/// One wrk run.
#[derive(Debug, Clone)]
pub struct Wrk {
    pub url: String,
    pub conns: usize,
    pub threads: usize,
    pub secs: u64,
    /// `Some(n)`: POST a body of n bytes instead of a GET.
    pub post_body: Option<usize>,
    pub timeout_secs: u64,
}

impl Wrk {
    fn script(&self, scratch: &Path) -> Result<PathBuf, String> {
        let mut lua = String::new();
        if let Some(n) = self.post_body {
            lua.push_str(&format!(
                "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", {n})\n\
                 wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
            ));
        }
        // Machine-readable summary instead of parsing wrk's human output.
        lua.push_str(
            "done = function(summary, latency, requests)\n\
             local e = summary.errors\n\
             io.write(string.format(\"AMPHI_BENCH %d %d %d %d %d\\n\", summary.requests, \
             summary.duration, latency:percentile(50), latency:percentile(99), \
             e.connect + e.read + e.write + e.timeout + e.status))\n\
             end\n",
        );
        let path = scratch.join(format!(
            "wrk-{}.lua",
            self.post_body
                .map_or("get".to_owned(), |n| format!("post{n}"))
        ));
        fs::write(&path, lua).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Starts wrk in the background; finish it with [`Running::finish`].
    pub fn spawn(&self, scratch: &Path) -> Result<Running, String> {
        let script = self.script(scratch)?;
        let out = scratch.join(format!("wrk-{}.out", std::process::id()));
        let out_file = fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let child = Command::new("wrk")
            .arg(format!("-t{}", self.threads.min(self.conns).max(1)))
            .arg(format!("-c{}", self.conns))
            .arg(format!("-d{}s", self.secs))
            .arg(format!("--timeout={}s", self.timeout_secs))
            .arg("-s")
            .arg(&script)
            .arg(&self.url)
            .stdin(Stdio::null())
            .stdout(out_file)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn wrk: {e}"))?;
        Ok(Running {
            child,
            out,
            deadline: Instant::now() + Duration::from_secs(self.secs + self.timeout_secs + 10),
        })
    }

    /// Runs wrk to completion.
    pub fn run(&self, scratch: &Path) -> Result<LoadResult, String> {
        self.spawn(scratch)?.finish()
    }
}

/// A wrk process running in the background.
#[derive(Debug)]
pub struct Running {
    child: Child,
    out: PathBuf,
    deadline: Instant,
}

impl Running {
    /// Waits for wrk (killing it past its deadline) and parses its summary.
    pub fn finish(mut self) -> Result<LoadResult, String> {
        wait_bounded(&mut self.child, self.deadline)?;
        let text = fs::read_to_string(&self.out).map_err(|e| format!("read wrk output: {e}"))?;
        let _ = fs::remove_file(&self.out);
        parse_summary(&text).ok_or_else(|| format!("could not parse wrk output:\n{text}"))
    }
}

/// Waits for a load generator, killing it past `deadline`.
pub fn wait_bounded(child: &mut Child, deadline: Instant) -> Result<(), String> {
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("load generator overran its deadline and was killed".to_owned());
            }
            Err(e) => return Err(format!("wait: {e}")),
        }
    }
}

/// The `AMPHI_BENCH requests duration_us p50_us p99_us errors` line that the wrk script and
/// the websocket client print.
pub fn parse_summary(text: &str) -> Option<LoadResult> {
    let line = text.lines().find(|l| l.starts_with("AMPHI_BENCH "))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    let [requests, duration_us, p50, p99, errors] = nums[..] else {
        return None;
    };
    Some(LoadResult {
        requests: requests as u64,
        rps: if duration_us > 0.0 {
            requests / (duration_us / 1e6)
        } else {
            0.0
        },
        p50_us: p50,
        p99_us: p99,
        errors: errors as u64,
        cpu_us_per_req: None,
    })
}

/// One h2load run: `conns` connections with `streams` concurrent streams each, for `secs`.
pub fn h2load(
    url: &str,
    conns: usize,
    streams: usize,
    threads: usize,
    secs: u64,
    scratch: &Path,
) -> Result<LoadResult, String> {
    h2load_with(url, conns, streams, threads, secs, scratch, &[])
}

/// [`h2load`] with extra flags (`--h1`: HTTP/1.1, over TLS by ALPN `http/1.1`).
pub fn h2load_with(
    url: &str,
    conns: usize,
    streams: usize,
    threads: usize,
    secs: u64,
    scratch: &Path,
    extra: &[&str],
) -> Result<LoadResult, String> {
    let log = scratch.join(format!("h2load-{}.log", std::process::id()));
    let out = scratch.join(format!("h2load-{}.out", std::process::id()));
    let out_file = fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut child = Command::new("h2load")
        .arg(format!("-c{conns}"))
        .arg(format!("-m{streams}"))
        .arg(format!("-t{}", threads.min(conns).max(1)))
        .arg(format!("-D{secs}"))
        .arg(format!("--log-file={}", log.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn h2load: {e}"))?;
    wait_bounded(&mut child, Instant::now() + Duration::from_secs(secs + 20))?;
    let text = fs::read_to_string(&out).map_err(|e| format!("read h2load output: {e}"))?;
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&out);
    let _ = fs::remove_file(&log);
    parse_h2load(&text, &log_text).ok_or_else(|| format!("could not parse h2load output:\n{text}"))
}

fn parse_h2load(text: &str, log: &str) -> Option<LoadResult> {
    // "finished in 5.00s, 102930.40 req/s, 3.04MB/s"
    let finished = text.lines().find(|l| l.starts_with("finished in"))?;
    let rps: f64 = finished
        .split(", ")
        .find_map(|part| part.strip_suffix(" req/s"))?
        .trim()
        .parse()
        .ok()?;
    // "requests: 514652 total, 514652 started, 514652 done, 514650 succeeded, 2 failed, ..."
    let requests_line = text.lines().find(|l| l.starts_with("requests:"))?;
    let field = |name: &str| -> Option<u64> {
        requests_line
            .trim_start_matches("requests:")
            .split(',')
            .find_map(|part| part.trim().strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
    };
    let done = field(" done")?;
    let succeeded = field(" succeeded")?;
    // The log file: "<start us>\t<status>\t<duration us>" per request.
    let mut durations: Vec<f64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    durations.sort_by(f64::total_cmp);
    Some(LoadResult {
        requests: done,
        rps,
        p50_us: percentile(&durations, 50.0),
        p99_us: percentile(&durations, 99.0),
        errors: done.saturating_sub(succeeded),
        cpu_us_per_req: None,
    })
}

/// Nearest-rank percentile of sorted samples; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Installs wrk and h2load through apt when either is missing.
pub fn ensure_tools() -> Result<(), String> {
    if have("wrk") && have("h2load") {
        return Ok(());
    }
    eprintln!("wrk or h2load missing: installing wrk and nghttp2-client through apt-get");
    let sudo = !is_root();
    let apt = |args: &[&str]| -> Result<(), String> {
        let mut cmd = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            cmd.arg("apt-get");
        }
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("apt-get {args:?} failed: {status}"))
        }
    };
    apt(&["update"])?;
    apt(&["install", "-y", "wrk", "nghttp2-client"])?;
    if have("wrk") && have("h2load") {
        Ok(())
    } else {
        Err("wrk/h2load still missing after apt-get install".to_owned())
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary_line() {
        let r = parse_summary("Running 1s test\nAMPHI_BENCH 1000 2000000 510 1200 3\n").unwrap();
        assert_eq!(r.requests, 1000);
        assert!((r.rps - 500.0).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p99_us, r.errors), (510.0, 1200.0, 3));
    }

    #[test]
    fn parses_h2load_summary_and_log() {
        let out = "finished in 5.00s, 1234.50 req/s, 3.04MB/s\n\
                   requests: 100 total, 100 started, 98 done, 97 succeeded, 1 failed, 0 errored, 0 timeout\n";
        let log = "1\t200\t100\n2\t200\t300\n3\t200\t200\n";
        let r = parse_h2load(out, log).unwrap();
        assert_eq!((r.requests, r.errors), (98, 1));
        assert!((r.rps - 1234.5).abs() < 1e-9);
        assert_eq!((r.p50_us, r.p99_us), (200.0, 300.0));
    }

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}

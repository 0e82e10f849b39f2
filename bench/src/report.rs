//! The markdown report: machine, settings, one table per case, isolation, memory, and the
//! issue's targets with met/missed.

use std::fmt::Write as _;
use std::process::Command;

use crate::load::LoadResult;
use crate::runner::{self, Case, Results};

/// 12345.6 -> "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Microseconds, human-sized.
pub fn dur(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The machine the run happened on.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let first_line = |cmd: &str, arg: &str| -> String {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let rev = Command::new("git")
        .arg("-C")
        .arg(crate::runner::repo_root())
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "- CPU: {cores} cores (nproc), {model}\n- memory: {:.1} GiB\n- kernel: Linux {}\n\
         - load generators: {}; {}\n- compiler: {}\n- repository when the run ended: {rev}\n\
         - load average when the report was written: {}\n",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        first_line("wrk", "-v"),
        first_line("h2load", "--version"),
        first_line("rustc", "-V"),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    NotRun,
}

impl Verdict {
    fn cell(self) -> &'static str {
        match self {
            Verdict::Met => "**met**",
            Verdict::Missed => "**missed**",
            Verdict::NotRun => "not run",
        }
    }
}

/// "; per round 0.91, 0.85, 0.75" when the run had more than one round, else nothing.
fn per_round(ratios: &[f64]) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let list: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
    format!("; per round {}", list.join(", "))
}

/// The targets, judged on this run (on each cell's median round; the per-round ratios
/// are given beside it).
pub fn targets(r: &Results) -> Vec<(String, String, Verdict)> {
    let rps = |case: Case, t: &str| r.cell(case, t).and_then(Result::ok).map(|x| x.rps);
    let mut out = Vec::new();

    let (hyper, a_async) = (
        rps(Case::H1Hello, "hyper"),
        rps(Case::H1Hello, "amphi-async"),
    );
    out.push(match (hyper, a_async) {
        (Some(h), Some(a)) => (
            "amphi async hello ≥ 0.95 × raw hyper (HTTP/1.1)".to_owned(),
            format!(
                "{:.2} × ({} vs {} req/s){}",
                a / h,
                thousands(a),
                thousands(h),
                per_round(&r.round_ratios(Case::H1Hello, "amphi-async", "hyper"))
            ),
            if a >= 0.95 * h {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        ),
        _ => (
            "amphi async hello ≥ 0.95 × raw hyper".to_owned(),
            "-".to_owned(),
            Verdict::NotRun,
        ),
    });
    let (h2h, h2a) = (
        rps(Case::H2Hello, "hyper"),
        rps(Case::H2Hello, "amphi-async"),
    );
    if let (Some(h), Some(a)) = (h2h, h2a) {
        out.push((
            "amphi async hello ≥ 0.95 × raw hyper (HTTP/2, same target)".to_owned(),
            format!(
                "{:.2} ×{}",
                a / h,
                per_round(&r.round_ratios(Case::H2Hello, "amphi-async", "hyper"))
            ),
            if a >= 0.95 * h {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        ));
    }

    let a_sync = rps(Case::H1Hello, "amphi-sync");
    for (peer, factor, label) in [
        ("hyper-blocking", 1.0, "≥ 1.0 × raw hyper + spawn_blocking"),
        ("actix", 1.0, "ahead of actix-web web::block"),
        ("axum-blocking", 1.0, "ahead of axum + spawn_blocking"),
        ("astra", 1.0, "ahead of astra"),
        ("hyper", 0.85, "stretch: ≥ 0.85 × raw hyper"),
    ] {
        let peer_rps = rps(Case::H1Hello, peer);
        out.push(match (a_sync, peer_rps) {
            (Some(a), Some(p)) => (
                format!("amphi sync hello {label} (HTTP/1.1)"),
                format!(
                    "{:.2} × ({} vs {} req/s){}",
                    a / p,
                    thousands(a),
                    thousands(p),
                    per_round(&r.round_ratios(Case::H1Hello, "amphi-sync", peer))
                ),
                if a >= factor * p {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            ),
            _ => (
                format!("amphi sync hello {label}"),
                "-".to_owned(),
                Verdict::NotRun,
            ),
        });
    }

    out.push(match rps(Case::Sleep, "amphi-sync") {
        Some(a) => (
            format!(
                "10 ms blocking sleep ≥ 0.9 × ideal ({} req/s)",
                thousands(runner::SLEEP_IDEAL_RPS)
            ),
            format!(
                "{:.2} × ({} req/s)",
                a / runner::SLEEP_IDEAL_RPS,
                thousands(a)
            ),
            if a >= 0.9 * runner::SLEEP_IDEAL_RPS {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        ),
        None => (
            "10 ms blocking sleep ≥ 0.9 × ideal".to_owned(),
            "-".to_owned(),
            Verdict::NotRun,
        ),
    });

    out.push(match &r.isolation {
        Some(Ok(iso)) => {
            let ratio = iso.loaded.p99_us / iso.unloaded.p99_us.max(1.0);
            (
                "isolation: /async/hello p99 with the blocking pool saturated ≤ 2 × unloaded"
                    .to_owned(),
                format!(
                    "{ratio:.2} × ({} vs {})",
                    dur(iso.loaded.p99_us),
                    dur(iso.unloaded.p99_us)
                ),
                if ratio <= 2.0 && iso.loaded.errors == 0 {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            )
        }
        _ => (
            "isolation p99 ≤ 2 × unloaded".to_owned(),
            "-".to_owned(),
            Verdict::NotRun,
        ),
    });

    let mem = |name: &str| {
        r.memory
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, m)| m.as_ref().ok().copied())
    };
    out.push(match (mem("amphi-async"), mem("hyper")) {
        (Some(a), Some(h)) => {
            let ratio = a.rss_after_kib as f64 / h.rss_after_kib.max(1) as f64;
            let all_open = a.alive == a.wanted && h.alive == h.wanted;
            (
                format!(
                    "memory with {} idle connections ≤ 1.2 × raw hyper",
                    thousands(a.wanted as f64)
                ),
                format!(
                    "{ratio:.2} × ({} vs {}; {} and {} connections open)",
                    mib(a.rss_after_kib),
                    mib(h.rss_after_kib),
                    a.alive,
                    h.alive
                ),
                if ratio <= 1.2 && all_open {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            )
        }
        _ => (
            "memory ≤ 1.2 × raw hyper".to_owned(),
            "-".to_owned(),
            Verdict::NotRun,
        ),
    });

    for (peer, label) in [
        ("axum", "axum `extract::ws`"),
        (
            "axum-ws-tuned",
            "axum `extract::ws` with amphi's codec buffers",
        ),
    ] {
        let echo = (rps(Case::WsEcho, "amphi-async"), rps(Case::WsEcho, peer));
        out.push(match echo {
            (Some(a), Some(x)) => (
                format!("amphi async websocket echo ≥ 0.9 × {label}"),
                format!(
                    "{:.2} × ({} vs {} round trips/s){}",
                    a / x,
                    thousands(a),
                    thousands(x),
                    per_round(&r.round_ratios(Case::WsEcho, "amphi-async", peer))
                ),
                if a >= 0.9 * x {
                    Verdict::Met
                } else {
                    Verdict::Missed
                },
            ),
            _ => (
                format!("amphi async websocket echo ≥ 0.9 × {label}"),
                "-".to_owned(),
                Verdict::NotRun,
            ),
        });
        out.push(match (ws_mem(r, "amphi-async"), ws_mem(r, peer)) {
            (Some(a), Some(x)) => {
                let ratio = a.bytes_per_socket() / x.bytes_per_socket().max(1.0);
                let all_open = a.alive == a.wanted && x.alive == x.wanted;
                (
                    format!(
                        "{} idle websockets (async) cost ≤ 1.2 × {label} (RSS growth per socket)",
                        thousands(a.wanted as f64)
                    ),
                    format!(
                        "{ratio:.2} × ({:.1} vs {:.1} KiB per socket; RSS {} vs {}; {} and {} open)",
                        a.bytes_per_socket() / 1024.0,
                        x.bytes_per_socket() / 1024.0,
                        mib(a.rss_after_kib),
                        mib(x.rss_after_kib),
                        a.alive,
                        x.alive
                    ),
                    if ratio <= 1.2 && all_open {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                )
            }
            _ => (
                format!("idle websockets ≤ 1.2 × {label}'s memory"),
                "-".to_owned(),
                Verdict::NotRun,
            ),
        });
    }
    out
}

fn ws_mem(r: &Results, name: &str) -> Option<crate::ws::WsIdle> {
    r.ws_memory
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, m)| m.as_ref().ok().copied())
}

pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Machine\n\n{}", machine());
    let _ = writeln!(
        s,
        "Settings: {}.\n\namphi binary: {}.\n",
        r.options, r.amphi
    );
    let _ = writeln!(s, "| server | what it is |\n|---|---|");
    for (name, what, _) in &r.targets {
        let _ = writeln!(s, "| {name} | {what} |");
    }
    for skipped in &r.skipped {
        let _ = writeln!(s, "\nLeft out: {skipped}");
    }

    for case in Case::ALL {
        if !r.cases.keys().any(|(c, _)| *c == case) {
            continue;
        }
        let _ = writeln!(s, "\n### {}\n", case.title());
        let (unit, per, floor_label) = if case.is_ws() {
            ("round trips/s", "round trip", "axum")
        } else {
            ("requests/s", "request", "raw hyper")
        };
        let _ = writeln!(s, "| server | {unit} | p50 | p99 | errors | × {floor_label} | server CPU per {per} |\n|---|---:|---:|---:|---:|---:|---:|");
        let floor = r
            .cell(case, case.floor())
            .and_then(Result::ok)
            .map(|x| x.rps);
        for (name, _, _) in &r.targets {
            match r.cell(case, name) {
                Some(Ok(LoadResult {
                    rps,
                    p50_us,
                    p99_us,
                    errors,
                    cpu_us_per_req,
                    ..
                })) => {
                    let ratio = floor.map_or("-".to_owned(), |f| format!("{:.2}", rps / f));
                    let cpu = cpu_us_per_req.map_or("-".to_owned(), |c| format!("{c:.1} µs"));
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {} | {} | {errors} | {ratio} | {cpu} |",
                        thousands(rps),
                        dur(p50_us),
                        dur(p99_us)
                    );
                }
                Some(Err(e)) => {
                    let e = e.lines().next().unwrap_or("").replace('|', "/");
                    let _ = writeln!(s, "| {name} | n/a ({e}) | | | | | |");
                }
                None => {}
            }
        }
    }

    if let Some(iso) = &r.isolation {
        let _ = writeln!(
            s,
            "\n### Isolation: amphi `/async/hello` while `/sync/sleep?ms={}` holds every blocking slot\n",
            runner::HOLD_MS
        );
        match iso {
            Ok(iso) => {
                let _ = writeln!(
                    s,
                    "A paced probe: {} keep-alive connections, one request each every {} ms. Loaded: \
                     {} connections loop on `/sync/sleep?ms={}` against {} blocking slots \
                     (the rest wait in the queue); they completed {} req/s with {} errors.\n",
                    runner::PROBE_CONNS,
                    runner::PROBE_INTERVAL.as_millis(),
                    runner::HOLDERS,
                    runner::HOLD_MS,
                    iso.blocking_slots,
                    thousands(iso.holders.rps),
                    iso.holders.errors
                );
                let _ = writeln!(s, "| /async/hello | p50 | p99 | max | samples | errors |\n|---|---:|---:|---:|---:|---:|");
                for (label, l) in [
                    ("unloaded", iso.unloaded),
                    ("blocking pool saturated", iso.loaded),
                ] {
                    let _ = writeln!(
                        s,
                        "| {label} | {} | {} | {} | {} | {} |",
                        dur(l.p50_us),
                        dur(l.p99_us),
                        dur(l.max_us),
                        l.samples,
                        l.errors
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(s, "failed: {e}");
            }
        }
    }

    if !r.memory.is_empty() {
        let n = r
            .memory
            .iter()
            .find_map(|(_, m)| m.as_ref().ok().map(|m| m.wanted))
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "\n### Resident memory holding {} idle keep-alive connections\n",
            thousands(n as f64)
        );
        let _ = writeln!(
            s,
            "| server | RSS before | RSS holding them | per connection | connections open | × raw hyper |\n|---|---:|---:|---:|---:|---:|"
        );
        let floor = r
            .memory
            .iter()
            .find(|(name, _)| name == "hyper")
            .and_then(|(_, m)| m.as_ref().ok().map(|m| m.rss_after_kib));
        for (name, m) in &r.memory {
            match m {
                Ok(m) => {
                    let per = (m.rss_after_kib.saturating_sub(m.rss_before_kib)) as f64 * 1024.0
                        / m.alive.max(1) as f64;
                    let ratio = floor.map_or("-".to_owned(), |f| {
                        format!("{:.2}", m.rss_after_kib as f64 / f as f64)
                    });
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {} | {:.1} KiB | {} | {ratio} |",
                        mib(m.rss_before_kib),
                        mib(m.rss_after_kib),
                        per / 1024.0,
                        m.alive
                    );
                }
                Err(e) => {
                    let _ = writeln!(s, "| {name} | failed: {} | | | | |", e.replace('|', "/"));
                }
            }
        }
    }

    if !r.ws_memory.is_empty() {
        let n = r
            .ws_memory
            .iter()
            .find_map(|(_, m)| m.as_ref().ok().map(|m| m.wanted))
            .unwrap_or(0);
        let _ = writeln!(
            s,
            "\n### Resident memory holding {} idle websockets (a handshake and one echo each)\n",
            thousands(n as f64)
        );
        let _ = writeln!(
            s,
            "| server | RSS before | RSS holding them | per socket | sockets open | threads before -> holding | per socket × axum | × axum-ws-tuned |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let floor = ws_mem(r, "axum").map(|m| m.bytes_per_socket());
        let tuned = ws_mem(r, "axum-ws-tuned").map(|m| m.bytes_per_socket());
        for (name, m) in &r.ws_memory {
            match m {
                Ok(m) => {
                    let ratio = |f: Option<f64>| {
                        f.map_or("-".to_owned(), |f| {
                            format!("{:.2}", m.bytes_per_socket() / f.max(1.0))
                        })
                    };
                    let _ = writeln!(
                        s,
                        "| {name} | {} | {} | {:.1} KiB | {} | {} -> {} | {} | {} |",
                        mib(m.rss_before_kib),
                        mib(m.rss_after_kib),
                        m.bytes_per_socket() / 1024.0,
                        m.alive,
                        m.threads_before,
                        m.threads_after,
                        ratio(floor),
                        ratio(tuned)
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "| {name} | failed: {} | | | | | | |",
                        e.replace('|', "/")
                    );
                }
            }
        }
    }

    let _ = writeln!(
        s,
        "\n### Targets\n\n| target | this run | verdict |\n|---|---|---|"
    );
    for (target, measured, verdict) in targets(r) {
        let _ = writeln!(s, "| {target} | {measured} | {} |", verdict.cell());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(dur(512.0), "512 µs");
        assert_eq!(dur(1530.0), "1.53 ms");
        assert_eq!(per_round(&[0.9]), "");
        assert_eq!(
            per_round(&[0.911, 0.85, 0.754]),
            "; per round 0.91, 0.85, 0.75"
        );
    }
}

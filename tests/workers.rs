//! Worker processes under a supervisor, end to end with the `mixed` binary: workers serve (their
//! pids differ), a killed or stopped worker is replaced, `--max-requests` recycles workers and
//! SIGHUP replaces them all under load with 0 failed requests, SIGTTIN/SIGTTOU add and remove
//! one, SIGTERM drains and exits 0, and a startup failure exits non-zero with its message.

mod support;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A running `mixed --workers ...`: its supervisor process, address and log.
struct Supervised {
    child: Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

async fn start(flags: &[&str]) -> Supervised {
    launch(flags, true).await
}

/// Starts the supervisor; its log is kept when `keep_log`, else its stderr is closed once it
/// listens (whoever read the logs is gone: every log line then fails to be written).
async fn launch(flags: &[&str], keep_log: bool) -> Supervised {
    launch_with_env(flags, keep_log, &[]).await
}

/// [`launch`], with these environment variables set for the supervisor.
async fn launch_with_env(flags: &[&str], keep_log: bool, env: &[(&str, &str)]) -> Supervised {
    let mut child = tokio::process::Command::new(mixed_binary())
        .args(["--bind", "127.0.0.1:0", "--grace-ms", "5000"])
        .args(flags)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own, as a service manager or a terminal gives it: signals
        // can be sent to the supervisor and its workers together.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("starting the mixed example");
    let stderr = if keep_log { None } else { child.stderr.take() };
    let log = collect(&mut child);
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("the supervisor to listen", stdout.next_line())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no first line; log:\n{}", log.lock().unwrap().join("\n")));
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    drop(stderr);
    Supervised { child, addr, log }
}

/// Keeps the child's stderr (the supervisor's and the workers' logs), if it is still there.
fn collect(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let Some(stderr) = child.stderr.take() else {
        return log;
    };
    let kept = log.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            kept.lock().unwrap().push(l);
        }
    });
    log
}

impl Supervised {
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("the supervisor runs").to_string();
        signal(&pid, sig);
    }

    fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// The pid of the process that serves one request, on a connection of its own.
    async fn pid(&self) -> u32 {
        let r = get(self.addr, Proto::H1, "/sync/info").await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()["pid"].as_u64().expect("a pid") as u32
    }

    /// The runtime threads of the process that serves one request.
    async fn runtime_threads(&self) -> usize {
        let r = get(self.addr, Proto::H1, "/sync/info").await;
        r.json()["runtime_threads"]
            .as_u64()
            .expect("a thread count") as usize
    }

    /// The pids seen until `n` different processes have answered, each request on a
    /// connection of its own: workers that are still starting (the supervisor listens once
    /// the first is ready), or that a loaded machine schedules late, get their turn.
    async fn workers(&self, n: usize) -> BTreeSet<u32> {
        within(&format!("{n} workers to answer"), async {
            let mut seen = BTreeSet::new();
            while seen.len() < n {
                seen.insert(self.pid().await);
            }
            seen
        })
        .await
    }

    /// The pids seen over `n` requests.
    async fn pids(&self, n: usize) -> BTreeSet<u32> {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            seen.insert(self.pid().await);
        }
        seen
    }
}

/// `kill -SIG -- PID` (a negative `pid`: its whole process group).
fn signal(pid: &str, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), "--", pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Load: `clients` tasks sending requests of both kinds, each on a fresh connection, until
/// `stop`; every answer must be a 200. Returns the number of requests and the pids seen.
fn load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, BTreeSet<u32>)> {
    tokio::spawn(async move {
        let done = Arc::new(AtomicUsize::new(0));
        let pids = Arc::new(Mutex::new(BTreeSet::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..clients {
            let (stop, done, pids) = (stop.clone(), done.clone(), pids.clone());
            tasks.spawn(async move {
                let path = if i % 2 == 0 {
                    "/sync/info"
                } else {
                    "/async/info"
                };
                while !stop.load(Ordering::SeqCst) {
                    let r = get(addr, Proto::H1, path).await;
                    assert_eq!(r.status, StatusCode::OK, "a failed request: {}", r.text());
                    pids.lock()
                        .unwrap()
                        .insert(r.json()["pid"].as_u64().unwrap() as u32);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("a load task failed");
        }
        let pids = pids.lock().unwrap().clone();
        (done.load(Ordering::SeqCst), pids)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_with_pids_of_their_own_and_sigterm_drains_and_exits_0() {
    let mut s = start(&["--workers", "2"]).await;
    let supervisor = s.child.id().unwrap();
    let pids = s.workers(2).await;
    assert_eq!(pids.len(), 2, "two workers answered: {pids:?}");
    assert!(!pids.contains(&supervisor), "the supervisor serves nothing");
    // The access log says which worker served.
    eventually("access lines name their worker", || s.log_has("worker{id=")).await;
    let control_dirs = || {
        let prefix = format!("amphi-{supervisor}-");
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .count()
    };
    assert_eq!(control_dirs(), 1, "the supervisor's control directory");
    // A request still running when SIGTERM comes completes; then everything exits 0.
    let addr = s.addr;
    let slow = tokio::spawn(async move { get(addr, Proto::H1, "/sync/sleep?ms=1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.signal("TERM");
    let r = within("the in-flight request", slow).await.unwrap();
    assert_eq!(r.text(), "slept 1000 ms");
    let status = within("the supervisor to exit", s.child.wait())
        .await
        .unwrap();
    assert!(status.success(), "exited with {status}");
    assert_eq!(
        control_dirs(),
        0,
        "the control directory is removed at exit"
    );
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} is gone"
        );
    }
}

/// Whether process `pid` has ended (gone, or a zombie its parent has not reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Serves requests one after another (each must succeed) until a worker not in `old` answers.
async fn until_a_new_worker_answers(s: &Supervised, old: &BTreeSet<u32>) -> u32 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let pid = s.pid().await;
        if !old.contains(&pid) {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new worker within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_server_keeps_answering() {
    let s = start(&["--workers", "2"]).await;
    let before = s.workers(2).await;
    assert_eq!(before.len(), 2);
    let victim = *before.iter().next().unwrap();
    signal(&victim.to_string(), "KILL");
    eventually("the killed worker ends", || ended(victim)).await;
    // The other worker answers meanwhile (every request succeeds); a replacement joins it.
    let new = until_a_new_worker_answers(&s, &before).await;
    assert_ne!(new, victim);
    eventually("the supervisor says so", || {
        s.log_has("worker died; replacing it")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_beating_is_killed_and_replaced() {
    let s = start(&["--workers", "2", "--heartbeat-timeout-ms", "2000"]).await;
    let before = s.workers(2).await;
    let stuck = *before.iter().next().unwrap();
    // A stopped process keeps its sockets but runs nothing: no beats, no accepts.
    signal(&stuck.to_string(), "STOP");
    eventually("the stuck worker is killed", || ended(stuck)).await;
    assert!(s.log_has("worker stopped beating; killing it"));
    until_a_new_worker_answers(&s, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_workers_under_load_with_no_failed_request() {
    let s = start(&[
        "--workers",
        "2",
        "--max-requests",
        "100",
        "--max-requests-jitter",
        "20",
    ])
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(s.addr, 4, stop.clone());
    // Each worker recycles after 100-120 requests: wait for a few recycles.
    eventually("workers are recycled", || {
        s.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("served its request budget"))
            .count()
            >= 3
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (requests, pids) = within("the load", running).await.unwrap();
    assert!(requests >= 300, "{requests} requests");
    assert!(pids.len() >= 4, "recycled workers answered too: {pids:?}");
    assert!(s.log_has("draining worker"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_worker_under_load_with_no_failed_request() {
    let s = start(&["--workers", "2"]).await;
    let before = s.workers(2).await;
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(s.addr, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.signal("HUP");
    // Both old workers drain and end; the load never sees a failure.
    for pid in &before {
        let pid = *pid;
        eventually("an old worker ends", || ended(pid)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (requests, _) = within("the load", running).await.unwrap();
    assert!(requests > 0);
    let after = s.workers(2).await;
    assert_eq!(after.len(), 2, "two workers again: {after:?}");
    assert!(
        after.is_disjoint(&before),
        "all new: {before:?} then {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigttin_adds_a_worker_and_sigttou_removes_one() {
    let s = start(&["--workers", "1"]).await;
    let one = s.pids(5).await;
    assert_eq!(one.len(), 1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        s.runtime_threads().await,
        cores,
        "one worker takes every core"
    );
    s.signal("TTIN");
    let added = until_a_new_worker_answers(&s, &one).await;
    eventually("two workers", || s.log_has("SIGTTIN: one more worker")).await;
    // The worker started for the new count takes its share of the cores.
    let threads = within("the new worker to answer again", async {
        loop {
            let r = get(s.addr, Proto::H1, "/sync/info").await;
            if r.json()["pid"].as_u64() == Some(u64::from(added)) {
                break r.json()["runtime_threads"].as_u64().unwrap() as usize;
            }
        }
    })
    .await;
    assert_eq!(threads, (cores / 2).max(1));
    s.signal("TTOU");
    let first = *one.iter().next().unwrap();
    // The oldest goes.
    eventually("a worker is removed", || ended(first)).await;
    let left = s.pids(10).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(!left.contains(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_failure_exits_non_zero_with_its_message() {
    let mut child = tokio::process::Command::new(mixed_binary())
        .args(["--bind", "127.0.0.1:0", "--workers", "2", "--fail-startup"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the mixed example");
    let log = collect(&mut child);
    let status = within("the supervisor to give up", child.wait())
        .await
        .unwrap();
    assert!(!status.success(), "exited with {status}");
    // Its error names the failure, once, and no worker is respawned in a loop.
    let wait_for_log = || log.lock().unwrap().join("\n");
    eventually("the error line", || {
        wait_for_log().contains("did not start")
    })
    .await;
    let text = wait_for_log();
    // The supervisor's own error line, after the worker's.
    let err = text
        .lines()
        .find(|l| l.starts_with("mixed: ") && l.contains("the first worker did not start"))
        .unwrap_or_else(|| panic!("no supervisor error line: {text}"))
        .to_owned();
    assert!(
        err.contains("the async app was asked to fail its startup"),
        "{err}"
    );
    assert!(text.matches("worker started").count() <= 2, "{text}");
}

/// The `worker="N"` labels on one scrape's amphi samples (every sample has one).
fn worker_labels(scrape: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in scrape.lines().filter(|l| l.starts_with("amphi_")) {
        let at = line
            .find("worker=\"")
            .unwrap_or_else(|| panic!("a sample without a worker label: {line}"));
        let rest = &line[at + 8..];
        seen.insert(rest[..rest.find('"').unwrap()].to_owned());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_labels_its_metrics_with_its_id() {
    let s = start(&["--workers", "2"]).await;
    let mut workers = BTreeSet::new();
    for _ in 0..200 {
        let r = get(s.addr, Proto::H1, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        let text = r.text();
        assert!(text.contains("amphi_requests_total"), "{text}");
        // One scrape is one worker's counts.
        let labels = worker_labels(text);
        assert_eq!(labels.len(), 1, "{labels:?}");
        let id = labels.into_iter().next().unwrap();
        assert!(id.parse::<u64>().is_ok(), "worker label {id:?}");
        workers.insert(id);
        if workers.len() == 2 {
            break;
        }
    }
    assert_eq!(
        workers.len(),
        2,
        "scrapes reached one worker only: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_serve_with_stderr_gone_and_exit_when_their_supervisor_is_killed() {
    let mut s = launch(&["--workers", "2"], false).await;
    // Every request answers 200 although its access line cannot be written.
    let pids = s.workers(2).await;
    assert_eq!(pids.len(), 2, "{pids:?}");
    // SIGKILL: the supervisor tells nobody anything.
    s.signal("KILL");
    let _ = within("the supervisor to die", s.child.wait()).await;
    for pid in pids {
        eventually("an orphaned worker to exit", || ended(pid)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_to_the_whole_process_group_kills_no_worker() {
    let s = start(&["--workers", "2"]).await;
    let before = s.workers(2).await;
    assert_eq!(before.len(), 2, "{before:?}");
    // What a terminal hangup or `systemctl kill -s HUP` does: every process of the group.
    signal(&format!("-{}", s.child.id().unwrap()), "HUP");
    // The supervisor reloads; the workers take no notice of the signal themselves.
    until_a_new_worker_answers(&s, &before).await;
    eventually("the old workers drained", || {
        before.iter().all(|&p| ended(p))
    })
    .await;
    assert!(
        !s.log_has("worker died"),
        "a worker died of the SIGHUP:\n{}",
        s.log.lock().unwrap().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_sweeps_the_control_directories_killed_supervisors_left() {
    let tmp = std::env::temp_dir().join(format!("amphi-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).unwrap();
    // A supervisor SIGKILLed leaves its directory and socket file behind.
    // A pid no process can have: past the kernel's largest.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dead_pid = pid_max + 1;
    let stale = tmp.join(format!("amphi-{dead_pid}-0"));
    std::fs::create_dir(&stale).unwrap();
    drop(std::os::unix::net::UnixListener::bind(stale.join("control.sock")).unwrap());
    // Left alone: a live process's; one whose socket still answers though its pid is not
    // here (a supervisor in another PID namespace sharing TMPDIR); one holding something
    // else; and a name not of this form.
    let live = tmp.join(format!("amphi-{}-0", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    let elsewhere = tmp.join(format!("amphi-{dead_pid}-2"));
    std::fs::create_dir(&elsewhere).unwrap();
    let _listening =
        std::os::unix::net::UnixListener::bind(elsewhere.join("control.sock")).unwrap();
    let other = tmp.join(format!("amphi-{dead_pid}-1"));
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let unrelated = tmp.join("amphi-cache");
    std::fs::create_dir(&unrelated).unwrap();

    let s = launch_with_env(
        &["--workers", "1"],
        true,
        &[("TMPDIR", tmp.to_str().unwrap())],
    )
    .await;
    assert_eq!(s.pids(2).await.len(), 1);
    assert!(!stale.exists(), "the dead supervisor's directory is gone");
    assert!(live.exists() && other.join("notes.txt").exists() && unrelated.exists());
    assert!(elsewhere.join("control.sock").exists());
    // The supervisor's own directory is there while it runs, and gone after it.
    let own = |tmp: &std::path::Path| {
        std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name().to_string_lossy() == format!("amphi-{}-0", s.child.id().unwrap())
            })
            .count()
    };
    assert_eq!(own(&tmp), 1);
    let pid = s.child.id().unwrap();
    let mut s = s;
    s.signal("TERM");
    let status = within("the supervisor to exit", s.child.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!tmp.join(format!("amphi-{pid}-0")).exists());
    std::fs::remove_dir_all(&tmp).unwrap();
}

//! Worker processes under a supervisor: [`Server::workers`](crate::Server::workers).
//!
//! The supervisor is the process the user started. It binds the listening socket, starts N
//! workers by re-executing its own binary with the same arguments (no `fork` after threads
//! exist), and never accepts a connection itself. Each worker gets the listening socket as its
//! standard input (the inetd convention: one accept queue shared by every worker, so a worker
//! that drains or dies loses no queued connection, which one `SO_REUSEPORT` socket per worker
//! would) and talks to the supervisor over a unix socket in a private directory
//! (`$TMPDIR/amphi-PID-N`, removed when the supervisor ends; one left by a supervisor that was
//! killed outright is removed by the next supervisor to start): `hello`,
//! `ready` once its lifespan startup ran and it serves, `failed` when it cannot start, a
//! `beat` every second with the requests it served; the supervisor sends `drain`.
//!
//! The supervisor respawns a worker that dies (with a back-off while workers keep dying young),
//! recycles one (a new worker first, then the old one drained gracefully) when it served its
//! request budget (plus jitter), lived its lifetime, or grew past its memory cap, kills one
//! whose beats stop, and on `SIGHUP` replaces every worker one at a time (new code when the
//! binary was replaced). `SIGTTIN` and `SIGTTOU` add and remove a worker; `SIGTERM`/`SIGINT`
//! (through [`Serving::run_until`](crate::Serving::run_until)) drain them all.
//!
//! A worker takes no notice of `SIGHUP`, `SIGTTIN` and `SIGTTOU` itself (a signal sent to the
//! whole process group reaches the supervisor, which acts on it, and must not kill or stop
//! every worker at once); it drains when its supervisor is gone, however it went (the control
//! socket closes, or the worker finds itself re-parented), and exits at once if that happens
//! before it is ready. Its standard input, the listening socket, is close-on-exec, so the
//! processes an application starts do not hold the port. `SIGHUP` re-executes the path the
//! binary had when the supervisor started (`std::env::current_exe`, symlinks resolved): a
//! deploy that replaces that file is picked up, one that only switches a symlink to another
//! directory is not (restart the supervisor for that).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amphi_core::CancellationToken;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::conn::Counters;
use crate::serving::{Serving, ShutdownHandle};
use crate::{ServeError, Server};

/// The environment variable that makes a process a worker: its id.
const ENV_ID: &str = "AMPHI_WORKER_ID";
/// The supervisor's control socket, for a worker.
const ENV_CONTROL: &str = "AMPHI_WORKER_CONTROL";
/// How many workers the supervisor keeps when it starts a worker (`SIGTTIN` and `SIGTTOU`
/// change it), for [`Workers::threads_per_worker`].
const ENV_COUNT: &str = "AMPHI_WORKER_COUNT";

/// How a worker's beats are spaced.
const BEAT: Duration = Duration::from_secs(1);

/// The default of [`Workers::heartbeat_timeout`].
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`Workers::ready_timeout`].
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many worker processes serve, and when they are recycled: for
/// [`Server::workers`](crate::Server::workers).
///
/// Use workers when a crash or a leak must not take the service down: a C library that
/// aborts, a `panic = "abort"` build, a dependency that leaks. Threads are enough otherwise: one
/// process already serves both handler kinds on all cores, and a panic in a handler is caught.
///
/// # Examples
///
/// ```no_run
/// use amphi_server::{Router, Server, Workers};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), amphi_server::ServeError> {
/// let serving = Server::new(Router::new())
///     .workers(
///         Workers::new(4)
///             .max_requests(10_000, 1_000)
///             .max_lifetime(Duration::from_secs(24 * 3600))
///             .max_rss_bytes(512 * 1024 * 1024),
///     )
///     .bind("127.0.0.1:8000")
///     .await?;
/// serving.run_until(amphi_server::shutdown_signal()).await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Workers {
    count: usize,
    max_requests: Option<(u64, u64)>,
    max_lifetime: Option<Duration>,
    max_rss: Option<u64>,
    heartbeat_timeout: Duration,
    ready_timeout: Duration,
}

impl Workers {
    /// `count` worker processes.
    ///
    /// # Panics
    ///
    /// When `count` is 0.
    pub fn new(count: usize) -> Workers {
        assert!(count > 0, "Workers::new(0): at least one worker is needed");
        Workers {
            count,
            max_requests: None,
            max_lifetime: None,
            max_rss: None,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// How many workers the supervisor starts.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The runtime threads a worker's share of this machine's cores comes to: the available
    /// parallelism divided among the workers, at least 1. Workers that each start a thread
    /// per core (tokio's default) take turns on the cores instead of using them; a `main`
    /// that builds its runtime can size it with this when [`is_worker`] says it is a worker.
    /// In a worker, the count is the supervisor's when it started that worker, so workers
    /// started after a `SIGTTIN` or `SIGTTOU` take their share of the new count.
    pub fn threads_per_worker(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let count = std::env::var(ENV_COUNT)
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0 && is_worker())
            .unwrap_or(self.count);
        (cores / count).max(1)
    }

    /// Recycles a worker after it served `requests` requests plus a random `0..=jitter` more
    /// (gunicorn's `--max-requests` and `--max-requests-jitter`; the jitter keeps workers from
    /// recycling all at once). Default: never.
    #[must_use]
    pub fn max_requests(mut self, requests: u64, jitter: u64) -> Workers {
        self.max_requests = (requests > 0).then_some((requests, jitter));
        self
    }

    /// Recycles a worker after it lived this long. Default: never.
    #[must_use]
    pub fn max_lifetime(mut self, lifetime: Duration) -> Workers {
        self.max_lifetime = Some(lifetime);
        self
    }

    /// Recycles a worker whose resident memory passed `bytes` (read from `/proc`, Linux).
    /// Default: never.
    #[must_use]
    pub fn max_rss_bytes(mut self, bytes: u64) -> Workers {
        self.max_rss = Some(bytes);
        self
    }

    /// How long a worker may go without a beat (its runtime stuck, say) before it is killed
    /// and replaced. Default [`DEFAULT_HEARTBEAT_TIMEOUT`] (30 s, as gunicorn's `--timeout`).
    #[must_use]
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Workers {
        self.heartbeat_timeout = timeout.max(BEAT * 2);
        self
    }

    /// How long a new worker may take to be ready (its lifespan startup included) before it
    /// is killed. Default [`DEFAULT_READY_TIMEOUT`] (60 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Workers {
        self.ready_timeout = timeout;
        self
    }
}

/// Whether this process is a worker started by an amphi supervisor. A `main` that prints its
/// address can check it to print once.
pub fn is_worker() -> bool {
    std::env::var_os(ENV_ID).is_some()
}

/// This worker's id (1, 2, ... in the order the supervisor started them; a replacement gets a
/// new one), when this process is a worker.
#[cfg(feature = "metrics")]
pub(crate) fn worker_id() -> Option<u64> {
    std::env::var(ENV_ID).ok()?.parse().ok()
}

/// What a worker is told at start.
pub(crate) struct WorkerEnv {
    id: u64,
    control: PathBuf,
}

/// The worker settings of this process, when it is a worker.
pub(crate) fn worker_env() -> Option<WorkerEnv> {
    let id = std::env::var(ENV_ID).ok()?.parse().ok()?;
    let control = PathBuf::from(std::env::var_os(ENV_CONTROL)?);
    Some(WorkerEnv { id, control })
}

// ------------------------------------------------------------------------------------------
// The worker side.

/// Serves `server` as worker `env.id`: on the listening socket inherited as standard input,
/// reporting to the supervisor.
pub(crate) async fn serve_worker(server: Server, env: WorkerEnv) -> Result<Serving, ServeError> {
    // The supervisor's signals are for the supervisor: a SIGHUP to the whole process group
    // (a terminal hangup, `kill -HUP -PGID`, `systemctl kill`) or a stray SIGTTIN/SIGTTOU
    // must not kill or stop every worker at once. Registered once, these handlers replace
    // the default actions for the life of the process (TLS reload adds its own on SIGHUP).
    {
        use tokio::signal::unix::{signal, SignalKind};
        for kind in [
            SignalKind::hangup(),
            SignalKind::from_raw(libc::SIGTTIN),
            SignalKind::from_raw(libc::SIGTTOU),
        ] {
            if let Err(e) = signal(kind) {
                tracing::warn!(error = %e, "cannot ignore a supervisor signal in the worker");
            }
        }
    }
    let serving_handle: Arc<std::sync::OnceLock<ShutdownHandle>> = Arc::default();
    tokio::spawn(watch_parent(serving_handle.clone()));
    let control = UnixStream::connect(&env.control)
        .await
        .map_err(|e| ServeError::bind("connecting to the supervisor", e))?;
    let (read, mut write) = control.into_split();
    let hello = format!("hello {} {}\n", env.id, std::process::id());
    let _ = write.write_all(hello.as_bytes()).await;
    let listener = inherited_listener()
        .map_err(|e| ServeError::bind("taking the listening socket from standard input", e))?;
    let server = server.log_span(tracing::info_span!("worker", id = env.id));
    match server.serve_listener(listener).await {
        Err(e) => {
            // A startup failure is said as the supervisor's own, without the prefix twice.
            let mut message = if e.is_startup() {
                e.detail().to_owned()
            } else {
                e.to_string()
            };
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            let line = format!("failed {}\n", message.replace('\n', " "));
            let _ = write.write_all(line.as_bytes()).await;
            Err(e)
        }
        Ok(serving) => {
            let _ = write.write_all(b"ready\n").await;
            let handle = serving.shutdown_handle();
            let _ = serving_handle.set(handle.clone());
            let counters = serving.counters();
            tokio::spawn(report(read, write, handle, counters));
            Ok(serving)
        }
    }
}

/// The listening socket the supervisor passed as standard input. Standard input itself is
/// marked close-on-exec: a process the application starts must not inherit the listening
/// socket (it would hold the port after the server exits); such a process finds its standard
/// input closed unless it is given one.
fn inherited_listener() -> io::Result<TcpListener> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    socket2::SockRef::from(&io::stdin()).set_cloexec(true)?;
    let listener = std::net::TcpListener::from(fd);
    // Fails here, clearly, when standard input is not a listening socket.
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A worker's side of the control socket: a beat every second with the requests served;
/// `drain` (or the supervisor gone) starts the graceful shutdown.
async fn report(
    read: tokio::net::unix::OwnedReadHalf,
    mut write: OwnedWriteHalf,
    handle: ShutdownHandle,
    counters: Arc<Counters>,
) {
    let mut lines = BufReader::new(read).lines();
    let mut beat = tokio::time::interval(BEAT);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let line = format!("beat {}\n", counters.served.load(Ordering::Relaxed));
                if write.write_all(line.as_bytes()).await.is_err() {
                    // Shut down first: logging may fail too (stderr gone with the
                    // supervisor), and must not keep the worker serving.
                    handle.shutdown();
                    tracing::warn!("the supervisor is gone; draining");
                    return;
                }
            }
            line = lines.next_line() => match line {
                Ok(Some(l)) if l == "drain" => {
                    tracing::info!("told to drain by the supervisor");
                    handle.shutdown();
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    handle.shutdown();
                    tracing::warn!("the supervisor is gone; draining");
                    return;
                }
            }
        }
    }
}

/// Ends a worker whose supervisor is gone, whatever the control socket says: once it is
/// serving, it drains (`handle`); before (its lifespan startup still running), it exits. The
/// parent is checked every half second: a worker is re-parented when its supervisor dies, even
/// by SIGKILL.
async fn watch_parent(handle: Arc<std::sync::OnceLock<ShutdownHandle>>) {
    let parent = std::os::unix::process::parent_id();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() == parent {
            continue;
        }
        match handle.get() {
            Some(h) => {
                h.shutdown();
                tracing::warn!("the supervisor is gone; draining");
            }
            None => {
                tracing::warn!("the supervisor is gone before this worker was ready; exiting");
                std::process::exit(1);
            }
        }
        return;
    }
}

// ------------------------------------------------------------------------------------------
// The supervisor side.

/// Runs the supervisor for `server` on `addr`: binds, starts the workers, and returns once the
/// first one is ready (or fails to start).
pub(crate) async fn supervise(
    server: Server,
    addr: SocketAddr,
    workers: Workers,
) -> Result<Serving, ServeError> {
    let listener = crate::listener::listen_tcp(addr, server.reuses_port())
        .await
        .map_err(|e| ServeError::bind("binding the TCP listener", e))?;
    let local_addr = listener.local_addr().ok();
    let listener = listener
        .into_std()
        .map_err(|e| ServeError::bind("binding the TCP listener", e))?;
    let dir = control_dir().map_err(|e| ServeError::bind("making the control directory", e))?;
    let control_path = dir.0.join("control.sock");
    let control = UnixListener::bind(&control_path)
        .map_err(|e| ServeError::bind("binding the control socket", e))?;
    let exe = std::env::current_exe()
        .map_err(|e| ServeError::bind("finding the current executable", e))?;
    let (app, pool) = server.app()?;
    let grace = server.grace();
    let drain_delay = server.drain_delay_setting();
    let token = CancellationToken::new();
    let (ready_tx, ready_rx) = oneshot::channel();
    let supervisor = Supervisor {
        plan: workers,
        exe,
        args: std::env::args_os().skip(1).collect(),
        listener,
        control_path,
        _dir: dir,
        grace,
        drain_delay,
        next_id: 0,
        children: HashMap::new(),
        events: mpsc::unbounded_channel(),
        first_ready: Some(ready_tx),
        ever_ready: false,
        backoff: Backoff::default(),
        respawn_at: None,
        reload: Vec::new(),
        giving_up: None,
    };
    // The supervisor's end (a failure after the first worker was ready included) ends the
    // `Serving`: its `run_until` returns and `wait` gives the supervisor's result.
    let task = tokio::spawn({
        let token = token.clone();
        async move {
            let result = supervisor.run(control, token.clone()).await;
            token.cancel();
            result
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(Serving::new(
            local_addr,
            pool,
            ShutdownHandle::new(token),
            app,
            task,
        )),
        Ok(Err(message)) => {
            let _ = task.await;
            Err(ServeError::startup(format!(
                "the first worker did not start: {message}"
            )))
        }
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(ServeError::startup(
                "the supervisor stopped before any worker was ready",
            )),
        },
    }
}

/// The control socket's directory, removed with what is in it when dropped.
struct ControlDir(PathBuf);

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private directory for the control socket: only this user may connect. Directories
/// that supervisors killed outright (SIGKILL, a crash) left behind are swept first.
fn control_dir() -> io::Result<ControlDir> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("amphi-{}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                sweep_stale_control_dirs(&base, &dir);
                return Ok(ControlDir(dir));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free control directory name"))
}

/// Removes the control directories in `base` of supervisors that are gone: named as
/// [`control_dir`] names them, owned by the owner of `ours` (just made), holding nothing but
/// a control socket that no one listens on any more, and whose process no longer exists.
/// Both tests, because a `TMPDIR` shared between PID namespaces (containers) shows a live
/// supervisor elsewhere as a pid that does not exist here, while its socket still answers.
/// Linux only (`/proc` says which processes exist); anything unexpected is left alone.
fn sweep_stale_control_dirs(base: &Path, ours: &Path) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let proc = Path::new("/proc");
    let (Ok(mine), true) = (std::fs::metadata(ours), proc.join("self").exists()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("amphi-"))
            .and_then(|n| n.split_once('-'))
            .filter(|(pid, n)| digits(pid) && digits(n))
            .map(|(pid, _)| pid)
        else {
            continue;
        };
        let path = entry.path();
        let owned =
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == mine.uid());
        if !owned || proc.join(pid).exists() {
            continue;
        }
        let socket = path.join("control.sock");
        let only_a_socket = std::fs::read_dir(&path).is_ok_and(|inside| {
            let names: Vec<_> = inside.flatten().map(|e| e.file_name()).collect();
            names.len() == 1 && names[0] == "control.sock"
        }) && std::fs::symlink_metadata(&socket)
            .is_ok_and(|m| m.file_type().is_socket());
        // Refused: nothing listens there. Anything else (it answered, or a permission or
        // other error) leaves the directory alone.
        let unheard = only_a_socket
            && std::os::unix::net::UnixStream::connect(&socket)
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused);
        if unheard {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale control directory")
                }
                Err(e) => tracing::debug!(
                    path = %path.display(),
                    error = %e,
                    "could not remove a stale control directory"
                ),
            }
        }
    }
}

/// How long the supervisor waits before replacing a worker that died: 100 ms, doubling with
/// each worker in a row that died young (within [`Backoff::YOUNG`] of its start, ready or
/// not: a worker that crashes on its first requests loops as surely as one that crashes at
/// startup), up to 10 s; a worker that lives longer (its beats say so, or its death)
/// starts the count again.
#[derive(Debug, Default)]
struct Backoff {
    /// Workers in a row that died young.
    young_deaths: u32,
}

impl Backoff {
    const YOUNG: Duration = Duration::from_secs(10);

    /// A worker has served past [`Backoff::YOUNG`]: whatever died before it, the workers are
    /// not in a crash loop now.
    fn lived(&mut self, age: Duration) {
        if age >= Self::YOUNG {
            self.young_deaths = 0;
        }
    }

    /// A worker died after living `age`: the wait before its replacement starts.
    fn died(&mut self, age: Duration) -> Duration {
        if age < Self::YOUNG {
            self.young_deaths = self.young_deaths.saturating_add(1);
        } else {
            self.young_deaths = 0;
        }
        Duration::from_millis(100)
            .saturating_mul(1 << self.young_deaths.min(7))
            .min(Duration::from_secs(10))
    }
}

/// What happens to a worker, as the supervisor hears it.
enum Event {
    /// A worker's id, its pid, and the way to tell it things.
    Hello(u64, u32, OwnedWriteHalf),
    Ready(u64),
    Failed(u64, String),
    Beat(u64, u64),
    Exited(u64, io::Result<ExitStatus>),
}

struct Child {
    pid: Option<u32>,
    started: Instant,
    ready: bool,
    last_beat: Instant,
    /// When this worker is recycled by request count.
    request_budget: Option<u64>,
    /// Told to drain (replaced, removed, or shutting down): its exit is expected.
    draining: bool,
    /// A worker that replaces this one is starting; this one drains once it is ready.
    replaced_by: Option<u64>,
    control: Option<OwnedWriteHalf>,
    kill: Option<oneshot::Sender<()>>,
}

struct Supervisor {
    plan: Workers,
    exe: PathBuf,
    args: Vec<OsString>,
    listener: std::net::TcpListener,
    control_path: PathBuf,
    /// Removed with the supervisor, however it ends (an error before it starts included).
    _dir: ControlDir,
    grace: Duration,
    /// The workers' drain delay: part of how long their shutdown may take.
    drain_delay: Duration,
    next_id: u64,
    children: HashMap<u64, Child>,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    first_ready: Option<oneshot::Sender<Result<(), String>>>,
    ever_ready: bool,
    backoff: Backoff,
    respawn_at: Option<Instant>,
    /// Workers still to replace in a rolling reload, one at a time.
    reload: Vec<u64>,
    /// A worker exited before any was ready: the supervisor gives up at this instant, once
    /// the worker's own `failed` line (on another channel) has had time to arrive.
    giving_up: Option<(Instant, String)>,
}

impl Supervisor {
    async fn run(
        mut self,
        control: UnixListener,
        token: CancellationToken,
    ) -> Result<(), ServeError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup =
            signal(SignalKind::hangup()).map_err(|e| ServeError::io("installing SIGHUP", e))?;
        let mut ttin = signal(SignalKind::from_raw(libc::SIGTTIN))
            .map_err(|e| ServeError::io("installing SIGTTIN", e))?;
        let mut ttou = signal(SignalKind::from_raw(libc::SIGTTOU))
            .map_err(|e| ServeError::io("installing SIGTTOU", e))?;
        for _ in 0..self.plan.count {
            self.spawn();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let result = loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => break Ok(()),
                accepted = control.accept() => {
                    if let Ok((stream, _)) = accepted {
                        self.listen(stream);
                    }
                }
                event = self.events.1.recv() => {
                    let event = event.expect("the supervisor holds a sender");
                    if let Err(message) = self.on(event) {
                        break Err(ServeError::startup(message));
                    }
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: replacing every worker, one at a time");
                    self.reload = self.live().collect();
                    self.next_reload();
                }
                _ = ttin.recv() => {
                    self.plan.count += 1;
                    tracing::info!(workers = self.plan.count, "SIGTTIN: one more worker");
                    self.spawn();
                }
                _ = ttou.recv() => {
                    if self.plan.count > 1 {
                        self.plan.count -= 1;
                        tracing::info!(workers = self.plan.count, "SIGTTOU: one worker fewer");
                        if let Some(id) = self.live().min() {
                            self.drain(id, "removed");
                        }
                    }
                }
                _ = tick.tick() => {
                    match self.giving_up.take() {
                        // A worker became ready meanwhile: the service is up after all.
                        Some(_) if self.ever_ready => self.check(),
                        Some((at, message)) if Instant::now() >= at => {
                            break Err(ServeError::startup(message));
                        }
                        Some(giving_up) => self.giving_up = Some(giving_up),
                        None => self.check(),
                    }
                }
            }
        };
        if let Err(e) = &result {
            if let Some(tx) = self.first_ready.take() {
                let _ = tx.send(Err(e.to_string()));
            }
        }
        self.stop(&control).await;
        result
    }

    /// Workers serving or starting that are not on their way out.
    fn live(&self) -> impl Iterator<Item = u64> + '_ {
        self.children
            .iter()
            .filter(|(_, c)| !c.draining)
            .map(|(id, _)| *id)
    }

    /// Starts one more worker; `None` when it could not be started.
    fn spawn(&mut self) -> Option<u64> {
        self.next_id += 1;
        let id = self.next_id;
        let stdin = match self.listener.as_fd().try_clone_to_owned() {
            Ok(fd) => Stdio::from(fd),
            Err(e) => {
                tracing::error!(error = %e, "cannot hand the listening socket to a worker");
                return None;
            }
        };
        let spawned = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .env(ENV_ID, id.to_string())
            .env(ENV_CONTROL, &self.control_path)
            .env(ENV_COUNT, self.plan.count.to_string())
            .stdin(stdin)
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, exe = %self.exe.display(), "cannot start a worker");
                return None;
            }
        };
        let pid = child.id();
        tracing::info!(worker = id, pid, "worker started");
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let events = self.events.0.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill_rx => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let _ = events.send(Event::Exited(id, status));
        });
        let budget = self
            .plan
            .max_requests
            .map(|(n, jitter)| n.saturating_add(random_below(jitter.saturating_add(1))));
        let now = Instant::now();
        self.children.insert(
            id,
            Child {
                pid,
                started: now,
                ready: false,
                last_beat: now,
                request_budget: budget,
                draining: false,
                replaced_by: None,
                control: None,
                kill: Some(kill_tx),
            },
        );
        Some(id)
    }

    /// Reads a worker's control connection into events.
    fn listen(&self, stream: UnixStream) {
        let events = self.events.0.clone();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let Ok(Some(hello)) = lines.next_line().await else {
                return;
            };
            let mut words = hello.strip_prefix("hello ").unwrap_or_default().split(' ');
            let (Some(id), Some(pid)) = (
                words.next().and_then(|id| id.parse().ok()),
                words.next().and_then(|pid| pid.parse().ok()),
            ) else {
                return;
            };
            let _ = events.send(Event::Hello(id, pid, write));
            while let Ok(Some(line)) = lines.next_line().await {
                let event = if line == "ready" {
                    Event::Ready(id)
                } else if let Some(m) = line.strip_prefix("failed ") {
                    Event::Failed(id, m.to_owned())
                } else if let Some(n) = line.strip_prefix("beat ").and_then(|n| n.parse().ok()) {
                    Event::Beat(id, n)
                } else {
                    continue;
                };
                if events.send(event).is_err() {
                    return;
                }
            }
        });
    }

    /// Handles one event; `Err` with the message when the first worker cannot start.
    fn on(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Hello(id, pid, write) => {
                // Only the process started as worker `id` speaks for it (a process the
                // application starts inherits the worker's environment).
                if let Some(c) = self.children.get_mut(&id).filter(|c| c.pid == Some(pid)) {
                    c.control = Some(write);
                    if c.draining {
                        self.tell(id, "drain");
                    }
                }
            }
            Event::Ready(id) => {
                let Some(c) = self.children.get_mut(&id) else {
                    return Ok(());
                };
                c.ready = true;
                c.last_beat = Instant::now();
                tracing::info!(worker = id, pid = c.pid, "worker ready");
                self.ever_ready = true;
                if let Some(tx) = self.first_ready.take() {
                    let _ = tx.send(Ok(()));
                }
                // A replacement is ready: the worker it replaces drains now.
                let old: Vec<u64> = self
                    .children
                    .iter()
                    .filter(|(_, c)| c.replaced_by == Some(id))
                    .map(|(id, _)| *id)
                    .collect();
                for o in old {
                    self.drain(o, "replaced");
                }
                self.next_reload();
            }
            Event::Failed(id, message) => {
                tracing::error!(worker = id, message, "worker failed to start");
                if !self.ever_ready {
                    return Err(format!("worker {id}: {message}"));
                }
            }
            Event::Beat(id, served) => {
                if let Some(c) = self.children.get_mut(&id) {
                    c.last_beat = Instant::now();
                    if c.ready {
                        self.backoff.lived(c.started.elapsed());
                    }
                    if c.request_budget.is_some_and(|b| served >= b)
                        && c.replaced_by.is_none()
                        && !c.draining
                        && self.replace(id)
                    {
                        if let Some(c) = self.children.get_mut(&id) {
                            c.request_budget = None;
                        }
                        tracing::info!(
                            worker = id,
                            served,
                            "worker served its request budget; recycling it"
                        );
                    }
                }
            }
            Event::Exited(id, status) => {
                let Some(c) = self.children.remove(&id) else {
                    return Ok(());
                };
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                if c.draining {
                    tracing::info!(worker = id, pid = c.pid, status, "worker exited");
                } else {
                    tracing::warn!(
                        worker = id,
                        pid = c.pid,
                        status,
                        "worker died; replacing it"
                    );
                    if !self.ever_ready {
                        let message = format!("worker {id} exited before it was ready ({status})");
                        self.giving_up =
                            Some((Instant::now() + Duration::from_millis(500), message));
                        return Ok(());
                    }
                    let delay = self.backoff.died(c.started.elapsed());
                    tracing::debug!(worker = id, ?delay, "respawning after a back-off");
                    self.respawn_at = Some(Instant::now() + delay);
                }
                // The worker it was to replace stays until a replacement is ready.
                for other in self.children.values_mut() {
                    if other.replaced_by == Some(id) {
                        other.replaced_by = None;
                    }
                }
                self.next_reload();
            }
        }
        Ok(())
    }

    /// Periodic checks: heartbeats, readiness, lifetime, memory, and respawns due.
    fn check(&mut self) {
        let now = Instant::now();
        let mut kill = Vec::new();
        let mut recycle = Vec::new();
        for (id, c) in &self.children {
            if c.kill.is_none() {
                // Being killed already: its exit comes next.
            } else if c.ready && now.duration_since(c.last_beat) > self.plan.heartbeat_timeout {
                tracing::error!(
                    worker = id,
                    pid = c.pid,
                    "worker stopped beating; killing it"
                );
                kill.push(*id);
            } else if !c.ready && now.duration_since(c.started) > self.plan.ready_timeout {
                tracing::error!(
                    worker = id,
                    pid = c.pid,
                    "worker not ready in time; killing it"
                );
                kill.push(*id);
            } else if c.ready && !c.draining && c.replaced_by.is_none() {
                if self
                    .plan
                    .max_lifetime
                    .is_some_and(|l| now.duration_since(c.started) > l)
                {
                    tracing::info!(worker = id, "worker lived its lifetime; recycling it");
                    recycle.push(*id);
                } else if let (Some(max), Some(pid)) = (self.plan.max_rss, c.pid) {
                    if rss_of(pid).is_some_and(|rss| rss > max) {
                        tracing::info!(
                            worker = id,
                            max,
                            "worker grew past its memory cap; recycling it"
                        );
                        recycle.push(*id);
                    }
                }
            }
        }
        for id in kill {
            if let Some(c) = self.children.get_mut(&id) {
                if let Some(k) = c.kill.take() {
                    let _ = k.send(());
                }
            }
        }
        for id in recycle {
            self.replace(id);
        }
        if self.respawn_at.is_some_and(|at| now >= at) {
            self.respawn_at = None;
        }
        // More workers serving than planned (a SIGTTOU that took a worker being replaced, a
        // replacement that outlived its reason): the oldest go.
        loop {
            let serving: Vec<u64> = self
                .live()
                .filter(|id| self.children[id].replaced_by.is_none())
                .collect();
            if serving.len() <= self.plan.count {
                break;
            }
            let oldest = serving
                .into_iter()
                .min()
                .expect("more than planned, so some");
            self.drain(oldest, "more workers than planned");
        }
        self.next_reload();
        if self.respawn_at.is_none() {
            while self.live().count() < self.plan.count {
                if self.spawn().is_none() {
                    self.respawn_at = Some(now + Duration::from_secs(1));
                    break;
                }
            }
        }
    }

    /// Starts a replacement for `id`; `id` drains once the replacement is ready. Not while
    /// the respawn back-off runs (replacements that keep dying back off like any worker);
    /// `false` when none was started, and the caller tries again later.
    fn replace(&mut self, id: u64) -> bool {
        if self.respawn_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let Some(new) = self.spawn() else {
            self.respawn_at = Some(Instant::now() + Duration::from_secs(1));
            return false;
        };
        if let Some(c) = self.children.get_mut(&id) {
            c.replaced_by = Some(new);
        }
        true
    }

    /// The next worker of a rolling reload, when none is being replaced.
    fn next_reload(&mut self) {
        if self.children.values().any(|c| c.replaced_by.is_some()) {
            return;
        }
        while let Some(id) = self.reload.pop() {
            if self.children.get(&id).is_some_and(|c| !c.draining) {
                if !self.replace(id) {
                    // Backing off: this worker is next again, from the periodic check.
                    self.reload.push(id);
                }
                return;
            }
        }
    }

    fn drain(&mut self, id: u64, why: &str) {
        if let Some(c) = self.children.get_mut(&id) {
            if c.draining {
                return;
            }
            c.draining = true;
            tracing::info!(worker = id, pid = c.pid, why, "draining worker");
        }
        self.tell(id, "drain");
    }

    /// Sends `what` to worker `id`, if it has said hello (else it is told when it does). The
    /// line is a few bytes: the socket's buffer takes it at once.
    fn tell(&mut self, id: u64, what: &str) {
        let Some(control) = self.children.get(&id).and_then(|c| c.control.as_ref()) else {
            return;
        };
        let line = format!("{what}\n");
        if let Err(e) = control.try_write(line.as_bytes()) {
            // A worker that is gone already cannot be told: its exit comes next.
            tracing::debug!(worker = id, error = %e, "cannot tell the worker to {what}");
        }
    }

    /// Drains every worker and waits for them, up to the grace period and a margin; kills
    /// what is left.
    async fn stop(&mut self, control: &UnixListener) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.drain(id, "shutting down");
        }
        // A worker's shutdown: its drain delay, the grace period for its requests, then its
        // lifespan shutdown (bounded by the grace period too); and a margin.
        let deadline = Instant::now() + self.drain_delay + self.grace * 2 + Duration::from_secs(5);
        while !self.children.is_empty() {
            let event = tokio::select! {
                // A worker started just before the shutdown still says hello, and is told.
                accepted = control.accept() => {
                    if let Ok((stream, _)) = accepted {
                        self.listen(stream);
                    }
                    continue;
                }
                event = tokio::time::timeout_at(deadline, self.events.1.recv()) => event,
            };
            match event {
                Ok(Some(Event::Exited(id, status))) => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    tracing::info!(worker = id, status, "worker exited");
                    self.children.remove(&id);
                }
                Ok(Some(Event::Hello(id, pid, write))) => {
                    if let Some(c) = self.children.get_mut(&id).filter(|c| c.pid == Some(pid)) {
                        c.control = Some(write);
                        self.tell(id, "drain");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        workers = self.children.len(),
                        "workers still running after the grace period; killing them"
                    );
                    for c in self.children.values_mut() {
                        if let Some(k) = c.kill.take() {
                            let _ = k.send(());
                        }
                    }
                    // Their exits arrive next; a kill cannot be refused.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while !self.children.is_empty() {
                        match tokio::time::timeout_at(deadline, self.events.1.recv()).await {
                            Ok(Some(Event::Exited(id, _))) => {
                                self.children.remove(&id);
                            }
                            Ok(Some(_)) => {}
                            _ => return,
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// The resident memory of process `pid`, in bytes (Linux).
fn rss_of(pid: u32) -> Option<u64> {
    let statm =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// A number in `0..n` from std's per-process random hash keys: jitter, not cryptography.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    if n <= 1 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_grows_with_young_deaths_ready_or_not_and_resets_after_an_old_one() {
        let mut b = Backoff::default();
        let young = Duration::from_secs(2);
        let waits: Vec<Duration> = (0..9).map(|_| b.died(young)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            waits,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400),
                ms(10_000),
                ms(10_000),
                ms(10_000)
            ]
        );
        // A worker that served for a while before dying is not part of a crash loop.
        assert_eq!(b.died(Backoff::YOUNG), ms(100));
        assert_eq!(b.died(young), ms(200));
        assert_eq!(b.died(young), ms(400));
        // Nor is one that dies young after another has been serving for a while.
        b.lived(young);
        assert_eq!(
            b.died(young),
            ms(800),
            "a young worker's beat resets nothing"
        );
        b.lived(Backoff::YOUNG);
        assert_eq!(b.died(young), ms(200));
    }

    #[test]
    fn workers_share_the_cores_and_never_get_zero_threads() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Workers::new(1).threads_per_worker(), cores);
        for n in 1..=2 * cores + 1 {
            let each = Workers::new(n).threads_per_worker();
            assert!(each >= 1);
            // Between them, no more threads than cores unless each already has only one.
            assert!(
                each == 1 || each * n <= cores,
                "{n} workers x {each} threads"
            );
        }
    }

    #[test]
    fn random_below_stays_below() {
        for n in [0, 1, 2, 7, 1000] {
            assert!(random_below(n) < n.max(1));
        }
    }
}

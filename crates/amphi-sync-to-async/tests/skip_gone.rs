//! Work whose caller is gone never starts. A call dropped, or whose request token was
//! cancelled, while it waited — for a pool slot, in its pool's lane behind a busy blocking
//! thread, in tokio's own blocking queue, or on a busy thread-sensitive thread — never runs
//! its handler or closure, gives its slot back, and the next call runs. The same holds on
//! every path: `SyncToAsync::call_http`, `SyncToAsync` as an `AsyncHandler`, and
//! `sync_to_async(f)`; and at runtime shutdown, which drops every caller.
//!
//! A gated `/block` request holds the one slot or thread; the calls under test queue behind
//! it; the gate opens only after they are dropped or cancelled. What ran is recorded by name.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use amphi_core::testing::Communicator;
use amphi_core::{
    sync_fn, BlockingBody, CancellationToken, Context, Error, ErrorKind, Event, Message, Scope,
    SyncBody, SyncFn, SyncRequest, SyncResponse, ThreadSensitive,
};
use amphi_sync_to_async::{sync_to_async, BlockingPool, SyncToAsync};
use tokio::sync::mpsc;
use tokio::time::timeout;

mod support;
use support::{gate_reply, report, run, scope, settle, BOUND};

/// How long the blocked request waits for its gate: longer than [`BOUND`], so a test that
/// goes wrong fails on `BOUND` rather than being let through by the gate's own timeout.
const GATE_BOUND: Duration = Duration::from_secs(30);

type ProbeFn = Box<dyn Fn(SyncRequest) -> SyncResponse + Send + Sync>;
type Svc = SyncToAsync<SyncFn<ProbeFn>>;
type Call = Pin<Box<dyn Future<Output = Result<String, Error>> + Send>>;

/// The names of the handlers and closures that ran, in order.
#[derive(Clone, Default)]
struct Ran(Arc<Mutex<Vec<String>>>);

impl Ran {
    fn push(&self, name: &str) {
        self.0.lock().unwrap().push(name.to_owned());
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The handler's gate, the `/block` requests' start reports, and what ran.
struct Probe {
    gate: CancellationToken,
    started: mpsc::UnboundedReceiver<String>,
    ran: Ran,
}

/// A handler whose `/block` requests report that they started and wait for the gate; every
/// other request is recorded in `ran` and answers its path.
fn probe() -> (ProbeFn, Probe) {
    let gate = CancellationToken::new();
    let (started_tx, started) = mpsc::unbounded_channel();
    let ran = Ran::default();
    let (g, r) = (gate.clone(), ran.clone());
    let handler: ProbeFn = Box::new(move |req: SyncRequest| {
        let path = req.path().to_owned();
        if path == "/block" {
            started_tx.send(path).unwrap();
            let released = g.wait_timeout(GATE_BOUND);
            gate_reply(released)
        } else {
            r.push(&path);
            http::Response::new(SyncBody::from(path))
        }
    });
    (handler, Probe { gate, started, ran })
}

/// Polls `future` once with a waker that does nothing: far enough to take a free slot and
/// queue its blocking work, or to start waiting for a slot. Asserts it is still pending.
fn poll_once<F: Future + Unpin>(future: &mut F) {
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert!(
        Pin::new(future).poll(&mut cx).is_pending(),
        "the call is still waiting"
    );
}

#[derive(Clone, Copy, Debug)]
enum Path {
    CallHttp,
    Handler,
    SyncToAsync,
}

/// Where the calls under test wait behind the `/block` request.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// For the one slot of a pool.
    Slot,
    /// In a pool's lane: a slot is free, the runtime's one blocking thread is not.
    Lane,
    /// In tokio's blocking queue (no pool): the runtime's one blocking thread is busy.
    Tokio,
    /// On a busy thread-sensitive context's thread (with a pool whose slots are free).
    ThreadSensitive,
}

struct Kit {
    svc: Svc,
    app: Arc<Svc>,
    pool: Option<BlockingPool>,
    ts: Option<ThreadSensitive>,
    ran: Ran,
}

impl Kit {
    /// `svc` (a fresh clone of it: no pool, no thread-sensitive context) set up for `wait`.
    fn new(wait: Wait, svc: &Svc, ran: Ran) -> Kit {
        let svc = svc.clone();
        let (pool, ts) = match wait {
            Wait::Slot => (Some(BlockingPool::new(1).queue_timeout(GATE_BOUND)), None),
            Wait::Lane => (Some(BlockingPool::new(8)), None),
            Wait::Tokio => (None, None),
            Wait::ThreadSensitive => (Some(BlockingPool::new(8)), Some(ThreadSensitive::new())),
        };
        let svc = match &pool {
            Some(pool) => svc.pool(pool.clone()),
            None => svc,
        };
        let svc = match &ts {
            Some(ts) => svc.thread_sensitive(ts.clone()),
            None => svc,
        };
        Kit {
            app: Arc::new(svc.clone()),
            svc,
            pool,
            ts,
            ran,
        }
    }

    /// A call named `name` on `path` under `context`; the future gives its body.
    fn call(&self, path: Path, name: &str, context: Context) -> Call {
        self.make(path, name, context, false)
    }

    /// [`call`](Kit::call), started as far as it goes without waiting (see [`poll_once`]),
    /// for a call that queues behind the blocked one.
    fn start(&self, path: Path, name: &str, context: Context) -> Call {
        self.make(path, name, context, true)
    }

    fn make(&self, path: Path, name: &str, context: Context, start: bool) -> Call {
        match path {
            Path::CallHttp => {
                let mut call = self
                    .svc
                    .call_http(scope(name).with_context(context), BlockingBody::empty());
                if start {
                    poll_once(&mut call);
                }
                Box::pin(async move {
                    let body = call.await?.into_body().into_full();
                    Ok(String::from_utf8(body.expect("a full body").to_vec()).unwrap())
                })
            }
            Path::Handler => {
                let scope = Scope::Http(scope(name).with_context(context));
                let mut comm = Communicator::new(self.app.clone(), scope);
                comm.send_input(Event::Request {
                    body: Default::default(),
                    more_body: false,
                });
                if start {
                    assert!(comm.try_receive_output().is_none(), "the call is waiting");
                }
                Box::pin(async move {
                    let mut body = Vec::new();
                    while let Some(message) = comm.receive_output().await {
                        if let Message::ResponseBody { body: chunk, .. } = message {
                            body.extend_from_slice(&chunk);
                        }
                    }
                    comm.wait().await?;
                    Ok(String::from_utf8(body).unwrap())
                })
            }
            Path::SyncToAsync => {
                let (ran, named) = (self.ran.clone(), name.to_owned());
                let mut call = sync_to_async(move || {
                    ran.push(&named);
                    named
                });
                if let Some(pool) = &self.pool {
                    call = call.pool(pool);
                }
                if let Some(ts) = &self.ts {
                    call = call.thread_sensitive(ts);
                }
                // The call runs under the context current where it is turned into a future.
                let mut call = {
                    let _entered = context.enter();
                    call.into_future()
                };
                if start {
                    poll_once(&mut call);
                }
                Box::pin(call)
            }
        }
    }
}

/// A runtime whose blocking pool has one thread (besides its two workers), so a second piece
/// of blocking work waits in a queue for the first.
fn one_blocking_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A gated call holds the slot or thread; one call queued behind it is dropped, another is
/// cancelled through its request context's token; once the gate opens neither runs, the
/// cancelled one returns `Cancelled`, and a third call runs.
fn queued_calls_whose_callers_left_never_run(wait: Wait, path: Path) {
    let (handler, mut probe) = probe();
    let kit = Kit::new(wait, &SyncToAsync::new(sync_fn(handler)), probe.ran.clone());
    let test = async move {
        let holder = kit.call(Path::CallHttp, "/block", Context::new());
        let holder = tokio::spawn(holder);
        assert_eq!(report(&mut probe.started).await, "/block");

        let dropped = kit.start(path, "/dropped", Context::new());
        drop(dropped);
        let request = Context::new();
        let cancelled = kit.start(path, "/cancelled", request.clone());
        request.token().cancel();

        probe.gate.cancel();
        let released = timeout(BOUND, holder).await.unwrap().unwrap().unwrap();
        assert_eq!(released, "released");
        let err = timeout(BOUND, cancelled)
            .await
            .expect("the cancelled call ended")
            .expect_err("the cancelled call did not run");
        assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");

        let third = timeout(BOUND, kit.call(path, "/third", Context::new()))
            .await
            .expect("the third call ran")
            .unwrap();
        assert_eq!(third, "/third");
        assert_eq!(
            kit.ran.list(),
            ["/third"],
            "{wait:?} {path:?}: the dropped and the cancelled call never ran"
        );
        if let Some(pool) = &kit.pool {
            settle(pool, 0).await;
        }
    };
    match wait {
        Wait::Lane | Wait::Tokio => {
            let rt = one_blocking_thread();
            let outcome = rt.block_on(rt.spawn(test));
            rt.shutdown_background();
            if let Err(e) = outcome {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Wait::Slot | Wait::ThreadSensitive => run(test),
    }
}

#[test]
fn call_http_waiting_for_a_slot() {
    queued_calls_whose_callers_left_never_run(Wait::Slot, Path::CallHttp);
}

#[test]
fn handler_waiting_for_a_slot() {
    queued_calls_whose_callers_left_never_run(Wait::Slot, Path::Handler);
}

#[test]
fn sync_to_async_waiting_for_a_slot() {
    queued_calls_whose_callers_left_never_run(Wait::Slot, Path::SyncToAsync);
}

#[test]
fn call_http_queued_in_the_pools_lane() {
    queued_calls_whose_callers_left_never_run(Wait::Lane, Path::CallHttp);
}

#[test]
fn handler_queued_in_the_pools_lane() {
    queued_calls_whose_callers_left_never_run(Wait::Lane, Path::Handler);
}

#[test]
fn sync_to_async_queued_in_the_pools_lane() {
    queued_calls_whose_callers_left_never_run(Wait::Lane, Path::SyncToAsync);
}

#[test]
fn call_http_queued_for_tokios_blocking_thread() {
    queued_calls_whose_callers_left_never_run(Wait::Tokio, Path::CallHttp);
}

#[test]
fn handler_queued_for_tokios_blocking_thread() {
    queued_calls_whose_callers_left_never_run(Wait::Tokio, Path::Handler);
}

#[test]
fn sync_to_async_queued_for_tokios_blocking_thread() {
    queued_calls_whose_callers_left_never_run(Wait::Tokio, Path::SyncToAsync);
}

#[test]
fn call_http_queued_on_a_thread_sensitive_thread() {
    queued_calls_whose_callers_left_never_run(Wait::ThreadSensitive, Path::CallHttp);
}

#[test]
fn handler_queued_on_a_thread_sensitive_thread() {
    queued_calls_whose_callers_left_never_run(Wait::ThreadSensitive, Path::Handler);
}

#[test]
fn sync_to_async_queued_on_a_thread_sensitive_thread() {
    queued_calls_whose_callers_left_never_run(Wait::ThreadSensitive, Path::SyncToAsync);
}

/// A call waiting for a slot whose request is cancelled stops waiting at once, without the
/// slot, instead of holding its place in the queue until a slot comes free.
#[test]
fn a_call_waiting_for_a_slot_stops_waiting_when_its_request_is_cancelled() {
    run(async {
        let (handler, mut probe) = probe();
        let kit = Kit::new(
            Wait::Slot,
            &SyncToAsync::new(sync_fn(handler)),
            probe.ran.clone(),
        );
        let pool = kit.pool.clone().unwrap();
        let holder = tokio::spawn(kit.call(Path::CallHttp, "/block", Context::new()));
        assert_eq!(report(&mut probe.started).await, "/block");
        for path in [Path::CallHttp, Path::Handler, Path::SyncToAsync] {
            let request = Context::new();
            let waiting = tokio::spawn(kit.start(path, "/cancelled", request.clone()));
            request.token().cancel();
            let err = timeout(BOUND, waiting)
                .await
                .unwrap_or_else(|_| panic!("{path:?}: the call stopped waiting"))
                .unwrap()
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Cancelled, "{path:?}: {err}");
            assert_eq!(pool.in_flight(), 1, "{path:?}: the holder's slot only");
        }
        probe.gate.cancel();
        timeout(BOUND, holder).await.unwrap().unwrap().unwrap();
        settle(&pool, 0).await;
        assert!(kit.ran.list().is_empty());
    });
}

/// A call's future that reports on `dropped` once the runtime has dropped it (after the call
/// inside is gone).
struct Watched {
    call: Option<Call>,
    dropped: std_mpsc::Sender<String>,
    name: &'static str,
}

impl Future for Watched {
    type Output = Result<String, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.call
            .as_mut()
            .expect("polled after drop")
            .as_mut()
            .poll(cx)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        drop(self.call.take());
        let _ = self.dropped.send(self.name.to_owned());
    }
}

/// Runtime shutdown drops every task's future, then lets the blocking threads finish; tokio
/// 1.54 still runs blocking tasks a busy thread finds queued when it comes back (only an
/// idle thread drops them), and a pool's drainer takes the lane's next job. So work queued
/// behind a long call runs after its callers were dropped unless it is skipped.
#[test]
fn at_runtime_shutdown_queued_work_of_dropped_callers_never_runs() {
    let (handler, mut probe) = probe();
    let ran = probe.ran.clone();
    let svc = SyncToAsync::new(sync_fn(handler));
    let pooled = Kit::new(Wait::Lane, &svc, ran.clone());
    let pool = pooled.pool.clone().unwrap();
    // The same handler without a pool: plain `spawn_blocking`.
    let plain = Kit::new(Wait::Tokio, &svc, ran.clone());

    let rt = one_blocking_thread();
    let (dropped_tx, dropped) = std_mpsc::channel();
    const QUEUED: usize = 5;
    let calls: [(&Kit, Path, &'static str); QUEUED] = [
        (&pooled, Path::CallHttp, "/lane"),
        (&pooled, Path::Handler, "/lane-async"),
        (&pooled, Path::SyncToAsync, "lane-closure"),
        (&plain, Path::CallHttp, "/tokio"),
        (&plain, Path::SyncToAsync, "tokio-closure"),
    ];
    rt.block_on(async {
        let holder = pooled.call(Path::CallHttp, "/block", Context::new());
        let mut tasks = vec![tokio::spawn(holder)];
        assert_eq!(report(&mut probe.started).await, "/block");
        for (kit, path, name) in calls {
            tasks.push(tokio::spawn(Watched {
                call: Some(kit.start(path, name, Context::new())),
                dropped: dropped_tx.clone(),
                name,
            }));
        }
        assert_eq!(
            pool.in_flight(),
            4,
            "the holder and three queued pooled calls"
        );
        // Detached, unfinished: the shutdown drops them.
        drop(tasks);
    });

    // The gate opens once every caller has been dropped by the shutdown (or, bounded, when
    // that never happens, so the test fails instead of hanging).
    let gate = probe.gate.clone();
    let opener = std::thread::spawn(move || {
        let mut seen: Vec<String> = (0..QUEUED)
            .map_while(|_| dropped.recv_timeout(BOUND).ok())
            .collect();
        gate.cancel();
        seen.sort();
        seen
    });
    rt.shutdown_timeout(GATE_BOUND);
    let seen = opener.join().unwrap();
    assert_eq!(
        seen.len(),
        QUEUED,
        "the shutdown dropped every queued caller: {seen:?}"
    );
    assert_eq!(
        ran.list(),
        Vec::<String>::new(),
        "no queued work ran after its caller was dropped"
    );
    assert_eq!(pool.in_flight(), 0, "every slot came back");
}

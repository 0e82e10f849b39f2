//! `SyncToAsync::call_http` through its public API: full and streamed responses, backpressure,
//! cancellation when the caller or the body goes away, panics, saturation and queueing, and
//! the thread-sensitive modes.
//!
//! Every test runs on its own two-worker runtime that is shut down without waiting for
//! blocking work (see [`run`]): a failing test reports instead of hanging on a handler left
//! blocked.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread::{self, ThreadId};
use std::time::Duration;

use amphi_core::{
    sync_fn, BlockingBody, CancellationToken, Error, ErrorKind, HttpScope, RequestInfo, SyncBody,
    SyncRequest, ThreadSensitive,
};
use amphi_sync_to_async::{sync_to_async, BlockingPool, HttpBody, SyncToAsync};
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

mod support;
use support::{gate_reply, report, run, scope, settle, BOUND};

/// The next data frame of `body`, `None` at its end; fails the test if none comes in time.
async fn next_data(body: &mut HttpBody) -> Option<Result<Bytes, Error>> {
    let frame = timeout(BOUND, body.frame())
        .await
        .expect("the next frame came in time")?;
    Some(frame.map(|f| f.into_data().expect("a data frame")))
}

/// Everything left in `body`, bounded.
async fn rest(body: HttpBody) -> Result<Bytes, Error> {
    Ok(timeout(BOUND, body.collect())
        .await
        .expect("the body ended in time")?
        .to_bytes())
}

/// Polls `future` once, asserting it is still pending.
async fn poll_once_pending<F: Future + Unpin>(future: &mut F) {
    std::future::poll_fn(|cx| {
        assert!(
            Pin::new(&mut *future).poll(cx).is_pending(),
            "the call is still waiting"
        );
        Poll::Ready(())
    })
    .await;
}

#[derive(Clone, Debug, PartialEq)]
struct Greeting(&'static str);

#[derive(Clone, Debug, PartialEq)]
struct Seen(String);

#[test]
fn a_full_response_comes_back_whole_and_the_handler_sees_the_scope() {
    run(async {
        let pool = BlockingPool::new(2);
        let svc = SyncToAsync::new(sync_fn(|mut req: SyncRequest| {
            let greeting = req.context().get::<Greeting>().map_or("none", |g| g.0);
            let current = amphi_core::Context::current().and_then(|c| c.get::<Greeting>());
            let name = req.headers()["x-name"].to_str().unwrap().to_owned();
            let mut sent = String::new();
            req.body_mut().read_to_string(&mut sent).unwrap();
            // A value the handler leaves in the context, for the caller to find.
            req.context()
                .insert(Seen(format!("{} {}", req.method(), req.uri())));
            http::Response::builder()
                .status(http::StatusCode::CREATED)
                .header("x-path", req.path())
                .header("x-root", req.root_path())
                .header("x-current", format!("{current:?}"))
                .body(SyncBody::from(format!("{greeting} {name}: {sent}")))
                .unwrap()
        }))
        .pool(pool.clone());

        let (parts, ()) = http::Request::post("/api/items/7?x=1")
            .header("x-name", "ada")
            .body(())
            .unwrap()
            .into_parts();
        let scope = HttpScope::new(parts, RequestInfo::new().with_root_path("/api"));
        scope.context().insert(Greeting("hello"));
        let context = scope.context().clone();
        let token = context.token().clone();

        let resp = timeout(
            BOUND,
            svc.call_http(scope, BlockingBody::from_bytes("payload")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), http::StatusCode::CREATED);
        assert_eq!(resp.headers()["x-path"], "/items/7");
        assert_eq!(resp.headers()["x-root"], "/api");
        assert_eq!(
            resp.headers()["x-current"],
            "Some(Greeting(\"hello\"))",
            "the scope's context is current while the handler runs"
        );
        let body = resp.into_body();
        assert!(!body.is_streamed());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(18));
        assert_eq!(body.into_full().unwrap(), "hello ada: payload");
        assert_eq!(
            context.get::<Seen>(),
            Some(Seen("POST /api/items/7?x=1".into())),
            "the handler ran with the scope's own context"
        );
        assert!(
            !token.is_cancelled(),
            "a finished call leaves the token alone"
        );
        assert_eq!(pool.in_flight(), 0, "the slot is back once the response is");
    });
}

#[test]
fn an_empty_response_without_a_pool_ends_at_once() {
    run(async {
        let svc = SyncToAsync::new(sync_fn(|_req: SyncRequest| {
            http::Response::builder()
                .status(http::StatusCode::NO_CONTENT)
                .body(SyncBody::empty())
                .unwrap()
        }));
        let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
        let mut body = resp.into_body();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(next_data(&mut body).await.is_none());
        assert_eq!(body.into_full().unwrap(), "");
    });
}

#[test]
fn a_streamed_response_comes_frame_by_frame_and_its_cleanup_runs() {
    run(async {
        let pool = BlockingPool::new(2);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let svc = SyncToAsync::new(sync_fn(move |_req: SyncRequest| {
            let flag = flag.clone();
            http::Response::builder()
                .header("content-type", "text/plain")
                .body(
                    SyncBody::chunks(["one", "two", "three"])
                        .on_close(move || flag.store(true, Ordering::SeqCst)),
                )
                .unwrap()
        }))
        .pool(pool.clone());

        let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/plain");
        let mut body = resp.into_body();
        assert!(body.is_streamed());
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), None);
        for expected in ["one", "two", "three"] {
            assert_eq!(next_data(&mut body).await.unwrap().unwrap(), expected);
        }
        assert!(next_data(&mut body).await.is_none());
        assert!(body.is_end_stream());
        assert!(!body.is_streamed());
        assert!(
            closed.load(Ordering::SeqCst),
            "on_close ran before the end came out"
        );
        assert_eq!(pool.in_flight(), 0, "the slot is back once the body ended");
        // Polled past its end, the body stays ended.
        assert!(next_data(&mut body).await.is_none());
    });
}

#[test]
fn a_writer_body_streams_every_byte_in_order() {
    run(async {
        let svc = SyncToAsync::new(sync_fn(|req: SyncRequest| {
            let lines: usize = req.query_string().parse().unwrap();
            http::Response::new(SyncBody::writer(move |w| {
                for i in 0..lines {
                    w.send(Bytes::from(format!("line {i}\n")))?;
                }
                Ok(())
            }))
        }))
        .pool(BlockingPool::new(2));

        let resp = timeout(BOUND, svc.call_http(scope("/?50"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        let body = resp.into_body();
        assert!(body.is_streamed());
        let expected: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(rest(body).await.unwrap(), expected);
    });
}

#[test]
fn into_full_gives_a_streamed_body_back_unread() {
    run(async {
        let svc = SyncToAsync::new(sync_fn(|_req: SyncRequest| {
            http::Response::new(SyncBody::chunks(["stream", "ed"]))
        }));
        let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        let body = resp.into_body();
        assert!(body.is_streamed());
        let body = body.into_full().expect_err("a streamed body is not full");
        assert!(body.is_streamed(), "given back as it was");
        assert_eq!(rest(body).await.unwrap(), "streamed");
    });
}

/// Waits (bounded) until `counter` is non-zero and has not moved for a while; returns it.
async fn wait_until_still(counter: &AtomicUsize) -> usize {
    timeout(BOUND, async {
        let mut last = usize::MAX;
        let mut still = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = counter.load(Ordering::SeqCst);
            if now == last && now > 0 {
                still += 1;
                if still == 20 {
                    return now;
                }
            } else {
                still = 0;
                last = now;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the producer never stalled: {} chunks written",
            counter.load(Ordering::SeqCst)
        )
    })
}

#[test]
fn a_producer_nobody_reads_stays_a_few_chunks_ahead_then_delivers_everything() {
    const TOTAL: usize = 1000;
    run(async {
        let pool = BlockingPool::new(2);
        let written = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let (count, done) = (written.clone(), finished.clone());
        let svc = SyncToAsync::new(sync_fn(move |_req: SyncRequest| {
            let (count, done) = (count.clone(), done.clone());
            http::Response::new(SyncBody::writer(move |w| {
                for i in 0..TOTAL {
                    w.send(Bytes::from(format!("{i:06}\n")))?;
                    count.fetch_add(1, Ordering::SeqCst);
                }
                done.store(true, Ordering::SeqCst);
                Ok(())
            }))
        }))
        .pool(pool.clone());

        let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        let mut body = resp.into_body();
        let stalled = wait_until_still(&written).await;
        assert!(
            stalled < 32,
            "with nobody reading, the producer got {stalled} of {TOTAL} chunks ahead"
        );
        assert!(!finished.load(Ordering::SeqCst));
        assert_eq!(pool.in_flight(), 1, "the producer still holds its slot");

        // One frame read makes room: the producer moves on.
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "000000\n");
        timeout(BOUND, async {
            while written.load(Ordering::SeqCst) <= stalled {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the producer resumed once a chunk was read");

        let expected: String = (1..TOTAL).map(|i| format!("{i:06}\n")).collect();
        assert_eq!(rest(body).await.unwrap(), expected);
        assert!(finished.load(Ordering::SeqCst));
        assert_eq!(written.load(Ordering::SeqCst), TOTAL);
        assert_eq!(pool.in_flight(), 0);
    });
}

#[derive(Debug, PartialEq)]
enum Produced {
    WriteFailed {
        kind: Option<ErrorKind>,
        token_flipped: bool,
    },
    WroteEverything,
    Closed,
}

#[test]
fn dropping_the_body_mid_stream_flips_the_token_fails_the_next_write_and_runs_cleanup() {
    // Repeated: the order of the flip and the failed write was a race (1 drop in 25).
    for _ in 0..200 {
        dropping_the_body_mid_stream_once();
    }
}

fn dropping_the_body_mid_stream_once() {
    run(async {
        let pool = BlockingPool::new(2);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (token_tx, mut token_rx) = mpsc::unbounded_channel();
        let svc = SyncToAsync::new(sync_fn(move |req: SyncRequest| {
            let token = req.cancellation().clone();
            token_tx.send(token.clone()).unwrap();
            let (on_write, on_close) = (tx.clone(), tx.clone());
            http::Response::new(
                SyncBody::writer(move |w| {
                    // Far more than the body's buffer: this ends by a failed write.
                    for i in 0..100_000 {
                        if let Err(e) = w.send(Bytes::from(format!("chunk {i}\n"))) {
                            let kind = Error::from_io(&e).map(Error::kind);
                            // The token flips before writes start failing, so a producer
                            // can tell a client that left from another failure.
                            let token_flipped = token.is_cancelled();
                            on_write
                                .send(Produced::WriteFailed {
                                    kind,
                                    token_flipped,
                                })
                                .unwrap();
                            return Err(e);
                        }
                    }
                    on_write.send(Produced::WroteEverything).unwrap();
                    Ok(())
                })
                .on_close(move || on_close.send(Produced::Closed).unwrap()),
            )
        }))
        .pool(pool.clone());

        let scope = scope("/");
        let caller = scope.context().token().clone();
        let resp = timeout(BOUND, svc.call_http(scope, BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        let token = report(&mut token_rx).await;
        let mut body = resp.into_body();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "chunk 0\n");
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "chunk 1\n");
        assert!(!token.is_cancelled());
        drop(body);

        assert!(token.is_cancelled(), "dropping the body flipped the token");
        assert!(
            !caller.is_cancelled(),
            "the caller's own token is not the call's"
        );
        assert_eq!(
            report(&mut rx).await,
            Produced::WriteFailed {
                kind: Some(ErrorKind::Disconnected),
                token_flipped: true
            }
        );
        assert_eq!(report(&mut rx).await, Produced::Closed);
        settle(&pool, 0).await;
    });
}

#[test]
fn dropping_the_call_while_the_handler_runs_flips_the_token() {
    run(async {
        let pool = BlockingPool::new(2);
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let svc = SyncToAsync::new(sync_fn(move |req: SyncRequest| {
            let token = req.cancellation().clone();
            started_tx
                .send((req.path().to_owned(), token.clone()))
                .unwrap();
            tx.send((req.path().to_owned(), token.wait_timeout(BOUND)))
                .unwrap();
            http::Response::new(SyncBody::from("too late"))
        }))
        .pool(pool.clone());

        // Never polled: the handler starts anyway (like spawn_blocking).
        let scope_a = scope("/never-polled");
        let token_a = scope_a.context().token().clone();
        let call = svc.call_http(scope_a, BlockingBody::empty());
        let (path, handler_token) = report(&mut started).await;
        assert_eq!(path, "/never-polled");
        assert!(!handler_token.is_cancelled());
        drop(call);
        assert!(
            handler_token.is_cancelled(),
            "dropping the call flips the call's token"
        );
        assert!(
            !token_a.is_cancelled(),
            "the caller's own token is not the call's"
        );
        assert_eq!(report(&mut rx).await, ("/never-polled".to_owned(), true));

        // Polled, then dropped while the handler runs.
        let scope_b = scope("/polled");
        let token_b = scope_b.context().token().clone();
        let mut call = svc.call_http(scope_b, BlockingBody::empty());
        let (path, handler_token) = report(&mut started).await;
        assert_eq!(path, "/polled");
        poll_once_pending(&mut call).await;
        drop(call);
        assert!(handler_token.is_cancelled());
        assert!(!token_b.is_cancelled());
        assert_eq!(report(&mut rx).await, ("/polled".to_owned(), true));

        settle(&pool, 0).await;
    });
}

#[test]
fn a_panic_comes_back_as_panicked_with_its_message_and_frees_the_slot() {
    run(async {
        let pool = BlockingPool::new(1);
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let svc = SyncToAsync::new(sync_fn(move |req: SyncRequest| match req.path() {
            "/handler" => panic!("handler broke at {}", req.path()),
            "/producer" => {
                let flag = flag.clone();
                let chunks = (0..3).map(|i| {
                    if i == 1 {
                        panic!("producer broke at chunk {i}");
                    }
                    Bytes::from("first")
                });
                http::Response::new(
                    SyncBody::chunks(chunks).on_close(move || flag.store(true, Ordering::SeqCst)),
                )
            }
            _ => http::Response::new(SyncBody::from("fine")),
        }))
        .pool(pool.clone());

        let err = timeout(
            BOUND,
            svc.call_http(scope("/handler"), BlockingBody::empty()),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert_eq!(err.message(), Some("handler broke at /handler"));
        assert_eq!(pool.in_flight(), 0);

        // A producer that panics after the head: the body ends with the error.
        let resp = timeout(
            BOUND,
            svc.call_http(scope("/producer"), BlockingBody::empty()),
        )
        .await
        .unwrap()
        .unwrap();
        let mut body = resp.into_body();
        assert_eq!(next_data(&mut body).await.unwrap().unwrap(), "first");
        let err = next_data(&mut body).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked);
        assert_eq!(err.message(), Some("producer broke at chunk 1"));
        assert!(next_data(&mut body).await.is_none());
        assert!(closed.load(Ordering::SeqCst), "the cleanup ran");
        assert_eq!(pool.in_flight(), 0);

        // The pool's one slot still serves.
        let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.into_body().into_full().unwrap(), "fine");
    });
}

/// The pool tests' service on a pool of one slot waiting `queue_timeout`: `/block` reports
/// that it started (on `started`) and waits for `gate`; any other path counts itself in `ran`
/// and answers its path at once.
struct Gated {
    svc: SyncToAsync<amphi_core::SyncFn<GatedFn>>,
    pool: BlockingPool,
    gate: CancellationToken,
    ran: Arc<AtomicUsize>,
}

/// A spawned `call_http`.
type Spawned = tokio::task::JoinHandle<Result<http::Response<HttpBody>, Error>>;

type GatedFn = Box<dyn Fn(SyncRequest) -> amphi_core::SyncResponse + Send + Sync>;

impl Gated {
    /// A service on a pool of one slot, and its `/block` call, already holding that slot
    /// until the gate opens.
    async fn holding(queue_timeout: Duration) -> (Gated, Spawned) {
        let pool = BlockingPool::new(1).queue_timeout(queue_timeout);
        let gate = CancellationToken::new();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let ran = Arc::new(AtomicUsize::new(0));
        let (g, r) = (gate.clone(), ran.clone());
        let handler: GatedFn = Box::new(move |req: SyncRequest| {
            if req.path() == "/block" {
                started_tx.send(()).unwrap();
                let released = g.wait_timeout(BOUND);
                gate_reply(released)
            } else {
                r.fetch_add(1, Ordering::SeqCst);
                http::Response::new(SyncBody::from(req.path().to_owned()))
            }
        });
        let gated = Gated {
            svc: SyncToAsync::new(sync_fn(handler)).pool(pool.clone()),
            pool,
            gate,
            ran,
        };
        let first = tokio::spawn(gated.svc.call_http(scope("/block"), BlockingBody::empty()));
        report(&mut started).await;
        (gated, first)
    }

    /// How many calls other than `/block` ran their handler.
    fn ran(&self) -> usize {
        self.ran.load(Ordering::SeqCst)
    }

    fn call(&self, path: &str) -> amphi_sync_to_async::HttpCall<amphi_core::SyncFn<GatedFn>> {
        self.svc.call_http(scope(path), BlockingBody::empty())
    }
}

/// The complete body of a spawned call's response, within [`BOUND`].
async fn full_body(call: Spawned) -> Bytes {
    let resp = timeout(BOUND, call).await.unwrap().unwrap().unwrap();
    resp.into_body().into_full().unwrap()
}

#[test]
fn a_call_past_a_full_pool_fails_saturated_and_its_handler_never_runs() {
    run(async {
        let (g, first) = Gated::holding(Duration::from_millis(50)).await;
        assert_eq!(g.pool.in_flight(), 1);

        let err = timeout(BOUND, g.call("/second"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Saturated);
        assert_eq!(g.pool.in_flight(), 1, "the failed call took no slot");

        g.gate.cancel();
        assert_eq!(full_body(first).await, "released");
        assert_eq!(g.pool.in_flight(), 0);
        assert_eq!(g.ran(), 0, "the saturated handler never ran");

        // The pool serves again.
        assert_eq!(full_body(tokio::spawn(g.call("/third"))).await, "/third");
        assert_eq!(g.ran(), 1);
    });
}

#[test]
fn a_queued_call_runs_once_the_slot_comes_free_and_a_dropped_one_never_does() {
    run(async {
        let (g, first) = Gated::holding(Duration::from_secs(60)).await;

        let mut dropped = g.call("/dropped");
        poll_once_pending(&mut dropped).await;
        let second = tokio::spawn(g.call("/second"));
        drop(dropped);
        assert_eq!(g.pool.in_flight(), 1, "waiting calls hold no slot");
        assert_eq!(g.ran(), 0, "no queued handler ran yet");

        g.gate.cancel();
        assert_eq!(full_body(first).await, "released");
        assert_eq!(full_body(second).await, "/second");
        assert_eq!(g.ran(), 1, "the dropped call's handler never ran");
        assert_eq!(g.pool.in_flight(), 0);
    });
}

fn thread_name() -> String {
    format!("{:?}", thread::current().id())
}

#[test]
fn thread_sensitive_runs_the_handler_and_its_body_on_the_contexts_thread() {
    run(async {
        let ts = ThreadSensitive::new();
        let ts_thread: ThreadId = sync_to_async(|| thread::current().id())
            .thread_sensitive(&ts)
            .await
            .unwrap();
        assert_eq!(ts.thread().map(|t| t.id()), Some(ts_thread));

        let here = ts.clone();
        let svc = SyncToAsync::new(sync_fn(move |_req: SyncRequest| {
            http::Response::builder()
                .header("x-runs-here", here.runs_here().to_string())
                .header("x-thread", thread_name())
                // Produced lazily, by whoever drains the body.
                .body(SyncBody::chunks(std::iter::once_with(thread_name)))
                .unwrap()
        }))
        .thread_sensitive(ts.clone())
        .pool(BlockingPool::new(4));

        let test_thread = thread_name();
        for _ in 0..3 {
            let resp = timeout(BOUND, svc.call_http(scope("/"), BlockingBody::empty()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.headers()["x-runs-here"], "true");
            assert_eq!(resp.headers()["x-thread"], format!("{ts_thread:?}"));
            let body = rest(resp.into_body()).await.unwrap();
            assert_eq!(body, format!("{ts_thread:?}"), "the body too");
            assert_ne!(body, test_thread);
        }
    });
}

#[test]
fn thread_sensitive_per_request_runs_each_request_on_its_contexts_thread() {
    run(async {
        let svc = SyncToAsync::new(sync_fn(|_req: SyncRequest| {
            let current = ThreadSensitive::current().expect("the request has a context");
            http::Response::builder()
                .header("x-runs-here", current.runs_here().to_string())
                .body(SyncBody::from(thread_name()))
                .unwrap()
        }))
        .thread_sensitive_per_request();

        // Both request contexts stay alive, so neither thread-sensitive context ends (a
        // thread whose context ended may serve the next one).
        let mut contexts = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..2 {
            let scope = scope("/");
            let context = scope.context().clone();
            let resp = timeout(BOUND, svc.call_http(scope, BlockingBody::empty()))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(resp.headers()["x-runs-here"], "true");
            let ran_on = resp.into_body().into_full().unwrap();
            let ts = context
                .get::<ThreadSensitive>()
                .expect("the request's context got its thread-sensitive context");
            assert_eq!(ran_on, format!("{:?}", ts.thread().unwrap().id()));
            threads.push(ran_on);
            contexts.push(context);
        }
        assert_ne!(
            threads[0], threads[1],
            "one thread per live request context"
        );
    });
}

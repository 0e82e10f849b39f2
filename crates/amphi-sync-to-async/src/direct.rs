//! [`SyncToAsync::call_http`]: one request served without the event protocol, for servers
//! that hold the request body already and want an `http::Response` back.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{BlockingBody, Error, HttpScope, SyncHandler};
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::exchange::{AsyncEnd, Exchange, Out, Outcome};
use crate::handler::{spawn_blocking_side, SyncToAsync};
use crate::pool::{BlockingPool, Slot};

impl<H: SyncHandler> SyncToAsync<H> {
    /// Serves one HTTP request directly: the handler gets `scope` and `body` as its
    /// [`SyncRequest`](amphi_core::SyncRequest), and the future resolves to its response once
    /// the handler has returned (a body complete in hand) or started streaming (a body that
    /// keeps pulling from the blocking side, with backpressure).
    ///
    /// This is the path a server takes for a request whose body it already holds (every GET):
    /// no `receive`/`send` events, no messages, one shared allocation between the two sides.
    /// The pool, thread-sensitive mode and cleanup are the same as for
    /// [`AsyncHandler::call`](amphi_core::AsyncHandler::call).
    ///
    /// Like `tokio::task::spawn_blocking`, the call starts the handler at once when a slot is
    /// free (the future need not be polled for it to run); a call that has to wait for a slot
    /// waits when polled.
    ///
    /// # Panics
    ///
    /// Call it within a tokio runtime: starting the handler may call `spawn_blocking`, which
    /// panics outside one.
    ///
    /// # Errors
    ///
    /// Resolves to `Err` without a response when the pool had no free slot within its queue
    /// timeout ([`ErrorKind::Saturated`](amphi_core::ErrorKind::Saturated); the handler did not
    /// run), the handler panicked ([`ErrorKind::Panicked`](amphi_core::ErrorKind::Panicked),
    /// with the panic's message), or the handler failed: its own error, as a
    /// [`sync_fn`](amphi_core::sync_fn) closure's `Err` (see
    /// [`plumbing::take_handler_error`](amphi_core::plumbing::take_handler_error)). A failure
    /// while a streamed body is produced comes out of the body as its error.
    ///
    /// The handler's context is a child of the scope's (it shares its values; its token is
    /// the call's own), as on the `AsyncHandler` path. `body` is handed over as it is: its
    /// declared length (`BlockingBody::with_content_length`) is the caller's to set, and a
    /// `BodyTooLarge` its reads return is the handler's to answer.
    ///
    /// # Cancellation
    ///
    /// Dropping the future, or the streamed body before its end, flips the call's token (the
    /// handler's [`SyncRequest::cancellation`](amphi_core::SyncRequest::cancellation)) and
    /// fails the producer's body writes, so its cleanup runs; the caller's own token does not
    /// flip. A call dropped while it waits for a slot takes none. A call dropped, or whose
    /// scope context's token is cancelled, before its handler started (while it waited for a
    /// slot or for a thread) never starts its handler: a cancelled call that is still awaited
    /// resolves to [`ErrorKind::Cancelled`](amphi_core::ErrorKind::Cancelled).
    ///
    /// # Examples
    ///
    /// ```
    /// use amphi_core::{sync_fn, BlockingBody, HttpScope, RequestInfo, SyncBody, SyncRequest};
    /// use amphi_sync_to_async::{BlockingPool, SyncToAsync};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let hello = SyncToAsync::new(sync_fn(|req: SyncRequest| {
    ///     http::Response::new(SyncBody::from(format!("hello {}", req.uri().path())))
    /// }))
    /// .pool(BlockingPool::new(4));
    ///
    /// let (parts, ()) = http::Request::get("/you").body(()).unwrap().into_parts();
    /// let scope = HttpScope::new(parts, RequestInfo::new());
    /// let response = hello.call_http(scope, BlockingBody::empty()).await.unwrap();
    /// assert_eq!(response.into_body().into_full().unwrap(), "hello /you");
    /// # }
    /// ```
    pub fn call_http(&self, scope: HttpScope, body: BlockingBody) -> HttpCall<H> {
        let start = Start {
            handler: self.handler.clone(),
            place: self.place.thread_for(&scope),
            scope,
            body,
        };
        let slot = match &self.pool {
            None => None,
            Some(pool) => match pool.try_acquire() {
                Some(slot) => Some(slot),
                // The wait for a slot holds a timer: only the calls that wait carry it.
                None => {
                    let pool = pool.clone();
                    let token = start.scope.context().token().clone();
                    // The wait hands the pool back with the slot, for the launch.
                    let wait: QueueWait =
                        Box::pin(async move { Ok((pool.acquire(&token).await?, pool)) });
                    return HttpCall {
                        stage: Stage::Queued(Box::new((wait, start))),
                    };
                }
            },
        };
        HttpCall {
            stage: match start.launch(self.pool.as_ref(), slot) {
                Ok(running) => Stage::Running(running),
                Err(e) => Stage::Failed(e),
            },
        }
    }
}

/// The future of [`SyncToAsync::call_http`].
#[must_use = "futures do nothing unless polled"]
pub struct HttpCall<H> {
    stage: Stage<H>,
}

// The future stays small (a server keeps it inline in its own request future): what a call
// that has to wait for a slot keeps meanwhile is boxed.
enum Stage<H> {
    /// Every slot was taken: waiting for one, with a timer.
    Queued(Box<(QueueWait, Start<H>)>),
    Running(AsyncEnd),
    /// The handler could not be started.
    Failed(Error),
    Done,
}

type QueueWait = Pin<Box<dyn Future<Output = Result<(Slot, BlockingPool), Error>> + Send>>;

struct Start<H> {
    handler: Arc<H>,
    place: Option<amphi_core::ThreadSensitive>,
    scope: HttpScope,
    body: BlockingBody,
}

impl<H: SyncHandler> Start<H> {
    /// Starts the handler on `pool`'s lane (or plain `spawn_blocking` without a pool).
    fn launch(self, pool: Option<&BlockingPool>, slot: Option<Slot>) -> Result<AsyncEnd, Error> {
        // The call's own token, a child of the caller's: dropping the call cancels the call,
        // not the caller's request.
        let context = self.scope.context().child();
        let guard = context.token().clone().drop_guard();
        let exchange = Exchange::new();
        spawn_blocking_side(
            self.handler,
            pool,
            slot,
            self.place,
            self.scope.with_context(context),
            self.body,
            exchange.clone(),
        )?;
        Ok(AsyncEnd::new(exchange, guard))
    }
}

impl<H: SyncHandler> Future for HttpCall<H> {
    type Output = Result<http::Response<HttpBody>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.stage, Stage::Done) {
                Stage::Queued(mut queued) => match queued.0.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.stage = Stage::Queued(queued);
                        return Poll::Pending;
                    }
                    Poll::Ready(waited) => {
                        let (slot, pool) = waited?;
                        let (_, start) = *queued;
                        this.stage = Stage::Running(start.launch(Some(&pool), Some(slot))?);
                    }
                },
                Stage::Failed(e) => return Poll::Ready(Err(e)),
                Stage::Running(mut running) => {
                    let Some(out) = running.exchange.take_out(cx.waker()) else {
                        this.stage = Stage::Running(running);
                        return Poll::Pending;
                    };
                    return Poll::Ready(match out {
                        Ok(Out::Head(parts)) => Ok(http::Response::from_parts(
                            parts,
                            HttpBody {
                                kind: Kind::Stream(running),
                            },
                        )),
                        Ok(Out::Chunk(_)) => {
                            unreachable!("the blocking side sends a streamed body's head first")
                        }
                        Err(outcome) => {
                            running.finished();
                            match outcome? {
                                Outcome::Full(parts, bytes) => Ok(http::Response::from_parts(
                                    parts,
                                    HttpBody {
                                        kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
                                    },
                                )),
                                Outcome::Streamed => unreachable!(
                                    "a streamed outcome comes after the head, which returns"
                                ),
                            }
                        }
                    });
                }
                Stage::Done => panic!("HttpCall polled after it completed"),
            }
        }
    }
}

impl<H> fmt::Debug for HttpCall<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Queued(_) => "queued",
            Stage::Failed(_) => "failed",
            Stage::Running(_) => "running",
            Stage::Done => "done",
        };
        f.debug_struct("HttpCall").field("stage", &stage).finish()
    }
}

/// The body of a response from [`SyncToAsync::call_http`]: complete bytes, or the chunks a
/// blocking producer is still writing.
///
/// A streamed body pulls one chunk at a time; the producer blocks while a few chunks wait
/// unread (backpressure). Dropping the body before its end flips the request's cancellation
/// token and fails the producer's next write, so its cleanup runs.
pub struct HttpBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(AsyncEnd),
    Ended,
}

impl HttpBody {
    /// The whole body, when the handler answered in one piece; the body itself when it
    /// streams.
    ///
    /// # Errors
    ///
    /// Returns the body unchanged when it is streamed.
    pub fn into_full(self) -> Result<Bytes, HttpBody> {
        match self.kind {
            Kind::Full(bytes) => Ok(bytes.unwrap_or_default()),
            kind => Err(HttpBody { kind }),
        }
    }

    /// Whether the body is still being produced by the blocking side.
    pub fn is_streamed(&self) -> bool {
        matches!(self.kind, Kind::Stream(_))
    }
}

impl http_body::Body for HttpBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let running = match &mut this.kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(running) => running,
            Kind::Ended => return Poll::Ready(None),
        };
        loop {
            let Some(out) = running.exchange.take_out(cx.waker()) else {
                return Poll::Pending;
            };
            match out {
                Ok(Out::Chunk(chunk)) if chunk.is_empty() => continue,
                Ok(Out::Chunk(chunk)) => return Poll::Ready(Some(Ok(Frame::data(chunk)))),
                Ok(Out::Head(_)) => unreachable!("the blocking side sends one head"),
                Err(outcome) => {
                    running.finished();
                    this.kind = Kind::Ended;
                    return Poll::Ready(match outcome {
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None) | Kind::Ended)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(_) => SizeHint::default(),
            Kind::Ended => SizeHint::with_exact(0),
        }
    }
}

impl fmt::Debug for HttpBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HttpBody");
        match &self.kind {
            Kind::Full(bytes) => d.field("full", &bytes.as_ref().map_or(0, Bytes::len)),
            Kind::Stream(_) => d.field("streamed", &true),
            Kind::Ended => d.field("ended", &true),
        };
        d.finish()
    }
}

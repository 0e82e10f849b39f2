//! One request/response exchange between a connection and a handler: the state `send` fills
//! and the response side drains, and the request body `receive` reads from hyper.
//!
//! Nothing here spawns or uses a channel. The handler future is polled by whoever needs the
//! next piece of the response (the service future for the head, the response body for the
//! rest), and `send` writes into a one-chunk slot that the same poller empties. A full slot
//! makes `send` wait; the poller empties it when hyper asks for the next frame and then polls
//! the handler again, so no waker is needed for that wait and backpressure is hyper's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use crate::incoming::Incoming;
use amphi_core::plumbing::{SharedEventSource, SharedMessageSink};
use amphi_core::{CancellationToken, Error, ErrorKind, Event, Message};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body as _;
use tokio::time::{Instant, Sleep};

use crate::response_rate::{WaitState, Watched};

/// The state shared by the handler's `send`, its `receive` and the poller: one allocation
/// per request for all three.
#[derive(Default)]
pub(crate) struct Exchange {
    inner: Mutex<Outbox>,
    /// How long a streamed response has been waiting for its client, for the watchdog.
    pub(crate) wait: WaitState,
    /// The request body `receive` reads; `None` for an exchange without one (a sync
    /// handler's streamed body, pumped out after its request was read).
    incoming: Mutex<Option<IncomingSource>>,
}

/// The response slot: what the handler has sent that the poller has not handed on yet. Its
/// flags are read in one place, [`Outbox::head`] for the response future and
/// [`Outbox::next_frame`] for the response body, which say what the poller does next.
#[derive(Default)]
pub(crate) struct Outbox {
    /// The response head, until the poller takes it.
    head: Option<(StatusCode, HeaderMap)>,
    trailers_announced: bool,
    /// The one body chunk waiting for the poller.
    chunk: Option<Bytes>,
    /// Trailers collected so far.
    trailers: Option<HeaderMap>,
    /// The last message of the response was sent (the body end, or the last trailers).
    response_done: bool,
    /// The request body passed the limit.
    body_too_large: bool,
    /// The request body arrived slower than the server's minimum rate.
    body_too_slow: bool,
    /// The request body broke: the client went away before sending all of it, so whatever
    /// the handler answers goes to nobody.
    client_gone: bool,
    /// A `receive` waiting for the response to end, to yield `http.disconnect`.
    recv_waker: Option<Waker>,
}

/// What the response future does after polling the handler: see [`Outbox::head`].
pub(crate) enum Head {
    /// No response head yet, and the handler is still running.
    Pending,
    /// The head is here and the body follows, pulled from the handler by the response body;
    /// with its exact length when the handler has sent all of it already.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        exact_len: Option<u64>,
        /// The handler returned this error after completing its response.
        late: Option<Error>,
    },
    /// The handler returned with its whole response sent.
    Complete {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        /// The handler returned this error after completing its response.
        late: Option<Error>,
    },
    /// The handler failed before its response started.
    Failed {
        error: Error,
        body_too_large: bool,
        body_too_slow: bool,
    },
    /// The handler returned without starting a response because its request body passed the
    /// limit.
    BodyTooLarge,
    /// The handler returned `Ok` without finishing its response (`started`: it sent a head).
    Unfinished { started: bool },
}

/// What the response body hands hyper next: see [`Outbox::next_frame`].
pub(crate) enum Next {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The response is complete and its handler has returned.
    End {
        /// The client went away while sending its request (see [`Outbox::client_gone`]).
        client_gone: bool,
    },
    /// The handler returned without finishing its response.
    Unfinished,
    /// Nothing to hand on: the handler must be polled for more.
    PollHandler,
}

impl Outbox {
    /// What the response future does, given what polling the handler returned.
    pub(crate) fn head(&mut self, handler: Poll<Result<(), Error>>) -> Head {
        let result = match handler {
            Poll::Pending => {
                let Some((status, headers)) = self.head.take() else {
                    return Head::Pending;
                };
                // Answered in one piece while the handler has not returned yet: the body goes
                // out with its exact length, and keeps polling the handler until it returns.
                let complete =
                    self.response_done && self.trailers.is_none() && !self.trailers_announced;
                let exact_len = complete.then(|| self.chunk.as_ref().map_or(0, |c| c.len() as u64));
                return Head::Stream {
                    status,
                    headers,
                    exact_len,
                    late: None,
                };
            }
            Poll::Ready(result) => result,
        };
        match (self.head.take(), result) {
            (Some((status, headers)), result) if self.response_done => {
                let late = result.err();
                if self.trailers.is_some() {
                    // Trailers are a frame of their own.
                    Head::Stream {
                        status,
                        headers,
                        exact_len: None,
                        late,
                    }
                } else {
                    let body = self.chunk.take().unwrap_or_default();
                    Head::Complete {
                        status,
                        headers,
                        body,
                        late,
                    }
                }
            }
            (_, Err(error)) => Head::Failed {
                error,
                body_too_large: self.body_too_large,
                body_too_slow: self.body_too_slow,
            },
            (None, Ok(())) if self.body_too_large => Head::BodyTooLarge,
            (head, Ok(())) => Head::Unfinished {
                started: head.is_some(),
            },
        }
    }

    /// What the response body hands hyper next; `handler_running` says whether the handler
    /// has returned yet.
    pub(crate) fn next_frame(&mut self, handler_running: bool) -> Next {
        if let Some(chunk) = self.chunk.take() {
            return Next::Data(chunk);
        }
        match (self.response_done, handler_running) {
            (true, _) if self.trailers.is_some() => {
                Next::Trailers(self.trailers.take().expect("checked just above"))
            }
            (true, false) => Next::End {
                client_gone: self.client_gone,
            },
            (false, false) => Next::Unfinished,
            (_, true) => Next::PollHandler,
        }
    }

    /// Whether [`next_frame`](Outbox::next_frame) has a frame to hand on without polling the
    /// handler: after a poll that left the handler pending, whether the body waits for hyper.
    pub(crate) fn has_frame(&self) -> bool {
        self.chunk.is_some() || (self.response_done && self.trailers.is_some())
    }

    /// Whether the handler has sent the last message of its response.
    pub(crate) fn is_done(&self) -> bool {
        self.response_done
    }

    /// Whether the client went away while sending its request body: whatever the handler
    /// answers goes to nobody.
    pub(crate) fn client_gone(&self) -> bool {
        self.client_gone
    }
}

impl Exchange {
    /// An exchange whose `receive` reads `incoming`.
    pub(crate) fn with_body(incoming: IncomingSource) -> Exchange {
        Exchange {
            incoming: Mutex::new(Some(incoming)),
            ..Exchange::default()
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Every critical section is a few field updates that cannot panic halfway, so a
        // poisoned lock still holds consistent state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The watchdog watches a streamed response through its exchange.
impl Watched for Exchange {
    fn wait_state(&self) -> &WaitState {
        &self.wait
    }
}

/// The request's `send` writes into the exchange.
impl SharedMessageSink for Exchange {
    fn poll_ready(&self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        // No waker: the poller empties the slot and then polls the handler again itself.
        if self.lock().chunk.is_some() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(&self, message: Message) -> Result<(), Error> {
        let mut out = self.lock();
        // `Sender` has already checked the order of messages for the http scope.
        match message {
            Message::ResponseStart {
                status,
                headers,
                trailers,
            } => {
                out.head = Some((status, headers));
                out.trailers_announced = trailers;
            }
            Message::ResponseBody { body, more_body } => {
                if !body.is_empty() {
                    out.chunk = Some(body);
                }
                if !more_body && !out.trailers_announced {
                    out.finish();
                }
            }
            Message::ResponseTrailers {
                headers,
                more_trailers,
            } => {
                out.trailers
                    .get_or_insert_with(HeaderMap::new)
                    .extend(headers);
                if !more_trailers {
                    out.finish();
                }
            }
            other => {
                return Err(Error::protocol(format!(
                    "{} in an http exchange",
                    other.type_name()
                )))
            }
        }
        Ok(())
    }
}

impl Outbox {
    fn finish(&mut self) {
        self.response_done = true;
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Body,
    /// The body ended (or the client went away): `http.disconnect` once the response is done.
    Ended,
    Gone,
    TooLarge,
    /// The body arrived slower than the minimum rate.
    TooSlow,
}

/// The slowest a request body may arrive: see `Server::min_body_rate`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRate {
    pub(crate) bytes_per_second: u64,
    pub(crate) grace: Duration,
}

impl BodyRate {
    /// How long, in total, a client that has sent `received` bytes may keep its handler
    /// waiting: the grace period, plus the time each byte buys at the minimum rate.
    fn allowance(&self, received: u64) -> Duration {
        self.grace + Duration::from_secs_f64(received as f64 / self.bytes_per_second as f64)
    }
}

/// The clock of [`BodyRate`]: how long the handler has waited for the client so far.
pub(crate) struct RateClock {
    rate: BodyRate,
    waited: Duration,
    /// Since when the handler waits for the next frame, while it does.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl RateClock {
    pub(crate) fn new(rate: BodyRate) -> RateClock {
        RateClock {
            rate,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
        }
    }

    /// The minimum rate, for error messages.
    pub(crate) fn bytes_per_second(&self) -> u64 {
        self.rate.bytes_per_second
    }

    /// The handler waits for the client: whether the client is now too slow, else arms the
    /// timer that wakes the handler when it would be.
    pub(crate) fn poll_too_slow(&mut self, received: u64, cx: &mut TaskContext<'_>) -> bool {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let deadline = since + self.rate.allowance(received).saturating_sub(self.waited);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    /// Something arrived: the wait is over.
    pub(crate) fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }
}

/// The request's `receive` reads the body the exchange holds.
impl SharedEventSource for Exchange {
    fn poll_event(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        // Only the handler's `receive` takes this lock, so it is never contended; a panic
        // while it was held (inside hyper's body) leaves the reader's state as it was.
        let mut incoming = self.incoming.lock().unwrap_or_else(|p| p.into_inner());
        match incoming.as_mut() {
            Some(source) => source.poll_event(self, cx),
            None => Poll::Ready(Ok(Event::Disconnect)),
        }
    }

    /// The handler dropped its `receive`: let hyper's body go now, as a body the handler
    /// owned would have gone, rather than with the response.
    fn release(&self) {
        let body = self
            .incoming
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(body);
    }
}

/// What a request's `receive` reads: hyper's body, directly.
pub(crate) struct IncomingSource {
    body: Option<Incoming>,
    limit: u64,
    received: u64,
    state: Reading,
    /// The request's token, flipped when the body breaks (the client went away).
    token: CancellationToken,
    clock: Option<RateClock>,
    /// A body left unread is read to its end and thrown away (see [`discard`]): HTTP/1.1
    /// requests whose connection can stay open.
    discard_unread: bool,
}

impl IncomingSource {
    pub(crate) fn new(
        body: Incoming,
        limit: u64,
        token: CancellationToken,
        discard_unread: bool,
    ) -> IncomingSource {
        IncomingSource {
            body: Some(body),
            limit,
            received: 0,
            state: Reading::Body,
            token,
            clock: None,
            discard_unread,
        }
    }

    /// Enforces a minimum rate on the body, counting the time the handler waits for it.
    pub(crate) fn with_rate(mut self, rate: Option<BodyRate>) -> IncomingSource {
        self.clock = rate.map(RateClock::new);
        self
    }
}

impl IncomingSource {
    fn poll_event(
        &mut self,
        exchange: &Exchange,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Result<Event, Error>> {
        loop {
            match self.state {
                Reading::Body => {}
                Reading::TooLarge => {
                    return Poll::Ready(Err(Error::new(ErrorKind::BodyTooLarge)
                        .with_message(format!("the limit is {} bytes", self.limit))))
                }
                Reading::TooSlow => {
                    let rate = self.clock.as_ref().map_or(0, RateClock::bytes_per_second);
                    return Poll::Ready(Err(Error::new(ErrorKind::TimedOut).with_message(
                        format!("the request body arrived slower than {rate} bytes/s"),
                    )));
                }
                Reading::Gone => return Poll::Ready(Ok(Event::Disconnect)),
                Reading::Ended => {
                    // ASGI: after the body, `receive` waits until the response is complete
                    // (or the client leaves, which drops the handler) and then says
                    // `http.disconnect`. Returning it earlier would tell handlers that listen
                    // for disconnects, as Django's does, that the client has gone.
                    let mut out = exchange.lock();
                    if out.response_done {
                        return Poll::Ready(Ok(Event::Disconnect));
                    }
                    out.recv_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            let body = self
                .body
                .as_mut()
                .expect("the body is kept while state is Body");
            let polled = Pin::new(&mut *body).poll_frame(cx);
            if let Some(clock) = &mut self.clock {
                if polled.is_ready() {
                    clock.stop_waiting();
                } else if clock.poll_too_slow(self.received, cx) {
                    tracing::debug!(
                        received = self.received,
                        "request body too slow; giving up on it"
                    );
                    self.end(Reading::TooSlow);
                    exchange.lock().body_too_slow = true;
                    continue;
                }
            }
            let frame = match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.end(Reading::Ended);
                    return Poll::Ready(Ok(Event::Request {
                        body: Bytes::new(),
                        more_body: false,
                    }));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "request body read failed; treating it as a disconnect");
                    // hyper keeps polling the request (HTTP/1.1 stops watching the socket once
                    // the body failed), so the handler would never be dropped: flip its token
                    // here, as a disconnect does.
                    self.token.cancel();
                    self.end(Reading::Gone);
                    exchange.lock().client_gone = true;
                    return Poll::Ready(Ok(Event::Disconnect));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                // Request trailers are not part of the protocol; skip them.
                continue;
            };
            self.received += data.len() as u64;
            if self.received > self.limit {
                self.end(Reading::TooLarge);
                exchange.lock().body_too_large = true;
                continue;
            }
            let more_body = !body.is_end_stream();
            if !more_body {
                self.end(Reading::Ended);
            } else if data.is_empty() {
                continue;
            }
            return Poll::Ready(Ok(Event::Request {
                body: data,
                more_body,
            }));
        }
    }
}

impl IncomingSource {
    fn end(&mut self, state: Reading) {
        self.state = state;
        self.body = None;
    }
}

/// A handler that answers without reading all of its request body leaves the rest on the
/// connection. hyper closes an HTTP/1.1 connection whose body is dropped unread unless the
/// rest has already arrived, so whether the client's next request finds it open would
/// depend on timing. Like nginx, the server reads the rest and throws it away, so the
/// connection stays open; a body whose rest passes [`DISCARD_LIMIT`], or that takes longer
/// than [`DISCARD_TIME`], is dropped and the connection closes after its response. Not done
/// where the connection closes anyway (`Connection: close`, HTTP/1.0) or the client waits to
/// be asked for its body (`Expect: 100-continue`: reading would ask for it). HTTP/2 needs none
/// of this: dropping a stream's body resets that stream alone.
impl Drop for IncomingSource {
    fn drop(&mut self) {
        // Checked here, not in `discard`: most bodies left are empty (an async handler's
        // GET), and those need no call.
        if self.discard_unread && self.state == Reading::Body {
            if let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) {
                // Never more than the body limit allows.
                discard(
                    body,
                    DISCARD_LIMIT.min(self.limit.saturating_sub(self.received)),
                );
            }
        }
    }
}

/// Whether what a handler leaves unread of a request's body is read and thrown away so the
/// connection stays open (see `IncomingSource`'s `Drop`): HTTP/1.1 only, and not when the
/// connection closes after this request anyway (`Connection: close`) or the client waits to
/// be asked for its body (`Expect: 100-continue`: reading it would ask for what the handler
/// did not want).
pub(crate) fn discards_unread(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11
        && !crate::reply::has(headers, &http::header::EXPECT)
        && !crate::reply::has_token(headers, &http::header::CONNECTION, "close")
}

/// The most of an unread request body the server reads to keep its connection open.
const DISCARD_LIMIT: u64 = 256 * 1024;

/// The longest the server waits for the rest of an unread request body.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads the rest of `body` and throws it away, in a task of its own: see
/// [`IncomingSource`]'s `Drop`.
#[cold]
fn discard(body: Incoming, limit: u64) {
    if body.size_hint().lower() > limit {
        return;
    }
    // Dropped where no runtime is current (never on the server's own threads): hyper closes.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut left = limit;
        let read = async {
            while let Some(Ok(frame)) =
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(len) {
                    Some(rest) => left = rest,
                    None => return,
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_TIME, read).await;
    });
}

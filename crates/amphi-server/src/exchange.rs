//! One request/response exchange between a connection and a handler: the state `send` fills
//! and the response side drains, and the request body `receive` reads from hyper.
//!
//! Nothing here spawns or uses a channel. The handler future is polled by whoever needs the
//! next piece of the response (the service future for the head, the response body for the
//! rest), and `send` writes into a one-chunk slot that the same poller empties. A full slot
//! makes `send` wait; the poller empties it when hyper asks for the next frame and then polls
//! the handler again, so no waker is needed for that wait and backpressure is hyper's own.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use amphi_core::{CancellationToken, Error, ErrorKind, Event, EventSource, Message, MessageSink};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;

/// The response state shared by the handler's `send`, its `receive` and the poller.
#[derive(Default)]
pub(crate) struct Exchange {
    inner: Mutex<Outbox>,
}

#[derive(Default)]
pub(crate) struct Outbox {
    /// The response head, until the poller takes it.
    pub(crate) head: Option<(StatusCode, HeaderMap)>,
    /// Whether a response start was sent (the head may already be taken).
    pub(crate) started: bool,
    pub(crate) trailers_announced: bool,
    /// The one body chunk waiting for the poller.
    pub(crate) chunk: Option<Bytes>,
    /// Trailers collected so far.
    pub(crate) trailers: Option<HeaderMap>,
    /// The last message of the response was sent (the body end, or the last trailers).
    pub(crate) response_done: bool,
    /// The request body passed the limit.
    pub(crate) body_too_large: bool,
    /// A `receive` waiting for the response to end, to yield `http.disconnect`.
    recv_waker: Option<Waker>,
}

impl Exchange {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Every critical section is a few field updates that cannot panic halfway, so a
        // poisoned lock still holds consistent state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The [`MessageSink`] behind a request's `send`.
pub(crate) struct ExchangeSink(pub(crate) Arc<Exchange>);

impl MessageSink for ExchangeSink {
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        // No waker: the poller empties the slot and then polls the handler again itself.
        if self.0.lock().chunk.is_some() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        let mut out = self.0.lock();
        // `Sender` has already checked the order of messages for the http scope.
        match message {
            Message::ResponseStart {
                status,
                headers,
                trailers,
            } => {
                out.head = Some((status, headers));
                out.started = true;
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
}

/// The [`EventSource`] behind a request's `receive`: reads hyper's body directly.
pub(crate) struct IncomingSource {
    body: Option<Incoming>,
    limit: u64,
    received: u64,
    state: Reading,
    exchange: Arc<Exchange>,
    /// The request's token, flipped when the body breaks (the client went away).
    token: CancellationToken,
}

impl IncomingSource {
    pub(crate) fn new(
        body: Incoming,
        limit: u64,
        exchange: Arc<Exchange>,
        token: CancellationToken,
    ) -> IncomingSource {
        IncomingSource {
            body: Some(body),
            limit,
            received: 0,
            state: Reading::Body,
            exchange,
            token,
        }
    }
}

impl EventSource for IncomingSource {
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        loop {
            match self.state {
                Reading::Body => {}
                Reading::TooLarge => {
                    return Poll::Ready(Err(Error::new(ErrorKind::BodyTooLarge)
                        .with_message(format!("the limit is {} bytes", self.limit))))
                }
                Reading::Gone => return Poll::Ready(Ok(Event::Disconnect)),
                Reading::Ended => {
                    // ASGI: after the body, `receive` waits until the response is complete
                    // (or the client leaves, which drops the handler) and then says
                    // `http.disconnect`. Returning it earlier would tell handlers that listen
                    // for disconnects, as Django's does, that the client has gone.
                    let mut out = self.exchange.lock();
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
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
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
                self.exchange.lock().body_too_large = true;
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

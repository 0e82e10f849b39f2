//! [`SyncToAsync`](crate::SyncToAsync) for websocket scopes: the sync handler's
//! [`websocket`](amphi_core::SyncHandler::websocket) runs on a blocking thread for the whole
//! session, and its [`BlockingWebSocket`](amphi_core::BlockingWebSocket) talks to the
//! connection through two small bounded queues, one each way, that the session's future
//! pumps from `receive` and into `send`.
//!
//! One allocation per session holds both queues; it is both ends the blocking side's
//! websocket polls (a `SharedEventSource` and a `SharedMessageSink`), so an `AsyncToSync`
//! that serves the session with an async handler polls the same queues without a thread of
//! its own. The blocking side waits by parking its thread (amphi-core's blocking websocket
//! does), the async side through its task's waker: each direction has its own waker, so a
//! reading thread and a writing thread wait at once.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, Waker};

use amphi_core::plumbing::{SharedEventSource, SharedMessageSink};
use amphi_core::{
    CancellationToken, Cancelled, DropGuard, Error, ErrorKind, Event, HttpScope, Message, Receiver,
    Sender, SyncHandler, SyncWebSocketRequest, ThreadSensitive,
};

use crate::handler::{spawn_blocking_work, Report};
use crate::pool::{BlockingPool, Slot};

/// Client messages (and the final disconnect) queued ahead of the blocking reader.
pub(crate) const EVENTS_CAPACITY: usize = 4;
/// Handler messages queued ahead of the connection.
pub(crate) const MESSAGES_CAPACITY: usize = 4;

/// The queues between a session's future and its blocking handler.
pub(crate) struct Queues {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    events: VecDeque<Result<Event, Error>>,
    /// The disconnect that ended the events: yielded again once the queue is drained, as a
    /// source keeps yielding its last event (ASGI's rule).
    end: Option<Event>,
    messages: VecDeque<Message>,
    /// How the blocking side ended, until the future takes it.
    outcome: Option<Result<(), Error>>,
    /// The blocking side ended (returned, panicked, or was dropped unrun).
    blocking_done: bool,
    /// The future is gone (dropped, or returned): the blocking side's calls fail.
    async_gone: bool,
    /// The client closed or dropped: the blocking side's sends fail (nothing more can reach
    /// it), while its reads still get the events queued before the disconnect.
    client_gone: bool,
    /// The future, waiting for a message, an outcome or room for an event.
    async_waker: Option<Waker>,
    /// The blocking side, waiting for an event.
    reader: Option<Waker>,
    /// The blocking side, waiting for room for a message.
    writer: Option<Waker>,
}

fn gone() -> Error {
    Error::new(ErrorKind::Disconnected).with_message("the websocket's connection went away")
}

fn store(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

impl Queues {
    fn new() -> Arc<Queues> {
        Arc::new(Queues {
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few queue operations and flags; a panic cannot leave
        // them half-updated, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- the session's future ----

    /// Whether another event fits; registers `waker` if not.
    fn has_room(&self, waker: &Waker) -> bool {
        let mut s = self.lock();
        if s.events.len() < EVENTS_CAPACITY {
            return true;
        }
        store(&mut s.async_waker, waker);
        false
    }

    /// Queues an event for the blocking reader; `end` is the disconnect that ends them.
    fn push_event(&self, event: Result<Event, Error>, end: Option<Event>) {
        let mut s = self.lock();
        s.events.push_back(event);
        if let Some(end) = end {
            Queues::ended(&mut s, end);
        }
        wake(&mut s.reader);
    }

    /// Ends the events with `end`, after those queued, without a place in the queue.
    fn end(&self, end: Event) {
        let mut s = self.lock();
        Queues::ended(&mut s, end);
        wake(&mut s.reader);
    }

    fn ended(s: &mut State, end: Event) {
        s.end = Some(end);
        s.client_gone = true;
        wake(&mut s.writer);
    }

    /// The next message of the blocking side, or its outcome once every message is taken;
    /// registers `waker` when there is neither yet.
    fn take(&self, waker: &Waker) -> Option<Result<Message, Result<(), Error>>> {
        let mut s = self.lock();
        if let Some(m) = s.messages.pop_front() {
            wake(&mut s.writer);
            return Some(Ok(m));
        }
        if let Some(outcome) = s.outcome.take() {
            return Some(Err(outcome));
        }
        if s.blocking_done {
            return Some(Err(Err(Error::new(ErrorKind::Cancelled).with_message(
                "the blocking websocket handler was dropped before it ran: the runtime shut \
                 down, or the thread-sensitive context it was queued on ended",
            ))));
        }
        store(&mut s.async_waker, waker);
        None
    }

    /// The future is gone: fail the blocking side's waits.
    fn close_async(&self) {
        let mut s = self.lock();
        s.async_gone = true;
        s.async_waker = None;
        wake(&mut s.reader);
        wake(&mut s.writer);
    }
}

impl Report for Queues {
    type Outcome = ();

    fn finish(&self, outcome: Result<(), Error>) {
        let mut s = self.lock();
        s.outcome = Some(outcome);
        s.blocking_done = true;
        wake(&mut s.async_waker);
    }

    fn abandon(&self) {
        let mut s = self.lock();
        s.blocking_done = true;
        wake(&mut s.async_waker);
    }
}

/// The blocking side's `receive`.
impl SharedEventSource for Queues {
    fn poll_event(&self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        let mut s = self.lock();
        if let Some(event) = s.events.pop_front() {
            wake(&mut s.async_waker);
            return Poll::Ready(event);
        }
        if let Some(end) = &s.end {
            return Poll::Ready(Ok(end.clone()));
        }
        if s.async_gone {
            return Poll::Ready(Err(gone()));
        }
        store(&mut s.reader, cx.waker());
        Poll::Pending
    }
}

/// The blocking side's `send`.
impl SharedMessageSink for Queues {
    fn poll_ready(&self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        let mut s = self.lock();
        if s.async_gone {
            return Poll::Ready(Err(gone()));
        }
        if s.client_gone {
            return Poll::Ready(Err(
                Error::new(ErrorKind::Disconnected).with_message("the client closed the websocket")
            ));
        }
        if s.messages.len() < MESSAGES_CAPACITY {
            return Poll::Ready(Ok(()));
        }
        store(&mut s.writer, cx.waker());
        Poll::Pending
    }

    fn start_send(&self, message: Message) -> Result<(), Error> {
        let mut s = self.lock();
        if s.async_gone {
            return Err(gone());
        }
        s.messages.push_back(message);
        wake(&mut s.async_waker);
        Ok(())
    }
}

/// Starts the blocking side of one session and returns its future.
pub(crate) fn start<H: SyncHandler>(
    handler: Arc<H>,
    pool: Option<&BlockingPool>,
    slot: Option<Slot>,
    place: Option<ThreadSensitive>,
    scope: HttpScope,
    receive: Receiver,
    send: Sender,
) -> Result<Session, Error> {
    // The session's own token, a child of the scope's: it flips when the connection drops
    // or this future is dropped, without cancelling the caller's context.
    let context = scope.context().child();
    let token = context.token().clone();
    let guard = token.clone().drop_guard();
    let cancelled = token.cancelled();
    let queues = Queues::new();
    let scope = scope.with_context(context.clone());
    let ends = queues.clone();
    spawn_blocking_work(pool, slot, place, context, queues.clone(), move || {
        run_websocket(&*handler, scope, ends)
    })?;
    Ok(Session {
        queues,
        guard: Some(guard),
        token,
        cancelled,
        receive,
        send,
        events_done: false,
        pending: None,
        accepted: false,
        client_gone: false,
        finished: false,
        error: None,
    })
}

/// Runs on the blocking thread: the handler's websocket entry, its panic caught.
fn run_websocket<H: SyncHandler + ?Sized>(
    handler: &H,
    scope: HttpScope,
    queues: Arc<Queues>,
) -> Result<(), Error> {
    let request = SyncWebSocketRequest::new(
        scope,
        Receiver::shared(queues.clone()),
        Sender::shared_websocket(queues),
    );
    match catch_unwind(AssertUnwindSafe(|| handler.websocket(request))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::from(e)),
        Err(panic) => Err(Error::from_panic(&*panic)),
    }
}

/// The future of one session: pumps `receive` into the event queue and the message queue
/// into `send`, both at once, and completes the protocol once the handler has returned.
pub(crate) struct Session {
    queues: Arc<Queues>,
    /// Flips the session's token if the future goes before the handler has returned.
    guard: Option<DropGuard>,
    token: CancellationToken,
    /// The session's token flipping, watched while the events are not ended.
    cancelled: Cancelled,
    receive: Receiver,
    send: Sender,
    /// The disconnect has been queued: nothing more is read from `receive`.
    events_done: bool,
    /// A message waiting for the connection to take it.
    pending: Option<Message>,
    /// The handler's accept went out.
    accepted: bool,
    /// The client closed or dropped: no close of ours is owed.
    client_gone: bool,
    /// The handler's outcome has been taken.
    finished: bool,
    /// The handler's error, returned once the protocol is complete.
    error: Option<Error>,
}

impl Session {
    fn pump_events(&mut self, cx: &mut TaskContext<'_>) {
        while !self.events_done && !self.finished && self.queues.has_room(cx.waker()) {
            let Poll::Ready(event) = self.receive.poll_receive(cx) else {
                return;
            };
            let (end, dropped) = match &event {
                Ok(e @ Event::WebSocketDisconnect { code, .. }) => (Some(e.clone()), *code == 1006),
                Ok(Event::Disconnect) | Err(_) => (
                    Some(Event::WebSocketDisconnect {
                        code: 1006,
                        reason: String::new(),
                    }),
                    true,
                ),
                Ok(_) => (None, false),
            };
            if end.is_some() {
                self.events_done = true;
                self.client_gone = true;
            }
            if dropped {
                // The client is gone: the handler's token flips at once, so work that
                // watches it stops, while the messages queued before still reach its reads.
                self.token.cancel();
            }
            self.queues.push_event(event, end);
        }
    }

    /// The session's token flipped (the server is done with the socket, or cancelled the
    /// request): the blocking reader waits on the queue alone, so the events end here. What
    /// `receive` has ready goes first, so a client's close on its way is seen as that close;
    /// without one, the session ends as a dropped connection (1006).
    fn end_on_cancel(&mut self, cx: &mut TaskContext<'_>) {
        if self.events_done || Pin::new(&mut self.cancelled).poll(cx).is_pending() {
            return;
        }
        self.pump_events(cx);
        if self.events_done {
            return;
        }
        let end = match self.receive.poll_receive(cx) {
            Poll::Ready(Ok(e @ Event::WebSocketDisconnect { .. })) => e,
            // Messages that find the queue full are lost with the session.
            _ => Event::WebSocketDisconnect {
                code: 1006,
                reason: String::new(),
            },
        };
        self.events_done = true;
        self.client_gone = true;
        self.queues.end(end);
    }

    /// The last message the protocol needs after the handler returned with `outcome`.
    fn last_message(&mut self, outcome: Result<(), Error>) -> Option<Message> {
        let owed = !self.send.is_finished() && !self.client_gone;
        let close = |code| Message::WebSocketClose {
            code,
            reason: String::new(),
        };
        match outcome {
            // Not answered: denied (403). Accepted and not closed: a normal close.
            Ok(()) if owed && (self.accepted || !self.send.is_started()) => Some(close(1000)),
            Ok(()) => None,
            Err(e) => {
                self.error = Some(e);
                // Not answered: nothing is sent, and whoever runs this future answers the
                // error (500, or 503 for a saturated pool), as for an http request.
                (owed && self.accepted).then(|| close(1011))
            }
        }
    }

    fn poll_session(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.pump_events(cx);
        self.end_on_cancel(cx);
        loop {
            if self.pending.is_some() {
                std::task::ready!(self.send.poll_send(cx, &mut self.pending))?;
                continue;
            }
            if self.finished {
                return Poll::Ready(self.error.take().map_or(Ok(()), Err));
            }
            match self.queues.take(cx.waker()) {
                None => return Poll::Pending,
                Some(Ok(message)) => {
                    if let Message::WebSocketAccept { .. } = message {
                        self.accepted = true;
                    }
                    self.pending = Some(message);
                }
                Some(Err(outcome)) => {
                    self.finished = true;
                    self.pending = self.last_message(outcome);
                }
            }
        }
    }
}

impl Future for Session {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let result = std::task::ready!(this.poll_session(cx));
        if this.finished {
            // The handler has returned: its token must not flip when this future is dropped.
            if let Some(guard) = this.guard.take() {
                guard.disarm();
            }
        }
        Poll::Ready(result)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The token flips first, so a blocked call that wakes finds it flipped.
        drop(self.guard.take());
        self.queues.close_async();
    }
}

//! What servers, adapters and test doubles implement and use to drive handlers; a handler
//! author never needs anything here (git's plumbing and porcelain split).
//!
//! - The transports beneath a handler's two ends: a [`Receiver`](crate::Receiver) pulls
//!   [`Event`](crate::Event)s from an [`EventSource`] (boxed, through
//!   [`Receiver::new`](crate::Receiver::new)) or a [`SharedEventSource`] (one object its owner
//!   shares, through [`Receiver::shared`](crate::Receiver::shared)); a
//!   [`Sender`](crate::Sender) checks [`Message`](crate::Message)s against the protocol and
//!   puts them into a [`MessageSink`] or a [`SharedMessageSink`]. The same ends serve a sync
//!   handler's websocket: [`SyncWebSocketRequest::new`](crate::SyncWebSocketRequest::new)
//!   takes them, and its blocking calls poll them from the handler's thread, parking it until
//!   they wake it (so they must not need a runtime when polled).
//! - Threads lent to thread-sensitive work: code that blocks a thread on async work (as
//!   `amphi-async-to-sync` does) lends it with
//!   [`ThreadSensitive::lend_current_thread`](crate::ThreadSensitive::lend_current_thread) and
//!   runs the [`Job`]s that nested thread-sensitive calls submit, so nesting never deadlocks.
//! - Handler failures carried by a response: a handler returns an [`Error`](crate::Error) as
//!   an [`IntoResponse`](crate::IntoResponse) value, and whoever runs it takes the error back
//!   out with [`take_handler_error`] to fail as the handler meant.
//! - What a request's crossings report: a server puts an [`Observer`] into the request's
//!   context ([`observed_context`]); the adapters find it ([`observer`]) and say when a
//!   [`Crossing`] ended and how long it ran, or how long it waited for a pool slot.

pub use crate::asgi::{EventSource, MessageSink, SharedEventSource, SharedMessageSink};
pub use crate::into_response::take_handler_error;
pub use crate::observe::{
    observed_context, observer, token_observer, Crossing, Observer, TimedCrossing,
};
pub use crate::thread_sensitive::{Job, LentGuard, LentThread};

//! The core of amphi: both handler traits and the protocol between a server and a handler.
//!
//! amphi serves blocking (WSGI-like) and async (ASGI-like) handlers side by side. This crate
//! holds only what a handler author needs; it has no runtime in its dependency tree
//! (`http`, `bytes` and `futures-core` only), so a library that writes handlers depends on it
//! and nothing else.
//!
//! - The sync side: [`SyncHandler`], called on a blocking thread with a [`SyncRequest`] whose
//!   [`BlockingBody`] is read by `std::io::Read`; it returns a [`SyncResponse`] whose
//!   [`SyncBody`] is bytes, an iterator of chunks or a writer, with cleanup on every path.
//!   Closures become handlers through [`sync_fn`].
//! - The async side: [`AsyncHandler`], `call(scope, receive, send)` with [`Scope`]s for http,
//!   websocket and lifespan, [`Event`]s in and [`Message`]s out, and protocol misuse returned
//!   as errors by [`Sender`]. Closures become handlers through [`async_fn`] (request in,
//!   response out) and [`asgi_fn`] (the raw protocol).
//! - Websockets for both: an async [`WebSocketRequest`] to accept or deny (403, or a response
//!   of the app's own) and a [`WebSocket`] to `recv().await`/`send().await`, from
//!   [`websocket_fn`] or `async_fn(..).websocket(..)`; for blocking code,
//!   [`SyncHandler::websocket`] with a [`SyncWebSocketRequest`] and a [`BlockingWebSocket`]
//!   (blocking `recv`/`send`, usable from a reading and a writing thread at once), or
//!   `sync_fn(..).websocket(..)`.
//! - Shared by both: the request [`Context`] (a typed map, asgiref's `Local`), its
//!   [`CancellationToken`], the app [`State`], [`RequestInfo`] and the [`Error`] type.
//! - Handler ergonomics, without macros: closures of both kinds return anything that is
//!   [`IntoResponse`] (a status, a string, bytes, `(StatusCode, T)`, `Json<T>` with the
//!   `json` feature, a `Result` whose `Err` the server maps and logs), and [`RequestExt`]
//!   reads an async request's context, state, mount and info by name.
//! - [`testing`]: drive an async handler without a socket, http or websocket.
//! - [`plumbing`]: what servers and adapters implement (event sources, message sinks, lent
//!   threads); handlers never need it.
//!
//! Running handlers is the job of the other crates: `amphi-sync-to-async` and
//! `amphi-async-to-sync` carry work across the boundary, `amphi-server` serves both kinds.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod asgi;
mod cancel;
mod context;
mod error;
mod info;
mod into_response;
mod observe;
mod park;
pub mod plumbing;
mod request_ext;
mod scope;
mod state;
mod sync;
pub mod testing;
mod thread_sensitive;

pub use asgi::{
    asgi_fn, async_fn, websocket_fn, Accept, AsgiFn, AsyncBody, AsyncFn, AsyncHandler,
    AsyncRequest, AsyncResponse, BoxFuture, CloseFrame, Event, Message, Receiver, Sender,
    WebSocket, WebSocketData, WebSocketFn, WebSocketRequest, WithWebSocket,
};
pub use cancel::{CancellationToken, Cancelled, DropGuard};
pub use context::{Context, EnterGuard, Scoped};
pub use error::{Error, ErrorKind};
pub use info::RequestInfo;
#[cfg(feature = "json")]
pub use into_response::Json;
pub use into_response::{IntoResponse, ResponseBody};
pub use request_ext::RequestExt;
pub use scope::{HttpScope, LifespanScope, Scope};
pub use state::State;
pub use sync::{
    sync_fn, BlockingBody, BlockingWebSocket, BodyWriter, IntoChunks, Messages, SyncBody, SyncFn,
    SyncHandler, SyncRequest, SyncResponse, SyncWebSocketRequest,
};
pub use thread_sensitive::ThreadSensitive;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

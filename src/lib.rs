//! amphi: serve blocking (WSGI-like) and async (ASGI-like) handlers in one hyper server.
//!
//! This facade re-exports the workspace's crates; see README.md for the tour.
//!
//! - [`amphi_core`] (re-exported at the root): both handler traits, the protocol types, the
//!   request context, cancellation, errors.
//! - [`sync_to_async_crate`] (`amphi-sync-to-async`): [`sync_to_async`], [`SyncToAsync`],
//!   [`BlockingPool`].
//! - [`async_to_sync_crate`] (`amphi-async-to-sync`): [`async_to_sync`], [`AsyncToSync`].
//! - [`server`] (`amphi-server`): [`Server`], [`Router`], [`Serving`].
//! - [`prelude`]: the names most programs need, in one `use`.
//!
//! The `json` feature turns on `Json<T>` responses (amphi-core's `json` feature: serde and
//! serde_json, no runtime).
//!
//! # Examples
//!
//! ```no_run
//! use amphi::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), ServeError> {
//!     let router = Router::new()
//!         .mount_sync("/sync", sync_fn(|_req| http::Response::new(SyncBody::from("blocking"))))
//!         .mount_async("/async", async_fn(|_req| async { http::Response::new(AsyncBody::from("async")) }));
//!     let serving = Server::new(router).bind("127.0.0.1:8000").await?;
//!     println!("listening on http://{}", serving.local_addr().unwrap());
//!     serving.run_until(shutdown_signal()).await
//! }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use amphi_core::*;

/// The adapters that run blocking work from async code (`amphi-sync-to-async`).
pub use amphi_sync_to_async as sync_to_async_crate;

pub use amphi_sync_to_async::{sync_to_async, BlockingPool, SyncToAsync};

/// The adapters that drive async work from blocking code (`amphi-async-to-sync`).
pub use amphi_async_to_sync as async_to_sync_crate;

pub use amphi_async_to_sync::{async_to_sync, AsyncToSync};

/// The server (`amphi-server`).
pub use amphi_server as server;

pub use amphi_server::{shutdown_signal, Router, ServeError, Server, Serving, ShutdownHandle};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The names most amphi programs use: `use amphi::prelude::*;`.
///
/// Handler traits and their closure constructors for both kinds, the request, response and
/// body types, websockets for both kinds, `IntoResponse` and `RequestExt` (and `Json` with
/// the `json` feature), the async protocol (scopes, events, messages, `receive`/`send`),
/// context, state, errors, both adapters, and the server.
pub mod prelude {
    pub use amphi_async_to_sync::{async_to_sync, AsyncToSync};
    #[cfg(feature = "json")]
    pub use amphi_core::Json;
    pub use amphi_core::{
        asgi_fn, async_fn, sync_fn, websocket_fn, AsyncBody, AsyncHandler, AsyncRequest,
        AsyncResponse, BlockingBody, BlockingWebSocket, CancellationToken, Context, Error,
        ErrorKind, Event, HttpScope, IntoResponse, LifespanScope, Message, Receiver, RequestExt,
        Scope, Sender, State, SyncBody, SyncHandler, SyncRequest, SyncResponse,
        SyncWebSocketRequest, ThreadSensitive, WebSocket, WebSocketData, WebSocketRequest,
    };
    pub use amphi_server::{shutdown_signal, Router, ServeError, Server, Serving};
    pub use amphi_sync_to_async::{sync_to_async, BlockingPool, SyncToAsync};
}

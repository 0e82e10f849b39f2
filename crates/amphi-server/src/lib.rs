//! amphi's server: blocking (WSGI-like) and async (ASGI-like) handlers side by side on one
//! hyper server.
//!
//! - [`Router`] mounts [`SyncHandler`](amphi_core::SyncHandler)s,
//!   [`AsyncHandler`](amphi_core::AsyncHandler)s and nested routers under path prefixes.
//! - [`Server`] serves a router over HTTP/1.1 and HTTP/2 (h2c) on one TCP port or unix socket,
//!   with lifespan, graceful shutdown, limits (header timeout, header count and size, body
//!   size, minimum request body and response rates, blocking pool, connections) and an access
//!   log.
//! - [`Serving`] is the running server: its address, a [`ShutdownHandle`], and a future that
//!   ends when it has drained.
//!
//! # How a request is served
//!
//! An async handler is polled by the connection's own task: no task spawn and no channel per
//! request. What it sends goes into a one-chunk slot; a response sent in one piece becomes a
//! complete hyper response, and a streamed one becomes a body that hyper pulls, polling the
//! handler for each next chunk, so a slow client slows the handler down. A sync handler runs
//! through [`SyncToAsync`](amphi_sync_to_async::SyncToAsync) on the server's bounded
//! [`BlockingPool`](amphi_sync_to_async::BlockingPool).
//!
//! Each request gets a fresh [`Context`](amphi_core::Context), current while its handler is
//! polled (so `sync_to_async` calls inside see it), and the server's
//! [`State`](amphi_core::State). When the client goes away, the handler future is dropped and
//! the context's token flips: async handlers stop at their next await, sync handlers see
//! [`SyncRequest::cancellation`](amphi_core::SyncRequest::cancellation) flip and their body
//! reads and writes fail.
//!
//! # Access log
//!
//! One `tracing` event per request, target `amphi::access`: `method`, `path`, `status` (0 when
//! none was sent), `bytes`, `duration_us`, `kind` (`sync`, `async`, or `none` for a 404),
//! `version` and `outcome` (`complete`, `cut`, `client gone`, `cut at shutdown`).
//!
//! # Examples
//!
//! ```no_run
//! use amphi_core::{async_fn, sync_fn, AsyncBody, SyncBody};
//! use amphi_server::{shutdown_signal, Router, Server};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), amphi_server::ServeError> {
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

mod access;
mod body;
mod error;
mod exchange;
mod idle;
mod lifespan;
mod response_rate;
mod router;
mod serve;
mod service;
mod sync_mount;

pub use error::ServeError;
pub use router::Router;
pub use serve::{
    shutdown_signal, Server, Serving, ShutdownHandle, DEFAULT_BLOCKING_THREADS,
    DEFAULT_BODY_GRACE_PERIOD, DEFAULT_GRACE_PERIOD, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MIN_BODY_RATE, DEFAULT_MIN_RESPONSE_RATE, DEFAULT_QUEUE_TIMEOUT,
    DEFAULT_RESPONSE_GRACE_PERIOD, DEFAULT_RESPONSE_STALL_TIMEOUT,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

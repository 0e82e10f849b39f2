//! amphi's server: blocking (WSGI-like) and async (ASGI-like) handlers side by side on one
//! hyper server.
//!
//! - [`Router`] mounts [`SyncHandler`](amphi_core::SyncHandler)s,
//!   [`AsyncHandler`](amphi_core::AsyncHandler)s and nested routers under path prefixes.
//! - [`Server`] serves a router over HTTP/1.1 and HTTP/2 (h2c, or ALPN over TLS) on one TCP
//!   port or unix socket,
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
//! `version`, `outcome` (`complete`, `cut`, `client gone`, `cut at shutdown`) and `client`
//! (`ip:port`; what a trusted proxy says, see [`Server::trusted_proxies`], the address alone
//! when it gave no port; `-` over a unix socket), written inside the request's span when
//! [`Server::request_spans`] is on (so it carries the request id).
//!
//! # Deployment
//!
//! HTTPS with ALPN `h2` and `http/1.1` (`Server::tls` and the `tls` module, feature `tls`),
//! trusted proxy headers and an external prefix ([`Server::trusted_proxies`],
//! [`Server::root_path`]), `SO_REUSEPORT` ([`Server::reuse_port`]), inherited sockets
//! ([`Listener`], [`Server::serve_on`]), a health endpoint ([`Health`]) and a drain delay
//! ([`Server::drain_delay`]): see `docs/deploy.md` in the repository for nginx, systemd and
//! Kubernetes.
//!
//! # Observability
//!
//! [`Server::request_spans`] gives every request a `tracing` span (target `amphi::request`:
//! `method`, `route` (the mount), `kind`, `request_id`) that is current wherever its handler
//! runs, on both sides of the boundary and through both adapters, and an `x-request-id` on its
//! response (the client's, when sane). With the `metrics` feature, `Server::metrics` counts
//! every request into a `metrics::Metrics`, which serves them in the Prometheus text format
//! and as the migration report: per route, its share of traffic, the time it spends blocking,
//! its latency, its waits for a blocking slot and its `503`s, and what to move to async next.
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

mod accept;
mod access;
mod app;
mod body;
mod builder;
mod conn;
mod drain;
mod driver;
mod error;
mod exchange;
mod health;
mod idle;
mod incoming;
#[cfg(feature = "tower")]
mod interop;
mod lifespan;
mod listener;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(feature = "tower")]
mod mounted;
mod observe;
mod origin;
mod proxy;
mod reply;
#[cfg(feature = "metrics")]
mod report;
mod response;
mod response_rate;
mod router;
mod service;
mod serving;
#[cfg(feature = "tls")]
pub mod tls;
mod workers;
mod ws;

pub use body::ResponseBody;
pub use builder::{
    Server, DEFAULT_BLOCKING_THREADS, DEFAULT_BODY_GRACE_PERIOD, DEFAULT_DRAIN_DELAY,
    DEFAULT_GRACE_PERIOD, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MIN_BODY_RATE,
    DEFAULT_MIN_RESPONSE_RATE, DEFAULT_QUEUE_TIMEOUT, DEFAULT_RESPONSE_GRACE_PERIOD,
    DEFAULT_RESPONSE_STALL_TIMEOUT,
};
pub use error::ServeError;
pub use health::{Health, ServerStatus};
pub use listener::Listener;
pub use proxy::{ParseProxiesError, TrustedProxies};
pub use response::ResponseFuture;
pub use router::Router;
pub use serving::{shutdown_signal, Serving, ShutdownHandle};
pub use workers::{is_worker, Workers, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_READY_TIMEOUT};
pub use ws::{
    WebSocketLimits, DEFAULT_MAX_WEBSOCKETS, DEFAULT_MAX_WEBSOCKET_MESSAGE, DEFAULT_WEBSOCKET_PING,
    DEFAULT_WEBSOCKET_QUEUE,
};

/// Tower interop (`tower` feature): mount tower services and routers behind tower layers
/// ([`Router::mount_service`], [`Router::layer`]), and serve amphi handlers as tower services
/// ([`Server::into_service`]).
///
/// Over these types a tower service meets amphi's server both ways:
///
/// - A service mounted with [`Router::mount_service`] gets `http::Request<RequestBody>`
///   (streamed, with the server's body limit and minimum rate) with the mount prefix taken
///   off its path, as under axum's `nest_service`; the mount is in its
///   [`RequestInfo`](amphi_core::RequestInfo) extension, next to the request
///   [`Context`](amphi_core::Context) and the app [`State`](amphi_core::State). Its
///   `poll_ready` is awaited on a clone before each call. Its errors, and its panics, become
///   `500`s with an error log line before the response starts; after, the connection is cut.
/// - [`Router::layer`] wraps a router (the whole one, or a nested one: a single mount is a
///   nested router with one mount) in a tower layer; the layer sees [`MountService`](tower::MountService).
/// - [`Server::into_service`] is a [`RouterService`](tower::RouterService): amphi's routing, pool and limits as a
///   service another server mounts.
#[cfg(feature = "tower")]
pub mod tower {
    pub use crate::interop::RouterService;
    pub use crate::mounted::{MountService, RequestBody};
    pub use crate::{ResponseBody, ResponseFuture};
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

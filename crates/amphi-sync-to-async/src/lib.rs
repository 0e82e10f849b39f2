//! Run blocking code from async code, the way asgiref's `sync_to_async` and `WsgiToAsgi` do
//! for Django, at the cost of a plain `tokio::task::spawn_blocking`.
//!
//! - [`sync_to_async`] runs a blocking closure on tokio's blocking pool and awaits it; a
//!   panic comes back as an [`Error`](amphi_core::Error) carrying the panic message.
//! - [`SyncToAsync`] turns an [`amphi_core::SyncHandler`] (WSGI-like: blocking body reads,
//!   an iterator or writer for the response) into an [`amphi_core::AsyncHandler`], streaming
//!   both bodies with backpressure.
//! - [`BlockingPool`] caps blocking work in flight, per request, with a bounded wait for a
//!   slot; past it a call fails *saturated* (a server answers 503).
//! - Thread-sensitive mode, opt in: [`SyncCall::thread_sensitive`] runs calls one at a time on
//!   one [`ThreadSensitive`](amphi_core::ThreadSensitive) context's thread (a `!Send` resource
//!   can live there); contexts run in parallel with each other, one per request or one
//!   app-wide context you create. Inside `amphi-async-to-sync`'s `async_to_sync`,
//!   [`SyncCall::thread_sensitive_current`] runs the call back on the thread blocked there.
//!
//! Both carry the request [`Context`](amphi_core::Context), the current `tracing` span, and
//! cancellation across the crossing.
//!
//! The crate needs only tokio (`rt`, `sync`, `time`); it does not depend on amphi's server,
//! so it works under axum, actix or plain tokio.
//!
//! # Examples
//!
//! ```
//! use amphi_sync_to_async::{sync_to_async, BlockingPool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pool = BlockingPool::new(32);
//! let total: u64 = sync_to_async(|| (1..=100u64).sum()).pool(&pool).await.unwrap();
//! assert_eq!(total, 5050);
//!
//! // One thread for everything that touches a !Send value:
//! thread_local! { static HITS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) }; }
//! let app = amphi_core::ThreadSensitive::new();
//! for expected in 1..=3 {
//!     let hits = sync_to_async(|| HITS.with(|h| { h.set(h.get() + 1); h.get() }))
//!         .thread_sensitive(&app)
//!         .await
//!         .unwrap();
//!     assert_eq!(hits, expected);
//! }
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod call;
mod direct;
mod exchange;
mod handler;
mod lane;
mod pool;
mod websocket;

pub use call::{sync_to_async, SyncCall, SyncCallFuture};
pub use direct::{HttpBody, HttpCall};
pub use handler::SyncToAsync;
pub use pool::{BlockingPool, PoolStats, DEFAULT_QUEUE_TIMEOUT};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

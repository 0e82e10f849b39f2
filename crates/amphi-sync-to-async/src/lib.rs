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
//! # }
//! ```
#![forbid(unsafe_code)]

mod call;
mod exchange;
mod handler;
mod pool;

pub use call::{sync_to_async, SyncCall, SyncCallFuture};
pub use handler::SyncToAsync;
pub use pool::{BlockingPool, DEFAULT_QUEUE_TIMEOUT};

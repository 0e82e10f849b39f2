//! Drive async code from blocking code, the way asgiref's `async_to_sync` and a2wsgi's
//! `ASGIMiddleware` do for Python, without their deadlocks.
//!
//! - [`async_to_sync`] runs a future to completion from a blocking thread: on a tokio
//!   blocking-pool thread through the runtime that owns it, on any other thread through a
//!   shared background runtime. While it waits, the thread runs the future's thread-sensitive
//!   blocking work (asgiref's `CurrentThreadExecutor`), so nesting blocking -> async ->
//!   blocking -> async never deadlocks and never changes threads behind the caller's back.
//! - [`AsyncToSync`] turns an [`amphi_core::AsyncHandler`] (ASGI-like) into an
//!   [`amphi_core::SyncHandler`] (WSGI-like), streaming both bodies.
//!
//! Called from a thread that drives async tasks, both refuse with
//! [`ErrorKind::WrongContext`](amphi_core::ErrorKind::WrongContext) and a message saying to
//! `.await` instead; they never panic with tokio's "Cannot start a runtime from within a
//! runtime" and never hang.
//!
//! The request [`Context`](amphi_core::Context), the current `tracing` span and cancellation
//! cross with the call.
//!
//! The crate needs only tokio; it does not depend on amphi's server.
//!
//! # Examples
//!
//! Blocking code calling async code, with no runtime set up by hand:
//!
//! ```
//! use amphi_async_to_sync::async_to_sync;
//!
//! fn blocking_view() -> String {
//!     let n = async_to_sync(async { tokio::task::yield_now().await; 42 }).unwrap();
//!     format!("async result: {n}")
//! }
//! assert_eq!(blocking_view(), "async result: 42");
//! ```
//!
//! Inside a tokio app, from blocking code on the blocking pool:
//!
//! ```
//! use amphi_async_to_sync::async_to_sync;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let n = tokio::task::spawn_blocking(|| async_to_sync(async { 6 * 7 }).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(n, 42);
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod call;
mod frame;
mod handler;

pub use call::async_to_sync;
pub use handler::AsyncToSync;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

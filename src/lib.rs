//! amphi: serve blocking (WSGI-like) and async (ASGI-like) handlers in one hyper server.
//!
//! This facade re-exports the workspace's crates; see README.md for the tour.
#![forbid(unsafe_code)]

pub use amphi_core::*;

/// The adapters that run blocking work from async code.
pub use amphi_sync_to_async as sync_to_async_crate;

/// The adapters that drive async work from blocking code.
pub use amphi_async_to_sync as async_to_sync_crate;

/// The server.
pub use amphi_server as server;

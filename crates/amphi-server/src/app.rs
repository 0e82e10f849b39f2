//! What every connection of one server shares: the routes, the app state, the request limits,
//! and the counters the shutdown reads.

use std::sync::atomic::{AtomicBool, AtomicUsize};

use amphi_core::State;

use crate::exchange::BodyRate;
use crate::router::RouteTable;

/// The server-wide state, one `Arc` for the server's lifetime.
pub(crate) struct App {
    pub(crate) routes: RouteTable,
    pub(crate) state: State,
    pub(crate) max_body: u64,
    pub(crate) body_rate: Option<BodyRate>,
    /// Requests whose access record is alive.
    pub(crate) in_flight: AtomicUsize,
    /// Set when the grace period is over and the remaining connections are being cut.
    pub(crate) cutting: AtomicBool,
}

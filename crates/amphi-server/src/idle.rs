//! The header-read timeout, kept by each connection's task rather than by hyper.
//!
//! hyper's own `header_read_timeout` boxes a new timer for every request head and inserts it
//! into (and removes it from) tokio's timer wheel, whether or not the head is slow: an
//! allocation and two locked wheel operations per request. Here each connection has one
//! timer, polled next to the connection, that looks at the connection's requests only when it
//! fires: a request costs a counter increment, a decrement and a clock read, and the timer is
//! re-armed at most once per timeout period.
//!
//! The rule is the one hyper applies, plus the first request of HTTP/2 connections: a
//! connection with no request in progress (a new one, or a keep-alive one whose last response
//! is done) must deliver a complete request head within the timeout, or it is closed.
//! HTTP/1.1 heads are counted complete when hyper hands the request to the service, so a head
//! trickled in a byte at a time (slowloris) runs out the same clock as silence. An HTTP/2
//! connection is left alone after its first request: its streams have no head timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Context as TaskContext;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::conn::ConnState;

/// The header-read deadline of one connection; its timer is a `Sleep` the connection's task
/// keeps pinned next to it.
pub(crate) struct HeadDeadline {
    state: Arc<ConnState>,
    timeout: Duration,
    /// The connection turned out to be HTTP/2 and has had its first request.
    off: bool,
    /// The timer is in tokio's wheel with this task's waker, so until it fires it need not
    /// be polled: polling a `Sleep` costs a budget check and a waker registration, and the
    /// connection's task is polled a few times per request.
    armed: bool,
}

impl HeadDeadline {
    /// The deadline for `state`'s connection; its timer starts at `Instant::now() + timeout`.
    pub(crate) fn new(state: Arc<ConnState>, timeout: Duration) -> HeadDeadline {
        HeadDeadline {
            state,
            timeout,
            off: false,
            armed: false,
        }
    }

    /// Whether the connection has gone past its deadline and is to be closed. Re-arms `timer`
    /// (made with [`tokio::time::sleep`] for `timeout`) when it fires early: a request came
    /// meanwhile, or one is in progress.
    pub(crate) fn poll_expired(
        &mut self,
        mut timer: Pin<&mut Sleep>,
        cx: &mut TaskContext<'_>,
    ) -> bool {
        if self.off || (self.armed && !timer.is_elapsed()) {
            return false;
        }
        // The waker the timer holds stays good: this future is its task's, and a task keeps
        // its waker.
        self.armed = true;
        // Polled outside tokio's cooperative budget: a budget-starved poll returns `Pending`
        // without putting the timer in the wheel (tokio creates it on the first poll) or giving
        // it this task's waker, and since an armed timer is not polled again until it fires, an
        // idle keep-alive connection would then never be closed.
        while Pin::new(&mut tokio::task::unconstrained(timer.as_mut()))
            .poll(cx)
            .is_ready()
        {
            if self.state.h2.load(Ordering::Relaxed) {
                // The entry left the timer wheel when it fired; nothing re-arms it.
                self.off = true;
                return false;
            }
            let now = Instant::now();
            let due = self
                .state
                .head_due(self.timeout)
                .unwrap_or(now + self.timeout);
            if due <= now {
                return true;
            }
            timer.as_mut().reset(due);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    fn conn_state() -> Arc<ConnState> {
        ConnState::new(Arc::new(crate::conn::Counters::default()), None)
    }

    /// The connection's task may reach the deadline with its cooperative budget spent (hyper
    /// used it on the connection's I/O): the deadline must still fire for an idle connection.
    #[tokio::test(flavor = "current_thread")]
    async fn the_deadline_fires_even_when_first_polled_without_budget() {
        const TIMEOUT: Duration = Duration::from_millis(200);
        let mut deadline = HeadDeadline::new(conn_state(), TIMEOUT);
        let mut timer = std::pin::pin!(tokio::time::sleep(TIMEOUT));
        let mut starved = false;
        let expired = poll_fn(|cx| {
            if !starved {
                // Spend the task's budget, as a busy connection does in one poll.
                while tokio::task::coop::has_budget_remaining() {
                    let _ = std::pin::pin!(tokio::task::consume_budget()).poll(cx);
                }
                starved = true;
            }
            if deadline.poll_expired(timer.as_mut(), cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(10), expired)
            .await
            .expect("the idle connection's deadline fired");
    }
}

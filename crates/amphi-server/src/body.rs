//! The response body hyper pulls: either bytes already complete, or a handler still running
//! that the body polls for its next chunk, or (tower interop) a tower service's own body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use amphi_core::Error;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::access::{AccessRecord, Outcome};
use crate::driver::Driver;
use crate::error::Chain;
use crate::exchange::Next;
use crate::response_rate::DrainClock;

/// The body of every response amphi's server sends: bytes already complete, a handler still
/// running that the body polls for each next chunk (so a slow client slows the handler down,
/// and a client that leaves drops it), or, with the `tower` feature, a tower service's body.
///
/// Dropping it before its end drops the handler and flips its request's cancellation token.
/// It is what `tower::RouterService` answers with (`tower` feature).
pub struct ResponseBody {
    // Field order matters: the handler is dropped (and its request cancelled) before the
    // access record logs the request.
    kind: Kind,
    record: Option<AccessRecord>,
}

enum Kind {
    Full(Option<Bytes>),
    /// The handler owns the rest of the response; hyper drives it by pulling frames, so a
    /// slow client slows the handler down, and a client that leaves drops it.
    Stream {
        driver: Box<Driver>,
        exact_len: Option<u64>,
        /// The minimum response rate's clock, when it is on.
        drain: Option<DrainClock>,
    },
    /// A tower service's body, pulled as it is.
    #[cfg(feature = "tower")]
    Boxed {
        body: http_body_util::combinators::UnsyncBoxBody<Bytes, crate::incoming::BoxError>,
        drain: Option<DrainClock>,
    },
}

impl Default for ResponseBody {
    /// An empty body, recorded by no access log line.
    fn default() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
            record: None,
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Stream { .. } => "stream",
            #[cfg(feature = "tower")]
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub(crate) fn full(bytes: Bytes, record: AccessRecord) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            record: Some(record),
        }
    }

    pub(crate) fn stream(
        driver: Driver,
        exact_len: Option<u64>,
        record: AccessRecord,
        mut drain: Option<DrainClock>,
    ) -> ResponseBody {
        if let Some(d) = &mut drain {
            d.register(driver.exchange.clone());
        }
        ResponseBody {
            kind: Kind::Stream {
                driver: Box::new(driver),
                exact_len,
                drain,
            },
            record: Some(record),
        }
    }
}

#[cfg(feature = "tower")]
impl ResponseBody {
    /// A tower service's body, recorded by no access log line until
    /// [`with_record`](ResponseBody::with_record).
    pub(crate) fn boxed(
        body: http_body_util::combinators::UnsyncBoxBody<Bytes, crate::incoming::BoxError>,
    ) -> ResponseBody {
        ResponseBody {
            kind: Kind::Boxed { body, drain: None },
            record: None,
        }
    }

    /// The body with `record` as its access record (replacing a silent one), and `drain` as
    /// its response-rate clock when it streams and has none.
    pub(crate) fn with_record(
        mut self,
        mut record: AccessRecord,
        drain: Option<DrainClock>,
    ) -> ResponseBody {
        match &mut self.kind {
            Kind::Full(bytes) => {
                record.bytes = bytes.as_ref().map_or(0, |b| b.len() as u64);
                record.outcome = Outcome::Complete;
            }
            Kind::Stream {
                driver,
                drain: slot @ None,
                ..
            } => {
                if let Some(mut d) = drain {
                    d.register(driver.exchange.clone());
                    *slot = Some(d);
                }
            }
            Kind::Stream { .. } => {}
            Kind::Boxed {
                drain: slot @ None, ..
            } => {
                if let Some(mut d) = drain {
                    d.register(std::sync::Arc::new(
                        crate::response_rate::WaitState::default(),
                    ));
                    *slot = Some(d);
                }
            }
            Kind::Boxed { .. } => {}
        }
        // The silent record it replaces goes without a trace.
        self.record = Some(record);
        self
    }
}

/// Pulls a tower service's body: counts its bytes, feeds the rate clock, and catches a panic.
#[cfg(feature = "tower")]
fn poll_boxed(
    body: &mut http_body_util::combinators::UnsyncBoxBody<Bytes, crate::incoming::BoxError>,
    drain: &mut Option<DrainClock>,
    mut record: Option<&mut AccessRecord>,
    cx: &mut TaskContext<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    if let Some(d) = drain.as_mut() {
        d.resumed();
    }
    let polled = catch_unwind(AssertUnwindSafe(|| {
        http_body::Body::poll_frame(Pin::new(&mut *body), cx)
    }));
    let (result, outcome) = match polled {
        Ok(Poll::Pending) => return Poll::Pending,
        Ok(Poll::Ready(Some(Ok(frame)))) => {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                if let Some(r) = record.as_mut() {
                    r.bytes += len;
                }
                if let Some(d) = drain.as_mut() {
                    d.handed(len);
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        Ok(Poll::Ready(None)) => (None, Outcome::Complete),
        Ok(Poll::Ready(Some(Err(e)))) => {
            let err = Error::handler(e);
            let path = record.as_ref().map_or("", |r| r.path());
            tracing::warn!(error = %Chain(&err), path, "a service's response body failed; cutting it");
            (Some(Err(err)), Outcome::Cut)
        }
        Err(payload) => {
            let err = Error::from_panic(&*payload);
            let path = record.as_ref().map_or("", |r| r.path());
            tracing::error!(error = %Chain(&err), path, "a service's response body panicked; cutting it");
            (Some(Err(err)), Outcome::Cut)
        }
    };
    if let Some(r) = record {
        r.outcome = outcome;
    }
    Poll::Ready(result)
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let (driver, drain) = match &mut this.kind {
            Kind::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream { driver, drain, .. } => (driver, drain),
            #[cfg(feature = "tower")]
            Kind::Boxed { body, drain } => {
                return poll_boxed(body, drain, this.record.as_mut(), cx)
            }
        };
        if let Some(d) = drain.as_mut() {
            d.resumed();
        }
        let record = this
            .record
            .as_mut()
            .expect("the record lives as long as the body");
        loop {
            let next = driver.exchange.lock().next_frame(driver.is_running());
            match next {
                Next::Data(chunk) => {
                    record.bytes += chunk.len() as u64;
                    if let Some(d) = drain.as_mut() {
                        d.handed(chunk.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Next::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Next::End { client_gone } => {
                    record.outcome = if client_gone {
                        Outcome::ClientGone
                    } else {
                        Outcome::Complete
                    };
                    return Poll::Ready(None);
                }
                Next::Unfinished => {
                    tracing::error!(
                        path = record.path(),
                        "protocol misuse: handler returned before finishing its response; cutting it"
                    );
                    record.outcome = Outcome::Cut;
                    return Poll::Ready(Some(Err(Error::protocol(
                        "handler returned before finishing its response",
                    ))));
                }
                Next::PollHandler => {}
            }
            match driver.poll_handler(cx) {
                Poll::Pending => {
                    if !driver.exchange.lock().has_frame() {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    if driver.exchange.lock().is_done() {
                        tracing::warn!(error = %Chain(&e), "handler failed after completing its response");
                        continue;
                    }
                    if e.is_panic() {
                        tracing::error!(error = %Chain(&e), path = record.path(), "handler panicked after its response started; cutting it");
                    } else {
                        tracing::warn!(error = %Chain(&e), path = record.path(), "handler failed after its response started; cutting it");
                    }
                    record.outcome = Outcome::Cut;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream { .. } => false,
            #[cfg(feature = "tower")]
            Kind::Boxed { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream {
                exact_len: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Stream { .. } => SizeHint::default(),
            #[cfg(feature = "tower")]
            Kind::Boxed { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let Some(record) = self.record.as_mut() else {
            return;
        };
        let drain = match &self.kind {
            Kind::Full(_) => return,
            Kind::Stream { drain, .. } => drain.as_ref(),
            #[cfg(feature = "tower")]
            Kind::Boxed { drain, body } => {
                // hyper does not poll a body that says it is at its end.
                if record.outcome == Outcome::Running && http_body::Body::is_end_stream(body) {
                    record.outcome = Outcome::Complete;
                }
                drain.as_ref()
            }
        };
        if let Some(drain) = drain.filter(|d| d.tripped()) {
            tracing::warn!(
                path = record.path(),
                bytes = record.bytes,
                "the client took the response slower than the minimum rate ({} bytes/s); \
                 cut its connection",
                drain.bytes_per_second()
            );
            record.outcome = Outcome::Cut;
        }
        // hyper answers HEAD without pulling the body.
        if record.is_head() {
            record.outcome = Outcome::Complete;
        }
    }
}

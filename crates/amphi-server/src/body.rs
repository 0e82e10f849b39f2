//! The response body hyper pulls: either bytes already complete, or a handler still running
//! that the body polls for its next chunk.

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

/// The body of every response the server sends.
pub(crate) struct ResponseBody {
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

    fn record(&mut self) -> &mut AccessRecord {
        self.record
            .as_mut()
            .expect("the record lives as long as the body")
    }
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream {
                exact_len: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let (
            Kind::Stream {
                driver,
                drain: Some(drain),
                ..
            },
            Some(record),
        ) = (&self.kind, &mut self.record)
        {
            if driver.exchange.wait.tripped() {
                tracing::warn!(
                    path = record.path(),
                    bytes = record.bytes,
                    "the client took the response slower than the minimum rate ({} bytes/s); \
                     cut its connection",
                    drain.bytes_per_second()
                );
                record.outcome = Outcome::Cut;
            }
        }
        // hyper answers HEAD without pulling the body.
        if matches!(self.kind, Kind::Stream { .. }) && self.record().is_head() {
            self.record().outcome = Outcome::Complete;
        }
    }
}

//! Request bodies as they come in: hyper's own, or (with the `tower` feature) any body a
//! host server hands a [`RouterService`](crate::tower::RouterService).

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// An error from a request body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body: one enum rather than a boxed body, so hyper's needs no allocation.
pub(crate) enum Incoming {
    Hyper(hyper::body::Incoming),
    #[cfg(feature = "tower")]
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

impl http_body::Body for Incoming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Incoming::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            #[cfg(feature = "tower")]
            Incoming::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Incoming::Hyper(b) => b.is_end_stream(),
            #[cfg(feature = "tower")]
            Incoming::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Incoming::Hyper(b) => b.size_hint(),
            #[cfg(feature = "tower")]
            Incoming::Boxed(b) => b.size_hint(),
        }
    }
}

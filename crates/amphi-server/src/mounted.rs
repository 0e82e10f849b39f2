//! Tower services as mounts (`tower` feature): the erased form the route table holds, the
//! request body a mounted service reads, and the service a layer wraps.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use amphi_core::{Error, ErrorKind};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};

use crate::access::HandlerKind;
use crate::body::ResponseBody;
use crate::exchange::{BodyRate, RateClock};
use crate::incoming::{BoxError, Incoming};

/// The future of a mounted service's call.
pub(crate) type MountedFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

/// A tower service as the route table holds it: one type for every service.
pub(crate) trait Mounted: Send + Sync + 'static {
    /// Calls the service (waiting for `poll_ready` first).
    fn call(&self, req: Request<RequestBody>) -> MountedFuture;

    /// Whether the mount prefix comes off the request's path before the call. A foreign
    /// service sees the path below its mount (as axum's `nest_service` does); an amphi router
    /// behind layers sees the whole path, so its handlers get the right `root_path`.
    fn strips_prefix(&self) -> bool {
        true
    }

    /// What the access log calls the handler that serves `path`.
    fn kind(&self, _path: &str) -> HandlerKind {
        HandlerKind::Service
    }
}

/// Any tower service, as a [`Mounted`].
pub(crate) struct ServiceMount<S>(pub(crate) S);

impl<S, B> Mounted for ServiceMount<S>
where
    S: tower_service::Service<Request<RequestBody>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request<RequestBody>) -> MountedFuture {
        // tower's rule: each call gets a clone that was made ready, since readiness belongs to
        // the instance that reported it.
        let mut service = self.0.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let response = service.call(req).await.map_err(Into::into)?;
            Ok(response.map(response_body))
        })
    }
}

/// What a tower layer wraps: the mount (or router) below it, as a tower service.
///
/// [`Router::layer`](crate::Router::layer) hands each layer one of these; a layer that works
/// for any service (tower-http's do) works here. Cloning it is a reference-count increment.
#[derive(Clone)]
pub struct MountService {
    inner: Arc<dyn Mounted>,
}

impl std::fmt::Debug for MountService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountService").finish_non_exhaustive()
    }
}

impl MountService {
    pub(crate) fn new(inner: Arc<dyn Mounted>) -> MountService {
        MountService { inner }
    }
}

impl tower_service::Service<Request<RequestBody>> for MountService {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = MountedFuture;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // The mount below waits for its own readiness inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> MountedFuture {
        self.inner.call(req)
    }
}

/// A layer, boxed: what [`Router::layer`](crate::Router::layer) keeps until the router is
/// compiled.
pub(crate) type BoxLayer = Arc<dyn Fn(MountService) -> MountService + Send + Sync>;

/// The request body a tower service mounted in amphi reads
/// ([`Router::mount_service`](crate::Router::mount_service), `tower` feature): streamed from
/// the client as it arrives, never buffered.
///
/// # Errors
///
/// The server's limits apply: past [`Server::max_body_bytes`](crate::Server::max_body_bytes)
/// a frame fails with an error whose source is `http_body_util::LengthLimitError` (axum's
/// extractors answer that with `413`); a body slower than
/// [`Server::min_body_rate`](crate::Server::min_body_rate) fails with an
/// [`amphi_core::Error`] of kind [`ErrorKind::TimedOut`]; a client that goes away fails with
/// hyper's error.
pub struct RequestBody {
    inner: Limited<Incoming>,
    clock: Option<RateClock>,
    received: u64,
    failed: bool,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: u64, rate: Option<BodyRate>) -> RequestBody {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        RequestBody {
            inner: Limited::new(inner, limit),
            clock: rate.map(RateClock::new),
            received: 0,
            failed: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(clock) = &mut this.clock {
            if polled.is_ready() {
                clock.stop_waiting();
            } else if clock.poll_too_slow(this.received, cx) {
                this.failed = true;
                tracing::debug!(
                    received = this.received,
                    "request body too slow; giving up on it"
                );
                let err = Error::new(ErrorKind::TimedOut).with_message(format!(
                    "the request body arrived slower than {} bytes/s",
                    clock.bytes_per_second()
                ));
                return Poll::Ready(Some(Err(Box::new(err))));
            }
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `body` as a [`ResponseBody`]: itself when it is one already (an amphi router below a
/// layer that kept its body type), else boxed.
pub(crate) fn response_body<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(own) = (&mut slot as &mut dyn Any).downcast_mut::<Option<ResponseBody>>() {
        return own.take().expect("the slot was filled just above");
    }
    let body = slot.expect("the slot was filled just above");
    ResponseBody::boxed(body.map_err(Into::into).boxed_unsync())
}

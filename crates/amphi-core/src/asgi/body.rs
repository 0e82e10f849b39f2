//! The body type of the async closure sugar.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::{Error, ErrorKind, Event, Receiver};

type BoxStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

enum Kind {
    Empty,
    Full(Bytes),
    Stream(BoxStream),
    Incoming(Receiver),
    Done,
}

/// A streamed body for [`async_fn`](crate::async_fn) handlers, in both directions: the
/// request body arrives as one (read from `receive`), and a response body is one (sent
/// through `send`).
///
/// It is a [`Stream`] of chunks; [`chunk`](AsyncBody::chunk) and
/// [`to_bytes`](AsyncBody::to_bytes) are the common ways to read it.
///
/// # Errors
///
/// Reading a request body fails with [`ErrorKind::Disconnected`] when the client goes away and
/// with [`ErrorKind::BodyTooLarge`] when the server's body limit is passed.
///
/// # Examples
///
/// ```
/// use amphi_core::AsyncBody;
/// use bytes::Bytes;
///
/// # futures_executor::block_on(async {
/// let parts = vec![Ok(Bytes::from("a")), Ok(Bytes::from("b"))];
/// let body = AsyncBody::from_stream(futures_util::stream::iter(parts));
/// assert_eq!(body.to_bytes().await.unwrap(), "ab");
/// # });
/// ```
pub struct AsyncBody {
    kind: Kind,
}

impl AsyncBody {
    /// No body.
    pub fn empty() -> AsyncBody {
        AsyncBody { kind: Kind::Empty }
    }

    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> AsyncBody {
        AsyncBody {
            kind: Kind::Full(bytes.into()),
        }
    }

    /// A body streamed from `stream`.
    pub fn from_stream<S>(stream: S) -> AsyncBody
    where
        S: Stream<Item = Result<Bytes, Error>> + Send + 'static,
    {
        AsyncBody {
            kind: Kind::Stream(Box::pin(stream)),
        }
    }

    /// A request body read from `receive`'s `http.request` events.
    pub fn incoming(receiver: Receiver) -> AsyncBody {
        AsyncBody {
            kind: Kind::Incoming(receiver),
        }
    }

    /// The exact length when it is known without reading the body.
    pub fn exact_len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Empty | Kind::Done => Some(0),
            Kind::Full(b) => Some(b.len() as u64),
            _ => None,
        }
    }

    /// The next chunk, `None` at the end.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .transpose()
    }

    /// Reads the whole body into one `Bytes`.
    ///
    /// # Errors
    ///
    /// See the type's docs.
    pub async fn to_bytes(mut self) -> Result<Bytes, Error> {
        if let Kind::Full(b) = &mut self.kind {
            return Ok(std::mem::take(b));
        }
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            if all.is_empty() && self.exact_len() == Some(0) {
                return Ok(c);
            }
            all.extend_from_slice(&c);
        }
        Ok(all.into())
    }
}

impl Stream for AsyncBody {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.kind {
                Kind::Empty | Kind::Done => return Poll::Ready(None),
                Kind::Full(_) => {
                    let Kind::Full(b) = std::mem::replace(&mut this.kind, Kind::Done) else {
                        unreachable!("matched Full above")
                    };
                    if b.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(b)));
                }
                Kind::Stream(s) => {
                    let item = std::task::ready!(s.as_mut().poll_next(cx));
                    if item.as_ref().is_none_or(|r| r.is_err()) {
                        this.kind = Kind::Done;
                    }
                    return Poll::Ready(item);
                }
                Kind::Incoming(rx) => {
                    let event = std::task::ready!(rx.poll_receive(cx));
                    let item = match event {
                        Ok(Event::Request { body, more_body }) => {
                            if !more_body {
                                this.kind = Kind::Done;
                            }
                            if body.is_empty() {
                                continue;
                            }
                            Ok(body)
                        }
                        Ok(Event::Disconnect) => {
                            this.kind = Kind::Done;
                            Err(Error::new(ErrorKind::Disconnected)
                                .with_message("client went away before the body ended"))
                        }
                        Ok(other) => {
                            this.kind = Kind::Done;
                            Err(Error::protocol(format!(
                                "{} received while reading an http body",
                                other.type_name()
                            )))
                        }
                        Err(e) => {
                            this.kind = Kind::Done;
                            Err(e)
                        }
                    };
                    return Poll::Ready(Some(item));
                }
            }
        }
    }
}

impl Default for AsyncBody {
    fn default() -> Self {
        AsyncBody::empty()
    }
}

impl From<Bytes> for AsyncBody {
    fn from(b: Bytes) -> Self {
        AsyncBody::full(b)
    }
}

impl From<&'static str> for AsyncBody {
    fn from(s: &'static str) -> Self {
        AsyncBody::full(s)
    }
}

impl From<String> for AsyncBody {
    fn from(s: String) -> Self {
        AsyncBody::full(s)
    }
}

impl From<Vec<u8>> for AsyncBody {
    fn from(v: Vec<u8>) -> Self {
        AsyncBody::full(v)
    }
}

impl fmt::Debug for AsyncBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Stream(_) => "stream",
            Kind::Incoming(_) => "incoming",
            Kind::Done => "done",
        };
        f.debug_struct("AsyncBody").field("kind", &kind).finish()
    }
}

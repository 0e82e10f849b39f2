//! The request body of a sync handler, read by blocking I/O.

use std::fmt;
use std::io::{self, BufRead, Read};

use bytes::{Buf, Bytes};

use crate::{Error, ErrorKind};

type ChunkSource = Box<dyn Iterator<Item = Result<Bytes, Error>> + Send>;

/// The request body of a sync handler: read it with [`std::io::Read`] / [`BufRead`], or a
/// chunk at a time with [`chunk`](BlockingBody::chunk).
///
/// It streams: each read blocks until the next chunk arrives from the connection, and the
/// body is never buffered whole.
///
/// # Errors
///
/// Reads fail with an `io::Error` that [`Error::from_io`] turns back into an amphi [`Error`]:
///
/// | what happened | `io::ErrorKind` | [`ErrorKind`] |
/// |---|---|---|
/// | the client disconnected (or the request was cancelled) | `ConnectionAborted` | `Disconnected` |
/// | the body passed the limit (the server answers 413) | `InvalidData` | `BodyTooLarge` |
/// | the body ended before its `Content-Length` | `UnexpectedEof` | `IncompleteBody` |
///
/// Errors are sticky: after one, every read returns the same kind again. A body longer than
/// its `Content-Length` is cut there (the reader sees EOF), as PEP 3333 asks.
///
/// # Examples
///
/// ```
/// use amphi_core::BlockingBody;
/// use bytes::Bytes;
/// use std::io::Read;
///
/// let chunks = vec![Ok(Bytes::from("hel")), Ok(Bytes::from("lo"))];
/// let mut body = BlockingBody::from_chunks(chunks).with_content_length(5);
/// let mut text = String::new();
/// body.read_to_string(&mut text).unwrap();
/// assert_eq!(text, "hello");
///
/// let mut too_big = BlockingBody::from_bytes("0123456789").with_limit(4);
/// let err = too_big.read_to_end(&mut Vec::new()).unwrap_err();
/// assert!(amphi_core::Error::from_io(&err).unwrap().is_body_too_large());
/// ```
pub struct BlockingBody {
    source: Option<ChunkSource>,
    /// The unread rest of the current chunk.
    buf: Bytes,
    /// Bytes taken from the source so far (read or buffered).
    received: u64,
    limit: Option<u64>,
    content_length: Option<u64>,
    failed: Option<ErrorKind>,
}

impl BlockingBody {
    /// A body with no bytes.
    pub fn empty() -> BlockingBody {
        BlockingBody::from_source(None)
    }

    /// A body holding `bytes`.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> BlockingBody {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        BlockingBody::from_chunks(std::iter::once(Ok(bytes))).with_content_length(len)
    }

    /// A body pulled from `chunks`, each call of `next` may block. This is how a server or
    /// adapter feeds a body from a connection: it yields `Err` with
    /// [`ErrorKind::Disconnected`] when the client goes away.
    pub fn from_chunks<I>(chunks: I) -> BlockingBody
    where
        I: IntoIterator<Item = Result<Bytes, Error>>,
        I::IntoIter: Send + 'static,
    {
        BlockingBody::from_source(Some(Box::new(chunks.into_iter())))
    }

    fn from_source(source: Option<ChunkSource>) -> BlockingBody {
        BlockingBody {
            source,
            buf: Bytes::new(),
            received: 0,
            limit: None,
            content_length: None,
            failed: None,
        }
    }

    /// Fails reads with [`ErrorKind::BodyTooLarge`] once more than `limit` bytes would be
    /// delivered; a declared `Content-Length` over the limit fails the first read.
    #[must_use]
    pub fn with_limit(mut self, limit: u64) -> BlockingBody {
        self.limit = Some(limit);
        self
    }

    /// Declares the body's length: reading stops there, and a source that ends early fails
    /// with [`ErrorKind::IncompleteBody`].
    #[must_use]
    pub fn with_content_length(mut self, len: u64) -> BlockingBody {
        self.content_length = Some(len);
        self
    }

    /// The declared length, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes handed to the reader so far.
    pub fn bytes_read(&self) -> u64 {
        self.received - self.buf.len() as u64
    }

    fn fail(&mut self, kind: ErrorKind, message: Option<String>) -> io::Error {
        self.failed = Some(kind);
        self.source = None;
        self.buf.clear();
        let err = Error::new(kind);
        match message {
            Some(m) => err.with_message(m),
            None => err,
        }
        .into_io()
    }

    /// Makes sure `buf` holds unread bytes, unless the body is at its end.
    fn fill(&mut self) -> io::Result<()> {
        if let Some(kind) = self.failed {
            return Err(Error::new(kind).into_io());
        }
        if let (Some(limit), Some(len)) = (self.limit, self.content_length) {
            if len > limit {
                return Err(self.fail(
                    ErrorKind::BodyTooLarge,
                    Some(format!(
                        "content-length {len} over the limit of {limit} bytes"
                    )),
                ));
            }
        }
        while self.buf.is_empty() {
            if self.content_length.is_some_and(|len| self.received >= len) {
                self.source = None;
                return Ok(());
            }
            // No source is the same as one that has ended: a declared length still has to
            // be met.
            let next = self.source.as_mut().and_then(Iterator::next);
            match next {
                Some(Ok(mut chunk)) => {
                    if let Some(len) = self.content_length {
                        let room = len - self.received;
                        if chunk.len() as u64 > room {
                            chunk.truncate(room as usize);
                        }
                    }
                    let total = self.received + chunk.len() as u64;
                    if let Some(limit) = self.limit.filter(|&l| total > l) {
                        return Err(self.fail(
                            ErrorKind::BodyTooLarge,
                            Some(format!("more than {limit} bytes")),
                        ));
                    }
                    self.received = total;
                    self.buf = chunk;
                }
                Some(Err(e)) => {
                    let kind = e.kind();
                    self.failed = Some(kind);
                    self.source = None;
                    return Err(e.into_io());
                }
                None => {
                    self.source = None;
                    if let Some(len) = self.content_length.filter(|&l| self.received < l) {
                        let got = self.received;
                        return Err(self.fail(
                            ErrorKind::IncompleteBody,
                            Some(format!("got {got} of {len} bytes")),
                        ));
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The next chunk as it arrived (or the unread rest of one), `None` at the end.
    ///
    /// # Errors
    ///
    /// As for reads; see the type's docs.
    pub fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        self.fill()?;
        if self.buf.is_empty() {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// Reads the whole rest of the body into one `Bytes`.
    ///
    /// # Errors
    ///
    /// As for reads; see the type's docs.
    pub fn to_bytes(&mut self) -> io::Result<Bytes> {
        let first = match self.chunk()? {
            None => return Ok(Bytes::new()),
            Some(c) => c,
        };
        let Some(second) = self.chunk()? else {
            return Ok(first);
        };
        let mut all = Vec::with_capacity(first.len() + second.len());
        all.extend_from_slice(&first);
        all.extend_from_slice(&second);
        while let Some(c) = self.chunk()? {
            all.extend_from_slice(&c);
        }
        Ok(all.into())
    }
}

impl Read for BlockingBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        self.fill()?;
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.advance(n);
        Ok(n)
    }
}

impl BufRead for BlockingBody {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill()?;
        Ok(&self.buf)
    }

    fn consume(&mut self, amt: usize) {
        self.buf.advance(amt.min(self.buf.len()));
    }
}

/// Iterates the body chunk by chunk; see [`BlockingBody::chunk`].
///
/// `BlockingBody` is not itself an `Iterator`: it would make `Read`'s `take`, `bytes`,
/// `chain` and `by_ref` ambiguous. Loop on [`chunk`](BlockingBody::chunk) to iterate a
/// borrowed body; turn an owned one into an iterator, e.g. to stream it back out with
/// [`SyncBody::try_chunks`](crate::SyncBody::try_chunks).
impl IntoIterator for BlockingBody {
    type Item = io::Result<Bytes>;
    type IntoIter = IntoChunks;

    fn into_iter(self) -> IntoChunks {
        IntoChunks {
            body: self,
            errored: false,
        }
    }
}

/// An owned [`BlockingBody`] as an iterator of chunks; see its `IntoIterator` impl.
///
/// It yields each chunk as [`BlockingBody::chunk`] would, an error at most once (then it
/// ends), and nothing after the end.
#[derive(Debug)]
pub struct IntoChunks {
    body: BlockingBody,
    errored: bool,
}

impl IntoChunks {
    /// The body, with whatever was not yet iterated.
    pub fn into_inner(self) -> BlockingBody {
        self.body
    }
}

impl Iterator for IntoChunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.errored {
            // The body's errors are sticky; an iterator that repeated one forever would make
            // `collect` and loops that skip errors spin.
            return None;
        }
        let item = self.body.chunk().transpose();
        self.errored = matches!(item, Some(Err(_)));
        item
    }
}

impl Default for BlockingBody {
    fn default() -> Self {
        BlockingBody::empty()
    }
}

impl From<Bytes> for BlockingBody {
    fn from(b: Bytes) -> Self {
        BlockingBody::from_bytes(b)
    }
}

impl From<&'static str> for BlockingBody {
    fn from(s: &'static str) -> Self {
        BlockingBody::from_bytes(s)
    }
}

impl From<Vec<u8>> for BlockingBody {
    fn from(v: Vec<u8>) -> Self {
        BlockingBody::from_bytes(v)
    }
}

impl fmt::Debug for BlockingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingBody")
            .field("bytes_read", &self.bytes_read())
            .field("content_length", &self.content_length)
            .field("limit", &self.limit)
            .field("failed", &self.failed)
            .finish()
    }
}

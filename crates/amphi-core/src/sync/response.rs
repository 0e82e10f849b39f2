//! The response of a sync handler and its streamed body.

use std::fmt;
use std::io::{self, Write};

use bytes::Bytes;

use crate::{Error, ErrorKind};

/// The response a sync handler returns: an `http::Response` whose body is a [`SyncBody`].
pub type SyncResponse = http::Response<SyncBody>;

type ChunkIter = Box<dyn Iterator<Item = io::Result<Bytes>> + Send>;
type WriteFn = Box<dyn FnOnce(&mut BodyWriter<'_>) -> io::Result<()> + Send>;
type CloseFn = Box<dyn FnOnce() + Send>;

enum Kind {
    Empty,
    Full(Bytes),
    Chunks(ChunkIter),
    Writer(WriteFn),
}

/// The body of a [`SyncResponse`]: empty, bytes, an iterator of chunks, or a function that
/// writes through a [`BodyWriter`] (WSGI's `write()`).
///
/// Whoever serves the response drains it with [`SyncBody::write_to`], on a blocking thread;
/// each chunk goes to the client as it is produced, and a slow client slows the producer
/// (backpressure) instead of piling chunks up in memory.
///
/// # Cleanup
///
/// A function set with [`on_close`](SyncBody::on_close) runs exactly once on every path: when
/// the body is fully written, when writing it fails (the client went away), when the producer
/// panics, and when the body is dropped unread or half read. This is PEP 3333's `close()`.
/// The iterator or writer function is itself dropped on all of those paths, so its own `Drop`
/// is a cleanup hook too.
///
/// # Examples
///
/// ```
/// use amphi_core::SyncBody;
/// use bytes::Bytes;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let closed = Arc::new(AtomicBool::new(false));
/// let flag = closed.clone();
/// let body = SyncBody::chunks((0..3).map(|i| Bytes::from(format!("part {i}\n"))))
///     .on_close(move || flag.store(true, Ordering::SeqCst));
///
/// let mut received = Vec::new();
/// body.write_to(&mut |chunk| { received.extend_from_slice(&chunk); Ok(()) }).unwrap();
/// assert_eq!(received, b"part 0\npart 1\npart 2\n");
/// assert!(closed.load(Ordering::SeqCst));
/// ```
pub struct SyncBody {
    kind: Option<Kind>,
    on_close: Option<CloseFn>,
}

impl SyncBody {
    fn of(kind: Kind) -> SyncBody {
        SyncBody {
            kind: Some(kind),
            on_close: None,
        }
    }

    /// No body.
    pub fn empty() -> SyncBody {
        SyncBody::of(Kind::Empty)
    }

    /// A body of known bytes.
    pub fn full(bytes: impl Into<Bytes>) -> SyncBody {
        SyncBody::of(Kind::Full(bytes.into()))
    }

    /// A body streamed from an iterator of chunks; `next` runs on a blocking thread and may
    /// block.
    pub fn chunks<I, B>(chunks: I) -> SyncBody
    where
        I: IntoIterator<Item = B>,
        I::IntoIter: Send + 'static,
        B: Into<Bytes>,
    {
        SyncBody::of(Kind::Chunks(Box::new(
            chunks.into_iter().map(|b| Ok(b.into())),
        )))
    }

    /// A body streamed from an iterator whose items may fail. An error ends the response
    /// early: the server cuts the connection, since the status has already been sent.
    pub fn try_chunks<I>(chunks: I) -> SyncBody
    where
        I: IntoIterator<Item = io::Result<Bytes>>,
        I::IntoIter: Send + 'static,
    {
        SyncBody::of(Kind::Chunks(Box::new(chunks.into_iter())))
    }

    /// A body produced by `write`, which is called on a blocking thread once the response
    /// head is on its way and writes through a [`BodyWriter`]. Each `write` call blocks until
    /// the connection has room for it. If `write` fails, or returns `Ok` after a write of it
    /// failed, the response is cut.
    pub fn writer<F>(write: F) -> SyncBody
    where
        F: FnOnce(&mut BodyWriter<'_>) -> io::Result<()> + Send + 'static,
    {
        SyncBody::of(Kind::Writer(Box::new(write)))
    }

    /// Runs `f` exactly once, when the body is finished or dropped, on every path; see the
    /// type's docs. Setting it twice runs both, the earlier first.
    #[must_use]
    pub fn on_close<F: FnOnce() + Send + 'static>(mut self, f: F) -> SyncBody {
        self.on_close = Some(match self.on_close.take() {
            None => Box::new(f),
            Some(prev) => Box::new(move || {
                prev();
                f();
            }),
        });
        self
    }

    /// The exact length when it is known without producing the body.
    pub fn exact_len(&self) -> Option<u64> {
        match &self.kind {
            Some(Kind::Empty) => Some(0),
            Some(Kind::Full(b)) => Some(b.len() as u64),
            _ => None,
        }
    }

    /// Whether the body is produced on the fly (an iterator or a writer).
    pub fn is_streamed(&self) -> bool {
        matches!(self.kind, Some(Kind::Chunks(_) | Kind::Writer(_)))
    }

    /// The body's bytes without producing it, when it is empty or full; otherwise the body
    /// is given back unchanged.
    ///
    /// # Errors
    ///
    /// Returns `self` when the body is streamed.
    pub fn try_into_bytes(mut self) -> Result<Bytes, SyncBody> {
        match self.kind.take() {
            Some(Kind::Empty) => Ok(Bytes::new()),
            Some(Kind::Full(b)) => Ok(b),
            other => {
                self.kind = other;
                Err(self)
            }
        }
    }

    /// Produces the body, handing each non-empty chunk to `sink` as it comes, then runs the
    /// cleanup. Call it on a thread that may block. `sink` blocks for backpressure and fails
    /// when the client is gone; its error stops the body and is returned.
    ///
    /// # Errors
    ///
    /// The first error of the producer or of `sink`.
    pub fn write_to(mut self, sink: &mut dyn FnMut(Bytes) -> io::Result<()>) -> io::Result<()> {
        // `self` is dropped at the end of this call on every path, unwinding included, and its
        // Drop runs the cleanup.
        match self.kind.take() {
            None | Some(Kind::Empty) => Ok(()),
            Some(Kind::Full(b)) if b.is_empty() => Ok(()),
            Some(Kind::Full(b)) => sink(b),
            Some(Kind::Chunks(iter)) => {
                for chunk in iter {
                    let chunk = chunk?;
                    if !chunk.is_empty() {
                        sink(chunk)?;
                    }
                }
                Ok(())
            }
            Some(Kind::Writer(write)) => {
                let mut writer = BodyWriter {
                    sink,
                    written: 0,
                    failed: None,
                };
                let result = write(&mut writer);
                // A writer that swallowed a failed write has not produced the whole body.
                match (result, writer.failed) {
                    (Ok(()), Some(failed)) => Err(failed.to_io()),
                    (result, _) => result,
                }
            }
        }
    }

    /// Produces the whole body into memory (for tests and small bodies).
    ///
    /// # Errors
    ///
    /// The producer's first error.
    pub fn collect(self) -> io::Result<Bytes> {
        let mut out = Vec::new();
        self.write_to(&mut |c| {
            out.extend_from_slice(&c);
            Ok(())
        })?;
        Ok(out.into())
    }
}

impl Drop for SyncBody {
    fn drop(&mut self) {
        // Drop the producer first so its own cleanup runs before the close hook.
        drop(self.kind.take());
        if let Some(close) = self.on_close.take() {
            close();
        }
    }
}

impl Default for SyncBody {
    fn default() -> Self {
        SyncBody::empty()
    }
}

impl From<Bytes> for SyncBody {
    fn from(b: Bytes) -> Self {
        SyncBody::full(b)
    }
}

impl From<&'static str> for SyncBody {
    fn from(s: &'static str) -> Self {
        SyncBody::full(s)
    }
}

impl From<String> for SyncBody {
    fn from(s: String) -> Self {
        SyncBody::full(s)
    }
}

impl From<Vec<u8>> for SyncBody {
    fn from(v: Vec<u8>) -> Self {
        SyncBody::full(v)
    }
}

impl fmt::Debug for SyncBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            None => "taken",
            Some(Kind::Empty) => "empty",
            Some(Kind::Full(_)) => "full",
            Some(Kind::Chunks(_)) => "chunks",
            Some(Kind::Writer(_)) => "writer",
        };
        f.debug_struct("SyncBody")
            .field("kind", &kind)
            .field("exact_len", &self.exact_len())
            .finish()
    }
}

/// Writes a streamed response body (WSGI's `write()`); see [`SyncBody::writer`].
///
/// Each `write` sends its bytes at once as one chunk (PEP 3333: blocks must not be delayed);
/// wrap it in a `std::io::BufWriter` to coalesce small writes (`write!` makes one write per
/// piece of the format string). A write blocks while the client is slower than the producer,
/// and fails with `ConnectionAborted` once the client is gone.
///
/// A failure is sticky: every later write fails the same way without touching the
/// connection, and the body counts as failed even if the writer function ignores the error
/// and returns `Ok`.
pub struct BodyWriter<'a> {
    sink: &'a mut dyn FnMut(Bytes) -> io::Result<()>,
    written: u64,
    failed: Option<Failure>,
}

/// What is kept of a failed write, to fail later writes the same way (`io::Error` is not
/// `Clone`).
#[derive(Debug, Clone, Copy)]
struct Failure {
    io: io::ErrorKind,
    amphi: Option<ErrorKind>,
}

impl Failure {
    fn of(err: &io::Error) -> Failure {
        Failure {
            io: err.kind(),
            amphi: Error::from_io(err).map(Error::kind),
        }
    }

    fn to_io(self) -> io::Error {
        const MESSAGE: &str = "an earlier write of the response body failed";
        match self.amphi {
            Some(kind) => Error::new(kind).with_message(MESSAGE).into_io(),
            None => io::Error::new(self.io, MESSAGE),
        }
    }
}

impl BodyWriter<'_> {
    /// Sends `bytes` without copying them.
    ///
    /// # Errors
    ///
    /// When the client is gone, or an earlier write failed.
    pub fn send(&mut self, bytes: Bytes) -> io::Result<()> {
        if let Some(failed) = self.failed {
            return Err(failed.to_io());
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let len = bytes.len() as u64;
        match (self.sink)(bytes) {
            Ok(()) => {
                self.written += len;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(Failure::of(&e));
                Err(e)
            }
        }
    }

    /// Bytes the connection has taken so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl Write for BodyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(Bytes::copy_from_slice(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for BodyWriter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyWriter")
            .field("written", &self.written)
            .finish()
    }
}

//! Listening sockets: TCP with a deep backlog, and unix sockets.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs, UnixListener};

/// A listening socket: TCP or unix.
pub(crate) trait Listen: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&mut self)
        -> impl Future<Output = io::Result<(Self::Io, Option<SocketAddr>)>> + Send;

    fn local_addr(&self) -> Option<SocketAddr>;

    fn prepare(&self, _io: &Self::Io) {}
}

impl Listen for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Option<SocketAddr>)> {
        let (io, peer) = TcpListener::accept(self).await?;
        Ok((io, Some(peer)))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        TcpListener::local_addr(self).ok()
    }

    fn prepare(&self, io: &Self::Io) {
        // Small responses should leave at once rather than wait for Nagle's delayed ACK.
        let _ = io.set_nodelay(true);
    }
}

impl Listen for UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&mut self) -> io::Result<(Self::Io, Option<SocketAddr>)> {
        let (io, _) = UnixListener::accept(self).await?;
        Ok((io, None))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// The listen backlog of [`Server::bind`]: connections the kernel completes before the server
/// accepts them. tokio's `TcpListener::bind` (like std's) asks for 128, which a burst of new
/// connections overflows while the accept loop is busy: the kernel then drops handshakes
/// (SYN cookies) and some clients see their connection reset. Linux caps it at
/// `net.core.somaxconn` (4096 by default).
///
/// Unix sockets need no such setting: tokio's `UnixListener::bind` (mio, like std) listens
/// with a backlog of -1 on Linux, macOS and the BSDs, which the kernel reads as its maximum,
/// `net.core.somaxconn`: the same 4096 as here on a default Linux, more if it was raised.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on the first address of `addr` that works, with [`LISTEN_BACKLOG`].
pub(crate) async fn listen_tcp(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio do: rebind at once after a restart.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Whether an accept error concerns one connection only (retry at once) rather than the
/// process (back off: out of file descriptors, say).
pub(crate) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

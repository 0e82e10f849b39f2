//! Listening sockets: TCP with a deep backlog (and `SO_REUSEPORT` on request), unix
//! sockets, and sockets opened by someone else (systemd socket activation, a file
//! descriptor, a listener the caller bound).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

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

/// Binds a TCP listener on the first address of `addr` that works, with [`LISTEN_BACKLOG`],
/// and `SO_REUSEPORT` when `reuse_port`.
pub(crate) async fn listen_tcp(
    addr: impl ToSocketAddrs,
    reuse_port: bool,
) -> io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As std and tokio do: rebind at once after a restart.
        socket.set_reuseaddr(true)?;
        if reuse_port {
            // Several processes (or servers) on one port, the kernel spreading new
            // connections between them: what lets a new instance start before the old one
            // stops.
            socket.set_reuseport(true)?;
        }
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

/// A listening socket opened outside [`Server::bind`](crate::Server::bind): inherited through
/// systemd socket activation, at a file descriptor number, or bound by the caller. Serve it
/// with [`Server::serve_on`](crate::Server::serve_on).
///
/// Take inherited sockets early in `main`, before any other thread starts: reading the
/// activation variables clears them (so a child process does not take the socket too), and
/// changing the environment while another thread reads it is a data race in the C library.
///
/// # Examples
///
/// ```no_run
/// use amphi_server::{Listener, Router, Server};
///
/// fn main() -> std::io::Result<()> {
///     // Under systemd (a `.socket` unit) the socket comes from it; otherwise bind one.
///     let listener = match Listener::from_systemd()? {
///         Some(l) => l,
///         None => std::net::TcpListener::bind("127.0.0.1:8000")?.into(),
///     };
///     let rt = tokio::runtime::Runtime::new()?;
///     rt.block_on(async {
///         let serving = Server::new(Router::new()).serve_on(listener).await.unwrap();
///         serving.run_until(amphi_server::shutdown_signal()).await.unwrap();
///     });
///     Ok(())
/// }
/// ```
pub struct Listener {
    pub(crate) kind: ListenerKind,
}

pub(crate) enum ListenerKind {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ListenerKind::Tcp(l) => f.debug_tuple("Listener::Tcp").field(l).finish(),
            ListenerKind::Unix(l) => f.debug_tuple("Listener::Unix").field(l).finish(),
        }
    }
}

impl Listener {
    /// The first socket passed by systemd socket activation (`LISTEN_FDS`, for this process
    /// when `LISTEN_PID` is set), TCP or unix; `None` when the process was not given any.
    /// Clears `LISTEN_FDS` and `LISTEN_PID`.
    ///
    /// # Errors
    ///
    /// When the passed descriptor is not a listening TCP or unix stream socket.
    pub fn from_systemd() -> io::Result<Option<Listener>> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        take(&mut fds, 0).map(Some)
    }

    /// The listening socket at file descriptor `fd`, inherited from the parent process (a
    /// supervisor, `inetd`-style with `fd` 0, or a wrapper that opened it). The listener owns
    /// the descriptor from here on. Sets and clears the environment variables of systemd's
    /// protocol (`LISTEN_FDS`, `LISTEN_FDS_FIRST_FD`) to take it without `unsafe` code.
    ///
    /// # Errors
    ///
    /// When `fd` is not a listening TCP or unix stream socket.
    pub fn from_fd(fd: RawFd) -> io::Result<Listener> {
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_FDS_FIRST_FD", fd.to_string());
        std::env::remove_var("LISTEN_PID");
        let mut fds = listenfd::ListenFd::from_env();
        std::env::remove_var("LISTEN_FDS_FIRST_FD");
        take(&mut fds, 0)
    }

    /// The local address of a TCP listener; `None` for a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.kind {
            ListenerKind::Tcp(l) => l.local_addr().ok(),
            ListenerKind::Unix(_) => None,
        }
    }
}

fn take(fds: &mut listenfd::ListenFd, index: usize) -> io::Result<Listener> {
    // A descriptor of the wrong kind is left in place by `take_*`, so the second try sees it.
    let tcp = match fds.take_tcp_listener(index) {
        Ok(Some(l)) => return Ok(l.into()),
        Ok(None) => None,
        Err(e) => Some(e),
    };
    match fds.take_unix_listener(index) {
        Ok(Some(l)) => Ok(l.into()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no inherited socket at that position",
        )),
        Err(_) => Err(tcp.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the inherited descriptor is not a listening stream socket",
            )
        })),
    }
}

impl From<std::net::TcpListener> for Listener {
    fn from(l: std::net::TcpListener) -> Listener {
        Listener {
            kind: ListenerKind::Tcp(l),
        }
    }
}

impl From<std::os::unix::net::UnixListener> for Listener {
    fn from(l: std::os::unix::net::UnixListener) -> Listener {
        Listener {
            kind: ListenerKind::Unix(l),
        }
    }
}

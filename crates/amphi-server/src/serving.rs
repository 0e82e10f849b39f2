//! The running server: its address, the handle that stops it, and the future that waits for it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use amphi_core::CancellationToken;
use amphi_sync_to_async::BlockingPool;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::ServeError;

/// Stops a running server; cheap to clone and to keep.
///
/// # Examples
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use amphi_server::{Router, Server};
///
/// let serving = Server::new(Router::new()).bind("127.0.0.1:0").await.unwrap();
/// let handle = serving.shutdown_handle();
/// tokio::spawn(async move { handle.shutdown() });
/// serving.wait().await.unwrap();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    pub(crate) fn new(token: CancellationToken) -> ShutdownHandle {
        ShutdownHandle { token }
    }

    /// Starts a graceful shutdown; see [`Server`](crate::Server). Calling it again does nothing.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A server that is listening: its address, a way to stop it, and a way to wait for it.
///
/// Dropping it starts a graceful shutdown in the background; await
/// [`shutdown`](Serving::shutdown) or [`wait`](Serving::wait) to know when it is done.
pub struct Serving {
    local_addr: Option<SocketAddr>,
    pool: BlockingPool,
    handle: ShutdownHandle,
    app: Arc<App>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsHandle>,
}

impl fmt::Debug for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving")
            .field("local_addr", &self.local_addr)
            .field("in_flight", &self.in_flight())
            .field("shutting_down", &self.handle.is_shutting_down())
            .finish()
    }
}

impl Serving {
    pub(crate) fn new(
        local_addr: Option<SocketAddr>,
        pool: BlockingPool,
        handle: ShutdownHandle,
        app: Arc<App>,
        task: JoinHandle<Result<(), ServeError>>,
    ) -> Serving {
        Serving {
            local_addr,
            pool,
            handle,
            app,
            task: Some(task),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn with_tls(mut self, tls: Option<crate::tls::TlsHandle>) -> Serving {
        self.tls = tls;
        self
    }

    /// The handle that reloads the certificate of a server serving TLS (`tls` feature);
    /// `None` for plain HTTP.
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&crate::tls::TlsHandle> {
        self.tls.as_ref()
    }

    /// Whether shutdown has started, and with it the drain delay and the drain: what
    /// [`Health`](crate::Health) answers `503` for.
    pub fn is_draining(&self) -> bool {
        self.app.counters.draining.load(Ordering::Relaxed)
    }

    /// The address the server listens on (with the real port when bound to port 0); `None`
    /// on a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// A handle that starts a graceful shutdown from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// The pool sync handlers run on: [`in_flight`](BlockingPool::in_flight) says how many
    /// blocking slots are taken.
    pub fn blocking_pool(&self) -> &BlockingPool {
        &self.pool
    }

    /// The server's request counters.
    pub(crate) fn counters(&self) -> Arc<crate::conn::Counters> {
        self.app.counters.clone()
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.app.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Waits until the server has stopped (someone called [`ShutdownHandle::shutdown`]),
    /// drained and run lifespan shutdown.
    ///
    /// # Errors
    ///
    /// [`ServeError::is_io`] if the serving task itself failed.
    pub async fn wait(mut self) -> Result<(), ServeError> {
        let task = self.task.take().expect("the task is taken only here");
        match task.await {
            Ok(result) => result,
            Err(e) => Err(ServeError::io(
                "the serving task failed",
                io::Error::other(e.to_string()),
            )),
        }
    }

    /// Starts a graceful shutdown and waits for it to finish.
    ///
    /// # Errors
    ///
    /// As for [`wait`](Serving::wait).
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.handle.shutdown();
        self.wait().await
    }

    /// Serves until `signal` completes (or someone calls [`ShutdownHandle::shutdown`]), then
    /// shuts down gracefully. With [`shutdown_signal`](crate::shutdown_signal) this is what a
    /// `main` needs.
    ///
    /// # Errors
    ///
    /// As for [`wait`](Serving::wait).
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        let token = self.handle.token.clone();
        tokio::select! {
            _ = signal => {
                tracing::info!("shutdown requested");
                self.handle.shutdown();
            }
            _ = token.cancelled() => {}
        }
        self.wait().await
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.handle.shutdown();
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, for [`Serving::run_until`].
///
/// The handlers are installed when this is called, not when the future is first polled: call
/// it before telling anyone where the server listens, and a SIGTERM sent the moment they know
/// still drains the server instead of killing the process.
///
/// # Panics
///
/// When the signal handlers cannot be installed (outside a tokio runtime with signals
/// enabled).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

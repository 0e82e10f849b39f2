//! Serving a listener: the accept loop (connections in, up to the connection cap), each
//! connection's task (hyper next to its watchdogs), and at shutdown the drain and the cut
//! after the grace period.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use amphi_core::CancellationToken;
use amphi_sync_to_async::BlockingPool;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::app::App;
use crate::conn::{connection_builder, ConnSettings, ConnState};
use crate::drain::{Drain, DrainWatch};
use crate::idle::HeadDeadline;
use crate::lifespan::Lifespans;
use crate::listener::{is_connection_error, Listen};
use crate::origin::Origin;
use crate::proxy::TrustedProxies;
use crate::response_rate::{ConnWatch, Watchdog};
use crate::service::ConnService;
use crate::serving::{Serving, ShutdownHandle};
use crate::ServeError;

/// A server whose lifespan startup has run, ready to serve a listener.
pub(crate) struct Prepared {
    /// The span connections run in (a worker's).
    pub(crate) log_span: Option<tracing::Span>,
    pub(crate) app: Arc<App>,
    pub(crate) pool: BlockingPool,
    pub(crate) lifespans: Lifespans,
    pub(crate) lifespan_timeout: Duration,
    pub(crate) conn: ConnSettings,
    pub(crate) max_connections: usize,
    pub(crate) grace_period: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) origins: Origins,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsSide>,
}

/// The TLS side of a server: the acceptor, the reload handle, and whether SIGHUP reloads.
#[cfg(feature = "tls")]
pub(crate) struct TlsSide {
    pub(crate) tls: crate::tls::Tls,
    pub(crate) handle: crate::tls::TlsHandle,
    pub(crate) sighup: bool,
}

/// What connections add to their requests, by kind of peer: made once, shared by every
/// connection of the kind.
pub(crate) struct Origins {
    proxies: Option<Arc<TrustedProxies>>,
    /// An untrusted peer's (`None`: plain HTTP, no prefix: nothing to add).
    plain: Option<Arc<Origin>>,
    /// A trusted proxy's.
    trusted: Option<Arc<Origin>>,
}

impl Origins {
    pub(crate) fn new(https: bool, proxies: TrustedProxies, prefix: Option<Arc<str>>) -> Origins {
        let proxies = (!proxies.is_empty()).then(|| Arc::new(proxies));
        let plain = Origin {
            https,
            prefix,
            ..Origin::default()
        };
        let trusted = proxies.clone().and_then(|p| {
            Origin {
                proxies: Some(p),
                ..plain.clone()
            }
            .shared()
        });
        Origins {
            proxies,
            plain: plain.shared(),
            trusted,
        }
    }

    /// The extras of a connection from `peer` (`None`: a unix socket).
    fn of(&self, peer: Option<std::net::SocketAddr>) -> Option<Arc<Origin>> {
        match &self.proxies {
            Some(p) if p.trusts_peer(peer) => self.trusted.clone(),
            _ => self.plain.clone(),
        }
    }
}

impl Prepared {
    pub(crate) async fn abandon(self) {
        self.lifespans.shutdown(self.lifespan_timeout).await;
    }

    pub(crate) fn spawn<L: Listen>(self, listener: L) -> Serving {
        let local_addr = listener.local_addr();
        let token = CancellationToken::new();
        let app = self.app.clone();
        let pool = self.pool.clone();
        #[cfg(feature = "tls")]
        let tls = self.tls.as_ref().map(|t| {
            if t.sighup {
                reload_on_sighup(t.handle.clone(), token.clone());
            }
            t.handle.clone()
        });
        let task = tokio::spawn(run(listener, self, token.clone()));
        let serving = Serving::new(local_addr, pool, ShutdownHandle::new(token), app, task);
        #[cfg(feature = "tls")]
        let serving = serving.with_tls(tls);
        serving
    }
}

/// Accepts and serves until `token` is cancelled, then drains, cuts what is left after the
/// grace period, and runs lifespan shutdown.
async fn run<L: Listen>(
    mut listener: L,
    prepared: Prepared,
    token: CancellationToken,
) -> Result<(), ServeError> {
    let Prepared {
        log_span,
        app,
        pool: _,
        lifespans,
        lifespan_timeout,
        conn: settings,
        max_connections,
        grace_period,
        drain_delay,
        origins,
        #[cfg(feature = "tls")]
        tls,
    } = prepared;
    #[cfg(feature = "tls")]
    let tls = tls.map(|t| Arc::new(t.tls));
    let builder = Arc::new(connection_builder(settings));
    let drain = Arc::new(Drain::default());
    let limit = Arc::new(Semaphore::new(max_connections));
    let mut conns = JoinSet::new();
    let server_addr = listener.local_addr();
    // Shutdown starts: health turns 503 at once, the listener stays open for the drain delay.
    let stop = async {
        token.cancelled().await;
        app.counters.draining.store(true, Ordering::Relaxed);
        if !drain_delay.is_zero() {
            tracing::info!(
                "shutting down: health answers 503; still accepting for {drain_delay:?}"
            );
            tokio::time::sleep(drain_delay).await;
        }
    };
    tokio::pin!(stop);
    loop {
        // Reap finished connection tasks so the set does not grow with the server's age.
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = &mut stop => break,
            permit = limit.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (io, client) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::error!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        listener.prepare(&io);
        let state = ConnState::new(app.counters.clone(), client);
        let service = ConnService {
            app: app.clone(),
            client,
            server: server_addr,
            conn: Some(state.clone()),
            watch: settings.response_rate.map(ConnWatch::new),
            origin: origins.of(client),
        };
        let watch = DrainWatch::new(drain.clone());
        #[cfg(feature = "tls")]
        if let Some(tls) = &tls {
            let (tls, builder) = (tls.clone(), builder.clone());
            let head_timeout = settings.header_read_timeout;
            conns.spawn(async move {
                let _permit = permit;
                serve_tls(&tls, io, service, state, builder, watch, head_timeout).await;
            });
            continue;
        }
        let served = serve(
            io,
            service,
            state,
            builder.clone(),
            watch,
            settings.header_read_timeout,
        );
        let task = async move {
            let _permit = permit;
            served.await;
        };
        match &log_span {
            Some(span) => conns.spawn(tracing::Instrument::instrument(task, span.clone())),
            None => conns.spawn(task),
        };
    }
    drop(listener);
    tracing::info!(
        connections = conns.len(),
        requests = app.counters.in_flight.load(Ordering::Relaxed),
        websockets = app.sessions.live(),
        "shutting down: stopped accepting; draining for up to {grace_period:?}"
    );
    let drained = tokio::time::timeout(grace_period, async {
        drain.start();
        app.sessions.go_away();
        while conns.join_next().await.is_some() {}
        app.sessions.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = conns.len(),
            requests = app.counters.in_flight.load(Ordering::Relaxed),
            "grace period over: cutting what is still running"
        );
        app.counters.cutting.store(true, Ordering::Relaxed);
        conns.shutdown().await;
        app.sessions.cut().await;
    }
    lifespans.shutdown(lifespan_timeout).await;
    tracing::info!("shut down");
    Ok(())
}

/// How long a connection accepted just before the drain started may take to send its first
/// request: a client that connected and is sending gets its answer instead of a closed
/// connection (HTTP/1.1) or a refused stream (HTTP/2).
const FIRST_REQUEST_AT_DRAIN: Duration = Duration::from_secs(1);

/// Serves one accepted connection until it ends, or until its response-rate watchdog or its
/// header-read deadline cuts it; once `drain` says so, the connection finishes its requests
/// and closes.
// Not an `async fn`: that would lay its arguments out twice in the task's future (as
// arguments and as the locals they move into), and every connection allocates that future.
#[allow(clippy::manual_async_fn)]
pub(crate) fn serve<I>(
    io: I,
    service: ConnService,
    state: Arc<ConnState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut drain: DrainWatch,
    head_timeout: Option<Duration>,
) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let watch = service.watch.clone();
        // Made here, borrowing the shared builder, rather than made outside and moved in: a
        // captured connection would be laid out twice in this future (the capture and the
        // pinned local), and an owned one carries its own copy of the builder.
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        // Polled after the connection, so they see what the connection just did: returning
        // drops the connection, which cuts it.
        let mut watchdog = Watchdog::new(watch);
        let fresh = state.clone();
        let mut deadline = head_timeout.map(|t| HeadDeadline::new(state, t));
        let timer = tokio::time::sleep(head_timeout.unwrap_or(Duration::MAX));
        tokio::pin!(timer);
        // A connection told to drain before its first request arrived: it is given a moment
        // for that request (whose bytes may be on their way already), which it then serves.
        let mut first_request: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| {
            if drain.poll_started(cx) {
                if fresh.is_fresh() {
                    first_request = Some(Box::pin(tokio::time::sleep(FIRST_REQUEST_AT_DRAIN)));
                } else {
                    conn.as_mut().graceful_shutdown();
                }
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                log_connection_end(result);
                return Poll::Ready(());
            }
            if let Some(wait) = &mut first_request {
                // Checked after the connection's poll, which is where a request arrives.
                if !fresh.is_fresh() || wait.as_mut().poll(cx).is_ready() {
                    first_request = None;
                    conn.as_mut().graceful_shutdown();
                    if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                        log_connection_end(result);
                        return Poll::Ready(());
                    }
                }
            }
            if Pin::new(&mut watchdog).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some(d) = &mut deadline {
                if d.poll_expired(timer.as_mut(), cx) {
                    tracing::debug!(
                        "no request head within the header read timeout; closing the connection"
                    );
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
    }
}

/// Serves one TLS connection: the handshake, bounded by its timeout, then the connection as
/// [`serve`] does, its requests told the client's certificate.
#[cfg(feature = "tls")]
async fn serve_tls<I>(
    tls: &crate::tls::Tls,
    io: I,
    mut service: ConnService,
    state: Arc<ConnState>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    drain: DrainWatch,
    head_timeout: Option<Duration>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some((stream, cert)) = crate::tls::handshake(tls, io).await else {
        return;
    };
    if let Some(cert) = cert {
        let mut origin = service.origin.as_deref().cloned().unwrap_or_default();
        origin.client_cert = Some(cert);
        service.origin = Some(Arc::new(origin));
    }
    serve(stream, service, state, builder, drain, head_timeout).await;
}

/// Reloads the certificate on each SIGHUP until the server stops.
#[cfg(feature = "tls")]
fn reload_on_sighup(handle: crate::tls::TlsHandle, token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; the certificate reloads through its handle only");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    if let Err(e) = handle.reload() {
                        tracing::error!(error = %crate::error::SourceChain(&e), "SIGHUP: reloading the TLS certificate failed; keeping the current one");
                    }
                }
            }
        }
    });
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        // Clients reset, time out and send garbage all the time; not the server's problem.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

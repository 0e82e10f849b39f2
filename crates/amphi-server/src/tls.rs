//! TLS (feature `tls`): rustls with the ring provider, its settings, the certificate that a
//! reload swaps, and the handshake on each connection's task.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::ServeError;

/// The default of [`TlsConfig::handshake_timeout`]: 10 s, as the header-read timeout.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must present a certificate signed by the client CA bundle (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A client without a valid certificate fails the handshake.
    Required,
    /// A client may present no certificate; one that presents an invalid one fails the
    /// handshake. Handlers tell the two apart by the [`ClientCertificate`] extension.
    Optional,
}

/// TLS settings for [`Server::tls`](crate::Server::tls): a certificate chain and its key
/// (PEM files), optionally a client CA bundle (mutual TLS), and the handshake timeout.
///
/// The server offers ALPN `h2` and `http/1.1` on the one port and serves whichever the client
/// picked (and either protocol to a client that sends no ALPN). Scopes of requests over TLS
/// have the scheme `https`. TLS 1.2 and 1.3 with rustls' safe defaults, through the `ring`
/// provider (only a C compiler to build; rustls' default `aws-lc-rs` wants cmake too).
///
/// The files are read when the server binds and again on each
/// [`TlsHandle::reload`] (or SIGHUP, with [`reload_on_sighup`](TlsConfig::reload_on_sighup)):
/// renew a certificate by replacing the files, then reload.
///
/// # Examples
///
/// ```no_run
/// use amphi_server::tls::{ClientAuth, TlsConfig};
/// use amphi_server::{Router, Server};
///
/// # async fn run() -> Result<(), amphi_server::ServeError> {
/// let tls = TlsConfig::new("/etc/amphi/cert.pem", "/etc/amphi/key.pem")
///     .client_ca("/etc/amphi/clients-ca.pem", ClientAuth::Optional)
///     .reload_on_sighup(true);
/// let serving = Server::new(Router::new()).tls(tls).bind("0.0.0.0:8443").await?;
/// let handle = serving.tls().expect("serving over TLS").clone();
/// // Later, after the certificate files were replaced:
/// handle.reload()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<(PathBuf, ClientAuth)>,
    handshake_timeout: Duration,
    reload_on_sighup: bool,
}

impl TlsConfig {
    /// TLS with the certificate chain in `cert` (PEM, the leaf first) and its private key in
    /// `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            reload_on_sighup: false,
        }
    }

    /// Asks clients for a certificate signed by one of the CAs in `bundle` (PEM), required or
    /// optional. A verified client's chain is in each of its requests' extensions as a
    /// [`ClientCertificate`]. Default: no client certificates are asked for.
    #[must_use]
    pub fn client_ca(mut self, bundle: impl Into<PathBuf>, auth: ClientAuth) -> TlsConfig {
        self.client_ca = Some((bundle.into(), auth));
        self
    }

    /// How long a new connection may take to complete its TLS handshake before it is closed.
    /// The handshake runs on the connection's own task, so a slow one holds a connection
    /// slot (see [`Server::max_connections`](crate::Server::max_connections)) but delays no
    /// one else. Default [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`] (10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// Reloads the certificate and key on SIGHUP, as [`TlsHandle::reload`] does, for as long
    /// as the server runs. Off by default: listening for a signal replaces its default action
    /// (ending the process) for the whole process, which a library should not do unasked.
    #[must_use]
    pub fn reload_on_sighup(mut self, on: bool) -> TlsConfig {
        self.reload_on_sighup = on;
        self
    }

    /// The certificate chain's file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The private key's file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    pub(crate) fn sighup(&self) -> bool {
        self.reload_on_sighup
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Reads the files and builds the acceptor.
    pub(crate) fn build(&self) -> Result<(TlsAcceptor, TlsHandle), ServeError> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let key = load_key(&self.cert, &self.key, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(key)),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::tls("choosing the TLS versions", e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some((bundle, auth)) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(bundle)? {
                    roots.add(cert).map_err(|e| {
                        ServeError::tls(format!("adding a client CA from {}", bundle.display()), e)
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let verifier = match auth {
                    ClientAuth::Required => verifier,
                    ClientAuth::Optional => verifier.allow_unauthenticated(),
                };
                let verifier = verifier.build().map_err(|e| {
                    ServeError::tls(
                        format!("building the client verifier from {}", bundle.display()),
                        e,
                    )
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let handle = TlsHandle {
            inner: Arc::new(HandleInner {
                cert: self.cert.clone(),
                key: self.key.clone(),
                provider,
                resolver,
            }),
        };
        Ok((TlsAcceptor::from(Arc::new(config)), handle))
    }
}

/// Reloads a running server's certificate: what [`Serving::tls`](crate::Serving::tls)
/// returns. Cheap to clone.
///
/// A reload reads the certificate and key files again and, when they make a valid pair,
/// swaps them in for the handshakes that start after it. Connections already open keep the
/// certificate they were set up with and are not interrupted.
#[derive(Clone)]
pub struct TlsHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
}

impl fmt::Debug for TlsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHandle")
            .field("cert", &self.inner.cert)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl TlsHandle {
    /// Reads the certificate and key files again and serves them to new handshakes.
    ///
    /// # Errors
    ///
    /// [`ServeError::is_tls`] when a file cannot be read, holds no certificate or key, or
    /// the key does not match the certificate; the server then keeps the certificate it had.
    pub fn reload(&self) -> Result<(), ServeError> {
        let key = load_key(&self.inner.cert, &self.inner.key, &self.inner.provider)?;
        let mut current = self
            .inner
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(key);
        drop(current);
        tracing::info!(cert = %self.inner.cert.display(), "reloaded the TLS certificate");
        Ok(())
    }

    /// The certificate chain new handshakes get, leaf first, DER-encoded.
    pub fn certificate_chain(&self) -> Vec<Vec<u8>> {
        let current = self
            .inner
            .resolver
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        current.cert.iter().map(|c| c.as_ref().to_vec()).collect()
    }
}

/// The certificate every handshake gets: one `Arc`, swapped whole by a reload. A read lock
/// per handshake is nothing next to the handshake's own cryptography.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The certificate chain of a client that presented one over mutual TLS (see
/// [`TlsConfig::client_ca`]), verified against the client CA bundle: in the extensions of
/// each of the connection's requests (`scope.extensions().get::<ClientCertificate>()`, for a
/// sync handler `req.scope().extensions()`, and a mounted tower service's request). Absent
/// when the client presented none.
///
/// The certificates are DER-encoded; parse the leaf with a crate such as `x509-parser` to
/// read its subject or subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    chain: Arc<[CertificateDer<'static>]>,
}

impl ClientCertificate {
    /// The client's own (leaf) certificate, DER-encoded.
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// The chain as the client sent it, leaf first, DER-encoded.
    pub fn chain(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.chain.iter().map(|c| c.as_ref())
    }
}

/// The TLS side of a server: the acceptor new connections handshake with, and how long they
/// may take.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) timeout: Duration,
}

/// What the handshake of one connection gave: the stream, and the client's certificate.
pub(crate) async fn handshake<I>(
    tls: &Tls,
    io: I,
) -> Option<(
    tokio_rustls::server::TlsStream<I>,
    Option<ClientCertificate>,
)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(tls.timeout, tls.acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| ClientCertificate {
                    chain: c.iter().map(|c| c.clone().into_owned()).collect(),
                });
            Some((stream, cert.filter(|c| !c.chain.is_empty())))
        }
        Ok(Err(e)) => {
            // Scanners, plain HTTP on the TLS port, clients that distrust the certificate.
            tracing::debug!(error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(
                "no tls handshake within {:?}; closing the connection",
                tls.timeout
            );
            None
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ServeError::tls(format!("reading certificates from {}", path.display()), e))?;
    if certs.is_empty() {
        return Err(ServeError::tls_message(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ServeError> {
    let chain = read_certs(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        ServeError::tls(format!("reading the private key from {}", key.display()), e)
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        ServeError::tls(
            format!(
                "loading the key {} for the certificate {}",
                key.display(),
                cert.display()
            ),
            e,
        )
    })
}

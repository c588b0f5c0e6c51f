//! Optional TLS to the hub, with rustls and its ring crypto provider.
//!
//! [`ClientTls`] takes PEM bytes (the app reads the files) or a rustls configuration of the app's
//! own. The plain-TCP link keeps the socket's owned halves. A TLS stream is driven, once the
//! handshake is done, by a small task that copies between it and an in-memory pipe the link
//! reads and writes: rustls may hold encrypted bytes until it is flushed, and the task flushes
//! whenever it has nothing to read, so the link's loop needs no TLS-specific care.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

pub use tokio_rustls::rustls;

/// Why a PEM document gave nothing usable (shared with the other side of the link).
pub use acms_common::pem::PemError;
use acms_common::pem::{certificates, is_version_1, private_key};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;

/// How to reach the hub over TLS: whom to trust, the name to expect, and optionally the client
/// certificate to show.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Why TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM document could not be parsed, or held no certificate.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The hub's name is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls refused the certificates or key.
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// This server's client certificate cannot be used, and why.
    #[error("the client certificate cannot be used: {0}")]
    ClientCertificate(String),
}

/// Why rustls refused this server's own client certificate, in words that say what to change.
fn client_certificate_error(err: rustls::Error) -> TlsError {
    use rustls::CertificateError;
    let rustls::Error::InvalidCertificate(refused) = &err else {
        return TlsError::Rustls(err);
    };
    let reason = match refused {
        refused if is_version_1(refused) => {
            "it is an X.509 version 1 certificate, which carries no extensions: issue a version 3 \
             certificate with the clientAuth extended key usage (with openssl: `-addext \
             extendedKeyUsage=clientAuth` on the request, `-copy_extensions copy` when signing; \
             the README's Security section has the whole recipe)"
                .to_owned()
        }
        CertificateError::BadEncoding => "it is not a well-formed X.509 certificate".to_owned(),
        other => format!("{other:?}"),
    };
    TlsError::ClientCertificate(reason)
}

/// What a failed TLS handshake with the hub means, for the link's error: the hub refusing this
/// server's client certificate, or this server refusing the hub's, told apart.
pub(crate) fn explain_failure(err: &io::Error) -> String {
    use rustls::AlertDescription as Alert;
    match tls_failure(err) {
        Some(rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::UnsupportedCertificate
            | Alert::CertificateExpired
            | Alert::CertificateUnknown),
        )) => format!(
            "the hub refused this server's client certificate ({alert:?}): it must be signed by \
             the hub's client CA, be a version 3 certificate and allow clientAuth; the hub's log \
             says which"
        ),
        Some(rustls::Error::InvalidCertificate(refused)) => format!(
            "the hub's certificate is not trusted ({refused:?}): the CA given to this server \
             (--tls-ca) must have signed it, and it must name the hub (--tls-server-name)"
        ),
        _ => format!(
            "{err} (does the hub's transfer port speak TLS, with a certificate this server trusts?)"
        ),
    }
}

impl ClientTls {
    /// TLS that trusts the CA certificates in `ca` (PEM) and expects the hub's certificate to
    /// name `server_name` (a DNS name or an IP address). `client` is this server's certificate
    /// chain and private key (PEM), for a hub that requires client certificates.
    pub fn from_pem(
        ca: &[u8],
        server_name: &str,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca, "the CA")? {
            roots.add(cert)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = certificates(chain, "the client certificate")?;
                let key = private_key(key, "the client key")?;
                builder.with_client_auth_cert(chain, key).map_err(client_certificate_error)?
            }
        };
        Self::new(Arc::new(config), server_name)
    }

    /// TLS with a rustls configuration made by the app (its own roots, say).
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        Ok(Self { connector: TlsConnector::from(config), server_name })
    }

    pub(crate) async fn connect(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), stream).await
    }
}

/// Bytes the pipe between a TLS stream and the link holds in each direction.
const PIPE_CAPACITY: usize = 256 * 1024;

/// The rustls error inside an I/O error, if TLS is what failed.
pub(crate) fn tls_failure(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The read side of the hub connection.
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<DuplexStream>),
}

/// The write side of the hub connection.
#[derive(Debug)]
pub(crate) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<DuplexStream>),
}

/// Splits a plain socket into its owned halves, with no lock between them.
pub(crate) fn split_plain(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = stream.into_split();
    (ReadHalf::Plain(read), WriteHalf::Plain(write))
}

/// Hands a TLS stream whose handshake is done to a task that copies between it and a pipe, and
/// returns the link's ends of the pipe. The task ends when either side closes: the link dropping
/// its ends closes the TLS connection.
pub(crate) fn split_tls(mut stream: TlsStream<TcpStream>) -> (ReadHalf, WriteHalf) {
    let (link_end, mut task_end) = tokio::io::duplex(PIPE_CAPACITY);
    tokio::spawn(async move {
        if let Err(err) = tokio::io::copy_bidirectional(&mut task_end, &mut stream).await {
            debug!(error = %err, "TLS connection to the hub ended");
        }
    });
    let (read, write) = tokio::io::split(link_end);
    (ReadHalf::Tls(read), WriteHalf::Tls(write))
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(half) => Pin::new(half).poll_read(cx, buf),
            Self::Tls(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(half) => Pin::new(half).poll_write(cx, buf),
            Self::Tls(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(half) => Pin::new(half).poll_write_vectored(cx, bufs),
            Self::Tls(half) => Pin::new(half).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(half) => half.is_write_vectored(),
            Self::Tls(half) => half.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(half) => Pin::new(half).poll_flush(cx),
            Self::Tls(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(half) => Pin::new(half).poll_shutdown(cx),
            Self::Tls(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}

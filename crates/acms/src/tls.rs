//! Optional TLS on the transfer port, with rustls and its ring crypto provider.
//!
//! The certificates come in as PEM bytes: the binary reads the files named in `[transfer.tls]`,
//! the library never does. A plain-TCP connection keeps its own code path: the hub reads a plain
//! connection through the socket's owned read half and writes it through the owned write half,
//! with no lock between them; only a TLS stream is split with `tokio::io::split`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use tokio_rustls::rustls;

/// Why a PEM document gave nothing usable (shared with the other side of the link).
pub use acms_common::pem::PemError;
use acms_common::pem::{certificates, is_version_1, private_key};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

/// The first byte of every TLS connection: a handshake record. A plain ACMS connection starts
/// with the high byte of a length prefix, which is 0 for any frame under 16 MiB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The TLS settings of a hub's transfer port.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Why TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM document could not be parsed, or held no certificate.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the certificates or key.
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify client certificates.
    #[error("client CA refused: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    /// The hub's own certificate cannot be used, and why.
    #[error("the hub certificate cannot be used: {0}")]
    HubCertificate(String),
}

/// Why rustls refused the hub's own certificate, in words that say what to change.
fn hub_certificate_error(err: rustls::Error) -> TlsError {
    match &err {
        rustls::Error::InvalidCertificate(refused) if is_version_1(refused) => {
            TlsError::HubCertificate(
                "it is an X.509 version 1 certificate, which carries no extensions: issue a \
                 version 3 certificate naming the hub (subjectAltName) with the serverAuth \
                 extended key usage (the README's Security section has a recipe)"
                    .to_owned(),
            )
        }
        rustls::Error::InvalidCertificate(refused) => {
            TlsError::HubCertificate(format!("{refused:?}"))
        }
        _ => TlsError::Rustls(err),
    }
}

/// Why a TLS handshake with an app server failed, for the hub's log: a client certificate
/// refused says which rule it broke, rather than rustls' words about a "peer".
pub(crate) fn explain_failure(err: &io::Error) -> String {
    use rustls::CertificateError as Refused;
    let Some(failure) = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return err.to_string();
    };
    let reason = match failure {
        rustls::Error::NoCertificatesPresented => {
            return "the app server presented no client certificate, and this hub requires one \
                    (tls.client_ca): give it one signed by that CA (--tls-cert, --tls-key)"
                .to_owned();
        }
        rustls::Error::InvalidCertificate(refused) => match refused {
            refused if is_version_1(refused) => {
                "it is an X.509 version 1 certificate, which carries no extensions: issue a \
                 version 3 certificate with the clientAuth extended key usage"
                    .to_owned()
            }
            Refused::UnknownIssuer => {
                "it is not signed by this hub's client CA (tls.client_ca)".to_owned()
            }
            Refused::InvalidPurpose | Refused::InvalidPurposeContext { .. } => {
                "its extended key usage does not allow clientAuth".to_owned()
            }
            Refused::Expired | Refused::ExpiredContext { .. } => "it has expired".to_owned(),
            Refused::NotValidYet | Refused::NotValidYetContext { .. } => {
                "it is not valid yet".to_owned()
            }
            other => format!("{other:?}"),
        },
        other => return other.to_string(),
    };
    format!("the app server's client certificate was refused: {reason}")
}

impl ServerTls {
    /// TLS with the hub's certificate chain and private key (PEM). With `client_ca` (PEM), every
    /// app server must present a certificate that this CA signed.
    pub fn from_pem(
        cert_chain: &[u8],
        key: &[u8],
        client_ca: Option<&[u8]>,
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(cert_chain, "the certificate chain")?;
        let key = private_key(key, "the private key")?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem, "the client CA")? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).map_err(hub_certificate_error)?;
        Ok(Self::new(Arc::new(config)))
    }

    /// TLS with a rustls configuration made by the caller.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self { acceptor: TlsAcceptor::from(config) }
    }

    /// Runs the server side of the TLS handshake; the caller bounds it in time.
    pub(crate) async fn accept(&self, stream: TcpStream) -> Result<TlsStream<TcpStream>, Refusal> {
        let mut first = [0; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err(Refusal::Closed),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => return Err(Refusal::NotTls(stream)),
            Ok(_) => {}
            Err(err) => return Err(Refusal::Failed(err)),
        }
        self.acceptor.accept(stream).await.map_err(Refusal::Failed)
    }
}

/// Why a TLS connection was not accepted.
pub(crate) enum Refusal {
    /// The peer closed before sending anything.
    Closed,
    /// The peer speaks plain TCP, most likely an app server without TLS settings: the stream is
    /// handed back so it can be told in its own protocol.
    NotTls(TcpStream),
    /// The TLS handshake failed (a bad or missing client certificate, a protocol error).
    Failed(io::Error),
}

/// Whether the bytes that opened a plain connection look like a TLS client's first record.
pub(crate) fn looks_like_tls(start: &[u8]) -> bool {
    matches!(start, [TLS_HANDSHAKE_RECORD, 0x03, ..])
}

/// The read side of an AS connection: the plain socket's owned half, or one half of a TLS
/// stream.
#[derive(Debug)]
pub(crate) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_name_the_document() {
        let err = ServerTls::from_pem(b"", b"", None).unwrap_err();
        assert!(
            matches!(err, TlsError::Pem(PemError::NoCertificate("the certificate chain"))),
            "{err}"
        );

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = ServerTls::from_pem(cert.pem().as_bytes(), b"no key", None).unwrap_err();
        assert!(err.to_string().contains("the private key"), "{err}");
        let err =
            ServerTls::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes(), Some(b""))
                .unwrap_err();
        assert!(matches!(err, TlsError::Pem(PemError::NoCertificate("the client CA"))), "{err}");
        ServerTls::from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            Some(cert.pem().as_bytes()),
        )
        .unwrap();
    }

    #[test]
    fn a_tls_client_hello_is_told_from_a_frame() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_tls(&[0x00, 0x00, 0x00, 0x29, 0x00]));
        assert!(!looks_like_tls(&[0x16]));
    }
}

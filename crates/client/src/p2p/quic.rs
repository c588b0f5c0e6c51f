//! QUIC on the punched socket: one endpoint per client that both dials and accepts, a
//! self-signed certificate made at start, and certificate checks by fingerprint: a peer is
//! trusted when its certificate's SHA-256 is the one its invitation carried through the servers.
//! The dialling side checks the accepting side's certificate, and the accepting side asks for and
//! checks the dialler's; the TLS signatures are verified as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use quinn::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use quinn::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::{self, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// The name dialled and the ALPN protocol: neither identifies the peer (the fingerprint does).
pub const NAME: &str = "acms-p2p";

/// Why the endpoint cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// TLS refused the settings.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
    /// QUIC refused the TLS settings.
    #[error("QUIC settings: {0}")]
    Quic(String),
    /// The socket could not be used.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// SHA-256 of a certificate, lowercase hex.
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Which certificate fingerprints may dial this client, and as which peer.
pub type Allowed = Arc<Mutex<HashMap<String, String>>>;

/// This client's identity and the QUIC settings made from it.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
    /// SHA-256 of the certificate, sent in invitations.
    pub fingerprint: String,
}

impl Identity {
    /// A new self-signed identity; the direct path sends keepalives every `keepalive` and
    /// counts as broken after `idle` without a packet from the peer.
    pub fn new(keepalive: Duration, idle: Duration) -> Result<Self, QuicError> {
        let certified = rcgen::generate_simple_self_signed(vec![NAME.to_owned()])?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(keepalive));
        let idle =
            quinn::IdleTimeout::try_from(idle).map_err(|err| QuicError::Quic(err.to_string()))?;
        transport.max_idle_timeout(Some(idle));
        // A punch has a few seconds: retransmit a lost first packet soon, not after a second.
        transport.initial_rtt(Duration::from_millis(100));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let fingerprint = fingerprint(&cert);
        Ok(Self { cert, key, provider, transport: Arc::new(transport), fingerprint })
    }

    /// The accepting side: asks every dialler for its certificate and admits only `allowed`.
    pub fn server_config(&self, allowed: Allowed) -> Result<quinn::ServerConfig, QuicError> {
        let verifier = Arc::new(ClientByFingerprint { allowed, algorithms: self.algorithms() });
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![NAME.as_bytes().to_vec()];
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|err| QuicError::Quic(err.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        Ok(config)
    }

    /// The dialling side towards a peer whose certificate has `expected` as fingerprint.
    pub fn client_config(&self, expected: &str) -> Result<quinn::ClientConfig, QuicError> {
        let verifier = Arc::new(ServerByFingerprint {
            expected: expected.to_owned(),
            algorithms: self.algorithms(),
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )?;
        tls.alpn_protocols = vec![NAME.as_bytes().to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|err| QuicError::Quic(err.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        Ok(config)
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

/// Checks the accepting peer's certificate against the fingerprint its invitation carried.
#[derive(Debug)]
struct ServerByFingerprint {
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Admits a dialler whose certificate's fingerprint an invitation named.
#[derive(Debug)]
struct ClientByFingerprint {
    allowed: Allowed,
    algorithms: WebPkiSupportedAlgorithms,
}

fn refused() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

impl ServerCertVerifier for ServerByFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for ClientByFingerprint {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let allowed = self.allowed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if allowed.contains_key(&fingerprint(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refused())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The fingerprint of the certificate a connection's peer presented.
pub fn peer_fingerprint(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|cert| fingerprint(cert))
}

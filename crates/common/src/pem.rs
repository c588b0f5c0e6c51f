//! Certificates and private keys from PEM bytes, with errors that name the document: the hub's
//! TLS settings and an app server's both read theirs this way.

use tokio_rustls::rustls;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM document gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// A PEM document could not be parsed.
    #[error("cannot read {what}: {source}")]
    Parse {
        /// Which document, in words ("the client CA").
        what: &'static str,
        /// What was wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM document held no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
}

/// Every certificate in the PEM document `pem`, in order; at least one.
pub fn certificates(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Parse { what, source })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate(what));
    }
    Ok(certs)
}

/// The first private key in the PEM document `pem`.
pub fn private_key(pem: &[u8], what: &'static str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| PemError::Parse { what, source })
}

/// Whether rustls refused a certificate for being X.509 version 1, which has no extensions (and
/// so cannot name a host or allow a key usage): worth its own advice wherever it happens.
pub fn is_version_1(refused: &rustls::CertificateError) -> bool {
    matches!(refused, rustls::CertificateError::Other(other)
        if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::UnsupportedCertVersion)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_document() {
        let err = certificates(b"", "the CA").unwrap_err();
        assert!(matches!(err, PemError::NoCertificate("the CA")), "{err}");
        let err = private_key(b"no key", "the client key").unwrap_err();
        assert!(matches!(err, PemError::Parse { what: "the client key", .. }), "{err}");
        assert!(err.to_string().starts_with("cannot read the client key"), "{err}");
        let refused = rustls::CertificateError::BadEncoding;
        assert!(!is_version_1(&refused));
    }
}

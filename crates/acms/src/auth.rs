//! Who may join a hub that has no shared secret.
//!
//! With no secret the hub cannot tell an app server from anyone else who can reach its port, so
//! it admits only peers on its own machine (the defaults and the README's walkthrough), or peers
//! whose TLS client certificate it verified. Everyone else is refused with a message telling the
//! operator to set `ACMS_SECRET`.

use std::net::SocketAddr;

/// How an app server was let in: what the hub logs when it registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// It proved the shared secret.
    Secret,
    /// It proved the shared secret over TLS, and TLS verified its client certificate.
    SecretAndCertificate,
    /// TLS verified its client certificate; the hub has no secret.
    Certificate,
    /// It connected from a loopback address to a hub with no secret and no client CA.
    Loopback,
}

impl Admission {
    /// The admission of a server that proved the shared secret.
    pub(crate) fn by_secret(client_verified: bool) -> Self {
        if client_verified { Self::SecretAndCertificate } else { Self::Secret }
    }

    /// The word in the log line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::SecretAndCertificate => "secret+certificate",
            Self::Certificate => "certificate",
            Self::Loopback => "loopback",
        }
    }
}

impl std::fmt::Display for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an app server that offers no secret may join a hub that has none: yes when TLS
/// verified its client certificate, or from a loopback address; otherwise the reason to give it.
pub(crate) fn admit_without_secret(
    peer: SocketAddr,
    client_verified: bool,
) -> Result<Admission, String> {
    if client_verified {
        return Ok(Admission::Certificate);
    }
    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; judge the IPv4 address.
    if peer.ip().to_canonical().is_loopback() {
        return Ok(Admission::Loopback);
    }
    Err(format!(
        "this hub has no shared secret, so it accepts app servers only from its own machine, and \
         {peer} is not a loopback address: set ACMS_SECRET to the same secret on the hub and on \
         every app server"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_peers_are_admitted() {
        for peer in ["127.0.0.1:5000", "127.8.9.10:1", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            assert_eq!(admit_without_secret(addr(peer), false), Ok(Admission::Loopback), "{peer}");
        }
    }

    #[test]
    fn other_peers_are_refused_with_a_hint() {
        for peer in ["192.0.2.7:5000", "[2001:db8::1]:5000", "[::ffff:192.0.2.7]:5000", "0.0.0.0:1"]
        {
            let reason = admit_without_secret(addr(peer), false).unwrap_err();
            assert!(reason.contains("ACMS_SECRET"), "{reason}");
            assert!(reason.contains(peer), "{reason}");
        }
    }

    #[test]
    fn a_verified_client_certificate_admits_any_address() {
        assert_eq!(admit_without_secret(addr("192.0.2.7:5000"), true), Ok(Admission::Certificate));
        // On loopback too the certificate is what admitted it, and the log says so.
        let admitted = admit_without_secret(addr("127.0.0.1:5000"), true).unwrap();
        assert_eq!(admitted.to_string(), "certificate");
    }

    #[test]
    fn a_secret_admission_names_the_certificate_when_there_is_one() {
        assert_eq!(Admission::by_secret(false).to_string(), "secret");
        assert_eq!(Admission::by_secret(true).to_string(), "secret+certificate");
    }
}

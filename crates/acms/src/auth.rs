//! Who may join a hub that has no shared secret.
//!
//! With no secret the hub cannot tell an app server from anyone else who can reach its port, so
//! it admits only peers on its own machine (the defaults and the README's walkthrough), or peers
//! whose TLS client certificate it verified. Everyone else is refused with a message telling the
//! operator to set `ACMS_SECRET`.

use std::net::SocketAddr;

/// Whether an app server that offers no secret may join a hub that has none: yes from a loopback
/// address, or when TLS verified its client certificate; otherwise the reason to give it.
pub(crate) fn admit_without_secret(peer: SocketAddr, client_verified: bool) -> Result<(), String> {
    // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d; judge the IPv4 address.
    if client_verified || peer.ip().to_canonical().is_loopback() {
        return Ok(());
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
            assert_eq!(admit_without_secret(addr(peer), false), Ok(()), "{peer}");
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
        assert_eq!(admit_without_secret(addr("192.0.2.7:5000"), true), Ok(()));
    }
}

//! Mutual authentication of an AS and the hub by a shared secret.
//!
//! Challenge-response with HMAC-SHA256. Each side sends a fresh random [`Nonce`], and each proves
//! it knows the [`Secret`] with a MAC over the server id and both nonces, so the secret never
//! crosses the wire and a proof taken from one connection is worthless on the next. The two
//! directions use different labels, so a proof cannot be reflected back at the side that made it.
//! The message order is in `docs/PROTOCOL.md`.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::ids::ServerId;

/// Bytes in a [`Nonce`].
pub const NONCE_LEN: usize = 32;

/// Bytes in a [`Proof`]: one HMAC-SHA256 output.
pub const PROOF_LEN: usize = 32;

/// Shortest [`Secret`] accepted, in bytes. The nonces and proofs of a plain-TCP handshake can be
/// seen by anyone on the path, so a short secret could be found offline by trying guesses.
pub const MIN_SECRET_LEN: usize = 16;

/// Domain-separation label of the AS's proof.
const AS_LABEL: &[u8] = b"acms-v2 app-server-to-hub proof\0";
/// Domain-separation label of the hub's proof.
const HUB_LABEL: &[u8] = b"acms-v2 hub-to-app-server proof\0";
/// Domain-separation label of the proof of a hub asking a peer hub for its status.
const WATCHER_LABEL: &[u8] = b"acms-v2 hub-watching-peer proof\0";
/// Domain-separation label of the proof of the hub whose status is asked for.
const WATCHED_LABEL: &[u8] = b"acms-v2 hub-being-watched proof\0";

/// A fresh random value that one side asks the other to prove the secret over.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A nonce from the thread's cryptographically secure generator, seeded by the OS.
    pub fn random() -> Self {
        let mut bytes = [0; NONCE_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }
}

/// An HMAC-SHA256 tag that shows its sender knows the shared secret.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proof(pub [u8; PROOF_LEN]);

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    bytes.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(")?;
        hex(&self.0, f)?;
        f.write_str(")")
    }
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Proof(")?;
        hex(&self.0, f)?;
        f.write_str(")")
    }
}

/// Which side makes a proof; each has its own label in the MAC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prover {
    /// The app server proves itself to the hub.
    AppServer,
    /// The hub proves itself to the app server.
    Hub,
    /// A hub asking a peer hub for its status proves itself to that peer (`PeerHello`).
    Watcher,
    /// The hub whose status is asked for proves itself to the hub asking.
    Watched,
}

impl Prover {
    fn label(self) -> &'static [u8] {
        match self {
            Self::AppServer => AS_LABEL,
            Self::Hub => HUB_LABEL,
            Self::Watcher => WATCHER_LABEL,
            Self::Watched => WATCHED_LABEL,
        }
    }
}

/// The secret the hub and its app servers share. Its bytes never leave this process and never
/// appear in `Debug` output.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

/// Why a value cannot be a [`Secret`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`].
    #[error(
        "shared secret is {0} bytes long; use at least {MIN_SECRET_LEN} (for instance 32 random hex digits)"
    )]
    TooShort(usize),
}

/// A proof did not match: the peer does not hold the same secret, or the handshake was tampered
/// with or replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("proof does not match the shared secret")]
pub struct BadProof;

type HmacSha256 = Hmac<Sha256>;

impl Secret {
    /// A secret of the given bytes, at least [`MIN_SECRET_LEN`] of them.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, SecretError> {
        let bytes = bytes.as_ref();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// The proof `prover` sends for the connection of `server` with these nonces.
    pub fn prove(
        &self,
        prover: Prover,
        server: ServerId,
        as_nonce: &Nonce,
        hub_nonce: &Nonce,
    ) -> Proof {
        let tag = self.mac(prover, server, as_nonce, hub_nonce).finalize().into_bytes();
        Proof(tag.into())
    }

    /// Checks a proof made by `prover`, in constant time, so the time taken tells an attacker
    /// nothing about how many leading bytes were right.
    pub fn verify(
        &self,
        prover: Prover,
        server: ServerId,
        as_nonce: &Nonce,
        hub_nonce: &Nonce,
        proof: &Proof,
    ) -> Result<(), BadProof> {
        self.mac(prover, server, as_nonce, hub_nonce).verify_slice(&proof.0).map_err(|_| BadProof)
    }

    /// The MAC input: label, server id (big-endian), the AS's nonce, the hub's nonce. Every part
    /// has a fixed length, so no two inputs of different meaning share their bytes.
    fn mac(
        &self,
        prover: Prover,
        server: ServerId,
        as_nonce: &Nonce,
        hub_nonce: &Nonce,
    ) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(prover.label());
        mac.update(&server.0.to_be_bytes());
        mac.update(&as_nonce.0);
        mac.update(&hub_nonce.0);
        mac
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = SecretError;

    fn from_str(text: &str) -> Result<Self, SecretError> {
        Self::new(text)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("correct horse battery staple").unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(Secret::new("tiny").unwrap_err(), SecretError::TooShort(4));
        assert!(Secret::new([7u8; MIN_SECRET_LEN]).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(format!("{:?}", secret()), "Secret(<redacted>)");
    }

    #[test]
    fn a_proof_verifies_only_with_the_same_inputs() {
        let (a, b) = (Nonce([1; NONCE_LEN]), Nonce([2; NONCE_LEN]));
        let proof = secret().prove(Prover::AppServer, ServerId(7), &a, &b);
        assert_eq!(secret().verify(Prover::AppServer, ServerId(7), &a, &b, &proof), Ok(()));
        // Another direction, server, nonce or secret: refused.
        assert_eq!(secret().verify(Prover::Hub, ServerId(7), &a, &b, &proof), Err(BadProof));
        assert_eq!(secret().verify(Prover::AppServer, ServerId(8), &a, &b, &proof), Err(BadProof));
        assert_eq!(secret().verify(Prover::AppServer, ServerId(7), &b, &a, &proof), Err(BadProof));
        let other = Secret::new("correct horse battery stapler").unwrap();
        assert_eq!(other.verify(Prover::AppServer, ServerId(7), &a, &b, &proof), Err(BadProof));
    }

    #[test]
    fn a_proof_wrong_in_any_one_byte_is_refused() {
        let (a, b) = (Nonce::random(), Nonce::random());
        let proof = secret().prove(Prover::Hub, ServerId(1), &a, &b);
        for i in 0..PROOF_LEN {
            let mut forged = proof;
            forged.0[i] ^= 0x01;
            assert_eq!(secret().verify(Prover::Hub, ServerId(1), &a, &b, &forged), Err(BadProof));
        }
    }

    #[test]
    fn the_two_directions_never_share_a_proof() {
        let (a, b) = (Nonce::random(), Nonce::random());
        let s = secret();
        assert_ne!(
            s.prove(Prover::Hub, ServerId(3), &a, &b),
            s.prove(Prover::AppServer, ServerId(3), &a, &b)
        );
        let proofs = [Prover::AppServer, Prover::Hub, Prover::Watcher, Prover::Watched]
            .map(|prover| s.prove(prover, ServerId::HUB, &a, &b));
        for (i, proof) in proofs.iter().enumerate() {
            assert!(!proofs[i + 1..].contains(proof), "two provers share a proof");
        }
    }

    #[test]
    fn nonces_are_fresh() {
        assert_ne!(Nonce::random(), Nonce::random());
    }
}

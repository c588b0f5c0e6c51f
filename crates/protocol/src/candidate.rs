//! P2P candidates: the addresses at which a user's client may be reached directly, as its app
//! server reported them. The hub keeps them in its directory and hands them out with a user's
//! place; it never uses them itself.

use std::fmt;
use std::net::SocketAddr;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Most candidates one session of a user may have: a client has a few interfaces and one
/// reflexive address per server it asked, never dozens.
pub const MAX_CANDIDATES: usize = 8;

/// How a client learnt a [`Candidate`] address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CandidateKind {
    /// An address of one of the client's own interfaces (reachable on its LAN).
    Local,
    /// The client's address as a server outside its NAT saw it (server-reflexive).
    Reflexive,
}

impl fmt::Display for CandidateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Reflexive => "reflexive",
        })
    }
}

/// One address at which a user's client may be reached directly (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    /// The address: IPv4 or IPv6 and a port (an IPv6 scope or flow label does not travel).
    pub addr: SocketAddr,
    /// How the client learnt it.
    pub kind: CandidateKind,
}

/// Why a list of candidates is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CandidateError {
    /// More than [`MAX_CANDIDATES`] in one list.
    #[error("{count} candidates, the limit is {max}", max = MAX_CANDIDATES)]
    TooMany {
        /// How many there were.
        count: usize,
    },
    /// An address nobody can send to: port 0, or an unspecified IP (`0.0.0.0`, `::`).
    #[error("candidate address {0} cannot be sent to (port 0 or unspecified IP)")]
    Unusable(SocketAddr),
}

impl Candidate {
    /// A candidate of `kind` at `addr`.
    pub fn new(addr: SocketAddr, kind: CandidateKind) -> Self {
        Self { addr, kind }
    }

    /// Checks the address is one a peer could send to.
    pub fn check(&self) -> Result<(), CandidateError> {
        if self.addr.port() == 0 || self.addr.ip().is_unspecified() {
            return Err(CandidateError::Unusable(self.addr));
        }
        Ok(())
    }

    /// Checks a whole list: its length, then each address.
    pub fn check_all(candidates: &[Candidate]) -> Result<(), CandidateError> {
        if candidates.len() > MAX_CANDIDATES {
            return Err(CandidateError::TooMany { count: candidates.len() });
        }
        candidates.iter().try_for_each(Candidate::check)
    }
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.addr, self.kind)
    }
}

/// Decodes a list of candidates, refusing it as soon as it holds one more than
/// [`MAX_CANDIDATES`] or an unusable address: a peer claiming a million costs nine decodes.
pub(crate) fn bounded<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Candidate>, D::Error> {
    struct List;

    impl<'de> Visitor<'de> for List {
        type Value = Vec<Candidate>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_CANDIDATES} candidates")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Candidate>, A::Error> {
            use serde::de::Error;
            // The size hint is the peer's claim: ignored.
            let mut items = Vec::new();
            while let Some(candidate) = seq.next_element::<Candidate>()? {
                if items.len() == MAX_CANDIDATES {
                    return Err(A::Error::custom(format_args!(
                        "more than {MAX_CANDIDATES} candidates"
                    )));
                }
                candidate.check().map_err(A::Error::custom)?;
                items.push(candidate);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(List)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;
    use crate::{Control, UserId};

    fn local(port: u16) -> Candidate {
        Candidate::new(SocketAddr::from(([192, 168, 1, 2], port)), CandidateKind::Local)
    }

    fn encoded(candidates: Vec<Candidate>) -> BytesMut {
        let user = UserId::new("al").unwrap();
        let mut bytes = BytesMut::new();
        Control::Candidates { user, candidates }.encode_into(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn a_list_up_to_the_limit_decodes_and_one_more_is_refused_by_name() {
        let eight: Vec<_> = (1..=8).map(local).collect();
        let decoded = Control::decode(&encoded(eight.clone())).unwrap();
        let user = UserId::new("al").unwrap();
        assert_eq!(decoded, Control::Candidates { user, candidates: eight });
        let err = Control::decode(&encoded((1..=9).map(local).collect())).unwrap_err();
        assert!(err.to_string().contains("more than 8 candidates"), "{err}");
    }

    #[test]
    fn a_claimed_count_costs_only_the_candidates_present() {
        // Variant 33, "al", a count of four billion, then one candidate's worth of bytes.
        let mut bytes = BytesMut::new();
        bytes.put_slice(&[33, 2, b'a', b'l', 0xfc]);
        bytes.put_u32_le(u32::MAX);
        let one = encoded(vec![local(1)]);
        bytes.put_slice(&one[5..]);
        assert!(Control::decode(&bytes).is_err());
    }

    #[test]
    fn addresses_nobody_can_send_to_are_refused() {
        for addr in ["0.0.0.0:5000", "[::]:5000", "192.168.1.2:0"] {
            let candidate = Candidate::new(addr.parse().unwrap(), CandidateKind::Reflexive);
            assert_eq!(candidate.check(), Err(CandidateError::Unusable(candidate.addr)));
            let err = Control::decode(&encoded(vec![candidate])).unwrap_err();
            assert!(err.to_string().contains("cannot be sent to"), "{addr}: {err}");
        }
        assert_eq!(Candidate::check_all(&[local(1), local(2)]), Ok(()));
        let nine: Vec<_> = (1..=9).map(local).collect();
        assert_eq!(Candidate::check_all(&nine), Err(CandidateError::TooMany { count: 9 }));
    }
}

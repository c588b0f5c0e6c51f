//! The text forms of the clients' paths ([`crate::p2p`]): candidates, message numbers, the
//! invitation that a server relays between two clients, the lines on the direct QUIC stream, and
//! the path label of a received message. All parsing is bounded and strict: anything else is an
//! error that names what was wrong.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

pub use acms_appserver::{Candidate, CandidateKind};

/// The path a received message came by, for `--show-path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Directly from the peer.
    P2p,
    /// Through the server both clients are on.
    Server,
    /// Through the sender's server, the hub and this client's server.
    Hub,
}

impl Via {
    /// The label `--show-path` prints.
    pub fn label(self) -> &'static str {
        match self {
            Self::P2p => "p2p",
            Self::Server => "server",
            Self::Hub => "hub",
        }
    }
}

/// Most candidates a client reports or an invitation carries (as `acms_protocol` bounds them).
pub const MAX_CANDIDATES: usize = 8;

/// Length of a certificate fingerprint in hex: SHA-256.
pub const FINGERPRINT_LEN: usize = 64;

/// Something of the direct path's text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {what}: {reason}")]
pub struct WireError {
    what: &'static str,
    reason: &'static str,
}

fn bad(what: &'static str, reason: &'static str) -> WireError {
    WireError { what, reason }
}

/// One candidate in its text form, `ADDR/l` (local) or `ADDR/r` (reflexive).
pub fn format_candidate(candidate: &Candidate) -> String {
    let kind = match candidate.kind {
        CandidateKind::Local => 'l',
        CandidateKind::Reflexive => 'r',
    };
    format!("{}/{kind}", candidate.addr)
}

/// Parses one candidate's text form (see [`format_candidate`]).
pub fn parse_candidate(text: &str) -> Result<Candidate, WireError> {
    let (addr, kind) =
        text.rsplit_once('/').ok_or(bad("candidate", "expected ADDR/l or ADDR/r"))?;
    let kind = match kind {
        "l" => CandidateKind::Local,
        "r" => CandidateKind::Reflexive,
        _ => return Err(bad("candidate", "the kind is `l` (local) or `r` (reflexive)")),
    };
    let addr: SocketAddr = addr.parse().map_err(|_| bad("candidate", "not an IP:port"))?;
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(bad("candidate", "not an address a peer can send to"));
    }
    Ok(Candidate::new(addr, kind))
}

/// Parses space-separated candidates, at most [`MAX_CANDIDATES`].
pub fn parse_candidates<'a>(
    words: impl Iterator<Item = &'a str>,
) -> Result<Vec<Candidate>, WireError> {
    let mut candidates = Vec::new();
    for word in words.filter(|word| !word.is_empty()) {
        if candidates.len() == MAX_CANDIDATES {
            return Err(bad("candidates", "more than 8"));
        }
        candidates.push(parse_candidate(word)?);
    }
    Ok(candidates)
}

/// Writes candidates separated by spaces.
pub fn format_candidates(candidates: &[Candidate]) -> String {
    candidates.iter().map(format_candidate).collect::<Vec<_>>().join(" ")
}

/// A message's number: the sender's session (`epoch`, random at its start) and its place in what
/// that session sent to one peer (`seq`, from 1), written `EPOCH.SEQ`. The receiver drops a number
/// it has seen, whichever path brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Number {
    /// The sending session.
    pub epoch: u64,
    /// The message's place, from 1.
    pub seq: u64,
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

impl FromStr for Number {
    type Err = WireError;

    fn from_str(text: &str) -> Result<Self, WireError> {
        let (epoch, seq) = text.split_once('.').ok_or(bad("number", "expected EPOCH.SEQ"))?;
        let epoch = epoch.parse().map_err(|_| bad("number", "the epoch is not a number"))?;
        let seq = seq.parse().map_err(|_| bad("number", "the sequence is not a number"))?;
        Ok(Self { epoch, seq })
    }
}

/// What a numbered message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Chat text, shown to the user (`m`).
    Text,
    /// A file-transfer message ([`crate::transfer`], `f`).
    File,
}

impl Kind {
    /// Its letter on the wire.
    pub fn letter(self) -> &'static str {
        match self {
            Self::Text => "m",
            Self::File => "f",
        }
    }

    /// The kind of a letter.
    pub fn from_letter(letter: &str) -> Result<Self, WireError> {
        match letter {
            "m" => Ok(Self::Text),
            "f" => Ok(Self::File),
            _ => Err(bad("kind", "expected `m` (text) or `f` (file)")),
        }
    }
}

/// Which way an invitation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// "Let's punch": from the client that wants a direct path (it will dial).
    Offer,
    /// "Yes, punch": from the client that was offered one (it will accept).
    Answer,
}

/// The "let's punch" message two servers relay between their clients: the role, the sender's
/// certificate fingerprint (so the peer checks it is talking to whom the trusted server path
/// named) and the sender's candidates. Written `offer|answer FINGERPRINT CANDIDATE...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Offer or answer.
    pub role: Role,
    /// SHA-256 of the sender's certificate, lowercase hex.
    pub fingerprint: String,
    /// Where the sender can be reached.
    pub candidates: Vec<Candidate>,
}

/// Longest invitation accepted, in bytes: a role, a fingerprint and 8 IPv6 candidates fit.
pub const MAX_INVITE_LEN: usize = 1024;

/// Checks a fingerprint: 64 lowercase hex digits.
pub fn check_fingerprint(text: &str) -> Result<(), WireError> {
    if text.len() == FINGERPRINT_LEN && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(bad("fingerprint", "expected 64 lowercase hex digits (SHA-256)"))
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Offer => "offer",
            Role::Answer => "answer",
        };
        write!(f, "{role} {}", self.fingerprint)?;
        for candidate in &self.candidates {
            write!(f, " {}", format_candidate(candidate))?;
        }
        Ok(())
    }
}

impl FromStr for Invite {
    type Err = WireError;

    fn from_str(text: &str) -> Result<Self, WireError> {
        if text.len() > MAX_INVITE_LEN {
            return Err(bad("invitation", "longer than 1 KiB"));
        }
        let mut words = text.split(' ');
        let role = match words.next() {
            Some("offer") => Role::Offer,
            Some("answer") => Role::Answer,
            _ => return Err(bad("invitation", "expected `offer` or `answer`")),
        };
        let fingerprint = words.next().ok_or(bad("invitation", "no fingerprint"))?;
        check_fingerprint(fingerprint)?;
        let candidates = parse_candidates(words)?;
        Ok(Self { role, fingerprint: fingerprint.to_owned(), candidates })
    }
}

/// A line on the direct QUIC stream between two clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectLine {
    /// The dialling client's first line: the stream exists for the other side once it has data.
    Hello,
    /// A numbered message: `M NUMBER KIND BODY`.
    Message {
        /// Its number.
        number: Number,
        /// Text or file transfer.
        kind: Kind,
        /// What it says.
        body: String,
    },
    /// Everything up to and including `seq` of the receiver's current epoch arrived: `A SEQ`.
    Ack {
        /// The highest sequence received in order.
        seq: u64,
    },
}

impl fmt::Display for DirectLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hello => f.write_str("H"),
            Self::Message { number, kind, body } => {
                write!(f, "M {number} {} {body}", kind.letter())
            }
            Self::Ack { seq } => write!(f, "A {seq}"),
        }
    }
}

impl FromStr for DirectLine {
    type Err = WireError;

    fn from_str(line: &str) -> Result<Self, WireError> {
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "H" => Ok(Self::Hello),
            "A" => {
                rest.parse().map(|seq| Self::Ack { seq }).map_err(|_| bad("ack", "not a number"))
            }
            "M" => {
                let (number, kind, body) = numbered(rest)?;
                Ok(Self::Message { number, kind, body: body.to_owned() })
            }
            _ => Err(bad("direct line", "expected H, M or A")),
        }
    }
}

/// Splits `NUMBER KIND BODY`, the shape of a numbered message on either path.
pub fn numbered(text: &str) -> Result<(Number, Kind, &str), WireError> {
    let mut parts = text.splitn(3, ' ');
    let number = parts.next().unwrap_or_default().parse()?;
    let kind = Kind::from_letter(parts.next().unwrap_or_default())?;
    Ok((number, kind, parts.next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitations_and_lines_round_trip() {
        let invite = Invite {
            role: Role::Offer,
            fingerprint: "ab".repeat(32),
            candidates: vec![
                crate::paths::parse_candidate("10.1.0.2:4000/l").unwrap(),
                crate::paths::parse_candidate("[2001:db8::1]:5000/r").unwrap(),
            ],
        };
        assert_eq!(invite.to_string().parse::<Invite>(), Ok(invite));
        let message = DirectLine::Message {
            number: Number { epoch: 7, seq: 3 },
            kind: Kind::File,
            body: "chunk 1 0 AAEC".into(),
        };
        for line in [DirectLine::Hello, message, DirectLine::Ack { seq: 9 }] {
            assert_eq!(line.to_string().parse::<DirectLine>(), Ok(line));
        }
    }

    #[test]
    fn bad_invitations_are_refused() {
        let fp = "ab".repeat(32);
        let nine = ["10.0.0.1:1/l"; 9].join(" ");
        for text in [
            String::new(),
            "hello".into(),
            format!("offer {}", "AB".repeat(32)),
            "offer abc".into(),
            format!("offer {fp} 10.0.0.1:1/x"),
            format!("offer {fp} 0.0.0.0:1/l"),
            format!("offer {fp} 10.0.0.1:0/l"),
            format!("answer {fp} {nine}"),
            format!("offer {fp} {}", "x".repeat(2000)),
        ] {
            assert!(text.parse::<Invite>().is_err(), "{text:?}");
        }
        for line in ["", "X", "A x", "M 1 m hi", "M 1.x m hi", "M 1.2 z hi"] {
            assert!(line.parse::<DirectLine>().is_err(), "{line:?}");
        }
    }
}

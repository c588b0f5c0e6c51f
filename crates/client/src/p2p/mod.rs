//! The direct path between two clients, tried before the server's.
//!
//! A client opens one UDP socket, learns the address its NAT shows the world from its server's
//! probe ([`probe`]), and reports it with its local address at login (`CANDIDATES`). When it first
//! sends to a peer it offers a direct path (`OFFER`): its server answers with the peer's
//! candidates and relays the offer to the peer's server and client (`INVITE`), whose answer comes
//! back the same way. Both punch (send datagrams to each other's candidates, which opens their
//! NATs), the offerer dials QUIC on the same socket, and each side checks the other's certificate
//! against the fingerprint that came through the servers: the direct path is encrypted, and
//! authenticated by the server path both already trust. Messages then go directly; if no path
//! opens within the punch timeout, or the direct path breaks later, they go through the server,
//! none lost and none twice: each is numbered, the direct path acknowledges them, the
//! unacknowledged ones are sent again through the server, and the receiver drops numbers it saw.
//!
//! The text forms (candidates, numbers, invitations, the direct stream's lines) are in
//! [`crate::paths`], which the line protocol uses too.
//!
//! # Layout
//! - [`engine`]: the sans-IO state machine: paths, punch deadlines, numbering, acks, duplicates.
//! - [`probe`]: the STUN-like reflexive-address probe: its datagrams, the server's rate-limited
//!   responder, and the client's question.
//! - [`quic`]: the QUIC endpoint on the punched socket: self-signed certificates and the
//!   fingerprint checks.
//! - [`shell`]: [`Paths`], the async shell that runs the engine for `im-client`.

pub mod engine;
pub mod probe;
pub mod quic;
pub mod shell;

#[cfg(test)]
mod tests;

pub use crate::paths::{Candidate, CandidateKind, Invite, Kind, Number, Via};
pub use engine::{Engine, EngineConfig, Output, Path};
pub use shell::{Paths, PathsEvent};

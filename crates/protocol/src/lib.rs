//! The ACMS wire protocol: how app servers (AS) and the hub talk over TCP.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes, the first of which is the
//! frame kind. Data frames carry a compact routing header, parsed here without serde, so the hub can
//! forward a frame by looking at its recipient only; the payload stays a `Bytes` slice of the
//! received buffer. Control frames carry a [`Control`] message encoded with bincode. The full layout
//! is in `docs/PROTOCOL.md`.
//!
//! This crate does no I/O: it has no runtime and no sockets, only the tokio-util codec traits.
//!
//! # Layout
//! - [`ids`]: [`ServerId`], [`UserId`] and [`GroupId`], validated identifiers.
//! - [`frame`]: [`FrameKind`], the routing header ([`Route`]), owned [`Frame`]s and [`RawFrame`]s.
//! - [`candidate`]: [`Candidate`]s, the P2P addresses of a user's client, and their limits.
//! - [`refusal`]: [`Refusal`], the payload of a refused message on its way back to its sender.
//! - [`control`]: [`Control`] messages and their bincode encoding.
//! - [`digest`]: [`UserDigest`], the size and hash of a user set that both ends compare.
//! - [`auth`]: the shared [`Secret`], [`Nonce`]s and [`Proof`]s of the handshake (HMAC-SHA256).
//! - [`codec`]: [`Codec`], the length-delimited `Decoder`/`Encoder`.
//! - [`error`]: [`ProtocolError`], what can go wrong.
#![warn(missing_docs)]

pub mod auth;
pub mod candidate;
pub mod codec;
pub mod control;
pub mod digest;
pub mod error;
pub mod frame;
pub mod ids;
pub mod refusal;

pub use auth::{BadProof, Nonce, Proof, Prover, Secret, SecretError};
pub use candidate::{Candidate, CandidateError, CandidateKind, MAX_CANDIDATES};
pub use codec::Codec;
pub use control::{
    Challenge, Control, ErrorCode, Hello, HubStatus, Load, PeerHello, ServerEpoch, Welcome,
};
pub use digest::UserDigest;
pub use error::ProtocolError;
pub use frame::{
    Ack, DATA_SEQ_AT, Data, DataKind, EVERYONE, Frame, FrameKind, RawFrame, Route, SeqRange,
    data_seq, set_data_seq,
};
pub use ids::{GroupId, ServerId, UserId, UserIdError};
pub use refusal::Refusal;

/// Version of this protocol; a peer speaking another version is refused during the handshake.
pub const PROTOCOL_VERSION: u16 = 4;

/// Default limit on a frame's length (the bytes after the length prefix): 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// Largest limit a deployment may configure: 16 MiB. It also bounds what bincode may claim while
/// decoding a control message, so a lying length can never trigger a huge allocation.
pub const MAX_FRAME_LEN_CEILING: usize = 16 << 20;

/// Limit on frame bodies before a peer is authenticated: the handshake messages are small, and an
/// unknown peer must not make the hub buffer a full-size frame.
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 4096;

/// Bytes taken by the length prefix in front of every frame.
pub const LENGTH_PREFIX_LEN: usize = 4;

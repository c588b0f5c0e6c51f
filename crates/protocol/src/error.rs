//! Errors of decoding and encoding frames, and the codes that tell a peer why it is closed.

use std::io;

use serde::{Deserialize, Serialize};

use crate::ids::UserIdError;

/// Why a connection is refused or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// Another live AS is registered under the same id.
    DuplicateServer,
    /// The peer sent something that is not a valid frame here.
    Malformed,
    /// A frame exceeded the size limit.
    TooLarge,
    /// No valid handshake arrived in time.
    HandshakeTimeout,
    /// The peer did not read fast enough and its queue passed the limit.
    SlowConsumer,
    /// The hub is full or shutting down.
    Unavailable,
    /// The peer did not prove the shared secret (or has none where one is needed, or one where
    /// none is set), or sent something other than the handshake before it was authenticated.
    Unauthorized,
    /// The AS would have more users online than the hub allows one server.
    TooManyUsers,
    /// The AS would have members in more groups than the hub allows one server.
    TooManyGroups,
}

/// A frame could not be read or written. Any of these closes the connection it came from, and
/// nothing else.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame's length is over the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The length the frame claims or would have.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame has a length of zero, so no kind.
    #[error("empty frame")]
    Empty,
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A routing header was asked of a control frame.
    #[error("expected a data frame, got a control frame")]
    NotData,
    /// A data frame ends inside its routing header.
    #[error("data frame ends inside its routing header")]
    Truncated,
    /// A user id in a frame breaks the rules.
    #[error("invalid user id: {0}")]
    UserId(#[from] UserIdError),
    /// A control message could not be decoded.
    #[error("malformed control message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// A control message could not be encoded.
    #[error("cannot encode control message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The recipient field does not fit the frame's kind (a broadcast not addressed to `*`, a
    /// server message not addressed to a server id or `*`).
    #[error("invalid recipient: {0}")]
    Recipient(&'static str),
    /// The payload of a refused message does not hold a reason as documented.
    #[error("malformed refusal: {0}")]
    Refusal(&'static str),
    /// An ack holds a run no sender could have sent: empty, or past the last sequence number.
    #[error("ack run of {count} numbers from {first} is impossible")]
    AckRun {
        /// The first number the run claims.
        first: u64,
        /// How many numbers it claims.
        count: u32,
    },
}

impl ProtocolError {
    /// The code to tell the peer before closing, or `None` when the socket itself failed.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Io(_) => None,
            Self::FrameTooLarge { .. } => Some(ErrorCode::TooLarge),
            _ => Some(ErrorCode::Malformed),
        }
    }
}

//! Errors of decoding and encoding frames.

use std::io;

use crate::control::ErrorCode;
use crate::ids::UserIdError;

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

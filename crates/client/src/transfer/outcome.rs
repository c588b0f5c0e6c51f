//! What became of a transfer: finished with a summary, or failed with a reason.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The peer is not online anywhere.
    #[error("{0} is offline")]
    Offline(String),
    /// The peer sent nothing for the transfer timeout.
    #[error("no progress from {peer} for {timeout:?}; giving up")]
    Stalled {
        /// The peer.
        peer: String,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The peer gave the transfer up.
    #[error("{peer} aborted the transfer: {reason}")]
    Aborted {
        /// The peer.
        peer: String,
        /// What the peer said.
        reason: String,
    },
    /// The bytes received do not have the checksum the sender computed.
    #[error("checksum mismatch: sender's sha256 {expected}, received bytes' sha256 {actual}")]
    Checksum {
        /// What the sender said.
        expected: String,
        /// What the received bytes have.
        actual: String,
    },
    /// The peer broke the transfer protocol.
    #[error("{0}")]
    Protocol(String),
    /// The peer sent more than the window allows, faster than this client could write it.
    #[error("{0} sent past the flow-control window")]
    Overrun(String),
}

impl TransferError {
    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Whether the peer already knows (it ended the transfer, or cannot be reached).
    pub(super) fn peer_knows(&self) -> bool {
        matches!(self, Self::Offline(_) | Self::Aborted { .. })
    }
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This client sends.
    Send,
    /// This client receives.
    Receive,
}

/// A finished transfer.
#[derive(Debug)]
pub struct Finished {
    /// Which way it went.
    pub direction: Direction,
    /// The other client.
    pub peer: String,
    /// The file's name as offered.
    pub name: String,
    /// What became of it.
    pub result: Result<Summary, TransferError>,
}

/// A transfer that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes transferred.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex, the same on both sides.
    pub sha256: String,
    /// Where the receiver put the file (the sender's own file for the sender).
    pub path: PathBuf,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, to) = match self.direction {
            Direction::Send => ("sent", "to"),
            Direction::Receive => ("received", "from"),
        };
        let (name, peer) = (&self.name, &self.peer);
        match &self.result {
            Ok(Summary { bytes, sha256, path }) => write!(
                f,
                "{verb} {name} {to} {peer}: {bytes} bytes, sha256 {sha256}, {} ({})",
                path.display(),
                match self.direction {
                    Direction::Send => "checksum confirmed by the receiver",
                    Direction::Receive => "checksum verified",
                }
            ),
            Err(err) => write!(f, "file transfer of {name} {to} {peer} failed: {err}"),
        }
    }
}

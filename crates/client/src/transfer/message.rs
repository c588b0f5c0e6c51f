//! The messages of a transfer, as the two clients write them in `FILE` lines.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::CHUNK_LEN;
use crate::line::{LineError, bad};

/// One message of a transfer, between the two clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMessage {
    /// The sender proposes a file.
    Offer {
        /// The transfer, chosen by the sender, unique among its transfers to this peer.
        id: u64,
        /// Length of the file in bytes.
        size: u64,
        /// The file's name, without any directory; the receiver sanitizes it again.
        name: String,
    },
    /// The receiver is ready for chunks.
    Accept {
        /// The transfer.
        id: u64,
    },
    /// A piece of the file.
    Chunk {
        /// The transfer.
        id: u64,
        /// Number of the chunk, from 0, in order.
        index: u64,
        /// At most [`CHUNK_LEN`] bytes.
        data: Vec<u8>,
    },
    /// The receiver wrote the first `count` chunks.
    Ack {
        /// The transfer.
        id: u64,
        /// Chunks written so far.
        count: u64,
    },
    /// The sender sent every chunk.
    End {
        /// The transfer.
        id: u64,
        /// SHA-256 of the whole file, lowercase hex.
        sha256: String,
    },
    /// The receiver has the whole file and its checksum matches.
    Done {
        /// The transfer.
        id: u64,
        /// SHA-256 of the bytes received, lowercase hex.
        sha256: String,
    },
    /// Either side gives the transfer up.
    Abort {
        /// The transfer.
        id: u64,
        /// Why, for the user.
        reason: String,
    },
}

impl FileMessage {
    /// The transfer this message belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Self::Offer { id, .. }
            | Self::Accept { id }
            | Self::Chunk { id, .. }
            | Self::Ack { id, .. }
            | Self::End { id, .. }
            | Self::Done { id, .. }
            | Self::Abort { id, .. } => *id,
        }
    }

    /// Parses the body of a `FILE` line.
    pub fn parse(body: &str) -> Result<Self, LineError> {
        let mut words = body.splitn(3, ' ');
        let verb = words.next().unwrap_or_default();
        let id = words.next().and_then(|id| id.parse().ok());
        let rest = words.next().unwrap_or_default();
        let Some(id) = id else {
            return Err(bad(body, "a transfer message is `<verb> <id> ...`"));
        };
        let number_and_rest = |what| {
            let (number, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            number.parse::<u64>().map(|number| (number, tail)).map_err(|_| bad(body, what))
        };
        let hex = |rest: &str| {
            if rest.len() == 64 && rest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                Ok(rest.to_ascii_lowercase())
            } else {
                Err(bad(body, "a checksum is 64 hex digits"))
            }
        };
        match verb {
            "offer" => {
                let (size, name) = number_and_rest("offer takes a size and a name")?;
                if name.is_empty() {
                    return Err(bad(body, "offer takes a size and a name"));
                }
                Ok(Self::Offer { id, size, name: name.to_owned() })
            }
            "accept" => Ok(Self::Accept { id }),
            "chunk" => {
                let (index, data) = number_and_rest("chunk takes an index and base64 data")?;
                let data =
                    BASE64.decode(data).map_err(|_| bad(body, "chunk data is not base64"))?;
                if data.len() > CHUNK_LEN {
                    return Err(bad(body, "chunk longer than CHUNK_LEN"));
                }
                Ok(Self::Chunk { id, index, data })
            }
            "ack" => Ok(Self::Ack { id, count: number_and_rest("ack takes a count")?.0 }),
            "end" => Ok(Self::End { id, sha256: hex(rest)? }),
            "done" => Ok(Self::Done { id, sha256: hex(rest)? }),
            "abort" => Ok(Self::Abort { id, reason: rest.to_owned() }),
            _ => Err(bad(body, "expected offer, accept, chunk, ack, end, done or abort")),
        }
    }
}

impl fmt::Display for FileMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Offer { id, size, name } => write!(f, "offer {id} {size} {name}"),
            Self::Accept { id } => write!(f, "accept {id}"),
            Self::Chunk { id, index, data } => {
                write!(f, "chunk {id} {index} {}", BASE64.encode(data))
            }
            Self::Ack { id, count } => write!(f, "ack {id} {count}"),
            Self::End { id, sha256 } => write!(f, "end {id} {sha256}"),
            Self::Done { id, sha256 } => write!(f, "done {id} {sha256}"),
            // A reason is one line, whatever the peer's error said.
            Self::Abort { id, reason } => {
                write!(f, "abort {id} {}", reason.replace(['\r', '\n'], " "))
            }
        }
    }
}

/// A file name safe to create inside the download directory: its last path component only
/// (either kind of slash), no control characters, no leading dot (no `..`, no hidden files),
/// at most 200 bytes; `download` when nothing is left.
pub fn sanitize_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String =
        last.chars().map(|c| if c.is_control() { '_' } else { c }).collect::<String>();
    let clean = clean.trim().trim_start_matches('.').trim();
    let mut end = clean.len().min(200);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    match &clean[..end] {
        "" => "download".to_owned(),
        name => name.to_owned(),
    }
}

//! File transfer between two clients, in chunks, with flow control end to end.
//!
//! The servers and the hub relay the transfer's messages without reading them: a client sends
//! `FILE <peer> <message>` lines, the IM server wraps `<message>` into an opaque cluster payload
//! (see [`payload`]) and the peer's server hands it over as `FILE <sender> <message>`. The
//! messages, as [`FileMessage`] formats them:
//!
//! | message | from | meaning |
//! | --- | --- | --- |
//! | `offer <id> <size> <name>` | sender | wants to send `size` bytes as `name` |
//! | `accept <id>` | receiver | the file is open; send |
//! | `chunk <id> <index> <base64>` | sender | bytes `index * CHUNK_LEN ..` of the file |
//! | `ack <id> <count>` | receiver | the first `count` chunks are written |
//! | `end <id> <sha256>` | sender | no more chunks; the SHA-256 of the whole file, in hex |
//! | `done <id> <sha256>` | receiver | the file is complete and its SHA-256 matches |
//! | `abort <id> <reason>` | either | the transfer is given up, for this reason |
//!
//! The sender keeps at most [`WINDOW`] chunks unacknowledged, so every hop holds at most that
//! much of a transfer; a peer that sends nothing for the transfer timeout ends the transfer with
//! an error on the other side. docs/FILE_TRANSFER.md tells the whole design.
//!
//! # Layout
//! - this module: the limits ([`CHUNK_LEN`], [`WINDOW`]) and the cluster payload of a message.
//! - `message`: [`FileMessage`], parsing and formatting, and [`sanitize_name`].
//! - `outcome`: what became of a transfer: [`Finished`], [`Summary`], [`TransferError`].
//! - `transfers`: [`Transfers`], one task per transfer, fed by the connection loop.
//! - `send` and `receive`: the two sides of one transfer, on files.

mod message;
mod outcome;
mod receive;
mod send;
#[cfg(test)]
mod tests;
mod transfers;

use bytes::{BufMut, Bytes, BytesMut};

pub use message::{FileMessage, sanitize_name};
pub use outcome::{Direction, Finished, Summary, TransferError};
pub use transfers::{Outbox, Transfers};

/// Bytes of the file in one chunk: base64 makes 43,692 characters of it, well under the line
/// limit ([`crate::MAX_LINE_LEN`]).
pub const CHUNK_LEN: usize = 32 * 1024;

/// Chunks the sender may have sent and not seen acknowledged: 512 KiB of file, about 700 KiB
/// of lines, in flight per transfer, enough to keep a local link busy.
pub const WINDOW: u64 = 16;

/// First byte of a cluster payload that carries a transfer message. It never begins UTF-8
/// text, so a server tells file messages from chat messages without any other framing.
pub const PAYLOAD_TAG: u8 = 0xFF;

/// The cluster payload that carries transfer message `body`.
pub fn payload(body: &str) -> Bytes {
    let mut payload = BytesMut::with_capacity(1 + body.len());
    payload.put_u8(PAYLOAD_TAG);
    payload.put_slice(body.as_bytes());
    payload.freeze()
}

/// The transfer message in a cluster payload, if it carries one (`None` for chat text).
pub fn from_payload(payload: &[u8]) -> Option<Result<&str, std::str::Utf8Error>> {
    match payload.split_first() {
        Some((&PAYLOAD_TAG, body)) => Some(std::str::from_utf8(body)),
        _ => None,
    }
}

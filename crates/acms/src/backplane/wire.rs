//! What hubs publish to each other on NATS: batches of relayed frames, the `Resent` markers that
//! follow them, gap notices, credits (flow control), and heartbeats. A small fixed binary header; the frames after it are
//! the app servers' bytes, never decoded here.
//!
//! Batches and markers from one hub to another are numbered one after the other (`seq`), so the
//! receiver sees a batch core NATS lost as a gap. Gap notices and credits are not numbered
//! (`seq` 0): losing a credit costs time, never a frame (see `flow`).

use acms_protocol::ServerId;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::HubId;

/// The version of this layout; a message of another is refused.
const VERSION: u8 = 1;
const FRAMES: u8 = 1;
const RESENT: u8 = 2;
const GAP: u8 = 3;
const CREDIT: u8 = 4;
/// Version, kind, source hub, sequence number.
const HEADER_LEN: usize = 1 + 1 + 8 + 8;

/// A message on a hub's relay subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The hub that published it.
    pub(crate) from: HubId,
    /// Its number in the stream from `from` to this hub; 0 for an unnumbered notice.
    pub(crate) seq: u64,
    pub(crate) body: Body,
}

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// Whole frames of one origin server, as it sent them: data frames and acks.
    Frames {
        origin: ServerId,
        /// The epoch of the origin's process, so the receivers learn a restart before its frames.
        epoch: u64,
        frames: Bytes,
    },
    /// `origin` has sent `Resent` for `target`: what follows from it was sent again.
    Resent { origin: ServerId, target: ServerId },
    /// The receiver of this notice missed batches from `from`: its origins must send again.
    Gap,
    /// `bytes` of the frames the receiver sent for `target`, a server of the hub `from`, have
    /// left the way: queued for it under its high water, or dropped. The receiver may send
    /// that much more to it.
    Credit { target: ServerId, bytes: u64 },
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("message too short ({0} bytes)")]
    Short(usize),
    #[error("unknown backplane version {0}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
}

impl Message {
    /// The message as one buffer: the header, then the body. Frames are copied once, into the
    /// NATS message, as they are.
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + 16);
        out.put_u8(VERSION);
        out.put_u8(match self.body {
            Body::Frames { .. } => FRAMES,
            Body::Resent { .. } => RESENT,
            Body::Gap => GAP,
            Body::Credit { .. } => CREDIT,
        });
        out.put_u64(self.from.0);
        out.put_u64(self.seq);
        match &self.body {
            Body::Frames { origin, epoch, frames } => {
                out.reserve(12 + frames.len());
                out.put_u32(origin.0);
                out.put_u64(*epoch);
                out.put_slice(frames);
            }
            Body::Resent { origin, target } => {
                out.put_u32(origin.0);
                out.put_u32(target.0);
            }
            Body::Gap => {}
            Body::Credit { target, bytes } => {
                out.put_u32(target.0);
                out.put_u64(*bytes);
            }
        }
        out.freeze()
    }

    /// Encodes a batch of frames held as several slices, without joining them first.
    pub(crate) fn encode_frames(
        from: HubId,
        seq: u64,
        origin: ServerId,
        epoch: u64,
        chunks: &[Bytes],
    ) -> Bytes {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(HEADER_LEN + 12 + len);
        out.put_u8(VERSION);
        out.put_u8(FRAMES);
        out.put_u64(from.0);
        out.put_u64(seq);
        out.put_u32(origin.0);
        out.put_u64(epoch);
        for chunk in chunks {
            out.put_slice(chunk);
        }
        out.freeze()
    }

    /// Reads a message; the frames stay a slice of `bytes`.
    pub(crate) fn decode(mut bytes: Bytes) -> Result<Self, WireError> {
        let len = bytes.len();
        if len < HEADER_LEN {
            return Err(WireError::Short(len));
        }
        let version = bytes.get_u8();
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = bytes.get_u8();
        let from = HubId(bytes.get_u64());
        let seq = bytes.get_u64();
        let body = match kind {
            FRAMES if bytes.len() >= 12 => {
                let origin = ServerId(bytes.get_u32());
                let epoch = bytes.get_u64();
                Body::Frames { origin, epoch, frames: bytes }
            }
            RESENT if bytes.len() >= 8 => Body::Resent {
                origin: ServerId(bytes.get_u32()),
                target: ServerId(bytes.get_u32()),
            },
            GAP => Body::Gap,
            CREDIT if bytes.len() >= 12 => {
                Body::Credit { target: ServerId(bytes.get_u32()), bytes: bytes.get_u64() }
            }
            FRAMES | RESENT | CREDIT => return Err(WireError::Short(len)),
            other => return Err(WireError::Kind(other)),
        };
        Ok(Self { from, seq, body })
    }
}

/// A hub's heartbeat: it is alive, and the number of the last message it sent each hub, so a
/// receiver also sees a lost last batch (one with nothing after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) from: HubId,
    pub(crate) sent: Vec<(HubId, u64)>,
}

impl Heartbeat {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(1 + 8 + 4 + 16 * self.sent.len());
        out.put_u8(VERSION);
        out.put_u64(self.from.0);
        out.put_u32(u32::try_from(self.sent.len()).unwrap_or(u32::MAX));
        for (hub, seq) in self.sent.iter().take(u32::MAX as usize) {
            out.put_u64(hub.0);
            out.put_u64(*seq);
        }
        out.freeze()
    }

    /// Reads a heartbeat; the count is checked against the bytes, whatever it claims.
    pub(crate) fn decode(mut bytes: Bytes) -> Result<Self, WireError> {
        let len = bytes.len();
        if len < 13 {
            return Err(WireError::Short(len));
        }
        let version = bytes.get_u8();
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let from = HubId(bytes.get_u64());
        let count = bytes.get_u32() as usize;
        if bytes.len() != count.saturating_mul(16) {
            return Err(WireError::Short(len));
        }
        let sent = (0..count).map(|_| (HubId(bytes.get_u64()), bytes.get_u64())).collect();
        Ok(Self { from, sent })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_it_was_written() {
        let from = HubId(7);
        let bodies = [
            Body::Frames { origin: ServerId(3), epoch: 99, frames: Bytes::from_static(b"xyz") },
            Body::Resent { origin: ServerId(1), target: ServerId(2) },
            Body::Gap,
            Body::Credit { target: ServerId(8), bytes: 1 << 40 },
        ];
        for body in bodies {
            let message = Message { from, seq: 5, body };
            assert_eq!(Message::decode(message.encode()).unwrap(), message);
        }
        let chunks = [Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        let joined = Message::encode_frames(from, 9, ServerId(4), 1, &chunks);
        let frames = Bytes::from_static(b"abc");
        let body = Body::Frames { origin: ServerId(4), epoch: 1, frames };
        assert_eq!(Message::decode(joined).unwrap(), Message { from, seq: 9, body });
    }

    #[test]
    fn bad_messages_are_errors_not_panics() {
        assert_eq!(Message::decode(Bytes::from_static(b"\x01")), Err(WireError::Short(1)));
        let mut wrong = Message { from: HubId(1), seq: 1, body: Body::Gap }.encode().to_vec();
        wrong[0] = 9;
        assert_eq!(Message::decode(wrong.into()), Err(WireError::Version(9)));
        let mut truncated = Message {
            from: HubId(1),
            seq: 1,
            body: Body::Resent { origin: ServerId(1), target: ServerId(2) },
        }
        .encode()
        .to_vec();
        truncated.pop();
        assert!(Message::decode(truncated.into()).is_err());
        let credit = Body::Credit { target: ServerId(2), bytes: 9 };
        let mut short_credit = Message { from: HubId(1), seq: 0, body: credit }.encode().to_vec();
        short_credit.truncate(HEADER_LEN + 11);
        assert_eq!(Message::decode(short_credit.into()), Err(WireError::Short(HEADER_LEN + 11)));
        // A heartbeat claiming more entries than it holds.
        let mut lying = Heartbeat { from: HubId(1), sent: vec![(HubId(2), 3)] }.encode().to_vec();
        lying[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Heartbeat::decode(lying.into()).is_err());
        let beat = Heartbeat { from: HubId(1), sent: vec![(HubId(2), 3), (HubId(4), 5)] };
        assert_eq!(Heartbeat::decode(beat.encode()).unwrap(), beat);
    }
}

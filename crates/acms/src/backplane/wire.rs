//! What hubs publish to each other on NATS: batches of relayed frames (with the bytes they count
//! against each server's credit window), the `Resent` markers that follow them, gap notices,
//! credits (flow control), and heartbeats. A small fixed binary header; the frames after it are
//! the app servers' bytes, never decoded here. Heartbeats also carry the hub's servers' load
//! reports (see `loads`).
//!
//! Batches and markers from one hub to another are numbered one after the other (`seq`), so the
//! receiver sees a batch core NATS lost as a gap. Gap notices and credits are not numbered
//! (`seq` 0): losing a credit costs time, never a frame (see `flow`).

use acms_protocol::{Codec, Load, MAX_FRAME_LEN_CEILING, ServerId};
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::HubId;
use super::loads::{MAX_REPORTS, ServerReport};

/// The version of this layout; a message of another is refused. 2 added the credit list to
/// frames.
const VERSION: u8 = 2;
const FRAMES: u8 = 1;
const RESENT: u8 = 2;
const GAP: u8 = 3;
const CREDIT: u8 = 4;
/// Version, kind, source hub, sequence number.
const HEADER_LEN: usize = 1 + 1 + 8 + 8;

/// The most frame bytes one relay message carries; a batch past it is cut between frames.
/// nats-server reads a connection at most 64 KiB at a time and copies aside every message that
/// does not end within one read: messages a quarter of that cost the NATS nodes 15–25% less CPU
/// per relayed 1 KiB message than whole 64 KiB reads did (docs/SCALING.md, run 5).
pub(crate) const MAX_FRAMES_LEN: usize = 16 * 1024;

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
        /// The bytes the sender counted against each server's credit window (`flow`) for the
        /// frames of this message and of the messages before it that it was cut from: the
        /// receiver credits exactly these, with no lookup per frame.
        counted: Vec<(ServerId, u32)>,
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
    #[error("heartbeat reports {0} servers, more than the cap of {MAX_REPORTS}")]
    TooManyReports(usize),
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
            Body::Frames { origin, epoch, counted, frames } => {
                out.reserve(16 + 8 * counted.len() + frames.len());
                put_frames_header(&mut out, *origin, *epoch, counted);
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
        (origin, epoch): (ServerId, u64),
        counted: &[(ServerId, u32)],
        chunks: &[Bytes],
    ) -> Bytes {
        let len: usize = chunks.iter().map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(HEADER_LEN + 16 + 8 * counted.len() + len);
        out.put_u8(VERSION);
        out.put_u8(FRAMES);
        out.put_u64(from.0);
        out.put_u64(seq);
        put_frames_header(&mut out, origin, epoch, counted);
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
            FRAMES if bytes.len() >= 16 => {
                let origin = ServerId(bytes.get_u32());
                let epoch = bytes.get_u64();
                // Checked against what is left before anything is allocated for it.
                let count = bytes.get_u32() as usize;
                if bytes.len() / 8 < count {
                    return Err(WireError::Short(len));
                }
                let counted =
                    (0..count).map(|_| (ServerId(bytes.get_u32()), bytes.get_u32())).collect();
                Body::Frames { origin, epoch, counted, frames: bytes }
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

/// The origin, its epoch and the credit list of a frames message.
fn put_frames_header(
    out: &mut BytesMut,
    origin: ServerId,
    epoch: u64,
    counted: &[(ServerId, u32)],
) {
    out.put_u32(origin.0);
    out.put_u64(epoch);
    out.put_u32(u32::try_from(counted.len()).unwrap_or(u32::MAX));
    for &(server, bytes) in counted.iter().take(u32::MAX as usize) {
        out.put_u32(server.0);
        out.put_u32(bytes);
    }
}

/// A hub's heartbeat: it is alive, the number of the last message it sent each hub, so a
/// receiver also sees a lost last batch (one with nothing after it), and the latest state of up
/// to [`MAX_REPORTS`] of its `total` app servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) from: HubId,
    pub(crate) sent: Vec<(HubId, u64)>,
    /// How many app servers the hub has: more than `reports` when it reports them in turn.
    pub(crate) total: u32,
    pub(crate) reports: Vec<ServerReport>,
}

/// The layout of heartbeats: 2 added the server reports.
const HEARTBEAT_VERSION: u8 = 2;
/// Id, flags, since, then the load: users, CPU, memory, rates in and out, capacity.
const REPORT_LEN: usize = 4 + 1 + 8 + 4 + 4 + 8 + 4 + 4 + 4;
const CONNECTED: u8 = 1;
const DRAINING: u8 = 2;
const LOADED: u8 = 4;
const CAPACITY: u8 = 8;

impl Heartbeat {
    pub(crate) fn encode(&self) -> Bytes {
        let reports = &self.reports[..self.reports.len().min(MAX_REPORTS)];
        let len = 1 + 8 + 4 + 16 * self.sent.len() + 4 + 2 + REPORT_LEN * reports.len();
        let mut out = BytesMut::with_capacity(len);
        out.put_u8(HEARTBEAT_VERSION);
        out.put_u64(self.from.0);
        out.put_u32(u32::try_from(self.sent.len()).unwrap_or(u32::MAX));
        for (hub, seq) in self.sent.iter().take(u32::MAX as usize) {
            out.put_u64(hub.0);
            out.put_u64(*seq);
        }
        out.put_u32(self.total);
        out.put_u16(reports.len() as u16);
        for report in reports {
            let load = report.load.unwrap_or(Load {
                users: 0,
                cpu_centipercent: 0,
                memory_bytes: 0,
                msgs_in_per_s: 0,
                msgs_out_per_s: 0,
                capacity: None,
            });
            let flag = |on: bool, bit: u8| if on { bit } else { 0 };
            let flags = flag(report.connected, CONNECTED)
                | flag(report.draining, DRAINING)
                | flag(report.load.is_some(), LOADED)
                | flag(load.capacity.is_some(), CAPACITY);
            out.put_u32(report.id.0);
            out.put_u8(flags);
            out.put_u64(report.since_ms);
            out.put_u32(load.users);
            out.put_u32(load.cpu_centipercent);
            out.put_u64(load.memory_bytes);
            out.put_u32(load.msgs_in_per_s);
            out.put_u32(load.msgs_out_per_s);
            out.put_u32(load.capacity.unwrap_or(0));
        }
        out.freeze()
    }

    /// Reads a heartbeat; every count is checked against the bytes and the cap, whatever it
    /// claims.
    pub(crate) fn decode(mut bytes: Bytes) -> Result<Self, WireError> {
        let len = bytes.len();
        if len < 13 {
            return Err(WireError::Short(len));
        }
        let version = bytes.get_u8();
        if version != HEARTBEAT_VERSION {
            return Err(WireError::Version(version));
        }
        let from = HubId(bytes.get_u64());
        let count = bytes.get_u32() as usize;
        if bytes.len() < count.saturating_mul(16).saturating_add(6) {
            return Err(WireError::Short(len));
        }
        let sent = (0..count).map(|_| (HubId(bytes.get_u64()), bytes.get_u64())).collect();
        let total = bytes.get_u32();
        let reported = usize::from(bytes.get_u16());
        if reported > MAX_REPORTS {
            return Err(WireError::TooManyReports(reported));
        }
        if bytes.len() != reported * REPORT_LEN {
            return Err(WireError::Short(len));
        }
        let reports = (0..reported)
            .map(|_| {
                let id = ServerId(bytes.get_u32());
                let flags = bytes.get_u8();
                let since_ms = bytes.get_u64();
                let load = Load {
                    users: bytes.get_u32(),
                    cpu_centipercent: bytes.get_u32(),
                    memory_bytes: bytes.get_u64(),
                    msgs_in_per_s: bytes.get_u32(),
                    msgs_out_per_s: bytes.get_u32(),
                    capacity: None,
                };
                let capacity = bytes.get_u32();
                let load = Load { capacity: (flags & CAPACITY != 0).then_some(capacity), ..load };
                ServerReport {
                    id,
                    connected: flags & CONNECTED != 0,
                    draining: flags & DRAINING != 0,
                    since_ms,
                    load: (flags & LOADED != 0).then_some(load),
                }
            })
            .collect();
        Ok(Self { from, sent, total, reports })
    }
}

/// `chunks` (whole frames, as the relay staged them) cut into parts of at most `limit` bytes,
/// each a list of slices of the same buffers, the frames in order. A cut falls only between
/// frames; a frame longer than `limit` is a part of its own.
pub(crate) fn split_frames(chunks: &[Bytes], limit: usize) -> Vec<Vec<Bytes>> {
    // The relay checked every frame against the hub's own limit already.
    let codec = Codec::new(MAX_FRAME_LEN_CEILING);
    let mut parts = Vec::new();
    let mut part: Vec<Bytes> = Vec::new();
    let mut part_len = 0;
    for chunk in chunks {
        let mut rest = chunk.clone();
        while !rest.is_empty() {
            // The whole frames at the front of `rest` that still fit in this part.
            let mut take = 0;
            while let Ok(Some(len)) = codec.whole_frame_len(&rest[take..]) {
                if part_len + take + len > limit && part_len + take > 0 {
                    break;
                }
                take += len;
            }
            if take == 0 && part_len == 0 {
                // Not a frame: left whole rather than cut (the receiver refuses it).
                take = rest.len();
            }
            if take > 0 {
                part.push(rest.split_to(take));
                part_len += take;
            }
            if !rest.is_empty() {
                parts.push(std::mem::take(&mut part));
                part_len = 0;
            }
        }
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use acms_protocol::LENGTH_PREFIX_LEN;

    use super::*;

    #[test]
    fn frames_are_cut_between_frames_into_parts_under_the_limit() {
        let frame = |len: usize, fill: u8| {
            let mut bytes = (len as u32 - LENGTH_PREFIX_LEN as u32).to_be_bytes().to_vec();
            bytes.resize(len, fill);
            bytes
        };
        // Two chunks: three 40-byte frames, then a 150-byte frame and a 30-byte one.
        let first: Vec<u8> = [frame(40, 1), frame(40, 2), frame(40, 3)].concat();
        let second: Vec<u8> = [frame(150, 4), frame(30, 5)].concat();
        let chunks = [Bytes::from(first.clone()), Bytes::from(second.clone())];
        let parts = split_frames(&chunks, 100);
        let lens: Vec<usize> = parts.iter().map(|part| part.iter().map(Bytes::len).sum()).collect();
        // 80 fits, a third 40 would not; the 150-byte frame goes alone; the rest fit together.
        assert_eq!(lens, [80, 40, 150, 30]);
        let joined: Vec<u8> = parts.concat().concat();
        assert_eq!(joined, [first, second].concat());
        // Under the limit: one part, the same slices.
        let whole = split_frames(&chunks, 1000);
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0], chunks);
    }

    #[test]
    fn every_message_reads_back_as_it_was_written() {
        let from = HubId(7);
        let bodies = [
            Body::Frames {
                origin: ServerId(3),
                epoch: 99,
                counted: vec![(ServerId(5), 3), (ServerId(6), 0)],
                frames: Bytes::from_static(b"xyz"),
            },
            Body::Resent { origin: ServerId(1), target: ServerId(2) },
            Body::Gap,
            Body::Credit { target: ServerId(8), bytes: 1 << 40 },
        ];
        for body in bodies {
            let message = Message { from, seq: 5, body };
            assert_eq!(Message::decode(message.encode()).unwrap(), message);
        }
        let chunks = [Bytes::from_static(b"ab"), Bytes::from_static(b"c")];
        let counted = [(ServerId(2), 3)];
        let joined = Message::encode_frames(from, 9, (ServerId(4), 1), &counted, &chunks);
        let frames = Bytes::from_static(b"abc");
        let body = Body::Frames { origin: ServerId(4), epoch: 1, counted: counted.into(), frames };
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
        // Frames whose credit list claims more entries than the message holds.
        let frames = Body::Frames {
            origin: ServerId(1),
            epoch: 1,
            counted: vec![(ServerId(2), 9)],
            frames: Bytes::new(),
        };
        let mut lying = Message { from: HubId(1), seq: 1, body: frames }.encode().to_vec();
        let at = HEADER_LEN + 12;
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        let claimed = lying.len();
        assert_eq!(Message::decode(lying.into()), Err(WireError::Short(claimed)));
        // A heartbeat claiming more entries than it holds.
        let beat = |sent, reports| Heartbeat { from: HubId(1), sent, total: 2, reports };
        let mut lying = beat(vec![(HubId(2), 3)], vec![]).encode().to_vec();
        lying[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Heartbeat::decode(lying.into()).is_err());
        let load = Load {
            users: 7,
            cpu_centipercent: 1234,
            memory_bytes: 1 << 33,
            msgs_in_per_s: 5,
            msgs_out_per_s: 6,
            capacity: Some(100),
        };
        let reports = vec![
            ServerReport {
                id: ServerId(3),
                connected: true,
                draining: false,
                since_ms: 9,
                load: Some(load),
            },
            ServerReport {
                id: ServerId(4),
                connected: false,
                draining: true,
                since_ms: 0,
                load: None,
            },
        ];
        let full = beat(vec![(HubId(2), 3), (HubId(4), 5)], reports);
        assert_eq!(Heartbeat::decode(full.encode()).unwrap(), full);
        // More reports claimed than it holds, or than the cap.
        let mut lying = full.encode().to_vec();
        let at = lying.len() - 2 * REPORT_LEN - 2;
        lying[at..at + 2].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(Heartbeat::decode(lying.clone().into()), Err(WireError::Short(lying.len())));
        lying[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        let too_many = Heartbeat::decode(lying.into());
        assert_eq!(too_many, Err(WireError::TooManyReports(u16::MAX as usize)));
    }

    #[test]
    fn a_heartbeat_never_carries_more_than_the_cap() {
        let report = |id| ServerReport {
            id: ServerId(id),
            connected: true,
            draining: false,
            since_ms: 0,
            load: None,
        };
        let reports: Vec<ServerReport> = (0..MAX_REPORTS as u32 + 50).map(report).collect();
        let beat = Heartbeat { from: HubId(1), sent: vec![], total: 306, reports };
        let bytes = beat.encode();
        assert!(bytes.len() <= 20 + MAX_REPORTS * REPORT_LEN, "{} bytes", bytes.len());
        assert_eq!(Heartbeat::decode(bytes).unwrap().reports.len(), MAX_REPORTS);
    }
}

//! The bookkeeping of exactly-once delivery (docs/RELIABILITY.md): what this server sent and has
//! not had acknowledged, what it received from each origin, and the acks it owes.

use std::collections::VecDeque;

use acms_protocol::{Ack, DATA_SEQ_AT, LENGTH_PREFIX_LEN, SeqRange, ServerId, data_seq};
use bytes::{Bytes, BytesMut};

/// The number this server gives a data frame it sends through the hub: one counter per process,
/// from 1. Receivers drop what is at or below the highest they have seen from its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Seq(pub(crate) u64);

impl Seq {
    /// The first number of a process.
    pub(crate) const FIRST: Seq = Seq(1);

    /// The number after this one.
    pub(crate) fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// A process's epoch, chosen at start: a new one tells receivers that sequence numbers start
/// over. Only equality matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Epoch(pub(crate) u64);

/// Bytes of the retransmit buffer a frame of `len` bytes takes; one frame larger than the whole
/// buffer takes all of it rather than wait forever.
pub(crate) fn charge(len: usize, cap: usize) -> u32 {
    u32::try_from(len.min(cap)).unwrap_or(u32::MAX)
}

/// Frames sent through the hub and not yet answered (acknowledged or returned undeliverable), by
/// sequence number, kept as the bytes sent so they can be sent again as they were.
///
/// Frames are kept in the chunks they were sent in, one reference per chunk rather than one per
/// frame: at millions of frames a second, a reference count and a 32-byte slot per frame cost
/// more than the rest of the bookkeeping together.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// Per frame, where it lies in its chunk; `len == 0` once answered. Answered slots at the
    /// front are dropped.
    slots: VecDeque<Slot>,
    /// The chunks that still hold an unanswered frame, oldest first.
    chunks: VecDeque<Chunk>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    start: u32,
    len: u32,
}

#[derive(Debug)]
struct Chunk {
    /// Sequence number of its first frame; its frames are numbered one after the other.
    first_seq: u64,
    /// Frames not yet answered; the bytes are let go when it reaches zero.
    live: u32,
    bytes: Bytes,
}

impl Unacked {
    /// Keeps whole data frames, numbered one after the other from where the last ones ended.
    pub(crate) fn keep(&mut self, bytes: Bytes) {
        let mut at = 0;
        let mut first_seq = None;
        while at + DATA_SEQ_AT + 8 <= bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + LENGTH_PREFIX_LEN].try_into().expect("4"));
            let seq = data_seq(&bytes[at..]).expect("checked above");
            if self.slots.is_empty() {
                self.base = seq;
            }
            debug_assert_eq!(seq, self.base + self.slots.len() as u64);
            first_seq.get_or_insert(seq);
            let whole = LENGTH_PREFIX_LEN as u32 + len;
            self.slots.push_back(Slot { start: at as u32, len: whole });
            at += whole as usize;
        }
        if let Some(first_seq) = first_seq {
            let live = (self.base + self.slots.len() as u64 - first_seq) as u32;
            self.chunks.push_back(Chunk { first_seq, live, bytes });
        }
    }

    /// Forgets frame `seq` and returns its length, if it was still waiting for an answer.
    pub(crate) fn take(&mut self, Seq(seq): Seq) -> Option<usize> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let slot = self.slots.get_mut(index)?;
        if slot.len == 0 {
            return None;
        }
        let len = std::mem::replace(&mut slot.len, 0) as usize;
        // Acks mostly come oldest first: the front chunk, without a search.
        let chunk = if self.chunks.get(1).is_none_or(|next| next.first_seq > seq) {
            0
        } else {
            self.chunks.partition_point(|chunk| chunk.first_seq <= seq) - 1
        };
        let chunk = &mut self.chunks[chunk];
        chunk.live -= 1;
        if chunk.live == 0 {
            chunk.bytes = Bytes::new();
        }
        while self.slots.front().is_some_and(|slot| slot.len == 0) {
            self.slots.pop_front();
            self.base += 1;
        }
        while self.chunks.front().is_some_and(|chunk| chunk.live == 0) {
            self.chunks.pop_front();
        }
        Some(len)
    }

    /// The sequence numbers from the oldest frame still waiting to the newest kept: an ack
    /// settles nothing outside them, so its runs are clipped to them before they are walked.
    pub(crate) fn outstanding(&self) -> std::ops::Range<u64> {
        self.base..self.base + self.slots.len() as u64
    }

    /// Whether frame `seq` still waits for an answer.
    pub(crate) fn contains(&self, Seq(seq): Seq) -> bool {
        let index = seq.checked_sub(self.base).and_then(|index| usize::try_from(index).ok());
        index.and_then(|index| self.slots.get(index)).is_some_and(|slot| slot.len > 0)
    }

    /// The frames still waiting, from sequence number `from` on, in order.
    pub(crate) fn from(&self, Seq(from): Seq) -> impl Iterator<Item = &[u8]> {
        let skip = usize::try_from(from.saturating_sub(self.base)).unwrap_or(usize::MAX);
        let mut chunk = 0;
        self.slots.iter().enumerate().skip(skip).filter(|(_, slot)| slot.len > 0).map(
            move |(index, slot)| {
                let seq = self.base + index as u64;
                while self.chunks.get(chunk + 1).is_some_and(|next| next.first_seq <= seq) {
                    chunk += 1;
                }
                let start = slot.start as usize;
                &self.chunks[chunk].bytes[start..start + slot.len as usize]
            },
        )
    }

    /// Whether no frame waits for an answer: answered frames at the front are dropped at once,
    /// so none is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of frames waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.len > 0).count()
    }
}

/// Looked up once per received frame: a fast hash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What this server has received from one origin server.
#[derive(Debug, Default)]
struct Origin {
    epoch: Epoch,
    /// The highest sequence number handed to the app. Frames from one origin arrive in order and
    /// are sent again in order, so anything at or below it is a duplicate.
    highest: u64,
    /// Frames received since the last acks were sent, as runs.
    owed: Vec<SeqRange>,
}

/// Duplicate suppression on the receiving side, and the acks owed: one lookup per frame.
#[derive(Debug, Default)]
pub(crate) struct Received {
    origins: HashMap<ServerId, Origin>,
    /// Origins with acks owed.
    owing: Vec<ServerId>,
}

impl Received {
    /// Learns the epoch of an origin's process: a new one numbers its frames from the start, and
    /// acks owed to the old one would name numbers the new one has not sent yet.
    pub(crate) fn epoch(&mut self, origin: ServerId, epoch: Epoch) {
        let known = self.origins.entry(origin).or_default();
        if known.epoch != epoch {
            *known = Origin { epoch, ..Origin::default() };
        }
    }

    /// Records frame `seq` from `origin` as owing an ack; returns whether it is new (to be handed
    /// to the app) rather than a duplicate.
    pub(crate) fn receive(&mut self, origin: ServerId, Seq(seq): Seq) -> bool {
        let known = self.origins.entry(origin).or_default();
        let new = seq > known.highest;
        if new {
            known.highest = seq;
        }
        match known.owed.last_mut() {
            Some(last) if last.first + u64::from(last.count) == seq && last.count < u32::MAX => {
                last.count += 1;
            }
            Some(_) => known.owed.push(SeqRange { first: seq, count: 1 }),
            None => {
                known.owed.push(SeqRange { first: seq, count: 1 });
                self.owing.push(origin);
            }
        }
        new
    }

    /// Forgets the acks owed, when a new hub connection starts. Every origin sends again all it
    /// has not had answered once this server is registered (or the hub is new), and duplicates
    /// are acknowledged again, so nothing waits for these. Sent now, an ack of the last
    /// connection could reach its origin before the new hub's `Copies` for the frame sent again,
    /// and settle a frame for a user with several sessions on the first server's word.
    pub(crate) fn forget_owed(&mut self) {
        for origin in self.owing.drain(..) {
            if let Some(known) = self.origins.get_mut(&origin) {
                known.owed.clear();
            }
        }
    }

    /// Encodes every ack owed, from server `me`, into `out`.
    pub(crate) fn encode_acks(&mut self, me: ServerId, max_frame_len: usize, out: &mut BytesMut) {
        for to in self.owing.drain(..) {
            let Some(known) = self.origins.get_mut(&to) else { continue };
            if !known.owed.is_empty() {
                let ranges = std::mem::take(&mut known.owed);
                Ack { to, from: me, ranges }.encode(max_frame_len, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data frames numbered `seqs`, each carrying its number as payload, as one chunk.
    fn chunk(seqs: std::ops::Range<u64>) -> Bytes {
        let mut out = BytesMut::new();
        for seq in seqs {
            let data = acms_protocol::Data {
                kind: acms_protocol::DataKind::Unicast,
                seq,
                origin: ServerId(1),
                recipient: acms_protocol::UserId::new("bob").unwrap(),
                sender: acms_protocol::UserId::new("al").unwrap(),
                payload: Bytes::from(seq.to_string()),
            };
            acms_protocol::Frame::Data(data).encode(1 << 20, &mut out).unwrap();
        }
        out.freeze()
    }

    fn seqs<'a>(frames: impl Iterator<Item = &'a [u8]>) -> Vec<u64> {
        frames.map(|frame| data_seq(frame).unwrap()).collect()
    }

    #[test]
    fn unacked_frames_leave_in_any_order_and_are_resent_in_order() {
        let mut unacked = Unacked::default();
        let first = chunk(10..13);
        let frame_len = first.len() / 3;
        unacked.keep(first);
        unacked.keep(chunk(13..15));
        assert!(unacked.contains(Seq(12)));
        assert_eq!(unacked.take(Seq(12)), Some(frame_len));
        assert!(
            !unacked.contains(Seq(12)) && !unacked.contains(Seq(9)) && !unacked.contains(Seq(99))
        );
        assert_eq!(unacked.take(Seq(12)), None, "answered once");
        assert_eq!(unacked.take(Seq(9)), None);
        assert_eq!(unacked.take(Seq(99)), None);
        assert_eq!(seqs(unacked.from(Seq(0))), [10, 11, 13, 14]);
        assert_eq!(seqs(unacked.from(Seq(13))), [13, 14]);
        unacked.take(Seq(10));
        unacked.take(Seq(11));
        assert_eq!(unacked.len(), 2);
        assert_eq!(unacked.chunks.len(), 1, "the first chunk is let go once all of it is answered");
        let resent: Vec<&[u8]> = unacked.from(Seq(0)).collect();
        assert_eq!(resent[0], &chunk(13..14)[..], "sent again byte for byte");
        unacked.take(Seq(14));
        assert_eq!(seqs(unacked.from(Seq(0))), [13]);
        unacked.take(Seq(13));
        assert_eq!(unacked.len(), 0);
        assert!(unacked.chunks.is_empty());
        unacked.keep(chunk(15..16));
        assert_eq!(seqs(unacked.from(Seq(0))), [15]);
        assert_eq!(unacked.take(Seq(15)), Some(frame_len));
    }

    #[test]
    // A list of ranges holding one range is what is meant here.
    #[allow(clippy::single_range_in_vec_init)]
    fn an_ack_is_walked_only_over_the_frames_outstanding() {
        let mut unacked = Unacked::default();
        assert!(unacked.outstanding().is_empty(), "nothing sent, nothing to settle");
        unacked.keep(chunk(10..15));
        unacked.take(Seq(10));
        unacked.take(Seq(12));
        assert_eq!(unacked.outstanding(), 11..15);
        // Billions of numbers claimed, many times over, around and past what was sent.
        let runs = [SeqRange { first: 1, count: u32::MAX }; 64];
        let mut ranges = runs.to_vec();
        ranges.push(SeqRange { first: u64::MAX - u64::from(u32::MAX), count: u32::MAX });
        let ack = Ack { to: ServerId(1), from: ServerId(2), ranges };
        let covered = ack.covered(unacked.outstanding());
        assert_eq!(covered, [11..15]);
        let walked: Vec<u64> = covered.into_iter().flatten().collect();
        let settled: Vec<u64> =
            walked.iter().copied().filter(|&seq| unacked.take(Seq(seq)).is_some()).collect();
        assert_eq!(walked.len(), 4, "the walk is as long as what was outstanding");
        assert_eq!(settled, [11, 13, 14]);
        assert_eq!(unacked.len(), 0);
        assert!(unacked.outstanding().is_empty());
    }

    #[test]
    fn duplicates_are_acked_but_not_delivered_and_a_new_epoch_starts_over() {
        let mut received = Received::default();
        let origin = ServerId(1);
        received.epoch(origin, Epoch(100));
        assert!(received.receive(origin, Seq(1)));
        assert!(received.receive(origin, Seq(2)));
        assert!(received.receive(origin, Seq(5)));
        assert!(!received.receive(origin, Seq(2)), "sent again after a reconnect");
        assert!(received.receive(origin, Seq(6)));
        let mut out = BytesMut::new();
        received.encode_acks(ServerId(2), 1 << 20, &mut out);
        assert!(received.owing.is_empty());
        let mut codec = acms_protocol::Codec::default();
        let raw = tokio_util::codec::Decoder::decode(&mut codec, &mut out).unwrap().unwrap();
        let ack = Ack::decode(raw.body()).unwrap();
        assert_eq!((ack.to, ack.from), (origin, ServerId(2)));
        let seqs: Vec<u64> = ack.ranges.iter().flat_map(|range| range.seqs()).collect();
        assert_eq!(seqs, [1, 2, 5, 2, 6]);

        received.receive(origin, Seq(7));
        received.forget_owed();
        let mut out = BytesMut::new();
        received.encode_acks(ServerId(2), 1 << 20, &mut out);
        assert!(out.is_empty(), "acks of the last connection are forgotten");
        received.epoch(origin, Epoch(100));
        assert!(!received.receive(origin, Seq(6)), "same process: still a duplicate");
        received.epoch(origin, Epoch(101));
        assert!(received.receive(origin, Seq(1)), "a restarted origin numbers from the start");
    }
}

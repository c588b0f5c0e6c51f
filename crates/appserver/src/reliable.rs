//! The bookkeeping of exactly-once delivery (docs/RELIABILITY.md): what this server sent and has
//! not had acknowledged, what it received from each origin, and the acks it owes.

use std::collections::VecDeque;

use acms_protocol::{Ack, SeqRange, ServerId};
use bytes::{Bytes, BytesMut};

/// Frames sent through the hub and not yet answered (acknowledged or returned undeliverable), by
/// sequence number, kept as the bytes sent so they can be sent again as they were.
#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// Sequence number of `slots[0]`.
    base: u64,
    /// `None` once answered; answered slots at the front are dropped.
    slots: VecDeque<Option<Bytes>>,
}

impl Unacked {
    /// Keeps frame `seq`; sequence numbers are given out one after the other.
    pub(crate) fn push(&mut self, seq: u64, frame: Bytes) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.slots.len() as u64);
        self.slots.push_back(Some(frame));
    }

    /// Forgets frame `seq` and returns it, if it was still waiting for an answer.
    pub(crate) fn take(&mut self, seq: u64) -> Option<Bytes> {
        let index = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let frame = self.slots.get_mut(index)?.take()?;
        while self.slots.front().is_some_and(Option::is_none) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(frame)
    }

    /// The frames still waiting, from sequence number `from` on, in order.
    pub(crate) fn from(&self, from: u64) -> impl Iterator<Item = &Bytes> {
        let skip = usize::try_from(from.saturating_sub(self.base)).unwrap_or(usize::MAX);
        self.slots.iter().skip(skip).flatten()
    }

    /// Number of frames waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

/// Looked up once per received frame: a fast hash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What this server has received from one origin server.
#[derive(Debug, Default)]
struct Origin {
    epoch: u64,
    /// The highest sequence number handed to the app. Frames from one origin arrive in order and
    /// are sent again in order, so anything at or below it is a duplicate.
    highest: u64,
}

/// Duplicate suppression on the receiving side, and the acks owed.
#[derive(Debug, Default)]
pub(crate) struct Received {
    origins: HashMap<ServerId, Origin>,
    /// Frames received since the last acks were sent, by origin, as runs.
    owed: HashMap<ServerId, Vec<SeqRange>>,
}

impl Received {
    /// Learns the epoch of an origin's process: a new one numbers its frames from the start.
    pub(crate) fn epoch(&mut self, origin: ServerId, epoch: u64) {
        let known = self.origins.entry(origin).or_default();
        if known.epoch != epoch {
            *known = Origin { epoch, highest: 0 };
        }
    }

    /// Records frame `seq` from `origin` as owing an ack; returns whether it is new (to be handed
    /// to the app) rather than a duplicate.
    pub(crate) fn receive(&mut self, origin: ServerId, seq: u64) -> bool {
        let known = self.origins.entry(origin).or_default();
        let new = seq > known.highest;
        if new {
            known.highest = seq;
        }
        let ranges = self.owed.entry(origin).or_default();
        match ranges.last_mut() {
            Some(last) if last.first + u64::from(last.count) == seq && last.count < u32::MAX => {
                last.count += 1;
            }
            _ => ranges.push(SeqRange { first: seq, count: 1 }),
        }
        new
    }

    /// Encodes every ack owed, from server `me`, into `out`.
    pub(crate) fn encode_acks(&mut self, me: ServerId, max_frame_len: usize, out: &mut BytesMut) {
        for (to, ranges) in self.owed.drain() {
            Ack { to, from: me, ranges }.encode(max_frame_len, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacked_frames_leave_in_any_order_and_are_resent_in_order() {
        let mut unacked = Unacked::default();
        for seq in 10..15 {
            unacked.push(seq, Bytes::from(seq.to_string()));
        }
        assert_eq!(unacked.take(12).as_deref(), Some(&b"12"[..]));
        assert_eq!(unacked.take(12), None, "answered once");
        assert_eq!(unacked.take(9), None);
        assert_eq!(unacked.take(99), None);
        let resent: Vec<_> = unacked.from(0).cloned().collect();
        assert_eq!(
            resent,
            ["10", "11", "13", "14"].map(|text| Bytes::from_static(text.as_bytes()))
        );
        assert_eq!(unacked.from(13).count(), 2);
        unacked.take(10);
        unacked.take(11);
        assert_eq!(unacked.len(), 2);
        assert_eq!(unacked.from(0).next().map(|frame| &frame[..]), Some(&b"13"[..]));
        unacked.take(13);
        unacked.take(14);
        assert_eq!(unacked.len(), 0);
        unacked.push(15, Bytes::from_static(b"15"));
        assert_eq!(unacked.take(15).as_deref(), Some(&b"15"[..]));
    }

    #[test]
    fn duplicates_are_acked_but_not_delivered_and_a_new_epoch_starts_over() {
        let mut received = Received::default();
        let origin = ServerId(1);
        received.epoch(origin, 100);
        assert!(received.receive(origin, 1));
        assert!(received.receive(origin, 2));
        assert!(received.receive(origin, 5));
        assert!(!received.receive(origin, 2), "sent again after a reconnect");
        assert!(received.receive(origin, 6));
        let mut out = BytesMut::new();
        received.encode_acks(ServerId(2), 1 << 20, &mut out);
        assert!(received.owed.is_empty());
        let mut codec = acms_protocol::Codec::default();
        let raw = tokio_util::codec::Decoder::decode(&mut codec, &mut out).unwrap().unwrap();
        let ack = Ack::decode(raw.body()).unwrap();
        assert_eq!((ack.to, ack.from), (origin, ServerId(2)));
        let seqs: Vec<u64> = ack.ranges.iter().flat_map(|range| range.seqs()).collect();
        assert_eq!(seqs, [1, 2, 5, 2, 6]);

        received.epoch(origin, 100);
        assert!(!received.receive(origin, 6), "same process: still a duplicate");
        received.epoch(origin, 101);
        assert!(received.receive(origin, 1), "a restarted origin numbers from the start");
    }
}

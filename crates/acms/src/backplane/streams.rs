//! The numbering of the messages from one hub to another, and the gaps in it. Core NATS delivers
//! at most once: a message lost between two hubs shows as a number skipped, or, for the last one,
//! as a heartbeat naming a number the receiver never saw.

use std::collections::HashMap;

use super::HubId;

/// The numbers this hub gave its messages, per destination hub.
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    last: HashMap<HubId, u64>,
}

impl Outgoing {
    /// The number of the next message to `hub`: 1 for the first.
    pub(crate) fn next(&mut self, hub: HubId) -> u64 {
        let last = self.last.entry(hub).or_insert(0);
        *last += 1;
        *last
    }

    /// The number of the last message to each hub, for the heartbeat.
    pub(crate) fn last(&self) -> Vec<(HubId, u64)> {
        self.last.iter().map(|(&hub, &seq)| (hub, seq)).collect()
    }

    /// A dead hub gets nothing more.
    pub(crate) fn forget(&mut self, hub: HubId) {
        self.last.remove(&hub);
    }
}

/// What the arrival of a numbered message means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next one expected.
    InOrder,
    /// Messages before it were lost: from `first_missing` on.
    Gap { first_missing: u64 },
    /// Older than one already seen (a duplicate, or one overtaken): dropped.
    Stale,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stream {
    /// The number expected next.
    next: u64,
    /// The last number the sender's previous heartbeat claimed.
    claimed: u64,
}

/// The numbers received from each hub.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    streams: HashMap<HubId, Stream>,
}

impl Incoming {
    /// Message `seq` from `hub` arrived. After a gap the stream goes on from it: what was lost
    /// is sent again through the origins, not by the backplane.
    pub(crate) fn arrive(&mut self, hub: HubId, seq: u64) -> Arrival {
        let stream = self.streams.entry(hub).or_insert(Stream { next: 1, claimed: 0 });
        if seq < stream.next {
            return Arrival::Stale;
        }
        let first_missing = stream.next;
        stream.next = seq + 1;
        if seq == first_missing { Arrival::InOrder } else { Arrival::Gap { first_missing } }
    }

    /// `hub`'s heartbeat claims it sent this hub messages up to `last`. Heartbeats and batches
    /// travel on different subjects and may be handled out of order, so a message counts as lost
    /// only when the claim of the heartbeat before this one is still unmet.
    pub(crate) fn claimed(&mut self, hub: HubId, last: u64) -> Option<u64> {
        let stream = self.streams.entry(hub).or_insert(Stream { next: 1, claimed: 0 });
        let earlier = std::mem::replace(&mut stream.claimed, last);
        if earlier >= stream.next {
            let first_missing = stream.next;
            stream.next = earlier + 1;
            return Some(first_missing);
        }
        None
    }

    /// A dead hub's stream is forgotten.
    pub(crate) fn forget(&mut self, hub: HubId) {
        self.streams.remove(&hub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HubId = HubId(1);

    #[test]
    fn a_skipped_number_is_a_gap_and_the_stream_goes_on_after_it() {
        let mut incoming = Incoming::default();
        assert_eq!(incoming.arrive(A, 1), Arrival::InOrder);
        assert_eq!(incoming.arrive(A, 2), Arrival::InOrder);
        assert_eq!(incoming.arrive(A, 4), Arrival::Gap { first_missing: 3 });
        assert_eq!(incoming.arrive(A, 5), Arrival::InOrder);
        assert_eq!(incoming.arrive(A, 3), Arrival::Stale);
        // The first message from a hub is number 1: a later one means the first were lost.
        assert_eq!(incoming.arrive(HubId(2), 3), Arrival::Gap { first_missing: 1 });
    }

    #[test]
    fn a_lost_last_message_shows_on_the_second_heartbeat_that_claims_it() {
        let mut incoming = Incoming::default();
        assert_eq!(incoming.arrive(A, 1), Arrival::InOrder);
        // Message 2 is in flight when the heartbeat claiming it is handled: not yet a gap.
        assert_eq!(incoming.claimed(A, 2), None);
        assert_eq!(incoming.arrive(A, 2), Arrival::InOrder);
        assert_eq!(incoming.claimed(A, 2), None, "met");
        // Message 3 is lost: the first claim may be early, the second is not.
        assert_eq!(incoming.claimed(A, 3), None);
        assert_eq!(incoming.claimed(A, 3), Some(3));
        assert_eq!(incoming.claimed(A, 3), None, "reported once");
        assert_eq!(incoming.arrive(A, 4), Arrival::InOrder);
    }

    #[test]
    fn outgoing_numbers_start_at_one_per_destination() {
        let mut outgoing = Outgoing::default();
        assert_eq!(outgoing.next(A), 1);
        assert_eq!(outgoing.next(A), 2);
        assert_eq!(outgoing.next(HubId(2)), 1);
        let mut last = outgoing.last();
        last.sort();
        assert_eq!(last, vec![(A, 2), (HubId(2), 1)]);
    }
}

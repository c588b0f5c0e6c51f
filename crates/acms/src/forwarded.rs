//! What the hub forwarded to each AS connection, so that frames in flight to a server that
//! leaves for good are sent again by their origins (docs/RELIABILITY.md, "When frames are sent
//! again").
//!
//! A frame handed to a connection's queue may die there, or in either socket, when the
//! connection breaks. If the server comes back within its grace, every origin sends again all it
//! has not had acknowledged; if it does not (or it said `Bye`), only the origins that forwarded
//! to it must, from the lowest sequence number they forwarded: they send again only what is still
//! unacknowledged, so the cost is what was in flight.
//!
//! The record is kept per connection and origin, not per frame: the relay pays one lookup in its
//! own connection's [`Marks`] per batch handed over, and takes the receiving connection's lock
//! only the first time an origin forwards to it, or when its stream goes back to a lower number
//! (it is sending again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use acms_protocol::ServerId;

/// Numbers connections, so an origin's mark for a connection that was replaced is not trusted.
static CONNECTIONS: AtomicU64 = AtomicU64::new(1);

/// The lowest sequence number each origin forwarded to one receiving connection.
#[derive(Debug)]
pub(crate) struct Forwarded {
    connection: u64,
    lowest: Mutex<HashMap<ServerId, u64>>,
}

impl Default for Forwarded {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarded {
    /// The record of a new connection: nothing forwarded yet.
    pub(crate) fn new() -> Self {
        Self { connection: CONNECTIONS.fetch_add(1, Ordering::Relaxed), lowest: Mutex::default() }
    }

    /// Records that `origin` forwarded frame `seq` here; returns the lowest it forwarded so far.
    fn record(&self, origin: ServerId, seq: u64) -> u64 {
        let mut lowest = self.lowest.lock().expect("forwarded lock");
        let first = lowest.entry(origin).or_insert(seq);
        *first = (*first).min(seq);
        *first
    }

    /// Everything recorded: by origin, the lowest sequence number it forwarded here.
    pub(crate) fn take(&self) -> HashMap<ServerId, u64> {
        std::mem::take(&mut self.lowest.lock().expect("forwarded lock"))
    }
}

/// One origin connection's view of what it recorded in each receiving connection's
/// [`Forwarded`], so that most batches need no lock.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    marks: HashMap<ServerId, Mark, foldhash::fast::RandomState>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    connection: u64,
    lowest: u64,
}

impl Marks {
    /// Notes that `origin` handed `target`'s connection frames from `seq` on (the lowest among
    /// them), recording it there unless a number no greater is recorded already.
    #[inline]
    pub(crate) fn note(
        &mut self,
        target: ServerId,
        forwarded: &Forwarded,
        origin: ServerId,
        seq: u64,
    ) {
        if let Some(mark) = self.marks.get(&target)
            && mark.connection == forwarded.connection
            && mark.lowest <= seq
        {
            return;
        }
        let lowest = forwarded.record(origin, seq);
        self.marks.insert(target, Mark { connection: forwarded.connection, lowest });
    }
}

/// Keeps the lower of two sequence numbers an origin is to send again from.
pub(crate) fn lower(into: &mut HashMap<ServerId, u64>, origin: ServerId, seq: u64) {
    into.entry(origin).and_modify(|first| *first = (*first).min(seq)).or_insert(seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_number_forwarded_per_origin_is_kept() {
        let forwarded = Forwarded::new();
        let (mut one, mut three) = (Marks::default(), Marks::default());
        let target = ServerId(2);
        one.note(target, &forwarded, ServerId(1), 40);
        one.note(target, &forwarded, ServerId(1), 41);
        three.note(target, &forwarded, ServerId(3), 9);
        // Server 1 sends again from 30 (a `Resend` for another receiver): that is lower.
        one.note(target, &forwarded, ServerId(1), 30);
        one.note(target, &forwarded, ServerId(1), 42);
        assert_eq!(forwarded.take(), HashMap::from([(ServerId(1), 30), (ServerId(3), 9)]));
        assert!(forwarded.take().is_empty(), "taken once");
    }

    #[test]
    fn a_mark_is_trusted_only_for_the_connection_it_was_made_for() {
        let mut marks = Marks::default();
        let first = Forwarded::new();
        marks.note(ServerId(2), &first, ServerId(1), 5);
        // Server 2 reconnected: a new connection, whose record starts empty.
        let second = Forwarded::new();
        marks.note(ServerId(2), &second, ServerId(1), 7);
        assert_eq!(second.take(), HashMap::from([(ServerId(1), 7)]));
        assert_eq!(first.take(), HashMap::from([(ServerId(1), 5)]));
    }

    #[test]
    fn lower_keeps_the_minimum() {
        let mut into = HashMap::new();
        lower(&mut into, ServerId(1), 9);
        lower(&mut into, ServerId(1), 4);
        lower(&mut into, ServerId(1), 7);
        assert_eq!(into, HashMap::from([(ServerId(1), 4)]));
    }
}

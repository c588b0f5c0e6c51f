//! The messages waiting for the NATS connection, and the pushback that bounds them. A reader
//! whose frames went to other hubs while `limit` messages or more wait stops reading until the
//! publisher has taken the queue under it, as a reader does for a server's queue above its high
//! water; so a NATS connection slower than the hub's intake slows the senders instead of
//! dropping their frames. The wait has a deadline (a NATS connection lost for good must not
//! hold a server's own traffic on this hub): past it the reader reads again, and a message that
//! finds `limit` + [`HEADROOM`] waiting is dropped, which its receiving hub sees as a gap and
//! repairs by having the origins send again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

/// Messages the queue takes past its limit before it drops one: what the readers had already
/// read when it filled (a read makes at most five messages for each hub it feeds), so that
/// pushback, not a drop, is what a burst meets even under a small limit.
pub(crate) const HEADROOM: usize = 1024;

/// The count of messages queued for the publisher, against the limit.
#[derive(Debug)]
pub(crate) struct Backlog {
    queued: AtomicUsize,
    limit: usize,
    drained: Notify,
}

impl Backlog {
    pub(crate) fn new(limit: usize) -> Self {
        Self { queued: AtomicUsize::new(0), limit: limit.max(1), drained: Notify::new() }
    }

    /// Takes a place for one more message; false when the limit and the headroom are taken
    /// (the message is dropped).
    pub(crate) fn admit(&self) -> bool {
        let hard = self.limit.saturating_add(HEADROOM);
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < hard).then_some(queued + 1)
            })
            .is_ok()
    }

    /// One message left the queue (published, or refused by a closed queue): the readers
    /// waiting read again once it is under the limit.
    pub(crate) fn left(&self) {
        let before = self.queued.fetch_sub(1, Ordering::AcqRel);
        if before == self.limit {
            self.drained.notify_waiters();
        }
    }

    /// Whether readers feeding the backplane should wait.
    pub(crate) fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.limit
    }

    /// Resolves once the queue is under the limit, or at `until`; true if it is under.
    pub(crate) async fn room(&self, until: Instant) -> bool {
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain between the two is not missed.
            drained.as_mut().enable();
            if !self.is_full() {
                return true;
            }
            tokio::select! {
                _ = &mut drained => {}
                _ = &mut deadline => return !self.is_full(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn full_at_the_limit_and_refusing_past_the_headroom() {
        let backlog = Backlog::new(2);
        assert!(backlog.admit() && !backlog.is_full());
        assert!(backlog.admit() && backlog.is_full());
        // Readers wait from here, but what they read already still goes, up to the headroom.
        for _ in 0..HEADROOM {
            assert!(backlog.admit());
        }
        assert!(!backlog.admit(), "the limit and the headroom are taken: the next is dropped");
        for _ in 0..=HEADROOM {
            backlog.left();
        }
        assert!(!backlog.is_full());
        assert!(backlog.admit());
    }

    #[tokio::test]
    async fn a_waiting_reader_reads_again_when_the_queue_drains_or_at_its_deadline() {
        let backlog = Arc::new(Backlog::new(1));
        assert!(backlog.admit());
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room(Instant::now() + Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a full queue holds the reader");
        backlog.left();
        assert!(waiting.await.expect("the reader"), "drained: it reads again");

        // Nothing drains: the deadline lets it read all the same.
        assert!(backlog.admit());
        let until = Instant::now() + Duration::from_millis(20);
        assert!(!backlog.room(until).await, "still full at the deadline");
        assert!(Instant::now() >= until);
    }
}

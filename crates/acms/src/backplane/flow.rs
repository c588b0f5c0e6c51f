//! Flow control across hubs: the pushback of one hub (a reader whose frames left a server's
//! queue above its high water stops reading until it drains) stretched over the backplane with
//! credits, since a pause asked for across NATS would come a round trip late, after a fast
//! sender had published megabytes more.
//!
//! A hub may have at most a window of bytes of unicast frames on their way to one server of
//! another hub ([`Windows`]): frames published to that hub and not yet credited back. A reader
//! that takes a server's window past its limit hands over what it read, then waits on the
//! window's [`Pause`] before reading again, until credit comes or a deadline passes. The hub of
//! the server credits the bytes of each frame as it queues it under the high water, or drops
//! it; frames that leave the queue above the high water are credited only once it drains
//! ([`Credits`]), so the sender waits at the receiver's pace. Credits are unnumbered messages:
//! a lost one holds readers only until the deadline, after which the window starts again from
//! nothing. Nothing is dropped either way.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use acms_protocol::ServerId;
use tokio::sync::Notify;

use super::HubId;

/// Credit owed back is sent once it reaches this many bytes, or when the server drains: one
/// credit message per 64 KiB under load, not one per batch.
pub(crate) const CREDIT_BATCH: usize = 64 * 1024;

/// The window of bytes one hub may have on their way to one server of another, for hubs
/// configured with `high_water` and `max_pending` (every hub of a cluster is assumed to share
/// them): a quarter of the room above the high water, so four sending hubs with full windows
/// still leave the receiving queue under its limit; never under four credit batches, so credit
/// owed and not yet sent never holds a window shut.
pub(crate) fn window(high_water: usize, max_pending: usize) -> usize {
    (max_pending.saturating_sub(high_water) / 4).max(4 * CREDIT_BATCH)
}

/// Longest a reader waits for credit from the hub of a server whose window it shut: twice
/// `max_stall`, since that hub disconnects a server that did not drain within `max_stall` and
/// credits everything then; past it, lost credit holds nobody.
pub(crate) fn pause_limit(max_stall: std::time::Duration) -> std::time::Duration {
    max_stall.saturating_mul(2)
}

/// A wait of the readers sending to one server of another hub, until credit or a deadline.
#[derive(Debug)]
pub(crate) struct Pause {
    /// Set when credit reopened the window.
    reopened: AtomicBool,
    wake: Notify,
    /// When readers read again without credit: a lost one never holds them longer.
    until: Instant,
}

impl Pause {
    fn new(until: Instant) -> Self {
        Self { reopened: AtomicBool::new(false), wake: Notify::new(), until }
    }

    fn reopen(&self) {
        self.reopened.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Resolves when credit reopens the window or at the deadline, whichever comes first; true
    /// for credit.
    pub(crate) async fn wait(&self) -> bool {
        let deadline = tokio::time::sleep_until(self.until.into());
        tokio::pin!(deadline);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            // Registered before the check, so credit between the two is not missed.
            woken.as_mut().enable();
            if self.reopened.load(Ordering::Acquire) {
                return true;
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = &mut deadline => return self.reopened.load(Ordering::Acquire),
            }
        }
    }
}

/// The sending side: the bytes on their way to each server of another hub.
#[derive(Debug)]
pub(crate) struct Windows {
    /// Bytes a window holds: set from the hub's settings once it runs ([`window`]).
    limit: AtomicUsize,
    open: Mutex<HashMap<ServerId, Window>>,
}

#[derive(Debug, Default)]
struct Window {
    outstanding: usize,
    /// Set while the window is shut: what readers wait on.
    pause: Option<Arc<Pause>>,
}

impl Windows {
    /// Windows of `limit` bytes each.
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit: AtomicUsize::new(limit), open: Mutex::default() }
    }

    /// Windows of `limit` bytes each from now on.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// `bytes` of unicast frames for `target` were published at `now`: the pause to wait on
    /// before reading again, if its window is now shut; it ends at `until` at the latest. A
    /// window shut past its deadline with no credit starts again from nothing.
    pub(crate) fn sent(
        &self,
        target: ServerId,
        bytes: usize,
        now: Instant,
        until: Instant,
    ) -> Option<Arc<Pause>> {
        let mut open = self.open.lock().expect("windows lock");
        let window = open.entry(target).or_default();
        if window.pause.as_ref().is_some_and(|pause| pause.until <= now) {
            window.outstanding = 0;
            window.pause = None;
        }
        window.outstanding = window.outstanding.saturating_add(bytes);
        if window.outstanding <= self.limit() {
            return None;
        }
        Some(window.pause.get_or_insert_with(|| Arc::new(Pause::new(until))).clone())
    }

    /// `target`'s hub credits `bytes`: readers waiting on its window read again once it is open.
    pub(crate) fn credit(&self, target: ServerId, bytes: usize) {
        let mut open = self.open.lock().expect("windows lock");
        let Some(window) = open.get_mut(&target) else { return };
        window.outstanding = window.outstanding.saturating_sub(bytes);
        if window.outstanding <= self.limit()
            && let Some(pause) = window.pause.take()
        {
            pause.reopen();
        }
        if window.outstanding == 0 {
            open.remove(&target);
        }
    }

    /// `target` moved or left: its window is forgotten, and readers waiting on it read again.
    pub(crate) fn forget(&self, target: ServerId) {
        let window = self.open.lock().expect("windows lock").remove(&target);
        if let Some(pause) = window.and_then(|window| window.pause) {
            pause.reopen();
        }
    }

    /// Windows shut now.
    pub(crate) fn shut(&self) -> usize {
        let open = self.open.lock().expect("windows lock");
        open.values().filter(|window| window.pause.is_some()).count()
    }
}

/// The receiving side: credit owed to each hub for the frames it sent each server here.
#[derive(Debug, Default)]
pub(crate) struct Credits {
    owed: Mutex<Owed>,
}

#[derive(Debug, Default)]
struct Owed {
    bytes: HashMap<(HubId, ServerId), usize>,
    /// Servers above their high water, whose credit waits until they drain.
    withheld: HashSet<ServerId>,
}

impl Credits {
    /// `bytes` of `hub`'s frames for `target` were queued under its high water, or dropped:
    /// the credit to send `hub` now, once enough is owed, unless `target` is draining.
    pub(crate) fn passed(&self, hub: HubId, target: ServerId, bytes: usize) -> Option<usize> {
        let mut owed = self.owed.lock().expect("credits lock");
        let withheld = owed.withheld.contains(&target);
        let entry = owed.bytes.entry((hub, target)).or_default();
        *entry += bytes;
        if withheld || *entry < CREDIT_BATCH {
            return None;
        }
        owed.bytes.remove(&(hub, target))
    }

    /// `bytes` of `hub`'s frames left `target` above its high water: their credit waits until
    /// it drains. True if nothing was withheld for `target` yet, so the caller watches it drain.
    pub(crate) fn withhold(&self, hub: HubId, target: ServerId, bytes: usize) -> bool {
        let mut owed = self.owed.lock().expect("credits lock");
        *owed.bytes.entry((hub, target)).or_default() += bytes;
        owed.withheld.insert(target)
    }

    /// `hub` is dead: nothing more is owed to it.
    pub(crate) fn forget_hub(&self, hub: HubId) {
        self.owed.lock().expect("credits lock").bytes.retain(|&(to, _), _| to != hub);
    }

    /// `target` drained under its high water (or left): the credit owed to each hub for it.
    pub(crate) fn drained(&self, target: ServerId) -> Vec<(HubId, usize)> {
        let mut owed = self.owed.lock().expect("credits lock");
        owed.withheld.remove(&target);
        let mut credits = Vec::new();
        owed.bytes.retain(|&(hub, server), bytes| {
            if server == target {
                credits.push((hub, *bytes));
            }
            server != target
        });
        credits
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_full_window_pauses_until_credit_reopens_it() {
        let windows = Windows::new(100);
        let now = Instant::now();
        assert!(windows.sent(ServerId(2), 100, now, now + HOUR).is_none(), "exactly full");
        let pause = windows.sent(ServerId(2), 1, now, now + HOUR).expect("past the window");
        assert!(windows.sent(ServerId(3), 100, now, now + HOUR).is_none(), "one per server");
        assert_eq!(windows.shut(), 1);
        let waiting = tokio::spawn(async move { pause.wait().await });
        windows.credit(ServerId(2), 1);
        assert!(waiting.await.unwrap(), "reopened by credit");
        assert_eq!(windows.shut(), 0);
        windows.credit(ServerId(2), 100);
        windows.credit(ServerId(3), 100);
        assert!(windows.open.lock().unwrap().is_empty(), "nothing outstanding, nothing kept");
    }

    #[tokio::test]
    async fn lost_credit_holds_readers_only_until_the_deadline() {
        let windows = Windows::new(100);
        let now = Instant::now();
        let until = now + Duration::from_millis(20);
        let pause = windows.sent(ServerId(2), 500, now, until).expect("past the window");
        assert!(!pause.wait().await, "ended by the deadline, not by credit");
        assert!(Instant::now() >= until);
        // Past the deadline, the window starts again from nothing.
        assert!(windows.sent(ServerId(2), 50, until, until + HOUR).is_none());
        assert!(windows.sent(ServerId(2), 51, until, until + HOUR).is_some());
        windows.forget(ServerId(2));
        assert_eq!(windows.shut(), 0);
    }

    #[test]
    fn credit_is_batched_and_withheld_while_the_server_drains() {
        let credits = Credits::default();
        let (a, b) = (HubId(1), HubId(2));
        assert_eq!(credits.passed(a, ServerId(5), CREDIT_BATCH - 1), None);
        assert_eq!(credits.passed(a, ServerId(5), 1), Some(CREDIT_BATCH));
        assert!(credits.withhold(a, ServerId(5), 10), "the first withheld: watch it drain");
        assert!(!credits.withhold(b, ServerId(5), 20));
        assert_eq!(credits.passed(a, ServerId(5), CREDIT_BATCH), None, "withheld until drained");
        assert_eq!(credits.passed(a, ServerId(6), CREDIT_BATCH), Some(CREDIT_BATCH));
        let mut drained = credits.drained(ServerId(5));
        drained.sort();
        assert_eq!(drained, vec![(a, CREDIT_BATCH + 10), (b, 20)]);
        assert!(credits.drained(ServerId(5)).is_empty());
        assert!(credits.withhold(a, ServerId(5), 1), "a new episode is watched again");
        credits.forget_hub(a);
        assert!(credits.owed.lock().unwrap().bytes.is_empty(), "nothing kept for a dead hub");
    }

    #[test]
    fn a_window_is_a_quarter_of_the_room_above_the_high_water() {
        assert_eq!(window(1 << 20, 65 << 20), 16 << 20);
        assert_eq!(window(1 << 20, 1 << 20), 4 * CREDIT_BATCH, "never under four batches");
    }
}

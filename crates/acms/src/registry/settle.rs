//! The settle window: after the hub's first registration (a start, or a failover to it) the
//! directory is still filling, as servers that have not sent their snapshot yet may hold the
//! recipients. A frame for a user nobody has yet is then dropped and remembered by origin, not
//! bounced; its origin is asked to send again when a snapshot is done or the window ends.
//!
//! Time is an explicit [`Instant`]: the relay asks with the instant of its read. The window is
//! over for good once [`SettleWindow::close`] has taken the last frames: a frame judged with an
//! instant from before the end, but asked about after that last take, is not held (it would never
//! be asked for again, and its origin's stream would stay held for good).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use acms_protocol::ServerId;

use crate::forwarded::lower as hold;

/// The settle window of one hub, and the frames dropped in it.
#[derive(Debug)]
pub(crate) struct SettleWindow {
    length: Duration,
    /// When the window ends; set by the first registration.
    ends: OnceLock<Instant>,
    unclaimed: Mutex<Unclaimed>,
}

#[derive(Debug, Default)]
struct Unclaimed {
    /// The first sequence number dropped, by origin.
    held: HashMap<ServerId, u64>,
    /// The last frames were taken at the end of the window: nothing is held any more.
    closed: bool,
}

impl SettleWindow {
    /// A window of `length`, not started yet.
    pub(crate) fn new(length: Duration) -> Self {
        Self { length, ends: OnceLock::new(), unclaimed: Mutex::default() }
    }

    /// Starts the window at `now`, if it has not started; true the first time.
    pub(crate) fn start(&self, now: Instant) -> bool {
        self.ends.set(now + self.length).is_ok()
    }

    /// When the window ends, once started.
    pub(crate) fn ends(&self) -> Option<Instant> {
        self.ends.get().copied()
    }

    /// Whether the window is open at `now`.
    pub(crate) fn is_open(&self, now: Instant) -> bool {
        self.ends().is_some_and(|ends| now < ends)
    }

    /// In the window, remembers that a frame from `origin` numbered `seq` was dropped, and returns
    /// true; after it, returns false and the frame is undeliverable.
    pub(crate) fn hold(&self, origin: ServerId, seq: u64, now: Instant) -> bool {
        // Judged under the lock that `close` takes: a frame is either taken with the rest or not
        // held at all.
        let mut unclaimed = self.lock();
        if unclaimed.closed || !self.is_open(now) {
            return false;
        }
        hold(&mut unclaimed.held, origin, seq);
        true
    }

    /// Takes the origins of the frames dropped so far (a snapshot is done: they may now reach
    /// their recipients).
    pub(crate) fn take(&self) -> HashMap<ServerId, u64> {
        std::mem::take(&mut self.lock().held)
    }

    /// Ends the window for good: the origins of the frames dropped in it, to be asked to send
    /// again. Nothing is held after this.
    pub(crate) fn close(&self) -> HashMap<ServerId, u64> {
        let mut unclaimed = self.lock();
        unclaimed.closed = true;
        std::mem::take(&mut unclaimed.held)
    }

    /// A server (re)registered at `now`: it sends again everything not acknowledged anyway, so
    /// its own frames are forgotten; the others' frames held in the window are added to
    /// `resend`, as the new server may hold their recipients.
    pub(crate) fn registered(
        &self,
        id: ServerId,
        now: Instant,
        resend: &mut HashMap<ServerId, u64>,
    ) {
        if !self.is_open(now) {
            return;
        }
        let mut unclaimed = self.lock();
        unclaimed.held.remove(&id);
        for (&origin, &seq) in unclaimed.held.iter().filter(|(origin, _)| **origin != id) {
            hold(resend, origin, seq);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Unclaimed> {
        self.unclaimed.lock().expect("unclaimed lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_held_after_the_window_closed_whatever_instant_a_frame_was_judged_at() {
        let window = SettleWindow::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(!window.hold(ServerId(1), 1, start), "not started: no window");
        assert!(window.start(start));
        assert!(!window.start(start), "started once");
        assert!(window.hold(ServerId(1), 5, start));
        assert!(!window.hold(ServerId(1), 6, start + Duration::from_secs(60)), "over by then");
        assert_eq!(window.close(), HashMap::from([(ServerId(1), 5)]));
        // Read before the end, judged after the last take: not held, so never lost.
        assert!(!window.hold(ServerId(2), 9, start + Duration::from_secs(1)));
        assert!(window.take().is_empty());
    }
}

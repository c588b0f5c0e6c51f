//! The two clocks of a connection's keepalive, as deadlines over explicit instants, so that a test
//! can drive them without a runtime or a socket.
//!
//! - [`PingClock`], the writer's: after `keepalive_interval` with nothing written, a `Ping`, so
//!   that the peer always has something to read from a live hub, even while the hub has stopped
//!   reading from it (pushback).
//! - [`Silence`], the reader's: a registered AS pings when idle, so one that sends nothing for
//!   `keepalive_timeout` while the hub waits for it is cut off. The clock runs only while the hub
//!   is reading: while it pauses for pushback it hears nothing, whatever the peer sends.

use std::time::{Duration, Instant};

/// When an idle writer sends its next `Ping`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PingClock {
    interval: Duration,
    last_written: Instant,
}

impl PingClock {
    /// A writer that has just written (or started) at `now`.
    pub(crate) fn new(interval: Duration, now: Instant) -> Self {
        Self { interval, last_written: now }
    }

    /// The writer wrote something at `now` (frames or a ping): the idle interval starts again.
    pub(crate) fn handle_written(&mut self, now: Instant) {
        self.last_written = now;
    }

    /// When a `Ping` is due if nothing is written before.
    pub(crate) fn deadline(&self) -> Instant {
        self.last_written + self.interval
    }

    /// Whether a `Ping` is due at `now`.
    pub(crate) fn ping_due(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

/// When a registered AS that sends nothing is taken for dead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silence {
    timeout: Duration,
    listening_since: Instant,
}

impl Silence {
    /// A peer the hub starts listening to at `now`.
    pub(crate) fn new(timeout: Duration, now: Instant) -> Self {
        Self { timeout, listening_since: now }
    }

    /// The reader starts waiting for bytes at `now` (after it handled the last ones, and any
    /// pushback wait); returns the deadline for the next byte.
    pub(crate) fn handle_listen(&mut self, now: Instant) -> Instant {
        self.listening_since = now;
        self.deadline()
    }

    /// When the peer is dead if no byte comes before.
    pub(crate) fn deadline(&self) -> Instant {
        self.listening_since + self.timeout
    }

    /// Whether the peer, silent since the reader started listening, is dead at `now`.
    pub(crate) fn is_dead(&self, now: Instant) -> bool {
        now >= self.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_idle_writer_pings_after_the_interval_and_writing_puts_the_ping_off() {
        let start = Instant::now();
        let mut clock = PingClock::new(SECOND, start);
        assert!(!clock.ping_due(start));
        assert!(!clock.ping_due(start + SECOND - Duration::from_millis(1)));
        assert!(clock.ping_due(start + SECOND), "idle for the whole interval: a ping");
        // Frames written at 0.5 s: the next ping is due an interval after them.
        clock.handle_written(start + SECOND / 2);
        assert!(!clock.ping_due(start + SECOND));
        assert_eq!(clock.deadline(), start + SECOND * 3 / 2);
        assert!(clock.ping_due(start + SECOND * 3 / 2));
    }

    #[test]
    fn a_silent_peer_is_dead_at_the_deadline_and_not_before() {
        let start = Instant::now();
        let timeout = 3 * SECOND;
        let mut silence = Silence::new(timeout, start);
        assert_eq!(silence.handle_listen(start), start + timeout);
        assert!(!silence.is_dead(start + timeout - Duration::from_millis(1)));
        assert!(silence.is_dead(start + timeout), "no byte within the timeout: dead");
        // A byte came at 2 s; the reader listens again after handling it (and a pushback wait
        // until 4 s, in which it heard nothing): the timeout counts from then.
        let deadline = silence.handle_listen(start + 4 * SECOND);
        assert_eq!(deadline, start + 7 * SECOND);
        assert!(!silence.is_dead(start + 5 * SECOND));
        assert!(silence.is_dead(start + 7 * SECOND));
    }
}

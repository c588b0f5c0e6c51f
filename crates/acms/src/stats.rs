//! Counters of the hub's work, read by tests, logs and metrics, and the relay latency sampled
//! for the metrics (`RelayMetrics`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Monotonic counters, updated with relaxed atomics on the relay path.
#[derive(Debug, Default)]
pub struct Stats {
    relayed_frames: AtomicU64,
    relayed_bytes: AtomicU64,
    undeliverable: AtomicU64,
    held: AtomicU64,
    slow_consumers: AtomicU64,
    protocol_errors: AtomicU64,
    refused_connections: AtomicU64,
    unauthorized: AtomicU64,
    too_many_users: AtomicU64,
    digests: AtomicU64,
    resyncs: AtomicU64,
    fan_out: [FanOutCounters; 3],
}

/// Frames in and copies out of one fan-out kind.
#[derive(Debug, Default)]
struct FanOutCounters {
    frames_in: AtomicU64,
    copies_out: AtomicU64,
}

/// The fan-out kinds counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FanOut {
    Group = 0,
    Broadcast = 1,
    Server = 2,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Data frames forwarded to the recipient's AS.
    pub relayed_frames: u64,
    /// Bytes of those frames, prefixes included.
    pub relayed_bytes: u64,
    /// Frames returned to their origin because the recipient was offline or unreachable.
    pub undeliverable: u64,
    /// Frames dropped for their origin to send again: their recipient's AS was away, or the
    /// directory was still filling (see docs/RELIABILITY.md).
    pub held: u64,
    /// AS disconnected because their queue passed `max_pending_bytes`.
    pub slow_consumers: u64,
    /// Connections closed for breaking the protocol (malformed, oversized, spoofed frames).
    pub protocol_errors: u64,
    /// Connections refused at the handshake or by the connection cap.
    pub refused_connections: u64,
    /// Of those, connections refused for authentication: a missing or wrong secret, a failed TLS
    /// handshake, no secret from a non-loopback address, or any frame but the handshake before
    /// authentication.
    pub unauthorized: u64,
    /// AS disconnected for passing `max_users_per_server`.
    pub too_many_users: u64,
    /// Digests of their users that AS sent and the hub compared with its record.
    pub digests: u64,
    /// Times an AS's digest of its users differed from the hub's record and the hub asked it to
    /// send its users again (see docs/RELIABILITY.md, "Registry drift").
    pub resyncs: u64,
    /// Group frames received from app servers.
    pub group_frames_in: u64,
    /// Copies of them forwarded: one per other server with members, never one per member
    /// (a copy for a server that is away is held, and counted here too).
    pub group_copies_out: u64,
    /// Broadcast frames received from app servers.
    pub broadcast_frames_in: u64,
    /// Copies of them forwarded, one per other server.
    pub broadcast_copies_out: u64,
    /// Server messages received from app servers.
    pub server_frames_in: u64,
    /// Copies of them forwarded, one per server addressed.
    pub server_copies_out: u64,
}

impl Stats {
    pub(crate) fn relayed(&self, frames: usize, bytes: usize) {
        self.relayed_frames.fetch_add(frames as u64, Ordering::Relaxed);
        self.relayed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn undeliverable(&self) {
        self.undeliverable.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn held(&self, frames: usize) {
        self.held.fetch_add(frames as u64, Ordering::Relaxed);
    }

    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn too_many_users(&self) {
        self.too_many_users.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn digest(&self) {
        self.digests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn resync(&self) {
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// A group, broadcast or server frame came in and was forwarded to `copies` servers.
    pub(crate) fn fanned_out(&self, kind: FanOut, copies: usize) {
        let counters = &self.fan_out[kind as usize];
        counters.frames_in.fetch_add(1, Ordering::Relaxed);
        counters.copies_out.fetch_add(copies as u64, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            relayed_frames: self.relayed_frames.load(Ordering::Relaxed),
            relayed_bytes: self.relayed_bytes.load(Ordering::Relaxed),
            undeliverable: self.undeliverable.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
            slow_consumers: self.slow_consumers.load(Ordering::Relaxed),
            protocol_errors: self.protocol_errors.load(Ordering::Relaxed),
            refused_connections: self.refused_connections.load(Ordering::Relaxed),
            unauthorized: self.unauthorized.load(Ordering::Relaxed),
            too_many_users: self.too_many_users.load(Ordering::Relaxed),
            digests: self.digests.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            group_frames_in: self.fan_out[0].frames_in.load(Ordering::Relaxed),
            group_copies_out: self.fan_out[0].copies_out.load(Ordering::Relaxed),
            broadcast_frames_in: self.fan_out[1].frames_in.load(Ordering::Relaxed),
            broadcast_copies_out: self.fan_out[1].copies_out.load(Ordering::Relaxed),
            server_frames_in: self.fan_out[2].frames_in.load(Ordering::Relaxed),
            server_copies_out: self.fan_out[2].copies_out.load(Ordering::Relaxed),
        }
    }
}

/// One read in this many has its relay time measured.
pub(crate) const SAMPLE_EVERY: u32 = 64;

/// What the relay measures for the metrics beyond its counters.
#[derive(Debug, Clone)]
pub(crate) struct RelayMetrics {
    latency: Histogram,
}

impl Default for RelayMetrics {
    fn default() -> Self {
        // 1 µs to about 1 s.
        Self { latency: Histogram::new(exponential_buckets(1e-6, 4.0, 11)) }
    }
}

impl RelayMetrics {
    /// Records the time one sampled read took to route and queue.
    pub(crate) fn relay_latency(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    /// The relay latency histogram, for the metrics exporter.
    pub(crate) fn latency(&self) -> &Histogram {
        &self.latency
    }
}

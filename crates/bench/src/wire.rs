//! What the workers and the orchestrator say to each other, and the parts every worker role
//! shares.
//!
//! A worker prints one line per event on stdout, a tag and a JSON object: `READY {...}` once it
//! is set up, `RESULT {...}` with its measurement, `RESYNCED {...}` (scale step). Nothing else
//! goes to stdout; logs go to stderr. The orchestrator talks back on the worker's stdin: the line
//! `DONE` tells a receiver the sender has finished, and the end of stdin (the orchestrator gone)
//! makes any worker exit, so no worker outlives its run.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::sys;

/// Tag of the line a worker prints once it is ready to be measured.
pub const READY: &str = "READY";
/// Tag of the line with a worker's measurement.
pub const RESULT: &str = "RESULT";
/// Tag of the line a scale worker prints once the restarted hub has its users again.
pub const RESYNCED: &str = "RESYNCED";
/// What the orchestrator writes to a receiver's stdin once the sender has finished.
pub const DONE: &str = "DONE";
/// What the orchestrator writes to a round-trip client started with `--wait-go` to start it.
pub const GO: &str = "GO";

/// How long a receiver waits for more messages once the sender is done and it still misses some.
pub const IDLE_AFTER_DONE: Duration = Duration::from_secs(2);

/// Default bytes of frames per client write or `send_batch` call, as the reference NATS
/// figures were measured ("the sender writing in 64 KiB batches").
pub const DEFAULT_BATCH_BYTES: usize = 64 * 1024;

/// Bytes reckoned per message besides its payload when sizing a batch: about an ACMS data
/// frame's header with these user names (a NATS `PUB` line is a little shorter).
pub const MESSAGE_OVERHEAD: usize = 30;

/// Messages per batch of about `batch_bytes` at payload `size`: the same count for both
/// systems, at least one.
pub fn batch_msgs(size: usize, batch_bytes: usize) -> usize {
    (batch_bytes / (size + MESSAGE_OVERHEAD)).max(1)
}

/// Name of user `i` of a run: the same on both systems (it is also the NATS subject).
pub fn user_name(i: u64) -> String {
    format!("u{i}")
}

/// A payload of `size` bytes, not all alike.
pub fn payload(size: usize) -> bytes::Bytes {
    (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// A READY line's object when there is nothing more to say.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// Users the worker has online (or subscribed).
    pub users: u64,
}

/// What a receiving worker measured.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RecvResult {
    /// Messages received.
    pub count: u64,
    /// Messages the run sends (N).
    pub expected: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// When the first message arrived ([`sys::unix_ns`]).
    pub first_ns: u64,
    /// When the last message arrived.
    pub last_ns: u64,
    /// Seconds from the first message to the last.
    pub elapsed_s: f64,
    /// `count / elapsed_s`.
    pub msg_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
    /// CPU seconds this process used between the first and the last message.
    pub cpu_s: f64,
    /// Times the link to the broker went down during the run (lost messages follow).
    pub disconnects: u64,
    /// Slow-consumer notices from the client library (NATS only).
    pub slow_consumer_events: u64,
    /// Whether the receiver stopped on the idle timeout rather than on the last message.
    pub timed_out: bool,
    /// How it read, in words.
    #[serde(default)]
    pub policy: String,
}

/// What a sending worker measured.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SendResult {
    /// Messages handed to the client library.
    pub sent: u64,
    /// When the first send started ([`sys::unix_ns`]).
    pub start_ns: u64,
    /// Seconds until the last send call returned (queued in the client library).
    pub queued_s: f64,
    /// Seconds until the broker confirmed it had handled every message (flush).
    pub elapsed_s: f64,
    /// `sent / elapsed_s`: the rate the broker took messages at.
    pub msg_per_s: f64,
    /// CPU seconds this process used while sending.
    pub cpu_s: f64,
    /// Messages the broker returned as undeliverable (ACMS only).
    pub undeliverable: u64,
    /// How it sent, in words.
    #[serde(default)]
    pub policy: String,
    /// Client calls that handed the messages over: socket writes (NATS raw), `send_batch`
    /// calls (ACMS batch), or one per message.
    #[serde(default)]
    pub batches: u64,
}

/// What a round-trip client measured.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RttResult {
    /// Round trips measured (after the warm-up).
    pub iterations: u64,
    /// Round trips made before measuring.
    pub warmup: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Fastest, µs.
    pub min_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
}

impl RttResult {
    /// Summarises a histogram of round trips in nanoseconds.
    pub fn from_histogram(hist: &hdrhistogram::Histogram<u64>, warmup: u64, size: usize) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            iterations: hist.len(),
            warmup,
            size,
            p50_us: us(hist.value_at_quantile(0.50)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            mean_us: hist.mean() / 1000.0,
            min_us: us(hist.min()),
            max_us: us(hist.max()),
        }
    }
}

/// A histogram for round trips in nanoseconds, 1 ns to 60 s, three significant digits.
pub fn rtt_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What a scale worker says once its users are logged in and flushed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScaleReady {
    /// Users logged in.
    pub users: u64,
    /// When the worker started logging in ([`sys::unix_ns`]).
    pub start_ns: u64,
    /// When the hub confirmed the last login (flush).
    pub done_ns: u64,
}

/// What a scale worker says once the restarted hub has all its users again.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScaleResynced {
    /// When the worker saw its link go down.
    pub down_ns: u64,
    /// When its link was `Connected` again.
    pub connected_ns: u64,
    /// When the flush issued after the drop completed: the new hub had the whole snapshot.
    pub done_ns: u64,
}

/// Prints `TAG {json}` on stdout and flushes it.
pub fn emit<T: Serialize>(tag: &str, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{tag} {json}")?;
    out.flush()?;
    Ok(())
}

/// Starts watching stdin (on a thread of its own, so it never holds up the runtime's shutdown):
/// the returned watch turns true when the orchestrator writes `DONE`; when stdin ends, the
/// process exits (the orchestrator is gone, so nobody wants the result).
pub fn watch_stdin() -> watch::Receiver<bool> {
    let (done_tx, done_rx) = watch::channel(false);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            match line {
                Ok(line) if line.trim() == DONE => {
                    done_tx.send_replace(true);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        eprintln!("stdin closed: the orchestrator is gone; exiting");
        std::process::exit(3);
    });
    done_rx
}

/// Waits for a `GO` line on stdin (on a blocking thread); exits like [`watch_stdin`] if stdin
/// ends first.
pub async fn await_go() {
    let go = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => return false,
                Ok(_) if line.trim() == GO => return true,
                Ok(_) => {}
            }
        }
    });
    if !go.await.unwrap_or(false) {
        eprintln!("stdin closed: the orchestrator is gone; exiting");
        std::process::exit(3);
    }
}

/// The count and clocks of a receiving worker, for either system.
#[derive(Debug)]
pub struct RecvCounter {
    expected: u64,
    count: u64,
    bytes: u64,
    first: Option<(Instant, u64, Duration)>,
    last: Option<Instant>,
    sender_done_at: Option<Instant>,
}

impl RecvCounter {
    /// A counter that is complete after `expected` messages.
    pub fn new(expected: u64) -> Self {
        Self { expected, count: 0, bytes: 0, first: None, last: None, sender_done_at: None }
    }

    /// Counts `messages` messages carrying `bytes` payload bytes, arrived just now.
    pub fn add(&mut self, messages: u64, bytes: u64) {
        if messages == 0 {
            return;
        }
        let now = Instant::now();
        if self.first.is_none() {
            let cpu = sys::cpu_time("self").unwrap_or_default();
            self.first = Some((now, sys::unix_ns(), cpu));
        }
        self.last = Some(now);
        self.count += messages;
        self.bytes += bytes;
    }

    /// Whether every expected message arrived.
    pub fn complete(&self) -> bool {
        self.count >= self.expected
    }

    /// Whether to stop waiting: the sender is done (`sender_done`, as last heard) and nothing
    /// arrived for [`IDLE_AFTER_DONE`] since then. Call it every so often.
    pub fn gave_up(&mut self, sender_done: bool) -> bool {
        if !sender_done {
            return false;
        }
        let done_at = *self.sender_done_at.get_or_insert_with(Instant::now);
        let quiet_since = self.last.map_or(done_at, |last| last.max(done_at));
        quiet_since.elapsed() >= IDLE_AFTER_DONE
    }

    /// The measurement so far.
    pub fn result(&self) -> RecvResult {
        let mut result =
            RecvResult { count: self.count, expected: self.expected, ..Default::default() };
        result.bytes = self.bytes;
        if let (Some((first, first_ns, cpu0)), Some(last)) = (self.first, self.last) {
            let elapsed = last.duration_since(first);
            result.first_ns = first_ns;
            result.last_ns = first_ns + elapsed.as_nanos() as u64;
            result.elapsed_s = elapsed.as_secs_f64();
            if result.elapsed_s > 0.0 {
                result.msg_per_s = self.count as f64 / result.elapsed_s;
                result.mb_per_s = self.bytes as f64 / result.elapsed_s / 1e6;
            }
            let cpu = sys::cpu_time("self").unwrap_or_default();
            result.cpu_s = cpu.saturating_sub(cpu0).as_secs_f64();
        }
        result
    }
}

/// Installs a stderr log subscriber at `warn` (or `RUST_LOG`) for a worker.
pub fn init_worker_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// The multi-threaded runtime every worker runs on (one worker thread per core).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

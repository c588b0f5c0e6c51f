//! The outbound side of a connection: a queue bounded in bytes, and the task that drains it.
//!
//! Relaying never waits: [`Outbox::push_batch`] either queues frames or says the queue is over its
//! limit, and the caller applies the slow-consumer rule. Above a lower mark, the high water, the
//! queue asks its feeders to pause: a reader that fed it waits in [`Outbox::drained`] before
//! reading more from its own peer, so a fast sender is slowed to the pace of a slow receiver
//! instead of filling the hub's memory. A reader hands over every frame it
//! decoded from one socket read for the same destination as one batch, so the queue's atomics
//! and wake-ups are paid per batch, not per frame. The writer takes everything queued at once and
//! hands it to the kernel in vectored writes, so a burst of small frames costs a few system calls
//! instead of one each, and relayed frames are written from the buffers they were read into.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use acms_protocol::{Control, Frame, HANDSHAKE_MAX_FRAME_LEN};
use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::keepalive::PingClock;

/// Most batches the writer takes from its queue at once.
const MAX_BATCHES: usize = 256;

/// Most buffers in one vectored write (Linux's `IOV_MAX` is 1024).
const MAX_IOVECS: usize = 512;

/// The sending end of a connection's queue; clones share the queue and its byte count.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Vec<Bytes>>,
    level: Arc<Level>,
    limit: usize,
    high_water: usize,
}

/// What the two ends of a queue share: its size, and a signal for feeders waiting on it.
#[derive(Debug, Default)]
struct Level {
    pending: AtomicUsize,
    /// Set when the connection is being dropped: nothing more is queued for it.
    closed: std::sync::atomic::AtomicBool,
    /// Notified when the writer brings `pending` under the high water, and when it ends.
    room: Notify,
    /// Set once the peer is registered: from then on an idle writer sends keepalive pings.
    keepalive: std::sync::atomic::AtomicBool,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue holds `pending` bytes and this frame would pass the limit.
    #[error("outbound queue full ({pending} bytes pending)")]
    Full {
        /// Bytes waiting when the frame was refused.
        pending: usize,
    },
    /// The connection's writer has ended.
    #[error("connection closed")]
    Closed,
}

impl Outbox {
    /// Lets the writer send keepalive pings when idle; only once the peer is registered, since
    /// a ping in the middle of the handshake would be taken for a wrong answer.
    pub fn keep_alive(&self) {
        self.level.keepalive.store(true, Ordering::Relaxed);
    }

    /// A queue that holds at most `limit` bytes and asks feeders to pause above `high_water`,
    /// and its receiving end for [`write_loop`].
    pub fn new(limit: usize, high_water: usize) -> (Self, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let level = Arc::new(Level::default());
        let inbox = Inbox { rx, level: level.clone(), high_water };
        (Self { tx, level, limit, high_water }, inbox)
    }

    /// Queues one whole frame, or refuses it without waiting.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_batch(vec![frame]).map_err(|(err, _)| err)
    }

    /// Queues whole frames, in order, or refuses them all without waiting and hands them back.
    ///
    /// An empty queue takes any batch, so one frame larger than the limit still goes through.
    pub fn push_batch(&self, frames: Vec<Bytes>) -> Result<(), (PushError, Vec<Bytes>)> {
        let len = frames.iter().map(Bytes::len).sum();
        if self.level.closed.load(Ordering::Acquire) {
            return Err((PushError::Closed, frames));
        }
        let pending = &self.level.pending;
        let before = pending.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit && before > 0 {
            pending.fetch_sub(len, Ordering::AcqRel);
            return Err((PushError::Full { pending: before }, frames));
        }
        self.tx.send(frames).map_err(|returned| {
            pending.fetch_sub(len, Ordering::AcqRel);
            (PushError::Closed, returned.0)
        })
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.level.pending.load(Ordering::Acquire)
    }

    /// Refuses everything from now on and releases waiting feeders: the connection is being
    /// dropped, so frames for it should go back to their senders at once.
    pub fn close(&self) {
        self.level.closed.store(true, Ordering::Release);
        self.level.room.notify_waiters();
    }

    /// Whether feeders should pause until [`Outbox::drained`].
    pub fn above_high_water(&self) -> bool {
        self.pending() > self.high_water
            && !self.tx.is_closed()
            && !self.level.closed.load(Ordering::Acquire)
    }

    /// Resolves once the queue is back under its high water, or its writer has ended.
    pub async fn drained(&self) {
        loop {
            let room = self.level.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a notification between the two is not missed.
            room.as_mut().enable();
            if !self.above_high_water() {
                return;
            }
            room.await;
        }
    }
}

/// The receiving end of an [`Outbox`], owned by the connection's writer.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<Bytes>>,
    level: Arc<Level>,
    high_water: usize,
}

#[cfg(test)]
impl Inbox {
    /// Takes the batches queued now, in order, as the writer would (their bytes leave the count):
    /// what unit tests of the relay and the session read instead of a socket.
    pub(crate) fn take_queued(&mut self) -> Vec<Vec<Bytes>> {
        let mut batches = Vec::new();
        while let Ok(batch) = self.rx.try_recv() {
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            self.level.pending.fetch_sub(bytes, Ordering::AcqRel);
            batches.push(batch);
        }
        batches
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Feeders waiting for room must not wait for a writer that is gone.
        self.rx.close();
        self.level.room.notify_waiters();
    }
}

/// Writes queued frames until every [`Outbox`] of the queue is dropped and the queue is drained,
/// then shuts the write side down. Returns the first write error.
///
/// After `keepalive` with nothing to write it writes a `Ping`: the peer then always has something
/// to read from a live hub, even while the hub has stopped reading from it (pushback), so its
/// keepalive timeout measures the hub's liveness, not the pace of other servers.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut inbox: Inbox,
    mut writer: W,
    keepalive: Duration,
) -> io::Result<()> {
    let ping = Frame::Control(Control::Ping { token: 0 })
        .to_bytes(HANDSHAKE_MAX_FRAME_LEN)
        .expect("a ping fits any frame limit");
    let mut received = Vec::with_capacity(MAX_BATCHES);
    let mut batch = Batch::default();
    let mut clock = PingClock::new(keepalive, Instant::now().into_std());
    loop {
        let count = tokio::select! {
            count = inbox.rx.recv_many(&mut received, MAX_BATCHES) => count,
            _ = tokio::time::sleep_until(clock.deadline().into()) => {
                let now = Instant::now().into_std();
                if !clock.ping_due(now) {
                    continue;
                }
                clock.handle_written(now);
                if !inbox.level.keepalive.load(Ordering::Relaxed) {
                    continue;
                }
                writer.write_all(&ping).await?;
                writer.flush().await?;
                continue;
            }
        };
        if count == 0 {
            break;
        }
        let bytes = batch.start(received.drain(..).flatten());
        while batch.has_remaining() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = batch.chunks_vectored(&mut slices);
            let written = writer.write_vectored(&slices[..count]).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            batch.advance(written);
        }
        // TLS may hold the last bytes until flushed; on a plain socket this returns at once.
        writer.flush().await?;
        clock.handle_written(Instant::now().into_std());
        let before = inbox.level.pending.fetch_sub(bytes, Ordering::AcqRel);
        if before - bytes <= inbox.high_water && before > inbox.high_water {
            inbox.level.room.notify_waiters();
        }
    }
    writer.shutdown().await
}

/// Frames taken from the queue, seen as one buffer that is consumed from the front.
#[derive(Debug, Default)]
struct Batch {
    frames: Vec<Bytes>,
    /// Index of the first frame not yet fully written.
    first: usize,
    remaining: usize,
}

impl Batch {
    /// Starts writing the frames just received, returning their size in bytes.
    fn start(&mut self, frames: impl Iterator<Item = Bytes>) -> usize {
        self.frames.clear();
        self.frames.extend(frames);
        self.first = 0;
        self.remaining = self.frames.iter().map(Bytes::len).sum();
        self.remaining
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.frames.get(self.first).map_or(&[], |frame| frame)
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let frames = self.frames[self.first..].iter().filter(|frame| !frame.is_empty());
        let mut count = 0;
        for (slot, frame) in dst.iter_mut().zip(frames) {
            *slot = IoSlice::new(frame);
            count += 1;
        }
        count
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advanced past the end of the batch");
        self.remaining -= cnt;
        while cnt > 0 {
            let frame = &mut self.frames[self.first];
            if cnt < frame.len() {
                frame.advance(cnt);
                return;
            }
            cnt -= frame.len();
            self.first += 1;
        }
        if self.remaining == 0 {
            self.frames.clear();
            self.first = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn push_refuses_past_the_limit_but_always_takes_one_frame() {
        let (outbox, _inbox) = Outbox::new(10, 5);
        outbox.push(Bytes::from_static(b"0123456789abc")).unwrap();
        assert_eq!(outbox.push(Bytes::from_static(b"x")), Err(PushError::Full { pending: 13 }));
        assert_eq!(outbox.pending(), 13);
    }

    #[test]
    fn push_after_the_writer_ended_is_closed() {
        let (outbox, inbox) = Outbox::new(10, 5);
        drop(inbox);
        assert_eq!(outbox.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        assert_eq!(outbox.pending(), 0);
    }

    #[tokio::test]
    async fn writer_drains_everything_in_order_through_a_small_pipe() {
        let (outbox, inbox) = Outbox::new(usize::MAX, usize::MAX);
        // A 7-byte pipe forces partial vectored writes inside frames.
        let (near, mut far) = tokio::io::duplex(7);
        let writer = tokio::spawn(write_loop(inbox, near, Duration::from_secs(60)));
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let frame = Bytes::from(format!("frame {i};"));
            expected.extend_from_slice(&frame);
            outbox.push(frame).unwrap();
        }
        drop(outbox);
        let mut received = Vec::new();
        far.read_to_end(&mut received).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(received, expected);
    }

    #[tokio::test]
    async fn feeders_wait_for_the_writer_to_drain_under_the_high_water() {
        let (outbox, inbox) = Outbox::new(1 << 20, 100);
        outbox.push(Bytes::from(vec![0; 300])).unwrap();
        assert!(outbox.above_high_water());
        let (near, mut far) = tokio::io::duplex(64);
        let writer = tokio::spawn(write_loop(inbox, near, Duration::from_secs(60)));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drained().await }
        });
        let mut received = vec![0; 300];
        far.read_exact(&mut received).await.unwrap();
        waiting.await.unwrap();
        assert!(!outbox.above_high_water());
        drop(outbox);
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_closed_outbox_refuses_and_releases_feeders() {
        let (outbox, _inbox) = Outbox::new(1 << 20, 100);
        outbox.push(Bytes::from(vec![0; 300])).unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drained().await }
        });
        outbox.close();
        waiting.await.unwrap();
        assert_eq!(outbox.push(Bytes::from_static(b"x")), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn feeders_stop_waiting_when_the_writer_ends() {
        let (outbox, inbox) = Outbox::new(1 << 20, 100);
        outbox.push(Bytes::from(vec![0; 300])).unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drained().await }
        });
        drop(inbox);
        waiting.await.unwrap();
        assert!(!outbox.above_high_water());
    }
}

//! The task that owns the hub connection: a thin async shell around [`core::LinkCore`].
//!
//! One task per [`crate::Cluster`]: it connects (over TLS when configured) and registers
//! (`handshake`), then moves bytes between the socket and the core, which owns every decision
//! about them: it races the socket's reads, the command queue, the core's next deadline and the
//! load interval, feeds each to the core, writes what the core queued, and hands the app the
//! events the core made. Commands are taken in batches, and what the core queued for them is
//! written with one vectored write. When the connection fails, or a standby hub refuses it, the
//! task tries the next hub of its list at once; after a whole pass failed it waits an
//! exponential, jittered delay and starts over. Commands wait in the queue meanwhile. The list
//! is the app's, or the hubs found on the LAN (`crate::discover`): a change of that list cuts a
//! backoff wait short (to the shortest delay) and starts over from its preferred hub; it never
//! interrupts a live session.
//!
//! Parts: `core` (the exactly-once engine, no I/O) and `inbound` (its handling of the hub's
//! frames), `command` (what the handles ask), `handshake` (connect and register).

mod command;
mod core;
mod handshake;
mod inbound;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub(crate) use self::command::Command;
pub(crate) use self::core::LinkCore;
use self::handshake::{Reader, SessionError};
use crate::builder::ClusterBuilder;
use crate::discover::HubList;
use crate::events::{Event, LinkState};
use crate::load::LoadSampler;
use crate::tls::WriteHalf;

/// Most commands taken from the queue for one write.
const MAX_BATCH: usize = 1024;

/// Encoded bytes waiting for the socket above which no more commands are taken: the app's
/// sends then wait in the bounded command queue.
const MAX_PENDING_OUT: usize = 256 * 1024;

/// The ends of the queues and shared cells between the handles and the link task.
pub(crate) struct LinkEnds {
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<Vec<Event>>,
    pub(crate) state: watch::Sender<LinkState>,
    /// The hub connected to, read by the handles.
    pub(crate) connected_hub: Arc<Mutex<Option<String>>>,
    /// The retransmit buffer's free bytes: a send takes them, an answer gives them back.
    pub(crate) credit: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
}

/// The session ended because the cluster is closing.
struct Closed;

/// What woke the session loop.
enum Step<'a> {
    Shutdown,
    Wrote(io::Result<usize>),
    Room(Option<mpsc::Permit<'a, Vec<Event>>>),
    Commands(usize),
    Read(io::Result<bool>),
    /// The core's deadline passed.
    Tick,
    Load,
}

/// The clock the core is ticked with: tokio's, so a test that pauses time pauses the link too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) struct Link {
    config: ClusterBuilder,
    /// The hubs to try, given or found on the LAN.
    hubs: HubList,
    /// The hub of `hubs` tried or connected now.
    current: usize,
    backoff: ExponentialBuilder,
    ends: LinkEnds,
    load: LoadSampler,
    /// Set once the app dropped its events receiver, so that is logged once.
    events_dropped: bool,
    core: LinkCore,
}

impl Link {
    pub(crate) fn new(
        config: &ClusterBuilder,
        hubs: HubList,
        core: LinkCore,
        ends: LinkEnds,
    ) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.reconnect_min)
            .with_max_delay(config.reconnect_max)
            .with_jitter()
            .without_max_times();
        Self {
            config: config.clone(),
            hubs,
            current: 0,
            backoff,
            ends,
            load: LoadSampler::new(config.capacity),
            events_dropped: false,
            core,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut delays = self.delays();
        // Attempts since the last session, or since the last wait: a whole pass over the list
        // fails before the backoff applies.
        let mut failed = 0;
        // The list the attempts so far went through: a new one (a hub found, gone or now
        // active) starts again from its first, preferred, hub. `failed` is kept, so a list that
        // keeps changing still meets the backoff after a pass's worth of attempts.
        let mut tried: Vec<String> = Vec::new();
        let mut said_waiting = false;
        loop {
            let hubs = self.hubs.current();
            if hubs != tried {
                (self.current, tried) = (0, hubs.clone());
            }
            if hubs.is_empty() {
                if !self.hubs.is_discovered() {
                    error!("no hub address given: this server cannot join a cluster");
                    break;
                }
                if !std::mem::replace(&mut said_waiting, true) {
                    info!("no hub of this cluster found on the LAN yet: waiting for one");
                }
                tokio::select! {
                    _ = self.ends.shutdown.cancelled() => break,
                    _ = self.hubs.changed() => continue,
                }
            }
            said_waiting = false;
            let shutdown = self.ends.shutdown.clone();
            let hub = hubs[self.current].clone();
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                connected = self.connect(&hub) => connected,
            };
            let error = match connected {
                Ok((reader, writer)) => {
                    delays = self.delays();
                    failed = 0;
                    info!(%hub, users = self.core.state.users.len(), "connected to hub");
                    *self.ends.connected_hub.lock().expect("hub lock") = Some(hub.clone());
                    self.ends.state.send_replace(LinkState::Connected);
                    let ended = self.session(reader, writer).await;
                    *self.ends.connected_hub.lock().expect("hub lock") = None;
                    match ended {
                        Ok(Closed) => break,
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            let state = error.state();
            self.ends.state.send_replace(state);
            self.current = (self.current + 1) % hubs.len();
            failed += 1;
            if failed < hubs.len() {
                info!(%hub, error = %error, next = %hubs[self.current], "hub link down; trying the next hub");
                continue;
            }
            failed = 0;
            let delay = delays.next().unwrap_or(Duration::from_secs(1));
            if matches!(state, LinkState::Refused(_)) {
                // Not fatal: the operator may fix the hub's side, so keep trying.
                error!(%hub, error = %error, retry_in = ?delay, "hub refused this server");
            } else {
                warn!(%hub, error = %error, retry_in = ?delay, "hub link down");
            }
            // A hub found on the LAN, or one that became active, is tried soon: after the
            // shortest backoff, so announcements that flap cannot make the link spin.
            let soonest = self.config.reconnect_min;
            let hubs = &mut self.hubs;
            tokio::select! {
                _ = self.ends.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
                _ = async { hubs.changed().await; tokio::time::sleep(soonest).await } => {}
            }
        }
        self.ends.state.send_replace(LinkState::Closed);
        debug!("hub link closed");
    }

    fn delays(&self) -> ExponentialBackoff {
        self.backoff.build()
    }

    /// Runs one registered connection until it fails or the cluster closes: moves bytes between
    /// the socket and the core, and ticks it.
    async fn session(
        &mut self,
        mut reader: Reader,
        mut writer: WriteHalf,
    ) -> Result<Closed, SessionError> {
        self.core.handle_connected()?;
        writer.write_all_buf(self.core.transmit()).await?;
        // Frames that came with the Welcome.
        self.core.handle_buffered(&mut reader.buf)?;
        self.after_step();
        self.core.start_clocks(now());

        let mut batch = Vec::with_capacity(MAX_BATCH);
        let (shutdown, events) = (self.ends.shutdown.clone(), self.ends.events.clone());
        // The first report one interval in, once CPU use has a span to be measured over.
        let start = tokio::time::Instant::now() + self.config.load_interval;
        let mut loads = tokio::time::interval_at(start, self.config.load_interval);
        loads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set once the cluster closes: `Bye` waits until every message sent is answered, or
        // until then (`close_timeout`), since only this server can send again what a hub
        // dropped for it to send again.
        let mut leaving: Option<tokio::time::Instant> = None;
        loop {
            let wake_at = tokio::time::Instant::from_std(self.core.poll_timeout());
            let wake_at = leaving.map_or(wake_at, |deadline| wake_at.min(deadline));
            let taking = leaving.is_none();
            let behind = self.core.is_app_behind();
            let queued = self.core.transmit().len();
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if taking => Step::Shutdown,
                permit = events.reserve(), if behind => Step::Room(permit.ok()),
                // Writing is one branch among the others, so the hub's frames are still read
                // while the hub is not taking ours: two servers sending hard to each other
                // cannot wedge each other's connections.
                written = writer.write_buf(self.core.transmit()), if queued > 0 => Step::Wrote(written),
                count = self.ends.commands.recv_many(&mut batch, MAX_BATCH), if taking && queued < MAX_PENDING_OUT => Step::Commands(count),
                read = reader.read_more(), if !behind => Step::Read(read),
                _ = tokio::time::sleep_until(wake_at) => Step::Tick,
                _ = loads.tick() => Step::Load,
            };
            match step {
                Step::Wrote(written) => {
                    if written? == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    self.core.handle_written(now());
                }
                Step::Tick => self.core.handle_timeout(now())?,
                Step::Shutdown => {
                    // Send what the app queued before it closed.
                    while let Ok(command) = self.ends.commands.try_recv() {
                        self.core.handle_command(command)?;
                    }
                    leaving = Some(self.leave_by());
                }
                Step::Room(Some(permit)) => {
                    permit.send(self.core.take_waiting_events());
                    self.core.handle_events_taken();
                }
                Step::Room(None) => {
                    self.core.take_waiting_events();
                    self.note_events_dropped();
                }
                // Every handle is gone: nothing more will be sent.
                Step::Commands(0) => leaving = Some(self.leave_by()),
                Step::Commands(_) => {
                    for command in batch.drain(..) {
                        self.core.handle_command(command)?;
                    }
                    self.core.handle_commands_done()?;
                }
                Step::Load => {
                    let (msgs_in, sent) = self.core.totals();
                    let users = self.core.state.users.len();
                    self.core.report_load(self.load.sample(users, msgs_in, sent))?;
                }
                Step::Read(read) => {
                    if !read? {
                        return Err(SessionError::HubClosed);
                    }
                    self.core.handle_input(&mut reader.buf, now())?;
                }
            }
            self.after_step();
            if let Some(deadline) = leaving {
                let answered = self.core.is_all_answered();
                if answered || tokio::time::Instant::now() >= deadline {
                    if !answered {
                        warn!(
                            timeout = ?self.config.close_timeout,
                            "closing with messages still unanswered: any the hub dropped for \
                             this server to send again are lost"
                        );
                    }
                    return self.close(writer).await;
                }
            }
        }
    }

    /// When a closing link says `Bye` at the latest.
    fn leave_by(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.close_timeout
    }

    /// Says `Bye` after everything queued, and closes the connection.
    async fn close(&mut self, mut writer: WriteHalf) -> Result<Closed, SessionError> {
        self.core.close()?;
        writer.write_all_buf(self.core.transmit()).await?;
        writer.shutdown().await?;
        Ok(Closed)
    }

    /// Hands the app the events the core made, without waiting: while it is behind they wait in
    /// the core (and reading stops); and gives the handles back the retransmit room answered.
    fn after_step(&mut self) {
        if let Some(events) = self.core.poll_events() {
            match self.ends.events.try_send(events) {
                Ok(()) => self.core.handle_events_taken(),
                Err(mpsc::error::TrySendError::Full(events)) => self.core.handle_app_behind(events),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.note_events_dropped();
                    self.core.handle_events_taken();
                }
            }
        }
        let released = self.core.take_released();
        if released > 0 {
            self.ends.credit.add_permits(released);
        }
    }

    fn note_events_dropped(&mut self) {
        if !self.events_dropped {
            self.events_dropped = true;
            warn!("events receiver dropped: inbound messages are discarded");
        }
    }
}

#[cfg(test)]
mod tests;

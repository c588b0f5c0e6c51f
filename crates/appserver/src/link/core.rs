//! The exactly-once engine of the hub link, with no socket and no clock (the quinn-proto split):
//! sequence numbers, staging, the retransmit buffer, receipts, acks in runs and duplicate drop,
//! snapshots and resends after a reconnect, kicks, presence, locate and the keepalive deadlines.
//!
//! It is fed commands from the handles ([`LinkCore::handle_command`]), the bytes read from the
//! hub ([`LinkCore::handle_input`]) and timer ticks at an explicit [`Instant`]
//! ([`LinkCore::handle_timeout`]); it writes the frames to send into its [`WriteQueue`]
//! ([`LinkCore::transmit`]) and the events for the app into a buffer
//! ([`LinkCore::poll_events`]), and says when it next needs a tick
//! ([`LinkCore::poll_timeout`]). The async shell in `link` only moves bytes and ticks it.
//! Frames read from the hub are handled in `inbound`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use acms_protocol::{
    Codec, Control, Data, DataKind, ErrorCode, Frame, GroupId, LENGTH_PREFIX_LEN, Load,
    ProtocolError, Refusal, ServerId, UserId, Welcome, set_data_seq,
};
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;
use tracing::{error, info, warn};

use super::command::Command;
use crate::builder::ClusterBuilder;
use crate::events::{Event, Outcome, Reach, UndeliverableReason};
use crate::groups::Awaited;
use crate::reliable::{Epoch, Received, Seq, Unacked, charge};
use crate::state::ServerState;
use crate::write_queue::WriteQueue;

/// Looked up once per frame sent or answered: a fast hash.
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Why the core ended a session with the hub.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CoreError {
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("hub refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("unexpected message from the hub: {0}")]
    Unexpected(&'static str),
    #[error("nothing from the hub for {0:?} (keepalive timeout): the path may be cut")]
    Silent(Duration),
}

/// The link's state machine: one per [`crate::Cluster`], kept across hub connections.
pub(crate) struct LinkCore {
    pub(super) server_id: ServerId,
    epoch: Epoch,
    /// Decodes what is read from the hub.
    codec: Codec,
    /// Largest frame body to send: the smaller of ours and the hub's limits.
    pub(super) send_limit: usize,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    digest_interval: Duration,
    /// When a byte was last read from the hub, and last written to it.
    last_read: Instant,
    last_write: Instant,
    next_digest: Instant,
    /// A digest is due, waiting until the hub has been told of every change it reflects.
    digest_due: bool,
    /// What the handles see too: users, groups, watches, limits.
    pub(super) state: Arc<ServerState>,
    /// Frames to write to the hub.
    out: WriteQueue,
    /// Data frames given sequence numbers and not yet moved to `out`.
    staging: BytesMut,
    /// Events for the app, not yet taken by the shell.
    events: Vec<Event>,
    /// The app did not take the last events: they wait (and more join them), nothing is read,
    /// and the acks of the frames they came from wait with them.
    app_behind: bool,
    /// Messages delivered to the app from the hub since start, for the load reports.
    msgs_in: u64,
    /// The sender of the last message received: bursts from one sender share one id.
    pub(super) last_sender: Option<UserId>,
    /// `flush` calls waiting for the `Pong` with their token (or a later one).
    pub(super) flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    next_token: u64,
    next_seq: Seq,
    pub(super) unacked: Unacked,
    pub(super) received: Received,
    /// Senders waiting for the outcome of a message, by sequence number.
    receipts: FastMap<Seq, oneshot::Sender<Outcome>>,
    credit_cap: usize,
    /// Room of answered messages not yet given back to the handles' credit.
    released: usize,
    /// `locate` and `reach` calls waiting for their `Located`, by token; asked again after a
    /// reconnect.
    pub(super) locates: HashMap<u64, (UserId, oneshot::Sender<Option<Reach>>)>,
    /// Group, broadcast and server frames sent, by sequence number, until every server they went
    /// to acknowledged them. Unicast frames are never here, so their acks pay one `is_empty`.
    pub(super) awaited: FastMap<Seq, Awaited>,
    /// The other servers in the cluster, as the hub announced them: a server the hub names in a
    /// `Copies` after saying it is down will never acknowledge.
    pub(super) live: HashSet<ServerId>,
    /// Unicast frames delivered here as well as sent through the hub, until answered: should the
    /// hub relay one back here (the other sessions ended meanwhile), it is acknowledged and not
    /// delivered twice.
    pub(super) delivered_here: FastSet<Seq>,
    /// Refused frames sent and not yet answered; they take no retransmit credit, but count in
    /// the state's `refusing`, which stops the handles refusing past the buffer's size.
    pub(super) refusals: FastSet<Seq>,
    /// Invitation frames sent and not yet answered: one that comes back undeliverable is told
    /// to the app as an invitation.
    pub(super) invitations: FastSet<Seq>,
}

impl LinkCore {
    /// A core for the settings `config`, numbering from 1 in `epoch`, before any connection.
    pub(crate) fn new(
        config: &ClusterBuilder,
        epoch: Epoch,
        state: Arc<ServerState>,
        now: Instant,
    ) -> Self {
        Self {
            server_id: config.server_id,
            epoch,
            codec: Codec::new(config.max_frame_len),
            send_limit: config.max_frame_len,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
            digest_interval: config.digest_interval,
            last_read: now,
            last_write: now,
            next_digest: now + config.digest_interval,
            digest_due: false,
            state,
            out: WriteQueue::default(),
            staging: BytesMut::new(),
            events: Vec::new(),
            app_behind: false,
            msgs_in: 0,
            last_sender: None,
            flushes: VecDeque::new(),
            next_token: 0,
            next_seq: Seq::FIRST,
            unacked: Unacked::default(),
            received: Received::default(),
            receipts: FastMap::default(),
            credit_cap: config.retransmit_buffer,
            released: 0,
            locates: HashMap::new(),
            awaited: FastMap::default(),
            live: HashSet::new(),
            delivered_here: FastSet::default(),
            refusals: FastSet::default(),
            invitations: FastSet::default(),
        }
    }

    /// This process's epoch, for `Hello`.
    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Takes the limits the hub announced in its `Welcome`.
    pub(crate) fn handle_welcome(&mut self, welcome: &Welcome) {
        let hub_limit = usize::try_from(welcome.max_frame_len).unwrap_or(usize::MAX);
        self.send_limit = self.codec.max_frame_len().min(hub_limit);
        let max_users = usize::try_from(welcome.max_users).unwrap_or(usize::MAX);
        self.state.max_users.store(max_users, Ordering::Relaxed);
        let max_groups = usize::try_from(welcome.max_groups).unwrap_or(usize::MAX);
        self.state.groups().set_limit(max_groups);
    }

    /// A hub connection was registered: what the last one had not written is dropped, and the
    /// new hub hears everything again, in this order: the user set and the groups, the watches,
    /// `SnapshotDone`, the questions not answered, and every data frame not answered. The
    /// clocks start once that is written ([`LinkCore::start_clocks`]).
    pub(crate) fn handle_connected(&mut self) -> Result<(), ProtocolError> {
        // Control frames not written are all said again below; data frames are sent again.
        self.out = WriteQueue::default();
        // A new stream: nothing of a frame the last one cut in half.
        self.codec = Codec::new(self.codec.max_frame_len());
        // Acks owed are sent again for the frames every origin sends again. The multi-session users
        // are kept: the hub says again which are once it has the snapshots, and a user no longer
        // one costs a message sent through the hub for nothing, which the hub answers with
        // `MultiSession { elsewhere: false }`. Forgetting them would leave the other sessions out
        // until every server with one is back.
        self.received.forget_owed();
        self.encode_snapshot()?;
        // Watches are soft state on the hub too: the new one hears them with the snapshot.
        let watched: Vec<UserId> = self.state.watched().iter().cloned().collect();
        self.encode_users(watched, |users| Control::Watch { users })?;
        self.encode(Control::SnapshotDone)?;
        // Questions the last hub may not have answered.
        let locates: Vec<_> =
            self.locates.iter().map(|(&token, (user, _))| (token, user.clone())).collect();
        for (token, user) in locates {
            self.encode(Control::Locate { token, user })?;
        }
        // Whatever the last hub did not get answered is sent again; receivers drop duplicates.
        self.resend(Seq(0));
        if !self.flushes.is_empty() {
            // Pings sent on the lost connection may never be answered: ask again.
            let token = self.token();
            self.flushes.iter_mut().for_each(|(waiting, _)| *waiting = token);
            self.encode(Control::Ping { token })?;
        }
        Ok(())
    }

    /// The new connection's first writes are done at `now` (a large snapshot may take a while):
    /// the keepalive deadlines and the digest interval count from here.
    pub(crate) fn start_clocks(&mut self, now: Instant) {
        self.last_read = now;
        self.last_write = now;
        self.next_digest = now + self.digest_interval;
    }

    /// Handles every whole frame in `input` (bytes read from the hub at `now`), leaving a
    /// partial one there. A read that comes after the keepalive deadline ends the session.
    pub(crate) fn handle_input(
        &mut self,
        input: &mut BytesMut,
        now: Instant,
    ) -> Result<(), CoreError> {
        if now >= self.silent_at() {
            // This process was frozen (SIGSTOP, a paused VM) past the deadline, and the hub has
            // given up on the link as this side would have: what it had written here before is
            // being sent again or returned to its senders, so handing it to the app now would
            // deliver it twice.
            return Err(CoreError::Silent(self.keepalive_timeout));
        }
        self.last_read = now;
        self.handle_buffered(input)
    }

    /// Handles the frames already read (those that came with the `Welcome` too).
    pub(crate) fn handle_buffered(&mut self, input: &mut BytesMut) -> Result<(), CoreError> {
        let mut events = Vec::new();
        while let Some(raw) = self.codec.decode(input)? {
            self.handle_frame(raw, &mut events)?;
        }
        let messages = events.iter().filter(|event| matches!(event, Event::Message { .. }));
        self.msgs_in += messages.count() as u64;
        if events.is_empty() {
            self.encode_acks();
        } else {
            // Acks go out once the app has the messages; while it is behind they wait with them.
            self.events.append(&mut events);
        }
        Ok(())
    }

    /// Handles one command of a handle. Call [`LinkCore::handle_commands_done`] after a batch.
    pub(crate) fn handle_command(&mut self, command: Command) -> Result<(), ProtocolError> {
        match command {
            Command::Login(user, version) => {
                self.state.users.told(version);
                self.encode(Control::Login { users: vec![user] })
            }
            Command::Logout(user, version) => {
                self.state.users.told(version);
                self.encode(Control::Logout { users: vec![user] })
            }
            Command::Data { data, receipt, here } if data.encoded_len() > self.send_limit => {
                self.too_large(data, receipt, here);
                Ok(())
            }
            Command::Data { mut data, receipt, here } => {
                let seq = self.seq();
                data.seq = seq.0;
                if data.kind.fans_out() {
                    self.awaited.insert(seq, Awaited::default());
                }
                if here {
                    self.delivered_here.insert(seq);
                }
                if data.kind == DataKind::Invitation {
                    self.invitations.insert(seq);
                }
                if let Some(receipt) = receipt {
                    self.receipts.insert(seq, receipt);
                }
                Frame::Data(data).encode(self.send_limit, &mut self.staging)
            }
            Command::Refuse { from, to, payload, reason } => {
                self.encode_refusal(from, to, payload, reason)
            }
            Command::Encoded(mut frames) => {
                self.unstage();
                let mut at = 0;
                while at + LENGTH_PREFIX_LEN < frames.len() {
                    let len = u32::from_be_bytes(frames[at..at + 4].try_into().expect("4 bytes"));
                    let seq = self.seq();
                    set_data_seq(&mut frames[at..], seq.0)?;
                    at += LENGTH_PREFIX_LEN + len as usize;
                }
                self.keep_and_queue(frames.freeze());
                Ok(())
            }
            Command::Flush(done) => {
                self.unstage();
                let token = self.token();
                self.flushes.push_back((token, done));
                self.encode(Control::Ping { token })
            }
            Command::Locate(user, answer) => {
                let token = self.token();
                self.locates.insert(token, (user.clone(), answer));
                self.encode(Control::Locate { token, user })
            }
            Command::Candidates(user) => {
                // The candidates as they are now: of racing changes the last one told decides.
                // A user who left since needs nothing: their logout clears them at the hub.
                match self.state.users.candidates(user.as_str()) {
                    Some(candidates) => self.encode(Control::Candidates { user, candidates }),
                    None => Ok(()),
                }
            }
            Command::Watch(users) => {
                // In `watched` already (the handle put them there). Sent even for users already
                // watched: the hub answers with their place, which a second part of the app
                // watching them may be waiting for.
                self.encode_users(users, |users| Control::Watch { users })
            }
            Command::Unwatch(users) => {
                // Only those that were watched: the handle took them out of `watched`.
                self.encode_users(users, |users| Control::Unwatch { users })
            }
            Command::Group(group) => {
                // The membership as it is now, not as it was when queued: of racing joins and
                // leaves, the last one told decides, and it tells the truth.
                let joined = self.state.groups().has_members(group.as_str());
                let groups = vec![group];
                self.encode(if joined {
                    Control::Join { groups }
                } else {
                    Control::Leave { groups }
                })
            }
        }
    }

    /// After a batch of commands: the data frames staged go to the write queue, and a digest
    /// that was due goes after them if the hub has now been told everything it reflects.
    pub(crate) fn handle_commands_done(&mut self) -> Result<(), ProtocolError> {
        self.unstage();
        self.encode_digest_if_due()
    }

    /// A message that fits this server's limit but not the hub's: handed back rather than break
    /// the link.
    fn too_large(&mut self, data: Data, receipt: Option<oneshot::Sender<Outcome>>, here: bool) {
        warn!(
            len = data.encoded_len(),
            limit = self.send_limit,
            "message over the hub's frame limit"
        );
        let len = LENGTH_PREFIX_LEN + data.encoded_len();
        self.released += charge(len, self.credit_cap) as usize;
        let outcome = if data.kind.fans_out() {
            // No user to hand it back to: the receipt and the log say it went nowhere.
            Outcome::Reached { servers: 0 }
        } else if here {
            // The session here has it; the others cannot get it.
            Outcome::Delivered { sessions: 1 }
        } else {
            Outcome::Offline
        };
        if let Some(receipt) = receipt {
            let _ = receipt.send(outcome);
        }
        if outcome == Outcome::Offline {
            let invitation = data.kind == DataKind::Invitation;
            let Data { recipient: to, sender: from, payload, .. } = data;
            let reason = UndeliverableReason::TooLarge;
            self.events.push(Event::Undeliverable { from, to, payload, reason, invitation });
        }
    }

    /// The next deadline at which the core wants [`LinkCore::handle_timeout`].
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.ping_at().min(self.silent_at()).min(self.next_digest)
    }

    fn ping_at(&self) -> Instant {
        self.last_write + self.keepalive_interval
    }

    fn silent_at(&self) -> Instant {
        self.last_read + self.keepalive_timeout
    }

    /// The clock reached `now`: a `Ping` when nothing was written for the keepalive interval
    /// (the hub answers, so a quiet link has something to read), the session's end when nothing
    /// was read for the keepalive timeout, the digest when its interval is up.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Result<(), CoreError> {
        if self.app_behind {
            // Not reading while the app is behind: the hub's silence proves nothing.
            self.last_read = now;
        } else if now >= self.silent_at() {
            return Err(CoreError::Silent(self.keepalive_timeout));
        }
        if now >= self.ping_at() {
            if self.out.is_empty() {
                let token = self.token();
                self.encode(Control::Ping { token })?;
            }
            // A write in progress counts: the next ping is due an interval on.
            self.last_write = now;
        }
        if now >= self.next_digest {
            self.next_digest += self.digest_interval;
            if self.next_digest <= now {
                self.next_digest = now + self.digest_interval;
            }
            self.digest_due = true;
            self.encode_digest_if_due()?;
        }
        Ok(())
    }

    /// The bytes waiting for the hub's socket; the shell writes from the front.
    pub(crate) fn transmit(&mut self) -> &mut WriteQueue {
        &mut self.out
    }

    /// The shell wrote some of [`LinkCore::transmit`] at `now`.
    pub(crate) fn handle_written(&mut self, now: Instant) {
        self.last_write = now;
    }

    /// Events for the app, unless it has not taken the last ones yet (they wait in the core).
    pub(crate) fn poll_events(&mut self) -> Option<Vec<Event>> {
        if self.app_behind || self.events.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.events))
    }

    /// The app has no room for `events` (from [`LinkCore::poll_events`]): they wait, ahead of any
    /// that follow, and reading stops until [`LinkCore::take_waiting_events`].
    pub(crate) fn handle_app_behind(&mut self, mut events: Vec<Event>) {
        events.append(&mut self.events);
        self.events = events;
        self.app_behind = true;
    }

    /// Whether events wait for room in the app's queue.
    pub(crate) fn is_app_behind(&self) -> bool {
        self.app_behind
    }

    /// The app has room again: every event waiting, to hand it now.
    pub(crate) fn take_waiting_events(&mut self) -> Vec<Event> {
        self.app_behind = false;
        std::mem::take(&mut self.events)
    }

    /// The app has every event so far (or dropped its receiver): the acks owed go out.
    pub(crate) fn handle_events_taken(&mut self) {
        self.encode_acks();
    }

    /// Room in the retransmit buffer that answered messages gave back since the last call.
    pub(crate) fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    /// A load report, sampled by the shell, for the hub.
    pub(crate) fn report_load(&mut self, load: Load) -> Result<(), ProtocolError> {
        self.encode(Control::Load(load))
    }

    /// Messages handed to the app from the hub, and data frames sent, since start.
    pub(crate) fn totals(&self) -> (u64, u64) {
        // Every data frame sent took a sequence number.
        (self.msgs_in, self.next_seq.0 - 1)
    }

    /// Whether every data frame sent was answered: nothing is left for a `Resend` to need.
    pub(crate) fn is_all_answered(&self) -> bool {
        self.unacked.is_empty()
    }

    /// The cluster closes: what is staged, then `Bye`.
    pub(crate) fn close(&mut self) -> Result<(), ProtocolError> {
        self.encode(Control::Bye)
    }

    pub(super) fn encode_acks(&mut self) {
        self.received.encode_acks(self.server_id, self.send_limit, self.out.tail());
    }

    /// Sends again every frame not yet answered from sequence number `from` on.
    pub(super) fn resend(&mut self, from: Seq) {
        self.unstage();
        for frame in self.unacked.from(from) {
            self.out.tail().extend_from_slice(frame);
        }
    }

    /// Moves the staged data frames to the write queue, keeping each for retransmission.
    fn unstage(&mut self) {
        if self.staging.is_empty() {
            return;
        }
        let frames = self.staging.split().freeze();
        self.keep_and_queue(frames);
    }

    /// Queues data frames that have their sequence numbers for the socket, and keeps them for
    /// retransmission: the same bytes, not a copy.
    fn keep_and_queue(&mut self, frames: Bytes) {
        self.out.push(frames.clone());
        self.unacked.keep(frames);
    }

    fn seq(&mut self) -> Seq {
        let seq = self.next_seq;
        self.next_seq = seq.next();
        seq
    }

    /// The first sequence number not given yet.
    pub(super) fn next_seq(&self) -> Seq {
        self.next_seq
    }

    /// Settles a message sent through the hub: frees its room in the retransmit buffer and tells
    /// a sender waiting for its receipt. Returns false if it was settled already.
    pub(super) fn settle(&mut self, seq: Seq, outcome: Outcome) -> bool {
        let Some(len) = self.unacked.take(seq) else {
            return false;
        };
        if !self.awaited.is_empty() {
            self.awaited.remove(&seq);
        }
        if !self.delivered_here.is_empty() {
            self.delivered_here.remove(&seq);
        }
        if !self.invitations.is_empty() {
            self.invitations.remove(&seq);
        }
        if !self.refusals.is_empty() && self.refusals.remove(&seq) {
            self.state.refusing.fetch_sub(len, Ordering::AcqRel);
        } else {
            // Given back once per step (`take_released`): the semaphore takes a lock per call.
            self.released += charge(len, self.credit_cap) as usize;
        }
        if !self.receipts.is_empty()
            && let Some(receipt) = self.receipts.remove(&seq)
        {
            let _ = receipt.send(outcome);
        }
        true
    }

    /// The digest of the users, once the hub has been told of every login and logout it
    /// reflects; until then it stays due, and is tried again after the next commands.
    fn encode_digest_if_due(&mut self) -> Result<(), ProtocolError> {
        if !self.digest_due {
            return Ok(());
        }
        let Some(digest) = self.state.users.digest_if_told() else {
            return Ok(());
        };
        self.digest_due = false;
        self.encode(Control::Digest(digest))
    }

    /// The whole user set as `Login` batches, the P2P candidates of those that have any, then
    /// the groups with local members as `Join` batches, each fitting in a frame; the caller ends
    /// it with `SnapshotDone`, before which the hub drops the groups not joined again.
    pub(super) fn encode_snapshot(&mut self) -> Result<(), ProtocolError> {
        let users = self.state.users.snapshot();
        self.encode_users(users, |users| Control::Login { users })?;
        for (user, candidates) in self.state.users.all_candidates() {
            self.encode(Control::Candidates { user, candidates })?;
        }
        let groups: Vec<GroupId> = self.state.groups().groups().cloned().collect();
        self.encode_batches(groups, |group| group.as_str().len(), |groups| Control::Join { groups })
    }

    /// A list of users as messages made by `message`, in batches that each fit in a frame.
    fn encode_users(
        &mut self,
        users: Vec<UserId>,
        message: impl Fn(Vec<UserId>) -> Control,
    ) -> Result<(), ProtocolError> {
        self.encode_batches(users, |user| user.as_str().len(), message)
    }

    /// `all` as messages made by `message`, in batches that each fit in a frame.
    fn encode_batches<T>(
        &mut self,
        all: Vec<T>,
        len: impl Fn(&T) -> usize,
        message: impl Fn(Vec<T>) -> Control,
    ) -> Result<(), ProtocolError> {
        // Each id costs its length plus at most a few bytes of bincode length.
        let budget = self.send_limit / 2;
        let mut batch = Vec::new();
        let mut size = 0;
        for item in all {
            size += len(&item) + 3;
            batch.push(item);
            if size >= budget {
                self.encode(message(std::mem::take(&mut batch)))?;
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.encode(message(batch))?;
        }
        Ok(())
    }

    /// Sends a message the app refused back to its sender: to this server's events if the
    /// sender is here, else as a `Refused` frame, numbered and kept like any data frame.
    fn encode_refusal(
        &mut self,
        from: UserId,
        to: UserId,
        payload: Bytes,
        reason: String,
    ) -> Result<(), ProtocolError> {
        if self.state.users.contains(from.as_str()) {
            let reason = UndeliverableReason::Refused(Refusal::new(&reason, Bytes::new()).reason);
            let invitation = false;
            self.events.push(Event::Undeliverable { from, to, payload, reason, invitation });
            return Ok(());
        }
        let mut refusal = Refusal::new(&reason, payload);
        let mut data = Data {
            kind: DataKind::Refused,
            seq: 0,
            origin: self.server_id,
            recipient: from,
            sender: to,
            payload: Bytes::new(),
        };
        // The message itself fitted; its reason is cut to fit too.
        if !refusal.fit(self.send_limit.saturating_sub(data.encoded_len())) {
            error!(
                sender = %data.recipient,
                recipient = %data.sender,
                "a refused message at the frame limit cannot carry its reason back; dropped"
            );
            return Ok(());
        }
        data.payload = refusal.encode();
        let seq = self.seq();
        data.seq = seq.0;
        self.refusals.insert(seq);
        let len = LENGTH_PREFIX_LEN + data.encoded_len();
        self.state.refusing.fetch_add(len, Ordering::AcqRel);
        Frame::Data(data).encode(self.send_limit, &mut self.staging)
    }

    /// The hub ended this server's session of `user` (login-conflict policy `replace`): the user
    /// leaves like any logout, so the hub's record and this server's digest stay equal, and the
    /// app hears why.
    pub(super) fn handle_kick(
        &mut self,
        user: UserId,
        reason: String,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let Some(version) = self.state.users.kick(&user) else {
            tracing::debug!(%user, "kick for a user no longer online here");
            return Ok(());
        };
        info!(%user, %reason, "user kicked by the hub");
        self.state.users.told(version);
        self.encode(Control::Logout { users: vec![user.clone()] })?;
        // As a logout does, after the user left the set, so a racing join cannot put them back.
        let emptied = self.state.groups().remove_user(&user);
        if !emptied.is_empty() {
            self.encode(Control::Leave { groups: emptied })?;
        }
        events.push(Event::Kicked { user, reason });
        Ok(())
    }

    /// Encodes a control message after every data frame given before it.
    pub(super) fn encode(&mut self, control: Control) -> Result<(), ProtocolError> {
        self.unstage();
        Frame::Control(control).encode(self.send_limit, self.out.tail())
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

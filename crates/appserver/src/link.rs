//! The task that owns the hub connection.
//!
//! One task per [`crate::Cluster`]: it connects (over TLS when configured), says `Hello`, proves
//! the shared secret and checks the hub's proof when it has one, re-sends the whole user set (the
//! snapshot), then races inbound frames against the command queue. Commands are taken in batches
//! and encoded into one buffer that is written with one call. When the connection fails, or a
//! standby hub refuses it, the task tries the next hub of its list at once; after a whole pass
//! failed it waits an exponential, jittered delay and starts over. Commands wait in the queue
//! meanwhile. A `Ping` keeps an idle link alive, and a link that reads nothing for the keepalive
//! timeout is dropped, so a silently cut path is noticed.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use acms_protocol::{
    Ack, Codec, Control, Data, DataKind, ErrorCode, Frame, FrameKind, GroupId, Hello,
    LENGTH_PREFIX_LEN, Nonce, PROTOCOL_VERSION, ProtocolError, Prover, RawFrame, Refusal, Secret,
    ServerId, UserId, Welcome,
};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::builder::ClusterBuilder;
use crate::events::{Event, LinkState, Outcome, UndeliverableReason};
use crate::groups::{Awaited, LocalGroups};
use crate::load::LoadSampler;
use crate::outgoing::Outgoing;
use crate::reliable::{Received, SEQ_AT, Unacked};
use crate::tls::{self, ClientTls, ReadHalf, WriteHalf};
use crate::users::{LocalUsers, SharedUsers, Tally};

/// Most commands taken from the queue for one write.
const MAX_BATCH: usize = 1024;

/// Encoded bytes waiting for the socket above which no more commands are taken: the app's
/// sends then wait in the bounded command queue.
const MAX_PENDING_OUT: usize = 256 * 1024;

/// Room made in the read buffer before each read: many small frames per system call.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes of the retransmit buffer a frame of `len` bytes takes; one frame larger than the whole
/// buffer takes all of it rather than wait forever.
pub(crate) fn charge(len: usize, cap: usize) -> u32 {
    u32::try_from(len.min(cap)).unwrap_or(u32::MAX)
}

/// What a [`crate::Cluster`] handle asks of its connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// With the change number the login got in [`Tally`].
    Login(UserId, u64),
    /// With the change number the logout got in [`Tally`].
    Logout(UserId, u64),
    Data {
        data: Data,
        receipt: Option<oneshot::Sender<Outcome>>,
        /// A unicast message already delivered to a session on this server (its recipient has
        /// sessions elsewhere too): the hub relays it to the others only.
        here: bool,
    },
    /// Data frames the caller already encoded, back to back, sequence numbers still to be given.
    Encoded(BytesMut),
    /// A message the app could not deliver to its local recipient `to`, going back to `from`.
    Refuse {
        from: UserId,
        to: UserId,
        payload: Bytes,
        reason: String,
    },
    Flush(oneshot::Sender<()>),
    /// Asks the hub where a user is.
    Locate(UserId, oneshot::Sender<Option<ServerId>>),
    Watch(Vec<UserId>),
    Unwatch(Vec<UserId>),
    /// The group's local membership changed between none and some: tell the hub how it is now.
    Group(GroupId),
}

/// The read half of the hub connection with its buffer: frames are decoded from whole reads.
struct Reader {
    half: ReadHalf,
    buf: BytesMut,
    codec: Codec,
}

impl Reader {
    /// Reads what the socket has; `Ok(false)` once the hub closed it.
    async fn read_more(&mut self) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.half.read_buf(&mut self.buf).await? > 0)
    }

    /// The next whole frame already read, if any.
    fn decode(&mut self) -> Result<Option<RawFrame>, ProtocolError> {
        self.codec.decode(&mut self.buf)
    }
}

/// Why a session with the hub ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS with the hub failed: {}", tls::explain_failure(.0))]
    Tls(io::Error),
    #[error(
        "the hub could not prove the shared secret: the secrets differ (set the same ACMS_SECRET on both), or this is not the hub"
    )]
    HubUnauthenticated,
    #[error(
        "the hub did not authenticate itself although this server has a shared secret: set the same ACMS_SECRET on the hub"
    )]
    HubWithoutSecret,
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("hub refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("hub closed the connection")]
    HubClosed,
    #[error("no answer to Hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("unexpected message from the hub: {0}")]
    Unexpected(&'static str),
    #[error("nothing from the hub for {0:?} (keepalive timeout): the path may be cut")]
    Silent(Duration),
}

impl SessionError {
    /// How the link's state shows this failure: a refusal that retrying will not heal by itself
    /// is shown as such, everything else as a plain retry.
    fn state(&self) -> LinkState {
        match self {
            Self::Refused { code, .. }
                if matches!(
                    code,
                    ErrorCode::Unauthorized
                        | ErrorCode::VersionMismatch
                        | ErrorCode::TooManyUsers
                        | ErrorCode::TooManyGroups
                ) =>
            {
                LinkState::Refused(*code)
            }
            Self::HubUnauthenticated | Self::HubWithoutSecret => {
                LinkState::Refused(ErrorCode::Unauthorized)
            }
            // A certificate refused, or the hub not speaking TLS: settings, not bad luck.
            Self::Tls(err) if tls::tls_failure(err).is_some() => {
                LinkState::Refused(ErrorCode::Unauthorized)
            }
            _ => LinkState::Connecting,
        }
    }
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
    /// A keepalive deadline passed.
    Tick,
    Digest,
    Load,
}

pub(crate) struct Link {
    server_id: ServerId,
    /// The hubs in order of preference, and the one tried or connected now.
    hubs: Vec<String>,
    current: usize,
    /// Shared with the handles: the hub connected to.
    connected_hub: Arc<std::sync::Mutex<Option<String>>>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    client_addr: String,
    secret: Option<Secret>,
    tls: Option<ClientTls>,
    /// The hub's limit on this server's users, from its `Welcome`, shared with the handles.
    max_users: Arc<AtomicUsize>,
    codec: Codec,
    /// Largest frame body to send: the smaller of ours and the hub's limits.
    send_limit: usize,
    connect_timeout: Duration,
    backoff: ExponentialBuilder,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Vec<Event>>,
    state: watch::Sender<LinkState>,
    local: Arc<LocalUsers>,
    tally: Arc<std::sync::Mutex<Tally>>,
    digest_interval: Duration,
    load_interval: Duration,
    load: LoadSampler,
    /// Messages delivered to the app from the hub since start, for the load reports.
    msgs_in: u64,
    /// The change number of `tally` the last snapshot reflects.
    snapshot_mark: u64,
    /// Logins and logouts numbered after `snapshot_mark` that the hub has been told of since.
    told_since_mark: u64,
    /// A digest is due, waiting until the hub has been told of every change it reflects.
    digest_due: bool,
    shutdown: CancellationToken,
    /// `flush` calls waiting for the `Pong` with their token (or a later one).
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    next_token: u64,
    /// Inbound events waiting for room in the events queue; nothing is read meanwhile.
    pending_events: Option<Vec<Event>>,
    /// The sender of the last message received: bursts from one sender share one id.
    last_sender: Option<UserId>,
    /// Set once the app dropped its events receiver, so that is logged once.
    events_dropped: bool,
    /// Chosen at start: tells receivers that sequence numbers start over.
    epoch: u64,
    next_seq: u64,
    /// Data frames given sequence numbers and not yet copied to the socket's buffer.
    staging: BytesMut,
    unacked: Unacked,
    received: Received,
    /// Senders waiting for the outcome of a message, by sequence number.
    receipts: std::collections::HashMap<u64, oneshot::Sender<Outcome>, foldhash::fast::RandomState>,
    /// The retransmit buffer's free bytes: a send takes them, an answer gives them back.
    credit: Arc<Semaphore>,
    credit_cap: usize,
    /// Room of answered messages not yet given back to `credit`.
    released: usize,
    /// `locate` calls waiting for their `Located`, by token; asked again after a reconnect.
    locates: std::collections::HashMap<u64, (UserId, oneshot::Sender<Option<ServerId>>)>,
    /// The users this server watches: sent again to every hub it connects to.
    watched: Arc<std::sync::Mutex<std::collections::HashSet<UserId>>>,
    /// The local members of each group, shared with the handles.
    groups: Arc<std::sync::Mutex<LocalGroups>>,
    /// Group, broadcast and server frames sent, by sequence number, until every server they went
    /// to acknowledged them. Unicast frames are never here, so their acks pay one `is_empty`.
    awaited: std::collections::HashMap<u64, Awaited, foldhash::fast::RandomState>,
    /// The other servers in the cluster, as the hub announced them: a server the hub names in a
    /// `Copies` after saying it is down will never acknowledge.
    live: std::collections::HashSet<ServerId>,
    /// The local users with sessions on other servers too, as the hub says (policy `multi`).
    shared: Arc<SharedUsers>,
    /// Unicast frames delivered here as well as sent through the hub, until answered: should the
    /// hub relay one back here (the other sessions ended meanwhile), it is acknowledged and not
    /// delivered twice.
    delivered_here: std::collections::HashSet<u64, foldhash::fast::RandomState>,
    /// Refused frames sent and not yet answered; they take no retransmit credit, but count in
    /// `refusing`, shared with the handles, which stop refusing past the buffer's size.
    refusals: std::collections::HashSet<u64, foldhash::fast::RandomState>,
    refusing: Arc<AtomicUsize>,
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &ClusterBuilder,
        epoch: u64,
        credit: Arc<Semaphore>,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Vec<Event>>,
        state: watch::Sender<LinkState>,
        local: Arc<LocalUsers>,
        tally: Arc<std::sync::Mutex<Tally>>,
        max_users: Arc<AtomicUsize>,
        connected_hub: Arc<std::sync::Mutex<Option<String>>>,
        groups: Arc<std::sync::Mutex<LocalGroups>>,
        watched: Arc<std::sync::Mutex<std::collections::HashSet<UserId>>>,
        shared: Arc<SharedUsers>,
        refusing: Arc<AtomicUsize>,
        shutdown: CancellationToken,
    ) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(config.reconnect_min)
            .with_max_delay(config.reconnect_max)
            .with_jitter()
            .without_max_times();
        Self {
            server_id: config.server_id,
            hubs: config.hubs.clone(),
            current: 0,
            connected_hub,
            keepalive_interval: config.keepalive_interval,
            keepalive_timeout: config.keepalive_timeout,
            client_addr: config.client_addr.clone(),
            secret: config.secret.clone(),
            tls: config.tls.clone(),
            max_users,
            codec: Codec::new(config.max_frame_len),
            send_limit: config.max_frame_len,
            connect_timeout: config.connect_timeout,
            backoff,
            commands,
            events,
            state,
            local,
            tally,
            digest_interval: config.digest_interval,
            load_interval: config.load_interval,
            load: LoadSampler::new(config.capacity),
            msgs_in: 0,
            snapshot_mark: 0,
            told_since_mark: 0,
            digest_due: false,
            shutdown,
            flushes: VecDeque::new(),
            next_token: 0,
            pending_events: None,
            last_sender: None,
            events_dropped: false,
            epoch,
            next_seq: 1,
            staging: BytesMut::new(),
            unacked: Unacked::default(),
            received: Received::default(),
            receipts: Default::default(),
            credit,
            credit_cap: config.retransmit_buffer,
            released: 0,
            locates: Default::default(),
            watched,
            groups,
            awaited: Default::default(),
            live: Default::default(),
            shared,
            delivered_here: Default::default(),
            refusals: Default::default(),
            refusing,
        }
    }

    pub(crate) async fn run(mut self) {
        if self.hubs.is_empty() {
            error!("no hub address given: this server cannot join a cluster");
            self.state.send_replace(LinkState::Closed);
            return;
        }
        let mut delays = self.delays();
        // Attempts since the last session, or since the last wait: a whole pass over the list
        // fails before the backoff applies.
        let mut failed = 0;
        loop {
            let shutdown = self.shutdown.clone();
            let hub = self.hubs[self.current].clone();
            let connected = tokio::select! {
                _ = shutdown.cancelled() => break,
                connected = self.connect(&hub) => connected,
            };
            let error = match connected {
                Ok((reader, writer)) => {
                    delays = self.delays();
                    failed = 0;
                    info!(%hub, users = self.local.len(), "connected to hub");
                    *self.connected_hub.lock().expect("hub lock") = Some(hub.clone());
                    self.state.send_replace(LinkState::Connected);
                    let ended = self.session(reader, writer).await;
                    *self.connected_hub.lock().expect("hub lock") = None;
                    match ended {
                        Ok(Closed) => break,
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            let state = error.state();
            self.state.send_replace(state);
            self.current = (self.current + 1) % self.hubs.len();
            failed += 1;
            if failed < self.hubs.len() {
                info!(%hub, error = %error, next = %self.hubs[self.current], "hub link down; trying the next hub");
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
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.state.send_replace(LinkState::Closed);
        debug!("hub link closed");
    }

    fn delays(&self) -> ExponentialBackoff {
        self.backoff.build()
    }

    /// Connects and registers: TLS if configured, then `Hello` out, the secret's challenge and
    /// answer when there is one, and `Welcome` (or a refusal) back. The handshake runs on the
    /// whole stream, so a TLS failure is reported as such; the stream is split after it.
    async fn connect(&mut self, hub: &str) -> Result<(Reader, WriteHalf), SessionError> {
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(hub))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let (half, writer) = match self.tls.clone() {
            None => {
                let mut stream = stream;
                self.handshake(&mut stream, &mut buf).await?;
                tls::split_plain(stream)
            }
            Some(tls) => {
                let mut stream = tokio::time::timeout(timeout, tls.connect(stream))
                    .await
                    .map_err(|_| SessionError::HandshakeTimeout(timeout))?
                    .map_err(SessionError::Tls)?;
                self.handshake(&mut stream, &mut buf).await.map_err(|err| match err {
                    SessionError::Io(err) if tls::tls_failure(&err).is_some() => {
                        SessionError::Tls(err)
                    }
                    err => err,
                })?;
                tls::split_tls(stream)
            }
        };
        Ok((Reader { half, buf, codec: self.codec.clone() }, writer))
    }

    /// The protocol handshake on a connected stream; frames that follow `Welcome` stay in `buf`.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let timeout = self.connect_timeout;
        let as_nonce = self.secret.as_ref().map(|_| Nonce::random());
        let hello = Control::Hello(Hello {
            version: PROTOCOL_VERSION,
            server_id: self.server_id,
            client_addr: self.client_addr.clone(),
            epoch: self.epoch,
            nonce: as_nonce,
        });
        self.write_control(stream, hello).await?;
        let mut answer = self.handshake_answer(stream, buf, timeout).await?;
        if let (Some(secret), Some(as_nonce)) = (self.secret.clone(), as_nonce) {
            let challenge = match answer {
                Control::Challenge(challenge) => challenge,
                Control::Welcome(_) => return Err(SessionError::HubWithoutSecret),
                other => return Err(refusal(other)),
            };
            let server = self.server_id;
            let hub_nonce = challenge.nonce;
            if secret.verify(Prover::Hub, server, &as_nonce, &hub_nonce, &challenge.proof).is_err()
            {
                let refusal = Control::error(
                    ErrorCode::Unauthorized,
                    "the hub's proof does not match this app server's secret",
                );
                let _ = self.write_control(stream, refusal).await;
                return Err(SessionError::HubUnauthenticated);
            }
            let proof = secret.prove(Prover::AppServer, server, &as_nonce, &hub_nonce);
            self.write_control(stream, Control::Auth { proof }).await?;
            answer = self.handshake_answer(stream, buf, timeout).await?;
        }
        match answer {
            Control::Welcome(welcome) if welcome.version == PROTOCOL_VERSION => {
                self.welcomed(&welcome);
                Ok(())
            }
            Control::Welcome(welcome) => Err(SessionError::Refused {
                code: ErrorCode::VersionMismatch,
                message: format!("hub speaks protocol version {}", welcome.version),
            }),
            other => Err(refusal(other)),
        }
    }

    /// Takes the limits the hub announced.
    fn welcomed(&mut self, welcome: &Welcome) {
        let hub_limit = usize::try_from(welcome.max_frame_len).unwrap_or(usize::MAX);
        self.send_limit = self.codec.max_frame_len().min(hub_limit);
        let max_users = usize::try_from(welcome.max_users).unwrap_or(usize::MAX);
        self.max_users.store(max_users, Ordering::Relaxed);
        let max_groups = usize::try_from(welcome.max_groups).unwrap_or(usize::MAX);
        self.groups.lock().expect("groups lock").set_limit(max_groups);
    }

    async fn write_control<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        control: Control,
    ) -> Result<(), SessionError> {
        stream.write_all(&Frame::Control(control).to_bytes(self.codec.max_frame_len())?).await?;
        // TLS holds written bytes until flushed.
        stream.flush().await?;
        Ok(())
    }

    /// The hub's next handshake message, within `timeout`.
    async fn handshake_answer<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        timeout: Duration,
    ) -> Result<Control, SessionError> {
        let mut codec = self.codec.clone();
        let next = async {
            loop {
                if let Some(raw) = codec.decode(buf)? {
                    return match raw.decode()? {
                        Frame::Control(control) => Ok(control),
                        Frame::Data(_) | Frame::Ack(_) => {
                            Err(SessionError::Unexpected("data or ack frame in the handshake"))
                        }
                    };
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(SessionError::HubClosed);
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .map_err(|_| SessionError::HandshakeTimeout(timeout))?
    }

    /// Runs one registered connection until it fails or the cluster closes.
    async fn session(
        &mut self,
        mut reader: Reader,
        mut writer: WriteHalf,
    ) -> Result<Closed, SessionError> {
        let mut out = Outgoing::default();
        // Acks owed are sent again for the frames every origin sends again. The shared users
        // are kept: the hub says again which are once it has the snapshots, and a user no longer
        // shared costs a message sent through the hub for nothing, which the hub answers with
        // `Shared { elsewhere: false }`. Forgetting them would leave the other sessions out until
        // every server with one is back.
        self.received.forget_owed();
        self.encode_snapshot(&mut out)?;
        // Watches are soft state on the hub too: the new one hears them with the snapshot.
        let watched: Vec<UserId> =
            self.watched.lock().expect("watched lock").iter().cloned().collect();
        self.encode_batches(&mut out, watched, |users| Control::Watch { users })?;
        self.encode(&mut out, Control::SnapshotDone)?;
        // Questions the last hub may not have answered.
        let locates: Vec<_> =
            self.locates.iter().map(|(&token, (user, _))| (token, user.clone())).collect();
        for (token, user) in locates {
            self.encode(&mut out, Control::Locate { token, user })?;
        }
        // Whatever the last hub did not get answered is sent again; receivers drop duplicates.
        self.resend(&mut out, 0);
        if !self.flushes.is_empty() {
            // Pings sent on the lost connection may never be answered: ask again.
            let token = self.token();
            self.flushes.iter_mut().for_each(|(waiting, _)| *waiting = token);
            self.encode(&mut out, Control::Ping { token })?;
        }
        writer.write_all_buf(&mut out).await?;
        // Frames that came with the Welcome.
        self.handle_buffered(&mut reader, &mut out)?;

        let mut batch = Vec::with_capacity(MAX_BATCH);
        let (shutdown, events) = (self.shutdown.clone(), self.events.clone());
        let (mut last_read, mut last_write) = (Instant::now(), Instant::now());
        let start = tokio::time::Instant::now() + self.digest_interval;
        let mut digests = tokio::time::interval_at(start, self.digest_interval);
        digests.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first report one interval in, once CPU use has a span to be measured over.
        let start = tokio::time::Instant::now() + self.load_interval;
        let mut loads = tokio::time::interval_at(start, self.load_interval);
        loads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ping_at = last_write + self.keepalive_interval;
            let silent_at = last_read + self.keepalive_timeout;
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Step::Shutdown,
                permit = events.reserve(), if self.pending_events.is_some() => Step::Room(permit.ok()),
                // Writing is one branch among the others, so the hub's frames are still read
                // while the hub is not taking ours: two servers sending hard to each other
                // cannot wedge each other's connections.
                written = writer.write_buf(&mut out), if !out.is_empty() => Step::Wrote(written),
                count = self.commands.recv_many(&mut batch, MAX_BATCH), if out.len() < MAX_PENDING_OUT => Step::Commands(count),
                read = reader.read_more(), if self.pending_events.is_none() => Step::Read(read),
                _ = tokio::time::sleep_until(ping_at.min(silent_at)) => Step::Tick,
                _ = digests.tick() => Step::Digest,
                _ = loads.tick() => Step::Load,
            };
            match step {
                Step::Wrote(written) => {
                    if written? == 0 {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                    }
                    last_write = Instant::now();
                }
                Step::Tick => {
                    let now = Instant::now();
                    if self.pending_events.is_some() {
                        // Not reading while the app is behind: the hub's silence proves nothing.
                        last_read = now;
                    } else if now >= silent_at {
                        return Err(SessionError::Silent(self.keepalive_timeout));
                    }
                    if now >= ping_at {
                        if out.is_empty() {
                            // The hub answers with a Pong: something to read on a quiet link.
                            let token = self.token();
                            self.encode(&mut out, Control::Ping { token })?;
                        }
                        // A write in progress counts: the next ping is due an interval on.
                        last_write = now;
                    }
                }
                Step::Shutdown => {
                    // Send what the app queued before it closed.
                    while let Ok(command) = self.commands.try_recv() {
                        self.encode_command(&mut out, command)?;
                    }
                    self.unstage(&mut out);
                    self.encode(&mut out, Control::Bye)?;
                    writer.write_all_buf(&mut out).await?;
                    writer.shutdown().await?;
                    return Ok(Closed);
                }
                Step::Room(Some(permit)) => {
                    if let Some(events) = self.pending_events.take() {
                        permit.send(events);
                    }
                    self.received.encode_acks(self.server_id, self.send_limit, out.tail());
                }
                Step::Room(None) => {
                    self.pending_events = None;
                    self.note_events_dropped();
                }
                Step::Commands(0) => {
                    // Every handle is gone: nothing more will be sent.
                    self.encode(&mut out, Control::Bye)?;
                    writer.write_all_buf(&mut out).await?;
                    writer.shutdown().await?;
                    return Ok(Closed);
                }
                Step::Commands(_) => {
                    for command in batch.drain(..) {
                        self.encode_command(&mut out, command)?;
                    }
                    self.unstage(&mut out);
                    self.encode_digest_if_due(&mut out)?;
                }
                Step::Digest => {
                    self.digest_due = true;
                    self.encode_digest_if_due(&mut out)?;
                }
                Step::Load => {
                    // Every data frame sent took a sequence number.
                    let sent = self.next_seq - 1;
                    let load = self.load.sample(self.local.len(), self.msgs_in, sent);
                    self.encode(&mut out, Control::Load(load))?;
                }
                Step::Read(read) => {
                    if !read? {
                        return Err(SessionError::HubClosed);
                    }
                    let now = Instant::now();
                    if now >= silent_at {
                        // This process was frozen (SIGSTOP, a paused VM) past the deadline, and
                        // the hub has given up on the link as this side would have: what it had
                        // written here before is being sent again or returned to its senders,
                        // so handing it to the app now would deliver it twice.
                        return Err(SessionError::Silent(self.keepalive_timeout));
                    }
                    last_read = now;
                    self.handle_buffered(&mut reader, &mut out)?;
                }
            }
        }
    }

    /// Handles every whole frame read so far and hands the app their events as one batch.
    fn handle_buffered(
        &mut self,
        reader: &mut Reader,
        out: &mut Outgoing,
    ) -> Result<(), SessionError> {
        let mut events = Vec::new();
        while let Some(raw) = reader.decode()? {
            self.handle_frame(raw, out, &mut events)?;
        }
        let messages = events.iter().filter(|event| matches!(event, Event::Message { .. }));
        self.msgs_in += messages.count() as u64;
        // Acks go out once the app has the messages; while it is behind they wait with them.
        if events.is_empty() || self.deliver(events) {
            self.received.encode_acks(self.server_id, self.send_limit, out.tail());
        }
        if self.released > 0 {
            self.credit.add_permits(std::mem::take(&mut self.released));
        }
        Ok(())
    }

    /// Sends again every frame not yet answered from sequence number `from` on.
    fn resend(&mut self, out: &mut Outgoing, from: u64) {
        self.unstage(out);
        for frame in self.unacked.from(from) {
            out.tail().extend_from_slice(frame);
        }
    }

    /// Moves the staged data frames to the socket's buffer, keeping each for retransmission.
    fn unstage(&mut self, out: &mut Outgoing) {
        if self.staging.is_empty() {
            return;
        }
        let frames = self.staging.split().freeze();
        self.keep_and_queue(frames, out);
    }

    /// Queues data frames that have their sequence numbers for the socket, and keeps them for
    /// retransmission: the same bytes, not a copy.
    fn keep_and_queue(&mut self, frames: Bytes, out: &mut Outgoing) {
        out.push(frames.clone());
        self.unacked.keep(frames);
    }

    /// Gives the next sequence number.
    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Settles a message sent through the hub: frees its room in the retransmit buffer and tells
    /// a sender waiting for its receipt. Returns false if it was settled already.
    fn settle(&mut self, seq: u64, outcome: Outcome) -> bool {
        let Some(len) = self.unacked.take(seq) else {
            return false;
        };
        if !self.awaited.is_empty() {
            self.awaited.remove(&seq);
        }
        if !self.delivered_here.is_empty() {
            self.delivered_here.remove(&seq);
        }
        if !self.refusals.is_empty() && self.refusals.remove(&seq) {
            self.refusing.fetch_sub(len, Ordering::AcqRel);
        } else {
            // Given back once per read (`release_credit`): the semaphore takes a lock per call.
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
    fn encode_digest_if_due(&mut self, out: &mut Outgoing) -> Result<(), ProtocolError> {
        if !self.digest_due {
            return Ok(());
        }
        let digest = {
            let tally = self.tally.lock().expect("tally lock");
            if tally.changes.wrapping_sub(self.snapshot_mark) != self.told_since_mark {
                return Ok(());
            }
            tally.digest
        };
        self.digest_due = false;
        self.encode(out, Control::Digest(digest))
    }

    /// The whole user set as `Login` batches that each fit in a frame.
    fn encode_snapshot(&mut self, out: &mut Outgoing) -> Result<(), ProtocolError> {
        // Each id costs its length plus at most a few bytes of bincode length.
        // Taken under the tally's lock, so the snapshot reflects exactly the changes numbered up
        // to the mark; logins and logouts queued with later numbers follow it.
        let snapshot: Vec<UserId> = {
            let tally = self.tally.lock().expect("tally lock");
            self.snapshot_mark = tally.changes;
            self.told_since_mark = 0;
            self.local.iter().map(|user| user.key().clone()).collect()
        };
        self.encode_batches(out, snapshot, |users| Control::Login { users })
    }

    /// A list of users as messages made by `message`, in batches that each fit in a frame.
    fn encode_batches(
        &mut self,
        out: &mut Outgoing,
        all: Vec<UserId>,
        message: impl Fn(Vec<UserId>) -> Control,
    ) -> Result<(), ProtocolError> {
        // Each id costs its length plus at most a few bytes of bincode length.
        let budget = self.send_limit / 2;
        let mut users = Vec::new();
        let mut size = 0;
        for user in all {
            size += user.as_str().len() + 3;
            users.push(user);
            if size >= budget {
                self.encode(out, message(std::mem::take(&mut users)))?;
                size = 0;
            }
        }
        if !users.is_empty() {
            self.encode(out, message(users))?;
        }
        // The groups with local members, before `SnapshotDone`: the hub drops the others.
        let groups: Vec<GroupId> =
            self.groups.lock().expect("groups lock").groups().cloned().collect();
        let mut batch = Vec::new();
        size = 0;
        for group in groups {
            size += group.as_str().len() + 3;
            batch.push(group);
            if size >= budget {
                self.encode(out, Control::Join { groups: std::mem::take(&mut batch) })?;
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.encode(out, Control::Join { groups: batch })?;
        }
        Ok(())
    }

    fn encode_command(
        &mut self,
        out: &mut Outgoing,
        command: Command,
    ) -> Result<(), ProtocolError> {
        match command {
            Command::Login(user, change) => {
                self.told(change);
                self.encode(out, Control::Login { users: vec![user] })
            }
            Command::Logout(user, change) => {
                self.told(change);
                self.shared.set(user.clone(), false);
                self.encode(out, Control::Logout { users: vec![user] })
            }
            Command::Data { data, receipt, here } if data.encoded_len() > self.send_limit => {
                // Fits our limit but not the hub's: hand it back rather than break the link.
                warn!(
                    len = data.encoded_len(),
                    limit = self.send_limit,
                    "message over the hub's frame limit"
                );
                let len = LENGTH_PREFIX_LEN + data.encoded_len();
                self.credit.add_permits(charge(len, self.credit_cap) as usize);
                if data.kind.fans_out() {
                    // No user to hand it back to: the receipt and the log say it went nowhere.
                    if let Some(receipt) = receipt {
                        let _ = receipt.send(Outcome::Reached { servers: 0 });
                    }
                    return Ok(());
                }
                if here {
                    // The session here has it; the others cannot get it.
                    if let Some(receipt) = receipt {
                        let _ = receipt.send(Outcome::Delivered { sessions: 1 });
                    }
                    return Ok(());
                }
                if let Some(receipt) = receipt {
                    let _ = receipt.send(Outcome::Offline);
                }
                let Data { recipient: to, sender: from, payload, .. } = data;
                let reason = UndeliverableReason::TooLarge;
                self.deliver(vec![Event::Undeliverable { from, to, payload, reason }]);
                Ok(())
            }
            Command::Data { mut data, receipt, here } => {
                data.seq = self.seq();
                if data.kind.fans_out() {
                    self.awaited.insert(data.seq, Awaited::default());
                }
                if here {
                    self.delivered_here.insert(data.seq);
                }
                if let Some(receipt) = receipt {
                    self.receipts.insert(data.seq, receipt);
                }
                Frame::Data(data).encode(self.send_limit, &mut self.staging)
            }
            Command::Refuse { from, to, payload, reason } => {
                self.encode_refusal(from, to, payload, reason)
            }
            Command::Encoded(mut frames) => {
                self.unstage(out);
                let mut at = 0;
                while at + LENGTH_PREFIX_LEN < frames.len() {
                    let len = u32::from_be_bytes(frames[at..at + 4].try_into().expect("4 bytes"));
                    let seq = self.seq().to_be_bytes();
                    frames[at + SEQ_AT..at + SEQ_AT + 8].copy_from_slice(&seq);
                    at += LENGTH_PREFIX_LEN + len as usize;
                }
                self.keep_and_queue(frames.freeze(), out);
                Ok(())
            }
            Command::Flush(done) => {
                self.unstage(out);
                let token = self.token();
                self.flushes.push_back((token, done));
                self.encode(out, Control::Ping { token })
            }
            Command::Locate(user, answer) => {
                let token = self.token();
                self.locates.insert(token, (user.clone(), answer));
                self.encode(out, Control::Locate { token, user })
            }
            Command::Watch(users) => {
                // In `watched` already (the handle put them there). Sent even for users already watched: the hub answers with their place, which
                // a second part of the app watching them may be waiting for.
                self.encode_batches(out, users, |users| Control::Watch { users })
            }
            Command::Unwatch(users) => {
                // Only those that were watched: the handle took them out of `watched`.
                self.encode_batches(out, users, |users| Control::Unwatch { users })
            }
            Command::Group(group) => {
                // The membership as it is now, not as it was when queued: of racing joins and
                // leaves, the last one told decides, and it tells the truth.
                let joined = self.groups.lock().expect("groups lock").has_members(group.as_str());
                let groups = vec![group];
                self.encode(
                    out,
                    if joined { Control::Join { groups } } else { Control::Leave { groups } },
                )
            }
        }
    }

    /// The hub ended this server's session of `user` (login-conflict policy `replace`): the user
    /// leaves like any logout, so the hub's record and this server's digest stay equal, and the
    /// app hears why.
    fn handle_kick(
        &mut self,
        user: UserId,
        reason: String,
        out: &mut Outgoing,
        events: &mut Vec<Event>,
    ) -> Result<(), ProtocolError> {
        let change = {
            let mut tally = self.tally.lock().expect("tally lock");
            if self.local.remove(&user).is_none() {
                debug!(%user, "kick for a user no longer online here");
                return Ok(());
            }
            tally.digest.remove(user.as_str());
            tally.changes += 1;
            tally.changes
        };
        self.shared.set(user.clone(), false);
        info!(%user, %reason, "user kicked by the hub");
        self.told(change);
        self.encode(out, Control::Logout { users: vec![user.clone()] })?;
        events.push(Event::Kicked { user, reason });
        Ok(())
    }

    /// Counts a login or logout the hub is being told of, unless the snapshot had it already.
    fn told(&mut self, change: u64) {
        if change > self.snapshot_mark {
            self.told_since_mark += 1;
        }
    }

    /// Encodes a control message after every data frame given before it.
    fn encode(&mut self, out: &mut Outgoing, control: Control) -> Result<(), ProtocolError> {
        self.unstage(out);
        Frame::Control(control).encode(self.send_limit, out.tail())
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn handle_frame(
        &mut self,
        raw: RawFrame,
        out: &mut Outgoing,
        events: &mut Vec<Event>,
    ) -> Result<(), SessionError> {
        match raw.kind()? {
            FrameKind::Data(DataKind::Unicast) => {
                let route = raw.route()?;
                if self.received.receive(route.origin, route.seq)
                    && !(route.origin == self.server_id
                        && !self.delivered_here.is_empty()
                        && self.delivered_here.contains(&route.seq))
                {
                    events.push(self.event(&raw, DataKind::Unicast)?);
                }
            }
            FrameKind::Data(DataKind::Undeliverable) => {
                let seq = raw.route()?.seq;
                let refusal = !self.refusals.is_empty() && self.refusals.contains(&seq);
                // A frame sent again may come back twice: the app hears of it once.
                if self.settle(seq, Outcome::Offline) {
                    if refusal {
                        let route = raw.route()?;
                        warn!(
                            sender = route.recipient,
                            recipient = route.sender,
                            "a message refused here cannot go back: its sender is online nowhere"
                        );
                    } else {
                        events.push(self.event(&raw, DataKind::Undeliverable)?);
                    }
                }
            }
            FrameKind::Data(DataKind::Refused) => {
                let route = raw.route()?;
                if self.received.receive(route.origin, route.seq) {
                    match self.refused_event(&raw) {
                        Ok(event) => events.push(event),
                        // Acknowledged all the same: sent again, it would be as bad.
                        Err(err) => warn!(
                            origin = %route.origin,
                            error = %err,
                            "a refused message came back malformed; dropped"
                        ),
                    }
                }
            }
            FrameKind::Data(kind) if kind.fans_out() => {
                let route = raw.route()?;
                if self.received.receive(route.origin, route.seq)
                    && let Some(event) = self.fanned_out_event(&raw)?
                {
                    events.push(event);
                }
            }
            FrameKind::Data(_) => {
                return Err(SessionError::Unexpected("a data kind only sent to the hub"));
            }
            FrameKind::Ack => {
                let ack = Ack::decode(raw.body())?;
                // Runs the peer chose: walked only where they cover frames still waiting here
                // (group, broadcast and server frames in `awaited` wait there too), each once.
                if let Some(range) = ack.beyond(self.next_seq) {
                    warn!(
                        from = %ack.from,
                        first = range.first,
                        count = range.count,
                        next_seq = self.next_seq,
                        "ack names numbers this server never sent; only those outstanding count"
                    );
                }
                let covered = ack.covered(self.unacked.outstanding());
                for range in covered {
                    for seq in range {
                        // A number answered already costs one look at its slot, no more.
                        if !self.unacked.contains(seq) {
                            continue;
                        }
                        if !self.awaited.is_empty()
                            && let Some(awaited) = self.awaited.get_mut(&seq)
                        {
                            awaited.ack(ack.from);
                            self.settle_if_reached(seq);
                            continue;
                        }
                        // Delivered here too, and relayed by the hub to one other session.
                        let also_here = !self.delivered_here.is_empty()
                            && ack.from != self.server_id
                            && self.delivered_here.contains(&seq);
                        self.settle(seq, Outcome::Delivered { sessions: 1 + u32::from(also_here) });
                    }
                }
            }
            FrameKind::Control => match Control::decode(&raw.body()[1..])? {
                Control::Pong { token } => {
                    while self.flushes.front().is_some_and(|(waiting, _)| *waiting <= token) {
                        if let Some((_, done)) = self.flushes.pop_front() {
                            let _ = done.send(());
                        }
                    }
                }
                Control::Ping { token } => self.encode(out, Control::Pong { token })?,
                Control::Servers { servers } => {
                    self.live.clear();
                    for server in servers {
                        self.received.epoch(server.id, server.epoch);
                        self.live.insert(server.id);
                    }
                }
                Control::ServerUp { server, resend_from } => {
                    self.received.epoch(server.id, server.epoch);
                    self.live.insert(server.id);
                    if let Some(from) = resend_from {
                        debug!(server = %server.id, from, "sending again what the hub held");
                        self.encode(out, Control::Resent { server: server.id })?;
                        self.resend(out, from);
                    }
                }
                Control::Resend { from } => {
                    debug!(from, "sending again what the hub held");
                    self.resend(out, from);
                }
                Control::Copies { seq, servers } => {
                    if let Some(awaited) = self.awaited.get_mut(&seq) {
                        awaited.copies(servers, &self.live);
                        self.settle_if_reached(seq);
                    } else if self.unacked.contains(seq) {
                        // A unicast frame the hub copied to each server with a session of its
                        // recipient (policy `multi`): it now waits for all of them, not the
                        // first ack. None of their acks can have settled it already: the hub
                        // queues this `Copies` on this connection before it hands any copy over,
                        // and an ack travels target -> hub -> this same connection, behind it.
                        // (Acks owed from a server's previous connection, which could overtake
                        // it, are forgotten when that server reconnects.)
                        let mut awaited = Awaited::unicast(self.delivered_here.contains(&seq));
                        awaited.copies(servers, &self.live);
                        self.awaited.insert(seq, awaited);
                        self.settle_if_reached(seq);
                    }
                }
                Control::Shared { user, elsewhere } => {
                    // Only for a user still here: one who left since needs nothing.
                    if !elsewhere || self.local.contains(&user) {
                        debug!(%user, elsewhere, "user's sessions on other servers");
                        self.shared.set(user, elsewhere);
                    }
                }
                Control::ServerDown { server } => {
                    debug!(%server, "server left the cluster");
                    self.live.remove(&server);
                    let mut reached = Vec::new();
                    for (&seq, awaited) in &mut self.awaited {
                        awaited.server_down(server);
                        reached.extend(awaited.reached().map(|_| seq));
                    }
                    for seq in reached {
                        self.settle_if_reached(seq);
                    }
                }
                Control::Resync => {
                    info!(users = self.local.len(), "hub asked for this server's users again");
                    self.encode_snapshot(out)?;
                    self.encode(out, Control::SnapshotDone)?;
                }
                Control::Located { token, server } => {
                    if let Some((_, answer)) = self.locates.remove(&token) {
                        let _ = answer.send(server);
                    }
                }
                Control::Presence { user, server } => events.push(Event::Presence { user, server }),
                Control::Kick { user, reason } => self.handle_kick(user, reason, out, events)?,
                Control::Drain { target } => {
                    info!(?target, "the hub drains this server");
                    events.push(Event::Drain { target });
                }
                Control::Error { code, message } => {
                    return Err(SessionError::Refused { code, message });
                }
                _ => return Err(SessionError::Unexpected("handshake or login message")),
            },
        }
        Ok(())
    }

    /// Settles a group, broadcast or server frame, or a unicast frame copied to several
    /// servers, once every server it went to acknowledged it.
    fn settle_if_reached(&mut self, seq: u64) {
        if let Some(outcome) = self.awaited.get(&seq).and_then(Awaited::outcome) {
            self.settle(seq, outcome);
        }
    }

    /// The app's event of a group, broadcast or server frame from another server: for the local
    /// members it is for, if any.
    fn fanned_out_event(&mut self, raw: &RawFrame) -> Result<Option<Event>, ProtocolError> {
        let route = raw.route()?;
        let payload = raw.as_bytes().slice(LENGTH_PREFIX_LEN + route.payload_offset..);
        let except = route.kind.excludes_sender().then_some(route.sender);
        let event = match route.kind {
            DataKind::Server => {
                return Ok(Some(Event::ServerMessage { from: route.origin, payload }));
            }
            DataKind::Group | DataKind::GroupExceptSender => {
                let to = self.groups.lock().expect("groups lock").members(route.recipient, except);
                if to.is_empty() {
                    return Ok(None);
                }
                let group = GroupId::new(route.recipient)?;
                Event::GroupMessage { group, from: UserId::new(route.sender)?, to, payload }
            }
            _ => {
                let to: Vec<UserId> = self
                    .local
                    .iter()
                    .filter(|user| Some(user.key().as_str()) != except)
                    .map(|user| user.key().clone())
                    .collect();
                if to.is_empty() {
                    return Ok(None);
                }
                Event::Broadcast { from: UserId::new(route.sender)?, to, payload }
            }
        };
        Ok(Some(event))
    }

    /// Makes the app's event of a data frame, sharing the ids it already holds.
    fn event(&mut self, raw: &RawFrame, kind: DataKind) -> Result<Event, ProtocolError> {
        let route = raw.route()?;
        let payload =
            raw.as_bytes().slice(acms_protocol::LENGTH_PREFIX_LEN + route.payload_offset..);
        let (local, remote) = match kind {
            DataKind::Undeliverable => (route.sender, route.recipient),
            _ => (route.recipient, route.sender),
        };
        let local = UserId::new(local)?;
        let remote = match &self.last_sender {
            Some(user) if user.as_str() == remote => user.clone(),
            _ => {
                let user = UserId::new(remote)?;
                self.last_sender = Some(user.clone());
                user
            }
        };
        Ok(match kind {
            DataKind::Undeliverable => Event::Undeliverable {
                from: local,
                to: remote,
                payload,
                reason: UndeliverableReason::Offline,
            },
            _ => Event::Message { from: remote, to: local, payload },
        })
    }

    /// The app's event of a message refused by its recipient's server: the recipient field
    /// names the original sender (a user of this server), the sender field whom it was for.
    fn refused_event(&self, raw: &RawFrame) -> Result<Event, ProtocolError> {
        let route = raw.route()?;
        let payload = raw.as_bytes().slice(LENGTH_PREFIX_LEN + route.payload_offset..);
        let Refusal { reason, payload } = Refusal::decode(&payload)?;
        Ok(Event::Undeliverable {
            from: UserId::new(route.recipient)?,
            to: UserId::new(route.sender)?,
            payload,
            reason: UndeliverableReason::Refused(reason),
        })
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
        if self.local.contains(&from) {
            let reason = UndeliverableReason::Refused(Refusal::new(&reason, Bytes::new()).reason);
            self.deliver(vec![Event::Undeliverable { from, to, payload, reason }]);
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
        data.seq = self.seq();
        self.refusals.insert(data.seq);
        self.refusing.fetch_add(LENGTH_PREFIX_LEN + data.encoded_len(), Ordering::AcqRel);
        Frame::Data(data).encode(self.send_limit, &mut self.staging)
    }

    /// Hands events to the app, after any already waiting for room, without waiting itself; while
    /// the app is behind they wait too (and reading stops). Returns whether the app has them now.
    ///
    /// Waiting events are never replaced: their frames are counted as received, so a frame sent
    /// again would be dropped as a duplicate. (Frames that come with a `Welcome` are handled
    /// while events of the last session may still wait.)
    fn deliver(&mut self, mut events: Vec<Event>) -> bool {
        if let Some(pending) = &mut self.pending_events {
            pending.append(&mut events);
            return false;
        }
        match self.events.try_send(events) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(events)) => {
                self.pending_events = Some(events);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.note_events_dropped();
                true
            }
        }
    }

    fn note_events_dropped(&mut self) {
        if !self.events_dropped {
            self.events_dropped = true;
            warn!("events receiver dropped: inbound messages are discarded");
        }
    }
}

/// The error for a handshake answer that is not the one expected.
fn refusal(answer: Control) -> SessionError {
    match answer {
        Control::Error { code, message } => SessionError::Refused { code, message },
        _ => {
            SessionError::Unexpected("expected Welcome, or Challenge when this server has a secret")
        }
    }
}

//! One AS connection: the handshake, then a reader loop that registers users and relays frames,
//! beside a writer task that drains the connection's [`Outbox`].
//!
//! The reader routes every whole frame one socket read brought where it lies in the read buffer,
//! stages runs of frames by destination server, and hands each destination its frames as one batch
//! before reading again.
//!
//! Nothing but the handshake is accepted before the AS is authenticated: TLS when configured,
//! `Hello`, then the shared-secret challenge (or, with no secret, the loopback rule), all within
//! one deadline and under a small frame limit.

mod peer;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use acms_protocol::{
    Ack, Challenge, Codec, Control, DataKind, ErrorCode, Frame, FrameKind, GroupId,
    HANDSHAKE_MAX_FRAME_LEN, Hello, LENGTH_PREFIX_LEN, Nonce, PROTOCOL_VERSION, ProtocolError,
    Prover, RawFrame, Route, ServerEpoch, ServerId, UserDigest, UserId, Welcome,
};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, warn};

use crate::auth::{Admission, admit_without_secret};
use crate::forwarded::Marks;
use crate::outbox::{Outbox, PushError, write_loop};
use crate::presence;
use crate::registry::{Change, Departure, Placed, RelayError, Relayed, ServerInfo};
use crate::state::HubState;
use crate::stats::{FanOut, SAMPLE_EVERY};
use crate::tls::{self, ReadHalf, Refusal, ServerTls};

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The AS closed its side.
    PeerClosed,
    /// The hub is shutting down.
    Shutdown,
    /// This AS's queue passed its limit (the relay that found it logged the figures).
    SlowConsumer,
    /// The socket failed.
    Io(io::Error),
    /// The AS broke the protocol or was refused; it is told why before the hub closes.
    Refused { code: ErrorCode, reason: String },
    /// The AS refused the hub during the handshake (it could not verify the hub's proof).
    RefusedByPeer { code: ErrorCode, message: String },
    /// A registered AS sent nothing for `keepalive_timeout`: the network may be cut silently.
    Idle,
    /// This hub went standby: its app servers are sent to the active one.
    Standby,
    /// A peer hub's status link ended.
    PeerHub,
}

impl Close {
    fn refused(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Refused { code, reason: reason.into() }
    }

    /// Names a failed proof: a refusal left without a reason becomes "authentication failed:
    /// `why`"; anything else passes unchanged.
    fn or_refused(self, why: &str) -> Self {
        match self {
            Self::Refused { code, reason } if reason.is_empty() => {
                Self::refused(code, format!("authentication failed: {why}"))
            }
            other => other,
        }
    }
}

impl From<ProtocolError> for Close {
    fn from(err: ProtocolError) -> Self {
        match (err.code(), err) {
            (_, ProtocolError::Io(err)) => Self::Io(err),
            (Some(code), err) => Self::refused(code, err.to_string()),
            (None, err) => Self::refused(ErrorCode::Malformed, err.to_string()),
        }
    }
}

/// Room made in the read buffer before each read: many small frames per system call.
const READ_CHUNK: usize = 64 * 1024;

struct Connection {
    shared: Arc<HubState>,
    reader: ReadHalf,
    read_buf: BytesMut,
    codec: Codec,
    /// Consecutive unicast frames at the start of `read_buf` bound for one server.
    run: Run,
    /// Relayed frames of the current read, by destination, not yet handed over.
    staged: Vec<Staged>,
    /// Destinations above their high water after the last hand-over: read nothing until they drain.
    backed_up: Vec<(ServerId, Outbox)>,
    /// What this AS forwarded to each destination's connection, as recorded there.
    marks: Marks,
    outbox: Outbox,
    /// Cancelled by hub shutdown or by the slow-consumer rule.
    closer: CancellationToken,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// When the whole handshake, TLS included, must be done.
    handshake_deadline: Instant,
    /// TLS verified a client certificate of the peer.
    client_verified: bool,
    /// Set once registered.
    server: Option<ServerId>,
    /// The connection opened with `PeerHello`: a peer hub, not an app server.
    peer_hub: bool,
    /// The users this AS has online, so they leave the directory with it: the hub's record of
    /// what the AS claims. A user who moved to another AS since stays in it while this AS still
    /// claims them (the directory lists them under the other AS only), so the digests agree.
    users: HashSet<UserId>,
    /// The digest of `users`, kept in step with it, compared with the AS's `Digest`.
    digest: UserDigest,
    /// The record being replaced, after a `Resync` and until the snapshot that answers it is
    /// done; `Digest`s are not compared meanwhile, as those sent before the AS saw the `Resync`
    /// are still on their way.
    resyncing: Option<HashSet<UserId>>,
    /// Users of this AS's previous connection, kept in the directory until its snapshot is done.
    stale_users: HashSet<UserId>,
    /// The AS said `Bye`: it leaves for good, with no grace to come back.
    leaving: bool,
    /// A frame of this AS for a user nobody had yet was dropped in the settle window: its
    /// sequence number. Every later frame is dropped too until the AS sends again from there
    /// (its stream goes back to a number no greater), so nothing overtakes the dropped frame.
    holding_from: Option<u64>,
    /// The users this AS watches, so its watches leave with it.
    watching: HashSet<UserId>,
    /// The groups named since registration, or since a `Resync`, until the snapshot is done:
    /// the AS's groups not among them are then gone.
    snapshot_groups: Option<HashSet<GroupId>>,
    /// Policy `multi` and the settle window may still be open: unicast frames are held in it.
    /// Cleared the first time the window is found closed, so later frames pay one test.
    multi_settling: bool,
    /// Socket reads so far, for sampling the relay latency.
    reads: u32,
}

/// What a connection turned out to be once its handshake was done.
enum Opened {
    /// A registered app server.
    Server,
    /// A peer hub watching this one; the codec of the handshake stays in force, and the
    /// peer-link slot is held as long as the link.
    Peer(Codec, OwnedSemaphorePermit),
}

/// Frames routed to one server that still lie at the start of the read buffer.
#[derive(Debug, Default)]
struct Run {
    target: Option<ServerId>,
    /// Bytes of the run, length prefixes included.
    len: usize,
    /// Data frames in the run; acks are not counted.
    frames: usize,
    /// Lowest sequence number of its data frames (acks have none). Usually the first, but an
    /// origin sending again goes back to a lower number within one read.
    lowest_seq: Option<u64>,
}

impl Run {
    /// Adds a data frame with its sequence number, or an ack without one.
    fn extend(&mut self, target: ServerId, len: usize, seq: Option<u64>) {
        self.target = Some(target);
        self.len += len;
        self.frames += usize::from(seq.is_some());
        self.lowest_seq = lowest(self.lowest_seq, seq);
    }
}

/// The lower of two optional sequence numbers.
#[inline]
fn lowest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Frames of one read handed to one server together: slices of the read buffer, in order.
#[derive(Debug)]
struct Staged {
    target: ServerId,
    chunks: Vec<Bytes>,
    frames: usize,
    lowest_seq: Option<u64>,
}

/// Serves one AS from its first byte to its last, then takes it and its users out of the cluster.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<HubState>,
    shutdown: CancellationToken,
) {
    let handshake_deadline = Instant::now() + shared.config.handshake_timeout;
    let (outbox, inbox) =
        Outbox::new(shared.config.max_pending_bytes, shared.config.high_water_bytes);
    // Plain TCP keeps the socket's own halves, with no lock between reader and writer.
    let (reader, writer, client_verified) = match &shared.tls {
        None => {
            let (read_half, write_half) = stream.into_split();
            (
                ReadHalf::Plain(read_half),
                tokio::spawn(write_loop(inbox, write_half, shared.config.keepalive_interval)),
                false,
            )
        }
        Some(tls) => {
            let Some(stream) =
                accept_tls(tls, stream, &shared, handshake_deadline, &shutdown).await
            else {
                return;
            };
            let client_verified = stream.get_ref().1.peer_certificates().is_some();
            let (read_half, write_half) = tokio::io::split(stream);
            (
                ReadHalf::Tls(read_half),
                tokio::spawn(write_loop(inbox, write_half, shared.config.keepalive_interval)),
                client_verified,
            )
        }
    };
    let grace = shared.config.shutdown_grace;
    let mut conn = Connection {
        reader,
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        codec: Codec::new(shared.config.max_frame_len),
        run: Run::default(),
        staged: Vec::new(),
        backed_up: Vec::new(),
        marks: Marks::default(),
        outbox,
        closer: shutdown.child_token(),
        shutdown,
        peer,
        handshake_deadline,
        client_verified,
        server: None,
        peer_hub: false,
        users: HashSet::new(),
        digest: UserDigest::default(),
        resyncing: None,
        stale_users: HashSet::new(),
        leaving: false,
        holding_from: None,
        watching: HashSet::new(),
        snapshot_groups: None,
        reads: 0,
        multi_settling: shared.registry.multi(),
        shared,
    };
    let close = conn.run().await;
    // A peer that stopped reading would hold its writer for the whole grace period.
    let grace = if matches!(close, Close::SlowConsumer) { Duration::ZERO } else { grace };
    if let Some((server, departure)) = conn.finish(close) {
        tokio::spawn(expire_later(conn.shared.clone(), server, departure));
    }
    drop(conn);
    // Every Outbox of this connection is gone: the writer flushes what is queued and exits.
    let abort = writer.abort_handle();
    match tokio::time::timeout(grace, writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => debug!(error = %err, "write side failed"),
        Ok(Err(err)) => warn!(error = %err, "writer task failed"),
        Err(_) => {
            abort.abort();
            debug!(?grace, "peer did not take its last frames in time; dropped");
        }
    }
}

/// Ends the grace of an AS that went away, unless it came back, and asks the servers whose
/// frames to it were held, or in flight when its connection broke, to send them again: they now
/// reach their recipients elsewhere, or come back undeliverable.
async fn expire_later(shared: Arc<HubState>, server: ServerId, departure: u64) {
    tokio::time::sleep(shared.config.reconnect_grace).await;
    if let Some((held, left)) = shared.registry.expire(server, departure) {
        info!(%server, "app server did not come back in time; its users are offline");
        presence::left(&shared, left);
        shared.server_down(server);
        shared.ask_to_resend(held);
    }
}

/// Ends the settle window: frames held for users nobody had are sent again, to be delivered or
/// returned as undeliverable.
async fn end_settle(shared: Arc<HubState>) {
    if let Some(ends) = shared.registry.settle_ends() {
        // Taken only once the window is over by the same clock `hold_unclaimed` asks, so no
        // frame can be held after this take.
        while shared.registry.settling() {
            tokio::time::sleep_until(ends.into()).await;
            tokio::task::yield_now().await;
        }
    }
    shared.ask_to_resend(shared.registry.take_unclaimed());
    presence::settled(&shared);
}

/// The TLS handshake, within the connection's handshake deadline. A failure is logged and counted
/// here; a plain-TCP peer is told in plain frames that the port needs TLS.
async fn accept_tls(
    tls: &ServerTls,
    stream: TcpStream,
    shared: &HubState,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return None,
        accepted = tokio::time::timeout_at(deadline, tls.accept(stream)) => accepted,
    };
    let refusal = match accepted {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(refusal)) => refusal,
        Err(_) => {
            shared.stats.refused();
            warn!(timeout = ?shared.config.handshake_timeout, "no TLS handshake in time; closing connection");
            return None;
        }
    };
    shared.stats.refused();
    match refusal {
        Refusal::Closed => {
            info!("peer closed before the TLS handshake");
            None
        }
        Refusal::Failed(err) => {
            shared.stats.unauthorized();
            let error = crate::tls::explain_failure(&err);
            warn!(%error, "TLS handshake failed; closing connection");
            None
        }
        Refusal::NotTls(mut stream) => {
            shared.stats.unauthorized();
            let reason = "this hub's transfer port requires TLS: configure TLS on the app server \
                          (ClusterBuilder::tls, or --tls-ca for im-server)";
            warn!(code = ?ErrorCode::Unauthorized, reason, "plain-TCP peer on the TLS port; closing connection");
            // Take what the peer sent (its Hello) first: closing a socket with unread bytes
            // resets it, and the peer could lose the explanation.
            let mut scratch = [0; HANDSHAKE_MAX_FRAME_LEN];
            while matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {}
            let refusal = Control::error(ErrorCode::Unauthorized, reason);
            if let Ok(bytes) = Frame::Control(refusal).to_bytes(HANDSHAKE_MAX_FRAME_LEN) {
                let _ = tokio::time::timeout_at(deadline, async {
                    stream.write_all(&bytes).await?;
                    stream.shutdown().await
                })
                .await;
            }
            None
        }
    }
}

/// Refuses a peer (`who`: "server", "peer hub") that speaks another protocol version.
fn check_version(theirs: u16, who: &str) -> Result<(), Close> {
    if theirs == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Close::refused(
        ErrorCode::VersionMismatch,
        format!("hub speaks protocol version {PROTOCOL_VERSION}, {who} speaks {theirs}"),
    ))
}

/// Refuses a frame that names another server as its sender: a server speaks only for itself.
fn claimed_by(server: ServerId, claimed: ServerId, what: &str) -> Result<(), Close> {
    if claimed == server {
        return Ok(());
    }
    Err(Close::refused(
        ErrorCode::Malformed,
        format!("{what} claims origin {claimed} on server {server}'s connection"),
    ))
}

impl Connection {
    async fn run(&mut self) -> Close {
        match self.handshake().await {
            Ok(Opened::Server) => {}
            Ok(Opened::Peer(codec, _slot)) => return self.answer_peer(codec).await,
            Err(close) => return close,
        }
        loop {
            if let Err(close) = self.wait_for_receivers().await {
                return close;
            }
            if let Err(close) = self.read_more().await {
                return close;
            }
            self.reads = self.reads.wrapping_add(1);
            let sampled = (self.reads % SAMPLE_EVERY == 0).then(std::time::Instant::now);
            let handled = self.handle_buffered();
            // Hand over what was staged even when a later frame broke the protocol.
            let flushed = self.flush_staged();
            if let Some(started) = sampled {
                self.shared.metrics.relay_latency(started.elapsed());
            }
            if let Err(close) = handled.and(flushed) {
                return close;
            }
        }
    }

    /// Pauses this sender while a server it just fed is above its high water: the pushback that
    /// slows a fast sender to a slow receiver's pace. A receiver that does not drain within
    /// `max_stall` is disconnected rather than allowed to hold its senders up.
    async fn wait_for_receivers(&mut self) -> Result<(), Close> {
        let max_stall = self.shared.config.max_stall;
        for (target, outbox) in std::mem::take(&mut self.backed_up) {
            let drained = tokio::select! {
                _ = self.closer.cancelled() => return Err(self.cancelled()),
                drained = tokio::time::timeout(max_stall, outbox.drained()) => drained,
            };
            if drained.is_err() {
                self.shared.stalled(target, outbox.pending(), max_stall);
            }
        }
        Ok(())
    }

    fn cancelled(&self) -> Close {
        if self.shutdown.is_cancelled() {
            Close::Shutdown
        } else if !self.shared.standby.is_active() {
            Close::Standby
        } else {
            Close::SlowConsumer
        }
    }

    /// Waits for more bytes from the socket, or for the connection to be closed.
    async fn read_more(&mut self) -> Result<(), Close> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        // A registered AS pings when idle, so silence means the path is cut.
        let registered = self.server.is_some();
        let read = tokio::select! {
            _ = self.closer.cancelled() => return Err(self.cancelled()),
            _ = tokio::time::sleep(self.shared.config.keepalive_timeout), if registered => {
                return Err(Close::Idle);
            }
            read = self.reader.read_buf(&mut self.read_buf) => read,
        };
        match read {
            Ok(0) if self.read_buf.is_empty() => Err(Close::PeerClosed),
            Ok(0) => Err(Close::refused(ErrorCode::Malformed, "connection closed inside a frame")),
            Ok(_) => Ok(()),
            Err(err) => Err(Close::Io(err)),
        }
    }

    /// Handles every whole frame in the read buffer.
    ///
    /// Unicast frames are routed where they lie: consecutive frames for the same destination stay
    /// in the buffer until the run ends, then leave it as one slice, so a burst to one server costs
    /// one reference count and one iovec rather than one per frame.
    fn handle_buffered(&mut self) -> Result<(), Close> {
        let result = self.route_buffered();
        // Whatever ended the walk, the frames already routed are handed over.
        self.end_run();
        result
    }

    fn route_buffered(&mut self) -> Result<(), Close> {
        let server = self.server();
        while let Some(len) = self.codec.whole_frame_len(&self.read_buf[self.run.len..])? {
            let start = self.run.len;
            let frame = &self.read_buf[start..start + len];
            let body = &frame[LENGTH_PREFIX_LEN..];
            match FrameKind::from_tag(body[0])? {
                // A refused message goes back to its sender exactly as a message goes to its
                // recipient: the recipient field names them.
                FrameKind::Data(DataKind::Unicast | DataKind::Refused) => {
                    let route = Route::parse(body)?;
                    claimed_by(server, route.origin, "frame")?;
                    let seq = route.seq;
                    match self.holding_from {
                        Some(from) if seq > from => {
                            self.end_run();
                            self.shared.stats.held(1);
                            self.read_buf.advance(len);
                            continue;
                        }
                        Some(_) => self.holding_from = None,
                        None => {}
                    }
                    // Policy `multi`, in the settle window: the user may have sessions on servers
                    // that have not sent their snapshot yet, so the frame waits, like a group's.
                    if self.multi_settling {
                        if self.shared.registry.hold_unclaimed(server, seq) {
                            self.end_run();
                            self.holding_from = Some(seq);
                            self.shared.stats.held(1);
                            self.read_buf.advance(len);
                            continue;
                        }
                        self.multi_settling = false;
                    }
                    let target = match self.shared.registry.route(route.recipient) {
                        // Rare: a user online on several AS (policy `multi`).
                        Some(owner) if owner.multi => {
                            let targets = self.shared.registry.sessions(route.recipient);
                            if targets.len() > 1 {
                                self.end_run();
                                let frame = self.read_buf.split_to(len).freeze();
                                self.stage_copies(frame, seq, targets)?;
                                continue;
                            }
                            targets.first().copied()
                        }
                        owner => owner.map(|owner| owner.server),
                    };
                    if target == Some(server) && self.shared.registry.multi() {
                        // Policy `multi`: the origin sent a message for its own user through the
                        // hub, thinking them shared; their only session is here now. It gets the
                        // frame back (and does not deliver it twice) and learns they are not.
                        if let Ok(user) = UserId::new(route.recipient) {
                            self.shared.tell_shared(server, user, false);
                        }
                    }
                    if target.is_none() || target != self.run.target {
                        self.end_run();
                    }
                    match target {
                        Some(target) => self.run.extend(target, len, Some(seq)),
                        None if self.shared.registry.hold_unclaimed(server, seq) => {
                            self.holding_from = Some(seq);
                            self.shared.stats.held(1);
                            self.read_buf.advance(len);
                        }
                        None => {
                            let frame = self.read_buf.split_to(len).freeze();
                            self.bounce(&[frame])?;
                        }
                    }
                }
                FrameKind::Data(kind) if kind.fans_out() => self.fan_out(len)?,
                FrameKind::Ack => {
                    let (target, from) = Ack::route(body)?;
                    claimed_by(server, from, "ack")?;
                    if target == ServerId::HUB {
                        // Acks of the hub's own pushes end here.
                        self.end_run();
                        let ack = Ack::decode(&self.read_buf[LENGTH_PREFIX_LEN..len])?;
                        self.shared.pushes.acked(&ack);
                        self.read_buf.advance(len);
                        continue;
                    }
                    if Some(target) != self.run.target {
                        self.end_run();
                    }
                    self.run.extend(target, len, None);
                }
                _ => {
                    // What this AS sent before a control message is handed over before its
                    // effects: a `Login` that kicks a user elsewhere must not overtake the
                    // messages for that user read with it.
                    self.end_run();
                    self.flush_staged()?;
                    let raw = self.codec.decode(&mut self.read_buf)?.expect("a whole frame");
                    self.handle_frame(raw)?;
                }
            }
        }
        Ok(())
    }

    /// Takes the current run of frames out of the read buffer and stages it for its destination.
    fn end_run(&mut self) {
        let Run { target: Some(target), len, frames, lowest_seq } = std::mem::take(&mut self.run)
        else {
            return;
        };
        let chunk = self.read_buf.split_to(len).freeze();
        self.stage(target, chunk, frames, lowest_seq);
    }

    /// Adds whole frames to what is handed to `target` after this read, after what it has already.
    fn stage(&mut self, target: ServerId, chunk: Bytes, frames: usize, lowest_seq: Option<u64>) {
        match self.staged.iter_mut().find(|staged| staged.target == target) {
            Some(staged) => {
                staged.chunks.push(chunk);
                staged.frames += frames;
                staged.lowest_seq = lowest(staged.lowest_seq, lowest_seq);
            }
            None => self.staged.push(Staged { target, chunks: vec![chunk], frames, lowest_seq }),
        }
    }

    /// Stages one data frame for each of several AS, as the same bytes: the recipient has a
    /// session on each (policy `multi`). The origin is told `Copies`, as for group fan-out, on
    /// its own queue before any copy is handed over, so it keeps the frame until every one of
    /// those AS acknowledged it (docs/RELIABILITY.md, "Several sessions"). An origin with a
    /// session of the user delivered it there itself: it gets no copy.
    fn stage_copies(
        &mut self,
        frame: Bytes,
        seq: u64,
        mut targets: Vec<ServerId>,
    ) -> Result<(), Close> {
        let origin = self.server();
        targets.retain(|&target| target != origin);
        for &target in &targets {
            self.stage(target, frame.clone(), 1, Some(seq));
        }
        self.send(Control::Copies { seq, servers: targets })
    }

    /// Forwards the group, broadcast or server frame of `len` bytes at the start of the unrouted
    /// buffer to each server that needs it, as the same bytes, in order with the origin's other
    /// frames to that server; and tells the origin which servers those are (`Copies`), so that it
    /// keeps the frame until each has acknowledged it. The origin is never among them: it serves
    /// its own users.
    ///
    /// In the settle window after a hub start the hub cannot know every member or server yet, as
    /// some may not have sent their snapshot: the frame is held like a unicast frame for a user
    /// nobody has, and its origin sends it again when the directory is complete.
    fn fan_out(&mut self, len: usize) -> Result<(), Close> {
        self.end_run();
        let server = self.server();
        let route = Route::parse(&self.read_buf[LENGTH_PREFIX_LEN..len])?;
        claimed_by(server, route.origin, "frame")?;
        let seq = route.seq;
        match self.holding_from {
            Some(from) if seq > from => {
                self.shared.stats.held(1);
                self.read_buf.advance(len);
                return Ok(());
            }
            Some(_) => self.holding_from = None,
            None => {}
        }
        let registry = &self.shared.registry;
        let (counter, targets) = match route.kind {
            DataKind::Group | DataKind::GroupExceptSender => {
                (FanOut::Group, self.shared.groups.servers_of(route.recipient, server))
            }
            DataKind::Server => match route.target_server() {
                Some(target) if target == server || !registry.is_registered(target) => {
                    (FanOut::Server, Vec::new())
                }
                Some(target) => (FanOut::Server, vec![target]),
                None => (FanOut::Server, registry.server_ids(server)),
            },
            _ => (FanOut::Broadcast, registry.server_ids(server)),
        };
        // A server message for a server known now needs nobody else's snapshot.
        let known = route.kind == DataKind::Server
            && !targets.is_empty()
            && route.target_server().is_some();
        if !known && registry.hold_unclaimed(server, seq) {
            self.holding_from = Some(seq);
            self.shared.stats.held(1);
            self.read_buf.advance(len);
            return Ok(());
        }
        let frame = self.read_buf.split_to(len).freeze();
        for &target in &targets {
            self.stage(target, frame.clone(), 1, Some(seq));
        }
        self.shared.stats.fanned_out(counter, targets.len());
        self.send(Control::Copies { seq, servers: targets })
    }

    /// The next handshake message, reading as needed under the small handshake frame limit.
    /// Anything but a control message is refused: the peer is not authenticated yet.
    async fn handshake_message(&mut self, codec: &mut Codec) -> Result<Control, Close> {
        loop {
            if self.shared.tls.is_none() && tls::looks_like_tls(&self.read_buf) {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "the app server speaks TLS but this hub's transfer port is plain TCP: set \
                     [transfer.tls] on the hub, or turn TLS off on the app server",
                ));
            }
            if let Some(raw) = codec.decode(&mut self.read_buf)? {
                return match raw.decode()? {
                    Frame::Control(control) => Ok(control),
                    Frame::Data(_) | Frame::Ack(_) => Err(Close::refused(
                        ErrorCode::Unauthorized,
                        "data or ack frame before authentication: only the handshake is accepted",
                    )),
                };
            }
            self.read_more().await?;
        }
    }

    /// Authenticates and registers the AS, or authenticates a peer hub asking for this hub's
    /// status, all within the handshake deadline, whatever the peer sends.
    async fn handshake(&mut self) -> Result<Opened, Close> {
        let timeout = self.shared.config.handshake_timeout;
        match tokio::time::timeout_at(self.handshake_deadline, self.authenticate()).await {
            Ok(result) => result,
            Err(_) => Err(Close::refused(
                ErrorCode::HandshakeTimeout,
                format!("no complete handshake within {timeout:?}"),
            )),
        }
    }

    async fn authenticate(&mut self) -> Result<Opened, Close> {
        let mut codec = Codec::new(HANDSHAKE_MAX_FRAME_LEN.min(self.codec.max_frame_len()));
        let hello = match self.handshake_message(&mut codec).await? {
            Control::Hello(hello) => hello,
            Control::PeerHello(hello) => {
                let slot = self.authenticate_peer(hello, &mut codec).await?;
                return Ok(Opened::Peer(codec, slot));
            }
            Control::PeerStatus => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "PeerStatus before PeerHello: a peer hub authenticates first, as an app \
                     server does (docs/FAILOVER.md)",
                ));
            }
            _ => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "the first frame must be Hello: only the handshake is accepted before \
                     authentication",
                ));
            }
        };
        check_version(hello.version, "server")?;
        Span::current().record("server", hello.server_id.0);
        if hello.server_id == ServerId::HUB {
            return Err(Close::refused(
                ErrorCode::Malformed,
                format!("server id {} is reserved for the hub itself", ServerId::HUB),
            ));
        }
        let admission = self.check_secret(&hello, &mut codec).await?;
        self.check_active()?;
        let info = ServerInfo {
            id: hello.server_id,
            client_addr: hello.client_addr,
            peer_addr: self.peer,
            connected_at: SystemTime::now(),
            load: None,
            draining: false,
        };
        let client_addr = info.client_addr.clone();
        let id = info.id;
        let welcome = Frame::Control(Control::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            max_frame_len: self.codec.max_frame_len() as u32,
            max_users: u32::try_from(self.shared.config.max_users_per_server).unwrap_or(u32::MAX),
            max_groups: u32::try_from(self.shared.config.max_groups_per_server).unwrap_or(u32::MAX),
        }))
        .to_bytes(self.codec.max_frame_len())?;
        // Queued by the registry before another connection can push to this AS.
        let registration = self
            .shared
            .registry
            .register(info, hello.epoch, self.outbox.clone(), self.closer.clone(), Some(welcome))
            .map_err(|err| Close::refused(ErrorCode::DuplicateServer, err.to_string()))?;
        self.server = Some(id);
        self.stale_users = registration.stale_users;
        self.snapshot_groups = Some(HashSet::new());
        // It may have gone standby since the check above, and closed its servers before this one.
        self.check_active()?;
        info!(
            %client_addr,
            returning = !self.stale_users.is_empty(),
            admitted = %admission,
            "app server registered"
        );
        if registration.first {
            tokio::spawn(end_settle(self.shared.clone()));
        }
        self.outbox.keep_alive();
        let peers = self.shared.registry.peers(id);
        self.send(self.shared.servers(&peers))?;
        // The AS knows the hub's epoch now: the hub's own pushes may reach it.
        self.shared.registry.resent(ServerId::HUB, id);
        let server = ServerEpoch { id, epoch: hello.epoch };
        self.shared.announce_up(peers, server, &registration.resend);
        Ok(Opened::Server)
    }

    /// A standby refuses app servers, naming the active hub, so that they go there.
    fn check_active(&self) -> Result<(), Close> {
        if self.shared.standby.is_active() {
            return Ok(());
        }
        Err(Close::refused(ErrorCode::Unavailable, self.shared.standby.refusal()))
    }

    /// The shared-secret part of the handshake: with a secret on both sides, the hub proves it
    /// over the AS's nonce and challenges the AS with its own; with none on either, the loopback
    /// rule. A secret on one side only is refused, so a misconfiguration shows at once. Says how
    /// the server was admitted.
    /// The shared-secret challenge, the same for an app server and a peer hub but for the labels
    /// each side proves under: this hub proves `ours` over both nonces, then checks the peer's
    /// `theirs`. A proof that does not match is `Close::Refused` with an empty reason, for the
    /// caller to name the peer (`Close::or_refused`).
    pub(super) async fn challenge(
        &mut self,
        codec: &mut Codec,
        secret: &acms_protocol::Secret,
        id: ServerId,
        their_nonce: &Nonce,
        (ours, theirs): (Prover, Prover),
    ) -> Result<(), Close> {
        let nonce = Nonce::random();
        let proof = secret.prove(ours, id, their_nonce, &nonce);
        self.send(Control::Challenge(Challenge { nonce, proof }))?;
        match self.handshake_message(codec).await? {
            Control::Auth { proof } => secret
                .verify(theirs, id, their_nonce, &nonce, &proof)
                .map_err(|_| Close::refused(ErrorCode::Unauthorized, "")),
            Control::Error { code, message } => Err(Close::RefusedByPeer { code, message }),
            _ => Err(Close::refused(
                ErrorCode::Unauthorized,
                "expected Auth: only the handshake is accepted before authentication",
            )),
        }
    }

    async fn check_secret(&mut self, hello: &Hello, codec: &mut Codec) -> Result<Admission, Close> {
        let secret = self.shared.config.secret.clone();
        match (secret, hello.nonce) {
            (Some(secret), Some(as_nonce)) => {
                let provers = (Prover::Hub, Prover::AppServer);
                self.challenge(codec, &secret, hello.server_id, &as_nonce, provers).await.map_err(
                    |close| close.or_refused("the app server's proof does not match the hub's secret (set the same ACMS_SECRET on both)"),
                )?;
                Ok(Admission::by_secret(self.client_verified))
            }
            (Some(_), None) => Err(Close::refused(
                ErrorCode::Unauthorized,
                "this hub requires a shared secret and the app server has none: set ACMS_SECRET \
                 (or `secret` in its config) on the app server, the same as on the hub",
            )),
            (None, Some(_)) => Err(Close::refused(
                ErrorCode::Unauthorized,
                "the app server has a shared secret but this hub has none: set the same \
                 ACMS_SECRET on the hub, or remove it from the app server",
            )),
            (None, None) => admit_without_secret(self.peer, self.client_verified)
                .map_err(|reason| Close::refused(ErrorCode::Unauthorized, reason)),
        }
    }

    fn handle_frame(&mut self, raw: RawFrame) -> Result<(), Close> {
        match raw.kind()? {
            FrameKind::Data(_) | FrameKind::Ack => Err(Close::refused(
                ErrorCode::Malformed,
                "only unicast, group, broadcast, server and ack frames go from an app server to \
                 the hub",
            )),
            FrameKind::Control => match Control::decode(&raw.body()[1..])? {
                Control::Login { users } => self.handle_login(users),
                Control::Logout { users } => {
                    self.handle_logout(&users);
                    Ok(())
                }
                Control::Ping { token } => self.send(Control::Pong { token }),
                Control::Pong { .. } => Ok(()),
                Control::Join { groups } => self.handle_join(groups),
                Control::Leave { groups } => {
                    self.handle_leave(&groups);
                    Ok(())
                }
                Control::SnapshotDone => {
                    self.handle_snapshot_done();
                    // This server's users are in the directory now: frames held for them as
                    // unclaimed are sent again at once, not at the end of the settle window.
                    // After a failover every server registers in it, so this is what lets traffic
                    // flow within milliseconds rather than after the whole window.
                    self.shared.ask_to_resend(self.shared.registry.take_unclaimed());
                    Ok(())
                }
                Control::Digest(digest) => self.handle_digest(digest),
                Control::Load(load) => {
                    self.shared.registry.report_load(self.server(), load);
                    Ok(())
                }
                Control::Resent { server: target } => {
                    self.shared.registry.resent(self.server(), target);
                    Ok(())
                }
                Control::Bye => {
                    self.leaving = true;
                    Ok(())
                }
                Control::Locate { token, user } => {
                    let server = self.shared.registry.locate(user.as_str());
                    self.send(Control::Located { token, server })
                }
                Control::Watch { users } => self.handle_watch(users),
                Control::Unwatch { users } => {
                    for user in users {
                        self.shared.watches.unwatch(self.server(), user.as_str());
                        self.watching.remove(&user);
                    }
                    Ok(())
                }
                Control::Error { code, message } => {
                    warn!(?code, %message, "app server reported an error");
                    Err(Close::PeerClosed)
                }
                Control::Hello(_)
                | Control::Welcome(_)
                | Control::Challenge(_)
                | Control::Auth { .. }
                | Control::PeerStatus
                | Control::PeerHello(_)
                | Control::HubStatus(_) => Err(Close::refused(
                    ErrorCode::Malformed,
                    "handshake message after the handshake",
                )),
                Control::Servers { .. }
                | Control::ServerUp { .. }
                | Control::Resend { .. }
                | Control::Resync
                | Control::Located { .. }
                | Control::Presence { .. }
                | Control::Kick { .. }
                | Control::Copies { .. }
                | Control::ServerDown { .. }
                | Control::Shared { .. }
                | Control::Drain { .. } => Err(Close::refused(
                    ErrorCode::Malformed,
                    "only the hub sends server announcements, resync requests, presence, kicks, \
                     copy lists, shared sessions and drains",
                )),
            },
        }
    }

    /// Hands each destination the frames staged for it, as one batch.
    fn flush_staged(&mut self) -> Result<(), Close> {
        let mut result = Ok(());
        let origin = self.server();
        for Staged { target, chunks, frames, lowest_seq } in std::mem::take(&mut self.staged) {
            let shared = &self.shared;
            let bytes: usize = chunks.iter().map(Bytes::len).sum();
            let marks = Some(&mut self.marks);
            match shared.registry.relay_batch(origin, target, lowest_seq, chunks, marks) {
                Ok(Relayed::Queued(backed_up)) => {
                    shared.stats.relayed(frames, bytes);
                    self.backed_up.extend(backed_up.map(|outbox| (target, outbox)));
                }
                Ok(Relayed::Held) => shared.stats.held(frames),
                Err(RelayError::Gone(chunks)) => result = result.and(self.bounce(&chunks)),
                Err(RelayError::SlowConsumer { pending }) => {
                    // The registry closed the server's queue as it refused the batch.
                    shared.stats.held(frames);
                    shared.count_slow_consumer(Some(target), pending);
                }
            }
        }
        result
    }

    /// Returns unicast (and refused) frames to this AS as undeliverable; each chunk holds whole
    /// frames. Acks among them are dropped: their origin sends its frames again and gets new ones.
    fn bounce(&mut self, chunks: &[Bytes]) -> Result<(), Close> {
        let mut back = Vec::new();
        for chunk in chunks {
            let mut chunk = chunk.clone();
            while !chunk.is_empty() {
                let frame = RawFrame::split_first(&mut chunk)?;
                if matches!(frame.kind()?, FrameKind::Data(DataKind::Unicast | DataKind::Refused)) {
                    self.shared.stats.undeliverable();
                    back.push(frame.with_data_kind(DataKind::Undeliverable)?.into_bytes());
                }
            }
        }
        if back.is_empty() {
            return Ok(());
        }
        self.push_batch(back)
    }

    /// Puts users in the directory. One that would take this AS past `max_users_per_server`
    /// closes the connection: a well-behaved AS never sends it, as it knows the limit from
    /// `Welcome` and refuses such a login itself.
    ///
    /// While a resync runs, a user the replaced record already had is only claimed back if nobody
    /// else has them: they may have moved to another AS since, and a resync must not move them
    /// back (the AS keeps claiming them, and its record keeps them, until it logs them out).
    fn handle_login(&mut self, users: Vec<UserId>) -> Result<(), Close> {
        let server = self.server();
        let limit = self.shared.config.max_users_per_server;
        for user in users {
            if self.users.len() >= limit && !self.users.contains(&user) {
                return Err(Close::refused(
                    ErrorCode::TooManyUsers,
                    format!("a login past this hub's limit of {limit} users per server"),
                ));
            }
            // A user the AS had before (its last connection, or the record a resync replaces)
            // is confirmed, not logged in anew: they may have logged in elsewhere since.
            let confirm = self.stale_users.contains(&user)
                || self.resyncing.as_ref().is_some_and(|old| old.contains(&user));
            let registry = &self.shared.registry;
            let placed = if confirm {
                registry.claim(server, user.clone())
            } else {
                registry.login(server, user.clone())
            };
            match placed {
                Placed::Already => {}
                Placed::Online => {
                    let change = Change { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Joined(alone_until_now) => {
                    // Both sides learn the user is shared; in a snapshot, this AS hears it when
                    // the snapshot is done, with its other shared users.
                    if let Some(other) = alone_until_now {
                        self.shared.tell_shared(other, user.clone(), true);
                    }
                    if self.snapshot_groups.is_none() {
                        self.shared.tell_shared(server, user.clone(), true);
                    }
                    let change = Change { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Moved(previous) => {
                    info!(%user, from = %previous, "user moved to this server; kicking the older session");
                    self.kick(previous, &user, server);
                    let change = Change { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Lost(owner) => {
                    info!(%user, %owner, "user logged in elsewhere meanwhile; kicking this session");
                    self.kick(server, &user, owner);
                }
            }
            if self.users.insert(user.clone()) {
                self.digest.insert(user.as_str());
            }
        }
        Ok(())
    }

    fn handle_logout(&mut self, users: &[UserId]) {
        let server = self.server();
        for user in users {
            let recorded = self.users.remove(user);
            if recorded {
                self.digest.remove(user.as_str());
            }
            let replaced = self.resyncing.as_mut().is_some_and(|old| old.remove(user));
            if recorded || replaced {
                let left = self.shared.registry.logout(server, user.as_str());
                presence::left(&self.shared, left);
            }
        }
    }

    /// Records the groups this AS now has members of. One that would take it past
    /// `max_groups_per_server` closes the connection: a well-behaved AS never sends it, as it
    /// knows the limit from `Welcome` and refuses such a join itself.
    ///
    /// While a snapshot replaces the groups of the last connection, the limit counts the groups
    /// named since it began, so the old set and the new one together stay under twice the limit
    /// until the snapshot is done and the old set goes.
    fn handle_join(&mut self, groups: Vec<GroupId>) -> Result<(), Close> {
        let server = self.server();
        let limit = self.shared.config.max_groups_per_server;
        let refused = || {
            Close::refused(
                ErrorCode::TooManyGroups,
                format!("a join past this hub's limit of {limit} groups per server"),
            )
        };
        for group in groups {
            match self.snapshot_groups.as_mut() {
                Some(kept) => {
                    if kept.len() >= limit && !kept.contains(&group) {
                        return Err(refused());
                    }
                    kept.insert(group.clone());
                    self.shared.groups.join(server, group);
                }
                None => {
                    if !self.shared.groups.join_within(server, group, limit) {
                        return Err(refused());
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the groups this AS no longer has members of.
    fn handle_leave(&mut self, groups: &[GroupId]) {
        let server = self.server();
        for group in groups {
            if let Some(kept) = self.snapshot_groups.as_mut() {
                kept.remove(group);
            }
            self.shared.groups.leave(server, group.as_str());
        }
    }

    /// Ends a snapshot: users of the previous connection, or of the record a resync replaced,
    /// that the AS did not send again are offline.
    fn handle_snapshot_done(&mut self) {
        let server = self.server();
        if let Some(kept) = self.snapshot_groups.take() {
            self.shared.groups.retain(server, &kept);
        }
        let mut gone = std::mem::take(&mut self.stale_users);
        if let Some(old) = self.resyncing.take() {
            gone.extend(old);
            info!(users = self.users.len(), "resync done");
        }
        for user in gone {
            if !self.users.contains(&user) {
                let left = self.shared.registry.logout(server, user.as_str());
                presence::left(&self.shared, left);
            }
        }
        // The AS forgot which of its users are shared when it reconnected: say it again, now that
        // the snapshot has put each of its sessions back (policy `multi` only).
        if self.shared.registry.multi() {
            for user in &self.users {
                let sessions = self.shared.registry.sessions(user.as_str());
                if sessions.len() > 1 && sessions.contains(&server) {
                    self.shared.tell_shared(server, user.clone(), true);
                }
            }
        }
    }

    /// Tells `target` to end its session of `user`, who is now on `winner` (policy `replace`).
    /// If `target` cannot be told now (its connection is closing), its snapshot will claim the
    /// user when it comes back, lose, and be told then.
    fn kick(&self, target: ServerId, user: &UserId, winner: ServerId) {
        let reason = format!("{user} logged in on server {winner}");
        let _told_now_or_at_its_snapshot = self.shared.kick(target, user.clone(), reason);
    }

    /// Adds watches and answers each with the user's current place, so the AS starts right.
    /// The watch list of one AS is bounded like its users, by `max_users_per_server`.
    fn handle_watch(&mut self, users: Vec<UserId>) -> Result<(), Close> {
        let server = self.server();
        let limit = self.shared.config.max_users_per_server;
        for user in users {
            if self.watching.len() >= limit && !self.watching.contains(&user) {
                return Err(Close::refused(
                    ErrorCode::TooManyUsers,
                    format!("a watch past this hub's limit of {limit} watched users per server"),
                ));
            }
            self.shared.watches.watch(server, user.clone());
            self.watching.insert(user.clone());
            let located = self.shared.registry.locate(user.as_str());
            // Offline in the settle window may only mean "not resynced yet": held until it ends.
            if located.is_none()
                && self.shared.registry.settling()
                && self.shared.watches.hold_offline(server, user.clone())
            {
                continue;
            }
            self.send(Control::Presence { user, server: located })?;
        }
        Ok(())
    }

    /// Compares the AS's digest of its users with the hub's record; on a difference, asks the AS
    /// for its whole set again and starts a new record, keeping the old one until the snapshot is
    /// done so that users present in both never leave the directory.
    fn handle_digest(&mut self, theirs: UserDigest) -> Result<(), Close> {
        if self.resyncing.is_some() {
            return Ok(());
        }
        self.shared.stats.digest();
        if theirs == self.digest {
            return Ok(());
        }
        self.shared.stats.resync();
        warn!(
            users = self.digest.count,
            claimed = theirs.count,
            "the hub's record of this app server's users has drifted from its digest; resyncing"
        );
        self.resyncing = Some(std::mem::take(&mut self.users));
        self.snapshot_groups = Some(HashSet::new());
        self.digest = UserDigest::default();
        self.send(Control::Resync)
    }

    fn server(&self) -> ServerId {
        self.server.expect("frames are handled only after registration")
    }

    fn send(&self, control: Control) -> Result<(), Close> {
        let bytes = Frame::Control(control).to_bytes(self.codec.max_frame_len())?;
        self.push(bytes)
    }

    fn push(&self, frame: Bytes) -> Result<(), Close> {
        self.push_batch(vec![frame])
    }

    fn push_batch(&self, frames: Vec<Bytes>) -> Result<(), Close> {
        match self.outbox.push_batch(frames).map_err(|(err, _)| err) {
            Ok(()) => Ok(()),
            Err(PushError::Full { pending }) => {
                // Returning the close ends this connection: the rule applied to its own queue.
                self.shared.count_slow_consumer(self.server, pending);
                Err(Close::SlowConsumer)
            }
            Err(PushError::Closed) => Err(Close::Io(io::ErrorKind::BrokenPipe.into())),
        }
    }

    /// Logs why the connection ended, tells the peer where it helps, and takes the AS out of the
    /// cluster: at once if it said `Bye` or the hub is stopping, otherwise after a grace in which
    /// it may come back (returned, for the caller to end).
    fn finish(&mut self, close: Close) -> Option<(ServerId, u64)> {
        let grace = !self.leaving && !matches!(close, Close::Shutdown);
        match close {
            Close::PeerClosed => info!(users = self.users.len(), "app server disconnected"),
            Close::Io(err) => info!(error = %err, users = self.users.len(), "connection lost"),
            Close::SlowConsumer => info!(users = self.users.len(), "slow consumer disconnected"),
            Close::Shutdown => {
                let _ = self.send(Control::error(ErrorCode::Unavailable, "hub is shutting down"));
            }
            Close::Refused { code, reason } => {
                let stats = &self.shared.stats;
                match code {
                    ErrorCode::TooManyUsers => stats.too_many_users(),
                    _ if code == ErrorCode::HandshakeTimeout || self.server.is_none() => {
                        stats.refused();
                    }
                    _ => stats.protocol_error(),
                }
                if code == ErrorCode::Unauthorized {
                    stats.unauthorized();
                }
                if self.peer_hub {
                    warn!(?code, %reason, "refusing peer hub");
                } else if code == ErrorCode::Unavailable && self.server.is_none() {
                    // A standby turning app servers away is doing its job.
                    info!(?code, %reason, "refusing app server");
                } else {
                    warn!(?code, %reason, "closing connection");
                }
                let _ = self.send(Control::error(code, reason));
            }
            Close::Idle => info!(
                timeout = ?self.shared.config.keepalive_timeout,
                users = self.users.len(),
                "nothing received within keepalive_timeout; closing connection"
            ),
            Close::Standby => {
                info!(
                    users = self.users.len(),
                    "this hub went standby: sending the app server away"
                );
                let reason = self.shared.standby.refusal();
                let _ = self.send(Control::error(ErrorCode::Unavailable, reason));
            }
            Close::PeerHub => debug!("peer hub link closed"),
            Close::RefusedByPeer { code, message } => {
                self.shared.stats.refused();
                if code == ErrorCode::Unauthorized {
                    self.shared.stats.unauthorized();
                }
                warn!(
                    ?code,
                    reason = %message,
                    "app server refused the hub's proof: the secrets differ, or it expects another hub"
                );
            }
        }
        // Frames relayed from now on are held or bounce, and senders paused on this queue resume.
        self.outbox.close();
        let server = self.server.take()?;
        for user in std::mem::take(&mut self.watching) {
            self.shared.watches.unwatch(server, user.as_str());
        }
        let mut users = std::mem::take(&mut self.users);
        users.extend(std::mem::take(&mut self.stale_users));
        users.extend(self.resyncing.take().unwrap_or_default());
        match self.shared.registry.depart(server, users, grace) {
            Departure::Away(departure) => Some((server, departure)),
            Departure::Gone { left, forwarded } => {
                presence::left(&self.shared, left);
                self.shared.server_down(server);
                // An AS that said `Bye` may have left frames unread in its queue or socket: their
                // origins send them again, to reach their recipients elsewhere or come back
                // undeliverable. Not on a hub shutdown: the origins send everything again to the
                // next hub, where the recipients' servers will be back.
                if self.leaving {
                    self.shared.ask_to_resend(forwarded);
                }
                None
            }
        }
    }
}

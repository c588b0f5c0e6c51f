//! One AS connection: the async shell around two synchronous cores (the quinn / quinn-proto
//! split). The shell owns the socket and the clock: it reads, waits and closes; every decision
//! about the bytes is made in a core that a unit test drives without a socket.
//!
//! # Layout
//! - `handshake`: TLS, `Hello`, the shared-secret challenge (or the loopback rule) and the
//!   registration, within one deadline and under a small frame limit; it returns the registered
//!   server's [`Session`], or a peer hub's status link.
//! - `relay`: the relay core: the frames of one socket read routed by their headers, staged by
//!   destination and handed to each destination's queue as one batch.
//! - `session`: the session core: the hub's record of one app server and its control handlers.
//! - here: the reader loop with its `select!`, the writer task, the keepalive deadline, the
//!   pushback waits (for a server here, and for one of another hub whose hub asked for a pause),
//!   a peer hub's status link (answered by `standby`) and the classified close.

mod handshake;
mod relay;
mod session;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use acms_protocol::{Codec, Control, ErrorCode, Frame, ProtocolError, ServerId};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backplane::Pause;
use crate::keepalive::Silence;
use crate::outbox::{Outbox, PushError, write_loop};
use crate::presence;
use crate::state::HubState;
use crate::stats::SAMPLE_EVERY;
use crate::tls::ReadHalf;
use handshake::Opened;
use relay::Relay;
use session::Session;

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

/// This connection's own queue, on which the relay and the session answer their AS (replies,
/// `Copies`, frames bounced as undeliverable). A full queue ends this connection: the
/// slow-consumer rule applied to itself, counted through [`HubState::count_slow_consumer`].
#[derive(Debug, Clone)]
struct OwnQueue {
    outbox: Outbox,
    shared: Arc<HubState>,
    /// The server it serves, once registered: named where the rule is counted.
    server: Option<ServerId>,
    max_frame_len: usize,
}

impl OwnQueue {
    /// The same queue, as the queue of the registered `server`.
    fn registered(&self, server: ServerId) -> Self {
        Self { server: Some(server), ..self.clone() }
    }

    fn send(&self, control: Control) -> Result<(), Close> {
        let bytes = Frame::Control(control).to_bytes(self.max_frame_len)?;
        self.push_batch(vec![bytes])
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
}

/// The shell of one connection: its socket's read side and what ends it.
struct Connection {
    shared: Arc<HubState>,
    reader: ReadHalf,
    read_buf: BytesMut,
    own: OwnQueue,
    /// Cancelled by hub shutdown or by the slow-consumer rule.
    closer: CancellationToken,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// When the whole handshake, TLS included, must be done.
    handshake_deadline: Instant,
    /// TLS verified a client certificate of the peer.
    client_verified: bool,
    /// The connection opened with `PeerHello`: a peer hub, not an app server.
    peer_hub: bool,
    /// The frame limit of this hub (the handshake's is smaller).
    max_frame_len: usize,
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
                handshake::accept_tls(tls, stream, &shared, handshake_deadline, &shutdown).await
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
    let max_frame_len = Codec::new(shared.config.max_frame_len).max_frame_len();
    let own = OwnQueue { outbox, shared: shared.clone(), server: None, max_frame_len };
    let mut conn = Connection {
        reader,
        read_buf: BytesMut::with_capacity(READ_CHUNK),
        own,
        closer: shutdown.child_token(),
        shutdown,
        peer,
        handshake_deadline,
        client_verified,
        peer_hub: false,
        max_frame_len,
        shared,
    };
    let (close, session) = conn.run().await;
    // A peer that stopped reading would hold its writer for the whole grace period.
    let grace = if matches!(close, Close::SlowConsumer) { Duration::ZERO } else { grace };
    if let Some((server, departure)) = conn.finish(close, session) {
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
        presence::left(&shared, server, left);
        if let Some(backplane) = &shared.backplane {
            backplane.server_gone(server);
            if backplane.replica.place(server).is_some_and(|place| place.hub != backplane.me) {
                // It moved to another hub meanwhile: it is not down.
                return;
            }
        }
        shared.server_down(server);
        shared.ask_to_resend(held);
    }
}

/// Ends the settle window: frames held for users nobody had are sent again, to be delivered or
/// returned as undeliverable.
async fn end_settle(shared: Arc<HubState>) {
    if let Some(ends) = shared.registry.settle_ends() {
        while shared.registry.settling() {
            tokio::time::sleep_until(ends.into()).await;
            tokio::task::yield_now().await;
        }
    }
    // Closed for good as the last frames are taken: a relay that judged a frame with an instant
    // from before the end holds nothing after this.
    shared.ask_to_resend(shared.registry.end_settle());
    presence::settled(&shared);
}

impl Connection {
    /// The handshake, then the relay loop of an app server or the status link of a peer hub.
    /// Returns why it ended, with the registered server's session if there was one.
    async fn run(&mut self) -> (Close, Option<Session>) {
        let mut session = match self.handshake().await {
            Ok(Opened::Server(session)) => session,
            Ok(Opened::Failed(session, close)) => return (close, Some(*session)),
            Ok(Opened::Peer(codec, _slot)) => return (self.serve_peer_hub(codec).await, None),
            Err(close) => return (close, None),
        };
        let mut relay = Relay::new(
            self.shared.clone(),
            session.server(),
            self.own.registered(session.server()),
            Codec::new(self.max_frame_len),
        );
        let close = self.relay_loop(&mut relay, &mut session).await;
        (close, Some(*session))
    }

    /// Reads, relays and hands over until the connection ends: the hot path.
    async fn relay_loop(&mut self, relay: &mut Relay, session: &mut Session) -> Close {
        let mut reads: u32 = 0;
        loop {
            if let Err(close) = self.wait_for_receivers(relay.take_backed_up()).await {
                return close;
            }
            if let Err(close) = self.wait_for_hubs(relay.take_paused()).await {
                return close;
            }
            if relay.take_fed_backplane()
                && let Err(close) = self.wait_for_nats().await
            {
                return close;
            }
            session.handle_listen(Instant::now().into_std());
            if let Err(close) = self.read_more(Some(session.silence())).await {
                return close;
            }
            reads = reads.wrapping_add(1);
            // The settle window is judged at the instant of the read; this instant also starts a
            // sampled relay latency.
            let now = std::time::Instant::now();
            let handled = self.handle_read(relay, session, now);
            // Hand over what was staged even when a later frame broke the protocol.
            let flushed = relay.flush();
            if reads % SAMPLE_EVERY == 0 {
                self.shared.metrics.relay_latency(now.elapsed());
            }
            if let Err(close) = handled.and(flushed) {
                return close;
            }
        }
    }

    /// Hands the read buffer to the relay; each control frame it stops at goes to the session,
    /// after everything read before it was handed over.
    fn handle_read(
        &mut self,
        relay: &mut Relay,
        session: &mut Session,
        now: std::time::Instant,
    ) -> Result<(), Close> {
        while let Some(control) = relay.handle_read(&mut self.read_buf, now)? {
            session.handle_frame(control, now)?;
        }
        Ok(())
    }

    /// Pauses this sender while a server it just fed is above its high water: the pushback that
    /// slows a fast sender to a slow receiver's pace. A receiver that does not drain within
    /// `max_stall` is disconnected rather than allowed to hold its senders up.
    async fn wait_for_receivers(
        &mut self,
        backed_up: Vec<(ServerId, Outbox)>,
    ) -> Result<(), Close> {
        let max_stall = self.shared.config.max_stall;
        for (target, outbox) in backed_up {
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

    /// Pauses this sender while a server of another hub it just fed is above its high water, as
    /// that server's hub asked: until it asks to resume, or the pause's deadline (a lost resume
    /// holds nobody for longer).
    async fn wait_for_hubs(&mut self, paused: Vec<(ServerId, Arc<Pause>)>) -> Result<(), Close> {
        for (target, pause) in paused {
            let resumed = tokio::select! {
                _ = self.closer.cancelled() => return Err(self.cancelled()),
                resumed = pause.wait() => resumed,
            };
            if !resumed {
                debug!(slow_server = %target, "no resume from a paused server's hub in time; reading again");
            }
        }
        Ok(())
    }

    /// Pauses this sender, whose frames just went to other hubs, while the queue to NATS is
    /// full: until the publisher takes it under its limit, or the deadline of a wait for credit
    /// (a NATS connection lost for good holds nobody longer).
    async fn wait_for_nats(&mut self) -> Result<(), Close> {
        let Some(backplane) = self.shared.backplane.clone() else { return Ok(()) };
        if !backplane.backlog.is_full() {
            return Ok(());
        }
        backplane.counters.pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until =
            std::time::Instant::now() + crate::backplane::pause_limit(self.shared.config.max_stall);
        let drained = tokio::select! {
            _ = self.closer.cancelled() => return Err(self.cancelled()),
            drained = backplane.backlog.room(until) => drained,
        };
        if !drained {
            debug!("the queue to NATS stayed full; reading again");
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

    /// Waits for more bytes from the socket, or for the connection to be closed. With `silence`
    /// (a registered AS, which pings when idle), nothing by its deadline means the path is cut.
    async fn read_more(&mut self, silence: Option<&Silence>) -> Result<(), Close> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let deadline = silence.map_or_else(std::time::Instant::now, Silence::deadline);
        let read = loop {
            tokio::select! {
                _ = self.closer.cancelled() => return Err(self.cancelled()),
                _ = tokio::time::sleep_until(deadline.into()), if silence.is_some() => {
                    if silence.is_some_and(|silence| silence.is_dead(Instant::now().into_std())) {
                        return Err(Close::Idle);
                    }
                }
                read = self.reader.read_buf(&mut self.read_buf) => break read,
            }
        };
        match read {
            Ok(0) if self.read_buf.is_empty() => Err(Close::PeerClosed),
            Ok(0) => Err(Close::refused(ErrorCode::Malformed, "connection closed inside a frame")),
            Ok(_) => Ok(()),
            Err(err) => Err(Close::Io(err)),
        }
    }

    /// Answers a peer hub's status requests until it goes away or falls silent: the link it
    /// watches this hub over. What to answer is the standby's to say; this only moves it.
    async fn serve_peer_hub(&mut self, mut codec: Codec) -> Close {
        info!("peer hub watching this hub");
        let timeout = self.shared.config.keepalive_timeout;
        let mut request = None;
        loop {
            let servers = self.shared.registry.connected_count();
            let answer = match self.shared.standby.answer_peer(request.as_ref(), servers) {
                Ok(answer) => answer,
                Err(reason) => return Close::refused(ErrorCode::Malformed, reason),
            };
            if let Err(close) = self.own.send(answer) {
                return close;
            }
            match tokio::time::timeout(timeout, self.handshake_message(&mut codec)).await {
                Err(_) => return Close::Idle,
                Ok(Ok(message)) => request = Some(message),
                Ok(Err(Close::PeerClosed)) => return Close::PeerHub,
                Ok(Err(close)) => return close,
            }
        }
    }

    /// Logs why the connection ended, tells the peer where it helps, and takes the AS out of the
    /// cluster: at once if it said `Bye` or the hub is stopping, otherwise after a grace in which
    /// it may come back (returned, for the caller to end).
    fn finish(&mut self, close: Close, session: Option<Session>) -> Option<(ServerId, u64)> {
        let users = session.as_ref().map_or(0, Session::user_count);
        let own = session.as_ref().map_or(&self.own, Session::own);
        let hub_stopping = matches!(close, Close::Shutdown);
        match close {
            Close::PeerClosed => info!(users, "app server disconnected"),
            Close::Io(err) => info!(error = %err, users, "connection lost"),
            Close::SlowConsumer => info!(users, "slow consumer disconnected"),
            Close::Shutdown => {
                let _ = own.send(Control::error(ErrorCode::Unavailable, "hub is shutting down"));
            }
            Close::Refused { code, reason } => {
                let stats = &self.shared.stats;
                match code {
                    ErrorCode::TooManyUsers => stats.too_many_users(),
                    _ if code == ErrorCode::HandshakeTimeout || session.is_none() => {
                        stats.refused();
                    }
                    _ => stats.protocol_error(),
                }
                if code == ErrorCode::Unauthorized {
                    stats.unauthorized();
                }
                if self.peer_hub {
                    warn!(?code, %reason, "refusing peer hub");
                } else if code == ErrorCode::Unavailable && session.is_none() {
                    // A standby turning app servers away is doing its job.
                    info!(?code, %reason, "refusing app server");
                } else {
                    warn!(?code, %reason, "closing connection");
                }
                let _ = own.send(Control::error(code, reason));
            }
            Close::Idle => info!(
                timeout = ?self.shared.config.keepalive_timeout,
                users,
                "nothing received within keepalive_timeout; closing connection"
            ),
            Close::Standby => {
                info!(users, "this hub went standby: sending the app server away");
                let reason = self.shared.standby.refusal();
                let _ = own.send(Control::error(ErrorCode::Unavailable, reason));
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
        self.own.outbox.close();
        session?.handle_close(hub_stopping)
    }
}

#[cfg(test)]
mod tests;

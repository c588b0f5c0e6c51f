//! One AS connection: the handshake, then a reader loop that registers users and relays frames,
//! beside a writer task that drains the connection's [`Outbox`].

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use acms_protocol::{
    Codec, Control, DataKind, ErrorCode, Frame, FrameKind, PROTOCOL_VERSION, ProtocolError,
    RawFrame, ServerId, UserId, Welcome,
};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Span, debug, info, warn};

use crate::config::HubConfig;
use crate::outbox::{Outbox, PushError, write_loop};
use crate::registry::{Registry, Relay, ServerInfo};
use crate::stats::Stats;

/// What every connection of a hub shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: HubConfig,
    pub(crate) registry: Registry,
    pub(crate) stats: Stats,
}

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
}

impl Close {
    fn refused(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self::Refused {
            code,
            reason: reason.into(),
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

struct Connection {
    shared: Arc<Shared>,
    reader: FramedRead<OwnedReadHalf, Codec>,
    outbox: Outbox,
    /// Cancelled by hub shutdown or by the slow-consumer rule.
    closer: CancellationToken,
    shutdown: CancellationToken,
    peer: SocketAddr,
    /// Set once registered.
    server: Option<ServerId>,
    /// The users this AS has online, so they leave the directory with it.
    users: HashSet<UserId>,
}

/// Serves one AS from its first byte to its last, then takes it and its users out of the cluster.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let (read_half, write_half) = stream.into_split();
    let (outbox, inbox) = Outbox::new(shared.config.max_pending_bytes);
    let writer = tokio::spawn(write_loop(inbox, write_half));
    let grace = shared.config.shutdown_grace;
    let mut conn = Connection {
        reader: FramedRead::new(read_half, Codec::new(shared.config.max_frame_len)),
        shared,
        outbox,
        closer: shutdown.child_token(),
        shutdown,
        peer,
        server: None,
        users: HashSet::new(),
    };
    let close = conn.run().await;
    conn.finish(close);
    drop(conn);
    // Every Outbox of this connection is gone: the writer flushes what is queued and exits.
    match tokio::time::timeout(grace, writer).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => debug!(error = %err, "write side failed"),
        Ok(Err(err)) => warn!(error = %err, "writer task failed"),
        Err(_) => debug!(?grace, "peer did not take its last frames in time; dropped"),
    }
}

impl Connection {
    async fn run(&mut self) -> Close {
        if let Err(close) = self.handshake().await {
            return close;
        }
        loop {
            let frame = tokio::select! {
                _ = self.closer.cancelled() => {
                    return if self.shutdown.is_cancelled() { Close::Shutdown } else { Close::SlowConsumer };
                }
                frame = self.reader.next() => frame,
            };
            let result = match frame {
                None => return Close::PeerClosed,
                Some(Err(err)) => Err(err.into()),
                Some(Ok(raw)) => self.handle_frame(raw),
            };
            if let Err(close) = result {
                return close;
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), Close> {
        let deadline = self.shared.config.handshake_timeout;
        let first = tokio::select! {
            _ = self.closer.cancelled() => return Err(Close::Shutdown),
            first = tokio::time::timeout(deadline, self.reader.next()) => first,
        };
        let raw = match first {
            Err(_) => {
                return Err(Close::refused(
                    ErrorCode::HandshakeTimeout,
                    format!("no Hello within {deadline:?}"),
                ));
            }
            Ok(None) => return Err(Close::PeerClosed),
            Ok(Some(raw)) => raw?,
        };
        let Frame::Control(Control::Hello(hello)) = raw.decode()? else {
            return Err(Close::refused(
                ErrorCode::Malformed,
                "the first frame must be Hello",
            ));
        };
        if hello.version != PROTOCOL_VERSION {
            return Err(Close::refused(
                ErrorCode::VersionMismatch,
                format!(
                    "hub speaks protocol version {PROTOCOL_VERSION}, server speaks {}",
                    hello.version
                ),
            ));
        }
        let info = ServerInfo {
            id: hello.server_id,
            client_addr: hello.client_addr,
            peer_addr: self.peer,
            connected_at: SystemTime::now(),
        };
        Span::current().record("server", info.id.0);
        let client_addr = info.client_addr.clone();
        self.shared
            .registry
            .register(info, self.outbox.clone(), self.closer.clone())
            .map_err(|err| Close::refused(ErrorCode::DuplicateServer, err.to_string()))?;
        self.server = Some(hello.server_id);
        info!(%client_addr, "app server registered");
        self.send(Control::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            max_frame_len: self.reader.decoder().max_frame_len() as u32,
        }))
    }

    fn handle_frame(&mut self, raw: RawFrame) -> Result<(), Close> {
        match raw.kind()? {
            FrameKind::Data(DataKind::Unicast) => self.relay(&raw),
            FrameKind::Data(DataKind::Undeliverable) => Err(Close::refused(
                ErrorCode::Malformed,
                "undeliverable frames only go from the hub to an app server",
            )),
            FrameKind::Control => match Control::decode(&raw.body()[1..])? {
                Control::Login { users } => {
                    self.handle_login(users);
                    Ok(())
                }
                Control::Logout { users } => {
                    self.handle_logout(&users);
                    Ok(())
                }
                Control::Ping { token } => self.send(Control::Pong { token }),
                Control::Pong { .. } => Ok(()),
                Control::Error { code, message } => {
                    warn!(?code, %message, "app server reported an error");
                    Err(Close::PeerClosed)
                }
                Control::Hello(_) | Control::Welcome(_) => Err(Close::refused(
                    ErrorCode::Malformed,
                    "handshake message after the handshake",
                )),
            },
        }
    }

    fn relay(&mut self, raw: &RawFrame) -> Result<(), Close> {
        let route = raw.route()?;
        let server = self.server();
        if route.origin != server {
            return Err(Close::refused(
                ErrorCode::Malformed,
                format!(
                    "frame claims origin {} on server {server}'s connection",
                    route.origin
                ),
            ));
        }
        let shared = &self.shared;
        match shared
            .registry
            .relay(route.recipient, raw.as_bytes().clone())
        {
            Relay::Queued(_) => {
                shared.stats.relayed(raw.as_bytes().len());
                Ok(())
            }
            Relay::Offline => self.bounce(raw),
            Relay::SlowConsumer { server, pending } => {
                shared.stats.slow_consumer();
                warn!(slow_server = %server, pending, "slow consumer: disconnecting it");
                self.bounce(raw)
            }
        }
    }

    /// Returns a unicast frame to this AS as undeliverable.
    fn bounce(&mut self, raw: &RawFrame) -> Result<(), Close> {
        self.shared.stats.undeliverable();
        let back = raw.with_data_kind(DataKind::Undeliverable)?;
        self.push(back.into_bytes())
    }

    fn handle_login(&mut self, users: Vec<UserId>) {
        let server = self.server();
        for user in users {
            if let Some(previous) = self.shared.registry.login(server, user.clone()) {
                info!(%user, from = %previous, "user moved to this server");
            }
            self.users.insert(user);
        }
    }

    fn handle_logout(&mut self, users: &[UserId]) {
        let server = self.server();
        for user in users {
            if self.users.remove(user) {
                self.shared.registry.logout(server, user.as_str());
            }
        }
    }

    fn server(&self) -> ServerId {
        self.server
            .expect("frames are handled only after registration")
    }

    fn send(&self, control: Control) -> Result<(), Close> {
        let bytes = Frame::Control(control).to_bytes(self.reader.decoder().max_frame_len())?;
        self.push(bytes)
    }

    fn push(&self, bytes: bytes::Bytes) -> Result<(), Close> {
        match self.outbox.push(bytes) {
            Ok(()) => Ok(()),
            Err(PushError::Full { pending }) => {
                self.shared.stats.slow_consumer();
                warn!(pending, "slow consumer: disconnecting it");
                Err(Close::SlowConsumer)
            }
            Err(PushError::Closed) => Err(Close::Io(io::ErrorKind::BrokenPipe.into())),
        }
    }

    /// Logs why the connection ended, tells the peer where it helps, and takes the AS and its
    /// users out of the cluster.
    fn finish(&mut self, close: Close) {
        match close {
            Close::PeerClosed => info!(users = self.users.len(), "app server disconnected"),
            Close::Io(err) => info!(error = %err, users = self.users.len(), "connection lost"),
            Close::SlowConsumer => info!(users = self.users.len(), "slow consumer disconnected"),
            Close::Shutdown => {
                let _ = self.send(Control::error(
                    ErrorCode::Unavailable,
                    "hub is shutting down",
                ));
            }
            Close::Refused { code, reason } => {
                if code == ErrorCode::HandshakeTimeout || self.server.is_none() {
                    self.shared.stats.refused();
                } else {
                    self.shared.stats.protocol_error();
                }
                warn!(?code, %reason, "closing connection");
                let _ = self.send(Control::error(code, reason));
            }
        }
        if let Some(server) = self.server.take() {
            self.shared.registry.unregister(server, &self.users);
        }
    }
}

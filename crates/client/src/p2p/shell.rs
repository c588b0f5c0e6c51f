//! [`Paths`]: the async shell around the [`Engine`]. It owns the UDP socket (handed to a quinn
//! endpoint after the probe), sends the punch datagrams, dials and accepts QUIC connections, runs
//! one reader and one writer task per connection, and feeds what happens to the engine with the
//! time. What the engine wants written to the server, and the messages it delivers, come out of
//! [`Paths::next`] for the client's own loop.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::engine::{ConnId, Engine, EngineConfig, Output, Path};
use super::probe;
use super::quic::{self, Allowed, Identity, QuicError};
use crate::paths::{Candidate, CandidateKind, DirectLine, Kind, Via};
use crate::{ClientLine, MAX_LINE_LEN, ServerLine};

/// How the direct path runs; every field has a default.
#[derive(Debug, Clone)]
pub struct PathsConfig {
    /// The engine's settings (on or off, punch timeout, bounds).
    pub engine: EngineConfig,
    /// How often an open direct path sends a keepalive.
    pub keepalive: Duration,
    /// How long a direct path may stay silent before it counts as broken.
    pub idle_timeout: Duration,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// What the client's loop has to do.
#[derive(Debug)]
pub enum PathsEvent {
    /// Write this line to the server.
    ToServer(ClientLine),
    /// A message arrived: text for the user, or a file-transfer message.
    Deliver {
        /// Who sent it.
        from: String,
        /// The path it came by.
        via: Via,
        /// Text or file transfer.
        kind: Kind,
        /// What it says.
        body: String,
    },
    /// A problem to tell the user on stderr (no UDP socket, a bad line on a direct path).
    Notice(String),
    /// The path to `peer` changed (told to the user with `--show-path` only, so that the
    /// default output stays as it was without direct paths).
    PathChanged {
        /// The peer.
        peer: String,
        /// The path now in use.
        path: Path,
    },
}

/// What the connection tasks report.
enum ShellEvent {
    Connected {
        peer: String,
        conn: ConnId,
        writer: mpsc::UnboundedSender<String>,
        connection: quinn::Connection,
    },
    Line {
        peer: String,
        conn: ConnId,
        line: String,
    },
    Closed {
        peer: String,
        conn: ConnId,
        reason: String,
    },
}

/// A direct connection the shell keeps for the engine.
struct Conn {
    writer: mpsc::UnboundedSender<String>,
    connection: quinn::Connection,
}

/// The QUIC side, when the direct path is on.
struct Direct {
    endpoint: quinn::Endpoint,
    /// The same socket as the endpoint's, for the punch datagrams.
    punch: Arc<UdpSocket>,
    identity: Arc<Identity>,
    allowed: Allowed,
}

/// The direct path of one client, and the server path it falls back on.
pub struct Paths {
    engine: Engine,
    direct: Option<Direct>,
    candidates: Vec<Candidate>,
    events: mpsc::Receiver<ShellEvent>,
    report: mpsc::Sender<ShellEvent>,
    conns: HashMap<ConnId, Conn>,
    punches: HashMap<String, CancellationToken>,
    next_conn: Arc<AtomicU64>,
    ready: VecDeque<PathsEvent>,
    shutdown: CancellationToken,
    /// The server each peer was last reported on, and this client's: for [`Paths::label`].
    servers: HashMap<String, u32>,
    server: u32,
}

/// A punch datagram: short enough that QUIC drops it unread.
const PUNCH: &[u8] = b"acms";
/// How often punch datagrams go out while a punch lasts.
const PUNCH_EVERY: Duration = Duration::from_millis(100);

impl Paths {
    /// Sets up the direct path for `user`, logged in on the server at `server` (its TCP
    /// address), which answers the probe on `udp_port`. With the engine off, or when the UDP
    /// socket cannot be had, every message goes through the server.
    pub async fn start(
        config: PathsConfig,
        user: &str,
        (server, server_id): (SocketAddr, u32),
        udp_port: Option<u16>,
    ) -> Self {
        let (report, events) = mpsc::channel(1024);
        // This session's numbering: a peer that sees a new epoch starts counting again.
        let epoch = rand::random::<u64>();
        let mut paths = Self {
            engine: Engine::new(config.engine.clone(), user, epoch, String::new()),
            direct: None,
            candidates: Vec::new(),
            events,
            report,
            conns: HashMap::new(),
            punches: HashMap::new(),
            next_conn: Arc::new(AtomicU64::new(1)),
            ready: VecDeque::new(),
            shutdown: CancellationToken::new(),
            servers: HashMap::new(),
            server: server_id,
        };
        if !config.engine.enabled {
            return paths;
        }
        match paths.open(&config, server, udp_port).await {
            Ok(identity) => {
                paths.engine = Engine::new(config.engine, user, epoch, identity);
            }
            Err(err) => {
                warn!(error = %err, "no direct path: cannot open the UDP socket");
                let notice = format!("no direct paths: cannot open the UDP socket: {err}");
                paths.ready.push_back(PathsEvent::Notice(notice));
                paths.engine = Engine::new(
                    EngineConfig { enabled: false, ..config.engine },
                    user,
                    epoch,
                    String::new(),
                );
            }
        }
        paths
    }

    /// Binds the socket, asks the probe, starts the endpoint; returns the certificate's
    /// fingerprint.
    async fn open(
        &mut self,
        config: &PathsConfig,
        server: SocketAddr,
        udp_port: Option<u16>,
    ) -> Result<String, QuicError> {
        let any: SocketAddr = match server.ip() {
            IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(any).await?;
        let port = socket.local_addr()?.port();
        // The address this host uses towards the server: its local candidate.
        let route = std::net::UdpSocket::bind(any)?;
        route.connect(server)?;
        let local = SocketAddr::new(route.local_addr()?.ip(), port);
        self.candidates.push(Candidate { addr: local, kind: CandidateKind::Local });
        if let Some(udp) = udp_port {
            match probe::ask(&socket, SocketAddr::new(server.ip(), udp), Duration::from_millis(500))
                .await
            {
                Some(seen) if seen != local => {
                    self.candidates.push(Candidate { addr: seen, kind: CandidateKind::Reflexive });
                }
                Some(_) => {}
                None => {
                    info!(%server, udp, "no answer from the server's probe: local candidate only")
                }
            }
        }
        let identity = Arc::new(Identity::new(config.keepalive, config.idle_timeout)?);
        let allowed = Allowed::default();
        let socket = socket.into_std()?;
        let punch = Arc::new(UdpSocket::from_std(socket.try_clone()?)?);
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(identity.server_config(allowed.clone())?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        tokio::spawn(accept(
            endpoint.clone(),
            allowed.clone(),
            self.report.clone(),
            self.next_conn.clone(),
            self.shutdown.clone(),
        ));
        let fingerprint = identity.fingerprint.clone();
        self.direct = Some(Direct { endpoint, punch, identity, allowed });
        Ok(fingerprint)
    }

    /// The line that reports this client's candidates to its server (and asks for messages
    /// labelled with their path).
    pub fn candidates_line(&self) -> ClientLine {
        ClientLine::Candidates { candidates: self.candidates.clone() }
    }

    /// The path that carries what this client sends to `peer`.
    pub fn path(&self, peer: &str) -> Path {
        self.engine.path(peer)
    }

    /// The path to `peer` in words, for `/path`: `p2p`, `server` (the peer is on this
    /// client's server), `hub` (on another server), `punching`, or `none yet`.
    pub fn label(&self, peer: &str) -> &'static str {
        match self.engine.path(peer) {
            Path::Direct => "p2p",
            Path::Punching => "punching",
            Path::None => "none yet",
            Path::Server => match self.servers.get(peer) {
                Some(server) if *server != self.server => "hub",
                _ => "server",
            },
        }
    }

    /// Messages not yet sure of their path: waiting for a punch, or sent directly and not
    /// acknowledged. A client that leaves waits for them first.
    pub fn pending(&self) -> usize {
        self.engine.pending()
    }

    /// This client moved to server `server_id` (send it [`Paths::candidates_line`] too).
    pub fn moved(&mut self, server_id: u32) {
        self.server = server_id;
    }

    /// Sends `body` to `to` by the best path.
    pub fn send(&mut self, to: &str, kind: Kind, body: String) {
        self.engine.send(Instant::now(), to, kind, body);
        self.pump();
    }

    /// Whether `line` is one of the direct path's (`REACH`, `INVITE`, `PMSG`), for
    /// [`Paths::handle_line`].
    pub fn takes(line: &ServerLine) -> bool {
        matches!(
            line,
            ServerLine::Reach { .. } | ServerLine::Invite { .. } | ServerLine::Routed { .. }
        )
    }

    /// Whether no punch is under way (nothing to wait for before leaving).
    pub fn idle(&self) -> bool {
        self.engine.poll_timeout().is_none()
    }

    /// Takes one of the server's lines about paths ([`Paths::takes`]); any other is ignored.
    pub fn handle_line(&mut self, line: ServerLine) {
        let now = Instant::now();
        match line {
            ServerLine::Reach { user, server, candidates } => {
                match server {
                    Some(server) => self.servers.insert(user.clone(), server),
                    None => self.servers.remove(&user),
                };
                let candidates = server.map(|_| candidates);
                self.engine.handle_reach(now, &user, candidates);
            }
            ServerLine::Invite { from, invite } => self.engine.handle_invite(now, &from, invite),
            ServerLine::Routed { from, via, number, kind, body } => {
                self.engine.handle_server_message(&from, via, number, kind, body)
            }
            _ => return,
        }
        self.pump();
    }

    /// The next thing for the client's loop to do. Cancel-safe: use it in `select!`.
    pub async fn next(&mut self) -> PathsEvent {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            let deadline = self.engine.poll_timeout();
            tokio::select! {
                Some(event) = self.events.recv() => self.handle_event(event),
                () = sleep_until(deadline) => self.engine.handle_timeout(Instant::now()),
            }
            self.pump();
        }
    }

    /// Closes every direct connection and the endpoint.
    pub fn close(&mut self) {
        self.shutdown.cancel();
        if let Some(direct) = &self.direct {
            direct.endpoint.close(0u32.into(), b"bye");
        }
    }

    fn handle_event(&mut self, event: ShellEvent) {
        let now = Instant::now();
        match event {
            ShellEvent::Connected { peer, conn, writer, connection } => {
                self.conns.insert(conn, Conn { writer, connection });
                self.engine.handle_connected(now, &peer, conn);
            }
            ShellEvent::Line { peer, conn, line } => match line.parse::<DirectLine>() {
                Ok(line) => self.engine.handle_direct(now, &peer, conn, line),
                Err(err) => {
                    warn!(%peer, error = %err, "bad line on the direct path; closing it");
                    let notice = format!("bad line on the direct path from {peer} ({err}); closed");
                    self.ready.push_back(PathsEvent::Notice(notice));
                    if let Some(open) = self.conns.remove(&conn) {
                        open.connection.close(1u32.into(), b"bad line");
                    }
                    self.engine.handle_closed(now, &peer, conn);
                }
            },
            ShellEvent::Closed { peer, conn, reason } => {
                debug!(%peer, conn, %reason, "direct connection closed");
                self.conns.remove(&conn);
                self.engine.handle_closed(now, &peer, conn);
            }
        }
    }

    /// Carries out what the engine decided.
    fn pump(&mut self) {
        while let Some(output) = self.engine.poll_output() {
            match output {
                Output::ToServer(line) => self.ready.push_back(PathsEvent::ToServer(line)),
                Output::Deliver { from, via, kind, body } => {
                    self.ready.push_back(PathsEvent::Deliver { from, via, kind, body })
                }
                Output::Direct { conn, line, .. } => {
                    // A connection already gone reports its close, and the engine resends.
                    if let Some(open) = self.conns.get(&conn) {
                        let _ = open.writer.send(line.to_string());
                    }
                }
                Output::Punch { peer, candidates, deadline } => {
                    self.punch(&peer, &candidates, deadline);
                }
                Output::Accept { peer, candidates, fingerprint, deadline } => {
                    if let Some(direct) = &self.direct {
                        let mut allowed = direct.allowed.lock().unwrap_or_else(|p| p.into_inner());
                        allowed.retain(|_, name| *name != peer);
                        allowed.insert(fingerprint, peer.clone());
                    }
                    self.punch(&peer, &candidates, deadline);
                }
                Output::Dial { peer, candidates, fingerprint, deadline } => {
                    let token = self.punch(&peer, &candidates, deadline);
                    self.dial(peer, candidates, &fingerprint, deadline, token);
                }
                Output::StopPunch { peer } => {
                    if let Some(token) = self.punches.remove(&peer) {
                        token.cancel();
                    }
                    if let Some(direct) = &self.direct {
                        let mut allowed = direct.allowed.lock().unwrap_or_else(|p| p.into_inner());
                        allowed.retain(|_, name| *name != peer);
                    }
                }
                Output::Close { conn } => {
                    if let Some(open) = self.conns.remove(&conn) {
                        open.connection.close(0u32.into(), b"not used");
                    }
                }
                Output::PathChanged { peer, path } => {
                    if path != Path::None {
                        self.ready.push_back(PathsEvent::PathChanged { peer, path });
                    }
                }
            }
        }
    }

    /// Starts sending punch datagrams to `candidates` until the deadline or a stop; returns the
    /// token that stops them (one punch per peer).
    fn punch(
        &mut self,
        peer: &str,
        candidates: &[Candidate],
        deadline: Instant,
    ) -> CancellationToken {
        if let Some(token) = self.punches.get(peer) {
            return token.clone();
        }
        let token = self.shutdown.child_token();
        self.punches.insert(peer.to_owned(), token.clone());
        let Some(direct) = &self.direct else { return token };
        let socket = direct.punch.clone();
        let targets: Vec<SocketAddr> = candidates.iter().map(|candidate| candidate.addr).collect();
        let stop = token.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::from_std(deadline);
            let mut every = tokio::time::interval(PUNCH_EVERY);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => return,
                    _ = every.tick() => {}
                }
                for target in &targets {
                    // A candidate that cannot be reached from here (another LAN) just fails.
                    let _ = socket.send_to(PUNCH, target).await;
                }
            }
        });
        token
    }

    /// Dials every candidate at once, expecting the certificate `fingerprint`; the first
    /// handshake that completes is reported, the others dropped.
    fn dial(
        &mut self,
        peer: String,
        candidates: Vec<Candidate>,
        fingerprint: &str,
        deadline: Instant,
        stop: CancellationToken,
    ) {
        let Some(direct) = &self.direct else { return };
        let config = match direct.identity.client_config(fingerprint) {
            Ok(config) => config,
            Err(err) => return warn!(%peer, error = %err, "cannot dial"),
        };
        let endpoint = direct.endpoint.clone();
        let (report, next_conn) = (self.report.clone(), self.next_conn.clone());
        tokio::spawn(async move {
            let mut attempts = FuturesUnordered::new();
            for candidate in &candidates {
                match endpoint.connect_with(config.clone(), candidate.addr, quic::NAME) {
                    Ok(connecting) => attempts.push(connecting),
                    Err(err) => debug!(%peer, addr = %candidate.addr, error = %err, "cannot dial"),
                }
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            let connection = loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(deadline) => return,
                    attempt = attempts.next() => match attempt {
                        Some(Ok(connection)) => break connection,
                        Some(Err(err)) => debug!(%peer, error = %err, "a dial failed"),
                        None => return,
                    },
                }
            };
            let Ok((mut send, recv)) = connection.open_bi().await else { return };
            if send.write_all(format!("{}\n", DirectLine::Hello).as_bytes()).await.is_err() {
                return;
            }
            let conn = next_conn.fetch_add(1, Ordering::Relaxed);
            run_connection(peer, conn, connection, send, recv, report).await;
        });
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        self.close();
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// Accepts the connections of diallers an invitation named, until `shutdown`.
async fn accept(
    endpoint: quinn::Endpoint,
    allowed: Allowed,
    report: mpsc::Sender<ShellEvent>,
    next_conn: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            () = shutdown.cancelled() => return,
            incoming = endpoint.accept() => match incoming { Some(incoming) => incoming, None => return },
        };
        let (allowed, report, next_conn) = (allowed.clone(), report.clone(), next_conn.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                // Not one an invitation named (the certificate check refused it), or lost.
                Err(err) => return info!(%remote, error = %err, "direct connection refused"),
            };
            let peer = quic::peer_fingerprint(&connection).and_then(|fingerprint| {
                allowed.lock().unwrap_or_else(|p| p.into_inner()).get(&fingerprint).cloned()
            });
            let Some(peer) = peer else {
                return connection.close(1u32.into(), b"not invited");
            };
            let accepted =
                tokio::time::timeout(Duration::from_secs(5), connection.accept_bi()).await;
            let Ok(Ok((send, recv))) = accepted else {
                return connection.close(1u32.into(), b"no stream");
            };
            let conn = next_conn.fetch_add(1, Ordering::Relaxed);
            run_connection(peer, conn, connection, send, recv, report).await;
        });
    }
}

/// Reports a connection open, writes what the engine sends it and reports each line read, until
/// it closes.
async fn run_connection(
    peer: String,
    conn: ConnId,
    connection: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    report: mpsc::Sender<ShellEvent>,
) {
    let (writer, mut lines) = mpsc::unbounded_channel::<String>();
    let connected =
        ShellEvent::Connected { peer: peer.clone(), conn, writer, connection: connection.clone() };
    if report.send(connected).await.is_err() {
        return;
    }
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while lines.recv_many(&mut batch, 256).await > 0 {
            let mut bytes = Vec::new();
            for line in batch.drain(..) {
                bytes.extend_from_slice(line.as_bytes());
                bytes.push(b'\n');
            }
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let mut reader = FramedRead::new(recv, LinesCodec::new_with_max_length(MAX_LINE_LEN + 64));
    let reason = loop {
        match reader.next().await {
            Some(Ok(line)) => {
                let event = ShellEvent::Line { peer: peer.clone(), conn, line };
                if report.send(event).await.is_err() {
                    return;
                }
            }
            Some(Err(err)) => break err.to_string(),
            None => break "the peer closed the stream".to_owned(),
        }
    };
    connection.close(0u32.into(), b"done");
    let _ = report.send(ShellEvent::Closed { peer, conn, reason }).await;
}

//! The direct path's decisions, with no sockets and no clock of its own: per peer, which path
//! carries what this client sends, the punch and its deadline, the numbering of what it sends,
//! the messages the direct path has not acknowledged (sent again through the server should it
//! break), and the receiver's drop of numbers already seen, whichever path brought them.
//!
//! Inputs are `send` and the `handle_*` methods, each given the time; outputs are taken with
//! [`Engine::poll_output`], and [`Engine::poll_timeout`] says when to call
//! [`Engine::handle_timeout`]. The async shell (`super::shell`) moves the bytes.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ClientLine;
use crate::paths::{Candidate, DirectLine, Invite, Kind, Number, Role, Via};

/// How the engine behaves; every field has a default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Whether to open direct paths at all (`im-client --no-p2p` turns it off).
    pub enabled: bool,
    /// How long a punch may take before messages go through the server instead.
    pub punch_timeout: Duration,
    /// How long after a failed or broken direct path the next message tries again.
    pub retry_after: Duration,
    /// Bytes sent on a direct path and not yet acknowledged; past it the path counts as broken
    /// (a peer that does not read must not grow this client's memory).
    pub max_unacked_bytes: usize,
    /// Bytes held while a punch is under way; past it they go through the server at once.
    pub max_held_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            punch_timeout: Duration::from_secs(3),
            retry_after: Duration::from_secs(60),
            max_unacked_bytes: 8 << 20,
            max_held_bytes: 8 << 20,
        }
    }
}

/// Which path carries what this client sends to a peer, as the client can tell: direct, or
/// through its server (which may pass it on through the hub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// No message was sent yet and no direct path is open.
    None,
    /// A punch is under way; messages wait for it, at most the punch timeout.
    Punching,
    /// The direct QUIC path.
    Direct,
    /// Through this client's server.
    Server,
}

/// Peers the engine keeps before it forgets those it only received from.
pub const MAX_PEERS: usize = 4096;

/// A direct connection, as the shell numbers them.
pub type ConnId = u64;

/// What the engine wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this line to the server.
    ToServer(ClientLine),
    /// Write this line on direct connection `conn` to `peer`.
    Direct {
        /// The peer.
        peer: String,
        /// The connection.
        conn: ConnId,
        /// The line.
        line: DirectLine,
    },
    /// Send punch datagrams to `candidates` until told to stop or `deadline`.
    Punch {
        /// The peer.
        peer: String,
        /// Its candidates.
        candidates: Vec<Candidate>,
        /// When to give up.
        deadline: Instant,
    },
    /// Punch, and dial `candidates` over QUIC expecting the certificate `fingerprint`.
    Dial {
        /// The peer.
        peer: String,
        /// Its candidates.
        candidates: Vec<Candidate>,
        /// SHA-256 of its certificate.
        fingerprint: String,
        /// When to give up.
        deadline: Instant,
    },
    /// Punch, and accept a QUIC connection from the certificate `fingerprint` as `peer`.
    Accept {
        /// The peer.
        peer: String,
        /// Its candidates.
        candidates: Vec<Candidate>,
        /// SHA-256 of its certificate.
        fingerprint: String,
        /// When to give up.
        deadline: Instant,
    },
    /// Stop punching, dialling and accepting for `peer`: it has a path now, or none.
    StopPunch {
        /// The peer.
        peer: String,
    },
    /// Close direct connection `conn`.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// A message for the user (text) or the transfers (file).
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
    /// The path to `peer` changed, for a status line.
    PathChanged {
        /// The peer.
        peer: String,
        /// The new path.
        path: Path,
    },
}

/// A message this client sent, kept until the path that carries it is sure.
#[derive(Debug, Clone)]
struct Outgoing {
    seq: u64,
    kind: Kind,
    body: String,
}

#[derive(Debug)]
enum State {
    Idle,
    /// This client asked for a direct path: the server's answer with the peer's candidates,
    /// then the peer's answer, may come.
    Offering {
        deadline: Instant,
    },
    /// This client answered the peer's offer and waits for it to dial.
    Answering {
        deadline: Instant,
    },
    Direct {
        conn: ConnId,
    },
    /// Through the server, since `since`; a direct path is tried again after the retry time.
    Server {
        since: Instant,
    },
}

/// One peer: the path state, what this client sent, and what it received.
#[derive(Debug)]
struct Peer {
    state: State,
    /// The last sequence this client gave a message to the peer.
    sent: u64,
    /// Sent on the direct path, not acknowledged yet; with their total size.
    unacked: VecDeque<Outgoing>,
    unacked_bytes: usize,
    /// Waiting for the punch; with their total size.
    held: VecDeque<Outgoing>,
    held_bytes: usize,
    /// The peer's epoch this client receives, and the next sequence it expects.
    received: Option<(u64, u64)>,
}

impl Peer {
    fn new() -> Self {
        Self {
            state: State::Idle,
            sent: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            received: None,
        }
    }

    fn path(&self) -> Path {
        match self.state {
            State::Idle => Path::None,
            State::Offering { .. } | State::Answering { .. } => Path::Punching,
            State::Direct { .. } => Path::Direct,
            State::Server { .. } => Path::Server,
        }
    }

    /// Whether `number` is new (and so is to be delivered), recording it.
    fn accept(&mut self, number: Number) -> bool {
        match self.received {
            Some((epoch, next)) if epoch == number.epoch && number.seq < next => false,
            _ => {
                // A new epoch is a new session of the peer: its numbering starts again. A gap
                // in one epoch is a message the server could not deliver, not one to wait for.
                self.received = Some((number.epoch, number.seq + 1));
                true
            }
        }
    }
}

/// The direct-path state machine of one client.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    user: String,
    epoch: u64,
    fingerprint: String,
    peers: HashMap<String, Peer>,
    out: VecDeque<Output>,
}

impl Engine {
    /// An engine for `user`, numbering this session's messages with `epoch` (random per
    /// session), whose certificate has `fingerprint`.
    pub fn new(config: EngineConfig, user: &str, epoch: u64, fingerprint: String) -> Self {
        let user = user.to_owned();
        Self { config, user, epoch, fingerprint, peers: HashMap::new(), out: VecDeque::new() }
    }

    /// The path that carries what this client sends to `peer`.
    pub fn path(&self, peer: &str) -> Path {
        if !self.config.enabled {
            return Path::Server;
        }
        self.peers.get(peer).map_or(Path::None, Peer::path)
    }

    /// How many peers the engine keeps state for.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Messages held for a punch or sent directly and not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.peers.values().map(|peer| peer.held.len() + peer.unacked.len()).sum()
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Engine::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter_map(|peer| match peer.state {
                State::Offering { deadline } | State::Answering { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// Sends `body` to `peer` by the best path there is, opening a direct one if none was tried.
    pub fn send(&mut self, now: Instant, to: &str, kind: Kind, body: String) {
        if !self.config.enabled {
            let line = match kind {
                Kind::Text => ClientLine::Send { to: to.to_owned(), text: body },
                Kind::File => ClientLine::File { to: to.to_owned(), body },
            };
            return self.out.push_back(Output::ToServer(line));
        }
        let peer = self.peers.entry(to.to_owned()).or_insert_with(Peer::new);
        peer.sent += 1;
        let message = Outgoing { seq: peer.sent, kind, body };
        match peer.state {
            State::Server { since } if now < since + self.config.retry_after => {
                self.through_server(to, &message);
            }
            State::Idle | State::Server { .. } => {
                let deadline = now + self.config.punch_timeout;
                let peer = self.peer(to);
                peer.state = State::Offering { deadline };
                peer.held_bytes = message.body.len();
                peer.held.push_back(message);
                let fingerprint = self.fingerprint.clone();
                self.out.push_back(Output::ToServer(ClientLine::Offer {
                    to: to.to_owned(),
                    fingerprint,
                }));
                self.changed(to, Path::Punching);
            }
            State::Offering { .. } | State::Answering { .. } => {
                peer.held_bytes += message.body.len();
                peer.held.push_back(message);
                if peer.held_bytes > self.config.max_held_bytes {
                    self.fall_back(now, to);
                }
            }
            State::Direct { conn } => {
                peer.unacked_bytes += message.body.len();
                peer.unacked.push_back(message.clone());
                let over = peer.unacked_bytes > self.config.max_unacked_bytes;
                self.direct(to, conn, &message);
                if over {
                    self.out.push_back(Output::Close { conn });
                    self.fall_back(now, to);
                }
            }
        }
    }

    /// The server's answer to an offer: where `peer` is reachable (`None`: offline, or no
    /// candidates). Punching starts at once, so the peer's answer finds this side's NAT open.
    pub fn handle_reach(&mut self, now: Instant, peer: &str, candidates: Option<Vec<Candidate>>) {
        let Some(state) = self.peers.get(peer).map(|peer| &peer.state) else { return };
        let State::Offering { deadline } = *state else { return };
        match candidates {
            Some(candidates) if !candidates.is_empty() => {
                let peer = peer.to_owned();
                self.out.push_back(Output::Punch { peer, candidates, deadline });
            }
            // Nothing to punch towards: no reason to hold the messages back.
            _ => self.fall_back(now, peer),
        }
    }

    /// An invitation relayed by the servers from `from`.
    pub fn handle_invite(&mut self, now: Instant, from: &str, invite: Invite) {
        if !self.config.enabled || from == self.user {
            return;
        }
        let peer = self.peers.entry(from.to_owned()).or_insert_with(Peer::new);
        let Invite { role, fingerprint, candidates } = invite;
        match (role, &peer.state) {
            (Role::Answer, State::Offering { deadline }) => {
                let deadline = *deadline;
                let peer = from.to_owned();
                self.out.push_back(Output::Dial { peer, candidates, fingerprint, deadline });
            }
            // An answer to an offer this client no longer makes: too late.
            (Role::Answer, _) => {}
            // Both offered at once: the smaller name dials, the other answers.
            (Role::Offer, State::Offering { .. }) if self.user.as_str() < from => {}
            (Role::Offer, _) => {
                let deadline = now + self.config.punch_timeout;
                if let State::Direct { conn } = peer.state {
                    // The peer lost the path this client still has (it restarted, say): the
                    // new one replaces it, and what the old one did not confirm waits for it.
                    self.out.push_back(Output::Close { conn });
                    let unacked = std::mem::take(&mut peer.unacked);
                    peer.held_bytes += std::mem::take(&mut peer.unacked_bytes);
                    for message in unacked.into_iter().rev() {
                        peer.held.push_front(message);
                    }
                }
                peer.state = State::Answering { deadline };
                let mine = self.fingerprint.clone();
                let answer = ClientLine::Answer { to: from.to_owned(), fingerprint: mine };
                self.out.push_back(Output::ToServer(answer));
                let peer = from.to_owned();
                self.out.push_back(Output::Accept { peer, candidates, fingerprint, deadline });
                self.changed(from, Path::Punching);
            }
        }
    }

    /// A direct connection to `peer` is open (dialled or accepted): held messages go on it.
    pub fn handle_connected(&mut self, _now: Instant, peer_name: &str, conn: ConnId) {
        let peer = self.peers.entry(peer_name.to_owned()).or_insert_with(Peer::new);
        match peer.state {
            State::Offering { .. } | State::Answering { .. } => {}
            // Too late (the messages went through the server), or a second one: not used.
            _ => return self.out.push_back(Output::Close { conn }),
        }
        peer.state = State::Direct { conn };
        let held: Vec<Outgoing> = peer.held.drain(..).collect();
        peer.held_bytes = 0;
        peer.unacked_bytes += held.iter().map(|message| message.body.len()).sum::<usize>();
        peer.unacked.extend(held.iter().cloned());
        self.out.push_back(Output::StopPunch { peer: peer_name.to_owned() });
        for message in &held {
            self.direct(peer_name, conn, message);
        }
        self.changed(peer_name, Path::Direct);
    }

    /// Direct connection `conn` to `peer` closed (idle timeout, reset, the peer left): what it
    /// did not confirm goes through the server, in order, and so does everything after it.
    pub fn handle_closed(&mut self, now: Instant, peer: &str, conn: ConnId) {
        let current = self.peers.get(peer).map(|peer| &peer.state);
        if matches!(current, Some(State::Direct { conn: open }) if *open == conn) {
            self.fall_back(now, peer);
        }
    }

    /// A line from the direct connection `conn` to `peer`.
    pub fn handle_direct(
        &mut self,
        _now: Instant,
        peer_name: &str,
        conn: ConnId,
        line: DirectLine,
    ) {
        let Some(peer) = self.peers.get_mut(peer_name) else { return };
        match line {
            DirectLine::Hello => {}
            DirectLine::Ack { seq } => {
                while peer.unacked.front().is_some_and(|message| message.seq <= seq) {
                    let message = peer.unacked.pop_front().expect("front exists");
                    peer.unacked_bytes -= message.body.len();
                }
            }
            DirectLine::Message { number, kind, body } => {
                let fresh = peer.accept(number);
                // Acknowledged even when seen before: the peer may have missed the first ack.
                let ack = DirectLine::Ack { seq: number.seq };
                self.out.push_back(Output::Direct { peer: peer_name.to_owned(), conn, line: ack });
                if fresh {
                    let from = peer_name.to_owned();
                    self.out.push_back(Output::Deliver { from, via: Via::P2p, kind, body });
                }
            }
        }
    }

    /// A message that came through the server; `number` is `None` for a sender that does not
    /// number its messages (a web client, or `--no-p2p`).
    pub fn handle_server_message(
        &mut self,
        from: &str,
        via: Via,
        number: Option<Number>,
        kind: Kind,
        body: String,
    ) {
        if let Some(number) = number {
            if !self.peers.contains_key(from) && self.peers.len() >= MAX_PEERS {
                // Senders this client never wrote to: forgetting their numbering costs at most a
                // duplicate after a path change, keeping it all would cost unbounded memory.
                self.peers.retain(|_, peer| !matches!(peer.state, State::Idle));
            }
            let peer = self.peers.entry(from.to_owned()).or_insert_with(Peer::new);
            if !peer.accept(number) {
                return;
            }
        }
        self.out.push_back(Output::Deliver { from: from.to_owned(), via, kind, body });
    }

    /// Gives up the punches whose deadline passed: their messages go through the server.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, peer)| match peer.state {
                State::Offering { deadline } | State::Answering { deadline } => deadline <= now,
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .collect();
        for peer in late {
            self.fall_back(now, &peer);
        }
    }

    fn peer(&mut self, name: &str) -> &mut Peer {
        self.peers.entry(name.to_owned()).or_insert_with(Peer::new)
    }

    /// From now on (until the retry time) through the server: first what the direct path did
    /// not confirm, then what waited for the punch.
    fn fall_back(&mut self, now: Instant, name: &str) {
        let peer = self.peer(name);
        let was_punching = matches!(peer.state, State::Offering { .. } | State::Answering { .. });
        peer.state = State::Server { since: now };
        let mut pending: Vec<Outgoing> = peer.unacked.drain(..).collect();
        pending.extend(peer.held.drain(..));
        (peer.unacked_bytes, peer.held_bytes) = (0, 0);
        if was_punching {
            self.out.push_back(Output::StopPunch { peer: name.to_owned() });
        }
        for message in &pending {
            self.through_server(name, message);
        }
        self.changed(name, Path::Server);
    }

    fn through_server(&mut self, to: &str, message: &Outgoing) {
        let number = Number { epoch: self.epoch, seq: message.seq };
        let line = ClientLine::Numbered {
            to: to.to_owned(),
            number,
            kind: message.kind,
            body: message.body.clone(),
        };
        self.out.push_back(Output::ToServer(line));
    }

    fn direct(&mut self, to: &str, conn: ConnId, message: &Outgoing) {
        let number = Number { epoch: self.epoch, seq: message.seq };
        let line = DirectLine::Message { number, kind: message.kind, body: message.body.clone() };
        self.out.push_back(Output::Direct { peer: to.to_owned(), conn, line });
    }

    fn changed(&mut self, peer: &str, path: Path) {
        self.out.push_back(Output::PathChanged { peer: peer.to_owned(), path });
    }
}

//! Hot standby: which hub of a cluster accepts app servers.
//!
//! Each hub with peers keeps one connection to each of them and asks for its [`HubStatus`] every
//! `keepalive_interval`. A hub is *standby* while it can reach an active peer, and refuses `Hello`
//! then; it becomes *active* when no reachable peer is. The rule itself is [`decide`], a pure
//! function; docs/FAILOVER.md explains it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use acms_protocol::{
    Codec, Control, Frame, HANDSHAKE_MAX_FRAME_LEN, HubStatus, Nonce, ProtocolError,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::connection::Shared;

/// Where a hub stands among the hubs of its cluster when the numbers of servers are equal: the
/// lower rank is preferred. The older hub first, so a hub that has run for a while is not
/// displaced by one that just started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    /// Process start, nanoseconds since the Unix epoch.
    pub started: u64,
    /// Random, breaks a tie of `started`.
    pub id: u64,
}

/// What a hub knows of one reachable peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    /// The peer accepts registrations.
    pub active: bool,
    /// App servers registered with it.
    pub servers: u32,
    /// Its rank.
    pub rank: Rank,
}

impl From<HubStatus> for PeerView {
    fn from(status: HubStatus) -> Self {
        Self {
            active: status.active,
            servers: status.servers,
            rank: Rank { started: status.started, id: status.id },
        }
    }
}

/// Whether a hub accepts registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts app servers.
    Active,
    /// Refuses them: a reachable peer is active, or should become so.
    Standby,
}

/// The role a hub should take, given its own state and what it knows of its reachable peers
/// (unreachable ones are left out).
///
/// - A standby stays standby while a reachable peer is active (so a hub that comes back finds
///   the one that took over and leaves it be: no flapping). With none active, it becomes active
///   unless a reachable standby outranks it, which will become active itself (the start-up tie).
/// - An active hub stays active unless a reachable peer is active too (a partition healed) and
///   has more servers, or as many and a better rank: then it yields.
pub fn decide(active: bool, servers: u32, me: Rank, peers: &[PeerView]) -> Role {
    let beats_me = |peer: &PeerView| {
        (peer.servers, std::cmp::Reverse(peer.rank)) > (servers, std::cmp::Reverse(me))
    };
    if active {
        if peers.iter().any(|peer| peer.active && beats_me(peer)) {
            return Role::Standby;
        }
        return Role::Active;
    }
    if peers.iter().any(|peer| peer.active || peer.rank < me) {
        return Role::Standby;
    }
    Role::Active
}

/// What a hub knows of one configured peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not tried yet: the hub stays standby until every peer was tried once.
    Unknown,
    Unreachable,
    /// The address is this hub's own.
    Myself,
    Reachable(PeerView),
}

/// A change of role, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    BecameActive,
    /// The hub went standby: its app servers must be closed so that they move.
    Yielded,
}

/// This hub's role and what it knows of its peers.
#[derive(Debug)]
pub struct Standby {
    rank: Rank,
    peers: Vec<String>,
    active: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

impl Standby {
    /// A hub with these peers: alone (no peers) it is active at once, otherwise standby until it
    /// has tried every peer.
    pub fn new(peers: Vec<String>) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let random = Nonce::random().0;
        let id = u64::from_le_bytes(random[..8].try_into().expect("8 bytes"));
        let seen = Mutex::new(vec![Seen::Unknown; peers.len()]);
        Self { rank: Rank { started, id }, active: AtomicBool::new(peers.is_empty()), peers, seen }
    }

    /// Whether this hub accepts registrations now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// The status this hub tells its peers.
    pub fn status(&self, servers: usize) -> HubStatus {
        HubStatus {
            active: self.is_active(),
            servers: u32::try_from(servers).unwrap_or(u32::MAX),
            started: self.rank.started,
            id: self.rank.id,
        }
    }

    /// Why a standby refuses an app server, naming the hub to use instead when it knows one.
    pub fn refusal(&self) -> String {
        let seen = self.seen.lock().expect("standby lock");
        let active = self
            .peers
            .iter()
            .zip(seen.iter())
            .find(|(_, seen)| matches!(seen, Seen::Reachable(view) if view.active));
        match active {
            Some((addr, _)) => format!("this hub is a standby: the active hub is {addr}"),
            None => "this hub is a standby: it is still deciding with its peers which one is \
                     active"
                .to_owned(),
        }
    }

    /// Records what was learnt of peer `index` and decides again.
    fn update(&self, index: usize, now: Seen, servers: usize) -> Option<Change> {
        let mut seen = self.seen.lock().expect("standby lock");
        seen[index] = now;
        if seen.contains(&Seen::Unknown) {
            return None;
        }
        let views: Vec<PeerView> = seen
            .iter()
            .filter_map(|seen| match seen {
                Seen::Reachable(view) => Some(*view),
                _ => None,
            })
            .collect();
        let active = self.is_active();
        let servers = u32::try_from(servers).unwrap_or(u32::MAX);
        let role = decide(active, servers, self.rank, &views);
        // Changed under the lock, so two watchers cannot both act on one change.
        match (active, role) {
            (false, Role::Active) => {
                self.active.store(true, Ordering::Release);
                Some(Change::BecameActive)
            }
            (true, Role::Standby) => {
                self.active.store(false, Ordering::Release);
                Some(Change::Yielded)
            }
            _ => None,
        }
    }
}

/// Why a peer link ended.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("no status within {0:?}")]
    Silent(Duration),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("unexpected message from the peer")]
    Unexpected,
}

/// Watches peer `index` until shutdown: one connection at a time, a status request every
/// `keepalive_interval`, and a new connection after any failure.
pub(crate) async fn watch(shared: Arc<Shared>, index: usize, shutdown: CancellationToken) {
    let addr = shared.standby.peers[index].clone();
    let interval = shared.config.keepalive_interval;
    let mut reachable = None;
    loop {
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = probe(&shared, index, &addr, &mut reachable) => ended,
        };
        if reachable != Some(false) {
            warn!(peer = %addr, error = %ended, "peer hub unreachable");
            reachable = Some(false);
        }
        report(&shared, index, Seen::Unreachable);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One connection to a peer: asks, reads the answer within `keepalive_timeout`, waits the
/// interval while watching the socket, so that a peer that dies is noticed at once.
async fn probe(
    shared: &Arc<Shared>,
    index: usize,
    addr: &str,
    reachable: &mut Option<bool>,
) -> PeerError {
    let timeout = shared.config.keepalive_timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return err.into(),
        Err(_) => return PeerError::Silent(timeout),
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(1024);
    let mut codec = Codec::new(HANDSHAKE_MAX_FRAME_LEN);
    let ask = match Frame::Control(Control::PeerStatus).to_bytes(HANDSHAKE_MAX_FRAME_LEN) {
        Ok(ask) => ask,
        Err(err) => return err.into(),
    };
    loop {
        if let Err(err) = writer.write_all(&ask).await {
            return err.into();
        }
        let answer =
            tokio::time::timeout(timeout, next_control(&mut reader, &mut buf, &mut codec)).await;
        let status = match answer {
            Err(_) => return PeerError::Silent(timeout),
            Ok(Err(err)) => return err,
            Ok(Ok(Control::HubStatus(status))) => status,
            Ok(Ok(Control::Error { message, .. })) => return PeerError::Refused(message),
            Ok(Ok(_)) => return PeerError::Unexpected,
        };
        let seen = if status.id == shared.standby.rank.id
            && status.started == shared.standby.rank.started
        {
            Seen::Myself
        } else {
            Seen::Reachable(status.into())
        };
        if *reachable != Some(true) {
            info!(peer = %addr, active = status.active, servers = status.servers, myself = seen == Seen::Myself, "peer hub reachable");
            *reachable = Some(true);
        }
        report(shared, index, seen);
        if seen == Seen::Myself {
            // Nothing to watch; the slot stays known and never counts as a peer.
            std::future::pending::<()>().await;
        }
        let read = tokio::select! {
            _ = tokio::time::sleep(shared.config.keepalive_interval) => continue,
            read = reader.read_buf(&mut buf) => read,
        };
        return match read {
            Ok(0) => PeerError::Closed,
            Ok(_) => PeerError::Unexpected,
            Err(err) => err.into(),
        };
    }
}

/// The next control message on a peer link.
async fn next_control(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    codec: &mut Codec,
) -> Result<Control, PeerError> {
    loop {
        if let Some(raw) = codec.decode(buf)? {
            return match raw.decode()? {
                Frame::Control(control) => Ok(control),
                _ => Err(PeerError::Unexpected),
            };
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(PeerError::Closed);
        }
    }
}

/// Records what was learnt of a peer and acts on a change of role.
fn report(shared: &Shared, index: usize, seen: Seen) {
    let servers = shared.registry.servers().len();
    match shared.standby.update(index, seen, servers) {
        Some(Change::BecameActive) => {
            info!(servers, "this hub is now active: accepting app servers")
        }
        Some(Change::Yielded) => {
            warn!(
                servers,
                "another active hub has more app servers (or ranks first): going standby and closing this hub's app servers so they move"
            );
            for server in shared.registry.servers() {
                shared.registry.close(server.id);
            }
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Rank = Rank { started: 1, id: 5 };
    const NEW: Rank = Rank { started: 2, id: 1 };

    fn peer(active: bool, servers: u32, rank: Rank) -> PeerView {
        PeerView { active, servers, rank }
    }

    #[test]
    fn alone_a_hub_is_active() {
        assert_eq!(decide(false, 0, NEW, &[]), Role::Active);
        assert_eq!(decide(true, 3, NEW, &[]), Role::Active);
    }

    #[test]
    fn a_standby_stays_standby_while_a_peer_is_active() {
        // Even a better-ranked hub that comes back leaves the active one be: no flapping.
        assert_eq!(decide(false, 0, OLD, &[peer(true, 0, NEW)]), Role::Standby);
        assert_eq!(decide(false, 0, OLD, &[peer(true, 3, NEW)]), Role::Standby);
    }

    #[test]
    fn at_start_up_the_better_rank_becomes_active() {
        assert_eq!(decide(false, 0, OLD, &[peer(false, 0, NEW)]), Role::Active);
        assert_eq!(decide(false, 0, NEW, &[peer(false, 0, OLD)]), Role::Standby);
        let tie = Rank { started: 1, id: 4 };
        assert_eq!(decide(false, 0, tie, &[peer(false, 0, OLD)]), Role::Active);
        assert_eq!(decide(false, 0, OLD, &[peer(false, 0, tie)]), Role::Standby);
    }

    #[test]
    fn an_active_hub_keeps_its_place_against_a_returning_one() {
        assert_eq!(decide(true, 3, NEW, &[peer(false, 0, OLD)]), Role::Active);
    }

    #[test]
    fn of_two_active_hubs_the_one_with_fewer_servers_yields() {
        assert_eq!(decide(true, 1, OLD, &[peer(true, 2, NEW)]), Role::Standby);
        assert_eq!(decide(true, 2, NEW, &[peer(true, 1, OLD)]), Role::Active);
        // A tie of servers goes to the better rank, and exactly one side yields.
        assert_eq!(decide(true, 2, NEW, &[peer(true, 2, OLD)]), Role::Standby);
        assert_eq!(decide(true, 2, OLD, &[peer(true, 2, NEW)]), Role::Active);
    }

    #[test]
    fn a_hub_waits_for_every_peer_before_it_decides() {
        let standby = Standby::new(vec!["a".into(), "b".into()]);
        assert!(!standby.is_active());
        assert_eq!(standby.update(0, Seen::Unreachable, 0), None);
        assert!(!standby.is_active(), "peer b not tried yet");
        assert_eq!(standby.update(1, Seen::Myself, 0), Some(Change::BecameActive));
        assert!(standby.is_active());
        let rival = peer(true, 5, standby.rank);
        assert_eq!(standby.update(0, Seen::Reachable(rival), 1), Some(Change::Yielded));
        assert!(standby.refusal().contains("the active hub is a"), "{}", standby.refusal());
    }
}

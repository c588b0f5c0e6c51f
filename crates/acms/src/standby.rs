//! Hot standby: which hub of a cluster accepts app servers.
//!
//! Each hub with peers keeps one connection to each of them, authenticated like an app server's
//! (`PeerHello`), and asks for its [`HubStatus`] every `keepalive_interval`. A hub is *standby*
//! while it can reach an active peer, and refuses `Hello` then; it becomes *active* when no
//! reachable peer is. The rule itself is [`decide`], a pure function; docs/FAILOVER.md explains
//! it. Only live registrations count, and a hub that finds it was paused counts none until it
//! has heard from every peer again, so that it never pulls back the servers that left it.
//!
//! This module holds the state and the rule, and what this hub answers on a peer hub's status
//! link ([`Standby::answer_peer`]); the links that watch the peers are in `peer_watch`, and the
//! socket of a link that watches this hub is a connection's (after the same handshake as an app
//! server's).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use acms_protocol::{Control, HubStatus, Nonce};
use tracing::warn;

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
pub enum Seen {
    /// Not tried yet (or not since this hub was paused): the hub decides nothing until every
    /// peer was tried.
    Unknown,
    /// It did not answer within `keepalive_timeout`, or refused this hub.
    Unreachable,
    /// The address is this hub's own.
    Myself,
    /// It answered.
    Reachable(PeerView),
}

/// A change of role, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleChange {
    BecameActive,
    /// The hub went standby: its app servers must be closed so that they move.
    Yielded,
}

/// This hub's role and what it knows of its peers.
#[derive(Debug)]
pub struct Standby {
    pub(crate) rank: Rank,
    active: AtomicBool,
    /// Every change of role, for what announces it (the DNS-SD announcement).
    role_changes: tokio::sync::watch::Sender<Role>,
    state: Mutex<State>,
    /// A gap longer than this between two heartbeats means the process was paused (SIGSTOP, a
    /// frozen VM) or starved: peers may have counted it dead and taken over meanwhile.
    stall: Duration,
}

/// One peer hub: configured, or found on the LAN (`peers = "auto"`).
#[derive(Debug, Clone)]
struct Peer {
    /// What its watcher is told to find it by: its index in a configured list, or a number
    /// given when it was found.
    slot: usize,
    addr: String,
    seen: Seen,
}

#[derive(Debug)]
struct State {
    peers: Vec<Peer>,
    /// The next slot given to a peer found on the LAN.
    next_slot: usize,
    /// Whether the hub may decide: at once with configured peers; with peers found on the LAN,
    /// once the first search had time to find them ([`Standby::handle_settled`]).
    settled: bool,
    /// The latest heartbeat.
    beat: Instant,
    /// Since a pause, for at least `stall` and until every peer was heard from again: the hub
    /// counts none of its servers, as those registered before the pause may have moved on, and
    /// their dead connections (even AS handshakes abandoned in its accept queue) take a moment
    /// to be read to their end.
    resuming: bool,
    /// When the latest pause was noticed.
    resumed_at: Instant,
    /// Pauses noticed so far: what a watcher learns in answer to a question asked before the
    /// latest pause is stale.
    pauses: u64,
}

impl Standby {
    /// A hub with these peers: alone (no peers) it is active at once, otherwise standby until it
    /// has tried every peer. A gap of more than `stall` between heartbeats counts as a pause.
    pub fn new(peers: Vec<String>, stall: Duration) -> Self {
        let active = peers.is_empty();
        let peers: Vec<Peer> = peers
            .into_iter()
            .enumerate()
            .map(|(slot, addr)| Peer { slot, addr, seen: Seen::Unknown })
            .collect();
        Self::with_peers(peers, active, stall)
    }

    /// A hub whose peers are found on the LAN (`peers = "auto"`, added as they are found):
    /// standby until the first search had time to find them and every peer found was tried.
    pub fn discovering(stall: Duration) -> Self {
        let standby = Self::with_peers(Vec::new(), false, stall);
        standby.state.lock().expect("standby lock").settled = false;
        standby
    }

    fn with_peers(peers: Vec<Peer>, active: bool, stall: Duration) -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let random = Nonce::random().0;
        let id = u64::from_le_bytes(random[..8].try_into().expect("8 bytes"));
        let state = State {
            next_slot: peers.len(),
            peers,
            settled: true,
            beat: Instant::now(),
            resuming: false,
            resumed_at: Instant::now(),
            pauses: 0,
        };
        let role = if active { Role::Active } else { Role::Standby };
        Self {
            rank: Rank { started, id },
            active: AtomicBool::new(active),
            role_changes: tokio::sync::watch::Sender::new(role),
            state: Mutex::new(state),
            stall,
        }
    }

    /// Whether this hub accepts registrations now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// This hub's role now.
    pub fn role(&self) -> Role {
        if self.is_active() { Role::Active } else { Role::Standby }
    }

    /// This hub's role, now and at each change.
    pub fn watch_role(&self) -> tokio::sync::watch::Receiver<Role> {
        self.role_changes.subscribe()
    }

    /// Since a pause, until every peer was heard from again.
    pub fn is_resuming(&self) -> bool {
        self.state.lock().expect("standby lock").resuming
    }

    /// The peers, configured or found, and what this hub knows of each.
    pub fn peers(&self) -> Vec<(String, Seen)> {
        let state = self.state.lock().expect("standby lock");
        state.peers.iter().map(|peer| (peer.addr.clone(), peer.seen)).collect()
    }

    /// The address of the peer of `slot`, while it is one.
    pub(crate) fn peer_addr(&self, slot: usize) -> Option<String> {
        let state = self.state.lock().expect("standby lock");
        state.peers.iter().find(|peer| peer.slot == slot).map(|peer| peer.addr.clone())
    }

    /// Adds a peer found on the LAN at `addr`, not yet tried: the hub decides nothing more
    /// until its watcher has reported. Its slot, for the watcher.
    pub(crate) fn add_peer(&self, addr: String) -> usize {
        let mut state = self.state.lock().expect("standby lock");
        let slot = state.next_slot;
        state.next_slot += 1;
        state.peers.push(Peer { slot, addr, seen: Seen::Unknown });
        slot
    }

    /// Forgets the peer of `slot` (it left the LAN) and decides again; `servers` are this
    /// hub's live registrations.
    pub(crate) fn remove_peer(&self, slot: usize, servers: usize) -> Option<RoleChange> {
        let mut state = self.state.lock().expect("standby lock");
        state.peers.retain(|peer| peer.slot != slot);
        self.decide_locked(&mut state, servers, Instant::now())
    }

    /// The first search for peers on the LAN had its time: the hub decides from what it found
    /// (alone, it becomes active); `servers` are its live registrations.
    pub(crate) fn handle_settled(&self, servers: usize) -> Option<RoleChange> {
        let mut state = self.state.lock().expect("standby lock");
        state.settled = true;
        self.decide_locked(&mut state, servers, Instant::now())
    }

    /// The address of the active hub of the cluster, as configured in `peers`: a reachable
    /// active peer for a standby; for an active hub, its own entry of the list when it has one.
    /// `None` while a standby is still deciding, or for an active hub not in its own list.
    pub fn active_hub(&self) -> Option<String> {
        let active = self.is_active();
        self.peers().into_iter().find_map(|(addr, seen)| match seen {
            Seen::Myself if active => Some(addr),
            Seen::Reachable(view) if view.active && !active => Some(addr),
            _ => None,
        })
    }

    /// The status this hub tells its peers, `servers` being its live registrations.
    pub fn status(&self, servers: usize) -> HubStatus {
        self.status_at(servers, Instant::now())
    }

    /// What this hub answers on a peer hub's status link (docs/FAILOVER.md), `servers` being its
    /// live registrations: its status, unasked when the link opens (`request` is `None`) and for
    /// each `PeerStatus`; anything else on the link is refused, with why.
    pub(crate) fn answer_peer(
        &self,
        request: Option<&Control>,
        servers: usize,
    ) -> Result<Control, &'static str> {
        match request {
            None | Some(Control::PeerStatus) => Ok(Control::HubStatus(self.status(servers))),
            Some(_) => Err("a peer hub's link carries only PeerStatus"),
        }
    }

    fn status_at(&self, servers: usize, now: Instant) -> HubStatus {
        let mut state = self.state.lock().expect("standby lock");
        self.wake(&mut state, now);
        let servers = if state.resuming { 0 } else { servers };
        HubStatus {
            active: self.is_active(),
            servers: u32::try_from(servers).unwrap_or(u32::MAX),
            started: self.rank.started,
            id: self.rank.id,
        }
    }

    /// Notes that the hub runs at `now` (its heartbeat task calls this every
    /// `keepalive_interval`).
    pub(crate) fn beat(&self, now: Instant) {
        let mut state = self.state.lock().expect("standby lock");
        self.wake(&mut state, now);
    }

    /// Notices a pause: after one, what the hub knew of its peers is stale and its own
    /// registrations may be dead, so it asks every peer again before it decides and counts none
    /// of its servers until then. True if a pause ended at this call.
    fn wake(&self, state: &mut State, now: Instant) -> bool {
        let gap = now.saturating_duration_since(state.beat);
        state.beat = state.beat.max(now);
        if state.peers.is_empty() || gap <= self.stall {
            return false;
        }
        warn!(
            paused = ?gap,
            "this hub was paused or starved longer than keepalive_timeout: counting none of its app servers until every peer hub has answered again"
        );
        state.resuming = true;
        state.resumed_at = now;
        state.pauses += 1;
        for peer in &mut state.peers {
            if peer.seen != Seen::Myself {
                peer.seen = Seen::Unknown;
            }
        }
        true
    }

    /// Why a standby refuses an app server, naming the hub to use instead when it knows one.
    pub fn refusal(&self) -> String {
        match self.active_hub() {
            Some(addr) => format!("this hub is a standby: the active hub is {addr}"),
            None => "this hub is a standby: it is still deciding with its peers which one is \
                     active"
                .to_owned(),
        }
    }

    /// The pauses noticed so far, for a watcher to note when it asks a question.
    pub(crate) fn pauses(&self) -> u64 {
        self.state.lock().expect("standby lock").pauses
    }

    /// Records what was learnt of the peer of `slot`, in answer to a question asked when
    /// [`Self::pauses`] was `asked`, and decides again; `servers` are this hub's live
    /// registrations.
    pub(crate) fn update(
        &self,
        slot: usize,
        now: Seen,
        servers: usize,
        asked: u64,
    ) -> Option<RoleChange> {
        self.update_at(slot, now, servers, asked, Instant::now())
    }

    fn update_at(
        &self,
        slot: usize,
        learnt: Seen,
        servers: usize,
        asked: u64,
        now: Instant,
    ) -> Option<RoleChange> {
        let mut state = self.state.lock().expect("standby lock");
        if self.wake(&mut state, now) || asked != state.pauses {
            // Asked before the latest pause: stale, though it may have arrived after it (a
            // link that the peer closed meanwhile, an answer read late).
            return None;
        }
        let Some(peer) = state.peers.iter_mut().find(|peer| peer.slot == slot) else {
            // A peer that left the LAN meanwhile.
            return None;
        };
        peer.seen = learnt;
        self.decide_locked(&mut state, servers, now)
    }

    /// Decides the role from what is known, once every peer was tried, and changes it.
    fn decide_locked(&self, state: &mut State, servers: usize, now: Instant) -> Option<RoleChange> {
        if !state.settled || state.peers.iter().any(|peer| peer.seen == Seen::Unknown) {
            return None;
        }
        if state.resuming {
            if now.saturating_duration_since(state.resumed_at) < self.stall {
                return None;
            }
            state.resuming = false;
        }
        let views: Vec<PeerView> = state
            .peers
            .iter()
            .filter_map(|peer| match peer.seen {
                Seen::Reachable(view) => Some(view),
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
                self.role_changes.send_replace(Role::Active);
                Some(RoleChange::BecameActive)
            }
            (true, Role::Standby) => {
                self.active.store(false, Ordering::Release);
                self.role_changes.send_replace(Role::Standby);
                Some(RoleChange::Yielded)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Rank = Rank { started: 1, id: 5 };
    const STALL: Duration = Duration::from_secs(3);
    const NEW: Rank = Rank { started: 2, id: 1 };

    fn peer(active: bool, servers: u32, rank: Rank) -> PeerView {
        PeerView { active, servers, rank }
    }

    #[test]
    fn a_peer_hub_is_answered_its_status_unasked_and_per_request_and_nothing_else() {
        let standby = Standby::new(Vec::new(), Duration::from_secs(3));
        for request in [None, Some(&Control::PeerStatus)] {
            let Ok(Control::HubStatus(status)) = standby.answer_peer(request, 4) else {
                panic!("{request:?} is answered with the hub's status");
            };
            assert!(status.active);
            assert_eq!(status.servers, 4);
        }
        let refused = standby.answer_peer(Some(&Control::Resync), 4);
        assert_eq!(refused, Err("a peer hub's link carries only PeerStatus"));
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
        let standby = Standby::new(vec!["a".into(), "b".into()], STALL);
        let roles = standby.watch_role();
        assert!(!standby.is_active());
        assert_eq!(*roles.borrow(), Role::Standby);
        assert_eq!(standby.update(0, Seen::Unreachable, 0, 0), None);
        assert!(!standby.is_active(), "peer b not tried yet");
        assert_eq!(standby.update(1, Seen::Myself, 0, 0), Some(RoleChange::BecameActive));
        assert!(standby.is_active());
        assert_eq!(*roles.borrow(), Role::Active);
        let rival = peer(true, 5, standby.rank);
        assert_eq!(standby.update(0, Seen::Reachable(rival), 1, 0), Some(RoleChange::Yielded));
        assert_eq!(*roles.borrow(), Role::Standby);
        assert!(standby.refusal().contains("the active hub is a"), "{}", standby.refusal());
    }

    #[test]
    fn a_discovering_hub_decides_once_settled_and_every_peer_found_was_tried() {
        let standby = Standby::discovering(STALL);
        assert!(!standby.is_active());
        // Alone when the first search is over: active.
        assert_eq!(standby.handle_settled(0), Some(RoleChange::BecameActive));

        let standby = Standby::discovering(STALL);
        let slot = standby.add_peer("10.0.0.2:12000".into());
        assert_eq!(standby.peer_addr(slot).as_deref(), Some("10.0.0.2:12000"));
        // Found but not tried yet: nothing decided, settled or not.
        assert_eq!(standby.handle_settled(0), None);
        // An older standby found: this hub stays standby.
        let older = Rank { started: 0, id: 0 };
        assert_eq!(standby.update(slot, Seen::Reachable(peer(false, 0, older)), 0, 0), None);
        assert!(!standby.is_active());
        // A new peer found later holds the decision until it was tried too.
        let late = standby.add_peer("10.0.0.3:12000".into());
        assert_ne!(late, slot);
        assert_eq!(standby.peers().len(), 2);
        // The older one leaves the LAN; the late one turns out unreachable: this hub takes over.
        assert_eq!(standby.remove_peer(slot, 0), None, "the late peer is not tried yet");
        assert_eq!(standby.peer_addr(slot), None);
        assert_eq!(standby.update(slot, Seen::Unreachable, 0, 0), None, "a gone slot is ignored");
        assert_eq!(standby.update(late, Seen::Unreachable, 0, 0), Some(RoleChange::BecameActive));
        assert_eq!(standby.active_hub(), None, "not in its own list");
        assert_eq!(standby.remove_peer(late, 0), None);
        assert!(standby.peers().is_empty() && standby.is_active());
    }

    #[test]
    fn a_paused_hub_counts_no_servers_until_every_peer_answered_again() {
        let standby = Standby::new(vec!["a".into(), "b".into()], STALL);
        let start = Instant::now();
        assert_eq!(standby.update_at(0, Seen::Myself, 0, 0, start), None);
        let update = standby.update_at(1, Seen::Unreachable, 3, 0, start);
        assert_eq!(update, Some(RoleChange::BecameActive));
        assert_eq!(standby.status_at(3, start).servers, 3);
        assert_eq!(standby.active_hub().as_deref(), Some("a"));

        // Paused for 10 s: what is learnt first is stale, and its servers count for nothing.
        let resumed = start + Duration::from_secs(10);
        assert_eq!(standby.update_at(1, Seen::Unreachable, 3, 0, resumed), None);
        assert!(standby.is_resuming());
        // So is an answer to a question asked before the pause, whenever it is read.
        let later = resumed + Duration::from_millis(10);
        assert_eq!(standby.update_at(1, Seen::Unreachable, 3, 0, later), None);
        assert!(standby.is_resuming());
        assert_eq!(standby.pauses(), 1);
        let status = standby.status_at(3, resumed);
        assert_eq!((status.active, status.servers), (true, 0));
        // The peer took over meanwhile and has the servers. For a keepalive timeout after the
        // pause the hub still decides nothing, while its dead connections are read to their end.
        let rival = peer(true, 3, NEW);
        let later = resumed + Duration::from_secs(1);
        assert_eq!(standby.update_at(1, Seen::Reachable(rival), 3, 1, later), None);
        assert_eq!(standby.status_at(3, later).servers, 0);
        // Then it leaves the servers where they went.
        let later = resumed + STALL + Duration::from_secs(1);
        let update = standby.update_at(1, Seen::Reachable(rival), 0, 1, later);
        assert_eq!(update, Some(RoleChange::Yielded));
        assert!(!standby.is_resuming());
        assert_eq!(standby.active_hub().as_deref(), Some("b"));
        assert!(standby.refusal().contains("the active hub is b"), "{}", standby.refusal());
    }

    #[test]
    fn heartbeats_keep_a_quiet_hub_from_looking_paused() {
        let standby = Standby::new(vec!["a".into()], STALL);
        let start = Instant::now();
        let update = standby.update_at(0, Seen::Unreachable, 0, 0, start);
        assert_eq!(update, Some(RoleChange::BecameActive));
        for second in 1..=10 {
            standby.beat(start + Duration::from_secs(second));
        }
        let status = standby.status_at(2, start + Duration::from_secs(11));
        assert_eq!((status.active, status.servers), (true, 2));
        assert!(!standby.is_resuming());
        // A hub alone never counts as paused: it has nobody to hand its servers to.
        let alone = Standby::new(Vec::new(), STALL);
        assert_eq!(alone.status_at(2, start + Duration::from_secs(60)).servers, 2);
    }
}

//! The backplane's synchronous core: what this hub knows of the other hubs on a NATS cluster and
//! what it owes them, behind small synchronous methods (the async shell is `nats`).
//!
//! Several hubs run active at once. The directory has two levels in JetStream key-value
//! buckets, user -> app server and app server -> hub, and every hub keeps a replica of both fed
//! by a watch, so routing a frame stays a local lookup. Frames for a server on another hub are
//! published to that hub's subject, one message per origin read and destination hub, numbered per
//! pair of hubs so a lost one shows as a gap; what a gap or a dead hub lost is sent again by the
//! origin app servers (`ServerUp` with `resend_from`, then `Resent`), exactly as on one hub.
//!
//! # Layout
//! - `backlog`: the messages waiting for the NATS connection, and the pushback that bounds
//!   them.
//! - `flow`: pushback across hubs: the credit windows of frames to other hubs' servers, and the
//!   credit this hub owes for frames to its own.
//! - `interest`: which hubs have members of which group (the groups bucket's replica).
//! - `loads`: the app servers' load reports that hubs carry in their heartbeats.
//! - `names`: [`HubId`], the subjects and buckets of a cluster, the keys of users and servers.
//! - `reconcile`: the directory compared with this hub's own state, and the drift to repair.
//! - `recovery`: recoveries stuck on a lost notice, and dead hubs' servers given up.
//! - `replica`: the local replica of the directory and which hubs are alive.
//! - `sessions`: a user's entry in the users bucket (their sessions and candidates), and how a
//!   hub merges its own sessions into it.
//! - `streams`: the numbering of messages between two hubs and its gaps.
//! - `wire`: the messages hubs publish to each other, and heartbeats.
//! - `writes`: the directory writes owed to the key-value store, coalesced per key.

mod backlog;
mod flow;
mod interest;
mod loads;
mod names;
pub(crate) mod reconcile;
mod recovery;
mod replica;
mod sessions;
mod streams;
mod wire;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acms_common::discovery::ClusterName;
use acms_protocol::ServerId;
use bytes::Bytes;
use tokio::sync::mpsc;

pub(crate) use flow::{Credits, Pause, Windows, pause_limit, window};
pub(crate) use interest::{Interest, decode_servers, encode_servers, group_key, group_of_key};
pub use loads::ServerReport;
pub use names::HubId;
pub(crate) use names::{Names, server_key, server_of_key, user_key, user_of_key};
pub(crate) use reconcile::{Counts, Drift};
pub(crate) use replica::{Place, Remote, Replica};
pub(crate) use sessions::{Session, decode as decode_sessions, encode as encode_sessions, merge};
pub(crate) use streams::Arrival;
use streams::{Incoming, Outgoing};
pub(crate) use wire::{Body, Heartbeat, Message};
pub(crate) use writes::{Bucket, Write, Writes};

/// A message for another hub, waiting for the publisher.
pub(crate) type Outbound = (HubId, Bytes);

/// A question for another hub's admin side (a push or a kick for its users), and where its
/// answer goes: the answer's bytes, or why none came.
pub(crate) type Ask = (HubId, Bytes, tokio::sync::oneshot::Sender<Result<Bytes, String>>);

/// Counters of the backplane, for logs and metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    /// Messages dropped because `max_pending_batches` and the backlog's headroom were taken.
    pub(crate) dropped: AtomicU64,
    /// Gaps seen in the streams from other hubs.
    pub(crate) gaps: AtomicU64,
    /// Readers paused here because a window to another hub's server was shut, or the queue to
    /// NATS was full.
    pub(crate) pauses: AtomicU64,
    /// Drift repaired by the reconciliation, by [`Drift::what`]: servers, users put back, users
    /// taken out, groups.
    repairs: [AtomicU64; 4],
}

/// The labels of the repairs, in the order of [`Counters::repairs`].
const REPAIRS: [&str; 4] = ["server", "user_online", "user_offline", "group"];

/// The backplane's figures, for `/metrics` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackplaneStats {
    /// Whether this hub is connected to NATS now.
    pub connected: bool,
    /// The other hubs alive (heard from within the deadline).
    pub hubs_alive: usize,
    /// Messages published to other hubs.
    pub published: u64,
    /// Messages received from other hubs.
    pub received: u64,
    /// Messages dropped because the queue to NATS was full.
    pub dropped: u64,
    /// Gaps seen in the streams from other hubs (lost messages, repaired by sending again).
    pub gaps: u64,
    /// (group, hub) pairs with members, this hub's included, as the groups bucket says.
    pub group_interest: usize,
    /// Times a reader here waited because its frames shut the credit window to a server of
    /// another hub (pushback across hubs).
    pub pauses: u64,
    /// Credit windows to servers of other hubs shut now.
    pub windows_shut: usize,
    /// Drift between the shared directory and this hub repaired by the reconciliation, by
    /// what was repaired (`server`, `user_online`, `user_offline`, `group`).
    pub repairs: [(&'static str, u64); 4],
}

/// An app server registered on another hub, as the shared directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteServer {
    /// Its id.
    pub id: ServerId,
    /// The hub it is connected to.
    pub hub: HubId,
    /// Whether that hub is alive (heard from within the deadline).
    pub hub_alive: bool,
    /// Where its clients connect.
    pub client_addr: String,
    /// Users the directory has on it.
    pub users: usize,
    /// Its hub's latest report of it (state and load), carried in the hub's heartbeats; `None`
    /// until one came, or once its hub is dead.
    pub report: Option<ServerReport>,
}

/// This hub's side of the backplane, shared by every connection.
#[derive(Debug)]
pub(crate) struct Backplane {
    pub(crate) me: HubId,
    pub(crate) names: Names,
    pub(crate) replica: Replica,
    /// Which hubs have members of which group.
    pub(crate) interest: Interest,
    pub(crate) writes: Writes,
    pub(crate) counters: Counters,
    /// Whether the NATS connection is up now, as its events say.
    pub(crate) connected: std::sync::Arc<AtomicBool>,
    outgoing: Mutex<Outgoing>,
    publisher: mpsc::UnboundedSender<Outbound>,
    /// The messages `publisher` holds, against `max_pending_batches`.
    pub(crate) backlog: backlog::Backlog,
    incoming: Mutex<Incoming>,
    /// (origin, target) pairs whose frames are dropped here until the origin's `Resent` for
    /// the target: a frame of the origin for the target was dropped (its hub was dead), and no
    /// later one may overtake it.
    held: Mutex<HashSet<(ServerId, ServerId)>>,
    any_held: AtomicBool,
    /// The epoch of each remote origin that this hub's servers were told, and the hub its
    /// frames last came from.
    told_epochs: Mutex<HashMap<ServerId, (u64, HubId)>>,
    stuck: Mutex<recovery::Stuck>,
    dead: Mutex<recovery::Dead>,
    /// Servers that were registered here and moved to another hub: frames for them that reach
    /// this hub late are dropped, not bounced, since every origin sends again to a server that
    /// moved.
    moved_away: Mutex<HashSet<ServerId>>,
    /// The queue of questions to other hubs, set when the shell runs.
    asks: std::sync::OnceLock<mpsc::Sender<Ask>>,
    /// The load reports of the other hubs' servers, and this hub's turn over its own.
    loads: Mutex<loads::Loads>,
    /// Servers registered here whose snapshot is not done yet, with the hubs whose frames for
    /// their users were dropped meanwhile: those hubs' servers send again once it is done.
    snapshotting: Mutex<HashMap<ServerId, HashSet<HubId>>>,
    /// Bytes on their way to each server of another hub (pushback across hubs).
    pub(crate) windows: Windows,
    /// Credit owed to other hubs for the frames they sent the servers here.
    pub(crate) credits: Credits,
    /// What the reconciliation found last time.
    suspects: Mutex<reconcile::Suspects>,
}

impl Backplane {
    /// The core of hub `me` in `cluster`, and the receiving end of its publisher's queue, whose
    /// readers wait past `max_pending` messages (see `backlog`).
    pub(crate) fn new(
        me: HubId,
        cluster: &ClusterName,
        dead_after: Duration,
        max_pending: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Outbound>) {
        let (publisher, queue) = mpsc::unbounded_channel();
        let backplane = Self {
            me,
            names: Names::new(cluster),
            replica: Replica::new(me, dead_after),
            interest: Interest::default(),
            writes: Writes::default(),
            counters: Counters::default(),
            connected: std::sync::Arc::new(AtomicBool::new(true)),
            outgoing: Mutex::default(),
            publisher,
            backlog: backlog::Backlog::new(max_pending),
            incoming: Mutex::default(),
            held: Mutex::default(),
            any_held: AtomicBool::new(false),
            told_epochs: Mutex::default(),
            stuck: Mutex::default(),
            dead: Mutex::default(),
            moved_away: Mutex::default(),
            asks: std::sync::OnceLock::new(),
            snapshotting: Mutex::default(),
            loads: Mutex::default(),
            windows: Windows::new(window(1 << 20, 64 << 20)),
            credits: Credits::default(),
            suspects: Mutex::default(),
        };
        (backplane, queue)
    }

    /// Numbers a message for `hub` and queues it for the publisher, never waiting. A message
    /// that finds the backlog's limit and headroom taken is dropped: the number is spent, so
    /// the receiver sees the gap and has the origins send again.
    fn publish(&self, hub: HubId, message: impl FnOnce(u64) -> Bytes) {
        let mut outgoing = self.outgoing.lock().expect("outgoing lock");
        let seq = outgoing.next(hub);
        // Under the lock: messages are queued in the order of their numbers.
        self.enqueue(hub, message(seq));
    }

    /// Queues `message` for the publisher, or drops it past the backlog's limit and headroom
    /// (or once the publisher has stopped, as the hub shuts down).
    fn enqueue(&self, hub: HubId, message: Bytes) {
        if !self.backlog.admit() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        } else if self.publisher.send((hub, message)).is_err() {
            self.backlog.left();
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Publishes whole frames of `origin` (of `epoch`) to `hub`: one message, or several of at
    /// most [`wire::MAX_FRAMES_LEN`] bytes each, cut between frames. `counted` is what the
    /// frames count against each server's credit window; it goes with the last message, so
    /// it is credited once all of them are queued.
    pub(crate) fn send_frames(
        &self,
        hub: HubId,
        (origin, epoch): (ServerId, u64),
        counted: &[(ServerId, u32)],
        chunks: &[Bytes],
    ) {
        let me = self.me;
        let from = (origin, epoch);
        if chunks.iter().map(Bytes::len).sum::<usize>() <= wire::MAX_FRAMES_LEN {
            self.publish(hub, |seq| Message::encode_frames(me, seq, from, counted, chunks));
            return;
        }
        let parts = wire::split_frames(chunks, wire::MAX_FRAMES_LEN);
        let last = parts.len().saturating_sub(1);
        for (index, part) in parts.iter().enumerate() {
            let counted = if index == last { counted } else { &[] };
            self.publish(hub, |seq| Message::encode_frames(me, seq, from, counted, part));
        }
    }

    /// Tells `hub` that `origin` sent `Resent` for `target`, after its frames before it.
    pub(crate) fn send_resent(&self, hub: HubId, origin: ServerId, target: ServerId) {
        let from = self.me;
        self.publish(hub, |seq| {
            Message { from, seq, body: Body::Resent { origin, target } }.encode()
        });
    }

    /// Tells `hub` that messages from it were lost: unnumbered.
    pub(crate) fn send_gap(&self, hub: HubId) {
        self.send_unnumbered(hub, Body::Gap);
    }

    /// Credits `hub` with `bytes` of its frames for `target`, a server here (unnumbered: see
    /// `flow`).
    pub(crate) fn send_credit(&self, hub: HubId, target: ServerId, bytes: usize) {
        self.send_unnumbered(hub, Body::Credit { target, bytes: bytes as u64 });
    }

    fn send_unnumbered(&self, hub: HubId, body: Body) {
        self.enqueue(hub, Message { from: self.me, seq: 0, body }.encode());
    }

    /// Questions to other hubs go to `asks`, which the shell answers.
    pub(crate) fn set_asks(&self, asks: mpsc::Sender<Ask>) {
        let _set_once = self.asks.set(asks);
    }

    /// Asks `hub`'s admin side `question`, and waits for its answer (the shell bounds the wait).
    pub(crate) async fn ask(&self, hub: HubId, question: Bytes) -> Result<Bytes, String> {
        let asks = self.asks.get().ok_or("the backplane is not running")?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        asks.try_send((hub, question, answer))
            .map_err(|_| "too many questions to other hubs at once".to_owned())?;
        answered.await.map_err(|_| "the backplane stopped".to_owned())?
    }

    /// This hub's heartbeat now, reporting `reports` of this hub's servers (up to
    /// `loads::MAX_REPORTS` of them, in turn past that).
    pub(crate) fn heartbeat(&self, reports: Vec<ServerReport>) -> Bytes {
        let sent = self.outgoing.lock().expect("outgoing lock").last();
        let (total, reports) = self.loads.lock().expect("loads lock").pick_mine(reports);
        Heartbeat { from: self.me, sent, total, reports }.encode()
    }

    /// `hub`'s heartbeat reported `reports` of its `total` servers at `now`: kept for those the
    /// directory places on it.
    pub(crate) fn heard_reports(
        &self,
        hub: HubId,
        total: u32,
        reports: Vec<ServerReport>,
        now: Instant,
    ) {
        let placed = |server| self.replica.place(server).is_some_and(|place| place.hub == hub);
        self.loads.lock().expect("loads lock").heard(hub, total, reports, placed, now);
    }

    /// `server` of `hub` was drained through this hub at `now`: this hub assigns it no client
    /// from now, before its hub's heartbeats say so.
    pub(crate) fn drained_remote(&self, hub: HubId, server: ServerId, now: Instant) {
        self.loads.lock().expect("loads lock").mark_draining(hub, server, now);
    }

    /// A numbered message from `hub` arrived.
    pub(crate) fn arrive(&self, hub: HubId, seq: u64) -> Arrival {
        self.incoming.lock().expect("incoming lock").arrive(hub, seq)
    }

    /// `hub` claims it sent this hub messages up to `last`: the first missing, if some were lost.
    pub(crate) fn claimed(&self, hub: HubId, last: u64) -> Option<u64> {
        self.incoming.lock().expect("incoming lock").claimed(hub, last)
    }

    /// One heartbeat tick: of the hubs whose origins the servers here wait on (`waiting`), those
    /// waited on for `limit` ticks in a row, to be sent a gap notice again (the first, or the
    /// `Resent` that answered it, may have been lost too).
    pub(crate) fn stuck(&self, waiting: &HashSet<HubId>, limit: u32) -> Vec<HubId> {
        self.stuck.lock().expect("stuck lock").tick(waiting, limit)
    }

    /// `hub` is heard from again.
    pub(crate) fn revived(&self, hub: HubId) {
        self.dead.lock().expect("dead lock").revived(hub);
    }

    /// The hubs dead for longer than `grace` at `now`, each returned once: the servers still
    /// placed on them came back nowhere, and this hub takes them out of the directory. Every
    /// hub that saw the death does (the deletions are conditional, so the first one wins and
    /// the others find nothing), since a hub that joined late may never have heard the dead one.
    pub(crate) fn given_up(&self, now: Instant, grace: Duration) -> Vec<HubId> {
        self.dead.lock().expect("dead lock").past_grace(now, grace)
    }

    /// A server is placed on `hub`, never heard from: counted dead from `now` unless its
    /// heartbeat comes, so the servers of a hub that died before this one heard it still leave.
    pub(crate) fn suspect(&self, hub: HubId, now: Instant) {
        if hub != self.me && !self.replica.is_alive(hub) {
            self.dead.lock().expect("dead lock").died(hub, now);
        }
    }

    /// Owes the directory the removal of `server`, placed at `place` on a dead hub, and of its
    /// users.
    pub(crate) fn remove_server(&self, server: ServerId, place: Place) {
        let value = serde_json::to_vec(&place).expect("a place serializes");
        self.writes.owe(Bucket::Servers, server_key(server), Write::DeleteIf(value.into()));
        for user in self.replica.users_on(server) {
            self.user_offline(user.as_str(), server);
        }
    }

    /// `hub` is dead at `now`: its streams, and the credit owed to it, are forgotten.
    pub(crate) fn hub_dead(&self, hub: HubId, now: Instant) {
        self.dead.lock().expect("dead lock").died(hub, now);
        self.forget_hub(hub);
        self.credits.forget_hub(hub);
    }

    fn forget_hub(&self, hub: HubId) {
        self.loads.lock().expect("loads lock").forget(hub);
        self.incoming.lock().expect("incoming lock").forget(hub);
        self.outgoing.lock().expect("outgoing lock").forget(hub);
    }

    /// A frame from `origin` to `target` was dropped: later ones are too, until `Resent`.
    pub(crate) fn hold(&self, origin: ServerId, target: ServerId) {
        self.held.lock().expect("held lock").insert((origin, target));
        self.any_held.store(true, Ordering::Release);
    }

    /// Whether frames from `origin` to `target` are dropped.
    #[inline]
    pub(crate) fn is_held(&self, origin: ServerId, target: ServerId) -> bool {
        self.any_held.load(Ordering::Acquire)
            && self.held.lock().expect("held lock").contains(&(origin, target))
    }

    /// `origin` sent `Resent` for `target`: its frames pass again.
    pub(crate) fn release(&self, origin: ServerId, target: ServerId) {
        let mut held = self.held.lock().expect("held lock");
        held.remove(&(origin, target));
        if held.is_empty() {
            self.any_held.store(false, Ordering::Release);
        }
    }

    /// Every (origin, target) pair whose frames are dropped here until `Resent`.
    pub(crate) fn held_pairs(&self) -> Vec<(ServerId, ServerId)> {
        self.held.lock().expect("held lock").iter().copied().collect()
    }

    /// `origin` registered again: it sends everything not acknowledged, so its pairs pass.
    pub(crate) fn release_origin(&self, origin: ServerId) {
        let mut held = self.held.lock().expect("held lock");
        held.retain(|(from, _)| *from != origin);
        if held.is_empty() {
            self.any_held.store(false, Ordering::Release);
        }
    }

    /// `origin` sent `Resent` for `target` (a server of this hub if `here`): its frames to it
    /// pass again, and the hub of `target` learns it after the frames sent before it.
    pub(crate) fn resent(&self, origin: ServerId, target: ServerId, here: bool) {
        self.release(origin, target);
        if !here && let Remote::Hub(hub) = self.replica.route_server(target) {
            self.send_resent(hub, origin, target);
        }
    }

    /// Whether this hub's servers must be told `origin`'s epoch before its frames, which come
    /// from `hub`: it is new to them, or restarted. Records it as told, and where it is.
    pub(crate) fn tell_epoch(&self, origin: ServerId, epoch: u64, hub: HubId) -> bool {
        let mut told = self.told_epochs.lock().expect("epochs lock");
        told.insert(origin, (epoch, hub)).is_none_or(|(before, _)| before != epoch)
    }

    /// The hub an ack for `target`, a server not connected here, goes to: the one the directory
    /// places it on or, while the directory has no place for it yet, the one its frames came
    /// from. (A hub's frames can arrive before the directory entry of their origin: dropped for
    /// want of a place, the ack of a lone message never came, and its receipt timed out.)
    pub(crate) fn ack_hub(&self, target: ServerId) -> Option<HubId> {
        match self.replica.route_server(target) {
            Remote::Hub(hub) => Some(hub),
            Remote::Moving => None,
            Remote::Nowhere => {
                let told = self.told_epochs.lock().expect("epochs lock");
                told.get(&target).map(|&(_, hub)| hub).filter(|&hub| hub != self.me)
            }
        }
    }

    /// The servers of this hub with members of `group` are now `servers` (none: the last
    /// member here left): owes the groups bucket this hub's entry, and records it at once.
    pub(crate) fn group_servers_here(&self, group: &acms_protocol::GroupId, servers: &[ServerId]) {
        self.interest.set_here(group, self.me, servers, Instant::now());
        let key = group_key(group.as_str(), self.me);
        let write =
            if servers.is_empty() { Write::Delete } else { Write::Put(encode_servers(servers)) };
        self.writes.owe(Bucket::Groups, key, write);
    }

    /// The servers of other live hubs with members of `group`, and those of dead hubs (whose
    /// copies are held until they register elsewhere), without repeats.
    pub(crate) fn group_servers_remote(&self, group: &str) -> Vec<ServerId> {
        let mut servers: Vec<ServerId> =
            self.interest.servers_of(group, self.me).into_iter().map(|(_, s)| s).collect();
        servers.sort_unstable();
        servers.dedup();
        servers
    }

    /// Owes the groups bucket the removal of `hub`'s entries: it was given up.
    pub(crate) fn remove_hub_groups(&self, hub: HubId) {
        for group in self.interest.groups_on(hub) {
            self.interest.set(group.clone(), hub, Vec::new());
            self.writes.owe(Bucket::Groups, group_key(group.as_str(), hub), Write::Delete);
        }
    }

    /// Owes the directory the user's sessions on this hub's servers: a login on one of them, or
    /// new candidates. What is written is read from the registry when the write is made
    /// ([`Write::Sync`]), so the server is not needed, and edits of one user coalesce.
    pub(crate) fn user_online(&self, user: &str, _server: ServerId) {
        self.writes.owe(Bucket::Users, user_key(user), Write::Sync { drop: Vec::new() });
    }

    /// A login of `user` under `replace` is about to be placed here: the revision of their entry
    /// as this hub knows it, which the login will be written over (see [`Write::Claim`]). Until
    /// [`Backplane::login_placed`], another hub's entry for them kicks nobody here: this
    /// login's write decides.
    pub(crate) fn login_begins(&self, user: &str) -> Option<u64> {
        self.writes.begin(Bucket::Users, user_key(user));
        self.replica.user_revision(user)
    }

    /// The login begun by [`Backplane::login_begins`] is placed: on a server here (`placed`), to
    /// be written over revision `expected`, or (`None`) nowhere new. `fresh`: a new login, not
    /// a confirmation of a user the server had (see [`Write::Claim`]).
    pub(crate) fn login_placed(
        &self,
        user: &str,
        placed: Option<ServerId>,
        expected: Option<u64>,
        fresh: bool,
    ) {
        let key = user_key(user);
        if placed.is_some() {
            let claim = Write::Claim { expected, drop: Vec::new(), fresh };
            self.writes.owe(Bucket::Users, key.clone(), claim);
        }
        self.writes.done(Bucket::Users, &key);
    }

    /// Owes the directory the user's leaving `server` (a server of this hub, or of a dead hub
    /// given up): their session there goes, the others stay.
    pub(crate) fn user_offline(&self, user: &str, server: ServerId) {
        self.writes.owe(Bucket::Users, user_key(user), Write::Sync { drop: vec![server] });
    }

    /// Whether `user` has a session on a server the directory places on another hub (or on none
    /// that `local` says is registered here).
    pub(crate) fn has_remote_sessions(&self, user: &str, local: impl Fn(ServerId) -> bool) -> bool {
        self.replica.sessions(user).into_iter().any(|server| !local(server))
    }

    /// Owes the directory `server`'s new registration here, and records it in the replica at
    /// once (the watch brings it back later).
    pub(crate) fn server_registered(&self, server: ServerId, epoch: u64, client_addr: String) {
        self.moved_away.lock().expect("moved lock").remove(&server);
        let place = Place { hub: self.me, epoch, registration: rand::random(), client_addr };
        self.replica.set_place(server, place.clone());
        let value = serde_json::to_vec(&place).expect("a place serializes");
        self.writes.owe(Bucket::Servers, server_key(server), Write::Put(value.into()));
    }

    /// Owes the directory `server`'s leaving the cluster, if it is still registered here.
    pub(crate) fn server_gone(&self, server: ServerId) {
        let Some(place) = self.replica.place(server).filter(|place| place.hub == self.me) else {
            return;
        };
        let value = serde_json::to_vec(&place).expect("a place serializes");
        self.writes.owe(Bucket::Servers, server_key(server), Write::DeleteIf(value.into()));
    }

    /// `server` registered here: until [`Backplane::snapshot_done`], its users may not be in
    /// the registry yet.
    pub(crate) fn snapshot_begins(&self, server: ServerId) {
        self.snapshotting.lock().expect("snapshotting lock").insert(server, HashSet::new());
    }

    /// A frame from a server of `hub` for a user the directory places on `server`, registered
    /// here, found no session: if `server` has not finished its snapshot, the frame is dropped
    /// for its origin to send again once it has (true). Otherwise the user is not there.
    pub(crate) fn wait_for_snapshot(&self, server: ServerId, hub: HubId) -> bool {
        let mut snapshotting = self.snapshotting.lock().expect("snapshotting lock");
        snapshotting.get_mut(&server).map(|hubs| hubs.insert(hub)).is_some()
    }

    /// `server`'s snapshot is done (or it left): the hubs whose frames for it were dropped
    /// meanwhile, to be asked to have their servers send again.
    pub(crate) fn snapshot_done(&self, server: ServerId) -> HashSet<HubId> {
        let mut snapshotting = self.snapshotting.lock().expect("snapshotting lock");
        snapshotting.remove(&server).unwrap_or_default()
    }

    /// `server`'s snapshot is done: each hub whose frames for its users were dropped meanwhile
    /// is told so, as for a gap, and has its servers send again (the servers here drop their
    /// frames until their `Resent`).
    pub(crate) fn snapshot_finished(&self, server: ServerId) {
        for hub in self.snapshot_done(server) {
            tracing::info!(%server, %hub, "frames for a server still sending its snapshot were dropped; their hub sends again");
            self.send_gap(hub);
        }
    }

    /// Whether `server`'s snapshot is still coming: its users may not all be in the registry.
    pub(crate) fn is_snapshotting(&self, server: ServerId) -> bool {
        self.snapshotting.lock().expect("snapshotting lock").contains_key(&server)
    }

    /// Whether this check of the reconciliation compares everything (see
    /// [`reconcile::Suspects::full_due`]).
    pub(crate) fn full_check_due(&self, counts: Counts, forced: bool) -> bool {
        self.suspects.lock().expect("suspects lock").full_due(counts, forced)
    }

    /// A full check with `counts` found `drift` differences.
    pub(crate) fn full_check_done(&self, counts: Counts, drift: usize) {
        self.suspects.lock().expect("suspects lock").checked(counts, drift);
    }

    /// Of the drift `found` by a check, what is not being written already and was found by the
    /// check before too: to repair now, counted in the figures.
    pub(crate) fn confirm_drift(&self, found: Vec<Drift>) -> Vec<Drift> {
        let settled = found.into_iter().filter(|drift| {
            let (bucket, key) = match drift {
                Drift::Server(server) => (Bucket::Servers, server_key(*server)),
                Drift::UserOnline(user, _) | Drift::UserOffline(user, _) => {
                    (Bucket::Users, user_key(user.as_str()))
                }
                Drift::Group(group) => (Bucket::Groups, group_key(group.as_str(), self.me)),
            };
            !self.writes.is_owed(bucket, &key)
        });
        let confirmed = self.suspects.lock().expect("suspects lock").confirm(settled);
        for drift in &confirmed {
            self.count_repair(drift.what());
        }
        confirmed
    }

    /// Counts a repair of drift, named as [`Drift::what`] names it.
    pub(crate) fn count_repair(&self, what: &str) {
        if let Some(index) = REPAIRS.iter().position(|known| *known == what) {
            self.counters.repairs[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The servers of the other hubs, by id.
    pub(crate) fn remote_server_list(&self) -> Vec<RemoteServer> {
        let counts = self.replica.user_counts();
        let remote = self.replica.remote_servers();
        let loads = self.loads.lock().expect("loads lock");
        let mut servers: Vec<RemoteServer> = remote
            .into_iter()
            .map(|(id, place)| {
                let hub_alive = self.replica.is_alive(place.hub);
                RemoteServer {
                    id,
                    hub: place.hub,
                    hub_alive,
                    client_addr: place.client_addr,
                    users: counts.get(&id).copied().unwrap_or(0),
                    report: loads.report(place.hub, id).filter(|_| hub_alive),
                }
            })
            .collect();
        drop(loads);
        servers.sort_by_key(|server| server.id);
        servers
    }

    /// The figures now.
    pub(crate) fn stats(&self) -> BackplaneStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BackplaneStats {
            connected: self.connected.load(Ordering::Relaxed),
            hubs_alive: self.replica.hubs_alive(),
            published: load(&self.counters.published),
            received: load(&self.counters.received),
            dropped: load(&self.counters.dropped),
            gaps: load(&self.counters.gaps),
            group_interest: self.interest.len(),
            pauses: load(&self.counters.pauses),
            windows_shut: self.windows.shut(),
            repairs: std::array::from_fn(|i| (REPAIRS[i], load(&self.counters.repairs[i]))),
        }
    }

    /// `server`, registered here until now, moved to another hub.
    pub(crate) fn moved(&self, server: ServerId) {
        self.moved_away.lock().expect("moved lock").insert(server);
    }

    /// Whether `server` moved from this hub to another.
    pub(crate) fn has_moved(&self, server: ServerId) -> bool {
        self.moved_away.lock().expect("moved lock").contains(&server)
    }

    /// Whether `server` is registered on this hub by the shared directory.
    pub(crate) fn is_mine(&self, server: ServerId) -> bool {
        self.replica.place(server).is_some_and(|place| place.hub == self.me)
    }
}

#[cfg(test)]
mod tests;

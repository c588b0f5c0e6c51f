//! The AS registry and the user directory.
//!
//! Both are sharded concurrent maps behind synchronous methods: a relay looks up the recipient's
//! server and queues the frame on that server's [`Outbox`] without holding any guard across an
//! `.await` (there is none), so connections on different cores rarely touch the same shard.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use acms_protocol::{Candidate, Load, ServerId, UserId};
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio_util::sync::CancellationToken;

use crate::config::LoginConflict;
use crate::forwarded::{Forwarded, Marks, lower as hold};
use crate::outbox::{Outbox, PushError};

mod candidates;
mod directory;
mod settle;

pub(crate) use directory::{Left, Owner, Placed, PresenceChange};
use settle::SettleWindow;

/// What the cluster knows of one registered AS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The id it registered under.
    pub id: ServerId,
    /// Where its clients connect, as it advertised.
    pub client_addr: String,
    /// The address its hub connection comes from.
    pub peer_addr: SocketAddr,
    /// When it registered.
    pub connected_at: SystemTime,
    /// Its latest load report; `None` until the first arrives.
    pub load: Option<Load>,
    /// An operator drains it: it gets no new clients. A server that registers again (restarted
    /// after its upgrade) is active again.
    pub draining: bool,
}

/// The connection of a registered AS.
#[derive(Debug)]
struct Attached {
    outbox: Outbox,
    /// Cancels the AS's connection, for the slow-consumer rule.
    closer: CancellationToken,
    /// What each origin forwarded to this connection: if the AS does not come back, those
    /// origins send again what is unacknowledged, as it may have died with the connection.
    forwarded: Forwarded,
}

#[derive(Debug)]
struct ServerEntry {
    info: ServerInfo,
    /// The epoch of the AS's process, from its `Hello`.
    epoch: u64,
    /// `None` while the AS is away: its connection broke and it may come back within the grace.
    attached: Option<Attached>,
    /// Users of a connection that broke, kept in the directory until the AS comes back (and
    /// confirms them with its snapshot) or the grace ends; with the departure's number.
    away: Option<(u64, HashSet<UserId>)>,
    /// Origins whose frames to this AS were dropped while it was away, or forwarded to the
    /// connection that broke, with the lowest sequence number: if it does not come back, they
    /// send again from there, and the frames reach their recipient elsewhere or bounce. (If it
    /// does, every server sends again everything not acknowledged.)
    held: HashMap<ServerId, u64>,
    /// Origins asked to send again whose `Resent` has not arrived: their frames to this AS are
    /// dropped meanwhile, so they cannot overtake the frames sent again.
    blocked: HashSet<ServerId>,
}

impl ServerEntry {
    /// Stops relaying to the server at once and tells its connection to end.
    fn close(&self) {
        if let Some(attached) = &self.attached {
            attached.outbox.close();
            attached.closer.cancel();
        }
    }
}

/// A fast, randomly seeded hash: every relayed frame costs one directory lookup.
type Hasher = foldhash::fast::RandomState;

/// What [`Registry::depart`] did.
#[derive(Debug)]
pub(crate) enum Departure {
    /// The AS is away, with this departure number, until it comes back or the grace ends.
    Away(u64),
    /// The AS and its users are gone.
    Gone {
        /// What changed for the others.
        left: Left,
        /// By origin, the lowest sequence number it forwarded to the AS's connection: the
        /// origins send again from there what is unacknowledged.
        forwarded: HashMap<ServerId, u64>,
    },
}

/// Registered AS and the users online on them.
///
/// The registry also keeps what exactly-once delivery needs from the hub (docs/RELIABILITY.md):
/// an AS whose connection broke stays registered, "away", for a grace period, and frames for its
/// users are dropped and remembered by origin instead of bounced; while the directory is still
/// filling after the hub starts (the settle window), so are frames for users nobody has yet.
#[derive(Debug)]
pub struct Registry {
    servers: DashMap<ServerId, ServerEntry, Hasher>,
    users: DashMap<UserId, Owner, Hasher>,
    /// Every AS of the users online on more than one (policy `multi`), the last login last. Only
    /// read for a user whose [`Owner::multi`] is set, and changed only under that user's entry in
    /// `users`, so the relay of everybody else never touches it.
    sessions: DashMap<UserId, Vec<ServerId>, Hasher>,
    /// The P2P candidates of the sessions that set any, by user (see `candidates`); never read
    /// on the relay path.
    candidates: DashMap<UserId, Vec<(ServerId, Vec<Candidate>)>, Hasher>,
    conflict: LoginConflict,
    /// The settle window after the first registration, and the frames dropped in it for users
    /// nobody had.
    settle: SettleWindow,
    departures: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

/// A second live AS asked for an id that is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("server id {0} is already registered by a live connection")]
pub struct DuplicateServer(pub ServerId);

/// Why frames could not be queued for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// The server is no longer registered; the frames come back to be bounced.
    Gone(Vec<Bytes>),
    /// The server is over its queue limit and was told to disconnect; the frames were held, for
    /// their origin to send again.
    SlowConsumer {
        /// Bytes it had pending.
        pending: usize,
    },
}

/// What became of frames handed to [`Registry::relay_batch`].
#[derive(Debug)]
pub(crate) enum Relayed {
    /// Queued; the outbox is returned when it is above its high water.
    Queued(Option<Outbox>),
    /// Dropped, to be sent again by their origin: the server is away, or the origin has not yet
    /// sent again what it was asked to.
    Held,
}

/// What a (re)registration found.
#[derive(Debug, Default)]
pub(crate) struct Registration {
    /// Users the AS had when its connection broke; those not in its new snapshot go offline.
    pub(crate) stale_users: HashSet<UserId>,
    /// Origins that must send again to this AS, from the given sequence number.
    pub(crate) resend: HashMap<ServerId, u64>,
    /// Whether this is the hub's first registration: the settle window starts now.
    pub(crate) first: bool,
}

/// What a registration on a backplane must hold back (see [`Registry::register_arriving`]).
#[derive(Debug, Default)]
pub(crate) struct Arriving {
    /// Every connected server here sends again what it has not had acknowledged.
    pub(crate) resend_all: bool,
    /// Origins on other hubs, whose frames to this server are dropped until their `Resent`.
    pub(crate) remote: Vec<ServerId>,
}

/// Another registered AS, to be told of a registration.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: ServerId,
    pub(crate) epoch: u64,
    pub(crate) outbox: Outbox,
}

impl Registry {
    /// An empty registry whose settle window lasts `settle` from the first registration.
    pub fn new(settle: Duration) -> Self {
        Self {
            servers: DashMap::default(),
            users: DashMap::default(),
            sessions: DashMap::default(),
            candidates: DashMap::default(),
            conflict: LoginConflict::default(),
            settle: SettleWindow::new(settle),
            departures: AtomicU64::new(0),
        }
    }

    /// The same registry with another login-conflict policy.
    pub fn with_login_conflict(mut self, conflict: LoginConflict) -> Self {
        self.conflict = conflict;
        self
    }

    /// Registers an AS, unless another live connection holds its id. An AS that is away comes
    /// back: its users are kept until its snapshot says otherwise. `welcome`, the AS's first
    /// frame, is queued before the outbox can be found here, so no push from another connection
    /// (a `ServerUp` of a server registering at the same moment, a presence change) can come
    /// before it.
    #[cfg(test)]
    pub(crate) fn register(
        &self,
        info: ServerInfo,
        epoch: u64,
        outbox: Outbox,
        closer: CancellationToken,
        welcome: Option<Bytes>,
    ) -> Result<Registration, DuplicateServer> {
        self.register_arriving(info, epoch, outbox, closer, welcome, Arriving::default())
    }

    /// [`Registry::register`] on a backplane: `arriving` says what other hubs may have lost of
    /// the frames for this server, so the origins that send again are set at once, before any
    /// frame of theirs can reach the new connection.
    pub(crate) fn register_arriving(
        &self,
        info: ServerInfo,
        epoch: u64,
        outbox: Outbox,
        closer: CancellationToken,
        welcome: Option<Bytes>,
        arriving: Arriving,
    ) -> Result<Registration, DuplicateServer> {
        let id = info.id;
        let welcome = |outbox: &Outbox| {
            if let Some(frame) = welcome {
                // A fresh outbox has room for one small frame.
                let _ = outbox.push(frame);
            }
        };
        let now = Instant::now();
        let first = self.settle.start(now);
        let mut registration = Registration { first, ..Registration::default() };
        // Read before the entry is locked (iterating takes every shard's lock). A server that
        // registers meanwhile sends everything unacknowledged anyway, and waits for nobody.
        let mut connected = Vec::new();
        let mut here = HashSet::new();
        for other in self.servers.iter().filter(|other| *other.key() != id) {
            here.insert(*other.key());
            if other.attached.is_some() {
                connected.push(*other.key());
            }
        }
        // Who sends again is settled, and blocked, in the same lock that makes the connection
        // findable: a frame relayed to it before its origin is blocked would overtake the frames
        // that origin sends again. (Blocked a moment later, a frame relayed in that moment was.)
        let resend_and_block =
            |returning: bool, held: Vec<ServerId>, resend: &mut HashMap<_, _>| {
                // A returning server's frames still queued for its broken connection died with it,
                // unrecorded; one arriving on a backplane may come from another hub, where frames
                // for it died: either way every server here sends again all it has not had
                // acknowledged.
                if returning || arriving.resend_all {
                    resend.extend(connected.iter().map(|&other| (other, 0)));
                }
                self.settle.registered(id, now, resend);
                resend.remove(&id);
                // On a backplane, the origins that forwarded to the broken connection, or whose
                // frames were dropped while it was away, and that are not servers of this hub are
                // on other hubs, whether or not the replica lists them yet (their directory entry
                // may still be on its way): they send again too, once their hub sees this
                // registration.
                let elsewhere =
                    held.into_iter().filter(|origin| arriving.resend_all && !here.contains(origin));
                // The hub's own pushes wait until the AS has been told the hub's epoch; servers on
                // other hubs until their `Resent` comes through the backplane.
                resend
                    .keys()
                    .copied()
                    .chain([ServerId::HUB])
                    .chain(arriving.remote)
                    .chain(elsewhere)
                    .filter(|&origin| origin != id)
                    .collect::<HashSet<ServerId>>()
            };
        let attached =
            Some(Attached { outbox: outbox.clone(), closer, forwarded: Forwarded::new() });
        match self.servers.entry(id) {
            Entry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if entry.attached.is_some() {
                    return Err(DuplicateServer(id));
                }
                welcome(&outbox);
                registration.stale_users =
                    entry.away.take().map(|(_, users)| users).unwrap_or_default();
                let held: Vec<ServerId> = entry.held.drain().map(|(origin, _)| origin).collect();
                entry.info = info;
                entry.epoch = epoch;
                entry.blocked = resend_and_block(true, held, &mut registration.resend);
                entry.attached = attached;
            }
            Entry::Vacant(slot) => {
                welcome(&outbox);
                let blocked = resend_and_block(false, Vec::new(), &mut registration.resend);
                slot.insert(ServerEntry {
                    info,
                    epoch,
                    attached,
                    away: None,
                    held: HashMap::new(),
                    blocked,
                });
            }
        }
        // This AS sends everything it has not had acknowledged once it is registered; nobody
        // needs to wait for a `Resent` from it.
        for mut other in self.servers.iter_mut() {
            other.blocked.remove(&id);
        }
        Ok(registration)
    }

    /// Takes an AS off the cluster. With a grace, it stays registered but away, its users in
    /// the directory, until [`Registry::expire`] with the returned number; without one, it and
    /// its users are gone at once.
    pub(crate) fn depart(&self, id: ServerId, users: HashSet<UserId>, grace: bool) -> Departure {
        if grace && let Some(mut entry) = self.servers.get_mut(&id) {
            let departure = self.departures.fetch_add(1, Ordering::Relaxed);
            // What was forwarded to the broken connection counts as held: sent again if the AS
            // does not come back. A relay notes what it queued under the shard lock it queued
            // under, so nothing queued to this connection escapes the record.
            let forwarded = entry.attached.take().map(|attached| attached.forwarded.take());
            for (origin, seq) in forwarded.unwrap_or_default() {
                hold(&mut entry.held, origin, seq);
            }
            entry.away = Some((departure, users));
            return Departure::Away(departure);
        }
        let forwarded = self
            .servers
            .remove(&id)
            .and_then(|(_, entry)| entry.attached)
            .map(|attached| attached.forwarded.take())
            .unwrap_or_default();
        let mut left = Left::default();
        for user in &users {
            left.extend(self.logout(id, user.as_str()));
        }
        Departure::Gone { left, forwarded }
    }

    /// Ends the grace of an AS that is still away since `departure`: it and its users leave the
    /// cluster. Returns the origins whose frames to it were dropped or in flight, to be asked to
    /// send again (the hub now routes those frames to where their recipients are, or answers them
    /// with `Undeliverable`), and the users who changed place.
    pub(crate) fn expire(
        &self,
        id: ServerId,
        departure: u64,
    ) -> Option<(HashMap<ServerId, u64>, Left)> {
        let (_, entry) = self.servers.remove_if(&id, |_, entry| {
            entry.away.as_ref().is_some_and(|(number, _)| *number == departure)
        })?;
        let mut left = Left::default();
        for user in entry.away.iter().flat_map(|(_, users)| users) {
            left.extend(self.logout(id, user.as_str()));
        }
        Some((entry.held, left))
    }

    /// The origin has sent again what the `ServerUp` of `target` asked for.
    pub(crate) fn resent(&self, origin: ServerId, target: ServerId) {
        if let Some(mut entry) = self.servers.get_mut(&target) {
            entry.blocked.remove(&origin);
        }
    }

    /// Queues whole frames from `origin` for `server`, in order, never waiting. A server over its
    /// queue limit is told to disconnect (the slow-consumer rule). `lowest_seq` is the lowest
    /// sequence number of the data frames among them, remembered if they must be held, and, if
    /// they are queued, noted through the origin's `marks` as forwarded to this connection.
    pub(crate) fn relay_batch(
        &self,
        origin: ServerId,
        server: ServerId,
        lowest_seq: Option<u64>,
        frames: Vec<Bytes>,
        marks: Option<&mut Marks>,
    ) -> Result<Relayed, RelayError> {
        let Some(entry) = self.servers.get(&server) else {
            return Err(RelayError::Gone(frames));
        };
        let Some(attached) = entry.attached.as_ref() else {
            drop(entry);
            self.hold(origin, server, lowest_seq);
            return Ok(Relayed::Held);
        };
        if !entry.blocked.is_empty() && entry.blocked.contains(&origin) {
            // The origin's data frames wait for its `Resent`; its acks need no order with them
            // and are cumulative: dropped, the frames they acknowledge would wait for an ack
            // that may never come (the sender stalls once its window is full).
            let acks = acks_among(frames);
            if !acks.is_empty() {
                let _acks_are_sent_again_with_the_next = attached.outbox.push_batch(acks);
            }
            return Ok(Relayed::Held);
        }
        let outbox = &attached.outbox;
        match outbox.push_batch(frames) {
            Ok(()) => {
                if let (Some(marks), Some(seq)) = (marks, lowest_seq) {
                    marks.note(server, &attached.forwarded, origin, seq);
                }
                Ok(Relayed::Queued(outbox.above_high_water().then(|| outbox.clone())))
            }
            // The connection is closing: the server is about to be away.
            Err((PushError::Closed, _)) => {
                drop(entry);
                self.hold(origin, server, lowest_seq);
                Ok(Relayed::Held)
            }
            Err((PushError::Full { pending }, _)) => {
                entry.close();
                drop(entry);
                self.hold(origin, server, lowest_seq);
                Err(RelayError::SlowConsumer { pending })
            }
        }
    }

    /// Remembers that frames from `origin` to `server` were dropped from `lowest_seq` on.
    fn hold(&self, origin: ServerId, server: ServerId, lowest_seq: Option<u64>) {
        if let (Some(seq), Some(mut entry)) = (lowest_seq, self.servers.get_mut(&server)) {
            hold(&mut entry.held, origin, seq);
        }
    }

    /// In the settle window at `now`, remembers that a frame from `origin` for a user nobody has
    /// was dropped, and returns true; after it, returns false and the frame is undeliverable.
    pub(crate) fn hold_unclaimed(&self, origin: ServerId, seq: u64, now: Instant) -> bool {
        self.settle.hold(origin, seq, now)
    }

    /// A snapshot is done: the origins of the frames dropped in the settle window so far, to be
    /// asked to send again.
    pub(crate) fn take_unclaimed(&self) -> HashMap<ServerId, u64> {
        self.settle.take()
    }

    /// Ends the settle window for good: the origins of the frames dropped in it, to be asked to
    /// send again. No frame is held after this, whatever instant it was judged at.
    pub(crate) fn end_settle(&self) -> HashMap<ServerId, u64> {
        self.settle.close()
    }

    /// When the settle window ends, once the first AS registered.
    pub(crate) fn settle_ends(&self) -> Option<Instant> {
        self.settle.ends()
    }

    /// Whether the settle window after the hub's first registration is still open.
    pub(crate) fn settling(&self) -> bool {
        self.settling_at(Instant::now())
    }

    /// Whether the settle window is open at `now`.
    pub(crate) fn settling_at(&self, now: Instant) -> bool {
        self.settle.is_open(now)
    }

    /// The epoch of a registered server's process.
    pub(crate) fn epoch(&self, server: ServerId) -> Option<u64> {
        self.servers.get(&server).map(|entry| entry.epoch)
    }

    /// Drops `origin`'s frames to `target` until `origin` sends `Resent` for it: frames of it
    /// were lost on the way (a gap on the backplane) and are sent again.
    pub(crate) fn block(&self, target: ServerId, origin: ServerId) {
        if let Some(mut entry) = self.servers.get_mut(&target) {
            entry.blocked.insert(origin);
        }
    }

    /// `origin` registered again (on any hub): it sends everything not acknowledged anyway, so
    /// nobody waits for a `Resent` from it.
    pub(crate) fn unblock_origin(&self, origin: ServerId) {
        for mut entry in self.servers.iter_mut() {
            entry.blocked.remove(&origin);
        }
    }

    /// The origins whose frames some server here drops until their `Resent`.
    pub(crate) fn blocked_origins(&self) -> HashSet<ServerId> {
        let mut origins = HashSet::new();
        for entry in self.servers.iter() {
            origins.extend(entry.blocked.iter().copied().filter(|&id| id != ServerId::HUB));
        }
        origins
    }

    /// Forgets `id`, away from this hub and now registered on another, with its users here;
    /// returns them, or `None` if it is still connected here.
    pub(crate) fn forget_moved(&self, id: ServerId) -> Option<HashSet<UserId>> {
        let (_, entry) = self.servers.remove_if(&id, |_, entry| entry.attached.is_none())?;
        let users: HashSet<UserId> = entry.away.map(|(_, users)| users).unwrap_or_default();
        for user in &users {
            self.logout(id, user.as_str());
        }
        Some(users)
    }

    /// Disconnects a server that did not drain its queue in time (the slow-consumer rule).
    pub(crate) fn close(&self, server: ServerId) {
        if let Some(entry) = self.servers.get(&server) {
            entry.close();
        }
    }

    /// The connected servers other than `except`, with their epochs and queues.
    pub(crate) fn peers(&self, except: ServerId) -> Vec<Peer> {
        self.servers
            .iter()
            .filter(|entry| *entry.key() != except)
            .filter_map(|entry| {
                let outbox = entry.attached.as_ref()?.outbox.clone();
                Some(Peer { id: *entry.key(), epoch: entry.epoch, outbox })
            })
            .collect()
    }

    /// The queue of a connected server.
    pub(crate) fn outbox(&self, server: ServerId) -> Option<Outbox> {
        Some(self.servers.get(&server)?.attached.as_ref()?.outbox.clone())
    }

    /// Every registered AS, by id, including those away within their grace.
    pub fn servers(&self) -> Vec<ServerInfo> {
        let mut servers: Vec<_> = self.servers.iter().map(|entry| entry.info.clone()).collect();
        servers.sort_by_key(|info| info.id);
        servers
    }

    /// Keeps `load` as the latest report of server `id`, if it is registered.
    pub(crate) fn report_load(&self, id: ServerId, load: Load) {
        if let Some(mut entry) = self.servers.get_mut(&id) {
            entry.info.load = Some(load);
        }
    }

    /// Marks server `id` draining; false if it is not registered.
    pub(crate) fn drain(&self, id: ServerId) -> bool {
        self.servers.get_mut(&id).map(|mut entry| entry.info.draining = true).is_some()
    }

    /// The ids of every registered AS but `except`, including those away within their grace:
    /// the servers a broadcast goes to.
    pub(crate) fn server_ids(&self, except: ServerId) -> Vec<ServerId> {
        self.servers.iter().map(|entry| *entry.key()).filter(|&id| id != except).collect()
    }

    /// Whether `server` is registered, connected or away within its grace.
    pub fn is_registered(&self, server: ServerId) -> bool {
        self.servers.contains_key(&server)
    }

    /// How many AS are connected now: registrations that are live, not away within their grace.
    pub fn connected_count(&self) -> usize {
        self.servers.iter().filter(|entry| entry.attached.is_some()).count()
    }

    /// Whether `server` is registered and connected now.
    pub fn is_connected(&self, server: ServerId) -> bool {
        self.servers.get(&server).is_some_and(|entry| entry.attached.is_some())
    }
}

/// The acks among `chunks` of whole frames, each as its own slice.
fn acks_among(chunks: Vec<Bytes>) -> Vec<Bytes> {
    let mut acks = Vec::new();
    for mut chunk in chunks {
        while let Ok(frame) = acms_protocol::RawFrame::split_first(&mut chunk) {
            if matches!(frame.kind(), Ok(acms_protocol::FrameKind::Ack)) {
                acks.push(frame.into_bytes());
            }
        }
    }
    acks
}

#[cfg(test)]
pub(crate) mod tests;

//! The AS registry and the user directory.
//!
//! Both are sharded concurrent maps behind synchronous methods: a relay looks up the recipient's
//! server and queues the frame on that server's [`Outbox`] without holding any guard across an
//! `.await` (there is none), so connections on different cores rarely touch the same shard.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use acms_protocol::{Load, ServerId, UserId};
use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio_util::sync::CancellationToken;

use crate::config::LoginConflict;
use crate::forwarded::{Forwarded, Marks, lower as hold};
use crate::outbox::{Outbox, PushError};

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

/// Where a user is online: the directory's value, copied out on every relayed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The AS the user logged in on last.
    pub(crate) server: ServerId,
    /// The user also has sessions on other AS (policy `multi`): see [`Registry::sessions`].
    pub(crate) multi: bool,
}

/// What a login or claim did to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// The user was already online on this AS.
    Already,
    /// The user was online nowhere and now is on this AS.
    Online,
    /// Policy `replace`: the user moved here from this AS, whose session must end.
    Moved(ServerId),
    /// Policy `multi`: the user keeps their other sessions and has one here too. With the AS
    /// that had their only session until now, which learns that the user is shared.
    Joined(Option<ServerId>),
    /// A claim (resync, or snapshot after a reconnect) lost to a newer login on this AS: policy
    /// `replace` keeps the user there, and the claiming AS's session must end.
    Lost(ServerId),
}

/// A user whose place in the directory changed, for the AS that watch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) user: UserId,
    /// Where they are now; `None` when online nowhere.
    pub(crate) server: Option<ServerId>,
}

/// What taking sessions off the directory changed, for the AS to be told.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Left {
    /// Users whose place changed, for the AS that watch them.
    pub(crate) moved: Vec<Change>,
    /// Users left with one session after having several (policy `multi`), and its AS: that AS
    /// is told that they have no session elsewhere any more.
    pub(crate) alone: Vec<(UserId, ServerId)>,
}

impl Left {
    fn extend(&mut self, other: Left) {
        self.moved.extend(other.moved);
        self.alone.extend(other.alone);
    }
}

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
    conflict: LoginConflict,
    settle: Duration,
    /// When the settle window ends; set by the first registration.
    settle_ends: OnceLock<Instant>,
    /// Frames dropped in the settle window for users nobody had: the first sequence number
    /// dropped, by origin.
    unclaimed: Mutex<HashMap<ServerId, u64>>,
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
            conflict: LoginConflict::default(),
            settle,
            settle_ends: OnceLock::new(),
            unclaimed: Mutex::default(),
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
    pub(crate) fn register(
        &self,
        info: ServerInfo,
        epoch: u64,
        outbox: Outbox,
        closer: CancellationToken,
        welcome: Option<Bytes>,
    ) -> Result<Registration, DuplicateServer> {
        let id = info.id;
        let welcome = |outbox: &Outbox| {
            if let Some(frame) = welcome {
                // A fresh outbox has room for one small frame.
                let _ = outbox.push(frame);
            }
        };
        let first = self.settle_ends.set(Instant::now() + self.settle).is_ok();
        let mut registration = Registration { first, ..Registration::default() };
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
                entry.held.clear();
                entry.info = info;
                entry.epoch = epoch;
                entry.attached = attached;
                drop(slot);
                // Frames still queued for the broken connection died with it, unrecorded: every
                // server sends again all it has not had acknowledged.
                for other in self.servers.iter().filter(|other| *other.key() != id) {
                    if other.attached.is_some() {
                        registration.resend.insert(*other.key(), 0);
                    }
                }
            }
            Entry::Vacant(slot) => {
                welcome(&outbox);
                slot.insert(ServerEntry {
                    info,
                    epoch,
                    attached,
                    away: None,
                    held: HashMap::new(),
                    blocked: HashSet::new(),
                });
            }
        }
        if self.settling() {
            let mut unclaimed = self.unclaimed.lock().expect("unclaimed lock");
            // Registered anew, this AS sends again everything not acknowledged anyway.
            unclaimed.remove(&id);
            for (&origin, &seq) in unclaimed.iter().filter(|(origin, _)| **origin != id) {
                hold(&mut registration.resend, origin, seq);
            }
        }
        registration.resend.remove(&id);
        if let Some(mut entry) = self.servers.get_mut(&id) {
            // The hub's own pushes wait until the AS has been told the hub's epoch.
            entry.blocked = registration.resend.keys().copied().chain([ServerId::HUB]).collect();
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

    /// Records `user` as online on `server`: a new login. A user online on another AS moves here
    /// (policy `replace`) or keeps both sessions (`multi`).
    pub(crate) fn login(&self, server: ServerId, user: UserId) -> Placed {
        self.place(server, user, false)
    }

    /// Records `user` as online on `server` unless another AS has them: a resync, or the snapshot
    /// of an AS back from a broken connection, confirms the users the AS had, and must not take
    /// back one who logged in elsewhere since (policy `replace`; `multi` adds a session).
    pub(crate) fn claim(&self, server: ServerId, user: UserId) -> Placed {
        self.place(server, user, true)
    }

    fn place(&self, server: ServerId, user: UserId, claim: bool) -> Placed {
        let mut slot = match self.users.entry(user) {
            Entry::Vacant(slot) => {
                slot.insert(Owner { server, multi: false });
                return Placed::Online;
            }
            Entry::Occupied(slot) if slot.get().server == server => return Placed::Already,
            Entry::Occupied(slot) => slot,
        };
        let owner = *slot.get();
        match self.conflict {
            LoginConflict::Replace if claim => Placed::Lost(owner.server),
            LoginConflict::Replace => {
                slot.insert(Owner { server, multi: false });
                Placed::Moved(owner.server)
            }
            LoginConflict::Multi => {
                // Under the user's entry: nobody else changes their sessions meanwhile.
                let mut sessions =
                    self.sessions.entry(slot.key().clone()).or_insert_with(|| vec![owner.server]);
                if sessions.contains(&server) {
                    return Placed::Already;
                }
                let alone_until_now = (sessions.len() == 1).then_some(owner.server);
                sessions.push(server);
                slot.insert(Owner { server, multi: true });
                Placed::Joined(alone_until_now)
            }
        }
    }

    /// Takes `user`'s session on `server` off the directory: a user who moved to another AS
    /// meanwhile stays where they are. Returns where the user is now if that changed, and the
    /// AS of their last session if they had several until now.
    pub(crate) fn logout(&self, server: ServerId, user: &str) -> Left {
        let mut changed = Left::default();
        let removed = self.users.remove_if(user, |_, owner| owner.server == server && !owner.multi);
        if let Some((user, _)) = removed {
            changed.moved.push(Change { user, server: None });
            return changed;
        }
        let Some(mut slot) = self.users.get_mut(user) else { return changed };
        if !slot.multi {
            return changed;
        }
        let Entry::Occupied(mut sessions) = self.sessions.entry(slot.key().clone()) else {
            return changed;
        };
        let before = sessions.get().len();
        sessions.get_mut().retain(|&other| other != server);
        let left = sessions.get();
        let Some(&primary) = left.last() else { return changed };
        if left.len() == before {
            return changed;
        }
        let multi = left.len() > 1;
        if !multi {
            sessions.remove();
            changed.alone.push((slot.key().clone(), primary));
        }
        if slot.server != primary {
            changed.moved.push(Change { user: slot.key().clone(), server: Some(primary) });
        }
        *slot = Owner { server: primary, multi };
        changed
    }

    /// Whether logins may be shared between AS (policy `multi`).
    pub(crate) fn multi(&self) -> bool {
        self.conflict == LoginConflict::Multi
    }

    /// Where a frame for `user` goes; one lookup, on every relayed frame.
    #[inline]
    pub(crate) fn route(&self, user: &str) -> Option<Owner> {
        self.users.get(user).map(|owner| *owner)
    }

    /// Every AS `user` is online on (policy `multi`), the last login last.
    pub fn sessions(&self, user: &str) -> Vec<ServerId> {
        let Some(owner) = self.users.get(user) else {
            return Vec::new();
        };
        if !owner.multi {
            return vec![owner.server];
        }
        self.sessions.get(user).map(|sessions| sessions.clone()).unwrap_or_default()
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

    /// In the settle window, remembers that a frame from `origin` for a user nobody has was
    /// dropped, and returns true; after it, returns false and the frame is undeliverable.
    pub(crate) fn hold_unclaimed(&self, origin: ServerId, seq: u64) -> bool {
        // Asked under the lock that `take_unclaimed` takes once the window is over: a frame
        // judged in the window a moment before it ends is either taken with the rest or not held
        // at all. Held after the last take, its origin would never be asked to send again, and
        // its stream would stay held for good.
        let mut unclaimed = self.unclaimed.lock().expect("unclaimed lock");
        if !self.settling() {
            return false;
        }
        hold(&mut unclaimed, origin, seq);
        true
    }

    /// Ends the settle window: the origins of the frames dropped in it, to be asked to send again.
    pub(crate) fn take_unclaimed(&self) -> HashMap<ServerId, u64> {
        std::mem::take(&mut self.unclaimed.lock().expect("unclaimed lock"))
    }

    /// When the settle window ends, once the first AS registered.
    pub(crate) fn settle_ends(&self) -> Option<Instant> {
        self.settle_ends.get().copied()
    }

    /// Whether the settle window after the hub's first registration is still open.
    pub(crate) fn settling(&self) -> bool {
        self.settle_ends.get().is_some_and(|ends| Instant::now() < *ends)
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

    /// The AS `user` is online on (with several, the one they logged in on last), if any.
    pub fn locate(&self, user: &str) -> Option<ServerId> {
        self.users.get(user).map(|owner| owner.server)
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

    /// How many users the directory lists on each server (their last login, under `multi`).
    pub fn user_counts(&self) -> HashMap<ServerId, usize> {
        let mut counts = HashMap::new();
        for owner in self.users.iter() {
            *counts.entry(owner.server).or_default() += 1;
        }
        counts
    }

    /// Up to `limit` online users with ids after `after`, in id order, with the server they
    /// logged in on last; only those on `server` if given. One pass over the directory, keeping
    /// the `limit` smallest ids.
    pub fn users_page(
        &self,
        server: Option<ServerId>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(UserId, ServerId)> {
        let mut page = std::collections::BTreeMap::new();
        for entry in self.users.iter() {
            let owner = *entry.value();
            if server.is_some_and(|server| server != owner.server)
                || after.is_some_and(|after| entry.key().as_str() <= after)
            {
                continue;
            }
            if page.len() == limit {
                match page.last_key_value() {
                    Some((last, _)) if entry.key() < last => {
                        page.pop_last();
                    }
                    _ => continue,
                }
            }
            page.insert(entry.key().clone(), owner.server);
        }
        page.into_iter().collect()
    }

    /// Number of users online in the cluster.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A server's record as a test registers it: loopback, client port 6000 + id.
    pub(crate) fn info(id: u32) -> ServerInfo {
        ServerInfo {
            id: ServerId(id),
            client_addr: format!("127.0.0.1:{}", 6000 + id),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 50000)),
            connected_at: SystemTime::now(),
            load: None,
            draining: false,
        }
    }
    #[test]
    fn a_drain_marks_a_registered_server_only() {
        let registry = Registry::new(Duration::ZERO);
        assert!(!registry.drain(ServerId(1)), "unknown server");
        let (outbox, _inbox) = Outbox::new(1024, 512);
        registry.register(info(1), 1, outbox, CancellationToken::new(), None).unwrap();
        assert!(!registry.servers()[0].draining);
        assert!(registry.drain(ServerId(1)));
        assert!(registry.servers()[0].draining);
    }

    #[test]
    fn the_latest_load_report_is_kept() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(1024, 512);
        registry.register(info(1), 1, outbox, CancellationToken::new(), None).unwrap();
        assert_eq!(registry.servers()[0].load, None);
        let load = |users| Load {
            users,
            cpu_centipercent: 100,
            memory_bytes: 1 << 20,
            msgs_in_per_s: 0,
            msgs_out_per_s: 0,
            capacity: None,
        };
        registry.report_load(ServerId(1), load(3));
        registry.report_load(ServerId(1), load(5));
        registry.report_load(ServerId(2), load(9));
        assert_eq!(registry.servers()[0].load, Some(load(5)));
        assert_eq!(registry.servers().len(), 1);
    }

    #[test]
    fn the_welcome_is_queued_as_the_server_is_registered_and_only_then() {
        let registry = Registry::default();
        let welcome = Bytes::from_static(b"welcome!");
        let (outbox, _inbox) = Outbox::new(1024, 512);
        let (token, hello) = (CancellationToken::new(), Some(welcome.clone()));
        registry.register(info(1), 1, outbox.clone(), token, hello).unwrap();
        // Queued before the outbox could be found: whatever another connection pushes next
        // comes after it.
        assert_eq!(outbox.pending(), welcome.len());
        assert_eq!(registry.outbox(ServerId(1)).map(|found| found.pending()), Some(8));
        // A refused registration queues nothing: its refusal is the first frame.
        let (other, _inbox) = Outbox::new(1024, 512);
        let refused =
            registry.register(info(1), 1, other.clone(), CancellationToken::new(), Some(welcome));
        assert!(refused.is_err());
        assert_eq!(other.pending(), 0);
    }

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[test]
    fn duplicate_id_is_refused_until_the_first_leaves() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(1024, 512);
        let token = CancellationToken::new();
        registry.register(info(1), 7, outbox.clone(), token.clone(), None).unwrap();
        assert_eq!(
            registry.register(info(1), 7, outbox.clone(), token.clone(), None).err(),
            Some(DuplicateServer(ServerId(1)))
        );
        registry.depart(ServerId(1), HashSet::new(), false);
        registry.register(info(1), 8, outbox, token, None).unwrap();
    }

    #[test]
    fn departure_takes_only_the_servers_own_users() {
        let registry = Registry::default();
        let (alice, bob) = (user("alice"), user("bob"));
        registry.login(ServerId(1), alice.clone());
        registry.login(ServerId(1), bob.clone());
        // bob moved to server 2 before server 1 noticed.
        assert_eq!(registry.login(ServerId(2), bob.clone()), Placed::Moved(ServerId(1)));
        registry.depart(ServerId(1), HashSet::from([alice, bob]), false);
        assert_eq!(registry.locate("alice"), None);
        assert_eq!(registry.locate("bob"), Some(ServerId(2)));
    }

    #[test]
    fn a_claim_confirms_or_fills_in_but_never_moves_a_user() {
        let registry = Registry::default();
        registry.login(ServerId(1), user("bob"));
        registry.login(ServerId(2), user("bob"));
        assert_eq!(registry.claim(ServerId(1), user("bob")), Placed::Lost(ServerId(2)));
        assert_eq!(registry.locate("bob"), Some(ServerId(2)), "a resync does not take bob back");
        assert_eq!(registry.claim(ServerId(1), user("carol")), Placed::Online);
        assert_eq!(registry.locate("carol"), Some(ServerId(1)), "nobody had carol");
    }

    #[test]
    fn multi_keeps_every_session_and_the_last_login_is_where_the_user_is() {
        let registry = Registry::default().with_login_conflict(LoginConflict::Multi);
        let bob = user("bob");
        assert_eq!(registry.login(ServerId(1), bob.clone()), Placed::Online);
        assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(1), multi: false }));
        assert_eq!(registry.login(ServerId(2), bob.clone()), Placed::Joined(Some(ServerId(1))));
        assert_eq!(registry.login(ServerId(3), bob.clone()), Placed::Joined(None));
        assert_eq!(registry.claim(ServerId(1), bob.clone()), Placed::Already);
        assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(3), multi: true }));
        assert_eq!(registry.sessions("bob"), [ServerId(1), ServerId(2), ServerId(3)]);
        assert_eq!(registry.user_count(), 1);

        // Leaving an older session moves nobody; leaving the last one moves the user back.
        assert_eq!(registry.logout(ServerId(1), "bob"), Left::default());
        assert_eq!(registry.logout(ServerId(4), "bob"), Left::default(), "never on server 4");
        let moved = Change { user: bob.clone(), server: Some(ServerId(2)) };
        let alone = (bob.clone(), ServerId(2));
        assert_eq!(
            registry.logout(ServerId(3), "bob"),
            Left { moved: vec![moved], alone: vec![alone] }
        );
        assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(2), multi: false }));
        assert_eq!(registry.sessions("bob"), [ServerId(2)]);
        assert!(registry.sessions.is_empty(), "a single session needs no second map");
        let offline = Change { user: bob, server: None };
        assert_eq!(registry.logout(ServerId(2), "bob").moved, [offline]);
        assert_eq!(registry.locate("bob"), None);
    }

    #[test]
    fn relay_to_a_full_queue_closes_that_server() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(4, 2);
        let token = CancellationToken::new();
        registry.register(info(2), 0, outbox, token.clone(), None).unwrap();
        let frames = |text: &'static str| vec![Bytes::from_static(text.as_bytes())];
        let relay = |frames| registry.relay_batch(ServerId(1), ServerId(2), Some(1), frames, None);
        assert_eq!(
            registry.relay_batch(ServerId(1), ServerId(3), Some(1), frames("x"), None).err(),
            Some(RelayError::Gone(frames("x")))
        );
        assert!(matches!(relay(frames("1234")), Ok(Relayed::Queued(Some(_)))));
        assert!(!token.is_cancelled());
        assert_eq!(relay(frames("5")).err(), Some(RelayError::SlowConsumer { pending: 4 }));
        assert!(token.is_cancelled());
    }

    #[test]
    fn an_away_server_holds_frames_for_its_origins_to_send_again() {
        let registry = Registry::default();
        let (outbox, _inbox) = Outbox::new(1024, 512);
        let alice = user("alice");
        registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None).unwrap();
        registry.login(ServerId(2), alice.clone());
        let Departure::Away(departure) =
            registry.depart(ServerId(2), HashSet::from([alice.clone()]), true)
        else {
            panic!("server 2 is registered: it goes away");
        };
        assert_eq!(registry.locate("alice"), Some(ServerId(2)), "kept while away");
        let frame = || vec![Bytes::from_static(b"f")];
        for seq in [40, 30, 50] {
            let held = registry.relay_batch(ServerId(1), ServerId(2), Some(seq), frame(), None);
            assert!(matches!(held, Ok(Relayed::Held)));
        }
        // Back within the grace: every connected server sends again all it has not had
        // acknowledged, and is blocked until it has.
        let (other, _other_inbox) = Outbox::new(1024, 512);
        registry.register(info(1), 0, other, CancellationToken::new(), None).unwrap();
        let back = registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
        assert_eq!(back.resend, HashMap::from([(ServerId(1), 0)]));
        assert_eq!(back.stale_users, HashSet::from([alice.clone()]));
        assert_eq!(registry.expire(ServerId(2), departure), None, "not away any more");
        let blocked = registry.relay_batch(ServerId(1), ServerId(2), Some(60), frame(), None);
        assert!(matches!(blocked, Ok(Relayed::Held)));
        registry.resent(ServerId(1), ServerId(2));
        let queued = registry.relay_batch(ServerId(1), ServerId(2), Some(61), frame(), None);
        assert!(matches!(queued, Ok(Relayed::Queued(None))));

        // Away again, and the grace ends: the server and its users are gone.
        let Departure::Away(departure) =
            registry.depart(ServerId(2), HashSet::from([alice.clone()]), true)
        else {
            panic!("server 2 is registered: it goes away");
        };
        let _ = registry.relay_batch(ServerId(3), ServerId(2), Some(9), frame(), None);
        assert_eq!(
            registry.expire(ServerId(2), departure),
            Some((
                HashMap::from([(ServerId(3), 9)]),
                Left { moved: vec![Change { user: alice, server: None }], alone: Vec::new() }
            ))
        );
        assert_eq!(registry.locate("alice"), None);
        assert_eq!(registry.servers().len(), 1, "only server 1 is left");
    }

    #[test]
    fn frames_in_flight_to_a_server_that_does_not_come_back_are_sent_again() {
        let registry = Registry::default();
        let frame = || vec![Bytes::from_static(b"f")];
        let (outbox, _inbox) = Outbox::new(1024, 512);
        registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None).unwrap();
        let mut marks = [Marks::default(), Marks::default()];
        for (index, origin, seq) in [(0, 1, 40), (1, 3, 7), (0, 1, 41)] {
            let marks = Some(&mut marks[index]);
            let queued =
                registry.relay_batch(ServerId(origin), ServerId(2), Some(seq), frame(), marks);
            assert!(matches!(queued, Ok(Relayed::Queued(None))));
        }
        // The connection breaks with those frames in its queue; one more is held while away.
        let Departure::Away(departure) = registry.depart(ServerId(2), HashSet::new(), true) else {
            panic!("server 2 is registered: it goes away");
        };
        let held =
            registry.relay_batch(ServerId(3), ServerId(2), Some(8), frame(), Some(&mut marks[1]));
        assert!(matches!(held, Ok(Relayed::Held)));
        let (resend, _) = registry.expire(ServerId(2), departure).expect("still away");
        assert_eq!(resend, HashMap::from([(ServerId(1), 40), (ServerId(3), 7)]));

        // Back as a new server, which then says `Bye` with frames in its queue.
        registry.register(info(2), 1, outbox, CancellationToken::new(), None).unwrap();
        let queued =
            registry.relay_batch(ServerId(1), ServerId(2), Some(90), frame(), Some(&mut marks[0]));
        assert!(matches!(queued, Ok(Relayed::Queued(None))));
        let Departure::Gone { forwarded, .. } = registry.depart(ServerId(2), HashSet::new(), false)
        else {
            panic!("no grace: server 2 is gone");
        };
        assert_eq!(forwarded, HashMap::from([(ServerId(1), 90)]), "only the last connection's");
    }

    #[test]
    fn the_settle_window_holds_frames_for_nobody_and_hands_them_to_newcomers() {
        let registry = Registry::new(Duration::from_secs(3600));
        assert!(!registry.hold_unclaimed(ServerId(1), 5), "no window before the first server");
        let (outbox, _inbox) = Outbox::new(1024, 512);
        let first = registry.register(info(1), 0, outbox.clone(), CancellationToken::new(), None);
        assert!(first.unwrap().first);
        assert!(registry.hold_unclaimed(ServerId(1), 5));
        assert!(registry.hold_unclaimed(ServerId(1), 3));
        let second = registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
        assert_eq!(second.resend, HashMap::from([(ServerId(1), 3)]));
        assert_eq!(registry.take_unclaimed(), HashMap::from([(ServerId(1), 3)]));
    }
}

//! This hub's replica of the shared directory, fed by the key-value watches: which servers each
//! user has sessions on (with their P2P candidates), which hub each server is on; and which hubs are alive, fed by their heartbeats.
//! Synchronous methods over short locks: the relay looks a remote recipient up here, never over
//! the network.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use acms_protocol::{Candidate, ServerId, UserId};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::HubId;
use super::sessions::Session;

/// A user's entry in the replica, kept small: most users have one session and no candidates,
/// held inline (16 bytes for the sessions, as the server and revision were before sessions were
/// listed); others are boxed.
#[derive(Debug)]
struct UserEntry {
    revision: u64,
    stored: Stored,
}

#[derive(Debug)]
enum Stored {
    One(ServerId),
    Many(Box<[Session]>),
}

impl UserEntry {
    fn new(sessions: Vec<Session>, revision: u64) -> Self {
        let stored = match sessions.as_slice() {
            [one] if one.candidates.is_empty() => Stored::One(one.server),
            _ => Stored::Many(sessions.into_boxed_slice()),
        };
        Self { revision, stored }
    }

    /// The server of the last login (an entry is never empty; a corrupt one reads as nowhere).
    fn last(&self) -> ServerId {
        match &self.stored {
            Stored::One(server) => *server,
            Stored::Many(sessions) => sessions.last().map_or(ServerId::HUB, |s| s.server),
        }
    }

    fn servers(&self) -> Vec<ServerId> {
        match &self.stored {
            Stored::One(server) => vec![*server],
            Stored::Many(sessions) => sessions.iter().map(|session| session.server).collect(),
        }
    }

    fn sessions(&self) -> Vec<Session> {
        match &self.stored {
            Stored::One(server) => vec![Session::on(*server)],
            Stored::Many(sessions) => sessions.to_vec(),
        }
    }
}

/// Where a server is registered: the value of its key in the servers bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Place {
    /// The hub it is connected to.
    pub(crate) hub: HubId,
    /// The epoch of its process.
    pub(crate) epoch: u64,
    /// New at each registration: a change tells every hub the server (re)registered, so their
    /// servers send it again what it did not acknowledge.
    pub(crate) registration: u64,
    /// Where its clients connect, as it advertised, for the admin API of every hub.
    #[serde(default)]
    pub(crate) client_addr: String,
}

impl Serialize for HubId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for HubId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        u64::deserialize(deserializer).map(HubId)
    }
}

/// Where a frame for a server not connected here goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remote {
    /// To this live hub.
    Hub(HubId),
    /// Its hub is dead or this hub's own: the server is moving; the frame is held for its
    /// origin to send again once it is back somewhere.
    Moving,
    /// No hub has the server.
    Nowhere,
}

/// The replica and the hubs' liveness.
#[derive(Debug)]
pub(crate) struct Replica {
    me: HubId,
    /// Each user's sessions, with the revision of their entry.
    users: DashMap<UserId, UserEntry, foldhash::fast::RandomState>,
    /// How many users `users` places on each server (their last login's), kept with it: the
    /// reconciliation compares it with the sessions here before it compares user by user.
    placed: DashMap<ServerId, usize, foldhash::fast::RandomState>,
    /// Looked up for every frame to another hub (`route_server`), so hashed cheaply.
    servers: RwLock<HashMap<ServerId, Place, foldhash::fast::RandomState>>,
    /// The other hubs heard from, with when they were last heard.
    hubs: RwLock<HashMap<HubId, Instant, foldhash::fast::RandomState>>,
    /// Every hub ever heard from, alive or not since.
    ever_heard: RwLock<std::collections::HashSet<HubId, foldhash::fast::RandomState>>,
    dead_after: Duration,
}

impl Replica {
    pub(crate) fn new(me: HubId, dead_after: Duration) -> Self {
        Self {
            me,
            users: DashMap::default(),
            placed: DashMap::default(),
            servers: RwLock::default(),
            hubs: RwLock::default(),
            ever_heard: RwLock::default(),
            dead_after,
        }
    }

    /// The server of `user`'s last login, as the shared directory says.
    pub(crate) fn user(&self, user: &str) -> Option<ServerId> {
        self.users.get(user).map(|entry| entry.last())
    }

    /// The revision of `user`'s entry, as last seen.
    pub(crate) fn user_revision(&self, user: &str) -> Option<u64> {
        self.users.get(user).map(|entry| entry.revision)
    }

    /// Whether `user` has a session on a server for which `on` holds: one lookup, no
    /// allocation (the relay asks it of every unicast under `multi`).
    pub(crate) fn any_session(&self, user: &str, on: impl Fn(ServerId) -> bool) -> bool {
        self.users.get(user).is_some_and(|entry| match &entry.stored {
            Stored::One(server) => on(*server),
            Stored::Many(sessions) => sessions.iter().any(|session| on(session.server)),
        })
    }

    /// The servers of every session of `user`, oldest login first.
    pub(crate) fn sessions(&self, user: &str) -> Vec<ServerId> {
        self.users.get(user).map(|entry| entry.servers()).unwrap_or_default()
    }

    /// `user`'s sessions and the revision of their entry, as last seen (none: no entry).
    pub(crate) fn user_entry(&self, user: &str) -> (Vec<Session>, Option<u64>) {
        match self.users.get(user) {
            Some(entry) => (entry.sessions(), Some(entry.revision)),
            None => (Vec::new(), None),
        }
    }

    /// Counts `user`'s entry, now `now` (none: removed), after `was`: by last login.
    fn recount(&self, was: Option<ServerId>, now: Option<ServerId>) {
        if was == now {
            return;
        }
        if let Some(was) = was {
            self.placed.remove_if_mut(&was, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
        if let Some(now) = now {
            *self.placed.entry(now).or_default() += 1;
        }
    }

    /// How many users the directory places on `server` (their last login): one lookup.
    pub(crate) fn users_placed_on(&self, server: ServerId) -> usize {
        self.placed.get(&server).map_or(0, |count| *count)
    }

    /// The users the directory places on any of `servers` (their last login), with that
    /// server: one pass.
    pub(crate) fn users_on_servers(
        &self,
        servers: &std::collections::HashSet<ServerId>,
    ) -> Vec<(UserId, ServerId)> {
        let on = self.users.iter().filter(|entry| servers.contains(&entry.value().last()));
        on.map(|entry| (entry.key().clone(), entry.value().last())).collect()
    }

    /// Every user the replica has an entry of.
    pub(crate) fn user_ids(&self) -> Vec<UserId> {
        self.users.iter().map(|entry| entry.key().clone()).collect()
    }

    /// Every server the replica has a place of.
    pub(crate) fn server_ids(&self) -> Vec<ServerId> {
        self.servers.read().expect("replica lock").keys().copied().collect()
    }

    /// The P2P candidates of `user`'s session on `server`; empty when it has none.
    pub(crate) fn candidates(&self, user: &str, server: ServerId) -> Vec<Candidate> {
        let Some(entry) = self.users.get(user) else { return Vec::new() };
        match &entry.stored {
            Stored::One(_) => Vec::new(),
            Stored::Many(sessions) => sessions
                .iter()
                .find(|session| session.server == server)
                .map(|session| session.candidates.clone())
                .unwrap_or_default(),
        }
    }

    /// Records `user`'s sessions at `revision`; returns those recorded before.
    pub(crate) fn set_user(
        &self,
        user: UserId,
        sessions: Vec<Session>,
        revision: u64,
    ) -> Vec<Session> {
        let entry = UserEntry::new(sessions, revision);
        let now = entry.last();
        // Under the user's map entry: one user's changes are counted in order.
        match self.users.entry(user) {
            dashmap::mapref::entry::Entry::Occupied(mut slot) => {
                let was = slot.insert(entry);
                self.recount(Some(was.last()), Some(now));
                was.sessions()
            }
            dashmap::mapref::entry::Entry::Vacant(slot) => {
                slot.insert(entry);
                self.recount(None, Some(now));
                Vec::new()
            }
        }
    }

    /// Forgets `user`; returns the sessions recorded before.
    pub(crate) fn remove_user(&self, user: &str) -> Vec<Session> {
        let removed = self.users.remove_if(user, |_, was| {
            self.recount(Some(was.last()), None);
            true
        });
        removed.map(|(_, was)| was.sessions()).unwrap_or_default()
    }

    /// The users the directory has a session of on `server`: a scan, for a server given up.
    pub(crate) fn users_on(&self, server: ServerId) -> Vec<UserId> {
        self.users
            .iter()
            .filter(|entry| entry.value().servers().contains(&server))
            .map(|e| e.key().clone())
            .collect()
    }

    /// How many users the directory has on each server (their last login, under `multi`, as the
    /// registry counts them, so a user is counted once): one pass, for the admin API.
    pub(crate) fn user_counts(&self) -> HashMap<ServerId, usize> {
        let mut counts = HashMap::new();
        for entry in self.users.iter() {
            *counts.entry(entry.value().last()).or_insert(0) += 1;
        }
        counts
    }

    /// Where `server` is registered.
    pub(crate) fn place(&self, server: ServerId) -> Option<Place> {
        self.servers.read().expect("replica lock").get(&server).cloned()
    }

    /// Records where `server` is; returns where it was.
    pub(crate) fn set_place(&self, server: ServerId, place: Place) -> Option<Place> {
        self.servers.write().expect("replica lock").insert(server, place)
    }

    pub(crate) fn remove_place(&self, server: ServerId) -> Option<Place> {
        self.servers.write().expect("replica lock").remove(&server)
    }

    /// The servers registered on other hubs, with their places.
    pub(crate) fn remote_servers(&self) -> Vec<(ServerId, Place)> {
        let servers = self.servers.read().expect("replica lock");
        let remote = servers.iter().filter(|(_, place)| place.hub != self.me);
        remote.map(|(&id, place)| (id, place.clone())).collect()
    }

    /// The servers registered on `hub`.
    pub(crate) fn servers_on(&self, hub: HubId) -> Vec<(ServerId, Place)> {
        let servers = self.servers.read().expect("replica lock");
        let on_hub = servers.iter().filter(|(_, place)| place.hub == hub);
        on_hub.map(|(&id, place)| (id, place.clone())).collect()
    }

    /// Where a frame for `server`, not connected to this hub, goes. A hub never heard from is
    /// taken as alive: the directory tells of a hub's servers before its first heartbeat
    /// arrives (this hub, or that one, started a moment ago), and holding their frames, acks and
    /// `Resent` until then stalled those servers (a `Resent` held kept their acks back for
    /// three heartbeats, and the acks dropped meanwhile never came). If that hub was in fact
    /// dead, what went to it is lost as with any hub that dies: its servers' origins send it
    /// again once they register elsewhere, or once they are given up.
    pub(crate) fn route_server(&self, server: ServerId) -> Remote {
        // Only the hub: the relay asks this for every frame to another hub, and a whole place
        // would cost a copy of its address.
        let hub = self.servers.read().expect("replica lock").get(&server).map(|place| place.hub);
        match hub {
            None => Remote::Nowhere,
            Some(hub) if hub != self.me && self.reachable(hub) => Remote::Hub(hub),
            Some(_) => Remote::Moving,
        }
    }

    /// Whether `hub` is alive or was never heard from: where this hub sends what is for it.
    pub(crate) fn reachable(&self, hub: HubId) -> bool {
        self.is_alive(hub) || !self.ever_heard.read().expect("hub lock").contains(&hub)
    }

    /// Where a frame for `user`, online on no server of this hub, goes; with their server.
    pub(crate) fn route_user(&self, user: &str) -> (Remote, Option<ServerId>) {
        match self.user(user) {
            None => (Remote::Nowhere, None),
            Some(server) => match self.route_server(server) {
                // A user whose server left the cluster: nowhere.
                Remote::Nowhere => (Remote::Nowhere, None),
                remote => (remote, Some(server)),
            },
        }
    }

    /// How many other hubs are alive.
    pub(crate) fn hubs_alive(&self) -> usize {
        self.hubs.read().expect("hub lock").len()
    }

    /// The other hubs heard from within the deadline.
    pub(crate) fn alive_hubs(&self) -> Vec<HubId> {
        self.hubs.read().expect("hub lock").keys().copied().collect()
    }

    /// Whether `hub` was heard from within the deadline.
    pub(crate) fn is_alive(&self, hub: HubId) -> bool {
        self.hubs.read().expect("hub lock").contains_key(&hub)
    }

    /// `hub`'s heartbeat arrived at `now`; true if it was not alive until now.
    pub(crate) fn heard(&self, hub: HubId, now: Instant) -> bool {
        if hub == self.me {
            return false;
        }
        self.ever_heard.write().expect("hub lock").insert(hub);
        self.hubs.write().expect("hub lock").insert(hub, now).is_none()
    }

    /// The hubs silent for longer than the deadline at `now`: dead for this hub from now on.
    pub(crate) fn expire(&self, now: Instant) -> Vec<HubId> {
        let mut hubs = self.hubs.write().expect("hub lock");
        let dead: Vec<HubId> = hubs
            .iter()
            .filter(|(_, heard)| now.saturating_duration_since(**heard) > self.dead_after)
            .map(|(&hub, _)| hub)
            .collect();
        for hub in &dead {
            hubs.remove(hub);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: HubId = HubId(1);
    const OTHER: HubId = HubId(2);

    fn place(hub: HubId) -> Place {
        Place { hub, epoch: 5, registration: 1, client_addr: String::new() }
    }

    #[test]
    fn a_user_routes_to_the_live_hub_of_their_server() {
        let replica = Replica::new(ME, Duration::from_secs(3));
        let now = Instant::now();
        let alice = UserId::new("alice").unwrap();
        assert_eq!(replica.route_user("alice"), (Remote::Nowhere, None));
        replica.set_user(alice.clone(), vec![Session::on(ServerId(7))], 1);
        // The server is not registered anywhere: the user is nowhere.
        assert_eq!(replica.route_user("alice"), (Remote::Nowhere, None));
        replica.set_place(ServerId(7), place(OTHER));
        // Its hub never heard from: taken as alive.
        assert_eq!(replica.route_user("alice"), (Remote::Hub(OTHER), Some(ServerId(7))));
        assert!(replica.heard(OTHER, now));
        assert!(!replica.heard(OTHER, now), "heard before");
        assert_eq!(replica.route_user("alice"), (Remote::Hub(OTHER), Some(ServerId(7))));
        // Silent past the deadline: dead, and the server moving until it registers elsewhere.
        assert_eq!(replica.expire(now + Duration::from_secs(2)), vec![]);
        assert_eq!(replica.expire(now + Duration::from_secs(4)), vec![OTHER]);
        assert_eq!(replica.route_user("alice"), (Remote::Moving, Some(ServerId(7))));
        replica.set_place(ServerId(7), place(HubId(3)));
        replica.heard(HubId(3), now);
        assert_eq!(replica.route_user("alice"), (Remote::Hub(HubId(3)), Some(ServerId(7))));
        replica.remove_user("alice");
        assert_eq!(replica.route_user("alice"), (Remote::Nowhere, None));
    }

    #[test]
    fn a_hub_never_heard_from_is_reachable_until_it_dies() {
        let replica = Replica::new(ME, Duration::from_secs(3));
        let now = Instant::now();
        replica.set_place(ServerId(7), place(OTHER));
        assert_eq!(replica.route_server(ServerId(7)), Remote::Hub(OTHER), "not heard yet");
        replica.heard(OTHER, now);
        assert_eq!(replica.route_server(ServerId(7)), Remote::Hub(OTHER));
        assert_eq!(replica.expire(now + Duration::from_secs(4)), vec![OTHER]);
        assert_eq!(replica.route_server(ServerId(7)), Remote::Moving, "dead: it moves");
        replica.set_place(ServerId(8), place(ME));
        assert_eq!(replica.route_server(ServerId(8)), Remote::Moving, "this hub's own");
    }

    #[test]
    fn a_user_s_sessions_and_candidates_are_kept_compactly() {
        use acms_protocol::CandidateKind;
        assert_eq!(std::mem::size_of::<UserEntry>(), 24, "a revision and a small enum");
        let replica = Replica::new(ME, Duration::from_secs(3));
        let sam = UserId::new("sam").unwrap();
        let candidate = Candidate::new(([192, 0, 2, 1], 4000).into(), CandidateKind::Local);
        let with = Session { server: ServerId(8), candidates: vec![candidate] };
        let sessions = vec![Session::on(ServerId(7)), with.clone()];
        assert!(replica.set_user(sam.clone(), sessions.clone(), 3).is_empty());
        assert_eq!(replica.user("sam"), Some(ServerId(8)), "the last login");
        assert_eq!(replica.sessions("sam"), vec![ServerId(7), ServerId(8)]);
        assert!(replica.any_session("sam", |server| server == ServerId(7)));
        assert!(!replica.any_session("sam", |server| server == ServerId(9)));
        assert!(!replica.any_session("nobody", |_| true));
        assert_eq!(replica.candidates("sam", ServerId(8)), vec![candidate]);
        assert!(replica.candidates("sam", ServerId(7)).is_empty());
        assert_eq!(replica.users_on(ServerId(7)), vec![sam.clone()]);
        assert_eq!(replica.user_counts().get(&ServerId(8)), Some(&1));
        assert_eq!(
            replica.user_counts().get(&ServerId(7)),
            None,
            "counted once, at the last login"
        );
        assert_eq!(replica.set_user(sam, vec![Session::on(ServerId(7))], 4), sessions);
        assert_eq!(replica.user_entry("sam"), (vec![Session::on(ServerId(7))], Some(4)));
        assert_eq!(replica.remove_user("sam"), vec![Session::on(ServerId(7))]);
        assert_eq!(replica.user_entry("sam"), (Vec::new(), None));
        assert_eq!(replica.user("sam"), None);
    }

    #[test]
    fn the_users_placed_on_each_server_are_counted_as_entries_come_and_go() {
        let replica = Replica::new(ME, Duration::from_secs(3));
        let (alice, bob) = (UserId::new("alice").unwrap(), UserId::new("bob").unwrap());
        replica.set_user(alice.clone(), vec![Session::on(ServerId(1))], 1);
        replica.set_user(bob.clone(), vec![Session::on(ServerId(1))], 2);
        replica.set_user(alice.clone(), vec![Session::on(ServerId(1))], 3);
        assert_eq!(replica.users_placed_on(ServerId(1)), 2);
        replica.set_user(alice.clone(), vec![Session::on(ServerId(2))], 4);
        assert_eq!(
            (replica.users_placed_on(ServerId(1)), replica.users_placed_on(ServerId(2))),
            (1, 1)
        );
        replica.remove_user("bob");
        replica.remove_user("bob");
        assert_eq!(replica.users_placed_on(ServerId(1)), 0);
        let on: std::collections::HashSet<ServerId> = [ServerId(2)].into_iter().collect();
        assert_eq!(replica.users_on_servers(&on), vec![(alice, ServerId(2))]);
    }

    #[test]
    fn servers_are_listed_by_hub() {
        let replica = Replica::new(ME, Duration::from_secs(3));
        replica.set_place(ServerId(1), place(ME));
        replica.set_place(ServerId(2), place(OTHER));
        assert_eq!(replica.remote_servers(), vec![(ServerId(2), place(OTHER))]);
        assert_eq!(replica.servers_on(ME), vec![(ServerId(1), place(ME))]);
        assert_eq!(replica.set_place(ServerId(2), place(ME)), Some(place(OTHER)));
        assert!(replica.remote_servers().is_empty());
        let json = serde_json::to_vec(&place(OTHER)).unwrap();
        assert_eq!(serde_json::from_slice::<Place>(&json).unwrap(), place(OTHER));
    }
}

//! Group memberships, by server: which app servers have members of which group.
//!
//! The hub needs no more to route a group frame: one copy goes to each server with members, and
//! that server fans it out to its own. Which users are members is the AS's business, so a user
//! joining a group their server already has members of costs the hub nothing. Like the directory,
//! this is soft state, rebuilt from each AS's snapshot when it (re)connects.
//!
//! On a backplane, each change of the servers with members of a group here is also owed to the
//! groups bucket, so other hubs send this one the group's frames (and only then).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use acms_protocol::{GroupId, ServerId};
use dashmap::DashMap;

use crate::backplane::Backplane;

/// A fast, randomly seeded hash, as for the directory.
type Hasher = foldhash::fast::RandomState;

/// The servers with members of each group, and the groups of each server.
#[derive(Debug, Default)]
pub struct Groups {
    /// Read once per group frame: the servers to forward it to.
    servers: DashMap<GroupId, Vec<ServerId>, Hasher>,
    /// So a server's memberships can leave with it, and be replaced by its snapshot.
    by_server: DashMap<ServerId, HashSet<GroupId>, Hasher>,
    /// The backplane told of each change of a group's servers here, if the hub runs on one.
    backplane: OnceLock<Arc<Backplane>>,
}

impl Groups {
    /// Records that `server` has members of `group`; no change if it had already.
    pub(crate) fn join(&self, server: ServerId, group: GroupId) {
        self.join_within(server, group, usize::MAX);
    }

    /// As [`Groups::join`], unless that would give `server` more than `limit` groups: then
    /// nothing changes and the answer is false.
    pub(crate) fn join_within(&self, server: ServerId, group: GroupId, limit: usize) -> bool {
        {
            let mut groups = self.by_server.entry(server).or_default();
            if groups.contains(&group) {
                return true;
            }
            if groups.len() >= limit {
                return false;
            }
            groups.insert(group.clone());
        }
        let mut servers = self.servers.entry(group).or_default();
        if !servers.contains(&server) {
            servers.push(server);
            // Under the entry's lock: the changes of one group are owed in their order.
            if let Some(backplane) = self.backplane.get() {
                backplane.group_servers_here(servers.key(), &servers);
            }
        }
        true
    }

    /// Tells `backplane` of every change of a group's servers here from now on.
    pub(crate) fn share_with(&self, backplane: Arc<Backplane>) {
        let _set_once = self.backplane.set(backplane);
    }

    /// Every group with members here, with its servers: for the backplane's reconciliation.
    pub(crate) fn all(&self) -> Vec<(GroupId, Vec<ServerId>)> {
        self.servers.iter().map(|entry| (entry.key().clone(), entry.value().clone())).collect()
    }

    /// Owes the backplane this hub's entry of `group` again, as it is now: the shared
    /// directory lost or changed it. Under the group's lock, as every change is owed.
    pub(crate) fn share_again(&self, group: &GroupId) {
        let Some(backplane) = self.backplane.get() else { return };
        match self.servers.get(group.as_str()) {
            Some(servers) => backplane.group_servers_here(servers.key(), &servers),
            None => backplane.group_servers_here(group, &[]),
        }
    }

    /// Records that `server` has no more members of `group`.
    pub(crate) fn leave(&self, server: ServerId, group: &str) {
        let left = self.by_server.get_mut(&server).is_some_and(|mut groups| {
            let left = groups.remove(group);
            shrink_set(&mut groups);
            left
        });
        if left {
            self.forget(server, group);
        }
    }

    /// Ends a snapshot of `server`: its groups not in `kept` (those its snapshot, and the joins
    /// since, named) are gone.
    pub(crate) fn retain(&self, server: ServerId, kept: &HashSet<GroupId>) {
        let gone: Vec<GroupId> = match self.by_server.get_mut(&server) {
            Some(mut groups) => {
                let gone = groups.iter().filter(|group| !kept.contains(*group)).cloned().collect();
                groups.retain(|group| kept.contains(group));
                shrink_set(&mut groups);
                gone
            }
            None => return,
        };
        for group in gone {
            self.forget(server, group.as_str());
        }
        self.shrink();
    }

    /// Takes every membership of a server that left the cluster.
    pub(crate) fn remove_server(&self, server: ServerId) {
        let Some((_, groups)) = self.by_server.remove(&server) else { return };
        for group in groups {
            self.forget(server, group.as_str());
        }
        self.shrink();
    }

    /// Gives back the room of groups that are gone. A hash map keeps its capacity when entries
    /// leave: without this, the hub would hold the table of the most groups it ever had (a
    /// server that joined a million groups and left would leave a table for a million behind).
    /// Called after bulk removals only, and only when three quarters of the room is unused, so
    /// its cost is spread over the removals that made it worthwhile.
    fn shrink(&self) {
        let roomy = |len: usize, capacity: usize| len * 4 < capacity;
        if roomy(self.servers.len(), self.servers.capacity())
            || roomy(self.by_server.len(), self.by_server.capacity())
        {
            self.servers.shrink_to_fit();
            self.by_server.shrink_to_fit();
        }
    }

    fn forget(&self, server: ServerId, group: &str) {
        let backplane = self.backplane.get();
        self.servers.remove_if_mut(group, |group, servers| {
            let before = servers.len();
            servers.retain(|&member| member != server);
            if let Some(backplane) = backplane.filter(|_| servers.len() != before) {
                backplane.group_servers_here(group, servers);
            }
            servers.is_empty()
        });
    }

    /// The servers with members of `group`, but `except` (the origin, which serves its own).
    pub fn servers_of(&self, group: &str, except: ServerId) -> Vec<ServerId> {
        self.servers.get(group).map_or_else(Vec::new, |servers| {
            servers.iter().copied().filter(|&server| server != except).collect()
        })
    }

    /// Number of groups with members on some server.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether no group has members anywhere.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Number of groups `server` has members of, as far as the hub knows.
    pub fn count_of(&self, server: ServerId) -> usize {
        self.by_server.get(&server).map_or(0, |groups| groups.len())
    }

    /// Groups the hub has room for without growing its tables: after a server with many groups
    /// leaves, this falls back near [`Groups::len`].
    pub fn capacity(&self) -> usize {
        self.servers.capacity()
    }
}

/// Gives back the room of a server's group set once three quarters of it is unused.
fn shrink_set(groups: &mut HashSet<GroupId>) {
    if groups.len() * 4 < groups.capacity() {
        groups.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    #[test]
    fn memberships_follow_joins_leaves_snapshots_and_departures() {
        let groups = Groups::default();
        let (a, b, c) = (ServerId(1), ServerId(2), ServerId(3));
        groups.join(a, group("room"));
        groups.join(a, group("room"));
        groups.join(b, group("room"));
        groups.join(b, group("hall"));
        assert_eq!(groups.servers_of("room", c), [a, b]);
        assert_eq!(groups.servers_of("room", a), [b], "the origin serves its own members");
        assert!(groups.servers_of("nobody", c).is_empty());

        groups.leave(a, "room");
        groups.leave(a, "room");
        assert_eq!(groups.servers_of("room", c), [b]);

        groups.retain(b, &HashSet::from([group("hall")]));
        assert!(groups.servers_of("room", c).is_empty());
        assert_eq!(groups.servers_of("hall", c), [b]);
        assert_eq!(groups.len(), 1, "an empty group is forgotten");

        groups.remove_server(b);
        assert!(groups.is_empty());
    }

    #[test]
    fn a_server_is_held_to_its_limit_and_the_room_of_its_groups_goes_with_it() {
        let groups = Groups::default();
        let (a, b) = (ServerId(1), ServerId(2));
        for n in 0..10 {
            assert!(groups.join_within(a, group(&format!("g{n}")), 10));
        }
        assert!(!groups.join_within(a, group("one-more"), 10), "past the limit");
        assert!(groups.join_within(a, group("g3"), 10), "a group it has is no change");
        assert!(groups.join_within(b, group("one-more"), 10), "the limit is per server");
        assert_eq!((groups.count_of(a), groups.count_of(b), groups.len()), (10, 1, 11));
        groups.leave(a, "g0");
        assert!(groups.join_within(a, group("g10"), 10), "room again after a leave");

        for n in 0..50_000 {
            groups.join(a, group(&format!("many{n}")));
        }
        assert!(groups.capacity() >= 50_000);
        groups.remove_server(a);
        assert_eq!((groups.len(), groups.count_of(a)), (1, 0));
        assert!(groups.capacity() < 1_000, "room kept: {}", groups.capacity());
        groups.remove_server(b);
        assert!(groups.is_empty());
    }
}

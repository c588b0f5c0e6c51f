//! Group memberships, by server: which app servers have members of which group.
//!
//! The hub needs no more to route a group frame: one copy goes to each server with members, and
//! that server fans it out to its own. Which users are members is the AS's business, so a user
//! joining a group their server already has members of costs the hub nothing. Like the directory,
//! this is soft state, rebuilt from each AS's snapshot when it (re)connects.

use std::collections::HashSet;

use acms_protocol::{GroupId, ServerId};
use dashmap::DashMap;

/// A fast, randomly seeded hash, as for the directory.
type Hasher = foldhash::fast::RandomState;

/// The servers with members of each group, and the groups of each server.
#[derive(Debug, Default)]
pub struct Groups {
    /// Read once per group frame: the servers to forward it to.
    servers: DashMap<GroupId, Vec<ServerId>, Hasher>,
    /// So a server's memberships can leave with it, and be replaced by its snapshot.
    by_server: DashMap<ServerId, HashSet<GroupId>, Hasher>,
}

impl Groups {
    /// Records that `server` has members of `group`; no change if it had already.
    pub(crate) fn join(&self, server: ServerId, group: GroupId) {
        if !self.by_server.entry(server).or_default().insert(group.clone()) {
            return;
        }
        let mut servers = self.servers.entry(group).or_default();
        if !servers.contains(&server) {
            servers.push(server);
        }
    }

    /// Records that `server` has no more members of `group`.
    pub(crate) fn leave(&self, server: ServerId, group: &str) {
        let left = self.by_server.get_mut(&server).is_some_and(|mut groups| groups.remove(group));
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
                gone
            }
            None => return,
        };
        for group in gone {
            self.forget(server, group.as_str());
        }
    }

    /// Takes every membership of a server that left the cluster.
    pub(crate) fn remove_server(&self, server: ServerId) {
        let Some((_, groups)) = self.by_server.remove(&server) else { return };
        for group in groups {
            self.forget(server, group.as_str());
        }
    }

    fn forget(&self, server: ServerId, group: &str) {
        self.servers.remove_if_mut(group, |_, servers| {
            servers.retain(|&member| member != server);
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
}

//! Groups on this server: which local users are members of which group, and the group, broadcast
//! and server frames sent through the hub that still wait for acknowledgements.

use std::collections::{HashMap, HashSet};

use acms_protocol::{GroupId, ServerId, UserId};

/// The local members of each group. The hub knows only which servers have members
/// (`Join`/`Leave`); which users they are is this server's business.
#[derive(Debug, Default)]
pub(crate) struct LocalGroups {
    members: HashMap<GroupId, HashSet<UserId>>,
    of_user: HashMap<UserId, HashSet<GroupId>>,
    /// Most groups this server may have members in: the hub's limit, from its `Welcome`.
    limit: Option<usize>,
}

impl LocalGroups {
    /// Takes the hub's limit on the groups one server may have members in.
    pub(crate) fn set_limit(&mut self, max: usize) {
        self.limit = Some(max);
    }

    /// The hub's limit, if a member joining `group` would take this server past it: a group
    /// with local members already costs the hub nothing more.
    pub(crate) fn full_for(&self, group: &str) -> Option<usize> {
        let max = self.limit?;
        (self.members.len() >= max && !self.members.contains_key(group)).then_some(max)
    }

    /// Adds `user` to `group`; returns whether the group had no local member before (the hub is
    /// then to be told).
    pub(crate) fn join(&mut self, group: &GroupId, user: &UserId) -> bool {
        let members = self.members.entry(group.clone()).or_default();
        let first = members.is_empty();
        if !members.insert(user.clone()) {
            return false;
        }
        self.of_user.entry(user.clone()).or_default().insert(group.clone());
        first
    }

    /// Takes `user` out of `group`; returns whether that was its last local member.
    pub(crate) fn leave(&mut self, group: &GroupId, user: &UserId) -> bool {
        let Some(members) = self.members.get_mut(group) else { return false };
        if !members.remove(user) {
            return false;
        }
        if let Some(groups) = self.of_user.get_mut(user) {
            groups.remove(group);
            if groups.is_empty() {
                self.of_user.remove(user);
            }
        }
        let last = members.is_empty();
        if last {
            self.members.remove(group);
        }
        last
    }

    /// Takes `user` out of every group (they logged out); returns the groups left with no local
    /// member.
    pub(crate) fn remove_user(&mut self, user: &UserId) -> Vec<GroupId> {
        let groups = self.of_user.get(user).cloned().unwrap_or_default();
        groups.into_iter().filter(|group| self.leave(group, user)).collect()
    }

    /// Whether `group` has a local member.
    pub(crate) fn has_members(&self, group: &str) -> bool {
        self.members.contains_key(group)
    }

    /// The local members of `group`, but `except`.
    pub(crate) fn members(&self, group: &str, except: Option<&str>) -> Vec<UserId> {
        let Some(members) = self.members.get(group) else { return Vec::new() };
        members.iter().filter(|user| Some(user.as_str()) != except).cloned().collect()
    }

    /// The groups `user` is a member of.
    pub(crate) fn groups_of(&self, user: &str) -> Vec<GroupId> {
        self.of_user.get(user).map_or_else(Vec::new, |groups| groups.iter().cloned().collect())
    }

    /// Every group with a local member, for the snapshot.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.members.keys()
    }
}

/// A frame sent to several servers (group, broadcast, server message, or a unicast frame for a
/// user with sessions on several servers): kept until every server the hub forwarded it to
/// acknowledged it.
///
/// Only the hub knows which servers those are; it says so with `Copies`, on this server's own
/// connection. By FIFO the `Copies` comes before any of their acks (they are sent after the hub
/// forwarded the frame, and travel target -> hub -> here, behind it). The acks are nevertheless
/// recorded by server whatever the order, and compared when the list is known: a frame sent again
/// after a hub failure gets a new list from the new hub, which replaces the old one, while acks
/// of the first round may still be on their way; and an ack must never settle a frame early.
#[derive(Debug, Default)]
pub(crate) struct Awaited {
    /// The servers of the latest `Copies`, less those gone since; `None` before the first.
    servers: Option<Vec<ServerId>>,
    /// The servers that acknowledged the frame so far.
    acked: Vec<ServerId>,
    /// A unicast frame (policy `multi`), and whether it was delivered on this server too.
    unicast: Option<bool>,
}

impl Awaited {
    /// A unicast frame the hub copied to several servers; `here` when it was also delivered to
    /// a session on this server.
    pub(crate) fn unicast(here: bool) -> Self {
        Self { unicast: Some(here), ..Self::default() }
    }

    /// Once every server of the list acknowledged the frame, its receipt's outcome.
    pub(crate) fn outcome(&self) -> Option<crate::events::Outcome> {
        let servers = self.reached()?;
        Some(match self.unicast {
            Some(here) => crate::events::Outcome::Delivered { sessions: servers + u32::from(here) },
            None => crate::events::Outcome::Reached { servers },
        })
    }

    /// Records an ack from `server`.
    pub(crate) fn ack(&mut self, server: ServerId) {
        if !self.acked.contains(&server) {
            self.acked.push(server);
        }
    }

    /// Takes the hub's list of the servers the frame went to, those of it still in the cluster.
    pub(crate) fn copies(&mut self, servers: Vec<ServerId>, live: &HashSet<ServerId>) {
        self.servers = Some(servers.into_iter().filter(|server| live.contains(server)).collect());
    }

    /// A server left the cluster for good: its ack will never come.
    pub(crate) fn server_down(&mut self, server: ServerId) {
        if let Some(servers) = self.servers.as_mut() {
            servers.retain(|&target| target != server);
        }
    }

    /// Once every server of the list acknowledged the frame: how many servers it reached.
    pub(crate) fn reached(&self) -> Option<u32> {
        let servers = self.servers.as_ref()?;
        let all = servers.iter().all(|server| self.acked.contains(server));
        all.then(|| u32::try_from(servers.len()).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_groups_tell_first_and_last_members() {
        let mut groups = LocalGroups::default();
        let (room, hall) = (GroupId::new("room").unwrap(), GroupId::new("hall").unwrap());
        let (al, bo) = (UserId::new("al").unwrap(), UserId::new("bo").unwrap());
        assert!(groups.join(&room, &al), "first member");
        assert!(!groups.join(&room, &al), "already a member");
        assert!(!groups.join(&room, &bo));
        assert!(groups.join(&hall, &al));
        assert_eq!(groups.members("room", Some("al")), std::slice::from_ref(&bo));
        assert!(!groups.leave(&room, &bo), "al is still in it");
        assert_eq!(groups.groups_of("al").len(), 2);
        let mut emptied = groups.remove_user(&al);
        emptied.sort();
        assert_eq!(emptied, [hall, room], "al was the last member of both");
        assert_eq!(groups.groups().count(), 0);
        assert!(!groups.has_members("room"));
    }

    #[test]
    fn a_fanned_out_frame_waits_for_every_server_of_the_latest_list() {
        let live: HashSet<_> = [ServerId(2), ServerId(3), ServerId(4)].into();
        let mut awaited = Awaited::default();
        awaited.ack(ServerId(2));
        assert_eq!(awaited.reached(), None, "no list yet: an ack alone settles nothing");
        awaited.copies(vec![ServerId(2), ServerId(3), ServerId(9)], &live);
        assert_eq!(awaited.reached(), None, "3 has not acked; 9 is not in the cluster");
        awaited.ack(ServerId(3));
        assert_eq!(awaited.reached(), Some(2));

        let mut resent = Awaited::default();
        resent.copies(vec![ServerId(2), ServerId(3)], &live);
        resent.ack(ServerId(2));
        resent.copies(vec![ServerId(2), ServerId(4)], &live);
        assert_eq!(resent.reached(), None, "the new list replaces the old");
        resent.server_down(ServerId(4));
        assert_eq!(resent.reached(), Some(1));
        let nobody = Awaited { servers: Some(Vec::new()), ..Awaited::default() };
        assert_eq!(nobody.reached(), Some(0));
    }

    #[test]
    fn a_unicast_copied_to_several_servers_counts_sessions() {
        let live: HashSet<_> = [ServerId(2), ServerId(3)].into();
        let mut awaited = Awaited::unicast(true);
        awaited.copies(vec![ServerId(2), ServerId(3)], &live);
        awaited.ack(ServerId(2));
        assert_eq!(awaited.outcome(), None, "server 3 has not acked");
        awaited.ack(ServerId(3));
        assert_eq!(awaited.outcome(), Some(crate::events::Outcome::Delivered { sessions: 3 }));
        let mut elsewhere = Awaited::unicast(false);
        elsewhere.copies(vec![ServerId(2)], &live);
        elsewhere.ack(ServerId(2));
        assert_eq!(elsewhere.outcome(), Some(crate::events::Outcome::Delivered { sessions: 1 }));
    }
}

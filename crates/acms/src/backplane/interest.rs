//! Which hubs have members of which group: this hub's replica of the groups bucket.
//!
//! Each hub keeps one key per group it has members of, `<group>.<hub>`, whose value lists the
//! servers of that hub with members. A hub writes it only when a server gets its first member of
//! the group or loses its last one, so the cost is per (group, server), never per member. A group
//! frame crosses to each hub listed, once; a hub with no entry for a group gets none of its
//! traffic. The servers are listed, not just the hub, so the origin hub can tell the origin which
//! servers must acknowledge the frame (`Copies`), as for a group on one hub.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use acms_protocol::{GroupId, ServerId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::HubId;

/// How long a server of this hub that lost its last member of a group still gets the group's
/// frames from other hubs: those whose replica had not seen the change yet count on its ack.
/// Its app server drops a frame for no local member, and acknowledges it.
pub(crate) const LEFT_GRACE: Duration = Duration::from_secs(10);

/// The most servers one entry may list: a larger value is refused as written by no hub.
const MAX_SERVERS: usize = 65_536;

/// The key of `group` on `hub` in the groups bucket: base64url of the group, then the hub.
pub(crate) fn group_key(group: &str, hub: HubId) -> String {
    format!("{}.{hub}", URL_SAFE_NO_PAD.encode(group.as_bytes()))
}

/// The group and hub of a key in the groups bucket; `None` for a key no hub wrote.
pub(crate) fn group_of_key(key: &str) -> Option<(GroupId, HubId)> {
    let (group, hub) = key.split_once('.')?;
    let group = String::from_utf8(URL_SAFE_NO_PAD.decode(group).ok()?).ok()?;
    let hub = u64::from_str_radix(hub, 16).ok()?;
    Some((GroupId::new(&group).ok()?, HubId(hub)))
}

/// The value of an entry: the servers, in decimal, separated by commas.
pub(crate) fn encode_servers(servers: &[ServerId]) -> bytes::Bytes {
    let text: Vec<String> = servers.iter().map(|server| server.0.to_string()).collect();
    bytes::Bytes::from(text.join(","))
}

/// Reads an entry's value; `None` if it is not a list of server ids or is too long.
pub(crate) fn decode_servers(value: &[u8]) -> Option<Vec<ServerId>> {
    let text = std::str::from_utf8(value).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    let servers: Option<Vec<ServerId>> =
        text.split(',').take(MAX_SERVERS + 1).map(|id| id.parse().ok().map(ServerId)).collect();
    servers.filter(|servers| servers.len() <= MAX_SERVERS)
}

/// The servers with members of each group, by hub, as the groups bucket says.
#[derive(Debug, Default)]
pub(crate) struct Interest {
    groups: RwLock<HashMap<GroupId, HashMap<HubId, Vec<ServerId>>>>,
    /// Servers of this hub that lost their last member of a group, and when: bounded by the
    /// changes within [`LEFT_GRACE`].
    left: Mutex<Vec<(GroupId, ServerId, Instant)>>,
    /// This hub's own entries as the bucket holds them (its watch), which the reconciliation
    /// compares with its groups: `groups` records them as they are owed, not as written.
    stored_here: RwLock<HashMap<GroupId, Vec<ServerId>>>,
}

impl Interest {
    /// Records `hub`'s servers with members of `group` (none: the hub has no members).
    pub(crate) fn set(&self, group: GroupId, hub: HubId, servers: Vec<ServerId>) {
        let mut groups = self.groups.write().expect("interest lock");
        if servers.is_empty() {
            if let Some(hubs) = groups.get_mut(&group) {
                hubs.remove(&hub);
                if hubs.is_empty() {
                    groups.remove(&group);
                }
            }
        } else {
            groups.entry(group).or_default().insert(hub, servers);
        }
    }

    /// This hub's servers with members of `group` are now `servers`, at `now`: records the
    /// change, and those that left, for [`Interest::recently_left`].
    pub(crate) fn set_here(&self, group: &GroupId, me: HubId, servers: &[ServerId], now: Instant) {
        let before = self.listed(group.as_str(), me);
        let mut left = self.left.lock().expect("interest lock");
        left.retain(|(_, _, when)| now.saturating_duration_since(*when) < LEFT_GRACE);
        left.retain(|(g, server, _)| !(g == group && servers.contains(server)));
        for server in before.into_iter().filter(|server| !servers.contains(server)) {
            left.push((group.clone(), server, now));
        }
        drop(left);
        self.set(group.clone(), me, servers.to_vec());
    }

    /// The bucket holds this hub's entry of `group` listing `servers` (none: no entry).
    pub(crate) fn set_stored_here(&self, group: GroupId, servers: Vec<ServerId>) {
        let mut stored = self.stored_here.write().expect("interest lock");
        if servers.is_empty() {
            stored.remove(&group);
        } else {
            stored.insert(group, servers);
        }
    }

    /// This hub's entries as the bucket holds them.
    pub(crate) fn stored_here(&self) -> HashMap<GroupId, Vec<ServerId>> {
        self.stored_here.read().expect("interest lock").clone()
    }

    /// How many entries of this hub the bucket holds.
    pub(crate) fn stored_here_len(&self) -> usize {
        self.stored_here.read().expect("interest lock").len()
    }

    /// Every (group, hub) entry of the other hubs, as the bucket holds them.
    pub(crate) fn entries_of_others(&self, me: HubId) -> Vec<(GroupId, HubId)> {
        let groups = self.groups.read().expect("interest lock");
        let entries = groups.iter().flat_map(|(group, hubs)| {
            hubs.keys().filter(|&&hub| hub != me).map(move |&hub| (group.clone(), hub))
        });
        entries.collect()
    }

    /// This hub's servers that left `group` within [`LEFT_GRACE`] of `now`.
    pub(crate) fn recently_left(&self, group: &str, now: Instant) -> Vec<ServerId> {
        let left = self.left.lock().expect("interest lock");
        let recent = left.iter().filter(|(g, _, when)| {
            g.as_str() == group && now.saturating_duration_since(*when) < LEFT_GRACE
        });
        recent.map(|(_, server, _)| *server).collect()
    }

    /// The servers of hubs other than `me` with members of `group`, with their hubs.
    pub(crate) fn servers_of(&self, group: &str, me: HubId) -> Vec<(HubId, ServerId)> {
        let groups = self.groups.read().expect("interest lock");
        let Some(hubs) = groups.get(group) else { return Vec::new() };
        let others = hubs.iter().filter(|(hub, _)| **hub != me);
        others
            .flat_map(|(&hub, servers)| servers.iter().map(move |&server| (hub, server)))
            .collect()
    }

    /// The servers `hub` lists for `group`.
    pub(crate) fn listed(&self, group: &str, hub: HubId) -> Vec<ServerId> {
        let groups = self.groups.read().expect("interest lock");
        groups.get(group).and_then(|hubs| hubs.get(&hub)).cloned().unwrap_or_default()
    }

    /// The groups `hub` has entries for: to remove when it is given up.
    pub(crate) fn groups_on(&self, hub: HubId) -> Vec<GroupId> {
        let groups = self.groups.read().expect("interest lock");
        groups.iter().filter(|(_, hubs)| hubs.contains_key(&hub)).map(|(g, _)| g.clone()).collect()
    }

    /// How many (group, hub) entries there are, for the dashboard.
    pub(crate) fn len(&self) -> usize {
        self.groups.read().expect("interest lock").values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_read_back_and_bad_ones_are_refused() {
        let hub = HubId(0xabc);
        let key = group_key("room.1 *>", hub);
        assert_eq!(key.matches('.').count(), 1, "{key}");
        let (group, back) = group_of_key(&key).unwrap();
        assert_eq!((group.as_str(), back), ("room.1 *>", hub));
        assert_eq!(group_of_key("nodot"), None);
        let servers = vec![ServerId(1), ServerId(40)];
        assert_eq!(decode_servers(&encode_servers(&servers)).unwrap(), servers);
        assert_eq!(decode_servers(b"").unwrap(), vec![]);
        assert_eq!(decode_servers(b"1,x"), None);
    }

    #[test]
    fn only_other_hubs_with_members_are_listed() {
        let interest = Interest::default();
        let room = GroupId::new("room").unwrap();
        let (me, a, b) = (HubId(1), HubId(2), HubId(3));
        interest.set(room.clone(), me, vec![ServerId(1)]);
        interest.set(room.clone(), a, vec![ServerId(2), ServerId(3)]);
        interest.set(room.clone(), b, vec![ServerId(4)]);
        let mut listed = interest.servers_of("room", me);
        listed.sort();
        assert_eq!(listed, vec![(a, ServerId(2)), (a, ServerId(3)), (b, ServerId(4))]);
        interest.set(room.clone(), a, Vec::new());
        assert_eq!(interest.servers_of("room", me), vec![(b, ServerId(4))]);
        assert_eq!(interest.groups_on(b), vec![room.clone()]);
        assert_eq!(interest.len(), 2);
        assert!(interest.servers_of("hall", me).is_empty());
        assert_eq!(interest.listed("room", me), vec![ServerId(1)]);
    }

    #[test]
    fn a_server_that_left_still_gets_frames_for_a_grace() {
        let interest = Interest::default();
        let room = GroupId::new("room").unwrap();
        let (me, now) = (HubId(1), Instant::now());
        interest.set_here(&room, me, &[ServerId(1), ServerId(2)], now);
        interest.set_here(&room, me, &[ServerId(2)], now);
        assert_eq!(interest.recently_left("room", now), vec![ServerId(1)]);
        assert!(interest.recently_left("hall", now).is_empty());
        assert!(interest.recently_left("room", now + LEFT_GRACE).is_empty());
        // Back before the grace ends: no longer counted as left.
        interest.set_here(&room, me, &[ServerId(1), ServerId(2)], now);
        assert!(interest.recently_left("room", now).is_empty());
    }
}

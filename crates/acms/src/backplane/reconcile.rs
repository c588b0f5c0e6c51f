//! Reconciliation: the shared directory checked against what this hub knows first-hand (its
//! registry and its groups), so that drift of any cause heals by itself: a NATS cluster whose
//! buckets were emptied, an entry deleted or forged by hand, a write lost with its connection.
//!
//! The comparison is pure: iterators of what should be (this hub's servers, sessions and groups)
//! against lookups into the replica (what the directory says), returning the differences. A
//! difference is repaired only when two checks in a row find it ([`Suspects`]): a write still on
//! its way, or a change the watch has not brought yet, is not drift.
//!
//! Cheap by default: each check compares counts first ([`Counts`]), which costs a lookup per
//! server of this hub; the full comparison, O(users here), runs only when a count differs (and
//! did not differ the same way at the last full check, which found nothing), at once after the
//! NATS connection came back, and every [`FULL_EVERY`] checks in any case (a missing entry and a
//! stale one cancel out in a count).

use std::collections::{HashMap, HashSet};

use acms_protocol::{GroupId, ServerId, UserId};

use super::HubId;

/// A full comparison runs at least once every this many checks, whatever the counts say.
pub(crate) const FULL_EVERY: u32 = 15;

/// One difference between the directory and this hub's own state, named by its repair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Drift {
    /// A server connected here has no entry in the servers bucket: register it again.
    Server(ServerId),
    /// A session here is not in the users bucket: owe `user_online`.
    UserOnline(UserId, ServerId),
    /// The users bucket places a user on a server of this hub that has no session of theirs:
    /// owe `user_offline`.
    UserOffline(UserId, ServerId),
    /// This hub's entry of a group does not list its servers with members: owe it again.
    Group(GroupId),
}

impl Drift {
    /// The label of its repair in `/metrics` and logs.
    pub(crate) fn what(&self) -> &'static str {
        match self {
            Drift::Server(_) => "server",
            Drift::UserOnline(..) => "user_online",
            Drift::UserOffline(..) => "user_offline",
            Drift::Group(_) => "group",
        }
    }
}

/// The servers connected here (`here`) that the directory does not place anywhere. One placed
/// on another hub is not drift: it is moving, and the move decides.
pub(crate) fn servers(
    here: impl IntoIterator<Item = ServerId>,
    placed: impl Fn(ServerId) -> Option<HubId>,
) -> Vec<Drift> {
    here.into_iter().filter(|&server| placed(server).is_none()).map(Drift::Server).collect()
}

/// The sessions here (`(user, server)`) whose user the directory places nowhere, and how many
/// it places as this hub does. One placed on another server is not drift: a login elsewhere
/// won, or this hub's is still being written.
pub(crate) fn missing_users(
    sessions: impl IntoIterator<Item = (UserId, ServerId)>,
    directory: impl Fn(&UserId) -> Option<ServerId>,
) -> (Vec<Drift>, usize) {
    let mut matched = 0;
    let mut missing = Vec::new();
    for (user, server) in sessions {
        match directory(&user) {
            None => missing.push(Drift::UserOnline(user, server)),
            Some(placed) if placed == server => matched += 1,
            Some(_) => {}
        }
    }
    (missing, matched)
}

/// The entries of the users bucket on servers of this hub (`entries`) with no session here
/// (`has_session`).
pub(crate) fn stale_users(
    entries: impl IntoIterator<Item = (UserId, ServerId)>,
    has_session: impl Fn(&UserId, ServerId) -> bool,
) -> Vec<Drift> {
    let stale = entries.into_iter().filter(|(user, server)| !has_session(user, *server));
    stale.map(|(user, server)| Drift::UserOffline(user, server)).collect()
}

/// The groups whose entry of this hub (`stored`, as the bucket holds it) differs from its
/// servers with members (`here`): listed in a different set, missing, or left behind.
pub(crate) fn groups(
    here: impl IntoIterator<Item = (GroupId, Vec<ServerId>)>,
    stored: &HashMap<GroupId, Vec<ServerId>>,
) -> Vec<Drift> {
    let as_set = |servers: &[ServerId]| servers.iter().copied().collect::<HashSet<ServerId>>();
    let mut seen = HashSet::new();
    let mut drift = Vec::new();
    for (group, servers) in here {
        let differs = match stored.get(&group) {
            Some(listed) => as_set(listed) != as_set(&servers),
            None => !servers.is_empty(),
        };
        if differs {
            drift.push(Drift::Group(group.clone()));
        }
        seen.insert(group);
    }
    let left_behind = stored.keys().filter(|group| !seen.contains(*group));
    drift.extend(left_behind.cloned().map(Drift::Group));
    drift
}

/// The figures compared before the full check: equal, the directory most likely agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Users with a session here.
    pub(crate) sessions: usize,
    /// Users the directory places on servers of this hub.
    pub(crate) placed_here: usize,
    /// Groups with members here.
    pub(crate) groups: usize,
    /// This hub's entries in the groups bucket.
    pub(crate) stored_groups: usize,
}

impl Counts {
    fn agree(&self) -> bool {
        self.sessions == self.placed_here && self.groups == self.stored_groups
    }
}

/// What the checks remember from one to the next: the differences found last time, and how
/// many checks since the last full one.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    last: HashSet<Drift>,
    since_full: u32,
    /// The counts of the last full check that found nothing: counts that differ for a reason
    /// that is no drift (a user of several sessions whose entry names another hub's server)
    /// do not cost a full check each time while they stay as they were.
    quiet: Option<Counts>,
}

impl Suspects {
    /// Whether this check must compare everything: the counts differ, it is `forced` (the
    /// connection came back), or the last full check is [`FULL_EVERY`] checks old.
    pub(crate) fn full_due(&mut self, counts: Counts, forced: bool) -> bool {
        self.since_full += 1;
        let differ = !counts.agree() && self.quiet != Some(counts);
        let due = forced || differ || self.since_full >= FULL_EVERY;
        if due {
            self.since_full = 0;
        }
        due
    }

    /// A full check with `counts` found `drift` differences.
    pub(crate) fn checked(&mut self, counts: Counts, drift: usize) {
        self.quiet = (drift == 0).then_some(counts);
    }

    /// Of the differences `found` now, those found by the last check too: to repair. The others
    /// are remembered for the next check.
    pub(crate) fn confirm(&mut self, found: impl IntoIterator<Item = Drift>) -> Vec<Drift> {
        let found: HashSet<Drift> = found.into_iter().collect();
        let (confirmed, new): (Vec<Drift>, Vec<Drift>) =
            found.into_iter().partition(|drift| self.last.contains(drift));
        self.last = new.into_iter().collect();
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn group(name: &str) -> GroupId {
        GroupId::new(name).unwrap()
    }

    #[test]
    fn a_server_connected_here_and_placed_nowhere_is_registered_again() {
        let (me, other) = (HubId(1), HubId(2));
        let placed = |server: ServerId| match server.0 {
            1 => Some(me),
            2 => Some(other),
            _ => None,
        };
        let here = [ServerId(1), ServerId(2), ServerId(3)];
        assert_eq!(servers(here, placed), vec![Drift::Server(ServerId(3))]);
    }

    #[test]
    fn sessions_missing_from_the_directory_are_found_and_others_counted() {
        let directory: HashMap<UserId, ServerId> =
            [(user("alice"), ServerId(1)), (user("bob"), ServerId(9))].into_iter().collect();
        let sessions = [
            (user("alice"), ServerId(1)),
            // A login elsewhere won: not drift.
            (user("bob"), ServerId(1)),
            (user("carol"), ServerId(2)),
        ];
        let (missing, matched) = missing_users(sessions, |user| directory.get(user).copied());
        assert_eq!(missing, vec![Drift::UserOnline(user("carol"), ServerId(2))]);
        assert_eq!(matched, 1);
    }

    #[test]
    fn entries_on_servers_here_without_a_session_are_stale() {
        let sessions: HashSet<(UserId, ServerId)> =
            [(user("alice"), ServerId(1)), (user("bob"), ServerId(2))].into_iter().collect();
        let entries = [
            (user("alice"), ServerId(1)),
            (user("ghost"), ServerId(1)),
            // On this hub, but on another of its servers than the session's.
            (user("bob"), ServerId(1)),
        ];
        let stale = stale_users(entries, |user, server| sessions.contains(&(user.clone(), server)));
        assert_eq!(
            stale,
            vec![
                Drift::UserOffline(user("ghost"), ServerId(1)),
                Drift::UserOffline(user("bob"), ServerId(1)),
            ]
        );
    }

    #[test]
    fn group_entries_must_list_exactly_the_servers_with_members() {
        let stored: HashMap<GroupId, Vec<ServerId>> = [
            (group("same"), vec![ServerId(2), ServerId(1)]),
            (group("fewer"), vec![ServerId(1)]),
            (group("gone"), vec![ServerId(1)]),
        ]
        .into_iter()
        .collect();
        let here = [
            (group("same"), vec![ServerId(1), ServerId(2)]),
            (group("fewer"), vec![ServerId(1), ServerId(3)]),
            (group("missing"), vec![ServerId(4)]),
        ];
        let mut drift = groups(here, &stored);
        drift.sort_by_key(|drift| format!("{drift:?}"));
        assert_eq!(
            drift,
            vec![
                Drift::Group(group("fewer")),
                Drift::Group(group("gone")),
                Drift::Group(group("missing"))
            ]
        );
        assert!(groups(Vec::new(), &HashMap::new()).is_empty());
    }

    #[test]
    fn a_difference_is_repaired_only_when_two_checks_in_a_row_find_it() {
        let mut suspects = Suspects::default();
        let late = Drift::UserOnline(user("alice"), ServerId(1));
        let lost = Drift::Server(ServerId(2));
        assert!(suspects.confirm([late.clone(), lost.clone()]).is_empty());
        // The write of alice's login arrived meanwhile; the server's entry is still missing.
        assert_eq!(suspects.confirm([lost.clone()]), vec![lost.clone()]);
        // Repaired: found again next time (the watch may lag) it is a suspect anew.
        assert!(suspects.confirm([lost.clone()]).is_empty());
        assert!(suspects.confirm([]).is_empty());
        assert!(suspects.confirm([late]).is_empty(), "a first sighting again");
    }

    #[test]
    fn the_full_check_runs_when_counts_differ_when_forced_and_now_and_then() {
        let mut suspects = Suspects::default();
        let agree = Counts { sessions: 10, placed_here: 10, groups: 2, stored_groups: 2 };
        let differ = Counts { placed_here: 9, ..agree };
        assert!(suspects.full_due(differ, false));
        assert!(suspects.full_due(agree, true));
        let quiet: Vec<bool> = (0..FULL_EVERY).map(|_| suspects.full_due(agree, false)).collect();
        assert_eq!(quiet.iter().filter(|&&due| due).count(), 1, "{quiet:?}");
        assert_eq!(quiet.last(), Some(&true));
        let groups_differ = Counts { stored_groups: 1, ..agree };
        assert!(suspects.full_due(groups_differ, false));
        // Counts that differ with no drift behind them: not checked again while unchanged.
        suspects.checked(groups_differ, 0);
        assert!(!suspects.full_due(groups_differ, false));
        assert!(suspects.full_due(Counts { stored_groups: 0, ..agree }, false));
        suspects.checked(differ, 1);
        assert!(suspects.full_due(differ, false), "drift was found: checked until it is gone");
    }
}

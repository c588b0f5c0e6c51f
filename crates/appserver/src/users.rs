//! This server's user set, in one place: the local users, the digest and version that go with
//! them, what the hub has been told of since the last snapshot, and the users with sessions on
//! other servers too, and the P2P candidates the app set for them. The handle logs users in and
//! out through it, the link's core kicks them and takes its snapshots from it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use std::collections::HashMap;

use acms_protocol::{Candidate, UserDigest, UserId};
use dashmap::DashSet;

/// The number of logins and logouts that had changed the user set when one was made: each
/// `Login` and `Logout` the link sends carries the version it made, so the link can tell when
/// the hub has been told of every change the digest reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SetVersion(u64);

/// The login would pass the hub's limit on users per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtLimit {
    pub(crate) max: usize,
}

/// This server's online users: the source of truth the hub is rebuilt from.
///
/// Every send looks its recipient up in `online`, a concurrent set with a fast, randomly seeded
/// hash, so lookups take no lock. Changes go through `tally`'s lock, which keeps the set, its
/// digest and its version in step.
#[derive(Debug, Default)]
pub(crate) struct LocalUsers {
    online: DashSet<UserId, foldhash::fast::RandomState>,
    tally: Mutex<Tally>,
    multi: MultiSessionUsers,
    /// The P2P candidates of users online here, for those that have any. Changed under `tally`'s
    /// lock, so a user's candidates never outlive their logout.
    candidates: Mutex<HashMap<UserId, Vec<Candidate>>>,
}

/// The user is not online on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotHere;

/// The digest of the user set, its version, and what the link has told the current hub.
#[derive(Debug, Default)]
struct Tally {
    digest: UserDigest,
    version: u64,
    /// The version the last snapshot reflects.
    snapshot: u64,
    /// Logins and logouts numbered after `snapshot` that the hub has been told of since.
    told_since_snapshot: u64,
}

impl LocalUsers {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().expect("tally lock")
    }

    fn candidate_map(&self) -> MutexGuard<'_, HashMap<UserId, Vec<Candidate>>> {
        self.candidates.lock().expect("candidates lock")
    }

    /// Sets the P2P candidates of `user`, who must be online here; an empty list clears them.
    pub(crate) fn set_candidates(
        &self,
        user: &UserId,
        candidates: Vec<Candidate>,
    ) -> Result<(), NotHere> {
        let _tally = self.tally();
        if !self.online.contains(user) {
            return Err(NotHere);
        }
        let mut map = self.candidate_map();
        if candidates.is_empty() {
            map.remove(user);
        } else {
            map.insert(user.clone(), candidates);
        }
        Ok(())
    }

    /// The P2P candidates of `user` here: `None` if they are not online here.
    pub(crate) fn candidates(&self, user: &str) -> Option<Vec<Candidate>> {
        let _tally = self.tally();
        if !self.online.contains(user) {
            return None;
        }
        Some(self.candidate_map().get(user).cloned().unwrap_or_default())
    }

    /// Every user online here with candidates, and theirs: sent after the snapshot's logins.
    pub(crate) fn all_candidates(&self) -> Vec<(UserId, Vec<Candidate>)> {
        let map = self.candidate_map();
        map.iter().map(|(user, candidates)| (user.clone(), candidates.clone())).collect()
    }

    /// Whether `user` is online here.
    pub(crate) fn contains(&self, user: &str) -> bool {
        self.online.contains(user)
    }

    /// How many users are online here.
    pub(crate) fn len(&self) -> usize {
        self.online.len()
    }

    /// The users online here, but `except`.
    pub(crate) fn all_but(&self, except: Option<&str>) -> Vec<UserId> {
        let others = self.online.iter().filter(|user| Some(user.key().as_str()) != except);
        others.map(|user| user.key().clone()).collect()
    }

    /// Marks `user` online; `Ok(None)` if they were already, the version to tell the hub
    /// otherwise. Refused when it would take the set past `max` users.
    pub(crate) fn login(&self, user: &UserId, max: usize) -> Result<Option<SetVersion>, AtLimit> {
        if self.online.len() >= max && !self.online.contains(user) {
            return Err(AtLimit { max });
        }
        let mut tally = self.tally();
        if !self.online.insert(user.clone()) {
            return Ok(None);
        }
        tally.digest.insert(user.as_str());
        tally.version += 1;
        Ok(Some(SetVersion(tally.version)))
    }

    /// Marks `user` gone; the version to tell the hub, or `None` if they were not online here.
    /// They no longer have sessions elsewhere as far as this server cares.
    pub(crate) fn logout(&self, user: &UserId) -> Option<SetVersion> {
        let version = {
            let mut tally = self.tally();
            self.online.remove(user)?;
            self.candidate_map().remove(user.as_str());
            tally.digest.remove(user.as_str());
            tally.version += 1;
            SetVersion(tally.version)
        };
        self.multi.set(user.clone(), false);
        Some(version)
    }

    /// The hub ended `user`'s session here (login-conflict policy `replace`): a logout like any
    /// other, so the hub's record and this server's digest stay equal.
    pub(crate) fn kick(&self, user: &UserId) -> Option<SetVersion> {
        self.logout(user)
    }

    /// The whole set for a snapshot: the hub is told of every change up to its version by it,
    /// and of later ones by the `Login`s and `Logout`s that carry them.
    pub(crate) fn snapshot(&self) -> Vec<UserId> {
        // Under the tally's lock, so the snapshot reflects exactly the changes up to the mark.
        let mut tally = self.tally();
        tally.snapshot = tally.version;
        tally.told_since_snapshot = 0;
        self.online.iter().map(|user| user.key().clone()).collect()
    }

    /// Counts a login or logout the hub is being told of, unless the snapshot had it already.
    pub(crate) fn told(&self, version: SetVersion) {
        let mut tally = self.tally();
        if version.0 > tally.snapshot {
            tally.told_since_snapshot += 1;
        }
    }

    /// The digest, once the hub has been told of every change it reflects: a digest sent while
    /// a login is still queued would differ from the hub's record for no fault of either.
    pub(crate) fn digest_if_told(&self) -> Option<UserDigest> {
        let tally = self.tally();
        (tally.version.wrapping_sub(tally.snapshot) == tally.told_since_snapshot)
            .then_some(tally.digest)
    }

    /// Whether `user` has sessions on other servers too (policy `multi`).
    pub(crate) fn is_multi_session(&self, user: &str) -> bool {
        self.multi.contains(user)
    }

    /// Takes the hub's word on whether `user` has sessions elsewhere; only for a user still
    /// here: one who left since needs nothing.
    pub(crate) fn set_multi_session(&self, user: UserId, elsewhere: bool) -> bool {
        if elsewhere && !self.contains(user.as_str()) {
            return false;
        }
        self.multi.set(user, elsewhere);
        true
    }

    /// How many users here have sessions elsewhere too.
    pub(crate) fn multi_session_count(&self) -> usize {
        self.multi.len()
    }
}

/// This server's users who also have sessions on other servers (policy `multi`), as the hub says
/// with `MultiSession`. A message from here to one of them is delivered here and sent through the
/// hub too, which relays it to the other sessions. Soft state: kept across reconnects, said again
/// by the hub after each snapshot, and corrected by it when found stale.
///
/// Every send to a local user asks it, so the count is read first: with no such user, as
/// under policy `replace`, that is the whole cost.
#[derive(Debug, Default)]
struct MultiSessionUsers {
    count: AtomicUsize,
    users: Mutex<std::collections::HashSet<UserId>>,
}

impl MultiSessionUsers {
    fn contains(&self, user: &str) -> bool {
        self.count.load(Ordering::Acquire) != 0
            && self.users.lock().expect("multi-session users lock").contains(user)
    }

    fn set(&self, user: UserId, elsewhere: bool) {
        if !elsewhere && self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut users = self.users.lock().expect("multi-session users lock");
        if elsewhere {
            users.insert(user);
        } else {
            users.remove(user.as_str());
        }
        self.count.store(users.len(), Ordering::Release);
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[test]
    fn the_digest_waits_until_the_hub_was_told_every_change() {
        let users = LocalUsers::default();
        let (al, bo) = (user("al"), user("bo"));
        let al_in = users.login(&al, 10).unwrap().expect("new");
        assert_eq!(users.login(&al, 10), Ok(None), "already online");
        assert_eq!(users.snapshot(), std::slice::from_ref(&al));
        users.told(al_in);
        assert!(users.digest_if_told().is_some(), "the snapshot had al's login already");
        let bo_in = users.login(&bo, 10).unwrap().expect("new");
        assert!(users.digest_if_told().is_none(), "bo's login is not told yet");
        users.told(bo_in);
        let digest = users.digest_if_told().expect("told");
        let mut expected = UserDigest::default();
        expected.insert("al");
        expected.insert("bo");
        assert_eq!(digest, expected);
        assert_eq!(users.login(&user("cy"), 2), Err(AtLimit { max: 2 }));
        assert!(users.kick(&al).is_some());
        assert!(users.logout(&al).is_none(), "gone already");
        assert!(!users.contains("al"));
    }

    #[test]
    fn only_a_user_still_here_is_a_multi_session_user() {
        let users = LocalUsers::default();
        let al = user("al");
        assert!(!users.set_multi_session(al.clone(), true), "not online here");
        users.login(&al, 10).unwrap();
        assert!(users.set_multi_session(al.clone(), true));
        assert!(users.is_multi_session("al"));
        assert_eq!(users.multi_session_count(), 1);
        users.logout(&al);
        assert!(!users.is_multi_session("al"), "a logout ends it");
        assert_eq!(users.multi_session_count(), 0);
    }
}

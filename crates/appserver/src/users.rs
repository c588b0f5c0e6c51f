//! This server's user set as the library keeps it: the local users, the digest and change count
//! that go with them, and the users with sessions on other servers too.

use std::sync::atomic::{AtomicUsize, Ordering};

use acms_protocol::{UserDigest, UserId};
use dashmap::DashSet;

/// This server's online users. Every send looks its recipient up here, so the hash is a fast,
/// randomly seeded one.
pub(crate) type LocalUsers = DashSet<UserId, foldhash::fast::RandomState>;

/// This server's users who also have sessions on other servers (policy `multi`), as the hub
/// says with `Shared`. A message from here to one of them is delivered here and sent through the
/// hub too, which relays it to the other sessions. Soft state: kept across reconnects, said
/// again by the hub after each snapshot, and corrected by it when found stale.
///
/// Every send to a local user asks it, so the count is read first: with no shared user, as
/// under policy `replace`, that is the whole cost.
#[derive(Debug, Default)]
pub(crate) struct SharedUsers {
    count: AtomicUsize,
    users: std::sync::Mutex<std::collections::HashSet<UserId>>,
}

impl SharedUsers {
    /// Whether `user` has sessions on other servers too.
    pub(crate) fn contains(&self, user: &str) -> bool {
        self.count.load(Ordering::Acquire) != 0
            && self.users.lock().expect("shared users lock").contains(user)
    }

    /// Records whether `user` has sessions elsewhere.
    pub(crate) fn set(&self, user: UserId, elsewhere: bool) {
        let mut users = self.users.lock().expect("shared users lock");
        if elsewhere {
            users.insert(user);
        } else {
            users.remove(user.as_str());
        }
        self.count.store(users.len(), Ordering::Release);
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// The digest of this server's users and the number of logins and logouts that changed it.
///
/// Changed together with [`LocalUsers`], under its lock, so the link can tell when the hub has
/// been told of every change the digest reflects (the snapshot, then each `Login` and `Logout`
/// carries its change number) and only then send the digest: a digest sent while a login is
/// still queued would differ from the hub's record for no fault of either.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) digest: UserDigest,
    pub(crate) changes: u64,
}

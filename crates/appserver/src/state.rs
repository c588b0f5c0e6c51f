//! What the [`crate::Cluster`] handles and the link both read and change: plain state behind
//! locks and atomics, no I/O, so the link's synchronous core can hold it as the handles do.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use acms_protocol::UserId;

use crate::groups::LocalGroups;
use crate::users::LocalUsers;

/// This server's side of the cluster, shared by its handles and its link.
#[derive(Debug)]
pub(crate) struct ServerState {
    /// The users online here, their digest and the multi-session users.
    pub(crate) users: LocalUsers,
    /// The local members of each group.
    pub(crate) groups: Mutex<LocalGroups>,
    /// The users this server watches: sent again to every hub the link connects to.
    pub(crate) watched: Mutex<HashSet<UserId>>,
    /// The hub's limit on this server's users, from its last `Welcome` (no limit before one);
    /// the watch list is held to the same figure.
    pub(crate) max_users: AtomicUsize,
    /// Bytes of refused messages on their way back and not yet answered: the handles stop
    /// refusing past the retransmit buffer's size.
    pub(crate) refusing: AtomicUsize,
}

impl Default for ServerState {
    fn default() -> Self {
        Self {
            users: LocalUsers::default(),
            groups: Mutex::default(),
            watched: Mutex::default(),
            max_users: AtomicUsize::new(usize::MAX),
            refusing: AtomicUsize::new(0),
        }
    }
}

impl ServerState {
    /// The local members of each group, locked.
    pub(crate) fn groups(&self) -> std::sync::MutexGuard<'_, LocalGroups> {
        self.groups.lock().expect("groups lock")
    }

    /// The watched users, locked.
    pub(crate) fn watched(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.watched.lock().expect("watched lock")
    }
}

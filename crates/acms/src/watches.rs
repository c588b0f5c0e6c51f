//! Presence watches: which AS want to hear when which users come online, go offline or move.
//!
//! Soft state like the directory (DESIGN.md, principle 1): an AS sends its whole watch list again
//! after every (re)connect, and its watches leave with its connection. The directory itself stays
//! the only record of where users are; a watch just names who is told of its changes. The pushes
//! that tell them are in `presence`.
//!
//! In the settle window after a hub's first registration, the answer `offline` to a watch is
//! held here until the window ends (see `presence`).

use std::collections::HashSet;
use std::sync::Mutex;

use acms_protocol::{ServerId, UserId};
use dashmap::DashMap;

/// The AS watching each user. Consulted on logins and logouts, never on the relay path.
#[derive(Debug, Default)]
pub(crate) struct Watches {
    by_user: DashMap<UserId, Vec<ServerId>, foldhash::fast::RandomState>,
    held: Mutex<Held>,
}

/// Answers `offline` held in the settle window.
#[derive(Debug, Default)]
struct Held {
    /// The window ended: nothing is held any more.
    ended: bool,
    /// (watcher, watched user), each at most once: bounded by the watches themselves.
    answers: HashSet<(ServerId, UserId)>,
}

impl Watches {
    /// `server` watches `user`; watching twice is watching once.
    pub(crate) fn watch(&self, server: ServerId, user: UserId) {
        let mut watchers = self.by_user.entry(user).or_default();
        if !watchers.contains(&server) {
            watchers.push(server);
        }
    }

    /// `server` no longer watches `user`.
    pub(crate) fn unwatch(&self, server: ServerId, user: &str) {
        if let Some(mut watchers) = self.by_user.get_mut(user) {
            watchers.retain(|&watcher| watcher != server);
        }
        self.by_user.remove_if(user, |_, watchers| watchers.is_empty());
    }

    /// The AS watching `user`.
    pub(crate) fn watchers(&self, user: &str) -> Vec<ServerId> {
        self.by_user.get(user).map(|watchers| watchers.clone()).unwrap_or_default()
    }

    /// Holds the answer `offline` to `server`'s watch of `user` until the settle window ends;
    /// false if it already has, and the answer is to be sent now.
    pub(crate) fn hold_offline(&self, server: ServerId, user: UserId) -> bool {
        let mut held = self.held.lock().expect("held answers lock");
        if held.ended {
            return false;
        }
        held.answers.insert((server, user));
        true
    }

    /// Ends the settle window: the held answers, from now on none.
    pub(crate) fn end_holding(&self) -> HashSet<(ServerId, UserId)> {
        let mut held = self.held.lock().expect("held answers lock");
        held.ended = true;
        std::mem::take(&mut held.answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_a_set_per_user_and_leave_no_empty_entries() {
        let watches = Watches::default();
        let bob = UserId::new("bob").unwrap();
        watches.watch(ServerId(1), bob.clone());
        watches.watch(ServerId(1), bob.clone());
        watches.watch(ServerId(2), bob.clone());
        assert_eq!(watches.watchers("bob"), [ServerId(1), ServerId(2)]);
        watches.unwatch(ServerId(1), "bob");
        watches.unwatch(ServerId(3), "carol");
        assert_eq!(watches.watchers("bob"), [ServerId(2)]);
        watches.unwatch(ServerId(2), "bob");
        assert!(watches.by_user.is_empty());
    }

    #[test]
    fn offline_answers_are_held_until_the_window_ends_and_only_then() {
        let watches = Watches::default();
        let bob = UserId::new("bob").unwrap();
        assert!(watches.hold_offline(ServerId(1), bob.clone()));
        assert!(watches.hold_offline(ServerId(1), bob.clone()));
        assert_eq!(watches.end_holding().len(), 1, "held once");
        assert!(!watches.hold_offline(ServerId(2), bob), "after the window, answered at once");
        assert!(watches.end_holding().is_empty());
    }
}

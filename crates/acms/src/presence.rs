//! Presence watches: which AS want to hear when which users come online, go offline or move, and
//! the `Presence` pushes that tell them.
//!
//! Soft state like the directory (DESIGN.md, principle 1): an AS sends its whole watch list again
//! after every (re)connect, and its watches leave with its connection. The directory itself stays
//! the only record of where users are; a watch just names who is told of its changes.
//!
//! In the settle window after a hub's first registration (a start, or a failover to it) the
//! directory is still filling: a watched user nobody has yet may be on a server that has not
//! resynced. The answer `offline` to a watch is then held until the window ends, and sent only if
//! still true, so a user whose server is moving is never reported offline to their watchers.

use std::collections::HashSet;
use std::sync::Mutex;

use acms_protocol::{Control, ServerId, UserId};
use dashmap::DashMap;
use tracing::warn;

use crate::connection::{Shared, control_frame};
use crate::outbox::PushError;
use crate::registry::{Change, Left};

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
    fn watchers(&self, user: &str) -> Vec<ServerId> {
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
    fn end_holding(&self) -> HashSet<(ServerId, UserId)> {
        let mut held = self.held.lock().expect("held answers lock");
        held.ended = true;
        std::mem::take(&mut held.answers)
    }
}

/// Sends the answers `offline` held in the settle window that are still true: the watch is still
/// there and the user is still online nowhere. Those who came online were told by their login.
pub(crate) fn settled(shared: &Shared) {
    for (watcher, user) in shared.watches.end_holding() {
        if !shared.watches.watchers(user.as_str()).contains(&watcher)
            || shared.registry.locate(user.as_str()).is_some()
        {
            continue;
        }
        let frame = control_frame(shared, Control::Presence { user, server: None });
        tell(shared, watcher, frame);
    }
}

/// Queues a presence frame for `watcher`, applying the slow-consumer rule.
fn tell(shared: &Shared, watcher: ServerId, frame: bytes::Bytes) {
    let Some(outbox) = shared.registry.outbox(watcher) else {
        return;
    };
    if let Err(PushError::Full { pending }) = outbox.push(frame) {
        shared.stats.slow_consumer();
        warn!(slow_server = %watcher, pending, "slow consumer: disconnecting it");
        shared.registry.close(watcher);
    }
}

/// Tells the AS watching each changed user where that user is now. A watcher whose queue is
/// full is disconnected (the slow-consumer rule): when it comes back it watches again and hears
/// the current state, so nothing is missed for good.
pub(crate) fn announce(shared: &Shared, changes: impl IntoIterator<Item = Change>) {
    for Change { user, server } in changes {
        let watchers = shared.watches.watchers(user.as_str());
        if watchers.is_empty() {
            continue;
        }
        let frame = control_frame(shared, Control::Presence { user, server });
        for watcher in watchers {
            tell(shared, watcher, frame.clone());
        }
    }
}

/// Tells the AS of users who lost sessions what changed: watchers where the users are now, and
/// the AS of a user's last session that the user has no session elsewhere any more (policy
/// `multi`), so that it stops sending that user's messages through the hub too.
pub(crate) fn left(shared: &Shared, left: Left) {
    announce(shared, left.moved);
    for (user, server) in left.alone {
        tell_shared(shared, server, user, false);
    }
}

/// Tells `server` whether its user `user` has sessions on other AS too (policy `multi`). An AS
/// that cannot be told now is told again after its next snapshot, when it is.
pub(crate) fn tell_shared(shared: &Shared, server: ServerId, user: UserId, elsewhere: bool) {
    if let Some(outbox) = shared.registry.outbox(server) {
        let _ = outbox.push(control_frame(shared, Control::Shared { user, elsewhere }));
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

//! The `Presence` pushes: the AS watching a user (see `watches`) are told where that user is
//! now, and their P2P candidates there, whenever a login, logout, move or new candidates
//! change it.
//!
//! In the settle window after a hub's first registration (a start, or a failover to it) the
//! directory is still filling: a watched user nobody has yet may be on a server that has not
//! resynced. The answer `offline` to a watch is then held until the window ends, and sent only if
//! still true, so a user whose server is moving is never reported offline to their watchers.

use acms_protocol::{Control, ServerId};
use bytes::Bytes;

use crate::registry::{Left, PresenceChange};
use crate::state::HubState;

/// Sends the answers `offline` held in the settle window that are still true: the watch is still
/// there and the user is still online nowhere. Those who came online were told by their login.
pub(crate) fn settled(shared: &HubState) {
    for (watcher, user) in shared.watches.end_holding() {
        if !shared.watches.watchers(user.as_str()).contains(&watcher)
            || shared.registry.locate(user.as_str()).is_some()
        {
            continue;
        }
        let presence = Control::Presence { user, server: None, candidates: Vec::new() };
        let frame = shared.control_frame(presence);
        tell(shared, watcher, frame);
    }
}

/// Queues a presence frame for `watcher`; one whose queue is full is disconnected (the
/// slow-consumer rule, applied by [`HubState::send_frame`]), and one that is away watches again
/// when it comes back.
fn tell(shared: &HubState, watcher: ServerId, frame: Bytes) {
    let _told_or_away = shared.send_frame(watcher, frame);
}

/// Tells the AS watching each changed user where that user is now, with their P2P candidates
/// there. A watcher whose queue is full is disconnected (the slow-consumer rule): when it comes
/// back it watches again and hears the current state, so nothing is missed for good.
pub(crate) fn announce(shared: &HubState, changes: impl IntoIterator<Item = PresenceChange>) {
    for PresenceChange { user, server } in changes {
        let watchers = shared.watches.watchers(user.as_str());
        if watchers.is_empty() {
            continue;
        }
        let candidates =
            server.map(|server| shared.candidates(user.as_str(), server)).unwrap_or_default();
        let frame = shared.control_frame(Control::Presence { user, server, candidates });
        for watcher in watchers {
            tell(shared, watcher, frame.clone());
        }
    }
}

/// Tells the AS of users who lost sessions on `server` what changed (and, on a backplane, the
/// shared directory): watchers where the users are now, and
/// the AS of a user's last session that the user has no session elsewhere any more (policy
/// `multi`), so that it stops sending that user's messages through the hub too.
pub(crate) fn left(shared: &HubState, server: ServerId, left: Left) {
    shared.left_directory(server, &left);
    left_here(shared, left);
}

/// [`left`] without the shared directory: the hub is stopping, and the servers move to another
/// hub with their users.
pub(crate) fn left_here(shared: &HubState, left: Left) {
    // On a backplane, a user offline here may be online on another hub (a login there ended
    // the session here): watchers hear where.
    let moved = left.moved.into_iter().map(|PresenceChange { user, server }| {
        let server = server.or_else(|| shared.locate(user.as_str()));
        PresenceChange { user, server }
    });
    announce(shared, moved);
    for (user, server) in left.alone {
        // Alone on this hub, but maybe not on another's.
        if !shared.has_remote_sessions(user.as_str()) {
            shared.tell_multi_session(server, user, false);
        }
    }
}

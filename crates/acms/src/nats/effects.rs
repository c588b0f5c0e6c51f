//! What the backplane's messages and the directory's changes do to this hub: frames from another
//! hub handed to the servers here, gaps and dead hubs repaired by having the origins send again,
//! servers that (re)registered elsewhere announced to the servers here. Synchronous: the tasks of
//! `nats` call these with what they received.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use acms_protocol::{Control, ServerEpoch, ServerId, UserId};
use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::backplane::{
    Arrival, Backplane, Body, Bucket, Heartbeat, HubId, Message, Place, Session, decode_servers,
    decode_sessions, group_of_key, server_of_key, user_of_key,
};
use crate::outbox::Outbox;
use crate::presence;
use crate::registry::PresenceChange;
use crate::state::HubState;

/// A heartbeat of another hub arrived at `now`.
pub(super) fn heartbeat(shared: &HubState, core: &Backplane, payload: Bytes, now: Instant) {
    let beat = match Heartbeat::decode(payload) {
        Ok(beat) => beat,
        Err(err) => {
            warn!(error = %err, "unreadable heartbeat on the backplane; ignored");
            return;
        }
    };
    if beat.from == core.me {
        return;
    }
    if core.replica.heard(beat.from, now) {
        info!(hub = %beat.from, "hub alive on the backplane");
        core.revived(beat.from);
        hub_up(shared, core, beat.from);
    }
    core.heard_reports(beat.from, beat.total, beat.reports, now);
    if let Some(&(_, last)) = beat.sent.iter().find(|(hub, _)| *hub == core.me)
        && let Some(first_missing) = core.claimed(beat.from, last)
    {
        gap(shared, core, beat.from, first_missing);
    }
}

/// A hub is heard from, for the first time or again after it was counted dead: frames held for
/// its servers meanwhile are sent again by their origins.
fn hub_up(shared: &HubState, core: &Backplane, hub: HubId) {
    let servers = core.replica.servers_on(hub);
    let on_hub: HashSet<ServerId> = servers.iter().map(|(id, _)| *id).collect();
    for (origin, target) in core.held_pairs() {
        if let Some(place) = on_hub.contains(&target).then(|| core.replica.place(target)).flatten()
        {
            let up = ServerEpoch { id: target, epoch: place.epoch };
            let _away =
                shared.send_control(origin, Control::ServerUp { server: up, resend_from: Some(0) });
        }
    }
}

/// One heartbeat tick at `now`: hubs silent past the deadline are dead (their servers are
/// moving: frames for them are held until they register elsewhere); recoveries waiting for
/// `limit` ticks are asked for again; the servers of a hub dead for longer than the reconnect
/// grace, which came back nowhere, leave the directory.
pub(super) fn tick(shared: &HubState, core: &Backplane, now: Instant, limit: u32) {
    for hub in core.replica.expire(now) {
        let servers = core.replica.servers_on(hub).len();
        warn!(%hub, servers, "hub silent past the deadline: dead; its app servers move to other hubs");
        core.hub_dead(hub, now);
    }
    let waiting: HashSet<HubId> = shared
        .registry
        .blocked_origins()
        .into_iter()
        .filter_map(|origin| core.replica.place(origin))
        .map(|place| place.hub)
        .filter(|&hub| hub != core.me && core.replica.is_alive(hub))
        .collect();
    for hub in core.stuck(&waiting, limit) {
        warn!(%hub, "still waiting for a hub's servers to send again; asking again");
        core.send_gap(hub);
    }
    for hub in core.given_up(now, shared.config.reconnect_grace) {
        for (server, place) in core.replica.servers_on(hub) {
            info!(%server, %hub, "app server of a dead hub did not come back in time; its users are offline");
            core.remove_server(server, place);
        }
        core.remove_hub_groups(hub);
    }
}

/// Messages from `hub` were lost from `first_missing` on. Frames of its servers to the servers
/// here are dropped until each origin sends `Resent`, so nothing overtakes what was lost; `hub`
/// is told to have them send again; and the servers here send again what is unacknowledged,
/// since acks for them were lost too.
fn gap(shared: &HubState, core: &Backplane, hub: HubId, first_missing: u64) {
    core.counters.gaps.fetch_add(1, Ordering::Relaxed);
    warn!(%hub, first_missing, "messages from a hub were lost on the backplane; their origins send again");
    let origins = core.replica.servers_on(hub);
    let locals = shared.registry.peers(ServerId::HUB);
    for target in &locals {
        for (origin, _) in &origins {
            shared.registry.block(target.id, *origin);
        }
    }
    core.send_gap(hub);
    for target in locals {
        let _away = shared.send_control(target.id, Control::Resend { from: 0 });
    }
}

/// A message on this hub's subject. Returns the servers here that frames from another hub
/// newly left above their high water: the shell watches each drain, then sends the credit
/// withheld meanwhile ([`Backplane::credits`]).
pub(super) fn message(
    shared: &HubState,
    core: &Backplane,
    payload: Bytes,
) -> Vec<(ServerId, Outbox)> {
    let message = match Message::decode(payload) {
        Ok(message) => message,
        Err(err) => {
            warn!(error = %err, "unreadable message on the backplane; ignored");
            return Vec::new();
        }
    };
    core.counters.received.fetch_add(1, Ordering::Relaxed);
    let from = message.from;
    if message.seq != 0 {
        match core.arrive(from, message.seq) {
            Arrival::InOrder => {}
            Arrival::Gap { first_missing } => gap(shared, core, from, first_missing),
            Arrival::Stale => {
                debug!(%from, seq = message.seq, "stale backplane message dropped");
                return Vec::new();
            }
        }
    }
    match message.body {
        Body::Frames { origin, epoch, counted, frames } => {
            return super::deliver::deliver(shared, core, from, (origin, epoch), &counted, frames);
        }
        Body::Resent { origin, target } => shared.registry.resent(origin, target),
        Body::Gap => resend_to_hub(shared, core, from),
        Body::Credit { target, bytes } => {
            core.windows.credit(target, usize::try_from(bytes).unwrap_or(usize::MAX));
        }
    }
    Vec::new()
}

/// `hub` lost messages of this hub: every server here sends its servers again what they have
/// not acknowledged, after a `Resent` that `hub` waits for.
fn resend_to_hub(shared: &HubState, core: &Backplane, hub: HubId) {
    let targets = core.replica.servers_on(hub);
    info!(%hub, servers = targets.len(), "a hub lost messages of this hub; sending again");
    // The lost frames will never be credited: the windows to that hub's servers start again
    // from nothing rather than stay short of them for good.
    for (target, _) in &targets {
        core.windows.forget(*target);
    }
    for peer in shared.registry.peers(ServerId::HUB) {
        for (target, place) in &targets {
            let up = ServerEpoch { id: *target, epoch: place.epoch };
            let _away = shared
                .send_control(peer.id, Control::ServerUp { server: up, resend_from: Some(0) });
        }
    }
}

/// A change of the shared directory at `revision`: `value` is `None` for a deleted key.
pub(super) fn directory(
    shared: &HubState,
    bucket: Bucket,
    key: &str,
    value: Option<&Bytes>,
    revision: u64,
) {
    let Some(core) = &shared.backplane else { return };
    match bucket {
        Bucket::Users => {
            let Some(user) = user_of_key(key) else {
                warn!(%key, "a key no hub wrote in the users bucket; ignored");
                return;
            };
            let sessions = match value.map(|value| decode_sessions(value)) {
                Some(Ok(sessions)) => sessions,
                Some(Err(err)) => {
                    warn!(%user, error = %err, "unreadable user entry; ignored");
                    return;
                }
                None => Vec::new(),
            };
            let was = if sessions.is_empty() {
                core.replica.remove_user(user.as_str())
            } else {
                core.replica.set_user(user.clone(), sessions.clone(), revision)
            };
            // An entry older than this hub's own claim of the user, which the watch brings
            // next: the login it names lost to this hub's, and kicks nobody here.
            if core.writes.is_stale(bucket, key, revision) {
                debug!(%user, revision, "an entry older than this hub's claim; not judged");
                return;
            }
            user_changed(shared, core, key, user, &was, &sessions);
        }
        Bucket::Groups => {
            let Some((group, hub)) = group_of_key(key) else {
                warn!(%key, "a key no hub wrote in the groups bucket; ignored");
                return;
            };
            if hub == core.me {
                // This hub's own entries follow its groups, recorded as they were owed; what
                // the bucket holds is kept apart, for the reconciliation.
                let servers = value.and_then(|value| decode_servers(value)).unwrap_or_default();
                core.interest.set_stored_here(group, servers);
                return;
            }
            match value.map(|value| decode_servers(value)) {
                Some(Some(servers)) => {
                    // An entry of a hub never heard from (one that died before this hub
                    // started) is taken out once that hub is given up, like its servers.
                    core.suspect(hub, Instant::now());
                    core.interest.set(group, hub, servers);
                }
                Some(None) => warn!(%group, %hub, "unreadable group entry; ignored"),
                None => core.interest.set(group, hub, Vec::new()),
            }
        }
        Bucket::Servers => {
            let Some(server) = server_of_key(key) else {
                warn!(%key, "a key no hub wrote in the servers bucket; ignored");
                return;
            };
            match value.map(|value| serde_json::from_slice::<Place>(value)) {
                Some(Ok(place)) => server_placed(shared, core, server, place),
                Some(Err(err)) => warn!(%server, error = %err, "unreadable server entry; ignored"),
                None => server_removed(shared, core, server),
            }
        }
    }
}

/// The sessions of `user` on this hub's servers, from its registry, with their candidates: what
/// this hub writes into the user's entry. The last login's comes last.
pub(crate) fn sessions_here(shared: &HubState, core: &Backplane, user: &str) -> Vec<Session> {
    let registry = &shared.registry;
    let mut servers = registry.sessions(user);
    if let Some(last) = registry.locate(user)
        && let Some(at) = servers.iter().position(|&server| server == last)
    {
        let last = servers.remove(at);
        servers.push(last);
    }
    servers
        .into_iter()
        .filter(|&server| core.is_mine(server))
        .map(|server| Session { server, candidates: registry.candidates(user, server) })
        .collect()
}

/// `user`'s entry changed from `was` to `now` (empty: deleted). Watchers here of a user with no
/// session here hear where their last login is now, and its candidates, when that changed; the
/// servers here with a session of the user learn whether they have sessions on other hubs too
/// (policy `multi`); under `replace`, a login on another hub ends the session here.
fn user_changed(
    shared: &HubState,
    core: &Backplane,
    key: &str,
    user: UserId,
    was: &[Session],
    now: &[Session],
) {
    let registry = &shared.registry;
    let remote = |session: &&Session| !registry.is_registered(session.server);
    if now.is_empty() {
        // Taken out by another hub that counted this one dead: written again.
        if let Some(owner) = registry.route(user.as_str())
            && registry.is_connected(owner.server)
        {
            info!(%user, server = %owner.server, "this hub's user was taken out of the directory; writing them again");
            core.count_repair("user_online");
            core.user_online(user.as_str(), owner.server);
        }
    }
    if registry.route(user.as_str()).is_none() {
        let before = was.last().filter(remote);
        let after = now.last().filter(remote);
        if before != after {
            // Online, moved or new candidates on another hub, or offline: the watchers here hear
            // it (a login here was announced by its session).
            let server = after.map(|session| session.server);
            presence::announce(shared, [PresenceChange { user: user.clone(), server }]);
            // In the settle window, frames for a user no directory had yet are held at their
            // origin's hub; this login on another hub may be the one they wait for: sent again
            // now, not when the window ends (a fresh sender would stall until then).
            if server.is_some() && before.map(|s| s.server) != server && registry.settling() {
                shared.ask_to_resend(registry.take_unclaimed());
            }
        }
        return;
    }
    if registry.multi() {
        // A session here the entry lacks, with no write of it owed: taken out by another hub
        // that counted this hub dead (a delete, or a dead hub's servers dropped from a list).
        let missing = registry.sessions(user.as_str()).into_iter().find(|&server| {
            core.is_mine(server)
                && registry.is_connected(server)
                && !now.iter().any(|session| session.server == server)
        });
        if let Some(server) = missing
            && !now.is_empty()
            && !core.writes.is_owed(Bucket::Users, key)
        {
            info!(%user, %server, "this hub's session is missing from the user's entry; writing it again");
            core.count_repair("user_online");
            core.user_online(user.as_str(), server);
        }
        let had = was.iter().any(|session| remote(&session));
        let has = now.iter().any(|session| remote(&session));
        if had != has {
            let local = registry.sessions(user.as_str());
            // With two sessions here, the servers here stay multi-session either way.
            if has || local.len() == 1 {
                for server in local {
                    shared.tell_multi_session(server, user.clone(), has);
                }
            }
        }
        return;
    }
    if let Some(last) = now.last() {
        user_placed(shared, core, key, user, last.server);
    }
}

/// `user` logged in on `server` by the shared directory. Under `replace`, a session of theirs
/// on a server of this hub, whose own login is settled (no write of it owed), is older: it ends.
fn user_placed(shared: &HubState, core: &Backplane, key: &str, user: UserId, server: ServerId) {
    if shared.registry.multi() || shared.registry.is_registered(server) {
        return;
    }
    let Some(owner) = shared.registry.route(user.as_str()) else { return };
    if core.writes.is_owed(Bucket::Users, key) {
        // This hub's login of the user is racing: its write decides (`login_lost`).
        return;
    }
    info!(%user, from = %owner.server, to = %server, "user logged in on another hub; kicking the older session");
    let reason = format!("{user} logged in on server {server}");
    let _told_now_or_at_its_snapshot = shared.kick(owner.server, user, reason);
}

/// This hub's login of the user of `key` on the server `ours` was written at `revision`. If the
/// replica holds a newer entry without it, of another hub's server, that login is newer: the one
/// here ends.
pub(super) fn login_settled(
    shared: &HubState,
    core: &Backplane,
    key: &str,
    ours: ServerId,
    revision: u64,
) {
    let Some(user) = user_of_key(key) else { return };
    let (Some(theirs), Some(latest)) =
        (core.replica.user(user.as_str()), core.replica.user_revision(user.as_str()))
    else {
        return;
    };
    if latest > revision
        && !core.replica.sessions(user.as_str()).contains(&ours)
        && !core.is_mine(theirs)
    {
        login_lost(shared, key, ours, theirs);
    }
}

/// This hub's login of the user of `key` on the server `ours` lost a race with a login on the
/// server `theirs` on another hub: the session here ends, so exactly one survives.
pub(super) fn login_lost(shared: &HubState, key: &str, ours: ServerId, theirs: ServerId) {
    let Some(user) = user_of_key(key) else { return };
    if shared.registry.route(user.as_str()).map(|owner| owner.server) != Some(ours) {
        return;
    }
    info!(%user, here = %ours, winner = %theirs, "a login on another hub won the race; kicking this session");
    let reason = format!("{user} logged in on server {theirs}");
    let _told_now_or_at_its_snapshot = shared.kick(ours, user, reason);
}

/// `server` left the directory. One still connected here was taken out by another hub that
/// counted this one dead: it is registered again. Any other has left the cluster: the servers
/// here stop waiting for it, and send again what they have not had acknowledged.
fn server_removed(shared: &HubState, core: &Backplane, server: ServerId) {
    let removed = core.replica.remove_place(server);
    core.windows.forget(server);
    if shared.registry.is_connected(server) {
        if removed.is_some_and(|place| place.hub == core.me) {
            warn!(%server, "this hub's app server was taken out of the directory; registering it again");
            core.count_repair("server");
            let epoch = shared.registry.epoch(server).unwrap_or_default();
            let client_addr = shared
                .registry
                .servers()
                .into_iter()
                .find(|info| info.id == server)
                .map(|info| info.client_addr)
                .unwrap_or_default();
            core.server_registered(server, epoch, client_addr);
        }
        return;
    }
    if shared.registry.is_registered(server) {
        return;
    }
    shared.registry.unblock_origin(server);
    shared.server_down(server);
    for (origin, target) in core.held_pairs() {
        if target == server {
            core.release(origin, target);
        }
    }
    // Frames for it may have died with its hub or its connection, held here or lost on the way:
    // every server here sends again what is unacknowledged, which now finds its recipient
    // elsewhere or comes back undeliverable.
    for peer in shared.registry.peers(ServerId::HUB) {
        let _closing = shared.send_control(peer.id, Control::Resend { from: 0 });
    }
}

/// `server` is registered at `place`. If that is another hub and a new registration, the
/// servers here send it again what it did not acknowledge (its hub drops their frames to it
/// until their `Resent`), and a record of it here, away, is forgotten: it moved.
fn server_placed(shared: &HubState, core: &Backplane, server: ServerId, place: Place) {
    let previous = core.replica.set_place(server, place.clone());
    if place.hub == core.me || previous.as_ref() == Some(&place) {
        return;
    }
    // Frames counted against its window on its old hub will not be credited from there.
    core.windows.forget(server);
    core.suspect(place.hub, Instant::now());
    info!(%server, hub = %place.hub, "app server registered on another hub");
    if shared.registry.is_registered(server) {
        match shared.registry.forget_moved(server) {
            Some(_) => core.moved(server),
            None => {
                warn!(%server, hub = %place.hub, "app server id registered on two hubs at once")
            }
        }
    }
    // It sends everything not acknowledged after registering: nobody waits for its `Resent`.
    shared.registry.unblock_origin(server);
    core.release_origin(server);
    core.tell_epoch(server, place.epoch, place.hub);
    let up = ServerEpoch { id: server, epoch: place.epoch };
    let frame = shared.control_frame(Control::ServerUp { server: up, resend_from: Some(0) });
    for peer in shared.registry.peers(server) {
        let _closing = shared.send_frame(peer.id, frame.clone());
    }
}

//! The session core: the hub's record of one registered app server (its users, groups and
//! watches, its digest, whether it is leaving) and the handlers of its control messages.
//! Synchronous, with no socket and no clock of its own: it is fed decoded frames with the instant
//! they were read, answers its server on the server's own queue, and reaches the other servers
//! through [`HubState`] (kicks, presence, multi-session notices, resends), where the slow-consumer
//! rule is applied.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use acms_protocol::{
    Control, ErrorCode, FrameKind, GroupId, RawFrame, ServerId, UserDigest, UserId,
};
use tracing::{debug, info, warn};

use super::{Close, OwnQueue};
use crate::keepalive::Silence;
use crate::presence;
use crate::registry::{Departure, Placed, PresenceChange};
use crate::state::HubState;

/// The hub's record of one registered app server.
pub(super) struct Session {
    shared: Arc<HubState>,
    server: ServerId,
    /// Its own queue, for the answers to it.
    own: OwnQueue,
    /// The users this AS has online, so they leave the directory with it: the hub's record of
    /// what the AS claims. A user who moved to another AS since stays in it while this AS still
    /// claims them (the directory lists them under the other AS only), so the digests agree.
    users: HashSet<UserId>,
    /// The digest of `users`, kept in step with it, compared with the AS's `Digest`.
    digest: UserDigest,
    /// The record being replaced, after a `Resync` and until the snapshot that answers it is
    /// done; `Digest`s are not compared meanwhile, as those sent before the AS saw the `Resync`
    /// are still on their way.
    resyncing: Option<HashSet<UserId>>,
    /// Users of this AS's previous connection, kept in the directory until its snapshot is done.
    stale_users: HashSet<UserId>,
    /// The AS said `Bye`: it leaves for good, with no grace to come back.
    leaving: bool,
    /// The users this AS watches, so its watches leave with it.
    watching: HashSet<UserId>,
    /// The groups named since registration, or since a `Resync`, until the snapshot is done:
    /// the AS's groups not among them are then gone.
    snapshot_groups: Option<HashSet<GroupId>>,
    /// When the AS, which pings when idle, is taken for dead if it sends nothing.
    silence: Silence,
}

impl Session {
    /// The session of `server`, registered at `now`, answering on `own`; `stale_users` are the
    /// users its previous connection had, kept until its snapshot is done.
    pub(super) fn new(
        shared: Arc<HubState>,
        server: ServerId,
        own: OwnQueue,
        stale_users: HashSet<UserId>,
        now: Instant,
    ) -> Self {
        let silence = Silence::new(shared.config.keepalive_timeout, now);
        Self {
            shared,
            server,
            own,
            users: HashSet::new(),
            digest: UserDigest::default(),
            resyncing: None,
            stale_users,
            leaving: false,
            watching: HashSet::new(),
            snapshot_groups: Some(HashSet::new()),
            silence,
        }
    }

    /// The server this session is of.
    pub(super) fn server(&self) -> ServerId {
        self.server
    }

    /// The server's own queue.
    pub(super) fn own(&self) -> &OwnQueue {
        &self.own
    }

    /// How many users the hub records on this server.
    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The reader starts waiting for this server's bytes at `now`: the keepalive deadline runs
    /// from here.
    pub(super) fn handle_listen(&mut self, now: Instant) {
        self.silence.handle_listen(now);
    }

    /// When this server is taken for dead if it sends nothing.
    pub(super) fn silence(&self) -> &Silence {
        &self.silence
    }

    /// Handles one frame the relay did not route, read at `now`: a control message.
    pub(super) fn handle_frame(&mut self, raw: RawFrame, now: Instant) -> Result<(), Close> {
        match raw.kind()? {
            FrameKind::Data(_) | FrameKind::Ack => Err(Close::refused(
                ErrorCode::Malformed,
                "only unicast, group, broadcast, server and ack frames go from an app server to \
                 the hub",
            )),
            FrameKind::Control => self.handle_control(Control::decode(&raw.body()[1..])?, now),
        }
    }

    /// Handles one control message of the server, received at `now`.
    pub(super) fn handle_control(&mut self, control: Control, now: Instant) -> Result<(), Close> {
        match control {
            Control::Login { users } => self.handle_login(users),
            Control::Logout { users } => {
                self.handle_logout(&users);
                Ok(())
            }
            Control::Ping { token } => self.own.send(Control::Pong { token }),
            Control::Pong { .. } => Ok(()),
            Control::Join { groups } => self.handle_join(groups),
            Control::Leave { groups } => {
                self.handle_leave(&groups);
                Ok(())
            }
            Control::SnapshotDone => {
                self.handle_snapshot_done();
                if let Some(backplane) = &self.shared.backplane {
                    backplane.snapshot_finished(self.server);
                }
                // This server's users are in the directory now: frames held for them as
                // unclaimed are sent again at once, not at the end of the settle window.
                // After a failover every server registers in it, so this is what lets traffic
                // flow within milliseconds rather than after the whole window.
                self.shared.ask_to_resend(self.shared.registry.take_unclaimed());
                Ok(())
            }
            Control::Digest(digest) => self.handle_digest(digest),
            Control::Load(load) => {
                self.shared.registry.report_load(self.server, load);
                Ok(())
            }
            Control::Resent { server: target } => {
                self.shared.registry.resent(self.server, target);
                if let Some(backplane) = &self.shared.backplane {
                    let here = self.shared.registry.is_registered(target);
                    backplane.resent(self.server, target, here);
                }
                Ok(())
            }
            Control::Bye => {
                self.leaving = true;
                Ok(())
            }
            Control::Locate { token, user } => {
                let (server, candidates) = match self.shared.reach(user.as_str()) {
                    Some((server, candidates)) => (Some(server), candidates),
                    None => (None, Vec::new()),
                };
                self.own.send(Control::Located { token, server, candidates })
            }
            Control::Candidates { user, candidates } => {
                self.handle_candidates(user, candidates);
                Ok(())
            }
            Control::Watch { users } => self.handle_watch(users, now),
            Control::Unwatch { users } => {
                for user in users {
                    self.shared.watches.unwatch(self.server, user.as_str());
                    self.watching.remove(&user);
                }
                Ok(())
            }
            Control::Error { code, message } => {
                warn!(?code, %message, "app server reported an error");
                Err(Close::PeerClosed)
            }
            Control::Hello(_)
            | Control::Welcome(_)
            | Control::Challenge(_)
            | Control::Auth { .. }
            | Control::PeerStatus
            | Control::PeerHello(_)
            | Control::HubStatus(_) => {
                Err(Close::refused(ErrorCode::Malformed, "handshake message after the handshake"))
            }
            Control::Servers { .. }
            | Control::ServerUp { .. }
            | Control::Resend { .. }
            | Control::Resync
            | Control::Located { .. }
            | Control::Presence { .. }
            | Control::Kick { .. }
            | Control::Copies { .. }
            | Control::ServerDown { .. }
            | Control::MultiSession { .. }
            | Control::Drain { .. } => Err(Close::refused(
                ErrorCode::Malformed,
                "only the hub sends server announcements, resync requests, presence, kicks, \
                 copy lists, shared sessions and drains",
            )),
        }
    }

    /// Puts users in the directory. One that would take this AS past `max_users_per_server`
    /// closes the connection: a well-behaved AS never sends it, as it knows the limit from
    /// `Welcome` and refuses such a login itself.
    ///
    /// While a resync runs, a user the replaced record already had is only claimed back if nobody
    /// else has them: they may have moved to another AS since, and a resync must not move them
    /// back (the AS keeps claiming them, and its record keeps them, until it logs them out).
    fn handle_login(&mut self, users: Vec<UserId>) -> Result<(), Close> {
        let server = self.server;
        let limit = self.shared.config.max_users_per_server;
        for user in users {
            if self.users.len() >= limit && !self.users.contains(&user) {
                return Err(Close::refused(
                    ErrorCode::TooManyUsers,
                    format!("a login past this hub's limit of {limit} users per server"),
                ));
            }
            // A user the AS had before (its last connection, or the record a resync replaces)
            // is confirmed, not logged in anew: they may have logged in elsewhere since.
            let confirm = self.stale_users.contains(&user)
                || self.resyncing.as_ref().is_some_and(|old| old.contains(&user));
            let registry = &self.shared.registry;
            // Under `replace` on a backplane, a login racing one on another hub: one wins.
            let racing = self.shared.backplane.as_ref().filter(|_| !registry.multi());
            let expected = racing.and_then(|backplane| backplane.login_begins(user.as_str()));
            let placed = if confirm {
                registry.claim(server, user.clone())
            } else {
                registry.login(server, user.clone())
            };
            let new_place = matches!(placed, Placed::Online | Placed::Moved(_) | Placed::Joined(_));
            if let Some(backplane) = racing {
                let placed = new_place.then_some(server);
                backplane.login_placed(user.as_str(), placed, expected, !confirm);
            } else if let (Some(backplane), true) = (&self.shared.backplane, new_place) {
                backplane.user_online(user.as_str(), server);
            }
            match placed {
                Placed::Already => {}
                Placed::Online => {
                    // Policy `multi` on a backplane: alone here, maybe not on other hubs.
                    if registry.multi()
                        && self.snapshot_groups.is_none()
                        && self.shared.has_remote_sessions(user.as_str())
                    {
                        self.shared.tell_multi_session(server, user.clone(), true);
                    }
                    let change = PresenceChange { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Joined(alone_until_now) => {
                    // Both sides learn the user is multi-session; in a snapshot, this AS hears it when
                    // the snapshot is done, with its other multi-session users.
                    if let Some(other) = alone_until_now {
                        self.shared.tell_multi_session(other, user.clone(), true);
                    }
                    if self.snapshot_groups.is_none() {
                        self.shared.tell_multi_session(server, user.clone(), true);
                    }
                    let change = PresenceChange { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Moved(previous) => {
                    info!(%user, from = %previous, "user moved to this server; kicking the older session");
                    self.kick(previous, &user, server);
                    let change = PresenceChange { user: user.clone(), server: Some(server) };
                    presence::announce(&self.shared, [change]);
                }
                Placed::Lost(owner) => {
                    info!(%user, %owner, "user logged in elsewhere meanwhile; kicking this session");
                    self.kick(server, &user, owner);
                }
            }
            if self.users.insert(user.clone()) {
                self.digest.insert(user.as_str());
            }
        }
        Ok(())
    }

    fn handle_logout(&mut self, users: &[UserId]) {
        let server = self.server;
        for user in users {
            let recorded = self.users.remove(user);
            if recorded {
                self.digest.remove(user.as_str());
            }
            let replaced = self.resyncing.as_mut().is_some_and(|old| old.remove(user));
            if recorded || replaced {
                let left = self.shared.registry.logout(server, user.as_str());
                presence::left(&self.shared, server, left);
            }
        }
    }

    /// Records the groups this AS now has members of. One that would take it past
    /// `max_groups_per_server` closes the connection: a well-behaved AS never sends it, as it
    /// knows the limit from `Welcome` and refuses such a join itself.
    ///
    /// While a snapshot replaces the groups of the last connection, the limit counts the groups
    /// named since it began, so the old set and the new one together stay under twice the limit
    /// until the snapshot is done and the old set goes.
    fn handle_join(&mut self, groups: Vec<GroupId>) -> Result<(), Close> {
        let server = self.server;
        let limit = self.shared.config.max_groups_per_server;
        let refused = || {
            Close::refused(
                ErrorCode::TooManyGroups,
                format!("a join past this hub's limit of {limit} groups per server"),
            )
        };
        for group in groups {
            match self.snapshot_groups.as_mut() {
                Some(kept) => {
                    if kept.len() >= limit && !kept.contains(&group) {
                        return Err(refused());
                    }
                    kept.insert(group.clone());
                    self.shared.groups.join(server, group);
                }
                None => {
                    if !self.shared.groups.join_within(server, group, limit) {
                        return Err(refused());
                    }
                }
            }
        }
        Ok(())
    }

    /// Records the groups this AS no longer has members of.
    fn handle_leave(&mut self, groups: &[GroupId]) {
        for group in groups {
            if let Some(kept) = self.snapshot_groups.as_mut() {
                kept.remove(group);
            }
            self.shared.groups.leave(self.server, group.as_str());
        }
    }

    /// Ends a snapshot: users of the previous connection, or of the record a resync replaced,
    /// that the AS did not send again are offline.
    fn handle_snapshot_done(&mut self) {
        let server = self.server;
        if let Some(kept) = self.snapshot_groups.take() {
            self.shared.groups.retain(server, &kept);
        }
        let mut gone = std::mem::take(&mut self.stale_users);
        if let Some(old) = self.resyncing.take() {
            gone.extend(old);
            info!(users = self.users.len(), "resync done");
        }
        for user in gone {
            if !self.users.contains(&user) {
                let left = self.shared.registry.logout(server, user.as_str());
                presence::left(&self.shared, server, left);
            }
        }
        // The AS forgot which of its users are multi-session when it reconnected: say it again, now that
        // the snapshot has put each of its sessions back (policy `multi` only).
        if self.shared.registry.multi() {
            for user in &self.users {
                let sessions = self.shared.registry.sessions(user.as_str());
                let elsewhere =
                    sessions.len() > 1 || self.shared.has_remote_sessions(user.as_str());
                if elsewhere && sessions.contains(&server) {
                    self.shared.tell_multi_session(server, user.clone(), true);
                }
            }
        }
    }

    /// Keeps the P2P candidates of this server's session of `user`, and tells the servers
    /// watching the user when that changes their place as reported. Candidates for a user this
    /// server does not have (a logout or a move overtook them) are ignored: they would name a
    /// session that is gone.
    fn handle_candidates(&mut self, user: UserId, candidates: Vec<acms_protocol::Candidate>) {
        let server = self.server;
        if !self.users.contains(&user) {
            debug!(%user, "candidates for a user not online on this server; ignored");
            return;
        }
        let set = self.shared.registry.set_candidates(server, &user, candidates);
        if let (Some(_), Some(backplane)) = (set, &self.shared.backplane) {
            // The other hubs find them in the shared directory (written only if they changed).
            backplane.user_online(user.as_str(), server);
        }
        match set {
            None => debug!(%user, "candidates for a session no longer in the directory; ignored"),
            Some(false) => {}
            Some(true) => {
                let change = PresenceChange { user, server: Some(server) };
                presence::announce(&self.shared, [change]);
            }
        }
    }

    /// Tells `target` to end its session of `user`, who is now on `winner` (policy `replace`).
    /// If `target` cannot be told now (its connection is closing), its snapshot will claim the
    /// user when it comes back, lose, and be told then.
    fn kick(&self, target: ServerId, user: &UserId, winner: ServerId) {
        let reason = format!("{user} logged in on server {winner}");
        let _told_now_or_at_its_snapshot = self.shared.kick(target, user.clone(), reason);
    }

    /// Adds watches and answers each with the user's current place, so the AS starts right.
    /// The watch list of one AS is bounded like its users, by `max_users_per_server`.
    fn handle_watch(&mut self, users: Vec<UserId>, now: Instant) -> Result<(), Close> {
        let server = self.server;
        let limit = self.shared.config.max_users_per_server;
        for user in users {
            if self.watching.len() >= limit && !self.watching.contains(&user) {
                return Err(Close::refused(
                    ErrorCode::TooManyUsers,
                    format!("a watch past this hub's limit of {limit} watched users per server"),
                ));
            }
            self.shared.watches.watch(server, user.clone());
            self.watching.insert(user.clone());
            let reach = self.shared.reach(user.as_str());
            // Offline in the settle window may only mean "not resynced yet": held until it ends.
            if reach.is_none()
                && self.shared.registry.settling_at(now)
                && self.shared.watches.hold_offline(server, user.clone())
            {
                continue;
            }
            let (located, candidates) = match reach {
                Some((located, candidates)) => (Some(located), candidates),
                None => (None, Vec::new()),
            };
            self.own.send(Control::Presence { user, server: located, candidates })?;
        }
        Ok(())
    }

    /// Compares the AS's digest of its users with the hub's record; on a difference, asks the AS
    /// for its whole set again and starts a new record, keeping the old one until the snapshot is
    /// done so that users present in both never leave the directory.
    fn handle_digest(&mut self, theirs: UserDigest) -> Result<(), Close> {
        if self.resyncing.is_some() {
            return Ok(());
        }
        self.shared.stats.digest();
        if theirs == self.digest {
            return Ok(());
        }
        self.shared.stats.resync();
        warn!(
            users = self.digest.count,
            claimed = theirs.count,
            "the hub's record of this app server's users has drifted from its digest; resyncing"
        );
        self.resyncing = Some(std::mem::take(&mut self.users));
        self.snapshot_groups = Some(HashSet::new());
        self.digest = UserDigest::default();
        self.own.send(Control::Resync)
    }

    /// The connection ended: takes the AS out of the cluster, at once if it said `Bye` or the
    /// hub is stopping, otherwise after a grace in which it may come back. Returns the server
    /// and its departure number in that case, for the shell to end the grace.
    pub(super) fn handle_close(mut self, hub_stopping: bool) -> Option<(ServerId, u64)> {
        let server = self.server;
        let grace = !self.leaving && !hub_stopping;
        for user in std::mem::take(&mut self.watching) {
            self.shared.watches.unwatch(server, user.as_str());
        }
        if let Some(backplane) = &self.shared.backplane {
            // Gone before its snapshot was done: nothing waits for it any more.
            backplane.snapshot_done(server);
        }
        let mut users = std::mem::take(&mut self.users);
        users.extend(std::mem::take(&mut self.stale_users));
        users.extend(self.resyncing.take().unwrap_or_default());
        match self.shared.registry.depart(server, users, grace) {
            Departure::Away(departure) => Some((server, departure)),
            Departure::Gone { left, forwarded } => {
                if self.leaving {
                    presence::left(&self.shared, server, left);
                    if let Some(backplane) = &self.shared.backplane {
                        backplane.server_gone(server);
                    }
                } else {
                    presence::left_here(&self.shared, left);
                }
                self.shared.server_down(server);
                // An AS that said `Bye` may have left frames unread in its queue or socket: their
                // origins send them again, to reach their recipients elsewhere or come back
                // undeliverable. Not on a hub shutdown: the origins send everything again to the
                // next hub, where the recipients' servers will be back.
                if self.leaving {
                    self.shared.ask_to_resend(forwarded);
                }
                None
            }
        }
    }
}

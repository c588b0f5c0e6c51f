//! The user directory: which AS each user is online on, under the login-conflict policy, and the
//! sessions of users online on several (policy `multi`). Part of the [`Registry`], whose maps it
//! shares; every relayed frame costs one lookup here ([`Registry::route`]).

use acms_protocol::{ServerId, UserId};
use dashmap::mapref::entry::Entry;
use std::collections::HashMap;

use super::Registry;
use crate::config::LoginConflict;

/// Where a user is online: the directory's value, copied out on every relayed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The AS the user logged in on last.
    pub(crate) server: ServerId,
    /// The user also has sessions on other AS (policy `multi`): see [`Registry::sessions`].
    pub(crate) multi: bool,
}

/// What a login or claim did to the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    /// The user was already online on this AS.
    Already,
    /// The user was online nowhere and now is on this AS.
    Online,
    /// Policy `replace`: the user moved here from this AS, whose session must end.
    Moved(ServerId),
    /// Policy `multi`: the user keeps their other sessions and has one here too. With the AS
    /// that had their only session until now, which learns that the user is multi-session.
    Joined(Option<ServerId>),
    /// A claim (resync, or snapshot after a reconnect) lost to a newer login on this AS: policy
    /// `replace` keeps the user there, and the claiming AS's session must end.
    Lost(ServerId),
}

/// A user whose place in the directory changed, for the AS that watch them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PresenceChange {
    pub(crate) user: UserId,
    /// Where they are now; `None` when online nowhere.
    pub(crate) server: Option<ServerId>,
}

/// What taking sessions off the directory changed, for the AS to be told.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Left {
    /// Users whose place changed, for the AS that watch them.
    pub(crate) moved: Vec<PresenceChange>,
    /// Users left with one session after having several (policy `multi`), and its AS: that AS
    /// is told that they have no session elsewhere any more.
    pub(crate) alone: Vec<(UserId, ServerId)>,
}

impl Left {
    pub(super) fn extend(&mut self, other: Left) {
        self.moved.extend(other.moved);
        self.alone.extend(other.alone);
    }
}

impl Registry {
    /// Records `user` as online on `server`: a new login. A user online on another AS moves here
    /// (policy `replace`) or keeps both sessions (`multi`).
    pub(crate) fn login(&self, server: ServerId, user: UserId) -> Placed {
        self.place(server, user, false)
    }

    /// Records `user` as online on `server` unless another AS has them: a resync, or the snapshot
    /// of an AS back from a broken connection, confirms the users the AS had, and must not take
    /// back one who logged in elsewhere since (policy `replace`; `multi` adds a session).
    pub(crate) fn claim(&self, server: ServerId, user: UserId) -> Placed {
        self.place(server, user, true)
    }

    fn place(&self, server: ServerId, user: UserId, claim: bool) -> Placed {
        let mut slot = match self.users.entry(user) {
            Entry::Vacant(slot) => {
                slot.insert(Owner { server, multi: false });
                return Placed::Online;
            }
            Entry::Occupied(slot) if slot.get().server == server => return Placed::Already,
            Entry::Occupied(slot) => slot,
        };
        let owner = *slot.get();
        match self.conflict {
            LoginConflict::Replace if claim => Placed::Lost(owner.server),
            LoginConflict::Replace => {
                slot.insert(Owner { server, multi: false });
                Placed::Moved(owner.server)
            }
            LoginConflict::Multi => {
                // Under the user's entry: nobody else changes their sessions meanwhile.
                let mut sessions =
                    self.sessions.entry(slot.key().clone()).or_insert_with(|| vec![owner.server]);
                if sessions.contains(&server) {
                    return Placed::Already;
                }
                let alone_until_now = (sessions.len() == 1).then_some(owner.server);
                sessions.push(server);
                slot.insert(Owner { server, multi: true });
                Placed::Joined(alone_until_now)
            }
        }
    }

    /// Takes `user`'s session on `server` off the directory: a user who moved to another AS
    /// meanwhile stays where they are. Returns where the user is now if that changed, and the
    /// AS of their last session if they had several until now.
    pub(crate) fn logout(&self, server: ServerId, user: &str) -> Left {
        // Whatever became of the user, this session's candidates go with it.
        self.forget_candidates(server, user);
        let mut changed = Left::default();
        let removed = self.users.remove_if(user, |_, owner| owner.server == server && !owner.multi);
        if let Some((user, _)) = removed {
            changed.moved.push(PresenceChange { user, server: None });
            return changed;
        }
        let Some(mut slot) = self.users.get_mut(user) else { return changed };
        if !slot.multi {
            return changed;
        }
        let Entry::Occupied(mut sessions) = self.sessions.entry(slot.key().clone()) else {
            return changed;
        };
        let before = sessions.get().len();
        sessions.get_mut().retain(|&other| other != server);
        let left = sessions.get();
        let Some(&primary) = left.last() else { return changed };
        if left.len() == before {
            return changed;
        }
        let multi = left.len() > 1;
        if !multi {
            sessions.remove();
            changed.alone.push((slot.key().clone(), primary));
        }
        if slot.server != primary {
            changed.moved.push(PresenceChange { user: slot.key().clone(), server: Some(primary) });
        }
        *slot = Owner { server: primary, multi };
        changed
    }

    /// Whether logins may be shared between AS (policy `multi`).
    pub(crate) fn multi(&self) -> bool {
        self.conflict == LoginConflict::Multi
    }

    /// Where a frame for `user` goes; one lookup, on every relayed frame.
    #[inline]
    pub(crate) fn route(&self, user: &str) -> Option<Owner> {
        self.users.get(user).map(|owner| *owner)
    }

    /// Every AS `user` is online on (policy `multi`), the last login last.
    pub fn sessions(&self, user: &str) -> Vec<ServerId> {
        let Some(owner) = self.users.get(user) else {
            return Vec::new();
        };
        if !owner.multi {
            return vec![owner.server];
        }
        self.sessions.get(user).map(|sessions| sessions.clone()).unwrap_or_default()
    }

    /// The AS `user` is online on (with several, the one they logged in on last), if any.
    pub fn locate(&self, user: &str) -> Option<ServerId> {
        self.users.get(user).map(|owner| owner.server)
    }

    /// How many users the directory lists on each server (their last login, under `multi`).
    pub fn user_counts(&self) -> HashMap<ServerId, usize> {
        let mut counts = HashMap::new();
        for owner in self.users.iter() {
            *counts.entry(owner.server).or_default() += 1;
        }
        counts
    }

    /// Up to `limit` online users with ids after `after`, in id order, with the server they
    /// logged in on last; only those on `server` if given. One pass over the directory, keeping
    /// the `limit` smallest ids.
    pub fn users_page(
        &self,
        server: Option<ServerId>,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(UserId, ServerId)> {
        let mut page = std::collections::BTreeMap::new();
        for entry in self.users.iter() {
            let owner = *entry.value();
            if server.is_some_and(|server| server != owner.server)
                || after.is_some_and(|after| entry.key().as_str() <= after)
            {
                continue;
            }
            if page.len() == limit {
                match page.last_key_value() {
                    Some((last, _)) if entry.key() < last => {
                        page.pop_last();
                    }
                    _ => continue,
                }
            }
            page.insert(entry.key().clone(), owner.server);
        }
        page.into_iter().collect()
    }

    /// Every user online here with the server they logged in on last: one pass, in no order.
    pub(crate) fn sessions_here(&self) -> Vec<(UserId, ServerId)> {
        self.users.iter().map(|entry| (entry.key().clone(), entry.value().server)).collect()
    }

    /// Number of users online in the cluster.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

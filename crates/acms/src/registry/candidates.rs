//! The P2P candidates of online users' sessions: addresses their clients reported through their
//! app servers. The hub keeps them beside the directory and hands them out with a user's place
//! (`Located`, `Presence`); it never uses them itself. Per session, so under policy `multi` each
//! server's client has its own, and a user's place names the candidates of the server it names.
//! Bounded: at most [`acms_protocol::MAX_CANDIDATES`] per session (the decoder refuses more), one
//! entry per session, dropped when the session leaves the directory ([`Registry::logout`]).

use acms_protocol::{Candidate, ServerId, UserId};

use super::Registry;

impl Registry {
    /// Sets the candidates of `user`'s session on `server`, replacing earlier ones; empty clears
    /// them. `None` when the directory has no session of the user there (a logout or a move
    /// overtook the message): nothing is kept. Otherwise whether the user's place as `Located`
    /// and `Presence` report it changed: the session is their last login's and the candidates
    /// differ.
    pub(crate) fn set_candidates(
        &self,
        server: ServerId,
        user: &UserId,
        candidates: Vec<Candidate>,
    ) -> Option<bool> {
        let owner = self.route(user.as_str())?;
        if owner.server != server
            && !(owner.multi && self.sessions(user.as_str()).contains(&server))
        {
            return None;
        }
        let mut changed = true;
        if candidates.is_empty() {
            if let Some(mut sessions) = self.candidates.get_mut(user.as_str()) {
                let before = sessions.len();
                sessions.retain(|(session, _)| *session != server);
                changed = sessions.len() != before;
            } else {
                changed = false;
            }
            self.candidates.remove_if(user.as_str(), |_, sessions| sessions.is_empty());
        } else {
            let mut sessions = self.candidates.entry(user.clone()).or_default();
            match sessions.iter_mut().find(|(session, _)| *session == server) {
                Some((_, old)) if *old == candidates => changed = false,
                Some((_, old)) => *old = candidates,
                None => sessions.push((server, candidates)),
            }
        }
        Some(changed && owner.server == server)
    }

    /// The candidates of `user`'s session on `server`; empty when it set none.
    pub(crate) fn candidates(&self, user: &str, server: ServerId) -> Vec<Candidate> {
        let Some(sessions) = self.candidates.get(user) else {
            return Vec::new();
        };
        sessions
            .iter()
            .find(|(session, _)| *session == server)
            .map(|(_, candidates)| candidates.clone())
            .unwrap_or_default()
    }

    /// Where `user` is online (with several sessions, the last login's server) and the
    /// candidates of that session, or `None` when online nowhere.
    pub fn reach(&self, user: &str) -> Option<(ServerId, Vec<Candidate>)> {
        let server = self.locate(user)?;
        Some((server, self.candidates(user, server)))
    }

    /// Drops the candidates of `user`'s session on `server`: it left the directory.
    pub(super) fn forget_candidates(&self, server: ServerId, user: &str) {
        if let Some(mut sessions) = self.candidates.get_mut(user) {
            sessions.retain(|(session, _)| *session != server);
        }
        self.candidates.remove_if(user, |_, sessions| sessions.is_empty());
    }

    /// How many sessions have candidates, for tests and monitoring.
    pub fn sessions_with_candidates(&self) -> usize {
        self.candidates.iter().map(|sessions| sessions.len()).sum()
    }
}

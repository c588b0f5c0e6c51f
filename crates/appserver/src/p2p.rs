//! What an app server needs to let two of the cluster's clients talk directly: P2P candidates in
//! the directory ([`Cluster::set_candidates`], [`Cluster::reach`], and the candidates in
//! [`Event::Presence`]), and an invitation from one user's server to another's
//! ([`Cluster::invite`], [`Event::Invitation`]). The library never uses the candidates itself;
//! punching and the direct channel are the app's (the demo client's) business.
//!
//! Candidates are soft state like the user set: kept in `LocalUsers`, sent to the hub when set
//! and again with every snapshot, dropped at logout. An invitation is a data frame of its own
//! kind, so it is numbered, acknowledged, sent again and de-duplicated like a message.

use acms_protocol::{Candidate, CandidateError, MAX_CANDIDATES, UserId};
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::cluster::{Cluster, ClusterError, Invitation, Wait};
use crate::events::Reach;
use crate::link::Command;
use crate::users::NotHere;
#[cfg(doc)]
use crate::{Event, UndeliverableReason};

impl Cluster {
    /// Sets the P2P candidates of `user`, a user online on this server (the addresses their
    /// client reported: its own interfaces, its reflexive address), replacing any earlier
    /// ones; an empty list clears them. The hub keeps them while the user is online here, hands
    /// them out with the user's place ([`Cluster::reach`], [`Event::Presence`] to the servers
    /// watching the user, which hear of the change) and never uses them itself. Kept here too,
    /// so every hub this server connects to hears them again with its user set; dropped at
    /// logout.
    ///
    /// Refused, with nothing sent, for a user not online here ([`ClusterError::NotLocal`]),
    /// more than [`MAX_CANDIDATES`] candidates ([`ClusterError::TooManyCandidates`]) or an
    /// address nobody can send to ([`ClusterError::UnusableCandidate`]).
    pub async fn set_candidates(
        &self,
        user: &UserId,
        candidates: Vec<Candidate>,
    ) -> Result<(), ClusterError> {
        Candidate::check_all(&candidates).map_err(|err| match err {
            CandidateError::TooMany { count } => {
                ClusterError::TooManyCandidates { count, max: MAX_CANDIDATES }
            }
            CandidateError::Unusable(addr) => ClusterError::UnusableCandidate { addr },
        })?;
        let users = &self.inner.server.users;
        users
            .set_candidates(user, candidates)
            .map_err(|NotHere| ClusterError::NotLocal { user: user.clone() })?;
        self.command(Command::Candidates(user.clone())).await
    }

    /// Where `user` is online and their P2P candidates there, or `None` when online nowhere. A
    /// user of this server is answered here; any other question goes to the hub (waiting across
    /// reconnects), which answers from its directory: with several sessions (policy `multi`),
    /// the last login's server and the candidates that server set.
    pub async fn reach(&self, user: &UserId) -> Result<Option<Reach>, ClusterError> {
        if let Some(candidates) = self.inner.server.users.candidates(user.as_str()) {
            return Ok(Some(Reach { server: self.server_id(), candidates }));
        }
        let (answer, wait) = oneshot::channel();
        self.command(Command::Locate(user.clone(), answer)).await?;
        wait.await.map_err(|_| ClusterError::Closed)
    }

    /// Sends an invitation from `from` to `to` (a P2P "let's punch" offer, or anything the app
    /// means as one), wherever `to` is: their server's app gets it exactly once as an
    /// [`Event::Invitation`], across hub restarts, like a message (a local `to` gets it through
    /// this server's events, without the hub). If `to` is online nowhere, an
    /// [`Event::Undeliverable`] with reason [`UndeliverableReason::Offline`] and `invitation`
    /// set comes back. The payload is bounded by the frame limit, like a message's
    /// ([`ClusterError::TooLarge`]). Waits as [`Cluster::send_to_user`] does.
    pub async fn invite(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
    ) -> Result<(), ClusterError> {
        let invitation = Invitation::Yes;
        self.send(from, to, payload, None, Wait::Yes, invitation).await.map(|_| ())
    }
}

//! The server's part in the clients' direct path ([`crate::p2p`]): it answers `UDP` with its
//! probe's port, keeps each client's candidates in the cluster's directory
//! (`Cluster::set_candidates`), answers an `OFFER` with the peer's place and candidates
//! (`Cluster::reach`) and relays offers and answers as invitations (`Cluster::invite`), checking
//! each one it receives before its client sees it. Numbered messages (`PSEND`) travel as tagged
//! payloads; a client that reported candidates gets each message as `PMSG`, labelled with the
//! path it came by (`server` when the sender is on this server, `hub` otherwise).

use std::sync::Arc;
use std::time::Duration;

use acms_appserver::{Cluster, ClusterError, UserId};
use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tracing::{info, warn};

use crate::paths::{self, Candidate, Invite, Kind, Number, Role, Via, WireError};
use crate::{ClientLine, ServerLine};

/// How long an `OFFER` waits for the hub to say where the peer is.
const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// The clients that reported candidates (and so get `PMSG`), with those candidates.
pub(super) type Routed = Arc<DashMap<UserId, Vec<Candidate>>>;

/// The first byte of a numbered message's payload (file transfers use `0xFF`).
pub const NUMBERED_TAG: u8 = 0xFE;

/// The cluster payload of a numbered message: the tag, then `NUMBER KIND BODY`.
pub fn numbered_payload(number: Number, kind: Kind, body: &str) -> Bytes {
    let head = format!("{number} {} ", kind.letter());
    let mut payload = BytesMut::with_capacity(1 + head.len() + body.len());
    payload.put_u8(NUMBERED_TAG);
    payload.put_slice(head.as_bytes());
    payload.put_slice(body.as_bytes());
    payload.freeze()
}

/// Why a tagged payload is not a numbered message.
#[derive(Debug, thiserror::Error)]
pub enum NumberedError {
    /// Not UTF-8.
    #[error("not UTF-8")]
    Utf8(#[from] std::str::Utf8Error),
    /// Not `NUMBER KIND BODY`.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// The numbered message in a payload, if it is one (`None` for any other payload).
pub fn from_numbered(payload: &[u8]) -> Option<Result<(Number, Kind, &str), NumberedError>> {
    match payload.split_first() {
        Some((&NUMBERED_TAG, rest)) => Some(
            std::str::from_utf8(rest)
                .map_err(NumberedError::from)
                .and_then(|text| paths::numbered(text).map_err(NumberedError::from)),
        ),
        _ => None,
    }
}

/// What a session needs to answer the direct path's lines.
pub(super) struct Direct<'a> {
    pub(super) cluster: &'a Cluster,
    pub(super) user: &'a UserId,
    pub(super) routed: &'a Routed,
    pub(super) udp_port: Option<u16>,
}

impl Direct<'_> {
    /// Handles one of the direct path's lines (`UDP`, `CANDIDATES`, `OFFER`, `ANSWER`,
    /// `PSEND`); returns the answer for the client, if any.
    pub(super) async fn handle(
        &self,
        line: &ClientLine,
    ) -> Result<Option<ServerLine>, ClusterError> {
        let Direct { cluster, user, routed, .. } = self;
        let answer = match line {
            ClientLine::Udp => ServerLine::Udp { port: self.udp_port },
            ClientLine::Candidates { candidates } => {
                match cluster.set_candidates(user, candidates.clone()).await {
                    Ok(()) => {
                        info!(%user, candidates = %paths::format_candidates(candidates), "candidates");
                        routed.insert((*user).clone(), candidates.clone());
                        return Ok(None);
                    }
                    Err(
                        err @ (ClusterError::TooManyCandidates { .. }
                        | ClusterError::UnusableCandidate { .. }),
                    ) => ServerLine::Error { reason: err.to_string() },
                    Err(err) => return Err(err),
                }
            }
            ClientLine::Offer { to, fingerprint } => {
                let Ok(peer) = UserId::new(to) else {
                    return Ok(Some(ServerLine::Error {
                        reason: format!("no such user name: {to}"),
                    }));
                };
                // The hub may be away: the client's messages will wait for it on the server path
                // anyway, and the session must not stall meanwhile.
                let reach = match tokio::time::timeout(REACH_TIMEOUT, cluster.reach(&peer)).await {
                    Ok(reach) => reach?,
                    Err(_) => {
                        info!(%user, peer = %to, "no answer from the hub about the peer; no direct path");
                        None
                    }
                };
                let answer = ServerLine::Reach {
                    user: to.clone(),
                    server: reach.as_ref().map(|reach| reach.server.0),
                    candidates: reach
                        .as_ref()
                        .map(|reach| reach.candidates.clone())
                        .unwrap_or_default(),
                };
                // Only a peer that can be reached directly is worth inviting.
                if reach.is_some_and(|reach| !reach.candidates.is_empty()) {
                    self.invite(&peer, Role::Offer, fingerprint).await?;
                }
                answer
            }
            ClientLine::Answer { to, fingerprint } => {
                let Ok(peer) = UserId::new(to) else {
                    return Ok(Some(ServerLine::Error {
                        reason: format!("no such user name: {to}"),
                    }));
                };
                self.invite(&peer, Role::Answer, fingerprint).await?;
                return Ok(None);
            }
            ClientLine::Numbered { to, number, kind, body } => match UserId::new(to) {
                Ok(to) => {
                    cluster.send_to_user(user, &to, numbered_payload(*number, *kind, body)).await?;
                    return Ok(None);
                }
                Err(err) => ServerLine::Error { reason: err.to_string() },
            },
            _ => return Ok(None),
        };
        Ok(Some(answer))
    }

    /// Relays this client's offer or answer to `peer`, with the candidates it reported.
    async fn invite(
        &self,
        peer: &UserId,
        role: Role,
        fingerprint: &str,
    ) -> Result<(), ClusterError> {
        let candidates = self.routed.get(self.user).map(|known| known.clone()).unwrap_or_default();
        let invite = Invite { role, fingerprint: fingerprint.to_owned(), candidates };
        self.cluster.invite(self.user, peer, Bytes::from(invite.to_string())).await
    }
}

/// The line an invitation from `from` becomes for its client, or `None` (with a log line) when
/// it is not one a client would send, or the client asked for no direct path.
pub(super) fn invitation(
    routed: &Routed,
    from: &UserId,
    to: &UserId,
    payload: &[u8],
) -> Option<ServerLine> {
    let invite = std::str::from_utf8(payload).map_err(|_| "not UTF-8").and_then(|text| {
        text.parse::<Invite>().map_err(|_| "not `offer|answer FINGERPRINT CANDIDATES`")
    });
    match invite {
        Err(reason) => {
            warn!(%from, %to, reason, len = payload.len(), "bogus invitation; ignored");
            None
        }
        Ok(_) if !routed.contains_key(to) => {
            info!(%from, %to, "invitation for a client that reported no candidates; ignored");
            None
        }
        Ok(invite) => Some(ServerLine::Invite { from: from.to_string(), invite }),
    }
}

/// The path a message from `from` came by, as its recipient here sees it.
pub(super) fn via(local_sender: bool) -> Via {
    if local_sender { Via::Server } else { Via::Hub }
}

//! The cluster's events into the clients' queues: a message to its recipient, a watched user's
//! presence to the clients who have them as a friend, a kick to its client; and what cannot be
//! queued goes back to its sender.

use std::time::Duration;

use acms_appserver::{Cluster, Event, Events, UserId};
use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::p2p::{self, Routed};
use super::web::WebDirectory;
use super::{Friends, Sessions};
use crate::p2p::Kind;
use crate::{ServerLine, transfer};

/// A line for one client and, for a message, its sender and bytes: what `Cluster::refuse` needs
/// to send it back should it never be written.
pub(super) struct Outbound {
    pub(super) line: ServerLine,
    pub(super) message: Option<(UserId, Bytes)>,
}

/// What the events task needs to put lines in the clients' queues.
pub(super) struct Router {
    cluster: Cluster,
    sessions: Sessions,
    routed: Routed,
    grace: Duration,
}

/// Hands every event the cluster delivers to this server to the clients it concerns.
pub(super) async fn route_events(
    mut events: Events,
    router: Router,
    friends: Friends,
    web: WebDirectory,
) {
    let cluster = &router.cluster;
    while let Some(event) = events.recv().await {
        let (users, line) = match event {
            Event::Presence { user, server, .. } => {
                let watchers = friends.get(&user).map(|watchers| watchers.clone());
                let line =
                    ServerLine::Presence { user: user.to_string(), server: server.map(|id| id.0) };
                for watcher in watchers.into_iter().flatten() {
                    let out = Outbound { line: line.clone(), message: None };
                    router.deliver(watcher, out).await;
                }
                continue;
            }
            Event::Kicked { user, reason } => (vec![user], ServerLine::Kicked { reason }),
            Event::Message { from, to, payload } => {
                let Some(line) = router.message(&from, &to, &payload) else {
                    refuse(cluster, &to, Some((from, payload)), "not a valid message").await;
                    continue;
                };
                router.deliver(to, Outbound { line, message: Some((from, payload)) }).await;
                continue;
            }
            Event::Invitation { from, to, payload } => {
                if let Some(line) = p2p::invitation(&router.routed, &from, &to, &payload) {
                    router.deliver(to, Outbound { line, message: None }).await;
                }
                continue;
            }
            Event::Undeliverable { from, to, invitation: true, .. } => {
                // The peer went offline since the offer's answer: the offerer need not wait.
                let line =
                    ServerLine::Reach { user: to.to_string(), server: None, candidates: vec![] };
                (vec![from], line)
            }
            Event::Undeliverable { from, to, payload, reason, .. } => {
                if let Some(Ok((_, kind, body))) = p2p::from_numbered(&payload) {
                    let (to, body) = (to.to_string(), body.replace(['\r', '\n'], " "));
                    let line = match kind {
                        Kind::Text => {
                            ServerLine::Undeliverable { to, reason: reason.to_string(), text: body }
                        }
                        Kind::File => ServerLine::FileUndeliverable { to, body },
                    };
                    router.deliver(from, Outbound { line, message: None }).await;
                    continue;
                }
                match transfer::from_payload(&payload) {
                    None => {
                        let (to, reason, text) =
                            (to.to_string(), reason.to_string(), text(&payload));
                        (vec![from], ServerLine::Undeliverable { to, reason, text })
                    }
                    Some(body) => {
                        let body = body.unwrap_or_default().into();
                        (vec![from], ServerLine::FileUndeliverable { to: to.to_string(), body })
                    }
                }
            }
            Event::GroupMessage { group, from, to, payload } => {
                let (group, from) = (group.to_string(), from.to_string());
                (to, ServerLine::Group { group, from, text: text(&payload) })
            }
            Event::Broadcast { from, to, payload } => {
                (to, ServerLine::Broadcast { from: from.to_string(), text: text(&payload) })
            }
            Event::Drain { target: Some(addr) } => {
                // Every client moves; the hub kicks each session here once it logged in there.
                let users: Vec<UserId> =
                    router.sessions.iter().map(|entry| entry.key().clone()).collect();
                info!(users = users.len(), %addr, "draining: clients move");
                (users, ServerLine::Move { addr })
            }
            Event::Drain { target: None } => {
                warn!("draining, but no other server can take clients: they stay");
                continue;
            }
            Event::ServerMessage { from, payload } => {
                // Where the other servers' web pages are, for the MOVE of a drain.
                if !web.handle_server_message(cluster, from, &payload).await {
                    info!(%from, text = text(&payload), "message from another server");
                }
                continue;
            }
            _ => continue,
        };
        for user in users {
            router.deliver(user, Outbound { line: line.clone(), message: None }).await;
        }
    }
}

impl Router {
    pub(super) fn new(
        cluster: Cluster,
        sessions: Sessions,
        routed: Routed,
        grace: Duration,
    ) -> Self {
        Self { cluster, sessions, routed, grace }
    }

    /// The line a message from `from` becomes for `to`: labelled with its path (`PMSG`) for a
    /// client that reported candidates, as before for any other; `None` for a tagged payload
    /// that is not what a client sends.
    fn message(&self, from: &UserId, to: &UserId, payload: &Bytes) -> Option<ServerLine> {
        let routed = self.routed.contains_key(to);
        let via = p2p::via(self.sessions.contains_key(from));
        let from_name = from.to_string();
        if let Some(numbered) = p2p::from_numbered(payload) {
            let (number, kind, body) = numbered
                .map_err(|err| warn!(%from, %to, error = %err, "bad numbered payload; refused"))
                .ok()?;
            let body = body.replace(['\r', '\n'], " ");
            return Some(match (routed, kind) {
                (true, kind) => {
                    ServerLine::Routed { from: from_name, via, number: Some(number), kind, body }
                }
                (false, Kind::Text) => ServerLine::Message { from: from_name, text: body },
                (false, Kind::File) => ServerLine::File { from: from_name, body },
            });
        }
        match transfer::from_payload(payload) {
            None if routed => {
                let body = text(payload);
                Some(ServerLine::Routed {
                    from: from_name,
                    via,
                    number: None,
                    kind: Kind::Text,
                    body,
                })
            }
            None => Some(ServerLine::Message { from: from_name, text: text(payload) }),
            Some(Ok(body)) => Some(ServerLine::File { from: from_name, body: body.into() }),
            Some(Err(_)) => {
                warn!(%from, %to, "file-transfer payload is not UTF-8; refused");
                None
            }
        }
    }

    /// Puts a line in `user`'s queue, waiting up to the grace for room; a message that cannot
    /// be queued goes back to its sender.
    async fn deliver(&self, user: UserId, out: Outbound) {
        let Some(session) = self.sessions.get(&user).map(|session| session.clone()) else {
            return refuse(&self.cluster, &user, out.message, "left the server").await;
        };
        let out = match session.try_send(out) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(out)) => out,
            Err(mpsc::error::TrySendError::Closed(out)) => {
                return refuse(&self.cluster, &user, out.message, "left the server").await;
            }
        };
        if let Ok(Ok(permit)) = tokio::time::timeout(self.grace, session.reserve()).await {
            return permit.send(out);
        }
        // A client that does not read cannot hold up everyone else's deliveries for long.
        warn!(%user, "client is not reading; disconnecting it");
        self.sessions.remove_if(&user, |_, current| current.same_channel(&session));
        refuse(&self.cluster, &user, out.message, "too slow").await;
    }
}

/// Sends a message for `to` that will not be written back to its sender, with `reason`.
pub(super) async fn refuse(
    cluster: &Cluster,
    to: &UserId,
    message: Option<(UserId, Bytes)>,
    reason: &str,
) {
    let Some((from, payload)) = message else {
        // Presence, group and broadcast lines have no single sender to tell.
        return warn!(user = %to, reason, "line for a client that cannot take it; dropped");
    };
    if let Err(err) = cluster.refuse(&from, to, payload, reason).await {
        error!(%from, %to, error = %err, "cannot send an undelivered message back");
    }
}

/// A payload as one line of text: lossy UTF-8, line breaks as spaces.
fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).replace(['\r', '\n'], " ")
}

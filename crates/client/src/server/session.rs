//! One client of the demo server, from its `LOGIN` line until it quits, goes away, is kicked or
//! the server stops: its requests go to the cluster, the lines queued for it are written to it.
//! The lines come and go over a TCP connection or a WebSocket alike ([`Lines`]).

use acms_appserver::{Cluster, GroupId, LinkState, UserId};
use anyhow::Context;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::p2p::{Direct, Routed};
use super::router::{Outbound, refuse};
use super::{Clients, Friends, ServerSettings};
use crate::{ClientLine, ServerLine, transfer};

/// A client's lines, in and out: a framed TCP connection, or a WebSocket's text messages. An
/// error either way ends the session.
pub(super) trait Lines<E>:
    Stream<Item = Result<String, E>> + Sink<String, Error = E> + Unpin + Send
{
}

impl<T, E> Lines<E> for T where
    T: Stream<Item = Result<String, E>> + Sink<String, Error = E> + Unpin + Send
{
}

/// One client, from its LOGIN line until it quits, goes away, or the server stops. With
/// `hub_notices`, the client is also told when the server's link to the hub goes down and
/// comes back (`HUB down`, `HUB up`).
pub(super) async fn serve_client<E>(
    lines: &mut impl Lines<E>,
    clients: &Clients,
    shutdown: CancellationToken,
    hub_notices: bool,
) where
    E: std::error::Error + Send + Sync + 'static,
{
    let Clients { cluster, sessions, friends, routed, settings, .. } = clients;
    let user = tokio::select! {
        _ = shutdown.cancelled() => Err("server is shutting down".to_owned()),
        user = login(lines, settings) => user,
    };
    let user = match user {
        Ok(user) => user,
        Err(reason) => {
            let _ = lines.send(ServerLine::Error { reason }.to_string()).await;
            return;
        }
    };
    let (queue, mut inbox) = mpsc::channel::<Outbound>(settings.client_queue);
    match sessions.entry(user.clone()) {
        dashmap::Entry::Vacant(slot) => slot.insert(queue),
        dashmap::Entry::Occupied(_) => {
            let _ = lines
                .send(
                    ServerLine::Error { reason: format!("{user} is already online here") }
                        .to_string(),
                )
                .await;
            return;
        }
    };
    match join(cluster, &user, settings, &shutdown).await {
        Ok(()) if lines.send(ServerLine::Ok { server: settings.id }.to_string()).await.is_ok() => {
            info!(%user, "logged in");
            let hub = hub_notices.then(|| cluster.link_state());
            let udp_port = settings.udp_port;
            let session =
                Session { cluster, user: &user, friends, routed, udp_port, shutdown: &shutdown };
            let result = session.chat(lines, &mut inbox, hub).await;
            info!(%user, ?result, "logged out");
        }
        Ok(()) => {}
        Err(reason) => {
            warn!(%user, %reason, "login failed");
            let _ = lines.send(ServerLine::Error { reason }.to_string()).await;
        }
    }
    // The cluster keeps watching: another client here may add the same friend at any moment,
    // and an unwatch racing that watch could lose it. The hub only pushes changes.
    friends.iter_mut().for_each(|mut watchers| watchers.retain(|watcher| *watcher != user));
    friends.retain(|_, watchers| !watchers.is_empty());
    sessions.remove(&user);
    routed.remove(&user);
    // Messages queued and never written go back to their senders.
    inbox.close();
    while let Ok(Outbound { message, .. }) = inbox.try_recv() {
        refuse(cluster, &user, message, "left the server").await;
    }
    // A no-op after a kick: the cluster already logged the user out here.
    let _ = cluster.logout(&user).await;
}

/// Makes `user` reachable from every server: done once the hub has the login. Fails when the
/// hub does not have it within `hub_login_timeout`, or the server stops meanwhile.
async fn join(
    cluster: &Cluster,
    user: &UserId,
    settings: &ServerSettings,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    if *cluster.link_state().borrow() != LinkState::Connected {
        info!(%user, "login waits for the hub");
    }
    let joined = async {
        cluster.login(user.clone()).await?;
        cluster.flush().await
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err("server is shutting down".into()),
        joined = tokio::time::timeout(settings.hub_login_timeout, joined) => match joined {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(_) => Err(format!(
                "the cluster's hub did not answer within {:?}; try again later",
                settings.hub_login_timeout
            )),
        },
    }
}

/// The user a new client names in its first line, `LOGIN <user>`, within the login timeout.
async fn login<E>(lines: &mut impl Lines<E>, settings: &ServerSettings) -> Result<UserId, String> {
    let first = tokio::time::timeout(settings.login_timeout, lines.next()).await;
    let Ok(Some(Ok(line))) = first else {
        return Err("expected `LOGIN <user>` in time".into());
    };
    match ClientLine::parse(&line) {
        Ok(ClientLine::Login { user }) => UserId::new(&user).map_err(|err| err.to_string()),
        _ => Err("expected `LOGIN <user>`".into()),
    }
}

/// A logged-in client as its session loop sees it.
struct Session<'a> {
    cluster: &'a Cluster,
    user: &'a UserId,
    friends: &'a Friends,
    routed: &'a Routed,
    udp_port: Option<u16>,
    shutdown: &'a CancellationToken,
}

impl Session<'_> {
    /// A logged-in client's lines until it quits or leaves, the server stops or the user is kicked:
    /// requests in, queued lines out; and, given `hub`, the hub link's ups and downs.
    async fn chat<E>(
        self,
        lines: &mut impl Lines<E>,
        inbox: &mut mpsc::Receiver<Outbound>,
        mut hub: Option<watch::Receiver<LinkState>>,
    ) -> anyhow::Result<()>
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let Session { cluster, user, friends, routed, udp_port, shutdown } = self;
        let direct = Direct { cluster, user, routed, udp_port };
        // What this client was last told of each friend: presence comes again after reconnects and
        // for every watch, and the client hears only changes.
        let mut known = std::collections::HashMap::new();
        let mut hub_up = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    lines.send(ServerLine::Error { reason: "server is shutting down".into() }.to_string()).await?;
                    return Ok(());
                }
                // Closed when the session was dropped for not reading.
                out = inbox.recv() => match out.context("too slow: disconnected")? {
                    Outbound { line: line @ ServerLine::Kicked { .. }, .. } => {
                        lines.send(line.to_string()).await?;
                        return Ok(());
                    }
                    Outbound { line: ServerLine::Presence { user: friend, server }, .. } => {
                        if known.insert(friend.clone(), server) != Some(server) {
                            lines.send(ServerLine::Presence { user: friend, server }.to_string()).await?;
                        }
                    }
                    Outbound { line, message } => {
                        if let Err(err) = lines.send(line.to_string()).await {
                            refuse(cluster, user, message, "left the server").await;
                            return Err(err.into());
                        }
                    }
                },
                // Only the ups and downs: a link that retries while down is still down.
                changed = hub_change(&mut hub) => match changed {
                    Some(up) if up != hub_up => {
                        hub_up = up;
                        lines.send(ServerLine::Hub { up }.to_string()).await?;
                    }
                    Some(_) => {}
                    None => hub = None,
                },
                line = lines.next() => match ClientLine::parse(&line.context("client left")??) {
                    Ok(line @ (ClientLine::Udp | ClientLine::Candidates { .. } | ClientLine::Offer { .. }
                        | ClientLine::Answer { .. } | ClientLine::Numbered { .. })) => {
                        if let Some(answer) = direct.handle(&line).await? {
                            lines.send(answer.to_string()).await?;
                        }
                    }
                    Ok(ClientLine::Send { to, text }) => match UserId::new(&to) {
                        Ok(to) => { cluster.send_to_user(user, &to, text.into()).await?; }
                        Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                    },
                    Ok(ClientLine::Who { user: name }) => {
                        let line = match UserId::new(&name) {
                            Ok(who) => ServerLine::Located { user: name, server: cluster.locate(&who).await?.map(|id| id.0) },
                            Err(err) => ServerLine::Error { reason: err.to_string() },
                        };
                        lines.send(line.to_string()).await?;
                    }
                    Ok(ClientLine::Watch { users }) => {
                        let mut watched = Vec::new();
                        for name in users {
                            match UserId::new(&name) {
                                Ok(friend) => watched.push(friend),
                                Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                            }
                        }
                        for friend in &watched {
                            let mut watchers = friends.entry(friend.clone()).or_default();
                            if !watchers.contains(user) {
                                watchers.push(user.clone());
                            }
                        }
                        // The cluster answers with each friend's current state.
                        cluster.watch(watched).await?;
                    }
                    Ok(ClientLine::All { text }) => { cluster.broadcast(user, text.into(), true).await?; }
                    Ok(ClientLine::Group { group, text }) => match GroupId::new(&group) {
                        Ok(group) => { cluster.send_to_group(user, &group, text.into(), true).await?; }
                        Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                    },
                    Ok(ClientLine::Join { group }) => lines.send(membership(cluster, user, &group, true).await?.to_string()).await?,
                    Ok(ClientLine::Leave { group }) => lines.send(membership(cluster, user, &group, false).await?.to_string()).await?,
                    // Relayed unread: the transfer is the two clients' business (acms_client::transfer).
                    Ok(ClientLine::File { to, body }) => match UserId::new(&to) {
                        Ok(to) => { cluster.send_to_user(user, &to, transfer::payload(&body)).await?; }
                        Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                    },
                    Ok(ClientLine::Quit) => return Ok(()),
                    Ok(ClientLine::Login { .. }) => lines.send(ServerLine::Error { reason: "already logged in".into() }.to_string()).await?,
                    Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                },
            }
        }
    }
}

/// Whether the hub link is up after its next change; `None` once the cluster is closed. Never
/// ready without a link to watch.
async fn hub_change(hub: &mut Option<watch::Receiver<LinkState>>) -> Option<bool> {
    let Some(hub) = hub else { return std::future::pending().await };
    hub.changed().await.ok()?;
    let up = *hub.borrow_and_update() == LinkState::Connected;
    Some(up)
}

/// Joins or leaves `group`, answering once the hub has it, so that a message sent to the group
/// from any server after the answer reaches the user.
async fn membership(
    cluster: &Cluster,
    user: &UserId,
    group: &str,
    join: bool,
) -> anyhow::Result<ServerLine> {
    let group = match GroupId::new(group) {
        Ok(group) => group,
        Err(err) => return Ok(ServerLine::Error { reason: err.to_string() }),
    };
    if join {
        cluster.join(&group, user).await?;
    } else {
        cluster.leave(&group, user).await?;
    }
    cluster.flush().await?;
    let group = group.to_string();
    Ok(if join { ServerLine::Joined { group } } else { ServerLine::Left { group } })
}

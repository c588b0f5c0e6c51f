//! The server side of the demo line protocol: what the example `im-server` runs for its clients
//! on top of the ACMS `Cluster` handle.
//!
//! Each client gets a task and a bounded queue of lines to write; one task takes the cluster's
//! events and puts each message, presence change or kick in its recipients' queues. Whether the
//! recipients are here or on other servers, and who is in which group, is the cluster's business.
//! A message that cannot be written to its client (the user left, the client does not keep up,
//! the server stops) goes back to its sender with `Cluster::refuse`: none is dropped with only a
//! log line. File transfers are relayed unread, as tagged payloads ([`crate::transfer`]).
//!
//! # Layout
//! - this module: [`ServerSettings`], [`Clients`] (what every session shares, the accept loop
//!   and the bounded stop), [`serve`] and [`advertised`].
//! - `session`: one client, from `LOGIN` to its end: its lines in, its queue out, whatever
//!   carries them (a TCP connection, a WebSocket).
//! - `router`: the cluster's events into the clients' queues, and messages refused back.
//! - [`p2p`]: the server's part in the clients' direct path: the probe's port, candidates,
//!   offers and answers relayed as invitations, numbered messages labelled with their path.
//! - [`web`]: the chat page and its WebSocket, for browsers (`im-server --http`).

pub mod p2p;
mod router;
mod session;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use acms_appserver::{Cluster, Events, UserId};
use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info_span, warn};

use crate::MAX_LINE_LEN;
use router::{Outbound, Router};
use web::WebDirectory;

/// How the server treats its clients; every field has a default.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// This server's id in the cluster, told to each client in `OK`.
    pub id: u32,
    /// How long a new client has to send its `LOGIN` line.
    pub login_timeout: Duration,
    /// How long a login may wait for the hub before the client is told it is unreachable.
    pub hub_login_timeout: Duration,
    /// Lines that may wait for one client.
    pub client_queue: usize,
    /// How long a line waits for room in a full client queue before the client is disconnected
    /// as too slow: a burst (the backlog after a hub restart) slows deliveries instead.
    pub client_grace: Duration,
    /// How long a stopping server waits for its clients and the hub link before it returns.
    pub shutdown_grace: Duration,
    /// The UDP port of this server's reflexive-address probe ([`crate::p2p::probe`]), told to
    /// clients that ask; `None` when it runs none.
    pub udp_port: Option<u16>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            id: 0,
            login_timeout: Duration::from_secs(10),
            hub_login_timeout: Duration::from_secs(10),
            client_queue: 1024,
            client_grace: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(3),
            udp_port: None,
        }
    }
}

/// The queue of lines to write to each logged-in client.
type Sessions = Arc<DashMap<UserId, mpsc::Sender<Outbound>>>;

/// For each watched user, the local clients who have them as a friend.
type Friends = Arc<DashMap<UserId, Vec<UserId>>>;

/// The clients of one server, whatever they connect through: the cluster handle, each logged-in
/// client's queue, the friends lists, and the tasks of the sessions. Cheap to clone: the TCP
/// accept loop ([`Clients::serve`]) and the web server ([`web::WebServer::serve`]) share it, so a
/// browser user is a user like any other.
#[derive(Clone)]
pub struct Clients {
    cluster: Cluster,
    sessions: Sessions,
    friends: Friends,
    routed: p2p::Routed,
    settings: Arc<ServerSettings>,
    tasks: TaskTracker,
    web: WebDirectory,
}

impl Clients {
    /// Starts delivering `cluster`'s `events` to the clients that will log in.
    pub fn start(cluster: Cluster, events: Events, settings: ServerSettings) -> Self {
        let sessions = Sessions::default();
        let friends = Friends::default();
        let web = WebDirectory::default();
        let routed = p2p::Routed::default();
        let router =
            Router::new(cluster.clone(), sessions.clone(), routed.clone(), settings.client_grace);
        tokio::spawn(router::route_events(events, router, friends.clone(), web.clone()));
        let settings = Arc::new(settings);
        Self { cluster, sessions, friends, routed, settings, tasks: TaskTracker::new(), web }
    }

    /// Serves TCP clients on `listener` until `shutdown` is cancelled; then waits up to the
    /// shutdown grace for every client (TCP and web) and the hub link to finish.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => { warn!(error = %err, "accept failed"); continue; }
                },
            };
            let clients = self.clone();
            let shutdown = shutdown.clone();
            let session = async move {
                let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_LEN));
                session::serve_client(&mut lines, &clients, shutdown, false).await;
            };
            self.tasks.spawn(session.instrument(info_span!("client", %peer)));
        }
        self.tasks.close();
        // Whatever a client or the hub link still waits for, the server stops in bounded time.
        let stopped = async {
            self.tasks.wait().await;
            self.cluster.close().await;
        };
        let grace = self.settings.shutdown_grace;
        if tokio::time::timeout(grace, stopped).await.is_err() {
            warn!(?grace, "clients or the hub link did not finish in time; stopping anyway");
        }
    }
}

/// Serves TCP clients on `listener` until `shutdown` is cancelled, delivering `cluster`'s
/// `events` to them; then waits up to the shutdown grace for the clients and the hub link to
/// finish. [`Clients::start`] and [`Clients::serve`], for a server with no web page.
pub async fn serve(
    listener: TcpListener,
    cluster: Cluster,
    events: Events,
    settings: ServerSettings,
    shutdown: CancellationToken,
) {
    Clients::start(cluster, events, settings).serve(listener, shutdown).await;
}

/// Why an advertised address cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "--advertise {0} is no address a client can connect to: give this server's reachable host \
     and port"
)]
pub struct AdvertiseError(String);

/// The address clients are told to use: `configured` if set, else the listen address `local`.
/// An unspecified address (0.0.0.0, ::) is no address a client can connect to: given, it is an
/// error; as the listen address, loopback with its port is advertised instead, with a warning.
pub fn advertised(configured: &str, local: SocketAddr) -> Result<String, AdvertiseError> {
    if !configured.is_empty() {
        let unspecified = configured
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_unspecified() || addr.port() == 0);
        if unspecified {
            return Err(AdvertiseError(configured.to_owned()));
        }
        return Ok(configured.to_owned());
    }
    if !local.ip().is_unspecified() {
        return Ok(local.to_string());
    }
    let loopback = match local {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, local.port())),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port())),
    };
    warn!(
        listen = %local,
        advertise = %loopback,
        "listening on an unspecified address: advertising loopback, which only clients on this \
         machine can use; pass --advertise HOST:PORT (or `advertise` in the config) for others"
    );
    Ok(loopback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_never_advertised() {
        let any: SocketAddr = "0.0.0.0:6000".parse().unwrap();
        assert_eq!(advertised("", any).unwrap(), "127.0.0.1:6000");
        assert_eq!(advertised("", "[::]:6000".parse().unwrap()).unwrap(), "[::1]:6000");
        assert_eq!(advertised("", "10.0.0.5:6000".parse().unwrap()).unwrap(), "10.0.0.5:6000");
        assert_eq!(advertised("chat.example:6000", any).unwrap(), "chat.example:6000");
        assert!(advertised("0.0.0.0:6000", any).is_err());
        assert!(advertised("10.0.0.5:0", any).is_err());
    }
}

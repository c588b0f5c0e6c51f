//! Helpers for the cross-crate tests: a hub on an ephemeral port that stops when dropped, app
//! servers built on the `Cluster` handle, and waits on events with generous deadlines.

pub mod browser;
pub mod http;
pub mod nat_topology;
pub mod nats;
pub mod netns;
pub mod pki;
pub mod process;
pub mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use acms::{Daemon, Hub, HubConfig, ServerTls};
use acms_appserver::{Cluster, ClusterBuilder, Event, Events, LinkState, ServerId, UserId};
use acms_protocol::{Codec, Control, Frame, RawFrame};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long any test waits for something that should happen in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A hub serving on 127.0.0.1, as the daemon runs it ([`acms::Daemon`]: the transfer port and
/// the admin API, with [`http::TOKEN`]); shut down when dropped.
pub struct TestHub {
    pub hub: Hub,
    pub addr: SocketAddr,
    /// Where its admin API listens.
    pub admin: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), acms::DaemonError>>>,
}

impl TestHub {
    /// A hub with default settings on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(HubConfig::default(), "127.0.0.1:0".parse().unwrap()).await
    }

    /// A hub with `config` on `addr` (port 0 for any).
    pub async fn start_with(config: HubConfig, addr: SocketAddr) -> Self {
        Self::serve(config, addr, None).await
    }

    /// A hub with `config` whose transfer port speaks TLS, on an ephemeral port.
    pub async fn start_tls(config: HubConfig, tls: ServerTls) -> Self {
        Self::serve(config, "127.0.0.1:0".parse().unwrap(), Some(tls)).await
    }

    async fn serve(config: HubConfig, addr: SocketAddr, tls: Option<ServerTls>) -> Self {
        let mut config = acms::Config { transfer: config, ..acms::Config::default() };
        config.transfer.listen = addr;
        config.admin.addr = "127.0.0.1:0".parse().unwrap();
        config.admin.token = Some(acms::AdminToken::new(http::TOKEN).unwrap());
        let daemon = Daemon::bind(config, tls).await.expect("bind hub");
        let (hub, addr) = (daemon.hub().clone(), daemon.transfer_addr().unwrap());
        let admin = daemon.admin_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon.run(shutdown.clone()));
        Self { hub, addr, admin, shutdown, task: Some(task) }
    }

    /// Stops the hub and waits until every connection is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("hub task").expect("hub run");
        }
    }

    /// Waits until the hub has `servers` registered and `users` online.
    pub async fn wait_for(&self, servers: usize, users: usize) {
        let registry = self.hub.registry();
        eventually("hub registry", || {
            registry.servers().len() == servers && registry.user_count() == users
        })
        .await;
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An app server: a cluster handle and its events.
pub struct TestServer {
    pub cluster: Cluster,
    pub events: Events,
}

impl TestServer {
    /// Joins the hub at `hub` as server `id` and waits until registered.
    pub async fn start(id: u32, hub: SocketAddr) -> Self {
        Self::start_with(builder(id, hub), LinkState::Connected).await
    }

    /// Starts a server from `builder` and waits until its link is in `state`.
    pub async fn start_with(builder: ClusterBuilder, state: LinkState) -> Self {
        let (cluster, events) = builder.start();
        wait_link(&cluster, state).await;
        Self { cluster, events }
    }

    /// Logs `names` in and waits until the hub has them.
    pub async fn login(&self, names: &[&str]) {
        for name in names {
            self.cluster.login(user(name)).await.expect("login");
        }
        tokio::time::timeout(PATIENCE, self.cluster.flush())
            .await
            .expect("flush in time")
            .expect("flush");
    }

    /// The next event, within [`PATIENCE`].
    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .expect("an event in time")
            .expect("events open")
    }
}

/// Settings of test server `id` joining `hub`, with short reconnect delays.
pub fn builder(id: u32, hub: SocketAddr) -> ClusterBuilder {
    Cluster::builder(ServerId(id), hub.to_string())
        .client_addr(format!("127.0.0.1:{}", 6000 + id))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500))
}

/// Waits until the cluster's hub link is in `state`.
pub async fn wait_link(cluster: &Cluster, state: LinkState) {
    let mut link = cluster.link_state();
    tokio::time::timeout(PATIENCE, link.wait_for(|current| *current == state))
        .await
        .unwrap_or_else(|_| panic!("link never became {state:?}"))
        .expect("link state");
}

/// A user id from a literal.
pub fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

/// Polls `condition` until it holds, failing after [`PATIENCE`]. For state that has no event of
/// its own to await (the hub's registry seen from outside).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A peer that speaks frames by hand: a fake hub, or a hostile or hand-driven app server.
pub type Peer = Framed<TcpStream, Codec>;

/// The peer's next frame within [`PATIENCE`], `None` once it closed. Keepalive pings are skipped:
/// both sides send them when idle, so on a slow machine one may come between any two frames.
pub async fn next_frame(peer: &mut Peer) -> Option<Frame> {
    loop {
        let next = tokio::time::timeout(PATIENCE, peer.next()).await.expect("a frame in time");
        let frame = next
            .map(|raw: Result<RawFrame, _>| raw.expect("valid frame").decode().expect("decodable"));
        if !matches!(frame, Some(Frame::Control(Control::Ping { .. }))) {
            return frame;
        }
    }
}

/// Connects a raw peer to the hub at `addr` and sends the `Hello` of server `id` (no secret,
/// epoch 1); the hub's answer is the caller's to read.
pub async fn raw_hello(addr: SocketAddr, id: u32) -> Peer {
    use futures_util::SinkExt;
    let mut peer = Framed::new(TcpStream::connect(addr).await.expect("connect"), Codec::default());
    let hello = acms_protocol::Hello {
        version: acms_protocol::PROTOCOL_VERSION,
        server_id: ServerId(id),
        client_addr: "127.0.0.1:7000".into(),
        epoch: 1,
        nonce: None,
    };
    peer.send(Frame::Control(Control::Hello(hello))).await.expect("send Hello");
    peer
}

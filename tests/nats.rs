//! A NATS cluster for the backplane tests: three `nats-server` processes with JetStream, routed
//! to each other on free loopback ports, their stores in a temporary directory; killed when
//! dropped. [`NatsCluster::start`] returns once the routes are up and JetStream has a meta
//! leader, so a hub can create its buckets at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use acms_appserver::{Cluster, Events, LinkState, ServerId};

use crate::http;
use crate::process::{Proc, start_hub_with};
use crate::{PATIENCE, wait_link};

/// Where Debian's package installs the server.
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A free port on 127.0.0.1, chosen before the server that will use it starts: the nodes of a
/// cluster must know each other's route ports up front.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// The `nats-server` program: `NATS_SERVER` in the environment, else Debian's path, else the
/// `PATH`.
pub fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let debian = PathBuf::from(NATS_SERVER);
    if debian.exists() { debian } else { PathBuf::from("nats-server") }
}

/// One node of the cluster.
pub struct NatsNode {
    /// Where clients connect.
    pub client: SocketAddr,
    /// The monitoring endpoint (`/varz`, `/jsz`, `/routez`).
    pub monitor: SocketAddr,
    route: u16,
    store: PathBuf,
    name: String,
    child: Option<Child>,
}

impl NatsNode {
    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    /// Kills the node with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// The hubs connected to this node (client connections named `acms-hub-*`, from its
    /// `/connz`); `None` while it does not answer.
    pub async fn hub_connections(&self) -> Option<usize> {
        let connz = get(self.monitor, "/connz?limit=1024").await?;
        let connections = connz["connections"].as_array()?;
        let hubs = connections.iter().filter(|connection| {
            connection["name"].as_str().is_some_and(|name| name.starts_with("acms-hub-"))
        });
        Some(hubs.count())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn spawn(&mut self, routes: &[u16]) {
        let routes: Vec<String> =
            routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
        let child = Command::new(program())
            .args(["-a", "127.0.0.1", "-p", &self.client.port().to_string()])
            .args(["-m", &self.monitor.port().to_string(), "-n", &self.name, "-js"])
            .args(["-sd", &self.store.display().to_string()])
            .args(["--cluster_name", "acms-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", self.route)])
            .args(["--routes", &routes.join(",")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program().display()));
        self.child = Some(child);
    }
}

/// Three routed `nats-server` nodes with JetStream; killed (by their own PIDs) when dropped.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until the cluster formed and JetStream is ready. A port
    /// picked free may be taken by another test before its node binds it: a cluster that does
    /// not form is stopped and started again on fresh ports, up to three times.
    pub async fn start() -> Self {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let mut cluster = Self::spawn();
            match cluster.ready().await {
                Ok(()) => return cluster,
                Err(why) => {
                    for node in &mut cluster.nodes {
                        node.kill().await;
                    }
                    failures.push(why);
                }
            }
        }
        panic!("the NATS cluster did not form: {failures:?}");
    }

    fn spawn() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes: Vec<NatsNode> = (0..3)
            .map(|index| NatsNode {
                client: SocketAddr::from(([127, 0, 0, 1], free_port())),
                monitor: SocketAddr::from(([127, 0, 0, 1], free_port())),
                route: free_port(),
                store: dir.path().join(format!("n{index}")),
                name: format!("n{index}"),
                child: None,
            })
            .collect();
        let routes: Vec<u16> = nodes.iter().map(|node| node.route).collect();
        for node in &mut nodes {
            let others: Vec<u16> = routes.iter().copied().filter(|&r| r != node.route).collect();
            node.spawn(&others);
        }
        Self { nodes, _dir: dir }
    }

    /// Stops every node with SIGKILL, as a power cut would, and starts each again on its ports
    /// and JetStream store; returns once the cluster formed again.
    pub async fn restart_all(&mut self) {
        self.stop_all().await;
        self.start_all().await;
    }

    /// Stops every node with SIGKILL.
    pub async fn stop_all(&mut self) {
        for node in &mut self.nodes {
            node.kill().await;
        }
    }

    /// Starts every node again on its ports and JetStream store, after [`Self::stop_all`];
    /// returns once the cluster formed again.
    pub async fn start_all(&mut self) {
        let routes: Vec<u16> = self.nodes.iter().map(|node| node.route).collect();
        for node in &mut self.nodes {
            let others: Vec<u16> = routes.iter().copied().filter(|&r| r != node.route).collect();
            node.spawn(&others);
        }
        if let Err(why) = self.ready().await {
            panic!("the NATS cluster did not form again after a restart: {why}");
        }
    }

    /// Every client URL, comma-separated, as `acms --backplane` takes them; node `first` first.
    pub fn urls_from(&self, first: usize) -> String {
        let count = self.nodes.len();
        (0..count).map(|i| self.nodes[(first + i) % count].url()).collect::<Vec<_>>().join(",")
    }

    /// Waits until each node has routes to the other two and JetStream has a meta leader that
    /// counts its peers current; an error if a node exits or the cluster has not formed within
    /// the patience.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        for index in 0..self.nodes.len() {
            loop {
                let node = &mut self.nodes[index];
                if let Some(child) = node.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!("{} exited with {status}", node.name));
                }
                let routes = get(node.monitor, "/routez").await;
                let jsz = get(node.monitor, "/jsz").await;
                let routed = routes.as_ref().is_some_and(routed_to_both);
                let led = jsz.as_ref().is_some_and(|j| led_by_a_current_meta(j, &node.name));
                if routed && led {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("not formed: routes {routes:?}, jsz {jsz:?}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// Whether a node's `/routez` shows routes to both other nodes. Counted by peer, not by route:
/// nats-server 2.10 and later open a pool of routes to each peer, so two routes may all go to
/// one of them while the other, not routed yet, would drop what is published for its clients.
fn routed_to_both(routez: &serde_json::Value) -> bool {
    let routes = routez["routes"].as_array().map(Vec::as_slice).unwrap_or_default();
    let peers: std::collections::HashSet<&str> =
        routes.iter().filter_map(|route| route["remote_id"].as_str()).collect();
    peers.len() >= 2
}

/// Whether a node's `/jsz` names a JetStream meta leader and, if the node is that leader, it
/// counts every peer current (nats-server 2.10 and later list them; 2.9 does not). Until then a
/// new replicated bucket may be refused: "no suitable peers for placement, peer offline".
fn led_by_a_current_meta(jsz: &serde_json::Value, name: &str) -> bool {
    let meta = &jsz["meta_cluster"];
    let Some(leader) = meta["leader"].as_str().filter(|leader| !leader.is_empty()) else {
        return false;
    };
    let peers = meta["replicas"].as_array().map(Vec::as_slice).unwrap_or_default();
    let current = |peer: &serde_json::Value| peer["current"] == true && peer["offline"] != true;
    leader != name || peers.iter().all(current)
}

/// `GET path` on a monitoring port, as JSON; `None` while the node does not answer.
async fn get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut reply = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut reply)).await.ok()?.ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let body = reply.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Waits until the hub whose admin API is at `admin` locates `name` on `server`: the user's
/// login has reached that hub's replica of the directory, and the server's hub is alive for it.
pub async fn wait_located(admin: SocketAddr, name: &str, server: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = http::request(admin, "GET", &format!("/api/users/{name}"), &[], None).await;
        if reply.json()["server"].as_u64() == Some(u64::from(server)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {admin} never located {name} on server {server}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the hub at `admin` lists `name`'s sessions on exactly `servers`.
pub async fn wait_sessions(admin: SocketAddr, name: &str, servers: &[u64]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let path = format!("/api/users/{name}");
        let reply = http::request(admin, "GET", &path, &[], None).await;
        let mut listed: Vec<u64> = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|json| json["servers"].as_array().cloned())
            .map(|list| list.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default();
        listed.sort_unstable();
        if listed == servers {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never {servers:?}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An `acms` process on the backplane; killed when dropped.
pub struct HubProc {
    /// The process.
    pub proc: Proc,
    /// Its transfer port.
    pub transfer: SocketAddr,
    /// Its admin API.
    pub admin: SocketAddr,
}

/// Three hubs on `nats`, hub `i` connected first to NATS node `i`, with `extra` flags.
pub async fn start_hubs_with(nats: &NatsCluster, extra: &[&str]) -> Vec<HubProc> {
    let mut hubs = Vec::new();
    for index in 0..3 {
        let urls = nats.urls_from(index);
        let mut args = vec!["--backplane", urls.as_str()];
        args.extend_from_slice(extra);
        let (proc, transfer, admin) = start_hub_with(&args).await;
        hubs.push(HubProc { proc, transfer, admin });
    }
    hubs
}

/// A figure of the `/metrics` of the hub at `admin` (`name` with its labels), if it shows.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<u64> {
    let metrics = http::request(admin, "GET", "/metrics", &[], None).await.body;
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// One app server on each hub, server `10 + i` on hub `i`, connected; their handles and events.
pub async fn server_on_each(hubs: &[HubProc]) -> (Vec<Cluster>, Vec<Events>) {
    let (mut clusters, mut events) = (Vec::new(), Vec::new());
    for (index, hub) in hubs.iter().enumerate() {
        let (cluster, cluster_events) =
            Cluster::builder(ServerId(10 + index as u32), hub.transfer.to_string())
                .client_addr(format!("127.0.0.1:{}", free_port()))
                .start();
        wait_link(&cluster, LinkState::Connected).await;
        clusters.push(cluster);
        events.push(cluster_events);
    }
    // Every hub knows where every server is: a user's sessions may reach a hub's replica before
    // the place of their server does (each comes through its own bucket).
    let ids: Vec<u64> = (0..hubs.len() as u64).map(|index| 10 + index).collect();
    for hub in hubs {
        wait_servers(hub.admin, &ids).await;
    }
    (clusters, events)
}

/// Waits until the hub at `admin` lists every server of `ids` (its own and other hubs').
pub async fn wait_servers(admin: SocketAddr, ids: &[u64]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = http::request(admin, "GET", "/api/servers", &[], None).await;
        let listed: Vec<u64> = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|json| json.as_array().cloned())
            .map(|list| list.iter().filter_map(|server| server["id"].as_u64()).collect())
            .unwrap_or_default();
        if ids.iter().all(|id| listed.contains(id)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never listed {ids:?}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

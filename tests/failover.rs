//! Hot standby under faults, with real `acms` processes: the primary is killed with SIGKILL in
//! the middle of sustained traffic between three app servers, comes back, and a path is cut
//! silently. App servers are in-test `Cluster` handles of the real library; every message
//! carries a per-pair sequence number, so a loss, a duplicate or a reordering shows.
//!
//! The `acms` program is not built by this test: `cargo build --workspace --bins` first
//! (`scripts/test.sh` does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acms_appserver::{Cluster, Event, Events, LinkState, Outgoing, ServerId};
use acms_protocol::{Codec, Control, Frame, HubStatus, PROTOCOL_VERSION, PeerHello};
use acms_tests::http::request;
use acms_tests::process::{ADMIN_TOKEN, field_addr, program};
use acms_tests::{PATIENCE, user, wait_link};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::codec::Decoder;

/// App servers in every scenario.
const SERVERS: u32 = 3;

/// A free port on 127.0.0.1. The hubs of a cluster must know each other's addresses before
/// they start, and a restarted hub must come back on its own, so the port is chosen first.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A running `acms` process; killed when dropped.
struct HubProc {
    addr: SocketAddr,
    /// Its admin HTTP API.
    admin: SocketAddr,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl HubProc {
    /// Starts `acms` on `addr` with the cluster `peers`, and waits until it listens.
    async fn start(name: &str, addr: SocketAddr, peers: &[SocketAddr]) -> Self {
        Self::start_with(name, addr, peers, "").await
    }

    /// As [`Self::start`], with `toml` as its configuration file (the flags win over it).
    async fn start_with(name: &str, addr: SocketAddr, peers: &[SocketAddr], toml: &str) -> Self {
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        let mut command = Command::new(program("acms"));
        let config = tempfile::NamedTempFile::new().expect("a config file");
        if !toml.is_empty() {
            std::fs::write(config.path(), toml).expect("write the config file");
            command.arg("--config").arg(config.path());
        }
        let mut child = command
            .args(["--transfer", &addr.to_string(), "--peers", &peers.join(",")])
            .args(["--admin", "127.0.0.1:0"])
            .env("ACMS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .env_remove("ACMS_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start acms");
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let label = name.to_owned();
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("[{label}] {line}");
                let _ = tx.send(line);
            }
        });
        let admin = "127.0.0.1:0".parse().expect("an address");
        let mut hub = Self { addr, admin, child, lines };
        // Read at start; the file may go once the hub listens.
        let _config = config;
        let (mut transfer, mut admin) = (false, None);
        while !transfer || admin.is_none() {
            let line = hub.wait_line("").await;
            if line.contains("admin HTTP API listening") {
                admin = Some(field_addr(&line, "admin"));
            }
            transfer |= line.contains("accepting app servers");
        }
        hub.admin = admin.expect("the admin address");
        hub
    }

    /// Sends `signal` (`STOP`, `CONT`) to this process, by its id.
    async fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the hub is running");
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `GET path` on its admin API, as JSON.
    async fn get(&self, path: &str) -> serde_json::Value {
        let reply = request(self.admin, "GET", path, &[], None).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }

    /// Waits for a log line containing `text`.
    async fn wait_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(text) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("hub {} exited before logging {text:?}", self.addr),
                Err(_) => panic!("hub {} did not log {text:?} in time", self.addr),
            }
        }
    }

    /// SIGKILL: no FIN from the application, no goodbye.
    async fn kill(&mut self) {
        self.child.kill().await.expect("SIGKILL acms");
    }
}

/// Asks the hub at `addr` for its status as a peer hub would.
async fn status(addr: SocketAddr) -> Option<HubStatus> {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        // No secret on these hubs: a loopback peer is admitted without one.
        let hello = PeerHello { version: PROTOCOL_VERSION, nonce: None };
        let bytes = Frame::Control(Control::PeerHello(hello)).to_bytes(4096).ok()?;
        stream.write_all(&bytes).await.ok()?;
        let (mut buf, mut codec) = (BytesMut::new(), Codec::new(4096));
        loop {
            if let Some(raw) = codec.decode(&mut buf).ok()? {
                return match raw.decode().ok()? {
                    Frame::Control(Control::HubStatus(status)) => Some(status),
                    _ => None,
                };
            }
            if stream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
    };
    timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

/// Waits until the hub at `addr` reports `active` with `servers` app servers.
async fn wait_status(addr: SocketAddr, active: bool, servers: u32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = status(addr).await;
        if now.is_some_and(|now| now.active == active && now.servers == servers) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "hub {addr}: expected active={active} servers={servers}, last seen {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the receivers saw, shared with the test.
#[derive(Default)]
struct Tally {
    /// Highest sequence number received, by (from, to).
    last: Mutex<HashMap<(u32, u32), u64>>,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    undeliverable: AtomicU64,
    received: AtomicU64,
    /// Set by the test when it kills the primary: from then on, receivers note when their first
    /// message through `standby` arrived.
    kill: Mutex<Option<(Instant, String)>>,
    first_via_standby: Mutex<Vec<Duration>>,
}

impl Tally {
    fn record(&self, to: u32, event: Event) {
        match event {
            Event::Message { from, payload, .. } => {
                let from: u32 = from.as_str()[1..].parse().expect("user uN");
                let seq = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                let mut last = self.last.lock().unwrap();
                let last = last.entry((from, to)).or_default();
                if seq <= *last {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    if seq != *last + 1 {
                        self.gaps.fetch_add(1, Ordering::Relaxed);
                    }
                    *last = seq;
                    self.received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Event::Undeliverable { .. } => {
                self.undeliverable.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Three app servers, each with one user `u<id>`, sending to the other two at a steady rate.
struct Traffic {
    clusters: Vec<Cluster>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<HashMap<u32, u64>>>,
    receivers: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Traffic {
    /// Starts the servers on `hubs` (in that order), waits until all are registered, logs the
    /// users in, and starts sending `per_tick` messages to each other user every 10 ms.
    async fn start(hubs: &[SocketAddr], per_tick: u64) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut clusters = Vec::new();
        let mut receivers = Vec::new();
        for id in 0..SERVERS {
            let (cluster, events) = Cluster::builder(ServerId(id), "")
                .hubs(hubs.iter().map(ToString::to_string))
                .client_addr(format!("127.0.0.1:{}", 7000 + id))
                .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
                .start();
            wait_link(&cluster, LinkState::Connected).await;
            cluster.login(user(&format!("u{id}"))).await.expect("login");
            receivers.push(tokio::spawn(receive(id, cluster.clone(), events, tally.clone())));
            clusters.push(cluster);
        }
        for cluster in &clusters {
            timeout(PATIENCE, cluster.flush()).await.expect("flush in time").expect("flush");
        }
        let senders = (0..SERVERS)
            .map(|id| tokio::spawn(send(id, clusters[id as usize].clone(), per_tick, stop.clone())))
            .collect();
        Self { clusters, tally, stop, senders, receivers, started: Instant::now() }
    }

    /// Waits until every server has received `count` more messages than now.
    async fn wait_received(&self, more: u64) {
        let target = self.tally.received.load(Ordering::Relaxed) + more;
        acms_tests::eventually("traffic to flow", || {
            self.tally.received.load(Ordering::Relaxed) >= target
        })
        .await;
    }

    /// The hub each server is connected to.
    fn hubs(&self) -> Vec<Option<String>> {
        self.clusters.iter().map(Cluster::hub).collect()
    }

    /// Stops sending, waits until everything sent arrived, and checks it arrived once, in
    /// order. Returns the messages sent and the rate they were sent at.
    async fn finish(self) -> (u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut sent = HashMap::new();
        for (from, sender) in self.senders.into_iter().enumerate() {
            for (to, count) in sender.await.expect("sender task") {
                sent.insert((from as u32, to), count);
            }
        }
        let total: u64 = sent.values().sum();
        let tally = &self.tally;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let last = tally.last.lock().unwrap().clone();
            if sent.iter().all(|(pair, count)| last.get(pair).copied().unwrap_or(0) >= *count) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "messages lost: sent {sent:?}, last received {last:?}, gaps {}",
                tally.gaps.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (dup, gaps) =
            (tally.duplicates.load(Ordering::Relaxed), tally.gaps.load(Ordering::Relaxed));
        let undeliverable = tally.undeliverable.load(Ordering::Relaxed);
        let received = tally.received.load(Ordering::Relaxed);
        let rate = total as f64 / elapsed.as_secs_f64();
        println!(
            "sent {total} messages in {elapsed:.1?} ({rate:.0} msg/s); received {received}; lost {}; duplicated {dup}; out of order {gaps}; undeliverable {undeliverable}",
            total - received.min(total)
        );
        assert_eq!(received, total, "every message arrives once");
        assert_eq!((dup, gaps, undeliverable), (0, 0, 0), "no duplicate, gap or bounce");
        // Each receiver holds a handle of its cluster, so it would never see the end of events.
        for receiver in self.receivers {
            receiver.abort();
        }
        for cluster in self.clusters {
            cluster.close().await;
        }
        (total, rate)
    }
}

/// Sends `per_tick` messages from `u<id>` to each other user every 10 ms until `stop`; returns
/// how many went to each. A tick missed on a busy machine is caught up, so the rate holds on
/// average.
async fn send(
    id: u32,
    cluster: Cluster,
    per_tick: u64,
    stop: Arc<AtomicBool>,
) -> HashMap<u32, u64> {
    let from = user(&format!("u{id}"));
    let peers: Vec<u32> = (0..SERVERS).filter(|peer| *peer != id).collect();
    let mut sent: HashMap<u32, u64> = peers.iter().map(|peer| (*peer, 0)).collect();
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let mut batch = Vec::new();
        for peer in &peers {
            let to = user(&format!("u{peer}"));
            let count = sent.get_mut(peer).expect("peer");
            for _ in 0..per_tick {
                *count += 1;
                let mut payload = count.to_be_bytes().to_vec();
                payload.extend_from_slice(b"failover-payload");
                batch.push(Outgoing {
                    from: from.clone(),
                    to: to.clone(),
                    payload: Bytes::from(payload),
                });
            }
        }
        cluster.send_batch(batch).await.expect("send batch");
    }
    sent
}

/// Records every event of server `id`, and when the first message after the kill came through
/// the standby.
async fn receive(id: u32, cluster: Cluster, mut events: Events, tally: Arc<Tally>) {
    let mut noted = false;
    while let Some(batch) = events.recv_batch().await {
        let kill = if noted { None } else { tally.kill.lock().unwrap().clone() };
        if let Some((killed, standby)) = kill
            && cluster.hub().as_deref() == Some(standby.as_str())
        {
            tally.first_via_standby.lock().unwrap().push(killed.elapsed());
            noted = true;
        }
        for event in batch {
            tally.record(id, event);
        }
    }
}

/// A primary and a standby, each listing both (itself included), the primary started first.
async fn cluster_of_two() -> (HubProc, HubProc, Vec<SocketAddr>) {
    let addrs = vec![free_addr(), free_addr()];
    let primary = HubProc::start("primary", addrs[0], &addrs).await;
    wait_status(addrs[0], true, 0).await;
    let standby = HubProc::start("standby", addrs[1], &addrs).await;
    wait_status(addrs[1], false, 0).await;
    (primary, standby, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_fails_over_without_loss() {
    let (mut primary, _standby, addrs) = cluster_of_two().await;
    // 3 servers x 2 peers x 20 messages every 10 ms: 12,000 messages a second.
    let traffic = Traffic::start(&addrs, 20).await;
    let primary_addr = addrs[0].to_string();
    assert!(traffic.hubs().iter().all(|hub| hub.as_deref() == Some(primary_addr.as_str())));
    wait_status(addrs[0], true, SERVERS).await;
    traffic.wait_received(20_000).await;

    let standby_addr = addrs[1].to_string();
    *traffic.tally.kill.lock().unwrap() = Some((Instant::now(), standby_addr.clone()));
    let killed = Instant::now();
    primary.kill().await;
    acms_tests::eventually("every server on the standby", || {
        traffic.hubs().iter().all(|hub| hub.as_deref() == Some(standby_addr.as_str()))
    })
    .await;
    let all_moved = killed.elapsed();
    acms_tests::eventually("a delivery through the standby on every server", || {
        traffic.tally.first_via_standby.lock().unwrap().len() == SERVERS as usize
    })
    .await;
    let first = traffic.tally.first_via_standby.lock().unwrap().clone();
    println!(
        "failover: all {SERVERS} servers on the standby {all_moved:?} after SIGKILL; first delivery through it per server: {first:?}"
    );
    wait_status(addrs[1], true, SERVERS).await;
    // Keep the load on until it has run at least 5 s in all.
    let left = Duration::from_secs(6).saturating_sub(traffic.started.elapsed());
    traffic.wait_received(10_000).await;
    tokio::time::sleep(left).await;
    let (total, rate) = traffic.finish().await;
    assert!(total > 0 && rate > 0.0);
    let slowest = first.iter().max().copied().unwrap_or_default();
    assert!(slowest < Duration::from_secs(10), "failover took {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_primary_stays_standby_and_traffic_keeps_flowing() {
    let (mut primary, _standby, addrs) = cluster_of_two().await;
    // A lighter load than the kill test: 3,000 messages a second.
    let traffic = Traffic::start(&addrs, 5).await;
    traffic.wait_received(3_000).await;
    primary.kill().await;
    let standby_addr = addrs[1].to_string();
    acms_tests::eventually("every server on the standby", || {
        traffic.hubs().iter().all(|hub| hub.as_deref() == Some(standby_addr.as_str()))
    })
    .await;
    wait_status(addrs[1], true, SERVERS).await;

    let mut returned = HubProc::start("returned", addrs[0], &addrs).await;
    returned.wait_line("peer hub reachable").await;
    // It found the active hub and stays standby, with no server; the servers stay where they are.
    wait_status(addrs[0], false, 0).await;
    for _ in 0..3 {
        traffic.wait_received(3_000).await;
        assert_eq!(
            status(addrs[0]).await.map(|status| (status.active, status.servers)),
            Some((false, 0))
        );
        assert_eq!(
            status(addrs[1]).await.map(|status| (status.active, status.servers)),
            Some((true, SERVERS))
        );
        assert!(
            traffic.hubs().iter().all(|hub| hub.as_deref() == Some(standby_addr.as_str())),
            "servers on {:?}",
            traffic.hubs()
        );
    }
    traffic.finish().await;
}

/// Forwards connections to `target` until cut; a cut connection stays open and silent (no FIN,
/// no RST), as when a cable is pulled. Connections made after the cut are forwarded again.
struct SilentProxy {
    addr: SocketAddr,
    /// Connections numbered below this are cut.
    cut_below: Arc<AtomicU64>,
    next: Arc<AtomicU64>,
}

impl SilentProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut_below, next) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (cut, counter) = (cut_below.clone(), next.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let number = counter.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(target).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pipe(in_read, out_write, number, cut.clone()));
                tokio::spawn(pipe(out_read, in_write, number, cut.clone()));
            }
        });
        Self { addr, cut_below, next }
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        self.cut_below.store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    number: u64,
    cut_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buf).await else { return };
        if number < cut_below.load(Ordering::SeqCst) {
            // Hold both sockets open and forward nothing more.
            std::future::pending::<()>().await;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cut_is_noticed_by_keepalives() {
    let addr = free_addr();
    let mut hub = HubProc::start("hub", addr, &[]).await;
    let proxy = SilentProxy::start(addr).await;
    // Default keepalive: ping after 1 s idle, drop after 3 s without a byte from the hub.
    let (cluster, _events) = Cluster::builder(ServerId(1), proxy.addr.to_string())
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start();
    wait_link(&cluster, LinkState::Connected).await;
    cluster.login(user("quiet")).await.expect("login");
    timeout(PATIENCE, cluster.flush()).await.expect("flush in time").expect("flush");

    let mut link = cluster.link_state();
    link.borrow_and_update();
    proxy.cut();
    let cut = Instant::now();
    timeout(PATIENCE, link.wait_for(|state| *state != LinkState::Connected))
        .await
        .expect("the app server notices the cut")
        .expect("link state");
    let server_side = cut.elapsed();
    hub.wait_line("nothing received within keepalive_timeout").await;
    let hub_side = cut.elapsed();
    println!(
        "silent cut noticed by the app server after {server_side:?}, by the hub after {hub_side:?} (bound: keepalive_timeout = 3 s, plus the 1 s ping interval on the hub's side)"
    );
    // The path is whole again for new connections: the server comes back by itself.
    wait_link(&cluster, LinkState::Connected).await;
    cluster.close().await;
}

/// Sends a server's link-state changes from now on into a vector, to tell whether it moved.
fn moves(cluster: &Cluster) -> Arc<Mutex<Vec<LinkState>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut link = cluster.link_state();
    link.borrow_and_update();
    let record = seen.clone();
    tokio::spawn(async move {
        while link.changed().await.is_ok() {
            let state = *link.borrow_and_update();
            record.lock().unwrap().push(state);
        }
    });
    seen
}

/// A primary paused (SIGSTOP) long enough for its servers to move to the standby, then resumed
/// (SIGCONT): it must not count the registrations that died while it was paused, so the servers
/// stay on the standby (no move back, no flapping) and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_does_not_pull_its_servers_back() {
    // A server that tries the paused primary again waits out its handshake timeout (3 s) in the
    // primary's accept queue before it reaches the standby: a settle window longer than that
    // holds frames for its users meanwhile rather than returning them undeliverable.
    let addrs = vec![free_addr(), free_addr()];
    let settle = "[transfer]\nsettle = \"6s\"\n";
    let mut primary = HubProc::start_with("primary", addrs[0], &addrs, settle).await;
    wait_status(addrs[0], true, 0).await;
    let _standby = HubProc::start_with("standby", addrs[1], &addrs, settle).await;
    wait_status(addrs[1], false, 0).await;
    let traffic = Traffic::start(&addrs, 5).await;
    traffic.wait_received(3_000).await;
    primary.signal("STOP").await;
    let standby_addr = addrs[1].to_string();
    acms_tests::eventually("every server on the standby", || {
        traffic.hubs().iter().all(|hub| hub.as_deref() == Some(standby_addr.as_str()))
    })
    .await;
    wait_status(addrs[1], true, SERVERS).await;
    let moved: Vec<_> = traffic.clusters.iter().map(moves).collect();

    primary.signal("CONT").await;
    // The primary is heard from again, and finds the hub that took over.
    primary.wait_line("peer hub reachable").await;
    wait_status(addrs[0], false, 0).await;
    for _ in 0..4 {
        traffic.wait_received(3_000).await;
        assert_eq!(
            status(addrs[1]).await.map(|status| (status.active, status.servers)),
            Some((true, SERVERS)),
            "the standby keeps every server"
        );
        let hubs = traffic.hubs();
        assert!(hubs.iter().all(|hub| hub.as_deref() == Some(standby_addr.as_str())), "{hubs:?}");
    }
    let moved: Vec<Vec<LinkState>> =
        moved.iter().map(|seen| seen.lock().unwrap().clone()).collect();
    assert!(moved.iter().all(Vec::is_empty), "servers moved after the primary resumed: {moved:?}");
    traffic.finish().await;
}

/// A standby's admin API says it is a standby and names the active hub; the active hub says it
/// is active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_says_so_and_names_the_active_hub() {
    let (primary, standby, addrs) = cluster_of_two().await;
    let active = addrs[0].to_string();
    // A standby from its start, it names the active hub once it has asked it.
    let deadline = Instant::now() + PATIENCE;
    let hub = loop {
        let hub = standby.get("/api/hub").await;
        if !hub["active_hub"].is_null() || Instant::now() > deadline {
            break hub;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(hub["role"], "standby", "{hub}");
    assert_eq!(hub["active_hub"], active.as_str(), "{hub}");
    let summary = standby.get("/api/summary").await;
    assert_eq!(
        (summary["role"].as_str(), summary["active_hub"].as_str()),
        (Some("standby"), Some(active.as_str())),
        "{summary}"
    );
    let hub = primary.get("/api/hub").await;
    assert_eq!(
        (hub["role"].as_str(), hub["active_hub"].as_str()),
        (Some("active"), Some(active.as_str())),
        "{hub}"
    );
    let peers = hub["peers"].as_array().expect("a list of peers");
    assert_eq!(peers.len(), 2, "{hub}");
    let metrics = request(standby.admin, "GET", "/metrics", &[], None).await;
    assert!(metrics.body.contains("acms_hub_active 0"), "{}", metrics.body);
    let metrics = request(primary.admin, "GET", "/metrics", &[], None).await;
    assert!(metrics.body.contains("acms_hub_active 1"), "{}", metrics.body);
}

/// Accepts connections for `target` but closes each at once until opened, then forwards them:
/// holds an app server back from a hub for as long as a test needs.
struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
}

impl Gate {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let addr = listener.local_addr().expect("gate addr");
        let open = Arc::new(AtomicBool::new(false));
        let is_open = open.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let never = Arc::new(AtomicU64::new(0));
                tokio::spawn(pipe(in_read, out_write, 0, never.clone()));
                tokio::spawn(pipe(out_read, in_write, 0, never));
            }
        });
        Self { addr, open }
    }
}

/// The next presence event of `events`, skipping others.
async fn next_presence(events: &mut Events) -> (String, Option<ServerId>) {
    loop {
        let event = timeout(PATIENCE, events.recv()).await.expect("an event in time");
        if let Some(Event::Presence { user, server, .. }) = event {
            return (user.as_str().to_owned(), server);
        }
    }
}

/// A watcher whose server reaches the new hub before the watched user's server does hears no
/// false `offline` for that user: bob's server is only moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_hears_no_false_offline_across_a_failover() {
    let (mut primary, _standby, addrs) = cluster_of_two().await;
    let start = |id: u32, hubs: Vec<String>| {
        Cluster::builder(ServerId(id), "")
            .hubs(hubs)
            .client_addr(format!("127.0.0.1:{}", 7100 + id))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .start()
    };
    let (watcher, mut events) = start(0, addrs.iter().map(ToString::to_string).collect());
    // Bob's server reaches the standby only through a gate the test opens.
    let gate = Gate::start(addrs[1]).await;
    let (bobs, _bob_events) = start(1, vec![addrs[0].to_string(), gate.addr.to_string()]);
    wait_link(&watcher, LinkState::Connected).await;
    wait_link(&bobs, LinkState::Connected).await;
    bobs.login(user("bob")).await.expect("login");
    timeout(PATIENCE, bobs.flush()).await.expect("flush in time").expect("flush");
    watcher.watch([user("bob")]).await.expect("watch");
    assert_eq!(next_presence(&mut events).await, ("bob".to_owned(), Some(ServerId(1))));

    primary.kill().await;
    let standby_addr = addrs[1].to_string();
    acms_tests::eventually("the watcher on the standby", || {
        watcher.hub().as_deref() == Some(standby_addr.as_str())
    })
    .await;
    // The new hub has the watcher's watch (a flush waits for the hub's answer to all before it)
    // before bob's server could register there.
    timeout(PATIENCE, watcher.flush()).await.expect("flush in time").expect("flush");
    gate.open.store(true, Ordering::SeqCst);
    let gate_addr = gate.addr.to_string();
    acms_tests::eventually("bob's server on the standby", || {
        bobs.hub().as_deref() == Some(gate_addr.as_str())
    })
    .await;
    let seen = next_presence(&mut events).await;
    assert_eq!(
        seen,
        ("bob".to_owned(), Some(ServerId(1))),
        "bob is reported offline while his server moves"
    );
    watcher.close().await;
    bobs.close().await;
}

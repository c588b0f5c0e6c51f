//! The cross-hub case: a three-node NATS cluster with JetStream and two `acms` hubs on it as
//! their backplane (`in_order`; hub A's URL list starting at node 0, hub B's at node 1, or
//! both at node 0 with `--hubs-on one-node`), started fresh for
//! each measurement; [`Target`], what a measurement's workers connect to (one broker, or the
//! two hubs); and the key-value login step.
//!
//! Before a sender starts, hub A must route to the receiver's users: the orchestrator asks hub
//! A's admin API (`GET /api/users/{id}`) until it locates the receiver's last user. The hub
//! writes the directory to the key-value store one key at a time in login order and its replica
//! follows the store's watch in that order, so the last user located means every one is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::broker::{self, Broker, NatsNode, RssSampler};
use crate::child::Worker;
use crate::results::{
    BrokerUsage, HUB_A, HUB_B, KvLoginRun, NATS_CLUSTER, PartUsage, Settings, System,
};
use crate::sys;
use crate::wire::{self, ScaleReady};

/// Nodes of the NATS cluster: three, so that the key-value buckets get three replicas as in a
/// deployment that survives the loss of a node.
const NODES: usize = 3;

/// How long the NATS cluster may take to route its nodes and elect a JetStream leader.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a hub's admin API or a node's monitoring port is asked while waiting. The waits
/// are for events only these endpoints show; 10 ms keeps the figures' resolution well below
/// the seconds they measure.
const POLL: Duration = Duration::from_millis(10);

/// A three-node NATS cluster and two hubs on it; everything killed on drop, the store removed.
#[derive(Debug)]
pub struct CrossHub {
    /// Hub A (the senders' side), then hub B (the receivers').
    hubs: Vec<Broker>,
    admins: [SocketAddr; 2],
    nodes: Vec<Broker>,
    store: PathBuf,
}

/// Which hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The sending app servers' hub (and the round-trip client's).
    A,
    /// The receiving app servers' hub (and the echo's).
    B,
}

impl CrossHub {
    /// Starts the cluster, waits until it is routed and JetStream has a leader, then starts hub
    /// A and hub B on it. Logs go to `logs/<label>-*.log`. A port picked free may be taken by
    /// another socket before its process binds it: what did not start is stopped and started
    /// again on fresh ports, up to three times.
    pub fn start(
        settings: &Settings,
        config: &Path,
        logs: &Path,
        label: &str,
    ) -> anyhow::Result<Self> {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::start_once(settings, config, logs, label) {
                Ok(cluster) => return Ok(cluster),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        anyhow::bail!("the cross-hub cluster did not start in 3 tries: {failures:?}")
    }

    fn start_once(
        settings: &Settings,
        config: &Path,
        logs: &Path,
        label: &str,
    ) -> anyhow::Result<Self> {
        let store = std::env::temp_dir().join(format!("acms-bench-{}-{label}", std::process::id()));
        let mut cluster =
            Self { hubs: Vec::new(), admins: [unspecified(); 2], nodes: Vec::new(), store };
        let routes: Vec<u16> =
            (0..NODES).map(|_| broker::free_port()).collect::<anyhow::Result<_>>()?;
        let mut specs = Vec::new();
        for (index, &route) in routes.iter().enumerate() {
            specs.push(NatsNode {
                name: format!("n{index}"),
                port: broker::free_port()?,
                monitor: broker::free_port()?,
                route,
                routes: routes.iter().copied().filter(|&r| r != route).collect(),
                store: cluster.store.join(format!("n{index}")),
            });
        }
        for spec in &specs {
            let log = logs.join(format!("{label}-nats-{}.log", spec.name));
            cluster.nodes.push(Broker::start_nats_node(&settings.nats_bin, config, &log, spec)?);
        }
        wait_formed(&specs)?;
        let urls_from = |first: usize| -> String {
            (0..NODES)
                .map(|i| format!("nats://127.0.0.1:{}", specs[(first + i) % NODES].port))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Each hub uses the first node of its list that answers.
        let hub_config = cluster.store.join("acms.toml");
        std::fs::create_dir_all(&cluster.store)?;
        std::fs::write(&hub_config, "[backplane]\nin_order = true\n")?;
        let hub_config = hub_config.display().to_string();
        let first_nodes = settings.hubs_on.first_nodes();
        for (side, name) in [(Side::A, "a"), (Side::B, "b")] {
            let admin = broker::free_port()?;
            let log = logs.join(format!("{label}-hub-{name}.log"));
            let urls = urls_from(first_nodes[side.index()]);
            let args = ["--backplane", &urls, "--config", &hub_config];
            let hub = Broker::start_acms_with(&settings.acms_bin, 0, &log, admin, &args)?;
            cluster.admins[side.index()] = SocketAddr::from(([127, 0, 0, 1], admin));
            cluster.hubs.push(hub);
        }
        Ok(cluster)
    }

    /// The hub on `side`.
    pub fn hub(&self, side: Side) -> &Broker {
        &self.hubs[side.index()]
    }

    /// CPU time so far of hub A, hub B and the NATS nodes added up.
    pub fn cpu(&self) -> anyhow::Result<[Duration; 3]> {
        let mut nats = Duration::ZERO;
        for node in &self.nodes {
            nats += node.cpu()?;
        }
        Ok([self.hubs[0].cpu()?, self.hubs[1].cpu()?, nats])
    }

    /// Waits until the hub on `side` locates `user` (its replica routes to them), or fails
    /// after `timeout`.
    pub fn await_located(
        &mut self,
        side: Side,
        user: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let path = format!("/api/users/{user}");
        loop {
            let located = get_json(self.admins[side.index()], &path)
                .is_some_and(|user| user["server"].as_u64().is_some());
            if located {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!("hub {side:?} did not locate {user} within {timeout:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the hubs are connected to different NATS nodes, from the client port each hub's
    /// log names (`connected successfully server=PORT`).
    pub fn routed(&self) -> Option<bool> {
        let port = |hub: &Broker| -> Option<String> {
            let log = std::fs::read_to_string(hub.log_path()).ok()?;
            let line = log.lines().find(|line| line.contains("connected successfully"))?;
            let at = line.find("server=")? + "server=".len();
            Some(line[at..].split_whitespace().next()?.to_owned())
        };
        Some(port(&self.hubs[0])? != port(&self.hubs[1])?)
    }

    /// Fails with a log's tail if a hub or a node has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in self.hubs.iter_mut().chain(&mut self.nodes) {
            process.check_alive()?;
        }
        Ok(())
    }
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

impl Drop for CrossHub {
    fn drop(&mut self) {
        // Hubs first, so they do not log the cluster's death; then the nodes, then their store.
        self.hubs.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Waits until every node has routes to the others and JetStream has a meta leader.
fn wait_formed(nodes: &[NatsNode]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLUSTER_TIMEOUT;
    for node in nodes {
        let monitor = SocketAddr::from(([127, 0, 0, 1], node.monitor));
        loop {
            let routed = get_json(monitor, "/routez")
                .is_some_and(|r| r["num_routes"].as_u64() >= Some(nodes.len() as u64 - 1));
            let led = get_json(monitor, "/jsz").is_some_and(|j| {
                j["meta_cluster"]["leader"].as_str().is_some_and(|leader| !leader.is_empty())
            });
            if routed && led {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the NATS cluster did not form within {CLUSTER_TIMEOUT:?} (node {})",
                    node.name
                );
            }
            std::thread::sleep(POLL * 10);
        }
    }
    Ok(())
}

/// `GET path` over HTTP/1.0 as JSON; `None` if nothing (valid) answers within a second.
fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = Vec::new();
    // Answers here are small; the cap keeps a confused peer from growing memory.
    stream.take(1 << 20).read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let body = reply.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// What a measurement's workers connect to.
#[derive(Debug)]
pub enum Target {
    /// One broker: the receivers and senders on it.
    One(Broker),
    /// Two hubs on a NATS cluster: receivers (and the echo) on hub B, senders (and the
    /// round-trip client) on hub A.
    Two(CrossHub),
}

impl Target {
    /// Where the receiving workers (and the echo) connect.
    pub fn recv_url(&self) -> &str {
        match self {
            Target::One(broker) => &broker.url,
            Target::Two(cluster) => &cluster.hub(Side::B).url,
        }
    }

    /// Where the sending workers (and the round-trip client) connect.
    pub fn send_url(&self) -> &str {
        match self {
            Target::One(broker) => &broker.url,
            Target::Two(cluster) => &cluster.hub(Side::A).url,
        }
    }

    /// Samples the RSS of the broker, or of hub A.
    pub fn sample_rss(&self) -> RssSampler {
        match self {
            Target::One(broker) => broker.sample_rss(),
            Target::Two(cluster) => cluster.hub(Side::A).sample_rss(),
        }
    }

    /// CPU so far: the broker's; or hub A's, hub B's, the NATS cluster's.
    pub fn cpu(&self) -> anyhow::Result<Vec<Duration>> {
        Ok(match self {
            Target::One(broker) => vec![broker.cpu()?],
            Target::Two(cluster) => cluster.cpu()?.to_vec(),
        })
    }

    /// Waits until the hub on `side` locates `user`; at once on one broker.
    pub fn await_located(
        &mut self,
        side: Side,
        user: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        match self {
            Target::One(_) => Ok(()),
            Target::Two(cluster) => cluster.await_located(side, user, timeout),
        }
    }

    /// Fails if a process of the target has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Target::One(broker) => broker.check_alive(),
            Target::Two(cluster) => cluster.check_alive(),
        }
    }

    /// The figures of a window that started at `cpu0` and lasted `window_s`, per `count`
    /// messages (or round trips). Cross-hub: the CPU is both hubs', the NATS cluster's beside
    /// it in `parts`; the peak RSS is the larger hub's.
    pub fn usage(
        &self,
        cpu0: &[Duration],
        window_s: f64,
        count: f64,
        rss: broker::RssSamples,
    ) -> anyhow::Result<BrokerUsage> {
        let spent: Vec<f64> = self
            .cpu()?
            .iter()
            .zip(cpu0)
            .map(|(now, then)| now.saturating_sub(*then).as_secs_f64())
            .collect();
        let per_msg = |cpu_s: f64| if count > 0.0 { cpu_s * 1e6 / count } else { 0.0 };
        let (cpu_s, peak_rss_kib, parts) = match self {
            Target::One(broker) => (spent[0], broker.peak_rss_kib()?, Vec::new()),
            Target::Two(cluster) => {
                let parts = [HUB_A, HUB_B, NATS_CLUSTER]
                    .iter()
                    .zip(&spent)
                    .map(|(name, &cpu_s)| PartUsage {
                        name: (*name).to_owned(),
                        cpu_s,
                        cpu_us_per_msg: per_msg(cpu_s),
                    })
                    .collect();
                let peak =
                    cluster.hub(Side::A).peak_rss_kib()?.max(cluster.hub(Side::B).peak_rss_kib()?);
                (spent[0] + spent[1], peak, parts)
            }
        };
        Ok(BrokerUsage {
            window_s,
            cpu_s,
            cores: cpu_s / window_s,
            cpu_us_per_msg: per_msg(cpu_s),
            peak_rss_kib,
            rss,
            parts,
            routed: match self {
                Target::One(_) => None,
                Target::Two(cluster) => cluster.routed(),
            },
        })
    }
}

/// Starts the target of `system` for one measurement.
pub fn start(
    settings: &Settings,
    nats_config: Option<&Path>,
    logs: &Path,
    system: System,
    label: &str,
) -> anyhow::Result<Target> {
    let log = logs.join(format!("{label}-broker.log"));
    let config = || nats_config.context("no nats config");
    Ok(match system {
        System::Acms => Target::One(Broker::start_acms(&settings.acms_bin, 0, &log)?),
        System::Nats => Target::One(Broker::start_nats(&settings.nats_bin, config()?, &log)?),
        System::CrossHub => Target::Two(CrossHub::start(settings, config()?, logs, label)?),
    })
}

/// The key-value login step: `users` logged in on hub B by one app server, timed until hub A's
/// replica holds them all, with every process's CPU over that time and hub A's RSS growth.
pub fn kv_logins(
    settings: &Settings,
    nats_config: &Path,
    logs: &Path,
    users: u64,
) -> anyhow::Result<KvLoginRun> {
    let mut cluster = CrossHub::start(settings, nats_config, logs, "kv-logins")?;
    let rss_before = cluster.hub(Side::A).rss_kib()?;
    let cpu0 = cluster.cpu()?;
    let spawned_ns = sys::unix_ns();
    let args: Vec<String> = [
        "acms-scale",
        "--addr",
        &cluster.hub(Side::B).url,
        "--server-id",
        "100",
        "--users",
        &users.to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mut worker = Worker::spawn("kv-logins-as", &args, logs)?;
    // Generous: a thousand logins a second would be slow.
    let timeout = Duration::from_secs(60) + Duration::from_millis(users);
    let last = wire::user_name(users.saturating_sub(1));
    cluster.await_located(Side::A, &last, timeout)?;
    let located_ns = sys::unix_ns();
    let cpu = cluster.cpu()?;
    let ready: ScaleReady = worker.wait_for(wire::READY, timeout)?;
    // Sampled users across the range, as a check of the write-order argument.
    for i in [0, users / 3, users / 2, users * 2 / 3] {
        cluster.await_located(Side::A, &wire::user_name(i), Duration::from_secs(5))?;
    }
    let rss_after = cluster.hub(Side::A).rss_kib()?;
    let replica_s = sys::secs_between(spawned_ns, located_ns);
    let spent = |i: usize| cpu[i].saturating_sub(cpu0[i]).as_secs_f64();
    Ok(KvLoginRun {
        error: None,
        users,
        login_s: sys::secs_between(spawned_ns, ready.done_ns),
        replica_s,
        logins_per_s: users as f64 / replica_s,
        hub_a_cpu_s: spent(0),
        hub_b_cpu_s: spent(1),
        nats_cpu_s: spent(2),
        hub_a_rss_before_kib: rss_before,
        hub_a_rss_after_kib: rss_after,
        replica_bytes_per_user: rss_after.saturating_sub(rss_before) as f64 * 1024.0
            / users.max(1) as f64,
    })
}

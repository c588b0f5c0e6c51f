//! What a run measured, as `results.json` holds it: the resolved settings and every
//! throughput, round-trip, scale and key-value login measurement, failed ones included with
//! their error.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::broker::RssSamples;
use crate::wire::{RecvResult, RttResult, SendResult};

/// A broker under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// nats-server, core pub/sub.
    Nats,
    /// The ACMS hub.
    Acms,
    /// Two ACMS hubs on a three-node NATS cluster (`--backplane`): the sender's server on hub A,
    /// the receiver's on hub B.
    #[serde(rename = "cross-hub")]
    #[value(name = "cross-hub")]
    CrossHub,
}

impl System {
    /// Every system, in the order each round runs them.
    pub const ALL: [System; 3] = [System::Nats, System::Acms, System::CrossHub];

    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Nats => "nats",
            System::Acms => "acms",
            System::CrossHub => "cross-hub",
        }
    }

    /// The prefix of the worker roles: the cross-hub case runs the ACMS workers.
    pub fn roles(self) -> &'static str {
        match self {
            System::Nats => "nats",
            System::Acms | System::CrossHub => "acms",
        }
    }

    /// Whether it runs `acms`.
    pub fn is_acms(self) -> bool {
        matches!(self, System::Acms | System::CrossHub)
    }

    /// Whether it runs `nats-server`.
    pub fn is_nats(self) -> bool {
        matches!(self, System::Nats | System::CrossHub)
    }

    /// Display name.
    pub fn title(self) -> &'static str {
        match self {
            System::Nats => "NATS",
            System::Acms => "ACMS",
            System::CrossHub => "ACMS cross-hub",
        }
    }
}

/// How the NATS workers talk to nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NatsClient {
    /// The client protocol spoken over a plain TCP stream by [`crate::nats_raw`]: the sender
    /// writes its PUB commands in batches, the receiver parses MSG frames from large reads.
    Raw,
    /// The `async-nats` client library: one `publish` per message, one subscription per user.
    AsyncNats,
}

impl NatsClient {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NatsClient::Raw => "raw",
            NatsClient::AsyncNats => "async-nats",
        }
    }

    /// What results written before the choice existed used.
    fn legacy() -> Self {
        NatsClient::AsyncNats
    }
}

/// How the ACMS sending app server hands its messages to the library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AcmsSend {
    /// `Cluster::send_batch` with about `--batch-bytes` of frames per call.
    Batch,
    /// `Cluster::send_to_user`, one call per message.
    Single,
}

impl AcmsSend {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AcmsSend::Batch => "batch",
            AcmsSend::Single => "single",
        }
    }

    /// What results written before the choice existed used.
    fn legacy() -> Self {
        AcmsSend::Single
    }
}

/// Which NATS nodes the two hubs of the cross-hub case use (both with `in_order`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HubsOn {
    /// Hub A on node 0, hub B on node 1: a frame crosses the route between two NATS servers,
    /// as between hubs that each use a NATS server of their own.
    #[default]
    TwoNodes,
    /// Both hubs on node 0: a frame crosses one NATS server, as between hubs that list the
    /// same server first.
    OneNode,
}

impl HubsOn {
    /// The NATS node each hub's list starts at: hub A's, then hub B's.
    pub fn first_nodes(self) -> [usize; 2] {
        match self {
            HubsOn::TwoNodes => [0, 1],
            HubsOn::OneNode => [0, 0],
        }
    }
}

/// The batch size results written before the choice existed would have used.
fn legacy_batch_bytes() -> usize {
    crate::wire::DEFAULT_BATCH_BYTES
}

/// The settings a run used, with every default resolved.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// `--quick` was given.
    pub quick: bool,
    /// Messages per throughput run.
    pub n: u64,
    /// Rounds.
    pub rounds: u32,
    /// Users on the receiving server.
    pub users: u64,
    /// Systems measured, in run order.
    pub systems: Vec<System>,
    /// Payload sizes, bytes.
    pub sizes: Vec<usize>,
    /// Round trips measured per run.
    pub rtt_iterations: u64,
    /// Round trips before measuring.
    pub rtt_warmup: u64,
    /// Round-trip payload size, bytes.
    pub rtt_size: usize,
    /// Users of the scale step, if it runs.
    pub scale_users: Option<u64>,
    /// App servers of the scale step.
    pub scale_servers: u64,
    /// acms binary used.
    pub acms_bin: PathBuf,
    /// nats-server binary used.
    pub nats_bin: PathBuf,
    /// NATS client of the throughput runs.
    #[serde(default = "NatsClient::legacy")]
    pub nats_client: NatsClient,
    /// NATS client of the round trips.
    #[serde(default = "NatsClient::legacy")]
    pub nats_rtt_client: NatsClient,
    /// How the ACMS sender sends in the throughput runs.
    #[serde(default = "AcmsSend::legacy")]
    pub acms_send: AcmsSend,
    /// Bytes of frames per client write (NATS raw) or `send_batch` call (ACMS batch): each
    /// batch holds [`crate::wire::batch_msgs`] messages, the same count on both systems.
    #[serde(default = "legacy_batch_bytes")]
    pub batch_bytes: usize,
    /// Users of the key-value login step, if it runs.
    #[serde(default)]
    pub kv_logins: Option<u64>,
    /// The NATS nodes of the cross-hub case's hubs (results written before the choice existed
    /// had them on random nodes, read here as two).
    #[serde(default)]
    pub hubs_on: HubsOn,
}

impl Settings {
    /// Messages per client write or `send_batch` call at payload `size`.
    pub fn batch_msgs(&self, size: usize) -> usize {
        crate::wire::batch_msgs(size, self.batch_bytes)
    }

    /// The throughput write and read policy of `system`, in words.
    pub fn throughput_policy(&self, system: System) -> String {
        match (system, self.nats_client, self.acms_send) {
            (System::Nats, NatsClient::Raw, _) => format!(
                "raw protocol: PUB commands in ~{} KiB writes, MSG parsed from reads of >= 64 KiB",
                self.batch_bytes / 1024
            ),
            (System::Nats, NatsClient::AsyncNats, _) => {
                "async-nats: publish() per message, a subscription per user".to_owned()
            }
            (System::Acms | System::CrossHub, _, AcmsSend::Batch) => format!(
                "Cluster::send_batch of ~{} KiB of frames, Events::recv_batch",
                self.batch_bytes / 1024
            ),
            (System::Acms | System::CrossHub, _, AcmsSend::Single) => {
                "Cluster::send_to_user per message, Events::recv_batch".to_owned()
            }
        }
    }

    /// The round-trip client of `system`, in words.
    pub fn rtt_policy(&self, system: System) -> &'static str {
        match (system, self.nats_rtt_client) {
            (System::Nats, NatsClient::AsyncNats) => "async-nats request/reply",
            (System::Nats, NatsClient::Raw) => "raw protocol on client and echo: PUB with reply",
            (System::Acms, _) => "Cluster::send_to_user, Events::recv",
            (System::CrossHub, _) => match self.hubs_on {
                HubsOn::TwoNodes => {
                    "Cluster::send_to_user, Events::recv; client on hub A, echo on hub B; hubs on NATS nodes 0 and 1"
                }
                HubsOn::OneNode => {
                    "Cluster::send_to_user, Events::recv; client on hub A, echo on hub B; both hubs on NATS node 0"
                }
            },
        }
    }
}

/// Broker figures over one measured window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BrokerUsage {
    /// Wall seconds of the window (receiver ready to receiver done, or the whole rtt run).
    pub window_s: f64,
    /// CPU seconds (user + system) the broker used in the window (cross-hub: both hubs added
    /// up, the NATS cluster not included: see `parts`).
    pub cpu_s: f64,
    /// Cores' worth of CPU: `cpu_s / window_s`.
    pub cores: f64,
    /// CPU µs per message received (throughput) or per round trip (rtt).
    pub cpu_us_per_msg: f64,
    /// Peak RSS of the broker's life so far (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// RSS sampled every 100 ms over the window (cross-hub: hub A's, the sender's).
    pub rss: RssSamples,
    /// Cross-hub: each process group's share (hub A, hub B, the NATS cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartUsage>,
    /// Cross-hub: whether the two hubs' NATS connections were on different nodes, so every
    /// message also crossed a route between nodes (the NATS client picks a node of its list at
    /// random); `None` if a hub's log did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routed: Option<bool>,
}

/// The CPU of one process group of a cross-hub run over the measured window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PartUsage {
    /// `hub A`, `hub B` or `NATS cluster`.
    pub name: String,
    /// CPU seconds in the window.
    pub cpu_s: f64,
    /// CPU µs per message received (throughput) or per round trip (rtt).
    pub cpu_us_per_msg: f64,
}

/// Part names, shared by the runs and the report.
pub const HUB_A: &str = "hub A";
/// The receiving side's hub.
pub const HUB_B: &str = "hub B";
/// The three nats-server nodes added up.
pub const NATS_CLUSTER: &str = "NATS cluster";

impl BrokerUsage {
    /// CPU µs per message of the part `name`, if the run has it.
    pub fn part_us_per_msg(&self, name: &str) -> Option<f64> {
        self.parts.iter().find(|part| part.name == name).map(|part| part.cpu_us_per_msg)
    }
}

/// One throughput measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputRun {
    /// Broker.
    pub system: System,
    /// Payload size, bytes.
    pub size: usize,
    /// Round, from 1.
    pub round: u32,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// The receiver's measurement.
    pub recv: Option<RecvResult>,
    /// The sender's measurement.
    pub send: Option<SendResult>,
    /// The broker's.
    pub broker: Option<BrokerUsage>,
}

/// One round-trip measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RttRun {
    /// Broker.
    pub system: System,
    /// Round, from 1.
    pub round: u32,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// The client's measurement.
    pub rtt: Option<RttResult>,
    /// The broker's.
    pub broker: Option<BrokerUsage>,
}

/// The scale step: many users, then a hub restart.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScaleRun {
    /// Why the step failed, if it did.
    pub error: Option<String>,
    /// App servers.
    pub servers: u64,
    /// Users in all.
    pub users: u64,
    /// Seconds from starting the servers until the hub confirmed every login (the slowest).
    pub login_s: f64,
    /// Broker CPU seconds for the logins.
    pub login_cpu_s: f64,
    /// Hub RSS once every user is logged in, KiB.
    pub rss_kib: u64,
    /// Hub peak RSS over the logins, KiB.
    pub peak_rss_kib: u64,
    /// Seconds from the new hub listening until the last server had re-sent all its users.
    pub resync_s: f64,
    /// The same from the moment the old hub was killed (includes start-up and backoff).
    pub resync_from_kill_s: f64,
    /// Seconds from the new hub listening until the last server was `Connected` again.
    pub reconnect_s: f64,
    /// The restarted hub's RSS once resynced, KiB.
    pub rss_after_resync_kib: u64,
    /// The restarted hub's CPU seconds for the resync.
    pub resync_cpu_s: f64,
}

/// The key-value login step: users logged in on hub B from one app server, timed until hub A's
/// replica of the directory holds them all (the rate the shared directory takes logins at).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct KvLoginRun {
    /// Why the step failed, if it did.
    pub error: Option<String>,
    /// Users logged in.
    pub users: u64,
    /// Seconds from starting the app server until hub B confirmed its last login.
    pub login_s: f64,
    /// Seconds from starting the app server until hub A located the last user (its replica,
    /// fed by the key-value watch in write order, then holds every one).
    pub replica_s: f64,
    /// Users per second into hub A's replica: `users / replica_s`.
    pub logins_per_s: f64,
    /// CPU seconds over `replica_s`: hub A, hub B, the NATS cluster.
    pub hub_a_cpu_s: f64,
    /// Hub B's.
    pub hub_b_cpu_s: f64,
    /// The three NATS nodes' added up.
    pub nats_cpu_s: f64,
    /// Hub A's RSS before the logins and once its replica holds them, KiB.
    pub hub_a_rss_before_kib: u64,
    /// After.
    pub hub_a_rss_after_kib: u64,
    /// Hub A's RSS growth per user in its replica, bytes (it has no session of these users).
    pub replica_bytes_per_user: f64,
}

/// Everything a run measured: what `results.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When the run started, UTC.
    pub started_utc: String,
    /// Resolved settings.
    pub settings: Settings,
    /// `nats-server --version`, if NATS ran.
    pub nats_version: Option<String>,
    /// Cores of the machine.
    pub cores: usize,
    /// Clock ticks per second assumed for /proc CPU times.
    pub clock_ticks_per_s: u64,
    /// Throughput runs in the order they ran.
    pub throughput: Vec<ThroughputRun>,
    /// Round-trip runs in the order they ran.
    pub rtt: Vec<RttRun>,
    /// The scale step, if it ran.
    pub scale: Option<ScaleRun>,
    /// The key-value login step, if it ran.
    #[serde(default)]
    pub kv_logins: Option<KvLoginRun>,
}

impl Results {
    /// Problems that make the run a failure: failed runs and counts other than N.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for run in &self.throughput {
            let what = format!("{} {} B round {}", run.system.title(), run.size, run.round);
            match (&run.error, &run.recv) {
                (Some(error), _) => problems.push(format!("{what}: {error}")),
                (None, Some(recv)) if recv.count != self.settings.n => problems.push(format!(
                    "{what}: received {} of {} messages",
                    recv.count, self.settings.n
                )),
                _ => {}
            }
        }
        for run in &self.rtt {
            if let Some(error) = &run.error {
                problems.push(format!("{} rtt round {}: {error}", run.system.title(), run.round));
            }
        }
        if let Some(error) = self.scale.as_ref().and_then(|scale| scale.error.as_ref()) {
            problems.push(format!("scale step: {error}"));
        }
        if let Some(error) = self.kv_logins.as_ref().and_then(|kv| kv.error.as_ref()) {
            problems.push(format!("key-value login step: {error}"));
        }
        problems
    }
}

//! `acms-bench`: the ACMS hub against nats-server, side by side, on one machine.
//!
//! `acms-bench compare` is the orchestrator. For every measurement it starts a fresh broker
//! (`acms` or `nats-server`, on 127.0.0.1) and starts this same binary again in worker roles, so
//! that each message goes sender process -> broker process -> receiver process:
//!
//! - **throughput**: a receiver with U users online (NATS: one subscription per user), a sender
//!   sending N messages of one payload size to random users among them; measured at the
//!   receiver, with the sender's rate and the broker's CPU and RSS from `/proc`. Both systems
//!   get the same client policy: about 64 KiB of messages per client write (NATS: raw `PUB`
//!   commands, see `nats_raw`; ACMS: `Cluster::send_batch`), whole reads counted at the
//!   receiver (NATS: raw `MSG` parser; ACMS: `Events::recv_batch`);
//! - **round trip**: a client and an echo server, one message in flight (hdrhistogram), through
//!   the client libraries (async-nats request/reply; `Cluster::send_to_user`) by default;
//! - **scale** (ACMS only): 1,000,000 users from 10 app servers, then the hub killed and
//!   restarted on the same port, timed until every server has re-sent its users;
//! - **cross-hub** (`--systems ...,cross-hub`): the throughput and round trip again with two
//!   hubs on a three-node NATS cluster, the sender's server on hub A and the receiver's on hub
//!   B, and the **key-value login** step: users logged in on hub B, timed until hub A's replica
//!   of the directory holds them all.
//!
//! Configurations run interleaved (NATS, ACMS, NATS, ACMS, ...) for each round; the tool prints
//! a table of medians with min–max and the ACMS/NATS ratios, writes `results.json` and
//! `chart.png` into a results folder, and ends with one line
//! `ratio_64=R ratio_1k=R rtt_p50_ratio=R rtt_p99_ratio=R`. It exits non-zero if a worker
//! failed or a receiver got a count other than N. `acms-bench report DIR` prints a results
//! folder's table again and redraws its chart.
//!
//! # Layout
//! - `main`: the command line (clap): `compare` and the worker roles.
//! - `compare`: the orchestrator: settings, the interleaved runs, the scale step.
//! - `results`: what a run measured, as `results.json` holds it.
//! - `broker`: starting `acms` and `nats-server`, `/proc` CPU and RSS sampling.
//! - `crosshub`: the cross-hub case (a three-node NATS cluster with JetStream and two hubs on
//!   it), what each measurement connects to, and the key-value login step.
//! - `child`: worker processes spoken to by lines, with deadlines, killed on drop.
//! - `wire`: what workers print (`READY`, `RESULT`, `RESYNCED`) and what every role shares.
//! - `acms_roles`: receiver, sender, echo, rtt client and scale server on `acms_appserver`.
//! - `nats_raw`: receiver, sender, echo and rtt client speaking the NATS client protocol over
//!   a plain TCP stream (the default for throughput: see its module docs for why).
//! - `nats_roles`: receiver, sender, echo and rtt client on `async-nats` (the default for the
//!   round trip, and `--nats-client async-nats` for throughput).
//! - `report`: medians, the table, the summary line; `chart`: `chart.png` (plotters).
//! - `sys`: clocks and `/proc` readings.

mod acms_roles;
mod broker;
mod chart;
mod child;
mod compare;
mod crosshub;
mod nats_raw;
mod nats_roles;
mod report;
mod results;
mod sys;
mod wire;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::results::{AcmsSend, NatsClient};

/// Benchmark the ACMS hub against nats-server: throughput, round trip, scale.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Role,
}

/// `compare`, or a worker role that `compare` starts.
#[derive(Debug, Subcommand)]
enum Role {
    /// Run the whole comparison and report (the command to use).
    Compare(compare::CompareArgs),
    /// Print the table again and redraw chart.png from a results folder's results.json.
    Report(ReportArgs),
    /// Worker: receiving app server on ACMS.
    AcmsRecv(RecvArgs),
    /// Worker: sending app server on ACMS.
    AcmsSend(SendArgs),
    /// Worker: echo app server on ACMS.
    AcmsEcho(EchoArgs),
    /// Worker: round-trip client app server on ACMS.
    AcmsRtt(RttArgs),
    /// Worker: app server of the scale step on ACMS.
    AcmsScale(ScaleArgs),
    /// Worker: receiving client on NATS.
    NatsRecv(RecvArgs),
    /// Worker: sending client on NATS.
    NatsSend(SendArgs),
    /// Worker: echo client on NATS.
    NatsEcho(EchoArgs),
    /// Worker: round-trip client on NATS.
    NatsRtt(RttArgs),
}

/// Flags of `acms-bench report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A results folder written by `compare`.
    pub dir: std::path::PathBuf,
    /// TTF font for the chart's text.
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    pub font: std::path::PathBuf,
}

/// Flags of a receiving worker.
#[derive(Debug, Args)]
pub struct RecvArgs {
    /// Broker address: `HOST:PORT` of the hub, or the NATS URL.
    #[arg(long)]
    pub addr: String,
    /// App server id (ACMS).
    #[arg(long, default_value_t = 1)]
    pub server_id: u32,
    /// Users to log in (NATS: subjects to subscribe), `u0` to `u{users-1}`.
    #[arg(long)]
    pub users: u64,
    /// Messages to wait for.
    #[arg(long)]
    pub n: u64,
    /// NATS client driver.
    #[arg(long, value_enum, default_value_t = NatsClient::Raw)]
    pub client: NatsClient,
}

/// Flags of a sending worker.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Broker address: `HOST:PORT` of the hub, or the NATS URL.
    #[arg(long)]
    pub addr: String,
    /// App server id (ACMS).
    #[arg(long, default_value_t = 2)]
    pub server_id: u32,
    /// Users to pick recipients from, uniformly.
    #[arg(long)]
    pub users: u64,
    /// Messages to send.
    #[arg(long)]
    pub n: u64,
    /// Payload size, bytes.
    #[arg(long)]
    pub size: usize,
    /// Seed of the recipient sequence (the same seed gives both systems the same sequence).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// NATS client driver.
    #[arg(long, value_enum, default_value_t = NatsClient::Raw)]
    pub client: NatsClient,
    /// How ACMS sends.
    #[arg(long, value_enum, default_value_t = AcmsSend::Batch)]
    pub send: AcmsSend,
    /// Bytes of frames per batch (NATS raw writes, ACMS `send_batch` calls).
    #[arg(long, default_value_t = wire::DEFAULT_BATCH_BYTES)]
    pub batch_bytes: usize,
    /// ACMS: keep the connection after the flush until `DONE` on stdin (cross-hub: the flush
    /// means hub A published, not that hub B delivered).
    #[arg(long)]
    pub linger: bool,
    /// ACMS: log in the user `sender`, print `READY` and wait for `GO` on stdin before sending
    /// (cross-hub: until the receiver's hub routes back to this server).
    #[arg(long)]
    pub wait_go: bool,
}

/// Flags of an echo worker.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Broker address: `HOST:PORT` of the hub, or the NATS URL.
    #[arg(long)]
    pub addr: String,
    /// App server id (ACMS).
    #[arg(long, default_value_t = 3)]
    pub server_id: u32,
    /// NATS client driver.
    #[arg(long, value_enum, default_value_t = NatsClient::AsyncNats)]
    pub client: NatsClient,
}

/// Flags of a round-trip client worker.
#[derive(Debug, Args)]
pub struct RttArgs {
    /// Broker address: `HOST:PORT` of the hub, or the NATS URL.
    #[arg(long)]
    pub addr: String,
    /// App server id (ACMS).
    #[arg(long, default_value_t = 4)]
    pub server_id: u32,
    /// Round trips to measure.
    #[arg(long, default_value_t = 50_000)]
    pub iterations: u64,
    /// Round trips before measuring.
    #[arg(long, default_value_t = 1000)]
    pub warmup: u64,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// NATS client driver.
    #[arg(long, value_enum, default_value_t = NatsClient::AsyncNats)]
    pub client: NatsClient,
    /// ACMS: once logged in, print `READY` and wait for a `GO` line on stdin before the first
    /// trip (cross-hub: until the echo's hub routes back to this client).
    #[arg(long)]
    pub wait_go: bool,
}

/// Flags of a scale-step worker.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Hub address, `HOST:PORT`.
    #[arg(long)]
    pub addr: String,
    /// App server id.
    #[arg(long)]
    pub server_id: u32,
    /// Users to log in.
    #[arg(long)]
    pub users: u64,
    /// Number of the first user (`u{offset}`).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Role::Compare(args) => match compare::run(args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(err) => Err(err),
        },
        Role::Report(args) => compare::rereport(&args.dir, &args.font),
        role => {
            wire::init_worker_logs();
            match role {
                Role::Compare(_) | Role::Report(_) => unreachable!("handled above"),
                Role::AcmsRecv(args) => acms_roles::recv(args),
                Role::AcmsSend(args) => acms_roles::send(args),
                Role::AcmsEcho(args) => acms_roles::echo(args),
                Role::AcmsRtt(args) => acms_roles::rtt(args),
                Role::AcmsScale(args) => acms_roles::scale(args),
                Role::NatsRecv(args) => match args.client {
                    NatsClient::Raw => nats_raw::recv(args),
                    NatsClient::AsyncNats => nats_roles::recv(args),
                },
                Role::NatsSend(args) => match args.client {
                    NatsClient::Raw => nats_raw::send(args),
                    NatsClient::AsyncNats => nats_roles::send(args),
                },
                Role::NatsEcho(args) => match args.client {
                    NatsClient::Raw => nats_raw::echo(args),
                    NatsClient::AsyncNats => nats_roles::echo(args),
                },
                Role::NatsRtt(args) => match args.client {
                    NatsClient::Raw => nats_raw::rtt(args),
                    NatsClient::AsyncNats => nats_roles::rtt(args),
                },
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("acms-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

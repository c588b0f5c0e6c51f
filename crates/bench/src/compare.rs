//! The orchestrator: runs every configuration, interleaved, each on a fresh broker (or, for the
//! cross-hub case, a fresh NATS cluster and two hubs), with this binary started again for the
//! sending, receiving, echo and scale roles; then reports.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::broker::{self, Broker};
use crate::child::Worker;
use crate::crosshub::{self, Side, Target};
use crate::results::{
    AcmsSend, HubsOn, KvLoginRun, NatsClient, Results, RttRun, ScaleRun, Settings, System,
    ThroughputRun,
};
use crate::sys;
use crate::wire::{self, RecvResult, RttResult, ScaleReady, ScaleResynced, SendResult};

/// Flags of `acms-bench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Shortened run: N = 200,000, 3 rounds, 10,000 round trips, no scale step.
    #[arg(long)]
    pub quick: bool,
    /// Messages per throughput run [default: 2,000,000; 200,000 with --quick].
    #[arg(long)]
    pub n: Option<u64>,
    /// Times each configuration runs, interleaved [default: 5; 3 with --quick].
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Users online on the receiving server (NATS: subscriptions).
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Folder for results.json, chart.png and logs [default: bench/results/<UTC timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Systems to measure, comma-separated: `acms` (one hub), `nats` (one nats-server),
    /// `cross-hub` (two hubs on a three-node NATS cluster, sender on one, receiver on the other).
    #[arg(long, value_delimiter = ',', default_value = "acms,nats")]
    pub systems: Vec<System>,
    /// Payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,16384")]
    pub sizes: Vec<usize>,
    /// Round trips measured per run [default: 50,000; 10,000 with --quick].
    #[arg(long)]
    pub rtt_iterations: Option<u64>,
    /// Payload size of the round trips, bytes.
    #[arg(long, default_value_t = 64)]
    pub rtt_size: usize,
    /// Users of the scale step (0 skips it; --quick skips it too).
    #[arg(long, default_value_t = 1_000_000)]
    pub scale_users: u64,
    /// App servers the scale step's users are spread over.
    #[arg(long, default_value_t = 10)]
    pub scale_servers: u64,
    /// Users of the key-value login step, run once after the rounds when `cross-hub` is among
    /// the systems: logged in on hub B from one app server, timed until hub A's replica holds
    /// them all (0 skips it).
    #[arg(long, default_value_t = 50_000)]
    pub kv_logins: u64,
    /// The acms binary [default: `acms` beside this program].
    #[arg(long)]
    pub acms_bin: Option<PathBuf>,
    /// The nats-server binary (looked up in PATH, then /usr/sbin).
    #[arg(long, default_value = "nats-server")]
    pub nats_bin: PathBuf,
    /// TTF font for the chart's text (the chart is skipped, with a warning, without it).
    #[arg(long, default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")]
    pub font: PathBuf,
    /// NATS client of the throughput runs: `raw` writes PUB commands in batches of
    /// --batch-bytes and parses MSG frames from large reads; `async-nats` publishes one message
    /// per call and receives through one subscription per user.
    #[arg(long, value_enum, default_value_t = NatsClient::Raw)]
    pub nats_client: NatsClient,
    /// NATS client of the round trips (client and echo).
    #[arg(long, value_enum, default_value_t = NatsClient::AsyncNats)]
    pub nats_rtt_client: NatsClient,
    /// How the ACMS sender sends: `batch` (Cluster::send_batch, --batch-bytes of frames a call)
    /// or `single` (Cluster::send_to_user per message).
    #[arg(long, value_enum, default_value_t = AcmsSend::Batch)]
    pub acms_send: AcmsSend,
    /// Bytes of frames per client write (NATS raw) or send_batch call (ACMS batch); both send
    /// the same number of messages per batch, batch-bytes / (payload + 30).
    #[arg(long, default_value_t = wire::DEFAULT_BATCH_BYTES)]
    pub batch_bytes: usize,
    /// The NATS nodes of the cross-hub case's two hubs: `two-nodes` (hub A on node 0, hub B on
    /// node 1: frames cross a route between NATS servers) or `one-node` (both on node 0).
    #[arg(long, value_enum, default_value_t = HubsOn::TwoNodes)]
    pub hubs_on: HubsOn,
}

/// What one measurement needs to know.
struct Bench {
    settings: Settings,
    out: PathBuf,
    logs: PathBuf,
    nats_config: Option<PathBuf>,
}

impl Bench {
    fn start_broker(&self, system: System, label: &str) -> anyhow::Result<Broker> {
        match crosshub::start(
            &self.settings,
            self.nats_config.as_deref(),
            &self.logs,
            system,
            label,
        )? {
            Target::One(broker) => Ok(broker),
            Target::Two(_) => bail!("{} is not one broker", system.title()),
        }
    }

    fn start_target(&self, system: System, label: &str) -> anyhow::Result<Target> {
        crosshub::start(&self.settings, self.nats_config.as_deref(), &self.logs, system, label)
    }

    fn worker(&self, label: &str, args: Vec<String>) -> anyhow::Result<Worker> {
        Worker::spawn(label, &args, &self.logs)
    }
}

/// Runs `acms-bench compare`. Returns whether every measurement succeeded with every message
/// received.
pub fn run(args: CompareArgs) -> anyhow::Result<bool> {
    let started_utc = sys::utc_stamp();
    let settings = resolve(&args)?;
    let nats_version = if settings.systems.iter().any(|system| system.is_nats()) {
        Some(version_of(&settings.nats_bin)?)
    } else {
        None
    };
    let out = args.out.clone().unwrap_or_else(|| Path::new("bench/results").join(&started_utc));
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let nats_config = match nats_version {
        Some(_) => Some(broker::write_nats_config(&out)?),
        None => None,
    };
    eprintln!(
        "acms-bench: N={} users={} rounds={} sizes={:?} rtt={}x{} B systems={} -> {}",
        settings.n,
        settings.users,
        settings.rounds,
        settings.sizes,
        settings.rtt_iterations,
        settings.rtt_size,
        settings.systems.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        out.display()
    );
    if let Some(version) = &nats_version {
        // The cross-hub figures depend on it: NATS spends a third of that path's CPU.
        eprintln!("acms-bench: {version} ({})", settings.nats_bin.display());
    }
    for &system in &settings.systems {
        eprintln!(
            "acms-bench: {} throughput: {}; rtt: {}",
            system.title(),
            settings.throughput_policy(system),
            settings.rtt_policy(system)
        );
    }
    let cx = Bench { settings: settings.clone(), out: out.clone(), logs, nats_config };
    let mut results = Results {
        started_utc,
        settings,
        nats_version,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        clock_ticks_per_s: sys::CLOCK_TICKS_PER_SEC,
        throughput: Vec::new(),
        rtt: Vec::new(),
        scale: None,
        kv_logins: None,
    };

    let rounds = cx.settings.rounds;
    for round in 1..=rounds {
        for &size in &cx.settings.sizes {
            for &system in &cx.settings.systems {
                let run = throughput(&cx, system, size, round);
                report_progress_throughput(&run, rounds, cx.settings.n);
                results.throughput.push(run);
            }
        }
        for &system in &cx.settings.systems {
            let run = rtt(&cx, system, round);
            report_progress_rtt(&run, rounds);
            results.rtt.push(run);
        }
    }
    if let Some(users) = cx.settings.scale_users {
        eprintln!("scale: {users} users from {} app servers", cx.settings.scale_servers);
        let scale = scale(&cx, users).unwrap_or_else(|err| ScaleRun {
            error: Some(format!("{err:#}")),
            ..Default::default()
        });
        eprintln!(
            "scale: login {:.2} s, hub RSS {:.0} MB, resync {:.2} s{}",
            scale.login_s,
            scale.rss_kib as f64 / 1024.0,
            scale.resync_s,
            scale.error.as_deref().map(|e| format!(" FAILED: {e}")).unwrap_or_default()
        );
        results.scale = Some(scale);
    }
    if let (Some(users), Some(config)) = (cx.settings.kv_logins, cx.nats_config.as_deref()) {
        eprintln!("key-value logins: {users} users on hub B until hub A's replica holds them");
        let kv = crosshub::kv_logins(&cx.settings, config, &cx.logs, users).unwrap_or_else(|err| {
            KvLoginRun { error: Some(format!("{err:#}")), users, ..Default::default() }
        });
        eprintln!(
            "key-value logins: {:.0} logins/s ({:.2} s to hub A's replica, {:.2} s to hub B), \
             CPU s: hub A {:.2}, hub B {:.2}, NATS {:.2}; hub A replica {:.0} B/user{}",
            kv.logins_per_s,
            kv.replica_s,
            kv.login_s,
            kv.hub_a_cpu_s,
            kv.hub_b_cpu_s,
            kv.nats_cpu_s,
            kv.replica_bytes_per_user,
            kv.error.as_deref().map(|e| format!(" FAILED: {e}")).unwrap_or_default()
        );
        results.kv_logins = Some(kv);
    }

    let json_path = cx.out.join("results.json");
    let report = crate::report::Report::new(&results);
    let json = serde_json::json!({ "results": &results, "summary": &report });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    Ok(present(&results, &cx.out, &args.font))
}

/// Draws the chart, prints the table, the problems, the folder and the summary line (last);
/// returns whether there was no problem.
fn present(results: &Results, out: &Path, font: &Path) -> bool {
    let report = crate::report::Report::new(results);
    if let Err(err) = crate::chart::draw(results, &report, &out.join("chart.png"), font) {
        eprintln!("warning: no chart: {err:#}");
    }
    let problems = results.problems();
    println!("{}", report.table());
    for problem in &problems {
        println!("PROBLEM: {problem}");
    }
    println!("results: {}", out.display());
    println!("{}", report.summary_line());
    problems.is_empty()
}

/// `acms-bench report DIR`: the table and chart again, from `DIR/results.json`.
pub fn rereport(dir: &Path, font: &Path) -> anyhow::Result<()> {
    #[derive(Deserialize)]
    struct Saved {
        results: Results,
    }
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let saved: Saved =
        serde_json::from_str(&text).with_context(|| format!("bad {}", path.display()))?;
    present(&saved.results, dir, font);
    Ok(())
}

/// Settings with defaults resolved and binaries found.
fn resolve(args: &CompareArgs) -> anyhow::Result<Settings> {
    let systems: Vec<System> =
        System::ALL.into_iter().filter(|system| args.systems.contains(system)).collect();
    if systems.is_empty() {
        bail!("--systems names no system");
    }
    if args.sizes.is_empty() {
        bail!("--sizes names no size");
    }
    let acms_bin = match &args.acms_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("acms"),
    };
    // Results name the binary relative to where the run started: they get committed and shared.
    let acms_bin = std::env::current_dir()
        .ok()
        .and_then(|here| acms_bin.strip_prefix(here).ok().map(PathBuf::from))
        .unwrap_or(acms_bin);
    if systems.iter().any(|system| system.is_acms()) && !acms_bin.is_file() {
        bail!(
            "no acms binary at {} (build it: cargo build --release -p acms, or pass --acms-bin)",
            acms_bin.display()
        );
    }
    let rtt_iterations = args.rtt_iterations.unwrap_or(if args.quick { 10_000 } else { 50_000 });
    let scale_users = (!args.quick && args.scale_users > 0 && systems.contains(&System::Acms))
        .then_some(args.scale_users);
    let kv_logins =
        (args.kv_logins > 0 && systems.contains(&System::CrossHub)).then_some(args.kv_logins);
    Ok(Settings {
        quick: args.quick,
        n: args.n.unwrap_or(if args.quick { 200_000 } else { 2_000_000 }).max(1),
        rounds: args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1),
        users: args.users.max(1),
        systems,
        sizes: args.sizes.clone(),
        rtt_iterations: rtt_iterations.max(1),
        rtt_warmup: (rtt_iterations / 10).clamp(1, 1000),
        rtt_size: args.rtt_size,
        scale_users,
        scale_servers: args.scale_servers.max(1),
        acms_bin,
        nats_bin: find_nats(&args.nats_bin),
        nats_client: args.nats_client,
        nats_rtt_client: args.nats_rtt_client,
        acms_send: args.acms_send,
        batch_bytes: args.batch_bytes.max(1),
        kv_logins,
        hubs_on: args.hubs_on,
    })
}

/// `nats-server` from PATH, else from /usr/sbin (Debian puts it there, outside some PATHs).
fn find_nats(bin: &Path) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(bin);
    let in_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(bin).is_file()));
    if bin.components().count() == 1 && !in_path && sbin.is_file() { sbin } else { bin.to_owned() }
}

/// The first line of `BIN --version`.
fn version_of(bin: &Path) -> anyhow::Result<String> {
    let output = Command::new(bin).arg("--version").output().with_context(|| {
        format!("cannot run {} (install nats-server or pass --nats-bin)", bin.display())
    })?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Generous deadline for a throughput run's result: 30 s plus 10 µs and 5 ns a byte per
/// message (about a tenth of the rates seen on a 2-core machine).
fn result_timeout(n: u64, size: usize) -> Duration {
    Duration::from_secs(30) + Duration::from_nanos(n * (10_000 + size as u64 * 5))
}

/// Generous deadline for a worker to log its users in and say READY.
fn ready_timeout(users: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_micros(users * 100)
}

fn throughput(cx: &Bench, system: System, size: usize, round: u32) -> ThroughputRun {
    let mut run =
        ThroughputRun { system, size, round, error: None, recv: None, send: None, broker: None };
    if let Err(err) = measure_throughput(cx, &mut run) {
        run.error = Some(format!("{err:#}"));
    }
    run
}

/// sender -> broker -> receiver: N messages of `size` bytes to random users among U.
fn measure_throughput(cx: &Bench, run: &mut ThroughputRun) -> anyhow::Result<()> {
    let s = &cx.settings;
    let (system, size) = (run.system, run.size);
    let label = format!("r{}-{}-{}", run.round, system.name(), size);
    let mut target = cx.start_target(system, &label)?;
    let rss = target.sample_rss();
    let mut recv_args = strings([
        &format!("{}-recv", system.roles()),
        "--addr",
        target.recv_url(),
        "--server-id",
        "1",
        "--users",
        &s.users.to_string(),
        "--n",
        &s.n.to_string(),
    ]);
    if system == System::Nats {
        recv_args.extend(strings(["--client", s.nats_client.name()]));
    }
    let mut receiver = cx.worker(&format!("{label}-recv"), recv_args)?;
    let _: wire::Ready = receiver.wait_for(wire::READY, ready_timeout(s.users))?;
    // Cross-hub: hub A must route to every receiving user before the sender starts.
    let last = wire::user_name(s.users - 1);
    target.await_located(Side::A, &last, ready_timeout(s.users))?;

    let (cpu0, window) = (target.cpu()?, Instant::now());
    let mut send_args = strings([
        &format!("{}-send", system.roles()),
        "--addr",
        target.send_url(),
        "--server-id",
        "2",
        "--users",
        &s.users.to_string(),
        "--n",
        &s.n.to_string(),
        "--size",
        &size.to_string(),
        "--seed",
        &u64::from(run.round).to_string(),
        "--batch-bytes",
        &s.batch_bytes.to_string(),
    ]);
    match system {
        System::Nats => send_args.extend(strings(["--client", s.nats_client.name()])),
        System::Acms => send_args.extend(strings(["--send", s.acms_send.name()])),
        System::CrossHub => {
            send_args.extend(strings(["--send", s.acms_send.name(), "--linger", "--wait-go"]))
        }
    }
    let mut sender = cx.worker(&format!("{label}-send"), send_args)?;
    if system == System::CrossHub {
        // Hub B must route back to the sender (its acknowledgements) before the first message:
        // it locates the sender's user once it has the sender's server and hears hub A alive.
        let _: wire::Ready = sender.wait_for(wire::READY, ready_timeout(1))?;
        target.await_located(Side::B, "sender", ready_timeout(1))?;
        sender.send_line(wire::GO)?;
    }
    let timeout = result_timeout(s.n, size);
    let sent = sender.wait_for::<SendResult>(wire::RESULT, timeout);
    // Even if the sender failed, the receiver says how many messages did arrive. It may have
    // exited already, with everything received: its RESULT line is waiting then.
    let _ = receiver.send_line(wire::DONE);
    let recv_timeout = if sent.is_ok() { timeout } else { wire::IDLE_AFTER_DONE * 5 };
    let received = receiver.wait_for::<RecvResult>(wire::RESULT, recv_timeout);
    // A lingering sender (cross-hub) closes now.
    let _ = sender.send_line(wire::DONE);
    if let Ok(recv) = &received {
        run.recv = Some(recv.clone());
    }
    run.send = Some(sent?);
    let recv = received?;
    let window_s = window.elapsed().as_secs_f64();
    let rss = rss.stop();
    let usage = target.usage(&cpu0, window_s, recv.count as f64, rss)?;
    target.check_alive()?;
    run.broker = Some(usage);
    sender.finish(Duration::from_secs(30))?;
    receiver.finish(Duration::from_secs(30))?;
    Ok(())
}

fn rtt(cx: &Bench, system: System, round: u32) -> RttRun {
    let mut run = RttRun { system, round, error: None, rtt: None, broker: None };
    if let Err(err) = measure_rtt(cx, &mut run) {
        run.error = Some(format!("{err:#}"));
    }
    run
}

/// client -> broker -> echo -> broker -> client, one message in flight.
fn measure_rtt(cx: &Bench, run: &mut RttRun) -> anyhow::Result<()> {
    let s = &cx.settings;
    let system = run.system;
    let label = format!("r{}-{}-rtt", run.round, system.name());
    let mut target = cx.start_target(system, &label)?;
    let rss = target.sample_rss();
    let rtt_client = |mut args: Vec<String>| {
        if system == System::Nats {
            args.extend(strings(["--client", s.nats_rtt_client.name()]));
        }
        args
    };
    let mut echo = cx.worker(
        &format!("{label}-echo"),
        rtt_client(strings([
            &format!("{}-echo", system.roles()),
            "--addr",
            target.recv_url(),
            "--server-id",
            "3",
        ])),
    )?;
    let _: wire::Ready = echo.wait_for(wire::READY, ready_timeout(1))?;
    target.await_located(Side::A, "echo", ready_timeout(1))?;
    let (cpu0, window) = (target.cpu()?, Instant::now());
    let mut client_args = strings([
        &format!("{}-rtt", system.roles()),
        "--addr",
        target.send_url(),
        "--server-id",
        "4",
        "--iterations",
        &s.rtt_iterations.to_string(),
        "--warmup",
        &s.rtt_warmup.to_string(),
        "--size",
        &s.rtt_size.to_string(),
    ]);
    if system == System::CrossHub {
        client_args.push("--wait-go".to_owned());
    }
    let mut client = cx.worker(&format!("{label}-client"), rtt_client(client_args))?;
    if system == System::CrossHub {
        // The echo's hub must route back to the client before the first trip.
        let _: wire::Ready = client.wait_for(wire::READY, ready_timeout(1))?;
        target.await_located(Side::B, "client", ready_timeout(1))?;
        client.send_line(wire::GO)?;
    }
    // Even at 1 ms a round trip this is far off.
    let timeout = Duration::from_secs(60) + Duration::from_millis(s.rtt_iterations + s.rtt_warmup);
    let result: RttResult = client.wait_for(wire::RESULT, timeout)?;
    let window_s = window.elapsed().as_secs_f64();
    let rss = rss.stop();
    let trips = (s.rtt_iterations + s.rtt_warmup) as f64;
    let usage = target.usage(&cpu0, window_s, trips, rss)?;
    target.check_alive()?;
    run.broker = Some(usage);
    run.rtt = Some(result);
    client.finish(Duration::from_secs(30))?;
    Ok(())
}

/// Many users from many app servers; then the hub is killed and restarted on the same port.
fn scale(cx: &Bench, users: u64) -> anyhow::Result<ScaleRun> {
    let servers = cx.settings.scale_servers.min(users).max(1);
    let per_server = users.div_ceil(servers);
    let mut run = ScaleRun { servers, ..Default::default() };
    let broker = cx.start_broker(System::Acms, "scale")?;
    let port = broker.port;
    let cpu0 = broker.cpu()?;
    let spawned_ns = sys::unix_ns();
    let mut workers = Vec::new();
    let mut offset = 0;
    for i in 0..servers {
        let count = per_server.min(users - offset);
        workers.push(cx.worker(
            &format!("scale-as{i}"),
            strings([
                "acms-scale",
                "--addr",
                &broker.url,
                "--server-id",
                &(100 + i).to_string(),
                "--users",
                &count.to_string(),
                "--offset",
                &offset.to_string(),
            ]),
        )?);
        offset += count;
    }
    run.users = offset;
    let mut last_login_ns = spawned_ns;
    for worker in &mut workers {
        let ready: ScaleReady = worker.wait_for(wire::READY, ready_timeout(per_server * 10))?;
        last_login_ns = last_login_ns.max(ready.done_ns);
    }
    run.login_s = sys::secs_between(spawned_ns, last_login_ns);
    run.login_cpu_s = broker.cpu()?.saturating_sub(cpu0).as_secs_f64();
    run.rss_kib = broker.rss_kib()?;
    run.peak_rss_kib = broker.peak_rss_kib()?;

    broker.kill()?;
    let killed_ns = sys::unix_ns();
    let broker = Broker::start_acms(
        &cx.settings.acms_bin,
        port,
        &cx.logs.join("scale-restarted-broker.log"),
    )?;
    let listening_ns = sys::unix_ns();
    let cpu0 = broker.cpu()?;
    let (mut connected_ns, mut done_ns) = (listening_ns, listening_ns);
    for worker in &mut workers {
        let resynced: ScaleResynced =
            worker.wait_for(wire::RESYNCED, ready_timeout(per_server * 10))?;
        connected_ns = connected_ns.max(resynced.connected_ns);
        done_ns = done_ns.max(resynced.done_ns);
    }
    run.reconnect_s = sys::secs_between(listening_ns, connected_ns);
    run.resync_s = sys::secs_between(listening_ns, done_ns);
    run.resync_from_kill_s = sys::secs_between(killed_ns, done_ns);
    run.resync_cpu_s = broker.cpu()?.saturating_sub(cpu0).as_secs_f64();
    run.rss_after_resync_kib = broker.rss_kib()?;
    Ok(run)
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.into_iter().map(str::to_owned).collect()
}

fn report_progress_throughput(run: &ThroughputRun, rounds: u32, n: u64) {
    let head = format!("[round {}/{rounds}] {} {:>5} B", run.round, run.system.title(), run.size);
    match (&run.error, &run.recv, &run.send, &run.broker) {
        (None, Some(recv), Some(send), Some(broker)) => eprintln!(
            "{head}: {:>10.0} msg/s {:>8.1} MB/s | sender {:>10.0} msg/s | broker {:.3} µs/msg, \
             {:.2} cores, peak RSS {:.0} MB | received {}/{n}",
            recv.msg_per_s,
            recv.mb_per_s,
            send.msg_per_s,
            broker.cpu_us_per_msg,
            broker.cores,
            broker.peak_rss_kib as f64 / 1024.0,
            recv.count
        ),
        (error, recv, ..) => eprintln!(
            "{head}: FAILED (received {}/{n}): {}",
            recv.as_ref().map_or_else(|| "?".to_owned(), |recv| recv.count.to_string()),
            error.as_deref().unwrap_or("incomplete")
        ),
    }
}

fn report_progress_rtt(run: &RttRun, rounds: u32) {
    let head = format!("[round {}/{rounds}] {} rtt", run.round, run.system.title());
    match (&run.error, &run.rtt) {
        (None, Some(rtt)) => eprintln!(
            "{head}: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs",
            rtt.p50_us, rtt.p99_us, rtt.p999_us
        ),
        (error, _) => eprintln!("{head}: FAILED: {}", error.as_deref().unwrap_or("incomplete")),
    }
}

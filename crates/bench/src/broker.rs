//! The brokers under test, `acms` (alone or on a backplane) and `nats-server` (alone or as a node
//! of a cluster): started fresh on 127.0.0.1, watched through `/proc` (CPU time, RSS sampled
//! every 100 ms, peak RSS), killed on drop.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::child::log_tail;
use crate::sys;

/// How long a broker may take to say it is listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often RSS is sampled during a measurement.
const RSS_PERIOD: Duration = Duration::from_millis(100);

/// Limits written to the nats-server config: raised so that neither system is throttled by a
/// default the other lacks (ACMS queues up to 64 MiB per app server before its slow-consumer
/// rule; NATS's default is 64 MB and a 10 s write deadline).
const NATS_CONFIG: &str = "\
# Written by acms-bench: raise the slow-consumer limits so the run is not throttled.
max_payload: 1MB
max_pending: 256MB
write_deadline: \"60s\"
";

/// A broker process under test.
#[derive(Debug)]
pub struct Broker {
    child: Child,
    /// Where clients connect: `127.0.0.1:PORT` for ACMS, `nats://127.0.0.1:PORT` for NATS.
    pub url: String,
    /// The port it listens on.
    pub port: u16,
    log: PathBuf,
}

impl Broker {
    /// Starts `acms --transfer 127.0.0.1:PORT` (port 0: any free port) and waits for its
    /// `accepting app servers transfer=ADDR` log line.
    pub fn start_acms(bin: &Path, port: u16, log: &Path) -> anyhow::Result<Self> {
        Self::start_acms_with(bin, port, log, 0, &[])
    }

    /// [`Broker::start_acms`] with its admin API on `admin_port` (0: any) and `extra` flags
    /// (a backplane's `--backplane URLS --config FILE`).
    pub fn start_acms_with(
        bin: &Path,
        port: u16,
        log: &Path,
        admin_port: u16,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(bin);
        command
            .args(["--transfer", &format!("127.0.0.1:{port}"), "--log-format", "plain"])
            // The admin API, with a token so none is generated and written.
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .env("ACMS_ADMIN_TOKEN", "acms-bench-admin-token")
            .env("RUST_LOG", "info");
        command.args(extra);
        let (child, line) = spawn_and_wait(command, log, |line| {
            let at = line.find("accepting app servers")?;
            let addr = line[at..].split_whitespace().find_map(|w| w.strip_prefix("transfer="))?;
            Some(addr.to_owned())
        })?;
        let addr: SocketAddr =
            line.parse().with_context(|| format!("bad address in acms log: {line}"))?;
        Ok(Self { child, url: addr.to_string(), port: addr.port(), log: log.to_owned() })
    }

    /// Starts `nats-server` on a free port of 127.0.0.1 with the config written by
    /// [`write_nats_config`] and waits for its `Server is ready` log line.
    pub fn start_nats(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(bin);
        command.arg("-c").arg(config).args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let (child, _) =
            spawn_and_wait(command, log, |line| line.contains("Server is ready").then_some(()))?;
        Ok(Self { child, url: format!("nats://127.0.0.1:{port}"), port, log: log.to_owned() })
    }

    /// Starts one node of a routed NATS cluster with JetStream (`-js`, its store in `store`):
    /// client port `port`, monitoring port `monitor`, route port `route`, routes to `routes`;
    /// waits for `Server is ready` (the cluster and its JetStream leader may form later).
    pub fn start_nats_node(
        bin: &Path,
        config: &Path,
        log: &Path,
        node: &NatsNode,
    ) -> anyhow::Result<Self> {
        let routes: Vec<String> =
            node.routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
        let mut command = Command::new(bin);
        command
            .arg("-c")
            .arg(config)
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-m", &node.monitor.to_string(), "-n", &node.name, "-js", "-sd"])
            .arg(&node.store)
            .args(["--cluster_name", "acms-bench"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.route)])
            .args(["--routes", &routes.join(",")]);
        let (child, _) =
            spawn_and_wait(command, log, |line| line.contains("Server is ready").then_some(()))?;
        let url = format!("nats://127.0.0.1:{}", node.port);
        Ok(Self { child, url, port: node.port, log: log.to_owned() })
    }

    /// Where its output is logged.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the broker used so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        Ok(sys::cpu_time(&self.pid().to_string())?)
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        Ok(sys::status_kib(&self.pid().to_string(), "VmRSS")?)
    }

    /// Peak resident set size so far (`VmHWM`), KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        Ok(sys::status_kib(&self.pid().to_string(), "VmHWM")?)
    }

    /// Samples the broker's RSS every 100 ms until [`RssSampler::stop`].
    pub fn sample_rss(&self) -> RssSampler {
        RssSampler::start(self.pid())
    }

    /// Fails with the log's tail if the broker has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("broker exited ({status}){}", log_tail(&self.log, 15)),
        }
    }

    /// Kills the broker at once (SIGKILL) and waits for it to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ports, name and store of one node of a NATS cluster, chosen before any node starts: the
/// nodes must know each other's route ports.
#[derive(Debug, Clone)]
pub struct NatsNode {
    /// Server name, `n0`...
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Monitoring (HTTP) port.
    pub monitor: u16,
    /// Route port.
    pub route: u16,
    /// The other nodes' route ports.
    pub routes: Vec<u16>,
    /// JetStream store directory.
    pub store: PathBuf,
}

/// Writes the nats-server config into `dir` and returns its path.
pub fn write_nats_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("nats-server.conf");
    std::fs::write(&path, NATS_CONFIG)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound, read and released: another process could take it in
/// between, which is unlikely on a quiet loopback).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts `command` with stderr and stdout teed into `log` by a thread, and waits until a line
/// matches (`found` returns `Some`).
fn spawn_and_wait<T: Send + 'static>(
    mut command: Command,
    log: &Path,
    found: impl Fn(&str) -> Option<T> + Send + 'static,
) -> anyhow::Result<(Child, T)> {
    let mut file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if let Some(value) = tx.as_ref().and_then(|_| found(&line)) {
                let _ = tx.take().map(|tx| tx.send(value));
            }
        }
        // Dropping `tx` unsent tells the waiter the broker ended first.
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(value) => Ok((child, value)),
        Err(err) => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let why = match err {
                RecvTimeoutError::Timeout => format!("not listening within {START_TIMEOUT:?}"),
                RecvTimeoutError::Disconnected => format!("exited ({status})"),
            };
            Err(anyhow!("{program} {why}{}", log_tail(log, 15)))
        }
    }
}

/// A thread sampling one process's RSS every 100 ms.
#[derive(Debug)]
pub struct RssSampler {
    stop: Sender<()>,
    thread: JoinHandle<Vec<u64>>,
}

/// RSS over a measurement, KiB.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct RssSamples {
    /// First sample.
    pub start_kib: u64,
    /// Largest sample.
    pub max_kib: u64,
    /// Last sample.
    pub end_kib: u64,
    /// Samples taken.
    pub samples: usize,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let (stop, stopped): (Sender<()>, Receiver<()>) = mpsc::channel();
        let pid = pid.to_string();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let sample = |samples: &mut Vec<u64>| {
                if let Ok(kib) = sys::status_kib(&pid, "VmRSS") {
                    samples.push(kib);
                }
            };
            loop {
                sample(&mut samples);
                if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(RSS_PERIOD) {
                    continue;
                }
                sample(&mut samples);
                break;
            }
            samples
        });
        Self { stop, thread }
    }

    /// Stops sampling (after one last sample) and summarises.
    pub fn stop(self) -> RssSamples {
        let _ = self.stop.send(());
        let samples = self.thread.join().unwrap_or_default();
        RssSamples {
            start_kib: samples.first().copied().unwrap_or_default(),
            max_kib: samples.iter().copied().max().unwrap_or_default(),
            end_kib: samples.last().copied().unwrap_or_default(),
            samples: samples.len(),
        }
    }
}

//! Real programs as child processes: start them, feed their stdin, wait for lines of their
//! output with a deadline, and kill them when the test ends.
//!
//! The programs are not built by the tests: `cargo build --workspace --bins --examples` first
//! (`scripts/test.sh` does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

/// The admin API token every program started here gets (`ACMS_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// How long any wait lasts before the test fails: programs start and answer in milliseconds, but
/// a loaded CI machine may be slow to start a process.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The path of a program of the workspace, relative to `target/<profile>`.
///
/// The test executable is `target/<profile>/deps/processes-HASH`, so the programs are in its
/// grandparent directory.
pub fn program(relative: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let path = dir.join(relative);
    if !path.is_file() {
        panic!(
            "{} is missing: build the programs first: cargo build --workspace --bins --examples",
            path.display()
        );
    }
    path
}

/// The lines of one output stream of a child, read by a background task so that the pipe never
/// fills up, whether or not the test is waiting on it.
pub struct Lines {
    name: String,
    rx: mpsc::UnboundedReceiver<String>,
    /// Every line received so far, shown when a wait fails.
    seen: Vec<String>,
}

impl Lines {
    /// Starts reading `stream`, labelled `name` in the test output.
    pub fn read(name: String, stream: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let label = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Captured by the test harness, shown when the test fails.
                eprintln!("[{label}] {line}");
                // Keep draining even if nobody listens any more.
                let _ = tx.send(line);
            }
        });
        Self { name, rx, seen: Vec::new() }
    }

    /// Every line received so far, those not yet waited for included, without waiting.
    pub fn so_far(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Waits for the next line that `matches` and returns it; lines before it are skipped.
    pub async fn wait_for(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => {
                    panic!("{} closed before {what}; it said:\n{}", self.name, self.seen.join("\n"))
                }
                Err(_) => panic!(
                    "no {what} on {} within {PATIENCE:?}; it said:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The next line, whatever it is.
    pub async fn next(&mut self, what: &str) -> String {
        self.wait_for(what, |_| true).await
    }

    /// The next line, or `None` once the stream closed; waits with no deadline of its own, for
    /// callers that bound a whole exchange themselves.
    pub async fn recv(&mut self) -> Option<String> {
        let line = self.rx.recv().await?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Every line until the stream closes (the child exited), including those already seen.
    pub async fn until_closed(&mut self) -> &[String] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                Ok(None) => return &self.seen,
                Err(_) => panic!("{} still open after {PATIENCE:?}", self.name),
            }
        }
    }
}

/// A running program with its stdin held open and its output read line by line. Killed when
/// dropped, so a failed test leaves no process behind.
pub struct Proc {
    name: String,
    child: Child,
    stdin: ChildStdin,
    /// What the program writes on stdout.
    pub stdout: Lines,
    /// What the program writes on stderr.
    pub stderr: Lines,
}

impl Proc {
    /// Starts `program` with `args`, without `ACMS_SECRET`.
    pub fn start(name: &str, program: &Path, args: &[&str]) -> Self {
        Self::start_with_secret(name, program, args, None)
    }

    /// Starts a program with `ACMS_SECRET` set to `secret`, or unset.
    pub fn start_with_secret(
        name: &str,
        program: &Path,
        args: &[&str],
        secret: Option<&str>,
    ) -> Self {
        // An `acms` given no token would generate one and write it to a file.
        Self::start_env(
            name,
            program,
            args,
            &[("ACMS_ADMIN_TOKEN", Some(ADMIN_TOKEN)), ("ACMS_SECRET", secret)],
        )
    }

    /// Starts a program with each variable of `env` set to its value, or removed for `None`;
    /// `ACMS_ADMIN_TOKEN` and `ACMS_SECRET` are removed unless `env` sets them.
    pub fn start_env(
        name: &str,
        program: &Path,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Self {
        let mut command = Command::new(program);
        command.env_remove("ACMS_ADMIN_TOKEN").env_remove("ACMS_SECRET");
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout =
            Lines::read(format!("{name} stdout"), child.stdout.take().expect("piped stdout"));
        let stderr =
            Lines::read(format!("{name} stderr"), child.stderr.take().expect("piped stderr"));
        Self { name: name.to_owned(), child, stdin, stdout, stderr }
    }

    /// Writes one line to the program's stdin.
    pub async fn say(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap_or_else(|err| panic!("cannot write to {}: {err}", self.name));
        self.stdin.flush().await.expect("flush stdin");
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) {
        let pid = self.child.id().unwrap_or_else(|| panic!("{} already exited", self.name));
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} ({}) failed", self.name);
    }

    /// Waits until the program exits.
    pub async fn exit_status(&mut self) -> ExitStatus {
        timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} still running after {PATIENCE:?}; it said:\n{}",
                    self.name,
                    self.stderr.seen.join("\n")
                )
            })
            .expect("wait for child")
    }

    /// Waits until the program exits, asserts it exited with status 0, and returns everything it
    /// wrote on stderr.
    pub async fn exits_cleanly(&mut self) -> Vec<String> {
        let status = self.exit_status().await;
        let stderr = self.stderr.until_closed().await.to_vec();
        assert_eq!(
            status.code(),
            Some(0),
            "{} exited with {status}; it said:\n{}",
            self.name,
            stderr.join("\n")
        );
        stderr
    }
}

/// The address following `key=` in a log line (`transfer=127.0.0.1:41234 ...`).
pub fn field_addr(line: &str, key: &str) -> SocketAddr {
    let needle = format!("{key}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(&needle))
        .and_then(|value| value.trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no address after `{needle}` in {line:?}"))
}

/// Checks a daemon's log after a clean stop: the signal was handled, it said it stopped, and
/// nothing went wrong on the way.
pub fn assert_stopped_cleanly(name: &str, log: &[String]) {
    let said = |text: &str| log.iter().any(|line| line.contains(text));
    assert!(
        said("signal received; shutting down"),
        "{name} did not log the signal; it said:\n{}",
        log.join("\n")
    );
    assert!(
        log.last().is_some_and(|line| line.trim_end().ends_with("stopped")),
        "{name} did not log `stopped` last; it said:\n{}",
        log.join("\n")
    );
    assert!(
        !said(" ERROR ") && !said("panicked"),
        "{name} logged an error; it said:\n{}",
        log.join("\n")
    );
}

impl Proc {
    /// The name the program was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, while the program runs.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_else(|| panic!("{} already exited", self.name))
    }

    /// Kills the program with SIGKILL, as a crash would end it, and waits until it is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap_or_else(|err| panic!("cannot kill {}: {err}", self.name));
    }

    /// The peak resident memory of the program so far (`VmHWM` of /proc/PID/status), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|err| panic!("cannot read the status of {} ({pid}): {err}", self.name));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmHWM in the status of {} ({pid})", self.name))
    }
}

/// A hub and two IM servers; killed when dropped.
pub struct DemoCluster {
    /// The hub.
    pub hub: Proc,
    /// The hub's admin API.
    pub admin: SocketAddr,
    /// The IM servers, with ids 0 and 1.
    pub servers: Vec<Proc>,
    /// Where the clients of each server connect.
    pub listen: Vec<String>,
}

impl DemoCluster {
    /// Starts the hub, then the servers, and waits until both are connected to it.
    pub async fn start() -> Self {
        let (hub, transfer, admin) = start_hub().await;
        let transfer = transfer.to_string();
        let (mut servers, mut listen) = (Vec::new(), Vec::new());
        for id in ["0", "1"] {
            let args = ["--id", id, "--listen", "127.0.0.1:0", "--acms", &transfer];
            let mut server =
                Proc::start(&format!("im-server {id}"), &program("examples/im-server"), &args);
            let started = server
                .stderr
                .wait_for("`im-server started`", |line| line.contains("im-server started"))
                .await;
            listen.push(field_addr(&started, "listen").to_string());
            server
                .stderr
                .wait_for("`connected to hub`", |line| line.contains("connected to hub"))
                .await;
            servers.push(server);
        }
        Self { hub, admin, servers, listen }
    }

    /// Logs `user` in on server `id` with `extra` flags, and waits for the login.
    pub async fn client(&self, user: &str, id: usize, extra: &[&str]) -> Proc {
        let mut args = vec!["--server", &self.listen[id], "--user", user];
        args.extend_from_slice(extra);
        let mut client = Proc::start(user, &program("im-client"), &args);
        let expected = format!("logged in as {user} on server {id} (");
        client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
        client
    }
}

/// Starts `acms` with both ports on 0; returns it with its transfer and admin addresses, read
/// from its log (the two listeners log in either order).
pub async fn start_hub() -> (Proc, SocketAddr, SocketAddr) {
    start_hub_with(&[]).await
}

/// [`start_hub`] with more arguments (`--config FILE`, ...).
pub async fn start_hub_with(extra: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let mut args = vec!["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut hub = Proc::start("acms", &program("acms"), &args);
    let (transfer, admin) = hub_listeners(&mut hub).await;
    (hub, transfer, admin)
}

/// Waits until the `acms` process `hub` logs both its listeners; returns the transfer and the
/// admin address.
pub async fn hub_listeners(hub: &mut Proc) -> (SocketAddr, SocketAddr) {
    let (mut transfer, mut admin) = (None, None);
    while transfer.is_none() || admin.is_none() {
        let line = hub
            .stderr
            .wait_for("the hub's two listeners", |line| {
                line.contains("accepting app servers") || line.contains("admin HTTP API listening")
            })
            .await;
        if line.contains("accepting app servers") {
            transfer = Some(field_addr(&line, "transfer"));
        } else {
            admin = Some(field_addr(&line, "admin"));
        }
    }
    (transfer.unwrap(), admin.unwrap())
}

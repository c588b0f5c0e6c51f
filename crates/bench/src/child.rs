//! Worker processes: this binary started again in one of its roles, spoken to by lines.
//!
//! Stdout is read by a thread that forwards each line over a channel, so every wait is on an
//! event (a line, or the end of stdout when the worker exits) with a deadline. Stderr goes to a
//! log file whose tail is quoted when the worker fails. Dropping a [`Worker`] kills it.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::de::DeserializeOwned;

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Stdout lines; `None` once stdout ended.
    lines: Receiver<Option<String>>,
    log: PathBuf,
}

impl Worker {
    /// Starts this binary with `args` (a role and its flags), logging its stderr to
    /// `log_dir/<label>.log`.
    pub fn spawn(label: &str, args: &[String], log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let log = log_dir.join(format!("{label}.log"));
        let stderr =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {} {}", exe.display(), args.join(" ")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => {
                        if tx.send(Some(line)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        let stdin = child.stdin.take();
        Ok(Self { label: label.to_owned(), child, stdin, lines, log })
    }

    /// Waits up to `timeout` for the line tagged `tag` and parses its JSON object.
    pub fn wait_for<T: DeserializeOwned>(
        &mut self,
        tag: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(line)) => {
                    let Some(json) = line.strip_prefix(tag).and_then(|rest| rest.strip_prefix(' '))
                    else {
                        continue;
                    };
                    return serde_json::from_str(json)
                        .with_context(|| format!("{}: bad {tag} line: {line}", self.label));
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                    let status = self.reap(Duration::from_secs(5));
                    bail!(
                        "{} exited ({}) before its {tag} line{}",
                        self.label,
                        describe(status),
                        self.log_tail()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{}: no {tag} line within {timeout:?}{}", self.label, self.log_tail());
                }
            }
        }
    }

    /// Writes one line to the worker's stdin.
    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("{}: stdin closed", self.label))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: cannot write to its stdin", self.label))
    }

    /// Waits up to `timeout` for the worker to exit by itself and checks it succeeded.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        // The end of stdout is the event; the exit status follows it at once.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{} did not exit within {timeout:?}{}", self.label, self.log_tail())
                }
            }
        }
        match self.reap(Duration::from_secs(5)) {
            Some(status) if status.success() => Ok(()),
            status => bail!("{} failed ({}){}", self.label, describe(status), self.log_tail()),
        }
    }

    /// The exit status, once the process is gone (stdout has ended, so it is exiting).
    fn reap(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => return None,
            }
        }
    }

    /// The last lines of the worker's log, to quote in an error.
    fn log_tail(&self) -> String {
        log_tail(&self.log, 15)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file, formatted to follow an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return format!(" (log {} is empty)", path.display());
    }
    let tail = all[all.len().saturating_sub(lines)..].join("\n  ");
    format!("; last lines of {}:\n  {tail}", path.display())
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "still running".to_owned(), |status| status.to_string())
}

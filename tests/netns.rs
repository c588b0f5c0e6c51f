//! A two-machine LAN made of network namespaces, for tests that need multicast (which loopback
//! does not carry): namespaces `a` and `b` joined by a veth pair, `10.203.0.1/24` and
//! `10.203.0.2/24`, multicast on, each with its own loopback up. Programs run inside one with
//! [`Lan::command`] (or started with [`Lan::start`]); the test itself reaches into one with
//! [`Lan::connect`]. Everything is removed when the [`Lan`] is dropped, even by a panic.
//!
//! Needs root and `ip` (iproute2, which `scripts/test.sh` installs). Without them a test is
//! skipped with a `SKIPPED` line, except under `CI=true`, where that is a failure.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::process::{ADMIN_TOKEN, Proc};

/// One side of the [`Lan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first namespace, `10.203.0.1`.
    A,
    /// The second namespace, `10.203.0.2`.
    B,
}

/// Two namespaces on one veth link; deleted on drop.
pub struct Lan {
    namespaces: [String; 2],
    /// The veth pair's end in `a`, deleted too in case it never left the root namespace.
    veth: String,
}

/// Runs `program ARGS`, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().expect("run a network command");
    assert!(
        output.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ip(args: &[&str]) {
    run("ip", args);
}

/// Whether `test` must be skipped because this machine cannot make namespaces: not root, or
/// one of `tools` (program, what to call it) missing. It prints a `SKIPPED` line then, except
/// under `CI=true`, where it panics, so CI never skips silently.
pub fn skipped(test: &str, tools: &[(&str, &str)]) -> bool {
    let Some(missing) = missing(tools) else { return false };
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{test} needs {missing} on CI");
    }
    eprintln!("SKIPPED: {test}: needs {missing}");
    true
}

fn missing(tools: &[(&str, &str)]) -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("root (to create network namespaces)".into());
    }
    tools
        .iter()
        .find(|(program, _)| Command::new(program).arg("--version").output().is_err())
        .map(|(_, name)| (*name).to_owned())
}

/// A name part unique per process and per call, so parallel tests and parallel runs never
/// collide; short, because interface names are at most 15 bytes.
pub fn unique_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A blocking TCP connection to `addr` made from inside `namespace`: a thread of its own
/// enters the namespace, connects, and ends; the socket stays in the namespace it was made in.
pub fn connect_in(namespace: &str, addr: SocketAddr) -> io::Result<std::net::TcpStream> {
    let path = format!("/var/run/netns/{namespace}");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let namespace = File::open(&path)?;
                // SAFETY: `setns` is given a namespace file descriptor that stays open for the
                // call; it moves only this thread, which ends right after connecting.
                let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                if entered != 0 {
                    return Err(io::Error::last_os_error());
                }
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            })
            .join()
            .expect("the connecting thread")
    })
}

impl Lan {
    /// Creates the LAN, or `None` when this machine cannot (not root, no `ip`) and the test is
    /// to be skipped; under `CI=true` that panics instead, so CI never skips silently.
    pub fn create(test: &str) -> Option<Self> {
        if skipped(test, &[("ip", "`ip` (iproute2)")]) {
            return None;
        }
        let id = unique_id();
        let lan = Self {
            namespaces: [format!("acms-{id}-a"), format!("acms-{id}-b")],
            veth: format!("av{id}a"),
        };
        let peer = format!("av{id}b");
        for namespace in &lan.namespaces {
            ip(&["netns", "add", namespace]);
        }
        ip(&["link", "add", &lan.veth, "type", "veth", "peer", "name", &peer]);
        for (side, veth) in [(Side::A, &lan.veth), (Side::B, &peer)] {
            let namespace = lan.namespace(side);
            let addr = format!("{}/24", Self::addr(side));
            ip(&["link", "set", veth, "netns", namespace]);
            ip(&["-n", namespace, "addr", "add", &addr, "dev", veth]);
            ip(&["-n", namespace, "link", "set", veth, "multicast", "on", "up"]);
            ip(&["-n", namespace, "link", "set", "lo", "up"]);
        }
        Some(lan)
    }

    /// What this machine lacks for a LAN, if anything.
    /// The namespace's name of `side`.
    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::A => &self.namespaces[0],
            Side::B => &self.namespaces[1],
        }
    }

    /// The address of `side` on the link.
    pub fn addr(side: Side) -> Ipv4Addr {
        match side {
            Side::A => Ipv4Addr::new(10, 203, 0, 1),
            Side::B => Ipv4Addr::new(10, 203, 0, 2),
        }
    }

    /// The program and arguments that run `program ARGS` inside `side`: `ip netns exec`
    /// replaces itself with the program, so the process started is the program itself (its pid
    /// is the one to signal).
    pub fn command(&self, side: Side, program: &Path, args: &[&str]) -> Vec<String> {
        let mut command = vec!["netns".to_owned(), "exec".to_owned(), self.namespace(side).into()];
        command.push(program.display().to_string());
        command.extend(args.iter().map(|arg| (*arg).to_owned()));
        command
    }

    /// Starts `program ARGS` inside `side` as [`Proc::start_env`] does (`ACMS_ADMIN_TOKEN` set
    /// to [`ADMIN_TOKEN`], `ACMS_SECRET` to `secret`).
    pub fn start(
        &self,
        side: Side,
        name: &str,
        program: &Path,
        args: &[&str],
        secret: Option<&str>,
    ) -> Proc {
        let command = self.command(side, program, args);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let env = [("ACMS_ADMIN_TOKEN", Some(ADMIN_TOKEN)), ("ACMS_SECRET", secret)];
        Proc::start_env(name, Path::new("ip"), &command, &env)
    }

    /// A TCP connection to `addr` made from inside `side` (to reach a port bound on that
    /// namespace's loopback, such as an admin API): a thread of its own enters the namespace,
    /// connects, and ends; the socket stays in the namespace it was made in.
    pub fn connect(&self, side: Side, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let stream = connect_in(self.namespace(side), addr)?;
        stream.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(stream)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair; the link is
        // deleted by name too in case the set-up stopped before moving it. Errors are expected
        // for whatever is already gone.
        let _ = Command::new("ip").args(["link", "del", &self.veth]).output();
        for namespace in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", namespace]).output();
        }
    }
}

//! Two clients behind two NATs, made of network namespaces, for the direct-path tests:
//!
//! ```text
//!   client 0 (10.1.0.2) ── NAT 0 (10.1.0.1 | 100.64.0.11) ─┐
//!                                                          ├─ bridge 100.64.0.1: "internet"
//!   client 1 (10.2.0.2) ── NAT 1 (10.2.0.1 | 100.64.0.12) ─┘   (the hub and the im-servers)
//! ```
//!
//! Each NAT masquerades its client's traffic leaving on its `wan` side, endpoint-independently
//! (plain `MASQUERADE`, which keeps the source port: one mapping for every destination) or
//! symmetrically (`MASQUERADE --random-fully`: a new random port per destination), and drops
//! whatever comes to its public address unasked, as a home router's firewall does (that also
//! keeps an early punch datagram from leaving a conntrack entry that would move the mapping).
//! Programs run inside a namespace with [`Internet::command`]; [`Internet::http_get`] reads a
//! page served inside one. Every namespace (and so every veth and iptables rule, which live in
//! them) is deleted when the [`Internet`] is dropped, even by a panic; names are unique per
//! process and per topology, so tests run in parallel.
//!
//! Needs root, `ip` and `iptables` (`scripts/test.sh` installs them). Without them a test is
//! skipped with a `SKIPPED` line, except under `CI=true`, where that is a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::netns::{connect_in, run, skipped, unique_id};

/// How a NAT maps its client's outgoing flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// One public port per client port, whatever the destination (plain `MASQUERADE`): a
    /// punch through it works.
    EndpointIndependent,
    /// A random public port per destination (`MASQUERADE --random-fully`): the address the
    /// server saw is not the one the peer would have to use, so a punch fails.
    Symmetric,
}

/// The namespaces of one topology; deleted on drop.
pub struct Internet {
    /// The "internet": the bridge, the hub and the servers.
    inet: String,
    nats: [String; 2],
    clients: [String; 2],
}

/// Runs `program ARGS` inside `namespace`.
fn run_in(namespace: &str, program: &str, args: &[&str]) {
    let mut all = vec!["netns", "exec", namespace, program];
    all.extend_from_slice(args);
    run("ip", &all);
}

impl Internet {
    /// The bridge's address: where the hub and the servers listen.
    pub const SERVERS: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

    /// Builds the topology with `nats`, or `None` when this machine cannot (not root, no `ip`
    /// or `iptables`) and the test is to be skipped; under `CI=true` that panics instead.
    pub fn create(test: &str, nats: [Nat; 2]) -> Option<Self> {
        if skipped(test, &[("ip", "`ip` (iproute2)"), ("iptables", "`iptables`")]) {
            return None;
        }
        let id = unique_id();
        let internet = Self {
            inet: format!("acms-{id}-inet"),
            nats: [format!("acms-{id}-nat0"), format!("acms-{id}-nat1")],
            clients: [format!("acms-{id}-cl0"), format!("acms-{id}-cl1")],
        };
        // From here on, a failure drops `internet`, which deletes whatever was made.
        for namespace in internet.all() {
            run("ip", &["netns", "add", namespace]);
            run("ip", &["-n", namespace, "link", "set", "lo", "up"]);
        }
        let inet = internet.inet.as_str();
        run("ip", &["-n", inet, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", inet, "addr", "add", "100.64.0.1/24", "dev", "br0"]);
        run("ip", &["-n", inet, "link", "set", "br0", "up"]);
        for (index, nat_kind) in nats.into_iter().enumerate() {
            let (nat, client) = (internet.nats[index].as_str(), internet.clients[index].as_str());
            let port = format!("p{index}");
            // The NAT's public side, its other end a port of the bridge.
            run(
                "ip",
                &[
                    "-n", nat, "link", "add", "wan", "type", "veth", "peer", "name", &port,
                    "netns", inet,
                ],
            );
            run("ip", &["-n", inet, "link", "set", &port, "master", "br0", "up"]);
            let public = format!("100.64.0.{}/24", 11 + index);
            run("ip", &["-n", nat, "addr", "add", &public, "dev", "wan"]);
            run("ip", &["-n", nat, "link", "set", "wan", "up"]);
            // The private side, its other end the client's only interface.
            run(
                "ip",
                &[
                    "-n", nat, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                    "netns", client,
                ],
            );
            let (gateway, host) =
                (format!("10.{}.0.1", index + 1), format!("10.{}.0.2", index + 1));
            run("ip", &["-n", nat, "addr", "add", &format!("{gateway}/24"), "dev", "lan"]);
            run("ip", &["-n", nat, "link", "set", "lan", "up"]);
            run("ip", &["-n", client, "addr", "add", &format!("{host}/24"), "dev", "eth0"]);
            run("ip", &["-n", client, "link", "set", "eth0", "up"]);
            run("ip", &["-n", client, "route", "add", "default", "via", &gateway]);
            run_in(nat, "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            let mut masquerade =
                vec!["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"];
            if nat_kind == Nat::Symmetric {
                masquerade.push("--random-fully");
            }
            run_in(nat, "iptables", &masquerade);
            run_in(nat, "iptables", &["-A", "INPUT", "-i", "wan", "-j", "DROP"]);
        }
        Some(internet)
    }

    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.inet).chain(&self.nats).chain(&self.clients)
    }

    /// The namespace of the hub and the servers.
    pub fn inet(&self) -> &str {
        &self.inet
    }

    /// The namespace of client `index` (0 or 1).
    pub fn client(&self, index: usize) -> &str {
        &self.clients[index]
    }

    /// The public address of NAT `index`.
    pub fn public(index: usize) -> Ipv4Addr {
        Ipv4Addr::new(100, 64, 0, 11 + index as u8)
    }

    /// Cuts every UDP flow through NAT `index` (the direct path; TCP to the servers stays).
    pub fn cut_udp(&self, index: usize) {
        run_in(&self.nats[index], "iptables", &["-I", "FORWARD", "-p", "udp", "-j", "DROP"]);
    }

    /// The program and arguments that run `program ARGS` inside `namespace`: `ip netns exec`
    /// replaces itself with the program, so the process started is the program itself.
    pub fn command(namespace: &str, program: &Path, args: &[&str]) -> Vec<String> {
        let mut command = vec!["netns".to_owned(), "exec".to_owned(), namespace.to_owned()];
        command.push(program.display().to_string());
        command.extend(args.iter().map(|arg| (*arg).to_owned()));
        command
    }

    /// `GET path` from `addr` inside `namespace` (the hub's admin API, which only that
    /// namespace reaches): the body. Runs on a thread of its own that enters the namespace.
    pub async fn http_get(namespace: &str, addr: SocketAddr, path: &str) -> String {
        let path = path.to_owned();
        let namespace = namespace.to_owned();
        let response = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut stream = connect_in(&namespace, addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })
        .await
        .expect("the HTTP task")
        .unwrap_or_else(|err| panic!("GET {addr}: {err}"));
        match response.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_owned(),
            None => panic!("no HTTP body in {response:?}"),
        }
    }
}

/// What this machine lacks for the topology, if anything.
impl Drop for Internet {
    fn drop(&mut self) {
        // A namespace takes its interfaces, veth pairs and iptables rules with it; errors are
        // expected for whatever was never made.
        for namespace in self.all() {
            let _ = Command::new("ip").args(["netns", "del", namespace]).output();
        }
    }
}

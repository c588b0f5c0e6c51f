//! The direct path between two `im-client`s behind NATs (tests/nat_topology.rs): the hub and
//! two `im-server`s on the "internet" bridge, each client in its own namespace behind its own
//! NAT, all real processes. Endpoint-independent NATs open a direct path and the hub relays
//! nothing; symmetric ones do not, and the messages go through the hub; a direct path cut
//! mid-stream hands the stream to the hub, nothing lost or doubled; a file takes the direct path
//! too. Plus the bad input the servers must shrug off: malformed probe datagrams, too many or
//! unusable candidates, a bad offer, a bogus invitation.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use acms_tests::nat_topology::{Internet, Nat};
use acms_tests::process::{ADMIN_TOKEN, PATIENCE, Proc, field_addr, program, start_hub};
use acms_tests::{TestServer, user};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_util::codec::{Framed, LinesCodec};

/// The hub and two servers in the internet namespace, and the topology.
struct Setup {
    internet: Internet,
    _hub: Proc,
    admin: SocketAddr,
    _servers: Vec<Proc>,
    listen: Vec<String>,
}

/// The secret the hub and the servers share: they are not on loopback.
const SECRET: &str = "nat-test-secret-0123456789";

/// Starts `program ARGS` inside `namespace`, as `name`.
fn spawn_in(namespace: &str, name: &str, program: &Path, args: &[&str]) -> Proc {
    let command = Internet::command(namespace, program, args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let env = [("ACMS_ADMIN_TOKEN", Some(ADMIN_TOKEN)), ("ACMS_SECRET", Some(SECRET))];
    Proc::start_env(name, Path::new("ip"), &command, &env)
}

impl Setup {
    async fn start(test: &str, nats: [Nat; 2]) -> Option<Self> {
        let internet = Internet::create(test, nats)?;
        let servers_ip = Internet::SERVERS.to_string();
        let transfer = format!("{servers_ip}:0");
        let args = ["--transfer", &transfer, "--admin", "127.0.0.1:0", "--no-announce"];
        let mut hub = spawn_in(internet.inet(), "acms", &program("acms"), &args);
        let (mut transfer, mut admin) = (None, None);
        while transfer.is_none() || admin.is_none() {
            let line = hub
                .stderr
                .wait_for("the hub's listeners", |line| {
                    line.contains("accepting app servers")
                        || line.contains("admin HTTP API listening")
                })
                .await;
            if line.contains("accepting app servers") {
                transfer = Some(field_addr(&line, "transfer"));
            } else {
                admin = Some(field_addr(&line, "admin"));
            }
        }
        let transfer = transfer.unwrap().to_string();
        let (mut servers, mut listen) = (Vec::new(), Vec::new());
        for id in ["0", "1"] {
            let listen_on = format!("{servers_ip}:0");
            let args = ["--id", id, "--listen", &listen_on, "--acms", &transfer];
            let name = format!("im-server {id}");
            let mut server =
                spawn_in(internet.inet(), &name, &program("examples/im-server"), &args);
            let started = server
                .stderr
                .wait_for("`im-server started`", |l| l.contains("im-server started"))
                .await;
            listen.push(field_addr(&started, "listen").to_string());
            server.stderr.wait_for("`connected to hub`", |l| l.contains("connected to hub")).await;
            servers.push(server);
        }
        Some(Self { internet, _hub: hub, admin: admin.unwrap(), _servers: servers, listen })
    }

    /// Logs `name` in from behind NAT `index` on server `index`, showing paths, with `extra`.
    async fn client(&self, index: usize, name: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["--server", &self.listen[index], "--user", name, "--show-path"];
        args.extend_from_slice(extra);
        let mut client = spawn_in(self.internet.client(index), name, &program("im-client"), &args);
        let expected = format!("logged in as {name} on server {index} (");
        client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
        client
    }

    /// The hub's count of unicast frames relayed so far.
    async fn relayed(&self) -> u64 {
        let metrics = Internet::http_get(self.internet.inet(), self.admin, "/metrics").await;
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("acms_relayed_frames_total{kind=\"unicast\"} "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no unicast relayed-frames counter in:\n{metrics}"))
    }
}

/// Waits for `/path PEER` on `client` to say `path`.
async fn path_is(client: &mut Proc, peer: &str, path: &str) {
    client.say(&format!("/path {peer}")).await;
    let line =
        client.stderr.wait_for("the /path answer", |line| line.starts_with("path to ")).await;
    assert_eq!(line, format!("path to {peer}: {path}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_independent_nats_open_a_direct_path_and_the_hub_relays_nothing() {
    let nats = [Nat::EndpointIndependent, Nat::EndpointIndependent];
    let Some(setup) = Setup::start("endpoint_independent_nats_open_a_direct_path", nats).await
    else {
        return;
    };
    let downloads = tempfile::tempdir().expect("temp dir");
    let download_dir = downloads.path().to_str().expect("UTF-8 path");
    // Generous timeouts: a loaded machine must not turn a slow punch into a fallback.
    let slack = ["--punch-timeout", "10s", "--p2p-idle-timeout", "20s"];
    let mut alice = setup.client(0, "alice", &slack).await;
    let mut bob =
        setup.client(1, "bob", &[&slack[..], &["--download-dir", download_dir]].concat()).await;
    let started = Instant::now();
    alice.say("@bob hello 0").await;
    let first = bob.stdout.next("alice's first message").await;
    assert_eq!(
        first, "alice: hello 0 [p2p]",
        "the first message waits for the punch and goes direct"
    );
    eprintln!("first message over the punched path after {:?}", started.elapsed());
    path_is(&mut alice, "bob", "p2p").await;
    // The invitation crossed the hub; from now on nothing does.
    let before = setup.relayed().await;
    for i in 1..=20 {
        alice.say(&format!("@bob hello {i}")).await;
    }
    for i in 1..=20 {
        assert_eq!(bob.stdout.next("alice's message").await, format!("alice: hello {i} [p2p]"));
    }
    bob.say("@alice hi back").await;
    assert_eq!(alice.stdout.next("bob's answer").await, "bob: hi back [p2p]");
    path_is(&mut bob, "alice", "p2p").await;
    // A file takes the direct path too: 1 MiB, 32 chunks and their acks.
    let outgoing = tempfile::tempdir().expect("temp dir");
    let file = outgoing.path().join("photo.bin");
    let content: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(&file, &content).expect("write the file");
    alice.say(&format!("/file bob {}", file.display())).await;
    let received = bob.stderr.wait_for("the file", |line| line.starts_with("received ")).await;
    assert!(received.starts_with("received photo.bin from alice: 1048576 bytes"), "{received}");
    let copy = std::fs::read(downloads.path().join("photo.bin")).expect("the received file");
    assert!(copy == content, "the file arrived changed");
    assert_eq!(setup.relayed().await, before, "the hub relayed a frame of the direct path");
}

/// With `nats`, no direct path opens: the messages go through the hub once the punch timeout
/// is over, in order.
async fn falls_back_to_the_hub(test: &str, nats: [Nat; 2]) {
    let Some(setup) = Setup::start(test, nats).await else { return };
    let mut alice = setup.client(0, "alice", &["--punch-timeout", "2s"]).await;
    let mut bob = setup.client(1, "bob", &["--punch-timeout", "2s"]).await;
    let before = setup.relayed().await;
    let started = Instant::now();
    alice.say("@bob one").await;
    alice.say("@bob two").await;
    assert_eq!(bob.stdout.next("alice's first message").await, "alice: one [hub]");
    assert_eq!(bob.stdout.next("alice's second message").await, "alice: two [hub]");
    eprintln!(
        "{test}: first message through the hub after {:?} (punch timeout 2s)",
        started.elapsed()
    );
    alice.stderr.wait_for("the fallback", |line| line == "to bob: through the server").await;
    path_is(&mut alice, "bob", "hub").await;
    alice.say("@bob three").await;
    assert_eq!(bob.stdout.next("alice's third message").await, "alice: three [hub]");
    assert!(setup.relayed().await >= before + 3, "the messages did not cross the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_nats_fall_back_to_the_hub_within_the_deadline() {
    let nats = [Nat::Symmetric, Nat::Symmetric];
    falls_back_to_the_hub("symmetric_nats_fall_back_to_the_hub", nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_symmetric_nat_against_a_port_restricted_one_falls_back_too() {
    let nats = [Nat::Symmetric, Nat::EndpointIndependent];
    falls_back_to_the_hub("one_symmetric_nat_falls_back_too", nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_path_cut_mid_stream_hands_the_stream_to_the_hub_losing_nothing() {
    let nats = [Nat::EndpointIndependent, Nat::EndpointIndependent];
    let Some(setup) = Setup::start("a_direct_path_cut_mid_stream", nats).await else {
        return;
    };
    let idle = ["--punch-timeout", "10s", "--p2p-idle-timeout", "3s"];
    let mut alice = setup.client(0, "alice", &idle).await;
    let mut bob = setup.client(1, "bob", &idle).await;
    let mut received = Vec::new();
    // Cut while the first half is still on its way: some of it arrives and is acknowledged,
    // some arrives and its ack is lost, some is lost; all of it and the second half must come.
    for i in 1..=500 {
        alice.say(&format!("@bob n {i}")).await;
    }
    while received.len() < 250 {
        received.push(bob.stdout.next("a numbered message").await);
    }
    setup.internet.cut_udp(0);
    let cut = Instant::now();
    for i in 501..=1000 {
        alice.say(&format!("@bob n {i}")).await;
    }
    while received.len() < 1000 {
        received.push(bob.stdout.next("a numbered message").await);
    }
    eprintln!("1,000 messages through after the cut in {:?} (idle timeout 3s)", cut.elapsed());
    let mut paths = std::collections::BTreeMap::<String, usize>::new();
    for (index, line) in received.iter().enumerate() {
        let (text, path) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no path in {line:?}"));
        assert_eq!(text, format!("alice: n {}", index + 1), "lost, doubled or out of order");
        *paths.entry(path.to_owned()).or_default() += 1;
    }
    assert!(received[..250].iter().all(|line| line.ends_with("[p2p]")), "before the cut: direct");
    assert!(received[999].ends_with("[hub]"), "after the cut: through the hub");
    eprintln!("paths of the 1,000 messages: {paths:?}");
    alice.stderr.wait_for("the fallback", |line| line == "to bob: through the server").await;
    // Nothing more comes: no duplicate after the last one.
    alice.say("@bob end").await;
    assert_eq!(bob.stdout.next("the end marker").await, "alice: end [hub]");
}

#[tokio::test]
async fn bad_probes_candidates_and_invitations_are_refused_and_nothing_else_is_affected() {
    let (_hub, transfer, _admin) = start_hub().await;
    let args = ["--id", "0", "--listen", "127.0.0.1:0", "--acms", &transfer.to_string()];
    let mut server = Proc::start("im-server 0", &program("examples/im-server"), &args);
    let started =
        server.stderr.wait_for("`im-server started`", |l| l.contains("im-server started")).await;
    let listen = field_addr(&started, "listen");
    let udp: u16 = started
        .split_whitespace()
        .find_map(|word| word.strip_prefix("udp="))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no udp port in {started:?}"));
    server.stderr.wait_for("`connected to hub`", |l| l.contains("connected to hub")).await;
    let login = |name: &str| {
        let listen = listen.to_string();
        let name = name.to_owned();
        async move {
            let args = ["--server", listen.as_str(), "--user", name.as_str(), "--show-path"];
            let args = [&args[..], &["--punch-timeout", "10s"]].concat();
            let mut client = Proc::start(&name, &program("im-client"), &args);
            let expected = format!("logged in as {name} on server 0 (");
            client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
            client
        }
    };
    let mut alice = login("alice").await;
    let mut bob = login("bob").await;
    // A datagram too long, one too short, one with the wrong magic: each logged and dropped.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probe = SocketAddr::from(([127, 0, 0, 1], udp));
    for datagram in [vec![0u8; 1200], b"ACMSPRB1".to_vec(), b"XXXXXXXX12345678".to_vec()] {
        socket.send_to(&datagram, probe).await.unwrap();
        server
            .stderr
            .wait_for("the bad probe's log line", |l| l.contains("bad probe datagram; ignored"))
            .await;
    }
    // The probe still answers a good request.
    let mut request = b"ACMSPRB1".to_vec();
    request.extend_from_slice(&7u64.to_be_bytes());
    socket.send_to(&request, probe).await.unwrap();
    let mut answer = [0u8; 64];
    let (len, _) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut answer))
        .await
        .expect("a probe answer in time")
        .unwrap();
    assert_eq!(&answer[..8], b"ACMSRFX1");
    assert_eq!(len, 8 + 8 + 1 + 2 + 4, "an IPv4 answer");
    // A client that reports too many candidates or a bad offer is told so, and carries on.
    let stream = tokio::net::TcpStream::connect(listen).await.unwrap();
    let mut raw = Framed::new(stream, LinesCodec::new());
    let mut ask = async |line: String| {
        raw.send(line).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, raw.next()).await.expect("an answer in time");
        answer.expect("the connection open").unwrap()
    };
    assert_eq!(ask("LOGIN carol".into()).await, "OK 0");
    let nine = ["10.0.0.1:5/l"; 9].join(" ");
    let refused = ask(format!("CANDIDATES {nine}")).await;
    assert!(refused.starts_with("ERR bad line") && refused.contains("up to 8"), "{refused}");
    let refused = ask("OFFER bob not-a-fingerprint".into()).await;
    assert!(refused.starts_with("ERR bad line"), "{refused}");
    let refused = ask("CANDIDATES 0.0.0.0:5/l".into()).await;
    assert!(refused.starts_with("ERR bad line"), "{refused}");
    assert_eq!(ask("WHO bob".into()).await, "LOCATED bob 0");
    // A server of the cluster (hostile or broken) invites bob with garbage.
    let mallory = TestServer::start(7, transfer).await;
    mallory.login(&["mallory"]).await;
    let garbage = Bytes::from_static(b"offer nothing-like-a-fingerprint 1.2.3.4:5/x");
    mallory.cluster.invite(&user("mallory"), &user("bob"), garbage).await.unwrap();
    server
        .stderr
        .wait_for("the bogus invitation's log line", |l| l.contains("bogus invitation; ignored"))
        .await;
    // Nothing else is affected: bob still hears alice.
    alice.say("@bob still here").await;
    assert_eq!(bob.stdout.next("alice's message").await, "alice: still here [p2p]");
}

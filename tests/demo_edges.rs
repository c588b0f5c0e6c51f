//! The demo's last hop, through the real programs: nothing the cluster accepted vanishes between
//! the receiving `im-server` and its client, a server stops on SIGTERM whatever is pending, and a
//! client moved by a drain keeps its groups.
//!
//! The programs are not built by this test: `cargo build --workspace --bins --examples` first.

use std::collections::BTreeSet;
use std::time::Duration;

use acms_tests::process::{DemoCluster, Proc, field_addr, program, start_hub};
use tokio::time::Instant;

/// An `im-server` with id `id` on port 0, its hub at `acms`, and `extra` arguments; returns it
/// with its client address once it is listening.
async fn im_server(id: &str, acms: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--id", id, "--listen", "127.0.0.1:0", "--acms", acms];
    args.extend_from_slice(extra);
    let mut server = Proc::start(&format!("im-server {id}"), &program("examples/im-server"), &args);
    let started = server
        .stderr
        .wait_for("`im-server started`", |line| line.contains("im-server started"))
        .await;
    let listen = field_addr(&started, "listen").to_string();
    (server, listen)
}

/// The numbers that start the texts in `lines` after `prefix`.
fn numbers(lines: &[String], prefix: &str) -> BTreeSet<u32> {
    lines.iter().filter_map(|line| number(line.strip_prefix(prefix)?)).collect()
}

/// The number a text of the stream starts with.
fn number(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

/// Sends `signal` (`STOP`, `CONT`) to a process this test started.
async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Runs of consecutive numbers, for a readable failure message.
fn runs(numbers: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &n in numbers {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == n => *last = n,
            _ => runs.push((n, n)),
        }
    }
    runs
}

/// The hub restarts while alice streams numbered messages to bob on the other server; the
/// backlog arrives at bob's server in a burst that his client, stopped meanwhile (a phone in a
/// tunnel), cannot take: his small queue overflows and he is disconnected as too slow. Every
/// number then either reached bob's client or came back to alice as not delivered: none is lost
/// without notice.
#[tokio::test]
async fn a_burst_after_a_hub_restart_loses_nothing_without_notice() {
    const COUNT: u32 = 4500;
    // The receiving server has a small client queue and no grace, so the burst overflows it for
    // sure. The sending server's grace is generous: alice's client takes thousands of notices,
    // and on a loaded machine a second without room would cut her off, and the notices with her.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write config");
        path.to_str().expect("UTF-8 path").to_owned()
    };
    let sending = config("sending.toml", "client_grace = \"30s\"\n");
    let receiving = config("receiving.toml", "client_queue = 16\nclient_grace = \"0s\"\n");

    let (mut hub, transfer, _) = start_hub().await;
    let transfer = transfer.to_string();
    let mut servers = Vec::new();
    let mut listen = Vec::new();
    for (id, config) in [("0", &sending), ("1", &receiving)] {
        let (mut server, addr) = im_server(id, &transfer, &["--config", config]).await;
        server
            .stderr
            .wait_for("`connected to hub`", |line| line.contains("connected to hub"))
            .await;
        servers.push(server);
        listen.push(addr);
    }
    // Through the servers and the hub, which is what restarts: no direct path.
    let client = |user: &str, server: &str| {
        let args = ["--server", server, "--user", user, "--no-p2p"];
        Proc::start(user, &program("im-client"), &args)
    };
    let mut alice = client("alice", &listen[0]);
    let mut bob = client("bob", &listen[1]);
    for user in [&mut alice, &mut bob] {
        user.stderr.wait_for("the login", |line| line.starts_with("logged in as ")).await;
    }
    // bob's client stops reading; 2 KiB a message fill the socket buffers in between.
    signal(bob.pid(), "STOP").await;
    let pad = "x".repeat(2048);

    // A third of the stream, then the hub dies; a third while it is down (kept by server 0 for
    // retransmission); a new hub on the same port; the last third.
    for n in 1..=COUNT / 3 {
        alice.say(&format!("@bob {n} {pad}")).await;
    }
    hub.kill().await;
    for n in COUNT / 3 + 1..=2 * COUNT / 3 {
        alice.say(&format!("@bob {n} {pad}")).await;
    }
    // Down long enough for server 0 to have failed a reconnect: the middle third waits there.
    for _ in 0..2 {
        servers[0].stderr.wait_for("`hub link down`", |line| line.contains("hub link down")).await;
    }
    let mut hub = Proc::start(
        "acms (restarted)",
        &program("acms"),
        &["--transfer", &transfer, "--admin", "127.0.0.1:0"],
    );
    hub.stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;
    for n in 2 * COUNT / 3 + 1..=COUNT {
        alice.say(&format!("@bob {n} {pad}")).await;
    }

    servers[1]
        .stderr
        .wait_for("bob disconnected as too slow", |line| line.contains("client is not reading"))
        .await;
    signal(bob.pid(), "CONT").await;

    // Each number must show up on one side or the other: bob's stdout or alice's notices.
    let all: BTreeSet<u32> = (1..=COUNT).collect();
    let (mut received, mut returned) = (BTreeSet::new(), BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut bob_lines = Vec::new();
    let mut alice_notices = Vec::new();
    let (mut bob_open, mut alice_open) = (true, true);
    loop {
        let accounted: BTreeSet<u32> = received.union(&returned).copied().collect();
        if accounted == all || !(bob_open || alice_open) {
            break;
        }
        let next = async {
            tokio::select! {
                line = bob.stdout.recv(), if bob_open => (true, line),
                line = alice.stderr.recv(), if alice_open => (false, line),
            }
        };
        // Stops early once both sides fell quiet: what is missing then is not coming.
        let quiet = (Instant::now() + Duration::from_secs(15)).min(deadline);
        match tokio::time::timeout_at(quiet, next).await {
            Err(_) => break,
            Ok((true, Some(line))) => bob_lines.push(line),
            Ok((true, None)) => bob_open = false,
            Ok((false, Some(line))) => alice_notices.push(line),
            Ok((false, None)) => alice_open = false,
        }
        received = numbers(&bob_lines, "alice: ");
        returned = alice_notices
            .iter()
            .filter_map(|line| {
                let rest = line.strip_prefix("not delivered to bob (")?;
                let (_reason, text) = rest.split_once("): ")?;
                number(text)
            })
            .collect();
    }
    let lost: Vec<u32> =
        all.iter().filter(|n| !received.contains(n) && !returned.contains(n)).copied().collect();
    assert!(
        lost.is_empty(),
        "{} of {COUNT} lost without notice (runs {:?}); {} received, {} returned to the sender",
        lost.len(),
        runs(&lost),
        received.len(),
        returned.len()
    );
    eprintln!(
        "of {COUNT}: {} received by bob, {} returned to alice as not delivered, 0 lost",
        received.len(),
        returned.len()
    );
}

/// A login waits for a hub that cannot be reached: SIGTERM still stops the server within 5 s,
/// and the waiting client is told.
#[tokio::test]
async fn sigterm_stops_a_server_whose_client_login_waits_for_an_unreachable_hub() {
    let hub = unreachable_addr();
    let (mut server, listen) = im_server("0", &hub, &[]).await;
    let mut bob =
        Proc::start("bob", &program("im-client"), &["--server", &listen, "--user", "bob"]);
    server
        .stderr
        .wait_for("the login waiting for the hub", |line| line.contains("login waits for the hub"))
        .await;

    let signalled = Instant::now();
    server.terminate().await;
    // Generous outer wait (exit_status waits PATIENCE), then the 5 s bound on what it took.
    let status = server.exit_status().await;
    let took = signalled.elapsed();
    assert!(took <= Duration::from_secs(5), "SIGTERM took {took:?} to stop the server");
    assert_eq!(status.code(), Some(0), "im-server exited with {status}");
    let told =
        bob.stderr.wait_for("the client's message", |line| line.contains("cannot log in")).await;
    assert!(told.contains("shutting down"), "{told}");
    let status = bob.exit_status().await;
    assert!(!status.success(), "a login that failed is an error: {status}");
    eprintln!("im-server stopped {took:?} after SIGTERM with a login pending");
}

/// A login that cannot complete because no hub answers ends with a clear error in time,
/// rather than a client that hangs.
#[tokio::test]
async fn a_login_with_no_hub_ends_with_a_clear_error() {
    let hub = unreachable_addr();
    // The default `hub_login_timeout` (10 s) is within the wait for the client's line.
    let (mut server, listen) = im_server("0", &hub, &[]).await;
    let mut bob =
        Proc::start("bob", &program("im-client"), &["--server", &listen, "--user", "bob"]);
    let told =
        bob.stderr.wait_for("the client's message", |line| line.contains("cannot log in")).await;
    assert!(told.contains("hub"), "{told}");
    assert!(!bob.exit_status().await.success());
    server.terminate().await;
    server.exits_cleanly().await;
}

/// A client moved by a drain is still in its groups on the new server: a group message sent
/// after the move reaches it.
#[tokio::test]
async fn a_drained_client_keeps_its_groups() {
    use acms_tests::http::request;
    use acms_tests::process::ADMIN_TOKEN;

    let cluster = DemoCluster::start().await;
    let mut alice = cluster.client("alice", 0, &[]).await;
    let mut bob = cluster.client("bob", 1, &[]).await;
    for user in [&mut alice, &mut bob] {
        user.say("/join room").await;
        user.stderr.wait_for("`joined #room`", |line| line == "joined #room").await;
    }
    alice.say("#room before").await;
    assert_eq!(bob.stdout.next("the room's message").await, "#room alice: before");

    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    let drained = request(cluster.admin, "POST", "/api/servers/1/drain", &auth, None).await;
    assert_eq!(drained.status, 200, "{drained:?}");
    bob.stderr.wait_for("bob's move", |line| line.starts_with("moved to server 0 (")).await;

    alice.say("#room after the move").await;
    assert_eq!(
        bob.stdout.next("the room's message after the move").await,
        "#room alice: after the move"
    );
}

/// A port nobody listens on: bound, read back, and closed again.
fn unreachable_addr() -> String {
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    unreachable.local_addr().expect("address").to_string()
}

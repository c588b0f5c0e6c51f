//! End to end through the real programs: an `acms` hub, two `im-server` examples and two
//! `im-client`s run as child processes and talk over 127.0.0.1, as a user would run them.
//!
//! The programs are not built by this test: `cargo build --workspace --bins --examples` first
//! (`scripts/test.sh` does). Every port is 0; the actual ones are read from the log lines. Every
//! wait is on a line appearing, with a generous deadline; every child is killed if the test fails.

use acms_tests::process::{Proc, assert_stopped_cleanly, field_addr, program};

#[tokio::test]
async fn chat_across_two_servers_then_clean_shutdown() {
    let acms_bin = program("acms");
    let server_bin = program("examples/im-server");
    let client_bin = program("im-client");

    // The hub.
    let mut hub = Proc::start("acms", &acms_bin, &["--transfer", "127.0.0.1:0"]);
    let ready = hub
        .stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;
    let transfer = field_addr(&ready, "transfer").to_string();

    // Two IM servers, each connected to the hub.
    let mut servers = Vec::new();
    let mut listen = Vec::new();
    for id in 0..2 {
        let name = format!("im-server {id}");
        let mut server = Proc::start(
            &name,
            &server_bin,
            &["--id", &id.to_string(), "--listen", "127.0.0.1:0", "--acms", &transfer],
        );
        let started = server
            .stderr
            .wait_for("`im-server started`", |line| line.contains("im-server started"))
            .await;
        assert!(started.contains(&format!("id={id} ")), "wrong id in {started:?}");
        listen.push(field_addr(&started, "listen").to_string());
        servers.push(server);
    }
    for server in &mut servers {
        server
            .stderr
            .wait_for("`connected to hub`", |line| line.contains("connected to hub"))
            .await;
    }

    // alice on server 0, bob on server 1. The login is answered once the hub has it, so each is
    // reachable from the other server as soon as its client says so.
    let mut alice = Proc::start("alice", &client_bin, &["--server", &listen[0], "--user", "alice"]);
    let mut bob = Proc::start("bob", &client_bin, &["--server", &listen[1], "--user", "bob"]);
    let login = |user: &'static str, id: u32| {
        let expected = format!("logged in as {user} on server {id} (");
        move |line: &str| line.starts_with(&expected)
    };
    alice.stderr.wait_for("alice's login", login("alice", 0)).await;
    bob.stderr.wait_for("bob's login", login("bob", 1)).await;

    // Both ways across the hub.
    alice.say("@bob hello bob").await;
    assert_eq!(bob.stdout.next("alice's message").await, "alice: hello bob");
    bob.say("@alice hi alice").await;
    assert_eq!(alice.stdout.next("bob's answer").await, "bob: hi alice");

    // Nobody called carol is online: the hub says so, and the sender is told.
    alice.say("@carol are you there?").await;
    alice
        .stderr
        .wait_for("the undeliverable notice", |line| {
            line == "not delivered to carol (offline): are you there?"
        })
        .await;

    // alice leaves by herself.
    alice.say("/quit").await;
    alice.exits_cleanly().await;

    // Server 1 stops while bob is still online: he is told, and his client ends cleanly.
    servers[1].terminate().await;
    bob.stderr
        .wait_for("the shutdown notice", |line| line == "error: server is shutting down")
        .await;
    bob.stderr
        .wait_for("the end of the connection", |line| line == "server closed the connection")
        .await;
    bob.exits_cleanly().await;
    let log = servers[1].exits_cleanly().await;
    assert_stopped_cleanly("im-server 1", &log);

    // Then server 0, with nobody online, then the hub.
    servers[0].terminate().await;
    let log = servers[0].exits_cleanly().await;
    assert_stopped_cleanly("im-server 0", &log);
    hub.terminate().await;
    let log = hub.exits_cleanly().await;
    assert_stopped_cleanly("acms", &log);

    // Neither client got anything it should not have.
    assert_eq!(alice.stdout.until_closed().await, ["bob: hi alice"]);
    assert_eq!(bob.stdout.until_closed().await, ["alice: hello bob"]);
}

/// The shared secret from the environment, as an operator sets it: the server with the hub's
/// secret joins, one with another secret is refused with a clear log line on both sides and
/// keeps retrying, and both programs still stop cleanly.
#[tokio::test]
async fn the_secret_from_the_environment_lets_only_the_right_server_in() {
    const SECRET: &str = "a secret for the process test";
    let mut hub = Proc::start_with_secret(
        "acms",
        &program("acms"),
        &["--transfer", "127.0.0.1:0"],
        Some(SECRET),
    );
    let ready = hub
        .stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;
    let transfer = field_addr(&ready, "transfer").to_string();
    let start = |id: &str, secret| {
        let args = ["--id", id, "--listen", "127.0.0.1:0", "--acms", &transfer];
        Proc::start_with_secret(
            &format!("im-server {id}"),
            &program("examples/im-server"),
            &args,
            Some(secret),
        )
    };

    let mut good = start("0", SECRET);
    good.stderr.wait_for("`connected to hub`", |line| line.contains("connected to hub")).await;
    hub.stderr.wait_for("the registration", |line| line.contains("app server registered")).await;

    let mut wrong = start("1", "another secret, not the hub's");
    let refusal = wrong
        .stderr
        .wait_for("`hub refused this server`", |line| line.contains("hub refused this server"))
        .await;
    assert!(refusal.contains("ACMS_SECRET"), "{refusal}");
    hub.stderr
        .wait_for("the hub's side of the refusal", |line| {
            line.contains("code=Unauthorized") && line.contains("server=1")
        })
        .await;
    // Still trying, with backoff: a wrong secret is not fatal.
    wrong
        .stderr
        .wait_for("a second attempt", |line| line.contains("hub refused this server"))
        .await;

    for server in [&mut wrong, &mut good] {
        server.terminate().await;
        server.exits_cleanly().await;
    }
    hub.terminate().await;
    let log = hub.exits_cleanly().await;
    assert_stopped_cleanly("acms", &log);
}

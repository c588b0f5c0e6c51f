//! End to end through the real programs: an `acms` hub, two `im-server` examples and two
//! `im-client`s run as child processes and talk over 127.0.0.1, as a user would run them.
//!
//! The programs are not built by this test: `cargo build --workspace --bins --examples` first
//! (`scripts/test.sh` does). Every port is 0; the actual ones are read from the log lines. Every
//! wait is on a line appearing, with a generous deadline; every child is killed if the test fails.

use acms_tests::process::{DemoCluster, Proc, assert_stopped_cleanly, field_addr, program};

#[tokio::test]
async fn chat_across_two_servers_then_clean_shutdown() {
    let acms_bin = program("acms");
    let server_bin = program("examples/im-server");
    let client_bin = program("im-client");

    // The hub.
    let mut hub =
        Proc::start("acms", &acms_bin, &["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
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
    // Through the hub (a direct path between them is tests/nat.rs's business).
    let args = |server, user| ["--server", server, "--user", user, "--no-p2p"];
    let mut alice = Proc::start("alice", &client_bin, &args(&listen[0], "alice"));
    let mut bob = Proc::start("bob", &client_bin, &args(&listen[1], "bob"));
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
        &["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
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

/// Presence and a login conflict through the real programs: `/who` finds users on either server
/// or offline, `--friends` prints online and offline lines, and a second login of the same user
/// on the other server kicks the first client, which prints why and exits, while messages go to
/// the new one.
#[tokio::test]
async fn who_friends_and_a_kick_through_the_real_programs() {
    let DemoCluster { mut hub, mut servers, listen, .. } = DemoCluster::start().await;
    let client = |name: &str, server: &str, extra: &[&str]| {
        let mut args = vec!["--server", server, "--user", name];
        args.extend_from_slice(extra);
        Proc::start(name, &program("im-client"), &args)
    };
    let logged_in = |line: &str| line.starts_with("logged in as ");

    // alice on server 0 has bob as a friend, who is not online yet.
    let mut alice = client("alice", &listen[0], &["--friends", "bob"]);
    alice.stderr.wait_for("alice's login", logged_in).await;
    alice.stderr.wait_for("bob offline", |line| line == "offline: bob").await;

    let mut bob = client("bob", &listen[1], &[]);
    bob.stderr.wait_for("bob's login", logged_in).await;
    alice.stderr.wait_for("bob online", |line| line == "online: bob (server 1)").await;

    alice.say("/who bob").await;
    alice.stderr.wait_for("where bob is", |line| line == "bob is online on server 1").await;
    alice.say("/who carol").await;
    alice.stderr.wait_for("carol offline", |line| line == "carol is offline").await;
    alice.say("/who alice").await;
    alice.stderr.wait_for("where alice is", |line| line == "alice is online on server 0").await;

    // bob logs in again, on server 0: the older session is kicked and told why.
    let mut new_bob = client("bob", &listen[0], &[]);
    new_bob.stderr.wait_for("the new bob's login", logged_in).await;
    bob.stderr.wait_for("the kick", |line| line == "kicked: bob logged in on server 0").await;
    bob.exits_cleanly().await;
    alice.stderr.wait_for("bob moved", |line| line == "online: bob (server 0)").await;

    alice.say("@bob are you the new one?").await;
    assert_eq!(new_bob.stdout.next("alice's message").await, "alice: are you the new one?");

    for client in [&mut alice, &mut new_bob] {
        client.say("/quit").await;
        client.exits_cleanly().await;
    }
    for server in &mut servers {
        server.terminate().await;
        let log = server.exits_cleanly().await;
        assert_stopped_cleanly("im-server", &log);
    }
    hub.terminate().await;
    let log = hub.exits_cleanly().await;
    assert_stopped_cleanly("acms", &log);
    assert!(bob.stdout.until_closed().await.is_empty(), "the kicked bob got no message");
}

/// Groups and broadcast through the real programs: `/join`, `#ROOM text` and `/all text` typed
/// into `im-client`s on two `im-server`s.
#[tokio::test]
async fn rooms_and_messages_to_all_across_two_servers() {
    let DemoCluster { mut hub, mut servers, listen, .. } = DemoCluster::start().await;

    // alice and carol on server 0, bob on server 1.
    let client = |user: &str, server: &str| {
        Proc::start(user, &program("im-client"), &["--server", server, "--user", user])
    };
    let mut alice = client("alice", &listen[0]);
    let mut bob = client("bob", &listen[1]);
    let mut carol = client("carol", &listen[0]);
    for user in [&mut alice, &mut bob, &mut carol] {
        user.stderr.wait_for("the login", |line| line.starts_with("logged in as ")).await;
    }

    // alice and bob join the room; carol does not.
    for user in [&mut alice, &mut bob] {
        user.say("/join room").await;
        user.stderr.wait_for("`joined #room`", |line| line == "joined #room").await;
    }
    alice.say("#room hello room").await;
    assert_eq!(bob.stdout.next("the room's message").await, "#room alice: hello room");

    // To everyone online but the sender, on both servers.
    bob.say("/all hi everyone").await;
    assert_eq!(alice.stdout.next("bob's message to all").await, "* bob: hi everyone");
    assert_eq!(carol.stdout.next("bob's message to all").await, "* bob: hi everyone");

    // Once bob left the room, its messages no longer reach him.
    bob.say("/leave room").await;
    bob.stderr.wait_for("`left #room`", |line| line == "left #room").await;
    alice.say("#room anyone?").await;
    alice.say("@bob done").await;
    assert_eq!(bob.stdout.next("alice's last message").await, "alice: done");

    for user in [&mut alice, &mut bob, &mut carol] {
        user.say("/quit").await;
        user.exits_cleanly().await;
    }
    for server in &mut servers {
        server.terminate().await;
        let log = server.exits_cleanly().await;
        assert_stopped_cleanly(server.name(), &log);
    }
    hub.terminate().await;
    let log = hub.exits_cleanly().await;
    assert_stopped_cleanly("acms", &log);

    // Nobody got anything twice, nor anything meant for others; the sender never got its own.
    assert_eq!(alice.stdout.until_closed().await, ["* bob: hi everyone"]);
    assert_eq!(bob.stdout.until_closed().await, ["#room alice: hello room", "alice: done"]);
    assert_eq!(carol.stdout.until_closed().await, ["* bob: hi everyone"]);
}

/// A program whose log reader went away (its stderr pipe closed, as when piped into `head`) still
/// stops on SIGTERM: the shutdown does not wait on a log line that can no longer be written.
#[tokio::test]
async fn programs_stop_on_sigterm_after_their_log_pipe_closed() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    async fn start_and_orphan_stderr(
        program: &std::path::Path,
        args: &[&str],
    ) -> tokio::process::Child {
        let mut child = Command::new(program)
            .args(args)
            .env_remove("ACMS_SECRET")
            .env("ACMS_ADMIN_TOKEN", acms_tests::process::ADMIN_TOKEN)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the program");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let first = tokio::time::timeout(acms_tests::PATIENCE, stderr.next_line()).await;
        assert!(matches!(first, Ok(Ok(Some(_)))), "no first log line: {first:?}");
        // The reader goes away; every later log line meets a closed pipe.
        drop(stderr);
        child
    }

    let mut hub = start_and_orphan_stderr(
        &program("acms"),
        &["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
    )
    .await;
    let mut server = start_and_orphan_stderr(
        &program("examples/im-server"),
        &["--id", "0", "--listen", "127.0.0.1:0", "--acms", "127.0.0.1:1"],
    )
    .await;
    for child in [&mut server, &mut hub] {
        let pid = child.id().expect("still running").to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill");
        assert!(killed.success());
        let exited = tokio::time::timeout(acms_tests::PATIENCE, child.wait()).await;
        assert!(exited.is_ok(), "still running {:?} after SIGTERM", acms_tests::PATIENCE);
    }
}

/// `im-client --acms-http` with no `--server` asks the hub and lands on the server it assigns:
/// with the default policy `min-users`, the one without alice.
#[tokio::test]
async fn a_client_without_a_server_lands_where_the_hub_assigns() {
    let cluster = DemoCluster::start().await;
    let mut alice = cluster.client("alice", 0, &[]).await;
    let acms_http = format!("http://{}", cluster.admin);
    let args = ["--acms-http", acms_http.as_str(), "--user", "carol"];
    let mut carol = Proc::start("carol", &program("im-client"), &args);
    carol
        .stderr
        .wait_for("carol's assignment", |line| line.starts_with("the hub assigned server 1 ("))
        .await;
    carol
        .stderr
        .wait_for("carol's login", |line| line.starts_with("logged in as carol on server 1 ("))
        .await;
    // And she is reachable there.
    alice.say("@carol hello").await;
    assert_eq!(carol.stdout.next("alice's message").await, "alice: hello");
}

/// A drain through the admin API: bob's client on server 1 moves to server 0 by itself while
/// alice streams numbered messages to him, and he gets every one exactly once. Server 1 then
/// shows `drained` and is never assigned.
#[tokio::test]
async fn a_drained_servers_client_moves_and_loses_no_message() {
    use acms_tests::http::request;
    use acms_tests::process::ADMIN_TOKEN;

    const COUNT: usize = 200;
    let cluster = DemoCluster::start().await;
    // Through the servers, which is what a drain moves: no direct path.
    let mut alice = cluster.client("alice", 0, &["--no-p2p"]).await;
    let mut bob = cluster.client("bob", 1, &["--no-p2p"]).await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    // Refused without the token, and for a server that does not exist.
    let refused = request(cluster.admin, "POST", "/api/servers/1/drain", &[], None).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let unknown = request(cluster.admin, "POST", "/api/servers/7/drain", &auth, None).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Half the stream before the drain, half while bob moves.
    for n in 1..=COUNT / 2 {
        alice.say(&format!("@bob {n}")).await;
    }
    let drained = request(cluster.admin, "POST", "/api/servers/1/drain", &auth, None).await;
    assert_eq!(drained.status, 200, "{drained:?}");
    let answer = drained.json();
    assert_eq!(answer["server"], 1, "{answer}");
    assert_eq!(answer["target"].as_str(), Some(cluster.listen[0].as_str()), "{answer}");
    for n in COUNT / 2 + 1..=COUNT {
        alice.say(&format!("@bob {n}")).await;
    }

    bob.stderr.wait_for("bob's move", |line| line.starts_with("moved to server 0 (")).await;
    let mut received = Vec::new();
    while received.len() < COUNT {
        let line = bob.stdout.next("alice's messages").await;
        let n: usize = line
            .strip_prefix("alice: ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        received.push(n);
    }
    let mut sorted = received.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, (1..=COUNT).collect::<Vec<_>>(), "every message once: {received:?}");

    // bob is on server 0 now: a message after the move reaches him there.
    alice.say("@bob after").await;
    assert_eq!(bob.stdout.next("the message after the move").await, "alice: after");

    // Server 1 has no users left: drained.
    let deadline = tokio::time::Instant::now() + acms_tests::process::PATIENCE;
    loop {
        let servers = request(cluster.admin, "GET", "/api/servers", &[], None).await.json();
        let state = servers[1]["state"].as_str().map(str::to_owned);
        if state.as_deref() == Some("drained") {
            assert_eq!(servers[0]["state"], "active", "{servers}");
            break;
        }
        assert_eq!(state.as_deref(), Some("draining"), "{servers}");
        assert!(tokio::time::Instant::now() < deadline, "server 1 never drained: {servers}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Emptier than server 0, yet never assigned.
    for key in ["carol", "dave", "erin", "frank"] {
        let path = format!("/api/assign?key={key}");
        let assigned = request(cluster.admin, "GET", &path, &[], None).await.json();
        assert_eq!(assigned["server"], 0, "{key}: {assigned}");
    }
}

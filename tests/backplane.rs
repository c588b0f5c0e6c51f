//! Several active hubs on a NATS cluster (the backplane): three `acms` processes on a real
//! three-node NATS cluster with JetStream, app servers each on a different hub. Unicast crosses
//! hubs both ways; a numbered stream from a user on one hub to a user on another arrives whole,
//! once and in order, also when the receiver's hub is killed mid-stream (its server moves to the
//! hub it lists second) and when a NATS node is killed mid-stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acms_appserver::{Cluster, Event, Events, LinkState, ServerId};
use acms_tests::nats::{
    HubProc, NatsCluster, free_port, metric, server_on_each, start_hubs_with, wait_located,
};
use acms_tests::process::{Proc, field_addr, program};
use acms_tests::stream::{number, numbered};
use acms_tests::{PATIENCE, http, user, wait_link};

/// Messages in each numbered stream.
const STREAM: u32 = 2_000;

/// Three hubs, hub `i` connected first to NATS node `i`.
async fn start_hubs(nats: &NatsCluster) -> Vec<HubProc> {
    start_hubs_with(nats, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_servers_on_three_hubs_reach_each_other_both_ways() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let mut servers = Vec::new();
    let mut listen = Vec::new();
    for (id, hub) in hubs.iter().enumerate() {
        let id_text = id.to_string();
        let acms = hub.transfer.to_string();
        let args = ["--id", &id_text, "--listen", "127.0.0.1:0", "--acms", &acms];
        let mut server =
            Proc::start(&format!("im-server {id}"), &program("examples/im-server"), &args);
        let started = server
            .stderr
            .wait_for("`im-server started`", |l| l.contains("im-server started"))
            .await;
        listen.push(field_addr(&started, "listen").to_string());
        server.stderr.wait_for("`connected to hub`", |l| l.contains("connected to hub")).await;
        servers.push(server);
    }
    let mut clients = Vec::new();
    for (id, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
        let mut client =
            Proc::start(name, &program("im-client"), &["--server", &listen[id], "--user", name]);
        let expected = format!("logged in as {name} on server {id} (");
        client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
        clients.push(client);
    }
    // Every hub has every user in its replica before the first message.
    for hub in &hubs {
        for (id, name) in ["alice", "bob", "carol"].into_iter().enumerate() {
            wait_located(hub.admin, name, id as u32).await;
        }
    }
    clients[0].say("@bob hello bob").await;
    assert_eq!(clients[1].stdout.next("alice's message").await, "alice: hello bob");
    clients[1].say("@alice hi alice").await;
    assert_eq!(clients[0].stdout.next("bob's answer").await, "bob: hi alice");
    clients[2].say("@alice from hub three").await;
    assert_eq!(clients[0].stdout.next("carol's message").await, "carol: from hub three");
    clients[0].say("@carol and back").await;
    assert_eq!(clients[2].stdout.next("alice's answer").await, "alice: and back");
    // Nobody called dave is online on any hub: the sender is told.
    clients[0].say("@dave are you there?").await;
    clients[0]
        .stderr
        .wait_for("the undeliverable notice", |line| {
            line == "not delivered to dave (offline): are you there?"
        })
        .await;
    drop((clients, servers, hubs));
}

/// What the receiver of a stream saw.
#[derive(Debug, Default)]
struct Seen {
    received: AtomicU32,
    /// The longest wait between two messages, in microseconds: how long traffic stopped.
    longest_pause_us: AtomicU64,
}

/// Receives messages `0..STREAM` from alice, asserting each arrives once and in order.
async fn receive(mut events: Events, seen: Arc<Seen>) {
    let mut next = 0;
    let mut last = Instant::now();
    while next < STREAM {
        let batch = tokio::time::timeout(PATIENCE * 3, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("stalled after {next} of {STREAM} messages"))
            .expect("events open");
        let now = Instant::now();
        if next > 0 {
            let pause = now.duration_since(last).as_micros() as u64;
            seen.longest_pause_us.fetch_max(pause, Ordering::Relaxed);
        }
        last = now;
        for event in batch {
            match event {
                Event::Message { from, payload, .. } if from.as_str() == "alice" => {
                    let got = number(&payload);
                    assert_eq!(got, next, "message {got} arrived where {next} was due");
                    next += 1;
                    seen.received.store(next, Ordering::Relaxed);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(extra.is_err(), "unexpected event after the stream: {extra:?}");
}

/// A numbered stream from alice (server 10 on `hubs[0]`) to bob (server 11, listing
/// `bob_hubs`); `disrupt` runs once a third has arrived. Returns the longest pause bob saw.
async fn stream(hubs: &[HubProc], bob_hubs: &[usize], disrupt: impl AsyncFnOnce()) -> Duration {
    let start = |id: u32, on: Vec<String>| {
        Cluster::builder(ServerId(id), "")
            .hubs(on)
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .start()
    };
    let (sender, mut sender_events) = start(10, vec![hubs[0].transfer.to_string()]);
    let bob_list = bob_hubs.iter().map(|&i| hubs[i].transfer.to_string()).collect();
    let (receiver, receiver_events) = start(11, bob_list);
    wait_link(&sender, LinkState::Connected).await;
    wait_link(&receiver, LinkState::Connected).await;
    let (alice, bob) = (user("alice"), user("bob"));
    sender.login(alice.clone()).await.expect("login alice");
    receiver.login(bob.clone()).await.expect("login bob");
    wait_located(hubs[0].admin, "bob", 11).await;

    let seen = Arc::new(Seen::default());
    let receiving = tokio::spawn(receive(receiver_events, seen.clone()));
    let bounced = tokio::spawn(async move {
        let mut bounced = 0;
        while let Some(event) = sender_events.recv().await {
            if matches!(event, Event::Undeliverable { .. }) {
                bounced += 1;
            }
        }
        bounced
    });
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for seq in 0..STREAM {
                sender.send_to_user(&alice, &bob, numbered(seq, 64)).await.expect("send");
                // Paced, so the disruption falls in the middle of the stream.
                if seq % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    acms_tests::eventually("a third of the stream", || {
        seen.received.load(Ordering::Relaxed) >= STREAM / 3
    })
    .await;
    disrupt().await;
    sending.await.expect("sender");
    receiving.await.expect("every message once, in order");
    let pause = Duration::from_micros(seen.longest_pause_us.load(Ordering::Relaxed));
    sender.close().await;
    receiver.close().await;
    // The sender's events end once its last handle is gone.
    drop(sender);
    let bounced = tokio::time::timeout(PATIENCE, bounced)
        .await
        .expect("the sender's events end")
        .expect("sender events");
    assert_eq!(bounced, 0, "no message came back undeliverable");
    pause
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_numbered_stream_crosses_hubs_whole_and_in_order() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let pause = stream(&hubs, &[1], async || {}).await;
    // The sender's hub shows the backplane's health.
    let metrics = http::request(hubs[0].admin, "GET", "/metrics", &[], None).await.body;
    assert!(metrics.contains("acms_backplane_hubs_alive 2"), "{metrics}");
    let published = metrics
        .lines()
        .find_map(|line| line.strip_prefix("acms_backplane_messages_total{what=\"published\"} "))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no published count in {metrics}"));
    assert!(published > 0, "the stream crossed the backplane");
    println!(
        "{STREAM} messages hub A -> hub B: 0 lost, 0 duplicated, 0 out of order; longest pause {pause:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_hub_killed_mid_stream_loses_nothing() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    // Bob's server lists hub B first, then hub C, where it moves.
    let pid = hubs[1].proc.pid();
    let pause = stream(&hubs, &[1, 2], async move || kill(pid).await).await;
    println!(
        "{STREAM} messages, hub B SIGKILLed mid-stream, its server moved to hub C: 0 lost, 0 \
         duplicated, 0 out of order; traffic stopped for at most {pause:?}"
    );
}

/// Sends SIGKILL to `pid`, a process this test started.
async fn kill(pid: u32) {
    signal(pid, "-KILL").await;
}

/// Sends `signal` to `pid`, a process this test started.
async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_mid_stream_loses_nothing() {
    let mut nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let pid = nats.nodes[1].pid().expect("node 1 runs");
    let pause = stream(&hubs, &[1], async move || kill(pid).await).await;
    // Reaped.
    nats.nodes[1].kill().await;
    println!(
        "{STREAM} messages, NATS node of hub B SIGKILLed mid-stream: 0 lost, 0 duplicated, 0 out of order; traffic stopped for at most {pause:?}"
    );
}

#[tokio::test]
async fn an_unreachable_backplane_is_a_clear_error_naming_the_url() {
    // A port nobody listens on.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let args = ["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--backplane", &url];
    let mut hub = Proc::start("acms", &program("acms"), &args);
    let status = hub.exit_status().await;
    let said = hub.stderr.until_closed().await.join("\n");
    assert!(!status.success(), "acms exited with {status}; it said:\n{said}");
    assert!(
        said.contains("cannot connect to the NATS backplane") && said.contains(&url),
        "the error names the backplane's URL; it said:\n{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_server_whose_hub_died_for_good_comes_back_undeliverable() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let start = |id: u32, on: &HubProc| {
        Cluster::builder(ServerId(id), on.transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .start()
    };
    let (sender, mut sender_events) = start(10, &hubs[0]);
    // Bob's server knows only hub B: when B dies it comes back nowhere.
    let (receiver, _receiver_events) = start(11, &hubs[1]);
    wait_link(&sender, LinkState::Connected).await;
    wait_link(&receiver, LinkState::Connected).await;
    let (alice, bob) = (user("alice"), user("bob"));
    sender.login(alice.clone()).await.expect("login alice");
    receiver.login(bob.clone()).await.expect("login bob");
    wait_located(hubs[0].admin, "bob", 11).await;

    kill(hubs[1].proc.pid()).await;
    let killed = Instant::now();
    sender.send_to_user(&alice, &bob, numbered(7, 16)).await.expect("send");
    // Held while bob's server may still move; then, the hub dead past the reconnect grace
    // (3 s + 5 s by default), bob is online nowhere and the message comes back.
    let event = tokio::time::timeout(PATIENCE * 2, sender_events.recv())
        .await
        .expect("an answer within the dead hub's deadline and grace")
        .expect("events open");
    match event {
        Event::Undeliverable { to, payload, .. } => {
            assert_eq!((to.as_str(), number(&payload)), ("bob", 7));
        }
        other => panic!("expected the message back undeliverable, got {other:?}"),
    }
    println!("undeliverable {:?} after the hub's death", killed.elapsed());
    drop(receiver);
    sender.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_logins_racing_on_two_hubs_leave_exactly_one_session() {
    const TRIES: usize = 40;
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let start = |id: u32, on: &HubProc| {
        Cluster::builder(ServerId(id), on.transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .start()
    };
    let (one, _one_events) = start(10, &hubs[0]);
    let (two, _two_events) = start(11, &hubs[1]);
    wait_link(&one, LinkState::Connected).await;
    wait_link(&two, LinkState::Connected).await;
    let mut winners = [0; 2];
    for attempt in 0..TRIES {
        let name = format!("racer{attempt}");
        let racer = user(&name);
        let (a, b) = tokio::join!(one.login(racer.clone()), two.login(racer.clone()));
        a.expect("login on hub A");
        b.expect("login on hub B");
        let sessions = || usize::from(one.is_local(&name)) + usize::from(two.is_local(&name));
        acms_tests::eventually(&format!("one session of {name}"), || sessions() == 1).await;
        let winner: u32 = if one.is_local(&name) { 10 } else { 11 };
        // Both hubs agree on where the user is; the loser's kick, if any, has come by then.
        for hub in &hubs[..2] {
            wait_located(hub.admin, &name, winner).await;
        }
        one.flush().await.expect("flush");
        two.flush().await.expect("flush");
        assert_eq!(sessions(), 1, "{name}: exactly one session survives");
        winners[usize::from(winner == 11)] += 1;
    }
    println!(
        "{TRIES} racing logins under replace: one session each; server 10 won {}, server 11 won {}",
        winners[0], winners[1]
    );

    // One after the other: the newer login, on the other hub, wins.
    one.login(user("mover")).await.expect("first login");
    wait_located(hubs[1].admin, "mover", 10).await;
    two.login(user("mover")).await.expect("second login");
    acms_tests::eventually("the older session kicked", || !one.is_local("mover")).await;
    assert!(two.is_local("mover"));
    one.close().await;
    two.close().await;
}

/// The next presence event for `name`, skipping others.
async fn next_presence(events: &mut Events, name: &str, step: &str) -> Option<ServerId> {
    loop {
        let event = tokio::time::timeout(PATIENCE, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no presence event for {name} ({step})"))
            .expect("events open");
        if let Event::Presence { user, server, .. } = event
            && user.as_str() == name
        {
            return server;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_on_one_hub_hears_a_user_on_another_come_and_go() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let start = |id: u32, on: &HubProc| {
        Cluster::builder(ServerId(id), on.transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .start()
    };
    let (watcher, mut events) = start(10, &hubs[0]);
    let (home, _home_events) = start(11, &hubs[1]);
    let (other, _other_events) = start(12, &hubs[2]);
    for cluster in [&watcher, &home, &other] {
        wait_link(cluster, LinkState::Connected).await;
    }
    let bob = user("bob");
    watcher.watch([bob.clone()]).await.expect("watch");
    assert_eq!(next_presence(&mut events, "bob", "watch").await, None, "offline at first");
    home.login(bob.clone()).await.expect("login on hub B");
    assert_eq!(next_presence(&mut events, "bob", "login on B").await, Some(ServerId(11)));
    // Logged in on hub C: the session on hub B ends (replace); the watcher hears the move, and
    // no offline between.
    other.login(bob.clone()).await.expect("login on hub C");
    assert_eq!(next_presence(&mut events, "bob", "login on C").await, Some(ServerId(12)));
    other.logout(&bob).await.expect("logout");
    assert_eq!(next_presence(&mut events, "bob", "logout").await, None, "offline everywhere");
    for cluster in [watcher, home, other] {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receivers_hub_paused_past_the_keepalive_loses_nothing() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let pid = hubs[1].proc.pid();
    let hub_c = hubs[2].admin;
    let pause = stream(&hubs, &[1, 2], async move || {
        signal(pid, "-STOP").await;
        // Bob's server gives up on the silent hub after its keepalive and moves to hub C.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let servers = http::request(hub_c, "GET", "/api/servers", &[], None).await.json();
            let here = |s: &serde_json::Value| s["id"] == 11 && s["state"] == "active";
            if servers.as_array().is_some_and(|list| list.iter().any(here)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "server 11 never moved to hub C");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal(pid, "-CONT").await;
    })
    .await;
    println!(
        "{STREAM} messages, hub B SIGSTOPped past the keepalive then SIGCONTed: 0 lost, 0 \
         duplicated, 0 out of order; traffic stopped for at most {pause:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_server_messages_reach_the_servers_of_every_hub() {
    use acms_appserver::Outcome;
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    for (index, cluster) in clusters.iter().enumerate() {
        cluster.login(user(&format!("u{}", 10 + index))).await.expect("login");
    }
    // Every hub knows every server, and its hub alive, before the first copy.
    for hub in &hubs {
        for id in 10..13 {
            wait_located(hub.admin, &format!("u{id}"), id).await;
        }
    }
    // Any hub's admin API lists the servers of every hub, with their hub.
    let servers = http::request(hubs[0].admin, "GET", "/api/servers", &[], None).await.json();
    let servers = servers.as_array().expect("a list").clone();
    let summary: Vec<(u64, &str)> =
        servers.iter().map(|s| (s["id"].as_u64().unwrap(), s["state"].as_str().unwrap())).collect();
    assert_eq!(summary, vec![(10, "active"), (11, "remote"), (12, "remote")]);
    let hubs_named: std::collections::HashSet<&str> =
        servers.iter().map(|s| s["hub"].as_str().expect("a hub id")).collect();
    assert_eq!(hubs_named.len(), 3, "each server on its own hub: {servers:?}");
    assert!(servers.iter().all(|s| s["users"] == 1), "{servers:?}");
    let receipt =
        clusters[0].broadcast(&user("u10"), numbered(1, 8), false).await.expect("broadcast");
    for (index, events) in events.iter_mut().enumerate().skip(1) {
        let event = tokio::time::timeout(PATIENCE, events.recv()).await.expect("in time");
        match event.expect("events open") {
            Event::Broadcast { from, to, payload } => {
                assert_eq!(from.as_str(), "u10");
                assert_eq!(to, vec![user(&format!("u{}", 10 + index))]);
                assert_eq!(number(&payload), 1);
            }
            other => panic!("expected the broadcast on server {}, got {other:?}", 10 + index),
        }
    }
    assert!(
        matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 }),
        "both other servers acknowledged the broadcast"
    );
    // A server message to one server on another hub, then to every server.
    let receipt = clusters[0].send_to_server(ServerId(12), numbered(2, 8)).await.expect("send");
    let event = tokio::time::timeout(PATIENCE, events[2].recv()).await.expect("in time");
    match event.expect("events open") {
        Event::ServerMessage { from, payload } => {
            assert_eq!((from, number(&payload)), (ServerId(10), 2));
        }
        other => panic!("expected the server message, got {other:?}"),
    }
    assert!(matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 1 }));
    let receipt = clusters[0].send_to_all_servers(numbered(3, 8)).await.expect("send");
    for events in events.iter_mut().skip(1) {
        let event = tokio::time::timeout(PATIENCE, events.recv()).await.expect("in time");
        assert!(matches!(event, Some(Event::ServerMessage { .. })), "{event:?}");
    }
    assert!(matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 }));
    for cluster in clusters {
        cluster.close().await;
    }
}

/// Three hubs whose settle window (the directory still filling after a hub's first
/// registration) lasts a minute, far past the patience of a test: whatever waits for the window
/// to end shows as a stall. The config file lives as long as the returned guard.
async fn start_hubs_settling(nats: &NatsCluster) -> (Vec<HubProc>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("acms.toml");
    std::fs::write(&path, "[transfer]\nsettle = \"60s\"\n").expect("write config");
    let config = path.display().to_string();
    (start_hubs_with(nats, &["--config", &config]).await, dir)
}

/// Alice's server (10) on hub A, the first there, so hub A's settle window is open; bob's
/// server (11) on hub B, with bob not logged in yet.
async fn sender_before_its_recipient(hubs: &[HubProc]) -> (Cluster, Events, Cluster, Events) {
    let start = |id: u32, on: &HubProc| {
        Cluster::builder(ServerId(id), on.transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .start()
    };
    let (sender, sender_events) = start(10, &hubs[0]);
    let (receiver, receiver_events) = start(11, &hubs[1]);
    wait_link(&sender, LinkState::Connected).await;
    wait_link(&receiver, LinkState::Connected).await;
    sender.login(user("alice")).await.expect("login alice");
    // Hub B routes alice's server: bob's acknowledgements can go back.
    wait_located(hubs[1].admin, "alice", 10).await;
    (sender, sender_events, receiver, receiver_events)
}

/// Receives messages `0..count` from alice, each once and in order; the instant of the first.
async fn receive_all(events: &mut Events, count: u32) -> Instant {
    let mut next = 0;
    let mut first = None;
    while next < count {
        let batch = tokio::time::timeout(PATIENCE, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("stalled after {next} of {count} messages"))
            .expect("events open");
        first.get_or_insert_with(Instant::now);
        for event in batch {
            match event {
                Event::Message { from, payload, .. } if from.as_str() == "alice" => {
                    let got = number(&payload);
                    assert_eq!(got, next, "message {got} arrived where {next} was due");
                    next += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
    }
    first.expect("at least one message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_held_for_a_login_on_another_hub_flow_when_the_directory_has_it() {
    const COUNT: u32 = 200;
    let nats = NatsCluster::start().await;
    let (hubs, _config) = start_hubs_settling(&nats).await;
    let (sender, _sender_events, receiver, mut receiver_events) =
        sender_before_its_recipient(&hubs).await;
    let (alice, bob) = (user("alice"), user("bob"));
    // Bob is in no directory yet: in hub A's settle window his frames are held, not bounced.
    for seq in 0..COUNT {
        sender.send_to_user(&alice, &bob, numbered(seq, 64)).await.expect("send");
    }
    sender.flush().await.expect("flush");
    let login = Instant::now();
    receiver.login(bob.clone()).await.expect("login bob");
    // They flow as soon as hub A's replica has bob, not when the window ends.
    let first = receive_all(&mut receiver_events, COUNT).await;
    println!(
        "{COUNT} messages held for bob until his login on hub B reached hub A: first arrived \
         {:?} after the login",
        first - login
    );
    sender.close().await;
    receiver.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_that_flushes_and_leaves_at_once_loses_nothing_held_at_its_hub() {
    const COUNT: u32 = 5_000;
    let nats = NatsCluster::start().await;
    let (hubs, _config) = start_hubs_settling(&nats).await;
    let (sender, _sender_events, receiver, mut receiver_events) =
        sender_before_its_recipient(&hubs).await;
    let (alice, bob) = (user("alice"), user("bob"));
    for seq in 0..COUNT {
        sender.send_to_user(&alice, &bob, numbered(seq, 64)).await.expect("send");
    }
    sender.flush().await.expect("flush");
    // Hub A accepted every frame and holds them for bob, whom no directory has yet. The sender
    // leaves at once (`Bye`) while bob logs in on hub B: every frame must still reach him.
    let closing = tokio::spawn(async move { sender.close().await });
    receiver.login(bob.clone()).await.expect("login bob");
    receive_all(&mut receiver_events, COUNT).await;
    tokio::time::timeout(PATIENCE, closing).await.expect("close ends").expect("close");
    let extra = tokio::time::timeout(Duration::from_millis(300), receiver_events.recv()).await;
    assert!(extra.is_err(), "nothing after the stream: {extra:?}");
    receiver.close().await;
    println!("{COUNT} messages held at the sender's hub, the sender gone at once: all arrived");
}

/// Registers a raw app server `id` on the hub at `addr` and reads its `Welcome` and `Servers`.
async fn raw_server(addr: SocketAddr, id: u32) -> acms_tests::Peer {
    use acms_protocol::{Control, Frame};
    let mut peer = acms_tests::raw_hello(addr, id).await;
    let welcome = acms_tests::next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    peer
}

/// The hub that the hub at `admin` says server `id` is on, once it lists it there as `state`.
async fn server_hub(admin: SocketAddr, id: u64, state: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let servers = http::request(admin, "GET", "/api/servers", &[], None).await.json();
        let found = servers.as_array().and_then(|list| {
            list.iter().find(|s| s["id"] == id && s["state"] == state).map(|s| s["hub"].clone())
        });
        if let Some(hub) = found.and_then(|hub| hub.as_str().map(str::to_owned)) {
            return hub;
        }
        assert!(tokio::time::Instant::now() < deadline, "{admin} never listed {id} as {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_for_a_server_that_moved_and_is_still_sending_its_snapshot_is_not_bounced() {
    use acms_protocol::{Ack, Control, Frame, SeqRange};
    use futures_util::SinkExt;
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    // Every hub hears the others before the first frame: an ack for a server of a hub not
    // heard from yet has nowhere to go.
    for hub in &hubs {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let metrics = http::request(hub.admin, "GET", "/metrics", &[], None).await.body;
            if metrics.contains("acms_backplane_hubs_alive 2") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the hubs never heard each other");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (sender, mut sender_events) = Cluster::builder(ServerId(10), hubs[0].transfer.to_string())
        .client_addr(format!("127.0.0.1:{}", free_port()))
        .start();
    wait_link(&sender, LinkState::Connected).await;
    let (alice, bob) = (user("alice"), user("bob"));
    sender.login(alice.clone()).await.expect("login alice");
    // Bob's server 11 on hub B, then cut off without a goodbye: bob stays in the directory.
    let mut first = raw_server(hubs[1].transfer, 11).await;
    first.send(Frame::Control(Control::Login { users: vec![bob.clone()] })).await.unwrap();
    first.send(Frame::Control(Control::SnapshotDone)).await.unwrap();
    wait_located(hubs[0].admin, "bob", 11).await;
    drop(first);
    // It registers on hub C, and hub A routes to it there before its snapshot (bob's login).
    let mut moved = raw_server(hubs[2].transfer, 11).await;
    let hub_c = server_hub(hubs[2].admin, 11, "active").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server_hub(hubs[0].admin, 11, "remote").await != hub_c {
        assert!(tokio::time::Instant::now() < deadline, "hub A never routed server 11 to hub C");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_before = held(hubs[2].admin).await;
    sender.send_to_user(&alice, &bob, numbered(1, 16)).await.expect("send");
    sender.flush().await.expect("flush");
    // Hub C gets the frame before bob is in its registry: it must hold it, not bounce it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while held(hubs[2].admin).await == held_before {
        // Meanwhile the sender hears of a bounce, if there is one.
        let event = tokio::time::timeout(Duration::from_millis(20), sender_events.recv()).await;
        if let Ok(Some(event)) = event {
            assert!(!matches!(event, Event::Undeliverable { .. }), "bounced: {event:?}");
        }
        assert!(tokio::time::Instant::now() < deadline, "hub C never held the frame");
    }
    // Then the snapshot comes, and the frame with it.
    moved.send(Frame::Control(Control::Login { users: vec![bob.clone()] })).await.unwrap();
    moved.send(Frame::Control(Control::SnapshotDone)).await.unwrap();
    let data = loop {
        match acms_tests::next_frame(&mut moved).await {
            Some(Frame::Data(data)) => break data,
            Some(_) => continue,
            None => panic!("hub C closed the moved server's connection"),
        }
    };
    assert_eq!(
        (data.origin, data.recipient.as_str(), number(&data.payload)),
        (ServerId(10), "bob", 1)
    );
    let ranges = vec![SeqRange { first: data.seq, count: 1 }];
    moved.send(Frame::Ack(Ack { to: ServerId(10), from: ServerId(11), ranges })).await.unwrap();
    sender.close().await;
    drop(sender);
    while let Some(event) = sender_events.recv().await {
        assert!(!matches!(event, Event::Undeliverable { .. }), "bounced: {event:?}");
    }
}

/// The `acms_held_total` counter of the hub whose admin API is at `admin`: frames it dropped for
/// their origin to send again.
async fn held(admin: SocketAddr) -> u64 {
    metric(admin, "acms_held_total").await.unwrap_or_else(|| panic!("no held count at {admin}"))
}

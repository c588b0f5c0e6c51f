//! Where hubs join a NATS backplane: a hub that the other hubs have not heard from yet (the
//! directory tells them of its app servers, through the key-value watch, before its first
//! heartbeat reaches them), and hubs that use their NATS servers in the listed order. Real
//! `acms` processes on a real three-node NATS cluster.

use acms_appserver::LinkState;
use acms_appserver::{Cluster, Event, Outcome, ServerId};
use acms_tests::nats::{HubProc, NatsCluster, free_port, server_on_each};
use acms_tests::process::start_hub_with;
use acms_tests::{PATIENCE, user, wait_link};

/// Hub A beats every 5 s, so hub B, started after A's first heartbeat, learns of the server
/// that registers on A from the directory seconds before it hears A. That server's first
/// messages are acknowledged at once: the receiving server's `Resent` and acks reach hub A
/// although hub B has not heard it yet. (Before, hub B dropped the `Resent`, hub A kept the
/// new server's acks back until it asked again three heartbeats later, and the acks dropped
/// meanwhile never came: the sender's receipts timed out, and a bulk sender stalled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_hub_not_heard_from_yet_gets_its_acks() {
    let nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("acms.toml");
    std::fs::write(&config, "[backplane]\nheartbeat = \"5s\"\ndead_after = \"15s\"\n")
        .expect("write config");
    let config = config.display().to_string();
    // Hub B beats every 500 ms (the default), so hub A hears it at once, but judges hub A by
    // hub A's own pace: with the default 3 s, it took hub A, beating every 5 s, for dead
    // between two beats, and a test slowed by a busy machine lost its acks to that.
    let config_b = dir.path().join("acms-b.toml");
    std::fs::write(&config_b, "[backplane]\ndead_after = \"15s\"\n").expect("write config");
    let config_b = config_b.display().to_string();
    let urls_a = nats.urls_from(0);
    let (_hub_a, transfer_a, _admin_a) =
        start_hub_with(&["--backplane", &urls_a, "--config", &config]).await;
    let urls_b = nats.urls_from(1);
    let (_hub_b, transfer_b, _admin_b) =
        start_hub_with(&["--backplane", &urls_b, "--config", &config_b]).await;
    let start = |id: u32, hub: std::net::SocketAddr| {
        Cluster::builder(ServerId(id), hub.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .start()
    };
    let (receiver, mut received) = start(11, transfer_b);
    wait_link(&receiver, LinkState::Connected).await;
    receiver.login(user("bob")).await.expect("login bob");
    let (sender, _sender_events) = start(10, transfer_a);
    wait_link(&sender, LinkState::Connected).await;
    sender.login(user("alice")).await.expect("login alice");
    // Hub A hears hub B within its 500 ms heartbeat; then it routes to bob.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sender.locate(&user("bob")).await.expect("locate") != Some(ServerId(11)) {
        assert!(tokio::time::Instant::now() < deadline, "hub A never located bob");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for n in 0..5 {
        let payload = format!("hello {n}");
        let receipt = sender
            .send_with_receipt(&user("alice"), &user("bob"), payload.clone().into())
            .await
            .expect("send");
        match tokio::time::timeout(PATIENCE, received.recv()).await {
            Ok(Some(Event::Message { payload: got, .. })) => {
                assert_eq!(&got[..], payload.as_bytes())
            }
            other => panic!("bob did not get message {n}: {other:?}"),
        }
        let outcome = receipt.outcome(PATIENCE).await;
        assert!(
            matches!(outcome, Outcome::Delivered { .. }),
            "message {n} was delivered, yet its receipt says {outcome:?}"
        );
    }
    sender.close().await;
    receiver.close().await;
}

/// Hubs told `in_order` with the same list meet on its first NATS server, so a frame between
/// them crosses one server, not two; when that server dies, both move to the next listed, and
/// frames cross again. (Without `in_order`, each hub picks a random server of its list: both
/// on the first one 1 time in 9.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_in_order_meet_on_their_first_nats_server_and_move_on_together() {
    let mut nats = NatsCluster::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("acms.toml");
    std::fs::write(&config, "[backplane]\nin_order = true\n").expect("write config");
    let config = config.display().to_string();
    // Node 1 first, then node 2, then node 0.
    let urls = nats.urls_from(1);
    let mut hubs = Vec::new();
    for _ in 0..2 {
        let (proc, transfer, admin) =
            start_hub_with(&["--backplane", &urls, "--config", &config]).await;
        hubs.push(HubProc { proc, transfer, admin });
    }
    wait_hubs_on(&nats, 1, 2).await;
    for node in [0, 2] {
        assert_eq!(nats.nodes[node].hub_connections().await, Some(0), "a hub on node {node}");
    }
    let (servers, mut events) = server_on_each(&hubs).await;
    servers[1].login(user("bob")).await.expect("login bob");
    servers[0].login(user("alice")).await.expect("login alice");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while servers[0].locate(&user("bob")).await.expect("locate") != Some(ServerId(11)) {
        assert!(tokio::time::Instant::now() < deadline, "hub A never located bob");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut cross = async |payload: &'static str| {
        servers[0].send_to_user(&user("alice"), &user("bob"), payload.into()).await.expect("send");
        match tokio::time::timeout(PATIENCE, events[1].recv()).await {
            Ok(Some(Event::Message { payload: got, .. })) => {
                assert_eq!(&got[..], payload.as_bytes())
            }
            other => panic!("bob did not get {payload:?} across hubs: {other:?}"),
        }
    };
    cross("via node 1").await;
    // The first listed dies: both take the next, and frames cross there.
    nats.nodes[1].kill().await;
    wait_hubs_on(&nats, 2, 2).await;
    cross("via node 2").await;
    for server in servers {
        server.close().await;
    }
}

/// Waits until NATS node `node` has `count` hubs connected.
async fn wait_hubs_on(nats: &NatsCluster, node: usize, count: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let connected = nats.nodes[node].hub_connections().await;
        if connected == Some(count) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {node} has {connected:?} hubs connected, not {count}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

//! A hub that the other hubs of a NATS backplane have not heard from yet: the directory tells
//! them of its app servers (through the key-value watch) before its first heartbeat reaches
//! them. Real `acms` processes on a real three-node NATS cluster.

use acms_appserver::LinkState;
use acms_appserver::{Cluster, Event, Outcome, ServerId};
use acms_tests::nats::{NatsCluster, free_port};
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
    let urls_a = nats.urls_from(0);
    let (_hub_a, transfer_a, _admin_a) =
        start_hub_with(&["--backplane", &urls_a, "--config", &config]).await;
    let urls_b = nats.urls_from(1);
    let (_hub_b, transfer_b, _admin_b) = start_hub_with(&["--backplane", &urls_b]).await;
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

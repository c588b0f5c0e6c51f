//! Flow control across hubs on the backplane: a fast sender on one hub and a slow receiver on
//! another. The receiver's hub asks the sender's hub to pause the sender's reader while the
//! receiver's queue is above its high water, as one hub pauses a local sender, so the
//! slow-consumer rule does not fire and the stream arrives whole, once and in order.

use std::io::Write;
use std::time::{Duration, Instant};

use acms_appserver::{Cluster, Event, LinkState, ServerId};
use acms_tests::nats::{NatsCluster, free_port, metric, start_hubs_with, wait_located};
use acms_tests::stream::{number, numbered};
use acms_tests::{PATIENCE, user, wait_link};

/// Messages in the stream, and the size of each: 8 MiB in all, eight times the receiving
/// queue's limit.
const STREAM: u32 = 2_000;
const SIZE: usize = 4 * 1024;

/// The hubs' queue limits: small, so the stream is many times what one queue may hold.
const HIGH_WATER_BYTES: usize = 64 * 1024;
const MAX_PENDING_BYTES: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_on_one_hub_is_slowed_to_a_slow_receiver_on_another() {
    let mut config = tempfile::NamedTempFile::new().expect("temp config");
    write!(
        config,
        "[transfer]\nhigh_water_bytes = {HIGH_WATER_BYTES}\nmax_pending_bytes = {MAX_PENDING_BYTES}\n"
    )
    .expect("write config");
    let path = config.path().display().to_string();
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &["--config", &path]).await;
    let start = |id: u32, hub: usize| {
        Cluster::builder(ServerId(id), hubs[hub].transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            // The receiving app takes one event at a time: its link stops reading from its hub
            // as soon as the app falls behind.
            .event_capacity(1)
            .start()
    };
    let (sender, mut sender_events) = start(10, 0);
    let (receiver, mut receiver_events) = start(11, 1);
    wait_link(&sender, LinkState::Connected).await;
    wait_link(&receiver, LinkState::Connected).await;
    let (alice, bob) = (user("alice"), user("bob"));
    sender.login(alice.clone()).await.expect("login alice");
    receiver.login(bob.clone()).await.expect("login bob");
    wait_located(hubs[0].admin, "bob", 11).await;

    let started = Instant::now();
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move {
            // As fast as `send` accepts.
            for seq in 0..STREAM {
                sender.send_to_user(&alice, &bob, numbered(seq, SIZE)).await.expect("send");
            }
        })
    };
    // A slow app: it takes a pause after every batch of events, so it drains its queue on the
    // receiving hub far slower than the sender fills it.
    let receiving = tokio::spawn(async move {
        let mut next = 0;
        while next < STREAM {
            let batch = tokio::time::timeout(PATIENCE * 3, receiver_events.recv_batch())
                .await
                .unwrap_or_else(|_| panic!("stalled after {next} of {STREAM} messages"))
                .expect("events open");
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
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let extra = tokio::time::timeout(Duration::from_millis(300), receiver_events.recv()).await;
        assert!(extra.is_err(), "unexpected event after the stream: {extra:?}");
    });
    sending.await.expect("every message accepted");
    receiving.await.expect("every message once, in order");
    let elapsed = started.elapsed();

    let slow_consumers = metric(hubs[1].admin, "acms_slow_consumer_disconnects_total").await;
    let pauses = metric(hubs[0].admin, "acms_backplane_pauses_total").await;
    println!(
        "{STREAM} messages of {SIZE} bytes, hub A -> slow receiver on hub B in {elapsed:?}: \
         0 lost, 0 duplicated, 0 out of order; slow-consumer disconnects on hub B: \
         {slow_consumers:?}; pauses on hub A: {pauses:?}"
    );
    assert_eq!(
        slow_consumers,
        Some(0),
        "the slow receiver was cut off instead of its sender paused"
    );
    assert!(pauses.is_some_and(|pauses| pauses > 0), "hub A never paused the sender: {pauses:?}");
    sender.close().await;
    receiver.close().await;
    drop(sender);
    let bounced = tokio::time::timeout(PATIENCE, async {
        let mut bounced = 0;
        while let Some(event) = sender_events.recv().await {
            bounced += u32::from(matches!(event, Event::Undeliverable { .. }));
        }
        bounced
    })
    .await
    .expect("the sender's events end");
    assert_eq!(bounced, 0, "no message came back undeliverable");
}

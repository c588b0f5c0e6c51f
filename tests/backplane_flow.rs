//! Flow control across hubs on the backplane: a fast sender on one hub and a slow receiver on
//! another. The sender's hub keeps at most a window of bytes on their way to the receiver's
//! server, and the receiver's hub credits them back only as its queue for that server drains, so
//! the sender is slowed to the receiver's pace as on one hub: the slow-consumer rule does not
//! fire, and the stream arrives whole, once and in order. A receiver that stops reading
//! altogether is cut off after `max_stall`, and its sender reads again.

use std::io::Write;
use std::time::{Duration, Instant};

use acms_appserver::{Cluster, Event, Events, GroupId, LinkState, ServerId};
use acms_tests::nats::{
    HubProc, NatsCluster, free_port, metric, start_hubs_with, wait_located, wait_sessions,
};
use acms_tests::stream::{expect_stream, expect_stream_slowly, numbered};
use acms_tests::{PATIENCE, user, wait_link};

/// Messages in the stream, and the size of each: 8 MiB in all, eight times the receiving
/// queue's limit.
const STREAM: u32 = 2_000;
const SIZE: usize = 4 * 1024;

/// The hubs' queue limits: small, so the stream is many times what one queue may hold.
const HIGH_WATER_BYTES: usize = 64 * 1024;
const MAX_PENDING_BYTES: usize = 1024 * 1024;

/// Both ends of an app server.
type Server = (Cluster, Events);

/// Three hubs on a NATS cluster with the small queue limits and `transfer` (more of the
/// `[transfer]` section); alice on server 10 of hub A and bob on server 11 of hub B, logged in
/// and located by hub A.
async fn sender_and_receiver(transfer: &str) -> (NatsCluster, Vec<HubProc>, Server, Server) {
    let mut config = tempfile::NamedTempFile::new().expect("temp config");
    write!(
        config,
        "[transfer]\nhigh_water_bytes = {HIGH_WATER_BYTES}\nmax_pending_bytes = {MAX_PENDING_BYTES}\n{transfer}"
    )
    .expect("write config");
    let path = config.path().display().to_string();
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &["--config", &path]).await;
    let start = |id: u32, hub: usize| {
        Cluster::builder(ServerId(id), hubs[hub].transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            // The receiving app takes one event at a time: its link stops reading from its hub
            // as soon as the app falls behind.
            .event_capacity(1)
            .start()
    };
    let (sender, sender_events) = start(10, 0);
    let (receiver, receiver_events) = start(11, 1);
    wait_link(&sender, LinkState::Connected).await;
    wait_link(&receiver, LinkState::Connected).await;
    sender.login(user("alice")).await.expect("login alice");
    receiver.login(user("bob")).await.expect("login bob");
    wait_located(hubs[0].admin, "bob", 11).await;
    (nats, hubs, (sender, sender_events), (receiver, receiver_events))
}

/// Sends messages `0..count` of `SIZE` bytes from alice to bob, as fast as `send` accepts.
fn send_stream(sender: &Cluster, count: u32) -> tokio::task::JoinHandle<()> {
    let sender = sender.clone();
    tokio::spawn(async move {
        let (alice, bob) = (user("alice"), user("bob"));
        for seq in 0..count {
            sender.send_to_user(&alice, &bob, numbered(seq, SIZE)).await.expect("send");
        }
    })
}

/// Closes both servers; asserts nothing came back to the sender undeliverable.
async fn close((sender, mut sender_events): Server, receiver: Cluster) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_on_one_hub_is_slowed_to_a_slow_receiver_on_another() {
    a_flood_to_a_slow_receiver_on_another_hub_is_paced(Flood::Unicast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_is_cut_off_after_max_stall_and_its_sender_reads_again() {
    // 12 MiB: more than the socket buffers on the way to bob take while his app reads nothing.
    const COUNT: u32 = 3_000;
    let (_nats, mut hubs, sender, (receiver, mut receiver_events)) =
        sender_and_receiver("max_stall = \"300ms\"\n").await;
    let sending = send_stream(&sender.0, COUNT);
    // Bob's app reads nothing until his hub has applied the slow-consumer rule: his queue
    // stayed above its high water for `max_stall` while alice's hub waited for credit.
    let stalled = hubs[1]
        .proc
        .stderr
        .wait_for("the stall rule on hub B", |line| line.contains("did not drain in time"))
        .await;
    assert!(stalled.contains("slow_server=11"), "{stalled}");
    // Then it reads: everything arrives once, in order, so alice's hub read on after the stall.
    expect_stream(&mut receiver_events, "alice", COUNT).await;
    sending.await.expect("every message accepted");
    let full = hubs[1]
        .proc
        .stderr
        .so_far()
        .iter()
        .any(|line| line.contains("slow consumer: disconnecting it"));
    assert!(!full, "bob's queue reached its limit: the window did not hold alice's hub back");
    let slow_consumers = metric(hubs[1].admin, "acms_slow_consumer_disconnects_total").await;
    println!(
        "{COUNT} messages to a receiver that stopped reading: cut off {slow_consumers:?} times \
         after max_stall, never for a full queue; then all arrived once, in order"
    );
    close(sender, receiver).await;
}

/// The queue of messages waiting for NATS is full (two batches here, so a burst fills it): the
/// readers that feed it wait for it to drain, as for a server's queue, and nothing is dropped.
/// (Before, a batch that found the queue full was dropped, and recovered as a gap by having
/// every origin send again: under a steady sender the resent bytes met the same full queue.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_to_nats_holds_its_readers_and_drops_nothing() {
    let (_nats, hubs, sender, (receiver, mut receiver_events)) =
        sender_and_receiver("[backplane]\nmax_pending_batches = 2\n").await;
    let started = Instant::now();
    let sending = send_stream(&sender.0, STREAM);
    expect_stream(&mut receiver_events, "alice", STREAM).await;
    sending.await.expect("every message accepted");
    let dropped = metric(hubs[0].admin, "acms_backplane_messages_total{what=\"dropped\"}").await;
    let published =
        metric(hubs[0].admin, "acms_backplane_messages_total{what=\"published\"}").await;
    println!(
        "{STREAM} messages of {SIZE} bytes through a queue to NATS of 2 batches in {:?}: 0 lost, \
         0 duplicated, 0 out of order; published {published:?}, dropped {dropped:?}",
        started.elapsed()
    );
    assert_eq!(dropped, Some(0), "hub A dropped batches for a full queue to NATS");
    close(sender, receiver).await;
}

/// What a flood is sent to.
#[derive(Clone, Copy, Debug)]
enum Flood {
    Unicast,
    /// Unicast to a user with a second session on a third hub (`multi`): a copy for each.
    TwoSessions,
    Group,
    Broadcast,
}

/// A flood from one hub to a slow receiver on another is paced as on one hub, and the slow
/// app drains it at its own pace: hub A pauses alice's server, hub B never cuts bob's off.
/// A unicast counts against the window of its recipient's server; each copy of a group or
/// broadcast frame against the window of the server it is for, and that server's hub credits
/// it back as it queues it. (Before, hub B cut the slow receiver off as a slow consumer again
/// and again, and everything was sent again after each: 16 times for the unicast stream before
/// the windows, 6 for the group flood and 9 for the broadcast before fan-out frames counted.)
async fn a_flood_to_a_slow_receiver_on_another_hub_is_paced(flood: Flood) {
    let policy = match flood {
        Flood::TwoSessions => "login_conflict = \"multi\"\n",
        _ => "",
    };
    let (_nats, hubs, sender, (receiver, mut receiver_events)) = sender_and_receiver(policy).await;
    // Bob's second session, on hub C, takes its copies at full speed.
    let mut second = None;
    if let Flood::TwoSessions = flood {
        let (cluster, events) = Cluster::builder(ServerId(12), hubs[2].transfer.to_string())
            .client_addr(format!("127.0.0.1:{}", free_port()))
            .start();
        wait_link(&cluster, LinkState::Connected).await;
        cluster.login(user("bob")).await.expect("second login of bob");
        wait_sessions(hubs[0].admin, "bob", &[11, 12]).await;
        second = Some((cluster, events));
    }
    let room = GroupId::new("room").expect("group id");
    if let Flood::Group = flood {
        receiver.join(&room, &user("bob")).await.expect("join");
        // Hub A learns from the groups bucket that hub B has a member.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while metric(hubs[0].admin, "acms_backplane_group_interest").await != Some(1) {
            assert!(tokio::time::Instant::now() < deadline, "hub A never saw bob's group");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let started = Instant::now();
    let sending = {
        let (sender, room) = (sender.0.clone(), room.clone());
        tokio::spawn(async move {
            let alice = user("alice");
            for seq in 0..STREAM {
                let payload = numbered(seq, SIZE);
                let sent = match flood {
                    Flood::Unicast | Flood::TwoSessions => {
                        sender.send_to_user(&alice, &user("bob"), payload).await.map(drop)
                    }
                    Flood::Group => {
                        sender.send_to_group(&alice, &room, payload, false).await.map(drop)
                    }
                    Flood::Broadcast => sender.broadcast(&alice, payload, true).await.map(drop),
                };
                sent.expect("send");
            }
        })
    };
    let receiving = tokio::spawn(async move {
        let pause = Duration::from_millis(1);
        expect_stream_slowly(&mut receiver_events, "alice", STREAM, pause).await;
    });
    let second = second.map(|(cluster, mut events)| {
        let receiving = tokio::spawn(async move {
            expect_stream(&mut events, "alice", STREAM).await;
        });
        (cluster, receiving)
    });
    sending.await.expect("every message accepted");
    receiving.await.expect("every message once, in order");
    if let Some((cluster, receiving)) = second {
        receiving.await.expect("every message once, in order, at the second session too");
        cluster.close().await;
    }
    let slow_consumers = metric(hubs[1].admin, "acms_slow_consumer_disconnects_total").await;
    let pauses = metric(hubs[0].admin, "acms_backplane_pauses_total").await;
    println!(
        "{STREAM} {flood:?} messages of {SIZE} bytes, hub A -> slow receiver on hub B in {:?}: 0 \
         lost, 0 duplicated, 0 out of order; slow-consumer disconnects on hub B: \
         {slow_consumers:?}; pauses on hub A: {pauses:?}",
        started.elapsed()
    );
    assert_eq!(slow_consumers, Some(0), "the slow receiver was cut off instead of paced");
    assert!(pauses.is_some_and(|pauses| pauses > 0), "hub A never paused the sender: {pauses:?}");
    let shut = metric(hubs[0].admin, "acms_backplane_windows_shut").await;
    assert_eq!(shut, Some(0), "every window was credited open again once the stream was in");
    close(sender, receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_a_user_with_sessions_on_two_other_hubs_is_paced_to_the_slow_one() {
    a_flood_to_a_slow_receiver_on_another_hub_is_paced(Flood::TwoSessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_flood_to_a_slow_member_on_another_hub_is_paced_not_cut_off() {
    a_flood_to_a_slow_receiver_on_another_hub_is_paced(Flood::Group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_flood_to_a_slow_server_on_another_hub_is_paced_not_cut_off() {
    a_flood_to_a_slow_receiver_on_another_hub_is_paced(Flood::Broadcast).await;
}

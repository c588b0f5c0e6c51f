//! Frames in flight to a server that leaves for good: each reaches its recipient or comes back
//! to its sender as undeliverable, and every receipt resolves (docs/RELIABILITY.md, "When frames
//! are sent again").
//!
//! The hub is the real `acms` program with a short reconnect grace and keepalive. The receiving
//! server that freezes is the demo `im-server`, stopped with SIGSTOP, its user a demo client in
//! this process; the sender is the real library in this process.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{Cluster, Event, Events, GroupId, LinkState, Outcome, Receipt, ServerId};
use acms_client::{ImClient, ServerLine};
use acms_tests::process::{Proc, field_addr, program, start_hub_with};
use acms_tests::stream::{number, numbered};
use acms_tests::{PATIENCE, TestHub, TestServer, builder, eventually, user};
use tokio::time::MissedTickBehavior;

/// The hub's settings: a receiver silent for 1 s is cut off, and gone for good 2 s later.
const HUB_CONFIG: &str = r#"
[transfer]
reconnect_grace = "2s"
keepalive_interval = "250ms"
keepalive_timeout = "1s"
settle = "100ms"
"#;

/// Messages in the stream, sent `PER_TICK` every 10 ms: about two seconds of traffic.
const COUNT: u32 = 8_000;
const PER_TICK: u32 = 40;
/// The receiver is stopped once its user has this many.
const STOP_AT: usize = 1_000;

/// The numbers of the messages `events` returns as undeliverable, until the stream closes.
fn collect_undeliverable(mut events: Events) -> Arc<Mutex<Vec<u32>>> {
    let back = Arc::new(Mutex::new(Vec::new()));
    let collected = back.clone();
    tokio::spawn(async move {
        while let Some(batch) = events.recv_batch().await {
            for event in batch {
                if let Event::Undeliverable { payload, .. } = event {
                    collected.lock().unwrap().push(number(&payload));
                }
            }
        }
    });
    back
}

/// Where a stream goes.
#[derive(Clone, Copy)]
enum To {
    /// To bob, with a receipt each.
    Bob,
    /// To the group `room`.
    Room,
}

/// Sends messages `0..COUNT` from alice, paced, calling `tick` with the number sent so far after
/// each burst; returns their receipts.
async fn stream_with_receipts(
    cluster: &Cluster,
    to: To,
    mut tick: impl FnMut(usize),
) -> Vec<Receipt> {
    let (alice, bob, room) = (user("alice"), user("bob"), GroupId::new("room").unwrap());
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut receipts = Vec::with_capacity(COUNT as usize);
    while receipts.len() < COUNT as usize {
        ticks.tick().await;
        for _ in 0..PER_TICK {
            let payload = numbered(receipts.len() as u32, 0);
            let receipt = match to {
                To::Bob => cluster.send_with_receipt(&alice, &bob, payload).await,
                To::Room => cluster.send_to_group(&alice, &room, payload, true).await,
            };
            receipts.push(receipt.expect("send"));
        }
        tick(receipts.len());
    }
    receipts
}

/// The outcome of every receipt, waiting at most `patience` for all of them together.
async fn outcomes(receipts: Vec<Receipt>, patience: Duration) -> Vec<Outcome> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut outcomes = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        outcomes.push(receipt.outcome(left).await);
    }
    outcomes
}

/// Checks what became of the stream: every receipt resolved, the undeliverable events are
/// exactly the `Offline` receipts, and nothing reached the recipient twice. Returns the numbers
/// returned undeliverable.
fn check_outcomes(outcomes: &[Outcome], back: &[u32], received: &[u32]) -> BTreeSet<u32> {
    let pending: Vec<usize> =
        (0..outcomes.len()).filter(|&seq| matches!(outcomes[seq], Outcome::TimedOut)).collect();
    assert!(
        pending.is_empty(),
        "{} of {} receipts never resolved (first {:?}, last {:?})",
        pending.len(),
        outcomes.len(),
        pending.first(),
        pending.last()
    );
    for (seq, outcome) in outcomes.iter().enumerate() {
        assert!(
            matches!(outcome, Outcome::Delivered { sessions: 1 } | Outcome::Offline),
            "message {seq}: unexpected outcome {outcome:?}"
        );
    }
    let offline: BTreeSet<u32> = (0..outcomes.len() as u32)
        .filter(|&seq| outcomes[seq as usize] == Outcome::Offline)
        .collect();
    let returned: BTreeSet<u32> = back.iter().copied().collect();
    assert_eq!(returned.len(), back.len(), "a message came back twice");
    assert_eq!(returned, offline, "the undeliverable events are not the Offline receipts");
    assert!(
        received.windows(2).all(|pair| pair[0] < pair[1]),
        "the recipient got a message twice or out of order"
    );
    offline
}

/// Starts the hub with [`HUB_CONFIG`]; the config file is removed when the guard drops.
async fn hub() -> (Proc, SocketAddr, tempfile::TempPath) {
    let mut file = tempfile::NamedTempFile::new().expect("temporary config file");
    std::io::Write::write_all(&mut file, HUB_CONFIG.as_bytes()).expect("write config");
    let path = file.into_temp_path();
    let (hub, transfer, _) = start_hub_with(&["--config", path.to_str().unwrap()]).await;
    (hub, transfer, path)
}

/// Waits until the hub routes messages for `name` to `server`, as seen by `cluster`.
async fn wait_located(cluster: &Cluster, name: &str, server: u32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let found = cluster.locate(&user(name)).await.expect("locate");
        if found.map(|id| id.0) == Some(server) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never online on server {server}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_frozen_past_its_grace_leaves_no_receipt_pending() {
    let (mut hub, transfer, _config) = hub().await;
    let transfer = transfer.to_string();

    // The receiver: a real im-server process, and bob on it.
    let args = ["--id", "2", "--listen", "127.0.0.1:0", "--acms", &transfer];
    let mut receiver = Proc::start("im-server 2", &program("examples/im-server"), &args);
    let started =
        receiver.stderr.wait_for("`im-server started`", |l| l.contains("im-server started")).await;
    let listen = field_addr(&started, "listen");
    receiver.stderr.wait_for("`connected to hub`", |l| l.contains("connected to hub")).await;
    let mut bob = ImClient::connect(listen, "bob").await.expect("bob logs in");
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while let Ok(Some(line)) = bob.recv().await {
                if let ServerLine::Message { from, text } = line {
                    assert_eq!(from, "alice");
                    received.lock().unwrap().push(number(text.as_bytes()));
                }
            }
        }
    });

    // The sender, in this process.
    let sender = TestServer::start(1, transfer.parse().unwrap()).await;
    sender.login(&["alice"]).await;
    wait_located(&sender.cluster, "bob", 2).await;
    let back = collect_undeliverable(sender.events);

    // Mid-stream, once bob has had some, the receiver freezes and stays frozen.
    let mut stopped = false;
    let cluster = sender.cluster.clone();
    let receipts = stream_with_receipts(&cluster, To::Bob, |_| {
        if !stopped && received.lock().unwrap().len() >= STOP_AT {
            stopped = true;
            let pid = receiver.pid();
            // Synchronous: the stream must not run on past this point before the stop.
            let status = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill -STOP {pid} failed");
        }
    })
    .await;
    assert!(stopped, "bob had fewer than {STOP_AT} messages when the stream ended");
    hub.stderr
        .wait_for("the receiver's grace to end", |l| l.contains("did not come back in time"))
        .await;

    // Within the keepalive, the grace and a generous margin every receipt resolves.
    let outcomes = outcomes(receipts, PATIENCE * 3).await;
    let offline = outcomes.iter().filter(|outcome| **outcome == Outcome::Offline).count();
    eventually("every undeliverable event", || back.lock().unwrap().len() >= offline).await;
    let before_resume = received.lock().unwrap().clone();
    let back = back.lock().unwrap().clone();
    let offline = check_outcomes(&outcomes, &back, &before_resume);
    assert!(!offline.is_empty(), "nothing was in flight to the frozen receiver");
    let both = before_resume.iter().filter(|seq| offline.contains(seq)).count();
    eprintln!(
        "bob got {} before the freeze; {} came back undeliverable; {} delivered; {both} both \
         (handed to the frozen app, its ack never sent)",
        before_resume.len(),
        offline.len(),
        outcomes.len() - offline.len(),
    );

    // Resumed, the receiver finds its hub connection silent past its keepalive, and drops it
    // with what its socket still held: those messages came back to alice already. It connects
    // again with bob; a marker from alice reaches bob after anything the receiver had left.
    let pid = receiver.pid().to_string();
    let status = tokio::process::Command::new("kill").args(["-CONT", &pid]).status().await;
    assert!(status.expect("run kill").success(), "kill -CONT {pid} failed");
    receiver.stderr.wait_for("the receiver back", |l| l.contains("connected to hub")).await;
    wait_located(&sender.cluster, "bob", 2).await;
    let marker = u32::MAX;
    sender.cluster.send_to_user(&user("alice"), &user("bob"), numbered(marker, 0)).await.unwrap();
    eventually("the marker at bob", || received.lock().unwrap().last() == Some(&marker)).await;
    let received = received.lock().unwrap().clone();
    let again: Vec<u32> = received.iter().copied().filter(|seq| offline.contains(seq)).collect();
    assert_eq!(
        again.len(),
        both,
        "once resumed, the receiver handed bob {} messages that had come back undeliverable \
         (first {:?})",
        again.len() - both,
        again.iter().find(|seq| !before_resume.contains(seq))
    );
    receiver.kill().await;
    reader.abort();
    sender.cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_says_bye_with_frames_queued_leaves_no_receipt_pending() {
    // No slow-consumer cut-off: the receiver must leave by `Bye`, not be disconnected.
    let config = HubConfig {
        settle: Duration::from_millis(100),
        max_stall: PATIENCE * 6,
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    // One batch of events in its queue at most: once the app stops reading, so does the library.
    let receiver = builder(2, hub.addr).event_capacity(1);
    let mut receiver = TestServer::start_with(receiver, LinkState::Connected).await;
    receiver.login(&["bob"]).await;
    let sender = TestServer::start(1, hub.addr).await;
    sender.login(&["alice"]).await;
    hub.wait_for(2, 2).await;
    let back = collect_undeliverable(sender.events);

    let sent = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let (cluster, sent) = (sender.cluster.clone(), sent.clone());
        async move {
            stream_with_receipts(&cluster, To::Bob, |count| sent.store(count, Ordering::Relaxed))
                .await
        }
    });
    // The receiving app takes some, then stops reading: what follows waits in its library, in
    // the sockets and in the hub's queue for it when it leaves.
    let mut received = Vec::new();
    while received.len() < STOP_AT {
        let batch = tokio::time::timeout(PATIENCE, receiver.events.recv_batch())
            .await
            .expect("messages in time")
            .expect("events open");
        for event in batch {
            if let Event::Message { payload, .. } = event {
                received.push(number(&payload));
            }
        }
    }
    let more = STOP_AT * 3;
    eventually("the stream to go on", || sent.load(Ordering::Relaxed) >= more).await;
    receiver.cluster.close().await;

    let receipts = stream.await.expect("stream task");
    let outcomes = outcomes(receipts, PATIENCE * 3).await;
    let offline = outcomes.iter().filter(|outcome| **outcome == Outcome::Offline).count();
    eventually("every undeliverable event", || back.lock().unwrap().len() >= offline).await;
    let back = back.lock().unwrap().clone();
    let offline = check_outcomes(&outcomes, &back, &received);
    assert!(!offline.is_empty(), "nothing was in flight to the server that left");
    let taken_back = received.iter().filter(|seq| offline.contains(seq)).count();
    assert_eq!(taken_back, 0, "messages the app had came back undeliverable");
    eprintln!(
        "the app took {} before it stopped reading; {} came back undeliverable; {} delivered",
        received.len(),
        offline.len(),
        outcomes.len() - offline.len(),
    );
    sender.cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_queued_to_a_server_that_says_bye_resolve_and_reach_the_others_once() {
    let config = HubConfig {
        settle: Duration::from_millis(100),
        max_stall: PATIENCE * 6,
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let room = GroupId::new("room").unwrap();
    // bob's server leaves with group messages queued to it; carol's stays.
    let leaving = builder(2, hub.addr).event_capacity(1);
    let mut leaving = TestServer::start_with(leaving, LinkState::Connected).await;
    let staying = TestServer::start(3, hub.addr).await;
    let sender = TestServer::start(1, hub.addr).await;
    for (server, name) in [(&leaving, "bob"), (&staying, "carol"), (&sender, "alice")] {
        server.login(&[name]).await;
        server.cluster.join(&room, &user(name)).await.expect("join");
        server.cluster.flush().await.expect("flush");
    }
    hub.wait_for(3, 3).await;
    eventually("both servers in the group", || {
        hub.hub.groups().servers_of("room", ServerId(1)).len() == 2
    })
    .await;
    let mut sender_events = sender.events;
    // carol's app reads all along, up to a marker from alice: frames from one origin to one
    // server arrive in order, so a duplicate of any group message would come before it.
    let marker = numbered(u32::MAX, 0);
    let carol = tokio::spawn({
        let (mut events, marker) = (staying.events, marker.clone());
        async move {
            let mut got = Vec::new();
            while let Some(batch) = events.recv_batch().await {
                for event in batch {
                    match event {
                        Event::GroupMessage { payload, .. } => got.push(number(&payload)),
                        Event::Message { payload, .. } if payload == marker => return got,
                        other => panic!("unexpected event at carol's server: {other:?}"),
                    }
                }
            }
            panic!("carol's events ended before the marker");
        }
    });

    let sent = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn({
        let (cluster, sent) = (sender.cluster.clone(), sent.clone());
        async move {
            stream_with_receipts(&cluster, To::Room, |count| sent.store(count, Ordering::Relaxed))
                .await
        }
    });
    let mut taken = 0;
    while taken < STOP_AT {
        let batch = tokio::time::timeout(PATIENCE, leaving.events.recv_batch())
            .await
            .expect("messages in time")
            .expect("events open");
        taken += batch.iter().filter(|event| matches!(event, Event::GroupMessage { .. })).count();
    }
    let more = STOP_AT * 3;
    eventually("the stream to go on", || sent.load(Ordering::Relaxed) >= more).await;
    leaving.cluster.close().await;

    let receipts = stream.await.expect("stream task");
    let outcomes = outcomes(receipts, PATIENCE * 3).await;
    let unsettled: Vec<(usize, &Outcome)> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| !matches!(outcome, Outcome::Reached { servers: 1 | 2 }))
        .collect();
    assert!(
        unsettled.is_empty(),
        "{} of {COUNT} group messages not settled: first {:?}, last {:?}",
        unsettled.len(),
        unsettled.first(),
        unsettled.last()
    );
    sender.cluster.send_to_user(&user("alice"), &user("carol"), marker).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, carol).await.expect("the marker in time");
    let got = got.expect("carol's reader");
    assert!(got.iter().copied().eq(0..COUNT), "carol did not get 0..{COUNT} once each, in order");
    let undeliverable = tokio::time::timeout(Duration::ZERO, sender_events.recv()).await;
    assert!(
        !matches!(undeliverable, Ok(Some(Event::Undeliverable { .. }))),
        "a group message came back undeliverable: a group is not a person"
    );
    staying.cluster.close().await;
    sender.cluster.close().await;
}

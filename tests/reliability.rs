//! Exactly-once delivery: messages numbered by the test arrive once each and in order across a
//! hub that dies mid-stream and a receiver that is cut off and comes back; receipts and the
//! retransmit buffer's bound.

use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{Cluster, Event, LinkState, Outcome, ServerId};
use acms_tests::stream::{expect_stream, number, numbered, start_doomed_hub};
use acms_tests::{PATIENCE, TestHub, TestServer, eventually, user, wait_link};
use bytes::Bytes;

#[tokio::test]
async fn nothing_is_lost_or_duplicated_when_the_hub_dies_mid_stream() {
    const COUNT: u32 = 30_000;
    let (doomed, addr) = start_doomed_hub("127.0.0.1:0".parse().unwrap());
    let sender = TestServer::start(0, addr).await;
    let mut receiver = TestServer::start(1, addr).await;
    sender.login(&["alice"]).await;
    receiver.login(&["bob"]).await;

    let cluster = sender.cluster.clone();
    let sending = tokio::spawn(async move {
        for seq in 0..COUNT {
            let payload = numbered(seq, 64);
            cluster.send_to_user(&user("alice"), &user("bob"), payload).await.unwrap();
        }
    });
    // Kill the hub once the stream is well under way, and start another on the same port.
    let mut seen = 0;
    while seen < COUNT / 4 {
        let batch = tokio::time::timeout(PATIENCE, receiver.events.recv_batch()).await.unwrap();
        for event in batch.unwrap() {
            let Event::Message { payload, .. } = event else { panic!("{event:?}") };
            assert_eq!(number(&payload), seen);
            seen += 1;
        }
    }
    doomed.shutdown_background();
    wait_link(&receiver.cluster, LinkState::Connecting).await;
    let _hub = TestHub::start_with(HubConfig::default(), addr).await;

    // The rest of the stream, after the `seen` already checked.
    let mut rest = 0;
    while seen + rest < COUNT {
        let batch = tokio::time::timeout(PATIENCE * 3, receiver.events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("stalled at {}", seen + rest))
            .unwrap();
        for event in batch {
            let Event::Message { payload, .. } = event else { panic!("{event:?}") };
            assert_eq!(number(&payload), seen + rest, "lost or duplicated across the failover");
            rest += 1;
        }
    }
    sending.await.unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(300), receiver.events.recv()).await;
    assert!(extra.is_err(), "duplicate after the stream: {extra:?}");
}

#[tokio::test]
async fn frames_held_for_a_user_not_yet_back_are_not_overtaken() {
    const HALF: u32 = 5_000;
    // Long enough for the whole test to fall inside the window after a restart.
    let config = HubConfig { settle: Duration::from_secs(3), ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut receiver = TestServer::start(1, hub.addr).await;
    let sender = TestServer::start(0, hub.addr).await;
    sender.login(&["alice"]).await;
    let send = |range: std::ops::Range<u32>| {
        let cluster = sender.cluster.clone();
        async move {
            for seq in range {
                cluster
                    .send_to_user(&user("alice"), &user("bob"), numbered(seq, 64))
                    .await
                    .unwrap();
            }
            cluster.flush().await.unwrap();
        }
    };
    // Bob is not back yet: the hub holds the first half for nobody, as just after a restart.
    send(0..HALF).await;
    let stats = hub.hub.clone();
    eventually("the first half held", || stats.stats().held >= u64::from(HALF)).await;
    // Bob is back; the second half must not overtake the first, which comes again later.
    receiver.login(&["bob"]).await;
    send(HALF..2 * HALF).await;
    expect_stream(&mut receiver.events, "alice", 2 * HALF).await;
}

#[tokio::test]
async fn a_receiver_cut_off_as_a_slow_consumer_gets_everything_when_it_returns() {
    const COUNT: u32 = 20_000;
    let config = HubConfig {
        high_water_bytes: 32 * 1024,
        max_stall: Duration::from_millis(200),
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let sender = TestServer::start(0, hub.addr).await;
    sender.login(&["alice"]).await;
    // A receiver whose app does not read: its link stops reading, the hub's queue for it fills.
    let (cluster, mut events) = Cluster::builder(ServerId(1), hub.addr.to_string())
        .event_capacity(1)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start();
    wait_link(&cluster, LinkState::Connected).await;
    cluster.login(user("bob")).await.unwrap();
    cluster.flush().await.unwrap();

    let sending = tokio::spawn({
        let cluster = sender.cluster.clone();
        async move {
            for seq in 0..COUNT {
                let payload = numbered(seq, 1024);
                cluster.send_to_user(&user("alice"), &user("bob"), payload).await.unwrap();
            }
        }
    });
    let stats = hub.hub.clone();
    eventually("the receiver cut off as a slow consumer", || stats.stats().slow_consumers > 0)
        .await;
    // Now the app reads again: every message, once, in order.
    expect_stream(&mut events, "alice", COUNT).await;
    sending.await.unwrap();
    assert!(hub.hub.stats().held > 0 || hub.hub.stats().slow_consumers > 0);
}

/// A sender the hub stops reading from (its receiver is slow) keeps its link: the hub's idle
/// writer pings it, so its keepalive sees a live hub however long the pushback lasts.
#[tokio::test]
async fn a_sender_held_back_by_pushback_keeps_its_link() {
    let config = HubConfig {
        high_water_bytes: 32 * 1024,
        max_stall: Duration::from_secs(1),
        keepalive_interval: Duration::from_millis(50),
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let keepalive = (Duration::from_millis(50), Duration::from_millis(250));
    let (sender, _sender_events) = Cluster::builder(ServerId(0), hub.addr.to_string())
        .keepalive(keepalive.0, keepalive.1)
        .start();
    wait_link(&sender, LinkState::Connected).await;
    sender.login(user("alice")).await.unwrap();
    // A receiver whose app does not read.
    let (receiver, _events) =
        Cluster::builder(ServerId(1), hub.addr.to_string()).event_capacity(1).start();
    wait_link(&receiver, LinkState::Connected).await;
    receiver.login(user("bob")).await.unwrap();
    receiver.flush().await.unwrap();

    let mut link = sender.link_state();
    link.mark_unchanged();
    let sending = tokio::spawn({
        let sender = sender.clone();
        async move {
            for seq in 0..5_000 {
                sender
                    .send_to_user(&user("alice"), &user("bob"), numbered(seq, 1024))
                    .await
                    .unwrap();
            }
        }
    });
    // The hub stalls the sender for `max_stall`, four times the sender's keepalive timeout, then
    // cuts the receiver off.
    let stats = hub.hub.clone();
    eventually("the receiver cut off", || stats.stats().slow_consumers > 0).await;
    assert!(!link.has_changed().unwrap(), "the sender lost its link: {:?}", *link.borrow());
    sending.abort();
}

#[tokio::test]
async fn receipts_tell_delivered_offline_and_timed_out() {
    let hub = TestHub::start().await;
    let sender = TestServer::start(0, hub.addr).await;
    let mut receiver = TestServer::start(1, hub.addr).await;
    sender.login(&["alice", "amy"]).await;
    receiver.login(&["bob"]).await;
    let (alice, bob) = (user("alice"), user("bob"));

    let receipt = sender.cluster.send_with_receipt(&alice, &bob, "hi".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });
    assert!(matches!(receiver.next_event().await, Event::Message { .. }));

    let local = sender.cluster.send_with_receipt(&alice, &user("amy"), "hey".into()).await;
    assert_eq!(local.unwrap().outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });

    let offline = sender.cluster.send_with_receipt(&alice, &user("nobody"), "x".into()).await;
    assert_eq!(offline.unwrap().outcome(PATIENCE).await, Outcome::Offline);

    // A receiver that is cut off and never comes back: no answer within the time asked for.
    hub.stop().await;
    let waiting = sender.cluster.send_with_receipt(&alice, &bob, "later".into()).await.unwrap();
    assert_eq!(waiting.outcome(Duration::from_millis(200)).await, Outcome::TimedOut);
}

#[tokio::test]
async fn a_full_retransmit_buffer_makes_senders_wait_and_try_send_fail() {
    let hub = TestHub::start().await;
    let (cluster, _events) =
        Cluster::builder(ServerId(0), hub.addr.to_string()).retransmit_buffer(4 * 1024).start();
    wait_link(&cluster, LinkState::Connected).await;
    cluster.login(user("alice")).await.unwrap();
    cluster.flush().await.unwrap();
    // The hub goes away: nothing is acknowledged, so the buffer fills and stays full.
    hub.stop().await;
    wait_link(&cluster, LinkState::Connecting).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let payload = Bytes::from(vec![b'x'; 1000]);
    let mut accepted = 0;
    loop {
        match cluster.try_send_to_user(&alice, &bob, payload.clone()).await {
            Ok(_) => accepted += 1,
            Err(acms_appserver::ClusterError::Full) => break,
            Err(err) => panic!("{err}"),
        }
        assert!(accepted < 10, "a 4 KiB buffer took {accepted} messages of 1 KB");
    }
    assert!(accepted >= 3, "only {accepted} messages fit in 4 KiB");
    let waits = tokio::time::timeout(
        Duration::from_millis(200),
        cluster.send_to_user(&alice, &bob, payload.clone()),
    )
    .await;
    assert!(waits.is_err(), "send_to_user must wait while the buffer is full");
}

/// A message the receiving app refuses goes back to its sender's server as `Undeliverable` with
/// the reason, exactly once, even when the hub restarts while the refusal is on its way; a
/// sender on the refusing server itself hears of it without the hub.
#[tokio::test]
async fn a_refused_message_goes_back_to_its_sender_once_with_its_reason() {
    use acms_appserver::UndeliverableReason;

    let hub = TestHub::start().await;
    let addr = hub.addr;
    let mut s0 = TestServer::start(0, addr).await;
    let mut s1 = TestServer::start(1, addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob", "carol"]).await;

    let receipt =
        s0.cluster.send_with_receipt(&user("alice"), &user("bob"), "hello".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });
    let Event::Message { from, to, payload } = s1.next_event().await else { panic!() };
    assert_eq!((from.as_str(), to.as_str(), &payload[..]), ("alice", "bob", &b"hello"[..]));

    // The refusal leaves while the hub is down, and arrives through the next one.
    hub.stop().await;
    wait_link(&s1.cluster, LinkState::Connecting).await;
    s1.cluster.refuse(&from, &to, payload, "too slow").await.unwrap();
    let _hub = TestHub::start_with(HubConfig::default(), addr).await;
    let expected = Event::Undeliverable {
        from: user("alice"),
        to: user("bob"),
        payload: Bytes::from_static(b"hello"),
        reason: UndeliverableReason::Refused("too slow".into()),
        invitation: false,
    };
    assert_eq!(s0.next_event().await, expected);
    let extra = tokio::time::timeout(Duration::from_millis(300), s0.events.recv()).await;
    assert!(extra.is_err(), "told twice: {extra:?}");

    // carol and bob share server 1: the refusal of carol's message stays there.
    s1.cluster.send_to_user(&user("carol"), &user("bob"), "hi".into()).await.unwrap();
    let Event::Message { from, to, payload } = s1.next_event().await else { panic!() };
    s1.cluster.refuse(&from, &to, payload, "left the server").await.unwrap();
    let Event::Undeliverable { from, to, reason, .. } = s1.next_event().await else { panic!() };
    assert_eq!((from.as_str(), to.as_str()), ("carol", "bob"));
    assert_eq!(reason, UndeliverableReason::Refused("left the server".into()));
}

/// Bad input on the way back: a refusal whose reason breaks the documented layout is
/// acknowledged, logged and dropped, and the next one still arrives; a refusal for a sender who
/// is online nowhere any more comes back to the refusing server, which only logs it.
#[tokio::test]
async fn malformed_or_unreturnable_refusals_break_nothing() {
    use acms_appserver::UndeliverableReason;
    use acms_protocol::{Control, Data, DataKind, Frame, Refusal};
    use acms_tests::{next_frame, raw_hello};
    use futures_util::SinkExt;

    // No settle window: a frame for a user online nowhere comes back at once, not held.
    let config = HubConfig { settle: Duration::ZERO, ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    // A hand-driven server 5 with carol: a refusal whose reason is longer than its payload, then
    // a good one.
    let mut peer = raw_hello(hub.addr, 5).await;
    let welcome = next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    peer.send(Frame::Control(Control::Login { users: vec![user("carol")] })).await.unwrap();
    peer.send(Frame::Control(Control::SnapshotDone)).await.unwrap();
    let refused = |seq, payload| {
        Frame::Data(Data {
            kind: DataKind::Refused,
            seq,
            origin: ServerId(5),
            recipient: user("alice"),
            sender: user("carol"),
            payload,
        })
    };
    peer.send(refused(1, Bytes::from_static(b"\x00\x09short"))).await.unwrap();
    let good = Refusal::new("gone", Bytes::from_static(b"hi")).encode();
    peer.send(refused(2, good)).await.unwrap();
    let expected = Event::Undeliverable {
        from: user("alice"),
        to: user("carol"),
        payload: Bytes::from_static(b"hi"),
        reason: UndeliverableReason::Refused("gone".into()),
        invitation: false,
    };
    assert_eq!(s0.next_event().await, expected);
    // Both acknowledged: the malformed one is not sent again forever.
    let mut acked = Vec::new();
    while acked.len() < 2 {
        if let Some(Frame::Ack(ack)) = next_frame(&mut peer).await {
            acked.extend(ack.ranges.iter().flat_map(|range| range.seqs()));
        }
    }
    assert_eq!(acked, [1, 2]);

    // alice leaves before bob's server refuses her message: it cannot go back.
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "first".into()).await.unwrap();
    let Event::Message { from, to, payload } = s1.next_event().await else { panic!() };
    s0.cluster.logout(&user("alice")).await.unwrap();
    s0.cluster.flush().await.unwrap();
    s1.cluster.refuse(&from, &to, payload, "too slow").await.unwrap();
    s1.cluster.flush().await.unwrap();
    // Back again: only what is refused from now on reaches her.
    s0.login(&["alice"]).await;
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "second".into()).await.unwrap();
    let Event::Message { from, to, payload } = s1.next_event().await else { panic!() };
    s1.cluster.refuse(&from, &to, payload, "too slow").await.unwrap();
    let Event::Undeliverable { payload, .. } = s0.next_event().await else { panic!() };
    assert_eq!(&payload[..], b"second");
    for server in [&mut s0, &mut s1] {
        let extra = tokio::time::timeout(Duration::from_millis(300), server.events.recv()).await;
        assert!(extra.is_err(), "unexpected event: {extra:?}");
    }
    assert_eq!(*s1.cluster.link_state().borrow(), LinkState::Connected);
}

/// Frames that come with the `Welcome` of a new connection, while events of the last one still
/// wait for the app, queue behind them: they never replace them. Those waiting frames are
/// counted as received, so a replaced one would be dropped as a duplicate when sent again, and
/// lost. A fake hub plays the hub, so the frames surely share a read with the `Welcome`.
#[tokio::test]
async fn frames_with_a_welcome_never_replace_events_still_waiting() {
    use acms_protocol::{Codec, Control, Data, DataKind, Frame, PROTOCOL_VERSION, Welcome};
    use acms_tests::{builder, next_frame};
    use futures_util::SinkExt;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (cluster, mut events) = builder(4, fake.local_addr().unwrap()).event_capacity(1).start();
    cluster.login(user("bob")).await.unwrap();
    let welcome = Frame::Control(Control::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        max_frame_len: 4096,
        max_users: 10_000,
        max_groups: 10_000,
    }));
    let data = |seq: u32| {
        Frame::Data(Data {
            kind: DataKind::Unicast,
            seq: u64::from(seq),
            origin: ServerId(9),
            recipient: user("bob"),
            sender: user("alice"),
            payload: numbered(seq, 16),
        })
    };
    let accept = || async {
        let (stream, _) = tokio::time::timeout(PATIENCE, fake.accept()).await.unwrap().unwrap();
        let mut hub = Framed::new(stream, Codec::default());
        assert!(matches!(next_frame(&mut hub).await, Some(Frame::Control(Control::Hello(_)))));
        hub
    };

    // First connection: message 1 fills the app's one slot, message 2 waits in the library. The
    // Pong after each proves the library read it.
    let mut hub = accept().await;
    hub.send(welcome.clone()).await.unwrap();
    for seq in 1..=2u32 {
        hub.feed(data(seq)).await.unwrap();
        hub.send(Frame::Control(Control::Ping { token: u64::from(seq) })).await.unwrap();
        loop {
            match next_frame(&mut hub).await {
                Some(Frame::Control(Control::Pong { token })) if token == u64::from(seq) => break,
                Some(_) => continue,
                None => panic!("the library closed the link"),
            }
        }
    }
    drop(hub);

    // The library connects again; message 3 comes in the same write as the Welcome.
    let mut hub = accept().await;
    hub.feed(welcome).await.unwrap();
    hub.send(data(3)).await.unwrap();

    let mut got = Vec::new();
    while got.len() < 3 {
        let batch = tokio::time::timeout(PATIENCE, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("messages stalled after {got:?}"))
            .expect("events open");
        got.extend(batch.into_iter().filter_map(|event| match event {
            Event::Message { payload, .. } => Some(number(&payload)),
            _ => None,
        }));
    }
    assert_eq!(got, [1, 2, 3], "every message once, in order");
    drop(hub);
}

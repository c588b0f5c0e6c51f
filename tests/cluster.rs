//! End to end through real sockets on 127.0.0.1: a hub, app servers on the `Cluster` handle, and
//! raw protocol peers that misbehave.

use std::time::{Duration, Instant};

use acms::HubConfig;
use acms_appserver::{Event, LinkState, SentVia, ServerId};
use acms_protocol::{
    Codec, Control, Data, DataKind, ErrorCode, Frame, Hello, PROTOCOL_VERSION, RawFrame,
};
use acms_tests::{PATIENCE, TestHub, TestServer, user, wait_link};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

fn message(from: &str, to: &str, text: &'static str) -> Event {
    Event::Message { from: user(from), to: user(to), payload: Bytes::from_static(text.as_bytes()) }
}

#[tokio::test]
async fn messages_cross_servers_both_ways() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    let route = s0.cluster.send_to_user(&user("alice"), &user("bob"), "hello bob".into()).await;
    assert_eq!(route.unwrap(), SentVia::Hub);
    assert_eq!(s1.next_event().await, message("alice", "bob", "hello bob"));

    s1.cluster.send_to_user(&user("bob"), &user("alice"), "hi alice".into()).await.unwrap();
    assert_eq!(s0.next_event().await, message("bob", "alice", "hi alice"));

    let stats = hub.hub.stats();
    assert_eq!(stats.relayed_frames, 2);
    assert_eq!(stats.undeliverable, 0);
}

#[tokio::test]
async fn order_is_kept_per_sender_and_recipient() {
    let hub = TestHub::start().await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;
    for i in 0..2000u32 {
        let payload = Bytes::from(i.to_be_bytes().to_vec());
        s0.cluster.send_to_user(&user("alice"), &user("bob"), payload).await.unwrap();
    }
    for i in 0..2000u32 {
        let Event::Message { payload, .. } = s1.next_event().await else { panic!("not a message") };
        assert_eq!(payload.as_ref(), i.to_be_bytes());
    }
    assert_eq!(hub.hub.stats().relayed_frames, 2000);
}

#[tokio::test]
async fn same_server_delivery_does_not_touch_the_hub() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let _s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice", "dave"]).await;

    let route = s0.cluster.send_to_user(&user("alice"), &user("dave"), "next door".into()).await;
    assert_eq!(route.unwrap(), SentVia::Local);
    assert_eq!(s0.next_event().await, message("alice", "dave", "next door"));
    // The flush's Ping travels after anything the send could have queued for the hub.
    s0.cluster.flush().await.unwrap();
    assert_eq!(hub.hub.stats().relayed_frames, 0);
    assert_eq!(hub.hub.stats().relayed_bytes, 0);
}

#[tokio::test]
async fn unknown_recipient_comes_back_undeliverable() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    s0.login(&["alice"]).await;

    s0.cluster.send_to_user(&user("alice"), &user("nobody"), "anyone?".into()).await.unwrap();
    let expected = Event::Undeliverable {
        from: user("alice"),
        to: user("nobody"),
        payload: Bytes::from_static(b"anyone?"),
        reason: acms_appserver::UndeliverableReason::Offline,
        invitation: false,
    };
    assert_eq!(s0.next_event().await, expected);
    assert_eq!(hub.hub.stats().undeliverable, 1);
    assert_eq!(hub.hub.stats().relayed_frames, 0);
}

#[tokio::test]
async fn killed_server_takes_its_users_out_of_the_directory() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    s0.login(&["alice"]).await;

    // The doomed server runs on a runtime of its own, torn down without any goodbye.
    let doomed = tokio::runtime::Runtime::new().unwrap();
    let (ready, registered) = tokio::sync::oneshot::channel();
    let hub_addr = hub.addr;
    doomed.spawn(async move {
        let s1 = TestServer::start(1, hub_addr).await;
        s1.login(&["bob", "carol"]).await;
        let _ = ready.send(());
        std::future::pending::<()>().await;
        drop(s1);
    });
    registered.await.unwrap();
    hub.wait_for(2, 3).await;
    assert_eq!(hub.hub.registry().locate("bob"), Some(ServerId(1)));

    doomed.shutdown_background();
    hub.wait_for(1, 1).await;
    assert_eq!(hub.hub.registry().locate("bob"), None);
    assert_eq!(hub.hub.registry().locate("carol"), None);
    assert_eq!(hub.hub.registry().servers()[0].id, ServerId(0));

    s0.cluster.send_to_user(&user("alice"), &user("bob"), "still there?".into()).await.unwrap();
    assert!(matches!(s0.next_event().await, Event::Undeliverable { .. }));
}

#[tokio::test]
async fn servers_resync_after_the_hub_restarts_on_the_same_port() {
    let hub = TestHub::start().await;
    let addr = hub.addr;
    let s0 = TestServer::start(0, addr).await;
    let mut s1 = TestServer::start(1, addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob", "bert"]).await;
    hub.wait_for(2, 3).await;

    hub.stop().await;
    wait_link(&s0.cluster, LinkState::Connecting).await;
    wait_link(&s1.cluster, LinkState::Connecting).await;
    let restarted_at = Instant::now();
    let hub = TestHub::start_with(HubConfig::default(), addr).await;
    hub.wait_for(2, 3).await;
    let healed = restarted_at.elapsed();
    assert!(healed < Duration::from_secs(5), "resync took {healed:?}");

    s0.cluster.send_to_user(&user("alice"), &user("bert"), "welcome back".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bert", "welcome back"));
}

/// A raw connection to the hub, speaking the protocol by hand.
async fn raw_peer(hub: &TestHub) -> Framed<TcpStream, Codec> {
    Framed::new(TcpStream::connect(hub.addr).await.unwrap(), Codec::default())
}

fn hello(id: u32, version: u16) -> Frame {
    Frame::Control(Control::Hello(Hello {
        version,
        server_id: ServerId(id),
        client_addr: "127.0.0.1:7000".into(),
        epoch: u64::from(id),
        nonce: None,
    }))
}

async fn next_frame(peer: &mut Framed<TcpStream, Codec>) -> Option<Frame> {
    let next = tokio::time::timeout(PATIENCE, peer.next()).await.expect("a frame in time");
    next.map(|raw: Result<RawFrame, _>| raw.expect("valid frame").decode().expect("decodable"))
}

/// Reads until the hub's error frame, then expects the connection to close.
async fn expect_refusal(peer: &mut Framed<TcpStream, Codec>, expected: ErrorCode) {
    loop {
        match next_frame(peer).await {
            Some(Frame::Control(Control::Error { code, message })) => {
                assert_eq!(code, expected, "{message}");
                break;
            }
            Some(_) => continue,
            None => panic!("closed without an error frame"),
        }
    }
    assert_eq!(next_frame(peer).await, None, "connection should close after the error");
}

#[tokio::test]
async fn a_second_live_server_with_the_same_id_is_refused() {
    let hub = TestHub::start().await;
    let _s0 = TestServer::start(0, hub.addr).await;
    let mut impostor = raw_peer(&hub).await;
    impostor.send(hello(0, PROTOCOL_VERSION)).await.unwrap();
    expect_refusal(&mut impostor, ErrorCode::DuplicateServer).await;
    assert_eq!(hub.hub.registry().servers().len(), 1);
}

#[tokio::test]
async fn another_protocol_version_is_refused() {
    let hub = TestHub::start().await;
    let mut peer = raw_peer(&hub).await;
    peer.send(hello(5, PROTOCOL_VERSION + 1)).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::VersionMismatch).await;
    assert!(hub.hub.registry().servers().is_empty());
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_handshake_deadline() {
    let config =
        HubConfig { handshake_timeout: Duration::from_millis(200), ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut peer = raw_peer(&hub).await;
    expect_refusal(&mut peer, ErrorCode::HandshakeTimeout).await;
    assert_eq!(hub.hub.stats().refused_connections, 1);
}

#[tokio::test]
async fn bad_input_closes_only_its_own_connection() {
    let hub = TestHub::start().await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    // Garbage after a valid handshake.
    let mut garbage = raw_peer(&hub).await;
    garbage.send(hello(7, PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut garbage).await, Some(Frame::Control(Control::Welcome(_)))));
    garbage.get_mut().write_all(&[0, 0, 0, 3, 0x7f, 1, 2]).await.unwrap();
    expect_refusal(&mut garbage, ErrorCode::Malformed).await;

    // A frame far over the limit: refused from its length prefix alone.
    let mut oversized = raw_peer(&hub).await;
    oversized.send(hello(8, PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut oversized).await, Some(Frame::Control(Control::Welcome(_)))));
    oversized.get_mut().write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    expect_refusal(&mut oversized, ErrorCode::TooLarge).await;

    // A data frame that claims to come from another server.
    let mut spoofer = raw_peer(&hub).await;
    spoofer.send(hello(9, PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut spoofer).await, Some(Frame::Control(Control::Welcome(_)))));
    let spoofed = Data {
        kind: DataKind::Unicast,
        seq: 1,
        origin: ServerId(0),
        recipient: user("bob"),
        sender: user("alice"),
        payload: Bytes::from_static(b"forged"),
    };
    spoofer.send(Frame::Data(spoofed)).await.unwrap();
    expect_refusal(&mut spoofer, ErrorCode::Malformed).await;

    assert_eq!(hub.hub.stats().protocol_errors, 3);
    hub.wait_for(2, 2).await;
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "unharmed".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "unharmed"));
}

#[tokio::test]
async fn a_server_that_stops_reading_is_disconnected_and_senders_are_told() {
    let config = HubConfig {
        high_water_bytes: 64 * 1024,
        max_stall: Duration::from_millis(300),
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    s0.login(&["alice"]).await;

    // A server that registers a user and then never reads again.
    let mut stuck = raw_peer(&hub).await;
    stuck.send(hello(1, PROTOCOL_VERSION)).await.unwrap();
    assert!(matches!(next_frame(&mut stuck).await, Some(Frame::Control(Control::Welcome(_)))));
    stuck.send(Frame::Control(Control::Login { users: vec![user("bob")] })).await.unwrap();
    hub.wait_for(2, 2).await;

    let payload = Bytes::from(vec![b'x'; 16 * 1024]);
    let mut sent = 0;
    while hub.hub.stats().slow_consumers == 0 {
        s0.cluster.send_to_user(&user("alice"), &user("bob"), payload.clone()).await.unwrap();
        sent += 1;
        assert!(sent < 100_000, "the stuck server was never disconnected");
        if sent % 64 == 0 {
            s0.cluster.flush().await.unwrap();
        }
    }
    hub.wait_for(1, 1).await;
    assert_eq!(hub.hub.stats().slow_consumers, 1);
    // Pushback held the sender to the high water plus socket buffers: nowhere near the limit.
    assert!(sent < 2_000, "{sent} messages of 16 KiB were accepted for a server that never read");

    s0.cluster.send_to_user(&user("alice"), &user("bob"), "gone?".into()).await.unwrap();
    loop {
        if let Event::Undeliverable { to, payload, .. } = s0.next_event().await {
            if payload.as_ref() == b"gone?" {
                assert_eq!(to.as_str(), "bob");
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_fast_sender_is_slowed_to_a_slow_receiver_without_loss() {
    let config = HubConfig { high_water_bytes: 16 * 1024, ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    const COUNT: u32 = 20_000;
    let sender = tokio::spawn(async move {
        let payload = Bytes::from(vec![b'x'; 1024]);
        for _ in 0..COUNT {
            s0.cluster.send_to_user(&user("alice"), &user("bob"), payload.clone()).await.unwrap();
        }
        s0
    });
    let mut received = 0;
    while received < COUNT {
        // A receiver slower than its sender: it yields after every batch.
        received += s1.events.recv_batch().await.expect("events open").len() as u32;
        tokio::task::yield_now().await;
    }
    let s0 = sender.await.unwrap();
    s0.cluster.flush().await.unwrap();
    let stats = hub.hub.stats();
    assert_eq!((stats.relayed_frames, stats.undeliverable, stats.slow_consumers), (20_000, 0, 0));
}

#[tokio::test]
async fn a_batch_goes_local_and_through_the_hub_in_order() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice", "dave"]).await;
    s1.login(&["bob"]).await;

    let outgoing = |to: &str, i: u32| acms_appserver::Outgoing {
        from: user("alice"),
        to: user(to),
        payload: Bytes::from(i.to_string()),
    };
    let batch: Vec<_> =
        (0..500).map(|i| outgoing(if i % 5 == 0 { "dave" } else { "bob" }, i)).collect();
    let routes = s0.cluster.send_batch(batch).await.unwrap();
    assert_eq!((routes.local, routes.hub), (100, 400));

    let mut to_bob = Vec::new();
    while to_bob.len() < 400 {
        to_bob.extend(s1.events.recv_batch().await.expect("events open"));
    }
    let expected: Vec<_> = (0..500u32).filter(|i| i % 5 != 0).map(|i| i.to_string()).collect();
    let got: Vec<_> = to_bob
        .iter()
        .map(|event| match event {
            Event::Message { payload, .. } => String::from_utf8(payload.to_vec()).unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(got, expected);
    for i in (0..500u32).step_by(5) {
        let Event::Message { to, payload, .. } = s0.next_event().await else { panic!() };
        assert_eq!((to.as_str(), payload.as_ref()), ("dave", i.to_string().as_bytes()));
    }
    assert_eq!(hub.hub.stats().relayed_frames, 400);
}

#[tokio::test]
async fn two_servers_sending_hard_to_each_other_do_not_wedge() {
    let config = HubConfig { high_water_bytes: 16 * 1024, ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let s0 = TestServer::start(0, hub.addr).await;
    let s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    // Far more than the socket buffers between them hold.
    const COUNT: usize = 4_000;
    let run = |server: TestServer, from: &'static str, to: &'static str| {
        tokio::spawn(async move {
            let TestServer { cluster, mut events } = server;
            let receiver = tokio::spawn(async move {
                let mut received = 0;
                while received < COUNT {
                    received += events.recv_batch().await.expect("events open").len();
                }
                received
            });
            let payload = Bytes::from(vec![b'x'; 16 * 1024]);
            for _ in 0..COUNT {
                cluster.send_to_user(&user(from), &user(to), payload.clone()).await.unwrap();
            }
            let received = tokio::time::timeout(PATIENCE, receiver).await.expect("all in time");
            (cluster, received.unwrap())
        })
    };
    let (a, b) = (run(s0, "alice", "bob"), run(s1, "bob", "alice"));
    let ((_c0, got0), (_c1, got1)) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!((got0, got1), (COUNT, COUNT));
    let stats = hub.hub.stats();
    assert_eq!((stats.relayed_frames, stats.slow_consumers), (2 * COUNT as u64, 0));
}

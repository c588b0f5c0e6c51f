//! Groups, broadcast and server messages across three app servers: every member gets each
//! message exactly once, one copy crosses the hub per server that needs it (asserted on the
//! hub's counters), memberships leave with the user or their server, and nothing is lost or
//! duplicated when the hub dies mid-stream.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{Event, Events, GroupId, LinkState, Outcome, ServerId};
use acms_tests::stream::start_doomed_hub;
use acms_tests::{PATIENCE, TestHub, TestServer, builder, eventually, user, wait_link};
use bytes::Bytes;

/// A hub whose settle window is short: these tests start it fresh, with nothing to resync.
async fn hub() -> TestHub {
    let config = HubConfig { settle: Duration::from_millis(100), ..HubConfig::default() };
    TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await
}

fn group(name: &str) -> GroupId {
    GroupId::new(name).unwrap()
}

fn names(users: &[acms_appserver::UserId]) -> BTreeSet<String> {
    users.iter().map(ToString::to_string).collect()
}

fn set(users: &[&str]) -> BTreeSet<String> {
    users.iter().map(|name| name.to_string()).collect()
}

/// Three servers with users `a1 a2`, `b1 b2` and `c1 c2`, all registered with the hub.
async fn three_servers(hub: &TestHub) -> [TestServer; 3] {
    let servers = [
        TestServer::start(1, hub.addr).await,
        TestServer::start(2, hub.addr).await,
        TestServer::start(3, hub.addr).await,
    ];
    servers[0].login(&["a1", "a2"]).await;
    servers[1].login(&["b1", "b2"]).await;
    servers[2].login(&["c1", "c2"]).await;
    hub.wait_for(3, 6).await;
    servers
}

async fn join(server: &TestServer, room: &str, users: &[&str]) {
    for name in users {
        server.cluster.join(&group(room), &user(name)).await.expect("join");
    }
    server.cluster.flush().await.expect("flush");
}

/// Marks the end of what `from` sent to `to`'s server: frames from one origin to one server
/// arrive in order, so anything sent before this message arrived before it.
async fn expect_nothing_more(from: &TestServer, to: &mut TestServer, recipient: &str) {
    let marker = Bytes::from_static(b"end");
    from.cluster.send_to_user(&user("a1"), &user(recipient), marker.clone()).await.unwrap();
    match to.next_event().await {
        Event::Message { payload, .. } if payload == marker => {}
        other => panic!("expected nothing before the end marker, got {other:?}"),
    }
}

#[tokio::test]
async fn group_messages_reach_every_member_once_with_one_copy_per_server() {
    let hub = hub().await;
    let [mut s1, mut s2, mut s3] = three_servers(&hub).await;
    join(&s1, "room", &["a1", "a2"]).await;
    join(&s2, "room", &["b1", "b2"]).await;
    eventually("room on servers 1 and 2", || {
        hub.hub.groups().servers_of("room", ServerId(0)) == [ServerId(1), ServerId(2)]
    })
    .await;

    const COUNT: usize = 20;
    for seq in 0..COUNT {
        let exclude = seq % 2 == 1;
        let payload = Bytes::from(seq.to_string());
        let receipt =
            s1.cluster.send_to_group(&user("a1"), &group("room"), payload, exclude).await.unwrap();
        assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 1 });
    }
    for seq in 0..COUNT {
        let exclude = seq % 2 == 1;
        let local = if exclude { set(&["a2"]) } else { set(&["a1", "a2"]) };
        for (server, members) in [(&mut s1, local), (&mut s2, set(&["b1", "b2"]))] {
            match server.next_event().await {
                Event::GroupMessage { group: room, from, to, payload } => {
                    assert_eq!((room.as_str(), from.as_str()), ("room", "a1"));
                    assert_eq!(names(&to), members, "message {seq}");
                    assert_eq!(payload, seq.to_string());
                }
                other => panic!("expected group message {seq}, got {other:?}"),
            }
        }
    }
    let stats = hub.hub.stats();
    assert_eq!(stats.group_frames_in, COUNT as u64);
    assert_eq!(stats.group_copies_out, COUNT as u64, "one copy per other server with members");
    // Server 3 has no member: nothing crossed to it.
    expect_nothing_more(&s1, &mut s3, "c1").await;

    // A member on server 3 too: two copies now, still one per server.
    join(&s3, "room", &["c2"]).await;
    let receipt =
        s2.cluster.send_to_group(&user("b1"), &group("room"), "hi".into(), true).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 });
    for (server, members) in
        [(&mut s1, set(&["a1", "a2"])), (&mut s2, set(&["b2"])), (&mut s3, set(&["c2"]))]
    {
        match server.next_event().await {
            Event::GroupMessage { to, payload, .. } => {
                assert_eq!(names(&to), members);
                assert_eq!(payload, "hi");
            }
            other => panic!("expected the group message, got {other:?}"),
        }
    }
    let stats = hub.hub.stats();
    assert_eq!(stats.group_copies_out, COUNT as u64 + 2);
    expect_nothing_more(&s1, &mut s2, "b1").await;
}

#[tokio::test]
async fn broadcast_reaches_every_user_once_and_can_leave_out_the_sender() {
    let hub = hub().await;
    let [mut s1, mut s2, mut s3] = three_servers(&hub).await;

    let receipt = s1.cluster.broadcast(&user("a1"), "to all".into(), true).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 });
    let receipt = s2.cluster.broadcast(&user("b1"), "with me".into(), false).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 });

    let expected = [
        ("to all", [set(&["a2"]), set(&["b1", "b2"]), set(&["c1", "c2"])]),
        ("with me", [set(&["a1", "a2"]), set(&["b1", "b2"]), set(&["c1", "c2"])]),
    ];
    for (text, members) in expected {
        for (server, members) in [&mut s1, &mut s2, &mut s3].into_iter().zip(members) {
            match server.next_event().await {
                Event::Broadcast { to, payload, .. } => {
                    assert_eq!(payload, text);
                    assert_eq!(names(&to), members, "{text}");
                }
                other => panic!("expected broadcast {text:?}, got {other:?}"),
            }
        }
    }
    let stats = hub.hub.stats();
    assert_eq!((stats.broadcast_frames_in, stats.broadcast_copies_out), (2, 4));
    expect_nothing_more(&s1, &mut s2, "b1").await;
    expect_nothing_more(&s1, &mut s3, "c1").await;
}

#[tokio::test]
async fn server_messages_reach_one_server_or_all() {
    let hub = hub().await;
    let [s1, mut s2, mut s3] = three_servers(&hub).await;

    let receipt = s1.cluster.send_to_server(ServerId(2), "invalidate x".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 1 });
    let receipt = s1.cluster.send_to_all_servers("everyone".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 });
    let receipt = s1.cluster.send_to_server(ServerId(99), "nobody".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 0 });

    for (server, expected) in
        [(&mut s2, &["invalidate x", "everyone"][..]), (&mut s3, &["everyone"])]
    {
        for text in expected {
            match server.next_event().await {
                Event::ServerMessage { from, payload } => {
                    assert_eq!((from, &payload[..]), (ServerId(1), text.as_bytes()));
                }
                other => panic!("expected server message {text:?}, got {other:?}"),
            }
        }
    }
    let stats = hub.hub.stats();
    assert_eq!((stats.server_frames_in, stats.server_copies_out), (3, 3));
    expect_nothing_more(&s1, &mut s2, "b1").await;
    expect_nothing_more(&s1, &mut s3, "c1").await;
}

#[tokio::test]
async fn membership_goes_with_leave_logout_and_the_death_of_the_server() {
    let config = HubConfig {
        settle: Duration::from_millis(100),
        reconnect_grace: Duration::from_millis(300),
        ..HubConfig::default()
    };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let [s1, s2, s3] = three_servers(&hub).await;
    join(&s1, "room", &["a1"]).await;
    join(&s2, "room", &["b1", "b2"]).await;
    join(&s3, "room", &["c1"]).await;
    let servers = || hub.hub.groups().servers_of("room", ServerId(0));
    eventually("room on three servers", || servers().len() == 3).await;

    // Leaving: server 2 keeps the group while b2 is still in it.
    s2.cluster.leave(&group("room"), &user("b1")).await.unwrap();
    s2.cluster.flush().await.unwrap();
    assert_eq!(servers().len(), 3);
    assert!(s2.cluster.groups_of(&user("b1")).is_empty());
    s2.cluster.leave(&group("room"), &user("b2")).await.unwrap();
    eventually("server 2 left the room", || servers() == [ServerId(1), ServerId(3)]).await;

    // Logging out takes the user out of their groups.
    s1.cluster.logout(&user("a1")).await.unwrap();
    eventually("server 1 left the room", || servers() == [ServerId(3)]).await;
    let err = s1.cluster.join(&group("room"), &user("a1")).await.unwrap_err();
    assert!(matches!(err, acms_appserver::ClusterError::NotLocal { .. }), "{err}");

    // A server that dies without a word loses its memberships once its grace is over; a group
    // message sent meanwhile settles without its ack, reaching the servers still there.
    let doomed = start_doomed_server(4, hub.addr, "d1").await;
    eventually("the doomed server in the room", || servers() == [ServerId(3), ServerId(4)]).await;
    doomed.shutdown_background();
    let receipt =
        s2.cluster.send_to_group(&user("b1"), &group("room"), "anyone?".into(), false).await;
    assert_eq!(receipt.unwrap().outcome(PATIENCE).await, Outcome::Reached { servers: 1 });
    eventually("the dead server's memberships gone", || servers() == [ServerId(3)]).await;

    // A server that closes (says Bye) takes its memberships along at once.
    drop(s3);
    eventually("server 3's memberships gone", || hub.hub.groups().is_empty()).await;
    let receipt =
        s2.cluster.send_to_group(&user("b1"), &group("room"), "anyone?".into(), false).await;
    assert_eq!(receipt.unwrap().outcome(PATIENCE).await, Outcome::Reached { servers: 0 });
}

/// Server `id` with user `name` in group "room", on a runtime of its own so the test can kill it
/// without a goodbye, as a crashed process.
async fn start_doomed_server(
    id: u32,
    hub: SocketAddr,
    name: &'static str,
) -> tokio::runtime::Runtime {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(async move {
        let server = TestServer::start(id, hub).await;
        server.login(&[name]).await;
        join(&server, "room", &[name]).await;
        tx.send(()).unwrap();
        std::future::pending::<()>().await;
        drop(server);
    });
    tokio::time::timeout(PATIENCE, rx).await.expect("doomed server up").unwrap();
    runtime
}

/// Receives group messages until number `count - 1`, asserting each arrives once and in order
/// for the members `members`.
async fn expect_group_stream(events: &mut Events, count: u32, members: &BTreeSet<String>) {
    let mut next = 0;
    while next < count {
        let batch = tokio::time::timeout(PATIENCE * 3, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("stalled after {next} of {count} messages"))
            .expect("events open");
        for event in batch {
            let Event::GroupMessage { to, payload, .. } = event else { panic!("{event:?}") };
            let got: u32 = std::str::from_utf8(&payload).unwrap().parse().unwrap();
            assert_eq!(got, next, "message {got} arrived where {next} was due");
            assert_eq!(&names(&to), members);
            next += 1;
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(extra.is_err(), "duplicate after the stream: {extra:?}");
}

#[tokio::test]
async fn group_messages_are_exactly_once_when_the_hub_dies_mid_stream() {
    const COUNT: u32 = 10_000;
    let (doomed, addr) = start_doomed_hub("127.0.0.1:0".parse().unwrap());
    let start = |id| TestServer::start_with(builder(id, addr), LinkState::Connected);
    // Server 3 is not read until the hub died, and stops reading the hub as soon as its app is
    // behind: its acks wait, so the sender still holds much of the stream when the hub dies.
    let slow = builder(3, addr).event_capacity(1);
    let (sender, mut s2) = (start(1).await, start(2).await);
    let mut s3 = TestServer::start_with(slow, LinkState::Connected).await;
    sender.login(&["a1"]).await;
    s2.login(&["b1", "b2"]).await;
    s3.login(&["c1"]).await;
    join(&s2, "room", &["b1", "b2"]).await;
    join(&s3, "room", &["c1"]).await;

    let cluster = sender.cluster.clone();
    let sending = tokio::spawn(async move {
        for seq in 0..COUNT {
            let payload = Bytes::from(seq.to_string());
            // The sender is no member: nothing is delivered on its own server.
            cluster.send_to_group(&user("a1"), &group("room"), payload, false).await.unwrap();
        }
    });
    let (b, c) = (set(&["b1", "b2"]), set(&["c1"]));
    let mut seen = 0;
    while seen < COUNT / 4 {
        let batch = tokio::time::timeout(PATIENCE * 3, s2.events.recv_batch()).await.unwrap();
        for event in batch.unwrap() {
            let Event::GroupMessage { to, payload, .. } = event else { panic!("{event:?}") };
            assert_eq!(std::str::from_utf8(&payload).unwrap(), seen.to_string());
            assert_eq!(names(&to), b);
            seen += 1;
        }
    }
    doomed.shutdown_background();
    wait_link(&s2.cluster, LinkState::Connecting).await;
    let hub = TestHub::start_with(HubConfig::default(), addr).await;

    // Server 3 checks the whole stream; server 2 the rest after what it had seen.
    let rest = async {
        let mut next = seen;
        while next < COUNT {
            let batch = tokio::time::timeout(PATIENCE * 3, s2.events.recv_batch())
                .await
                .unwrap_or_else(|_| panic!("server 2 stalled at {next}"))
                .unwrap();
            for event in batch {
                let Event::GroupMessage { payload, .. } = event else { panic!("{event:?}") };
                let got: u32 = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                assert_eq!(got, next, "lost or duplicated across the failover");
                next += 1;
            }
        }
    };
    tokio::join!(rest, expect_group_stream(&mut s3.events, COUNT, &c));
    sending.await.unwrap();
    let extra = tokio::time::timeout(Duration::from_millis(300), s2.events.recv()).await;
    assert!(extra.is_err(), "duplicate after the stream: {extra:?}");
    assert!(hub.hub.stats().group_copies_out > 0, "part of the stream was sent again");
}

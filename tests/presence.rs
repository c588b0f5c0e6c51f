//! Presence (locate, watch) and login conflicts (replace, multi) with three app servers and
//! users spread over them, through real sockets on 127.0.0.1. A server whose connection breaks
//! is played by a raw protocol peer, so that the break is a real one, without a `Bye`.

use std::net::SocketAddr;
use std::time::Duration;

use acms::{HubConfig, LoginConflict};
use acms_appserver::{Event, Events, LinkState, Outcome, SentVia, ServerId};
use acms_protocol::{Control, Frame};
use acms_tests::{
    PATIENCE, Peer, TestHub, TestServer, builder, eventually, next_frame, raw_hello, user,
    wait_link,
};
use bytes::Bytes;
use futures_util::SinkExt;

/// A hub with policy `conflict` and a short settle window: under `multi` a unicast frame waits
/// for the end of the window, as these hubs start fresh with nothing to resync.
fn hub_config(conflict: LoginConflict) -> HubConfig {
    HubConfig {
        login_conflict: conflict,
        settle: Duration::from_millis(100),
        ..HubConfig::default()
    }
}

async fn start_hub(config: HubConfig) -> TestHub {
    TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await
}

/// Three servers, 0 to 2, that send their digest every 20 ms.
async fn three_servers(hub: &TestHub) -> [TestServer; 3] {
    let start = |id| {
        TestServer::start_with(
            builder(id, hub.addr).digest_interval(Duration::from_millis(20)),
            LinkState::Connected,
        )
    };
    [start(0).await, start(1).await, start(2).await]
}

fn presence(name: &str, server: Option<u32>) -> Event {
    Event::Presence { user: user(name), server: server.map(ServerId), candidates: vec![] }
}

fn message(from: &str, to: &str, text: &'static str) -> Event {
    Event::Message { from: user(from), to: user(to), payload: text.into() }
}

/// Registers a raw peer as server `id`, with `users` online, and reads its `Welcome`.
async fn raw_server(hub: &TestHub, id: u32, users: &[&str]) -> Peer {
    let mut peer = raw_hello(hub.addr, id).await;
    let welcome = next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    let users = users.iter().map(|name| user(name)).collect();
    peer.send(Frame::Control(Control::Login { users })).await.unwrap();
    peer.send(Frame::Control(Control::SnapshotDone)).await.unwrap();
    peer
}

#[tokio::test]
async fn locate_answers_for_local_remote_and_offline_users() {
    let hub = TestHub::start().await;
    let [s0, s1, s2] = three_servers(&hub).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;
    s2.login(&["carol"]).await;

    assert_eq!(s0.cluster.locate(&user("alice")).await.unwrap(), Some(ServerId(0)));
    assert_eq!(s0.cluster.locate(&user("bob")).await.unwrap(), Some(ServerId(1)));
    assert_eq!(s0.cluster.locate(&user("carol")).await.unwrap(), Some(ServerId(2)));
    assert_eq!(s1.cluster.locate(&user("nobody")).await.unwrap(), None);

    s1.cluster.logout(&user("bob")).await.unwrap();
    s1.cluster.flush().await.unwrap();
    assert_eq!(s2.cluster.locate(&user("bob")).await.unwrap(), None);
}

/// A watch starts with the user's state, then hears logins, logouts and the death of the
/// user's server (once its grace is over); servers that do not watch that user hear nothing.
#[tokio::test]
async fn watchers_hear_of_logins_logouts_and_a_dead_server_and_nobody_else_does() {
    let config = HubConfig {
        reconnect_grace: Duration::from_millis(300),
        ..hub_config(LoginConflict::Replace)
    };
    let hub = start_hub(config).await;
    let [mut s0, s1, mut s2] = three_servers(&hub).await;

    s0.cluster.watch([user("bob")]).await.unwrap();
    assert_eq!(s0.next_event().await, presence("bob", None));
    s2.cluster.watch([user("carol")]).await.unwrap();
    assert_eq!(s2.next_event().await, presence("carol", None));

    s1.login(&["bob"]).await;
    assert_eq!(s0.next_event().await, presence("bob", Some(1)));
    s1.cluster.logout(&user("bob")).await.unwrap();
    assert_eq!(s0.next_event().await, presence("bob", None));

    // Server 2 watches carol only: the first thing it hears is her login, not bob's comings and
    // goings, which would have been queued for it before.
    s1.login(&["carol"]).await;
    assert_eq!(s2.next_event().await, presence("carol", Some(1)));

    // Bob on a server whose connection breaks and does not come back.
    let dying = raw_server(&hub, 3, &["bob"]).await;
    assert_eq!(s0.next_event().await, presence("bob", Some(3)));
    drop(dying);
    assert_eq!(s0.next_event().await, presence("bob", None));
    assert_eq!(hub.hub.registry().locate("bob"), None);

    // Unwatched: bob's next login reaches nobody; carol's logout still reaches server 2.
    s0.cluster.unwatch([user("bob")]).await.unwrap();
    s1.login(&["bob"]).await;
    s0.login(&["zed"]).await;
    s0.cluster.watch([user("zed")]).await.unwrap();
    assert_eq!(s0.next_event().await, presence("zed", Some(0)), "nothing about bob came first");
    s1.cluster.logout(&user("carol")).await.unwrap();
    assert_eq!(s2.next_event().await, presence("carol", None));
}

/// A link blip that the reconnect grace covers is not an offline event: the server comes back
/// with its users before anyone is told they left.
#[tokio::test]
async fn a_blip_within_the_grace_is_not_reported() {
    let hub = TestHub::start().await;
    let [mut s0, s1, _s2] = three_servers(&hub).await;
    let peer = raw_server(&hub, 3, &["dan"]).await;
    s0.cluster.watch([user("dan"), user("erin")]).await.unwrap();
    assert_eq!(s0.next_event().await, presence("dan", Some(3)));
    assert_eq!(s0.next_event().await, presence("erin", None));

    drop(peer);
    eventually("the hub to notice the break", || !hub.hub.registry().is_connected(ServerId(3)))
        .await;
    let _back = raw_server(&hub, 3, &["dan"]).await;
    eventually("server 3 back", || hub.hub.registry().is_connected(ServerId(3))).await;

    s1.login(&["erin"]).await;
    assert_eq!(s0.next_event().await, presence("erin", Some(1)), "dan was never reported offline");
    assert_eq!(hub.hub.registry().locate("dan"), Some(ServerId(3)));
}

/// Policy `replace`: a second login kicks the first session, messages go to the new one only,
/// and the kicked server's record and digest stay equal, so nothing resyncs.
#[tokio::test]
async fn replace_kicks_the_older_session_and_messages_go_to_the_new_one() {
    let hub = TestHub::start().await;
    let [mut s0, mut s1, mut s2] = three_servers(&hub).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob", "bill"]).await;
    s0.cluster.watch([user("bob")]).await.unwrap();
    assert_eq!(s0.next_event().await, presence("bob", Some(1)));

    s2.login(&["bob"]).await;
    match s1.next_event().await {
        Event::Kicked { user: kicked, reason } => {
            assert_eq!(kicked, user("bob"));
            assert!(reason.contains("server 2"), "{reason}");
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    assert!(!s1.cluster.is_local("bob"), "the library logged bob out");
    assert_eq!(s0.next_event().await, presence("bob", Some(2)));
    assert_eq!(hub.hub.registry().locate("bob"), Some(ServerId(2)));

    let alice = user("alice");
    s0.cluster.send_to_user(&alice, &user("bob"), "to the new bob".into()).await.unwrap();
    s0.cluster.send_to_user(&alice, &user("bill"), "to bill".into()).await.unwrap();
    assert_eq!(s2.next_event().await, message("alice", "bob", "to the new bob"));
    assert_eq!(s1.next_event().await, message("alice", "bill", "to bill"), "nothing for bob");

    // The kicked server logged bob out like any logout: digests keep agreeing.
    let checked = hub.hub.stats().digests;
    eventually("digests from every server", || hub.hub.stats().digests >= checked + 15).await;
    let stats = hub.hub.stats();
    assert_eq!(stats.resyncs, 0, "{stats:?}");
    assert_eq!(hub.hub.registry().user_count(), 3);
}

/// Policy `multi`: a user online on two servers gets a unicast on both, one copy relayed to
/// each, and the receipt waits for both; when one session ends the other stays reachable, and
/// nothing resyncs.
#[tokio::test]
async fn multi_reaches_every_session_and_a_logout_keeps_the_other() {
    let hub = start_hub(hub_config(LoginConflict::Multi)).await;
    let [s0, mut s1, mut s2] = three_servers(&hub).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob", "bill"]).await;
    s2.login(&["bob"]).await;
    assert_eq!(hub.hub.registry().sessions("bob"), [ServerId(1), ServerId(2)]);
    assert!(s1.cluster.is_local("bob"), "no kick under multi");

    let alice = user("alice");
    let relayed = hub.hub.stats().relayed_frames;
    let receipt = s0.cluster.send_with_receipt(&alice, &user("bob"), "both".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "both"));
    assert_eq!(s2.next_event().await, message("alice", "bob", "both"));
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 2 });
    assert_eq!(hub.hub.stats().relayed_frames, relayed + 2, "one copy per server");

    s2.cluster.logout(&user("bob")).await.unwrap();
    s2.cluster.flush().await.unwrap();
    assert_eq!(hub.hub.registry().sessions("bob"), [ServerId(1)]);
    assert_eq!(s0.cluster.locate(&user("bob")).await.unwrap(), Some(ServerId(1)));
    let receipt = s0.cluster.send_with_receipt(&alice, &user("bob"), "one".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "one"));
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });
    s2.login(&["bea"]).await;
    s0.cluster.send_to_user(&alice, &user("bea"), "bea".into()).await.unwrap();
    assert_eq!(s2.next_event().await, message("alice", "bea", "bea"), "nothing more for bob");

    let checked = hub.hub.stats().digests;
    eventually("digests from every server", || hub.hub.stats().digests >= checked + 15).await;
    assert_eq!(hub.hub.stats().resyncs, 0);
}

/// The next event is `expected`, and nothing follows it within a moment: no copy came twice.
async fn expect_last(server: &mut TestServer, expected: Event) {
    assert_eq!(server.next_event().await, expected);
    let extra = tokio::time::timeout(Duration::from_millis(300), server.events.recv()).await;
    assert!(extra.is_err(), "unexpected event after {expected:?}: {extra:?}");
}

/// Bob on servers 0 and 1 (policy `multi`), alice on 0 and carol on 2; returns once both of
/// bob's servers know that he is shared.
async fn bob_on_two_servers(hub: &TestHub) -> [TestServer; 3] {
    let servers = three_servers(hub).await;
    servers[0].login(&["alice", "bob"]).await;
    servers[1].login(&["bob", "bill"]).await;
    servers[2].login(&["carol"]).await;
    assert_eq!(hub.hub.registry().sessions("bob"), [ServerId(0), ServerId(1)]);
    for server in &servers[..2] {
        eventually("bob known as shared", || server.cluster.multi_session_users() == 1).await;
    }
    assert_eq!(servers[2].cluster.multi_session_users(), 0);
    servers
}

/// Policy `multi`: a message from a server that holds one of the recipient's sessions reaches
/// the others too, and one from a third server reaches both; each session gets each message
/// once, and the receipt counts every session.
#[tokio::test]
async fn multi_delivers_to_every_session_once_from_a_sharing_server_and_from_another() {
    let hub = start_hub(hub_config(LoginConflict::Multi)).await;
    let [mut s0, mut s1, mut s2] = bob_on_two_servers(&hub).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));

    let receipt = s0.cluster.send_with_receipt(&alice, &bob, "from 0".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 2 });
    assert_eq!(s0.next_event().await, message("alice", "bob", "from 0"));
    assert_eq!(s1.next_event().await, message("alice", "bob", "from 0"));

    let relayed = hub.hub.stats().relayed_frames;
    let receipt = s2.cluster.send_with_receipt(&carol, &bob, "from 2".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 2 });
    assert_eq!(hub.hub.stats().relayed_frames, relayed + 2, "one copy per server");
    expect_last(&mut s0, message("carol", "bob", "from 2")).await;
    expect_last(&mut s1, message("carol", "bob", "from 2")).await;

    // A batch from the sharing server reaches both sessions too, once each.
    let batch = [acms_appserver::Outgoing { from: alice, to: bob, payload: "batch".into() }];
    let routes = s0.cluster.send_batch(batch).await.unwrap();
    assert_eq!((routes.local, routes.hub), (1, 1));
    expect_last(&mut s0, message("alice", "bob", "batch")).await;
    expect_last(&mut s1, message("alice", "bob", "batch")).await;
    let extra = tokio::time::timeout(Duration::from_millis(100), s2.events.recv()).await;
    assert!(extra.is_err(), "nothing for server 2: {extra:?}");
}

/// Policy `multi`: once one of two sessions ends, the server with the other stops sending that
/// user's messages through the hub (it is told), and nothing reaches the ended session.
#[tokio::test]
async fn multi_after_a_logout_messages_stay_where_the_last_session_is() {
    let hub = start_hub(hub_config(LoginConflict::Multi)).await;
    let [mut s0, mut s1, s2] = bob_on_two_servers(&hub).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));

    s1.cluster.logout(&bob).await.unwrap();
    s1.cluster.flush().await.unwrap();
    assert_eq!(hub.hub.registry().sessions("bob"), [ServerId(0)]);
    eventually("server 0 told bob is no longer shared", || s0.cluster.multi_session_users() == 0)
        .await;
    assert_eq!(s1.cluster.multi_session_users(), 0, "nothing left for a user who logged out");

    let relayed = hub.hub.stats().relayed_frames;
    let route = s0.cluster.send_to_user(&alice, &bob, "local only".into()).await.unwrap();
    assert_eq!(route, SentVia::Local);
    let receipt = s2.cluster.send_with_receipt(&carol, &bob, "from 2".into()).await.unwrap();
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });
    assert_eq!(hub.hub.stats().relayed_frames, relayed + 1, "nothing from server 0 crossed");
    assert_eq!(s0.next_event().await, message("alice", "bob", "local only"));
    expect_last(&mut s0, message("carol", "bob", "from 2")).await;
    // Server 1 heard nothing for bob: the next thing it hears is a message for bill.
    s2.cluster.send_to_user(&carol, &user("bill"), "bill".into()).await.unwrap();
    expect_last(&mut s1, message("carol", "bill", "bill")).await;
}

/// A multi hub on a runtime of its own, killed by the test without any goodbye.
fn start_doomed_hub(config: HubConfig, addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let hub = TestHub::start_with(config, addr).await;
        tx.send(hub.addr).unwrap();
        std::future::pending::<()>().await;
        drop(hub);
    });
    let addr = rx.recv_timeout(PATIENCE).expect("hub started");
    (runtime, addr)
}

/// Receives messages numbered from `from` until `count - 1`, asserting each arrives once and in
/// order, then that nothing follows.
async fn expect_numbered(events: &mut Events, from: u32, count: u32, who: &str) {
    let mut next = from;
    while next < count {
        let batch = tokio::time::timeout(PATIENCE * 3, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("{who} stalled at {next} of {count}"))
            .expect("events open");
        for event in batch {
            let Event::Message { payload, .. } = event else { panic!("{who}: {event:?}") };
            let got: u32 = std::str::from_utf8(&payload).unwrap().parse().unwrap();
            assert_eq!(got, next, "{who}: message {got} arrived where {next} was due");
            next += 1;
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(extra.is_err(), "{who}: duplicate after the stream: {extra:?}");
}

/// Policy `multi`: a stream to a user with two sessions, from a third server, survives the hub
/// dying mid-stream; each session gets every message exactly once, in order.
#[tokio::test]
async fn multi_sessions_get_every_message_once_when_the_hub_dies_mid_stream() {
    const COUNT: u32 = 10_000;
    let config = HubConfig { login_conflict: LoginConflict::Multi, ..HubConfig::default() };
    let (doomed, addr) = start_doomed_hub(config.clone(), "127.0.0.1:0".parse().unwrap());
    let start = |id| TestServer::start_with(builder(id, addr), LinkState::Connected);
    // Server 1 stops reading the hub as soon as its app is behind: its acks wait, so the sender
    // still holds much of the stream when the hub dies.
    let slow = builder(1, addr).event_capacity(1);
    let mut s0 = start(0).await;
    let mut s1 = TestServer::start_with(slow, LinkState::Connected).await;
    let sender = start(2).await;
    s0.login(&["bob"]).await;
    s1.login(&["bob"]).await;
    sender.login(&["carol"]).await;

    let cluster = sender.cluster.clone();
    let sending = tokio::spawn(async move {
        for seq in 0..COUNT {
            let payload = Bytes::from(seq.to_string());
            cluster.send_to_user(&user("carol"), &user("bob"), payload).await.unwrap();
        }
    });
    let mut seen = 0;
    while seen < COUNT / 4 {
        let batch = tokio::time::timeout(PATIENCE * 3, s0.events.recv_batch()).await.unwrap();
        for event in batch.unwrap() {
            let Event::Message { payload, .. } = event else { panic!("{event:?}") };
            assert_eq!(std::str::from_utf8(&payload).unwrap(), seen.to_string());
            seen += 1;
        }
    }
    doomed.shutdown_background();
    wait_link(&s0.cluster, LinkState::Connecting).await;
    let hub = TestHub::start_with(config, addr).await;

    tokio::join!(
        expect_numbered(&mut s0.events, seen, COUNT, "server 0"),
        expect_numbered(&mut s1.events, 0, COUNT, "server 1"),
    );
    sending.await.unwrap();
    let mut sessions = hub.hub.registry().sessions("bob");
    sessions.sort();
    assert_eq!(sessions, [ServerId(0), ServerId(1)]);
}

/// A message for a user and that user's login on the sender's own server, read by the hub in one
/// go, reach the user's old server in the order they were sent: the message, then the kick. (The
/// hub used to hand the kick over at once and the message only after the read, so a drained
/// client's last messages came back "left the server".)
#[tokio::test]
async fn a_message_sent_before_a_login_elsewhere_reaches_the_old_server_before_the_kick() {
    use acms_protocol::{Data, DataKind};

    let hub = TestHub::start().await;
    let mut old = TestServer::start(2, hub.addr).await;
    old.login(&["bob"]).await;
    let mut peer = raw_hello(hub.addr, 1).await;
    for _ in 0..2 {
        // `Welcome`, then `Servers`.
        assert!(matches!(next_frame(&mut peer).await, Some(Frame::Control(_))));
    }
    let frame = Frame::Data(Data {
        kind: DataKind::Unicast,
        seq: 1,
        origin: ServerId(1),
        recipient: user("bob"),
        sender: user("alice"),
        payload: Bytes::from_static(b"before the move"),
    });
    peer.feed(frame).await.unwrap();
    peer.feed(Frame::Control(Control::Login { users: vec![user("bob")] })).await.unwrap();
    SinkExt::<Frame>::flush(&mut peer).await.unwrap();

    assert_eq!(old.next_event().await, message("alice", "bob", "before the move"));
    assert!(matches!(old.next_event().await, Event::Kicked { .. }), "then the kick");
}

//! Presence (locate, watch) and login conflicts (replace, multi) with three app servers and
//! users spread over them, through real sockets on 127.0.0.1. A server whose connection breaks
//! is played by a raw protocol peer, so that the break is a real one, without a `Bye`.

use std::time::Duration;

use acms::{HubConfig, LoginConflict};
use acms_appserver::{Event, LinkState, Outcome, ServerId};
use acms_protocol::{Codec, Control, Frame, Hello, PROTOCOL_VERSION};
use acms_tests::{PATIENCE, Peer, TestHub, TestServer, builder, eventually, next_frame, user};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

fn hub_config(conflict: LoginConflict) -> HubConfig {
    HubConfig { login_conflict: conflict, ..HubConfig::default() }
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
    Event::Presence { user: user(name), server: server.map(ServerId) }
}

fn message(from: &str, to: &str, text: &'static str) -> Event {
    Event::Message { from: user(from), to: user(to), payload: text.into() }
}

/// Registers a raw peer as server `id`, with `users` online, and reads its `Welcome`.
async fn raw_server(hub: &TestHub, id: u32, users: &[&str]) -> Peer {
    let mut peer = Framed::new(TcpStream::connect(hub.addr).await.unwrap(), Codec::default());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        server_id: ServerId(id),
        client_addr: "127.0.0.1:7000".into(),
        epoch: 1,
        nonce: None,
    };
    peer.send(Frame::Control(Control::Hello(hello))).await.unwrap();
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
/// each; when one session ends the other stays reachable, and nothing resyncs.
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
    assert_eq!(receipt.outcome(PATIENCE).await, Outcome::Delivered { sessions: 1 });
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

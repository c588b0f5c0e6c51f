//! P2P candidates in the directory and invitations between users' servers, with a real hub and
//! app servers on the `Cluster` handle over TCP on 127.0.0.1; hostile input from raw peers.

use std::net::SocketAddr;
use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{
    Candidate, CandidateKind, ClusterError, Event, LinkState, MAX_CANDIDATES, Reach, ServerId,
    UndeliverableReason,
};
use acms_protocol::{Control, ErrorCode, Frame};
use acms_tests::http::TestAdmin;
use acms_tests::{PATIENCE, Peer, TestHub, TestServer, next_frame, raw_hello, user, wait_link};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;

fn candidate(addr: &str, kind: CandidateKind) -> Candidate {
    Candidate { addr: addr.parse::<SocketAddr>().unwrap(), kind }
}

/// A client behind a NAT: its LAN address and the address its server saw.
fn alice_candidates() -> Vec<Candidate> {
    vec![
        candidate("192.168.1.20:40000", CandidateKind::Local),
        candidate("203.0.113.7:51000", CandidateKind::Reflexive),
    ]
}

fn presence(name: &str, server: Option<u32>, candidates: Vec<Candidate>) -> Event {
    Event::Presence { user: user(name), server: server.map(ServerId), candidates }
}

/// Registers a raw peer as server `id` with `users` online and reads its `Welcome` and
/// `Servers`.
async fn raw_server(hub: &TestHub, id: u32, users: &[&str]) -> Peer {
    let mut peer = raw_hello(hub.addr, id).await;
    let welcome = next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    let servers = next_frame(&mut peer).await;
    assert!(matches!(servers, Some(Frame::Control(Control::Servers { .. }))), "{servers:?}");
    let users = users.iter().map(|name| user(name)).collect();
    peer.send(Frame::Control(Control::Login { users })).await.unwrap();
    peer.send(Frame::Control(Control::SnapshotDone)).await.unwrap();
    peer
}

/// Reads frames until the hub's `Error`, then checks the connection closes after it.
async fn expect_error(peer: &mut Peer) -> (ErrorCode, String) {
    loop {
        match next_frame(peer).await {
            Some(Frame::Control(Control::Error { code, message })) => {
                assert!(next_frame(peer).await.is_none(), "closed after the error");
                return (code, message);
            }
            Some(_) => continue,
            None => panic!("closed without an error frame"),
        }
    }
}

/// The next event that is not a `Presence`, for servers that also watch.
async fn next_non_presence(server: &mut TestServer) -> Event {
    loop {
        let event = server.next_event().await;
        if !matches!(event, Event::Presence { .. }) {
            return event;
        }
    }
}

#[tokio::test]
async fn candidates_are_located_from_another_server_pushed_on_change_and_cleared_at_logout() {
    let hub = TestHub::start().await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    let alice = user("alice");

    s1.cluster.watch([alice.clone()]).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), vec![]));

    s0.cluster.set_candidates(&alice, alice_candidates()).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), alice_candidates()));
    let expected = Reach { server: ServerId(0), candidates: alice_candidates() };
    assert_eq!(s1.cluster.reach(&alice).await.unwrap(), Some(expected.clone()));
    assert_eq!(s0.cluster.reach(&alice).await.unwrap(), Some(expected), "answered locally");
    assert_eq!(s1.cluster.locate(&alice).await.unwrap(), Some(ServerId(0)));
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let view = admin.get("/api/users/alice").await.json();
    assert_eq!(
        view["candidates"],
        serde_json::json!([
            {"addr": "192.168.1.20:40000", "kind": "local"},
            {"addr": "203.0.113.7:51000", "kind": "reflexive"},
        ]),
        "the admin API shows them"
    );

    // The same list again changes nothing and is not pushed; a new one is.
    s0.cluster.set_candidates(&alice, alice_candidates()).await.unwrap();
    let moved = vec![candidate("198.51.100.9:52000", CandidateKind::Reflexive)];
    s0.cluster.set_candidates(&alice, moved.clone()).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), moved.clone()));

    // Logout: offline, no candidates; a new login starts with none.
    s0.cluster.logout(&alice).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", None, vec![]));
    assert_eq!(s1.cluster.reach(&alice).await.unwrap(), None);
    assert_eq!(hub.hub.registry().sessions_with_candidates(), 0, "forgotten by the hub");
    s0.login(&["alice"]).await;
    assert_eq!(s1.next_event().await, presence("alice", Some(0), vec![]));
    let reach = s1.cluster.reach(&alice).await.unwrap();
    assert_eq!(reach, Some(Reach { server: ServerId(0), candidates: vec![] }));

    // Clearing them explicitly is pushed too.
    s0.cluster.set_candidates(&alice, moved.clone()).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), moved));
    s0.cluster.set_candidates(&alice, vec![]).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), vec![]));
}

#[tokio::test]
async fn the_library_refuses_bad_candidates_and_users_not_here_and_sends_nothing() {
    let hub = TestHub::start().await;
    let s0 = TestServer::start(0, hub.addr).await;
    let s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    let alice = user("alice");

    let too_many: Vec<Candidate> = (0..=MAX_CANDIDATES)
        .map(|i| candidate(&format!("10.0.0.{}:4000", i + 1), CandidateKind::Local))
        .collect();
    let err = s0.cluster.set_candidates(&alice, too_many).await.unwrap_err();
    assert!(matches!(err, ClusterError::TooManyCandidates { count: 9, max: 8 }), "{err}");
    let unusable = vec![candidate("0.0.0.0:4000", CandidateKind::Local)];
    let err = s0.cluster.set_candidates(&alice, unusable).await.unwrap_err();
    assert!(matches!(err, ClusterError::UnusableCandidate { .. }), "{err}");
    let err = s1.cluster.set_candidates(&alice, alice_candidates()).await.unwrap_err();
    assert!(matches!(err, ClusterError::NotLocal { .. }), "alice is on server 0: {err}");

    s0.cluster.flush().await.unwrap();
    let reach = s1.cluster.reach(&alice).await.unwrap();
    assert_eq!(reach, Some(Reach { server: ServerId(0), candidates: vec![] }), "nothing sent");
    assert_eq!(s0.cluster.link_state().borrow().clone(), LinkState::Connected);
}

#[tokio::test]
async fn candidates_are_sent_again_with_the_snapshot_after_a_hub_restart() {
    let hub = TestHub::start().await;
    let addr = hub.addr;
    let s0 = TestServer::start(0, addr).await;
    let mut s1 = TestServer::start(1, addr).await;
    s0.login(&["alice"]).await;
    let alice = user("alice");
    s0.cluster.set_candidates(&alice, alice_candidates()).await.unwrap();
    s0.cluster.flush().await.unwrap();

    hub.stop().await;
    wait_link(&s0.cluster, LinkState::Connecting).await;
    let hub = TestHub::start_with(HubConfig::default(), addr).await;
    wait_link(&s0.cluster, LinkState::Connected).await;
    wait_link(&s1.cluster, LinkState::Connected).await;
    s0.cluster.flush().await.unwrap();

    assert_eq!(hub.hub.registry().reach("alice"), Some((ServerId(0), alice_candidates())));
    let expected = Reach { server: ServerId(0), candidates: alice_candidates() };
    assert_eq!(s1.cluster.reach(&alice).await.unwrap(), Some(expected));
    // A watch made on the new hub hears them at once.
    s1.cluster.watch([alice.clone()]).await.unwrap();
    assert_eq!(s1.next_event().await, presence("alice", Some(0), alice_candidates()));
}

#[tokio::test]
async fn an_invitation_is_delivered_once_across_servers_and_locally_and_comes_back_for_an_offline_user()
 {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice", "carol"]).await;
    s1.login(&["bob"]).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));

    s0.cluster.invite(&alice, &bob, Bytes::from_static(b"punch 1")).await.unwrap();
    let expected =
        Event::Invitation { from: alice.clone(), to: bob.clone(), payload: "punch 1".into() };
    assert_eq!(s1.next_event().await, expected);

    // Same server: delivered here, without the hub.
    s0.cluster.invite(&alice, &carol, Bytes::from_static(b"punch 2")).await.unwrap();
    let expected =
        Event::Invitation { from: alice.clone(), to: carol.clone(), payload: "punch 2".into() };
    assert_eq!(s0.next_event().await, expected);

    // Offline: back to the sender's server, marked as an invitation.
    let dave = user("dave");
    s1.cluster.invite(&bob, &dave, Bytes::from_static(b"punch 3")).await.unwrap();
    let expected = Event::Undeliverable {
        from: bob.clone(),
        to: dave,
        payload: "punch 3".into(),
        reason: UndeliverableReason::Offline,
        invitation: true,
    };
    assert_eq!(s1.next_event().await, expected);

    // A message after them arrives next: no invitation was handed over twice.
    s0.cluster.send_to_user(&alice, &bob, "after".into()).await.unwrap();
    let message = Event::Message { from: alice, to: bob, payload: "after".into() };
    assert_eq!(s1.next_event().await, message);
    let extra = tokio::time::timeout(Duration::from_millis(200), s1.events.recv()).await;
    assert!(extra.is_err(), "nothing else: {extra:?}");
}

#[tokio::test]
async fn an_invitation_sent_while_the_hub_is_down_arrives_once_after_it_is_back() {
    let hub = TestHub::start().await;
    let addr = hub.addr;
    let s0 = TestServer::start(0, addr).await;
    let mut s1 = TestServer::start(1, addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;
    let (alice, bob) = (user("alice"), user("bob"));

    hub.stop().await;
    wait_link(&s0.cluster, LinkState::Connecting).await;
    s0.cluster.invite(&alice, &bob, Bytes::from_static(b"punch")).await.unwrap();
    let _hub = TestHub::start_with(HubConfig::default(), addr).await;
    let expected =
        Event::Invitation { from: alice.clone(), to: bob.clone(), payload: "punch".into() };
    assert_eq!(next_non_presence(&mut s1).await, expected);
    s0.cluster.send_to_user(&alice, &bob, "after".into()).await.unwrap();
    let message = Event::Message { from: alice, to: bob, payload: "after".into() };
    assert_eq!(next_non_presence(&mut s1).await, message, "the invitation came once");
}

/// A `Candidates` control frame by hand: `count` claimed, `candidates` present.
fn candidates_frame(name: &str, count: u32, candidates: &[Candidate]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(0); // control
    // Variant 33, the user id, then the list's length as a bincode varint.
    body.put_u8(33);
    body.put_u8(name.len() as u8);
    body.put_slice(name.as_bytes());
    body.put_u8(0xfc);
    body.put_u32_le(count);
    for candidate in candidates {
        let control = Control::Candidates { user: user(name), candidates: vec![*candidate] };
        let mut one = BytesMut::new();
        control.encode_into(&mut one).unwrap();
        // What follows the user id and the list's length (1) is the candidate itself.
        body.put_slice(&one[1 + 1 + name.len() + 1..]);
    }
    let mut frame = BytesMut::new();
    frame.put_u32(body.len() as u32);
    frame.put_slice(&body);
    frame.freeze()
}

#[tokio::test]
async fn too_many_lying_or_unusable_candidates_close_only_that_connection() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;
    s0.cluster.set_candidates(&user("alice"), alice_candidates()).await.unwrap();
    s0.cluster.flush().await.unwrap();

    let nine: Vec<Candidate> = (0..9)
        .map(|i| candidate(&format!("10.0.0.{}:4000", i + 1), CandidateKind::Local))
        .collect();
    let many: Vec<Candidate> = (0..100_000u32)
        .map(|i| {
            let [_, a, b, c] = i.to_be_bytes();
            Candidate { addr: SocketAddr::from(([10, a, b, c], 4000)), kind: CandidateKind::Local }
        })
        .collect();
    let malformed = |what, frame| (what, frame, ErrorCode::Malformed, "candidate");
    let encoded = |candidates| {
        let control = Control::Candidates { user: user("mallory"), candidates };
        Frame::Control(control).to_bytes(1 << 20).unwrap()
    };
    // A frame of a few candidates whose prefix claims 1.8 MB, past the 1 MiB limit.
    let mut oversized = BytesMut::from(&candidates_frame("mallory", 200_000, &many[..9])[..]);
    oversized[..4].copy_from_slice(&1_800_000u32.to_be_bytes());
    let cases = vec![
        malformed("nine candidates", encoded(nine)),
        malformed("100,000 candidates in one frame", candidates_frame("mallory", 100_000, &many)),
        malformed(
            "a count of 4 billion in a small frame",
            candidates_frame("mallory", u32::MAX, &many[..9]),
        ),
        malformed(
            "an unspecified address",
            encoded(vec![candidate("0.0.0.0:4000", CandidateKind::Reflexive)]),
        ),
        malformed("port 0", encoded(vec![candidate("203.0.113.1:0", CandidateKind::Reflexive)])),
        // Refused when the prefix arrives, before the body.
        ("a frame over the limit", oversized.freeze(), ErrorCode::TooLarge, "exceeds the limit"),
    ];
    assert!(cases[1].1.len() > 500_000 && cases[1].1.len() < 1 << 20, "{}", cases[1].1.len());

    for (id, (what, frame, expected, reason)) in (10..).zip(cases) {
        let mut peer = raw_server(&hub, id, &["mallory"]).await;
        use tokio::io::AsyncWriteExt;
        // The hub may close before it has read it all.
        let _ = peer.get_mut().write_all(&frame).await;
        let (code, message) = expect_error(&mut peer).await;
        assert_eq!(code, expected, "{what}: {message}");
        assert!(message.contains(reason), "{what}: a clear reason: {message}");

        // The others carry on: a message, a reach.
        s0.cluster.send_to_user(&user("alice"), &user("bob"), "still here".into()).await.unwrap();
        let message =
            Event::Message { from: user("alice"), to: user("bob"), payload: "still here".into() };
        assert_eq!(next_non_presence(&mut s1).await, message, "{what}");
        let reach = s1.cluster.reach(&user("alice")).await.unwrap();
        assert_eq!(reach, Some(Reach { server: ServerId(0), candidates: alice_candidates() }));
    }
    assert_eq!(hub.hub.registry().sessions_with_candidates(), 1, "only alice's");
    let extra = tokio::time::timeout(Duration::from_millis(100), s0.events.recv()).await;
    assert!(extra.is_err(), "server 0 heard nothing of it: {extra:?}");
}

#[tokio::test]
async fn candidates_for_a_user_the_server_does_not_have_are_ignored() {
    let hub = TestHub::start().await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut peer = raw_server(&hub, 5, &["mallory"]).await;
    s0.login(&["alice"]).await;

    // A server speaks for its own users only: alice is on server 0.
    let control = Control::Candidates { user: user("alice"), candidates: alice_candidates() };
    peer.send(Frame::Control(control)).await.unwrap();
    peer.send(Frame::Control(Control::Ping { token: 7 })).await.unwrap();
    loop {
        match next_frame(&mut peer).await {
            Some(Frame::Control(Control::Pong { token: 7 })) => break,
            Some(Frame::Control(Control::Error { code, message })) => {
                panic!("closed: {code:?} {message}")
            }
            Some(_) => continue,
            None => panic!("closed"),
        }
    }
    assert_eq!(hub.hub.registry().reach("alice"), Some((ServerId(0), vec![])));
    assert_eq!(hub.hub.registry().sessions_with_candidates(), 0);
}

#[tokio::test]
async fn a_user_who_moves_to_another_server_leaves_the_old_sessions_candidates_behind() {
    let hub = TestHub::start().await;
    let mut s0 = TestServer::start(0, hub.addr).await;
    let s1 = TestServer::start(1, hub.addr).await;
    let mut s2 = TestServer::start(2, hub.addr).await;
    s0.login(&["alice"]).await;
    let alice = user("alice");
    s0.cluster.set_candidates(&alice, alice_candidates()).await.unwrap();
    s2.cluster.watch([alice.clone()]).await.unwrap();
    assert_eq!(s2.next_event().await, presence("alice", Some(0), alice_candidates()));

    // Policy `replace`: her login on server 1 kicks server 0's session.
    s1.login(&["alice"]).await;
    assert_eq!(s2.next_event().await, presence("alice", Some(1), vec![]));
    assert!(matches!(next_non_presence(&mut s0).await, Event::Kicked { .. }));
    let reach = s2.cluster.reach(&alice).await.unwrap();
    assert_eq!(reach, Some(Reach { server: ServerId(1), candidates: vec![] }));
    let registry = hub.hub.registry();
    acms_tests::eventually("server 0's session forgotten", || {
        registry.sessions_with_candidates() == 0
    })
    .await;
    let err = s0.cluster.set_candidates(&alice, alice_candidates()).await.unwrap_err();
    assert!(matches!(err, ClusterError::NotLocal { .. }), "kicked from server 0: {err}");
}

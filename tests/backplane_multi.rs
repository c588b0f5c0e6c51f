//! Users across hubs on a NATS backplane: sessions of one user on several hubs (policy
//! `multi`), and the P2P candidates of a user on another hub. Three `acms` processes on a real
//! three-node NATS cluster, an app server on each.

use std::net::SocketAddr;
use std::time::Duration;

use acms_appserver::{
    Candidate, CandidateKind, Cluster, Event, Events, LinkState, Outcome, Reach, ServerId,
};
use acms_tests::nats::{NatsCluster, free_port, server_on_each, start_hubs_with, wait_sessions};
use acms_tests::wait_link;
use acms_tests::{PATIENCE, eventually, user};

/// The next event of server `id`, within [`PATIENCE`].
async fn next(events: &mut Events, id: u32) -> Event {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event on server {id}"))
        .expect("events open")
}

/// The next event of server `id`, which must be `from`'s message `payload` to `to`.
async fn expect_message(events: &mut Events, id: u32, from: &str, to: &str, payload: &str) {
    match next(events, id).await {
        Event::Message { from: got_from, to: got_to, payload: got } => assert_eq!(
            (got_from.as_str(), got_to.as_str(), &got[..]),
            (from, to, payload.as_bytes()),
            "server {id}"
        ),
        other => panic!("expected {from}'s message to {to} on server {id}, got {other:?}"),
    }
}

/// Asserts that server `id` has no event now: whatever was sent before has come, and once.
async fn nothing_more(events: &mut Events, id: u32) {
    let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(extra.is_err(), "server {id}: unexpected {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_hub_leaves_the_session_on_another_reachable_and_flagged_alone() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &["--login-conflict", "multi"]).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    // Sam on hub A's server and on hub B's; bob on hub B, carl on hub C.
    clusters[0].login(user("sam")).await.expect("login on A");
    clusters[1].login(user("sam")).await.expect("login on B");
    clusters[1].login(user("bob")).await.expect("login on B");
    clusters[2].login(user("carl")).await.expect("login on C");
    // Each of sam's servers learns he has a session elsewhere: on another hub.
    eventually("server 10 to count sam multi-session", || clusters[0].multi_session_users() == 1)
        .await;
    eventually("server 11 to count sam multi-session", || clusters[1].multi_session_users() == 1)
        .await;
    // So bob, beside one of sam's sessions, reaches the other through the hubs too.
    clusters[1].send_to_user(&user("bob"), &user("sam"), "from bob".into()).await.expect("send");
    expect_message(&mut events[0], 10, "bob", "sam", "from bob").await;

    // Sam leaves hub A: hub B's server learns he is alone there, and carl's next message
    // reaches him on hub B only.
    clusters[0].logout(&user("sam")).await.expect("logout on A");
    eventually("server 11 to count sam alone", || clusters[1].multi_session_users() == 0).await;
    assert_eq!(clusters[0].multi_session_users(), 0, "sam is gone from server 10");
    // Carl's hub has heard of the logout too (before, its replica could still list server 10,
    // and the copy for it came back to carl as undeliverable).
    wait_sessions(hubs[2].admin, "sam", &[11]).await;
    clusters[2]
        .send_to_user(&user("carl"), &user("sam"), "still there".into())
        .await
        .expect("send");
    // Server 11 may have had bob's message delivered locally as an event first.
    let mut got = next(&mut events[1], 11).await;
    if matches!(&got, Event::Message { from, .. } if from.as_str() == "bob") {
        got = next(&mut events[1], 11).await;
    }
    match got {
        Event::Message { from, to, payload } => assert_eq!(
            (from.as_str(), to.as_str(), &payload[..]),
            ("carl", "sam", &b"still there"[..])
        ),
        other => panic!("expected carl's message on server 11, got {other:?}"),
    }
    for (index, events) in events.iter_mut().enumerate() {
        nothing_more(events, 10 + index as u32).await;
    }
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_on_another_hub_each_get_a_message_and_the_receipt_counts_both() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &["--login-conflict", "multi"]).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    // A second server on hub B: sam is on both of hub B's servers, carl on hub A.
    let (second, mut second_events) = Cluster::builder(ServerId(13), hubs[1].transfer.to_string())
        .client_addr(format!("127.0.0.1:{}", free_port()))
        .start();
    wait_link(&second, LinkState::Connected).await;
    clusters[1].login(user("sam")).await.expect("login on B");
    second.login(user("sam")).await.expect("login on B again");
    clusters[0].login(user("carl")).await.expect("login on A");
    eventually("server 11 to count sam multi-session", || clusters[1].multi_session_users() == 1)
        .await;
    // Hub A's replica lists both sessions once the entry has them: hub B hands its one copy to
    // each, and the receipt counts both (the origin waited for both acks).
    let mut reached = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seq = 0;
    while reached != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carl's messages reached {reached} sessions"
        );
        seq += 1;
        let payload = format!("hi {seq}");
        let receipt = clusters[0]
            .send_with_receipt(&user("carl"), &user("sam"), payload.clone().into())
            .await
            .expect("send");
        // Each of sam's sessions gets it once, whatever hub A knew when it was sent.
        expect_message(&mut events[1], 11, "carl", "sam", &payload).await;
        expect_message(&mut second_events, 13, "carl", "sam", &payload).await;
        reached = match receipt.outcome(PATIENCE).await {
            Outcome::Delivered { sessions } => sessions,
            other => panic!("carl's message {seq}: {other:?}"),
        };
    }
    nothing_more(&mut events[1], 11).await;
    nothing_more(&mut second_events, 13).await;
    second.close().await;
    for cluster in clusters {
        cluster.close().await;
    }
}

fn candidates(port: u16) -> Vec<Candidate> {
    let addr = |text: &str| text.parse::<SocketAddr>().expect("an address");
    vec![
        Candidate { addr: addr(&format!("192.168.1.20:{port}")), kind: CandidateKind::Local },
        Candidate { addr: addr(&format!("203.0.113.7:{port}")), kind: CandidateKind::Reflexive },
    ]
}

/// Waits until `cluster` reaches `name` on `server` with `expected` candidates.
async fn wait_reach(cluster: &Cluster, name: &str, server: u32, expected: &[Candidate]) {
    let want = Some(Reach { server: ServerId(server), candidates: expected.to_vec() });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let got = cluster.reach(&user(name)).await.expect("reach");
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "reached {name} as {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event of server `id`, which must be a presence event of `name`.
async fn expect_presence(
    events: &mut Events,
    id: u32,
    name: &str,
    server: Option<u32>,
    expected: Vec<Candidate>,
) {
    let want =
        Event::Presence { user: user(name), server: server.map(ServerId), candidates: expected };
    let got = next(events, id).await;
    assert_eq!(got, want, "server {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_of_a_user_on_another_hub_are_found_and_pushed_when_they_change() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    // Alice on hub A sets her candidates; servers on hubs B and C find them.
    clusters[0].login(user("alice")).await.expect("login");
    clusters[0].set_candidates(&user("alice"), candidates(40000)).await.expect("candidates");
    wait_reach(&clusters[1], "alice", 10, &candidates(40000)).await;
    wait_reach(&clusters[2], "alice", 10, &candidates(40000)).await;
    // A watcher on hub B hears her place with them, then each real change.
    clusters[1].watch([user("alice")]).await.expect("watch");
    expect_presence(&mut events[1], 11, "alice", Some(10), candidates(40000)).await;
    clusters[0].set_candidates(&user("alice"), candidates(41000)).await.expect("candidates");
    expect_presence(&mut events[1], 11, "alice", Some(10), candidates(41000)).await;
    // The same again changes nothing: the next push is the one after.
    clusters[0].set_candidates(&user("alice"), candidates(41000)).await.expect("candidates");
    clusters[0].set_candidates(&user("alice"), Vec::new()).await.expect("cleared");
    expect_presence(&mut events[1], 11, "alice", Some(10), Vec::new()).await;
    wait_reach(&clusters[2], "alice", 10, &[]).await;
    clusters[0].logout(&user("alice")).await.expect("logout");
    expect_presence(&mut events[1], 11, "alice", None, Vec::new()).await;
    nothing_more(&mut events[1], 11).await;
    for cluster in clusters {
        cluster.close().await;
    }
}

/// An invitation (a P2P offer or answer) crosses hubs like a message: once, and before what
/// was sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_to_a_user_on_another_hub_arrives_once() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    clusters[0].login(user("alice")).await.expect("login");
    clusters[1].login(user("bob")).await.expect("login");
    wait_reach(&clusters[0], "bob", 11, &[]).await;
    clusters[0].invite(&user("alice"), &user("bob"), "offer".into()).await.expect("invite");
    match next(&mut events[1], 11).await {
        Event::Invitation { from, to, payload } => {
            assert_eq!((from.as_str(), to.as_str(), &payload[..]), ("alice", "bob", &b"offer"[..]))
        }
        other => panic!("expected alice's invitation on server 11, got {other:?}"),
    }
    clusters[0].send_to_user(&user("alice"), &user("bob"), "after".into()).await.expect("send");
    expect_message(&mut events[1], 11, "alice", "bob", "after").await;
    nothing_more(&mut events[1], 11).await;
    nothing_more(&mut events[0], 10).await;
    for cluster in clusters {
        cluster.close().await;
    }
}

/// `POST` `json` to `path` of the hub at `admin`, with the admin token.
async fn post(admin: SocketAddr, path: &str, json: &str) -> acms_tests::http::Reply {
    let auth = format!("Bearer {}", acms_tests::process::ADMIN_TOKEN);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    acms_tests::http::request(admin, "POST", path, &headers, Some(json)).await
}

/// An admin push or kick from any hub reaches every session of a user with sessions on several
/// hubs (policy `multi`), this hub's among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_push_and_kick_reach_every_session_on_every_hub() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &["--login-conflict", "multi"]).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    clusters[0].login(user("sam")).await.expect("login on A");
    clusters[1].login(user("sam")).await.expect("login on B");
    // Every hub's directory has both sessions.
    for hub in &hubs {
        wait_sessions(hub.admin, "sam", &[10, 11]).await;
    }
    // From hub C, which holds no session of sam, and from hub A, which holds one.
    for (index, admin) in [(2, hubs[2].admin), (0, hubs[0].admin)] {
        let payload = format!("notice {index}");
        let json = format!(r#"{{"from":"ops","payload":"{payload}"}}"#);
        let reply = post(admin, "/api/users/sam/messages", &json).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["servers"], serde_json::json!([10, 11]), "{}", reply.body);
        expect_message(&mut events[0], 10, "ops", "sam", &payload).await;
        expect_message(&mut events[1], 11, "ops", "sam", &payload).await;
    }
    let reply = post(hubs[0].admin, "/api/users/sam/kick", r#"{"reason":"maintenance"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut kicked: Vec<u64> = reply.json()["servers"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    kicked.sort_unstable();
    assert_eq!(kicked, vec![10, 11], "{}", reply.body);
    for (index, events) in events.iter_mut().enumerate().take(2) {
        match next(events, 10 + index as u32).await {
            Event::Kicked { user, .. } => assert_eq!(user.as_str(), "sam"),
            other => panic!("expected sam's kick on server {}, got {other:?}", 10 + index),
        }
    }
    for cluster in clusters {
        cluster.close().await;
    }
}

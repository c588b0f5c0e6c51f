//! Operating several hubs on a NATS backplane: the admin API of any hub reaches the users of
//! the others. Three `acms` processes on a real three-node NATS cluster; app servers on two of
//! them, and requests to the third (which holds neither user) or to the other's hub.

use std::net::SocketAddr;
use std::time::Duration;

use acms_appserver::{Cluster, Event, Events, GroupId, LinkState, ServerId};
use acms_tests::nats::{HubProc, NatsCluster, free_port, metric, server_on_each, start_hubs_with};
use acms_tests::process::ADMIN_TOKEN;
use acms_tests::stream::{number, numbered};
use acms_tests::{PATIENCE, http, user, wait_link};

/// Three hubs, hub `i` connected first to NATS node `i`.
async fn start_hubs(nats: &NatsCluster) -> Vec<HubProc> {
    start_hubs_with(nats, &[]).await
}

/// `POST path` with `json` and the admin token, to the hub at `admin`.
async fn post(admin: SocketAddr, path: &str, json: &str) -> http::Reply {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    http::request(admin, "POST", path, &headers, Some(json)).await
}

/// Waits until `check` holds of the JSON at `path` of the hub at `admin`.
async fn wait_json(
    admin: SocketAddr,
    path: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = http::request(admin, "GET", path, &[], None).await;
        if serde_json::from_str(&reply.body).is_ok_and(|json| check(&json)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {admin}: never {what}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event of server `id`, within [`PATIENCE`].
async fn next(events: &mut Events, id: u32) -> Event {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no event on server {id}"))
        .expect("events open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_kicks_from_any_hub_reach_users_on_another() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let mut clusters = Vec::new();
    let mut events = Vec::new();
    let room = GroupId::new("room").expect("a group id");
    // Alice on hub A, bob on hub B; hub C holds neither.
    for (index, name) in ["alice", "bob"].into_iter().enumerate() {
        let id = 10 + index as u32;
        let (cluster, cluster_events) =
            Cluster::builder(ServerId(id), hubs[index].transfer.to_string())
                .client_addr(format!("127.0.0.1:{}", free_port()))
                .start();
        wait_link(&cluster, LinkState::Connected).await;
        cluster.login(user(name)).await.expect("login");
        cluster.join(&room, &user(name)).await.expect("join");
        clusters.push(cluster);
        events.push(cluster_events);
    }
    let hub_c = hubs[2].admin;
    for (name, id) in [("alice", 10), ("bob", 11)] {
        let path = format!("/api/users/{name}");
        wait_json(hub_c, &path, "located the user", |json| json["server"] == id).await;
    }
    let interest = |body: &str| body.contains("acms_backplane_group_interest 2");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !interest(&http::request(hub_c, "GET", "/metrics", &[], None).await.body) {
        assert!(tokio::time::Instant::now() < deadline, "hub C never saw both hubs in the group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A push to bob from hub C: hub B pushes it, and answers once bob's server acknowledged it.
    let reply = post(hub_c, "/api/users/bob/messages", r#"{"from":"ops","payload":"hello"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["status"], "delivered", "{}", reply.body);
    assert_eq!(reply.json()["servers"], serde_json::json!([11]));
    match next(&mut events[1], 11).await {
        Event::Message { from, to, payload } => {
            assert_eq!((from.as_str(), to.as_str(), &payload[..]), ("ops", "bob", &b"hello"[..]));
        }
        other => panic!("expected the push on server 11, got {other:?}"),
    }
    // A push to the group from hub C: each hub with members pushes to its own servers.
    let reply = post(hub_c, "/api/groups/room/messages", r#"{"from":"ops","payload":"all"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["servers"], serde_json::json!([10, 11]), "{}", reply.body);
    for (index, name) in ["alice", "bob"].into_iter().enumerate() {
        match next(&mut events[index], 10 + index as u32).await {
            Event::GroupMessage { to, payload, .. } => {
                assert_eq!((to, &payload[..]), (vec![user(name)], &b"all"[..]));
            }
            other => panic!("expected the group push for {name}, got {other:?}"),
        }
    }
    // Nobody called dave is online on any hub.
    let reply = post(hub_c, "/api/users/dave/messages", r#"{"from":"ops","payload":"x"}"#).await;
    assert_eq!(reply.json()["status"], "offline", "{}", reply.body);

    // A kick of bob from hub A: his server on hub B ends his session, with the reason.
    let reply = post(hubs[0].admin, "/api/users/bob/kick", r#"{"reason":"spamming"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["servers"], serde_json::json!([11]));
    match next(&mut events[1], 11).await {
        Event::Kicked { user: kicked, reason } => {
            assert_eq!((kicked.as_str(), reason.as_str()), ("bob", "spamming"));
        }
        other => panic!("expected bob's kick, got {other:?}"),
    }
    let reply = post(hubs[0].admin, "/api/users/dave/kick", "{}").await;
    reply.error(404);
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_of_any_hub_shows_the_whole_cluster() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let mut clusters = Vec::new();
    // Server 10 on hub A with two users, server 11 on hub B with one; hub C has none.
    for (index, names) in [&["alice", "ann"][..], &["bob"][..]].into_iter().enumerate() {
        let (cluster, _events) =
            Cluster::builder(ServerId(10 + index as u32), hubs[index].transfer.to_string())
                .client_addr(format!("127.0.0.1:{}", free_port()))
                .start();
        wait_link(&cluster, LinkState::Connected).await;
        for name in names {
            cluster.login(user(name)).await.expect("login");
        }
        clusters.push((cluster, _events));
    }
    let whole = |json: &serde_json::Value| {
        json["servers"] == 2
            && json["connected"] == 2
            && json["users"] == 3
            && json["backplane"]["hubs_alive"] == 2
    };
    wait_json(hubs[2].admin, "/api/summary", "counted the whole cluster", whole).await;
    let summary = http::request(hubs[2].admin, "GET", "/api/summary", &[], None).await.json();
    let backplane = &summary["backplane"];
    let listed = backplane["hubs"].as_array().expect("a list of hubs");
    let figures: Vec<(bool, bool, u64, u64)> = listed
        .iter()
        .map(|hub| {
            let figure = |name: &str| hub[name].as_u64().expect("a count");
            (hub["me"] == true, hub["alive"] == true, figure("servers"), figure("users"))
        })
        .collect();
    let mut others = figures[1..].to_vec();
    others.sort();
    assert_eq!(figures[0], (true, true, 0, 0), "this hub first, with nothing: {summary}");
    assert_eq!(others, vec![(false, true, 1, 1), (false, true, 1, 2)], "{summary}");
    assert_eq!(backplane["hub"], listed[0]["id"]);
    for name in ["published", "received", "dropped", "gaps"] {
        assert!(backplane[name].is_u64(), "{name} in {summary}");
    }
    // Each server's hub, as the dashboard's cards show it, is one of the hubs listed.
    let servers = http::request(hubs[2].admin, "GET", "/api/servers", &[], None).await.json();
    let ids: Vec<&serde_json::Value> = listed.iter().map(|hub| &hub["id"]).collect();
    for server in servers.as_array().expect("a list") {
        assert!(ids.contains(&&server["hub"]), "{server} on a hub the summary lists");
    }
    for (cluster, _events) in clusters {
        cluster.close().await;
    }
}

/// Three hubs with the login-conflict policy `multi`.
async fn start_multi_hubs(nats: &NatsCluster) -> Vec<HubProc> {
    start_hubs_with(nats, &["--login-conflict", "multi"]).await
}

// The users bucket lists every session of a user: a message reaches each, on every hub, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_sessions_on_two_hubs_each_get_a_message_once() {
    let nats = NatsCluster::start().await;
    let hubs = start_multi_hubs(&nats).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    // Sam has a session on hub A's server and on hub B's; carl on hub C writes to him.
    clusters[0].login(user("sam")).await.expect("login on A");
    clusters[1].login(user("sam")).await.expect("login on B");
    clusters[2].login(user("carl")).await.expect("login on C");
    for cluster in &clusters[..2] {
        cluster.flush().await.expect("flush");
    }
    assert!(clusters[0].is_local("sam") && clusters[1].is_local("sam"), "multi keeps both");
    let path = "/api/users/carl";
    wait_json(hubs[0].admin, path, "located carl", |json| json["server"] == 12).await;
    wait_json(hubs[1].admin, path, "located carl", |json| json["server"] == 12).await;
    clusters[2].send_to_user(&user("carl"), &user("sam"), "hi sam".into()).await.expect("send");
    for (index, events) in events.iter_mut().enumerate().take(2) {
        match next(events, 10 + index as u32).await {
            Event::Message { from, to, payload } => {
                assert_eq!(
                    (from.as_str(), to.as_str(), &payload[..]),
                    ("carl", "sam", &b"hi sam"[..])
                );
            }
            other => panic!("expected carl's message on server {}, got {other:?}", 10 + index),
        }
    }
    for (index, events) in events.iter_mut().enumerate() {
        let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
        assert!(extra.is_err(), "server {}: unexpected {extra:?}", 10 + index);
    }
    for cluster in clusters {
        cluster.close().await;
    }
}

/// Messages the hub at `admin` received from other hubs.
async fn received(admin: SocketAddr) -> Option<u64> {
    metric(admin, "acms_backplane_messages_total{what=\"received\"}").await
}

/// Waits until every hub counts `pairs` (group, hub) pairs with members: the joins and leaves
/// have reached every replica.
async fn wait_interest(hubs: &[HubProc], pairs: u64) {
    for hub in hubs {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = metric(hub.admin, "acms_backplane_group_interest").await;
            if got == Some(pairs) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub {} counts {got:?} pairs of a group and a hub with members, not {pairs}",
                hub.admin
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The next event of server `id`, which must be a group message: its recipients and number.
async fn next_group_message(events: &mut Events, id: u32) -> (Vec<String>, u32) {
    let event = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .unwrap_or_else(|_| panic!("no group message on server {id}"))
        .expect("events open");
    match event {
        Event::GroupMessage { to, payload, .. } => {
            (to.iter().map(|user| user.as_str().to_owned()).collect(), number(&payload))
        }
        other => panic!("expected a group message on server {id}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_crosses_only_to_hubs_with_members_once_each() {
    use acms_appserver::{GroupId, Outcome};
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let (clusters, mut events) = server_on_each(&hubs).await;
    for (index, cluster) in clusters.iter().enumerate() {
        cluster.login(user(&format!("u{}", 10 + index))).await.expect("login");
    }
    clusters[0].login(user("v10")).await.expect("login");
    let room = GroupId::new("room").expect("a group id");
    let join = async |index: usize, name: &str| {
        clusters[index].join(&room, &user(name)).await.expect("join");
    };
    // Members on hubs A and B; hub C's user is no member.
    join(0, "u10").await;
    join(0, "v10").await;
    join(1, "u11").await;
    wait_interest(&hubs, 2).await;
    let hub_c_before = received(hubs[2].admin).await;
    let send = async |seq: u32| {
        let from = user("u10");
        clusters[0].send_to_group(&from, &room, numbered(seq, 8), true).await.expect("send")
    };
    let receipt = send(1).await;
    assert_eq!(next_group_message(&mut events[0], 10).await, (vec!["v10".to_owned()], 1));
    assert_eq!(next_group_message(&mut events[1], 11).await, (vec!["u11".to_owned()], 1));
    assert!(matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 1 }));
    assert_eq!(
        received(hubs[2].admin).await,
        hub_c_before,
        "hub C, with no member, received none of the group's traffic"
    );

    // Members on three hubs: each gets it once.
    join(2, "u12").await;
    wait_interest(&hubs, 3).await;
    let receipt = send(2).await;
    assert_eq!(next_group_message(&mut events[0], 10).await, (vec!["v10".to_owned()], 2));
    assert_eq!(next_group_message(&mut events[1], 11).await, (vec!["u11".to_owned()], 2));
    assert_eq!(next_group_message(&mut events[2], 12).await, (vec!["u12".to_owned()], 2));
    assert!(matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 2 }));

    // The last member on hub B leaves: hub B gets no more of it.
    clusters[1].leave(&room, &user("u11")).await.expect("leave");
    wait_interest(&hubs, 2).await;
    let hub_b_before = received(hubs[1].admin).await;
    let receipt = send(3).await;
    assert_eq!(next_group_message(&mut events[0], 10).await, (vec!["v10".to_owned()], 3));
    assert_eq!(next_group_message(&mut events[2], 12).await, (vec!["u12".to_owned()], 3));
    assert!(matches!(receipt.outcome(PATIENCE).await, Outcome::Reached { servers: 1 }));
    assert_eq!(received(hubs[1].admin).await, hub_b_before, "hub B, left, received nothing");
    // Nothing twice: no server has another event.
    for (index, events) in events.iter_mut().enumerate() {
        let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
        assert!(extra.is_err(), "server {}: unexpected {extra:?}", 10 + index);
    }
    for cluster in clusters {
        cluster.close().await;
    }
}

/// The client address server `id` advertised, as the hub at `admin` lists it.
async fn client_addr(admin: SocketAddr, id: u64) -> String {
    let path = "/api/servers";
    wait_json(admin, path, "listed the server", |json| {
        json.as_array().is_some_and(|list| list.iter().any(|server| server["id"] == id))
    })
    .await;
    let servers = http::request(admin, "GET", path, &[], None).await.json();
    let servers = servers.as_array().expect("a list");
    let server = servers.iter().find(|server| server["id"] == id).expect("listed");
    server["client_addr"].as_str().expect("an address").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_on_any_hub_weighs_the_servers_of_every_hub() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    // Server 10 on hub A with three users, server 11 on hub B with none; hub C has no server.
    let (clusters, _events) = server_on_each(&hubs[..2]).await;
    for name in ["alice", "ann", "amy"] {
        clusters[0].login(user(name)).await.expect("login");
    }
    let addr_11 = client_addr(hubs[1].admin, 11).await;
    // Under `min-users`, every hub sends a new client to server 11, its own or not.
    for hub in &hubs {
        wait_json(hub.admin, "/api/assign", "assigned server 11", |json| json["server"] == 11)
            .await;
        let answer = http::request(hub.admin, "GET", "/api/assign", &[], None).await.json();
        assert_eq!(answer["client_addr"], addr_11.as_str(), "{answer}");
    }
    // Server 11 fills up past server 10: hub B's own assignment moves to hub A's server.
    for name in ["bob", "ben", "bea", "bud"] {
        clusters[1].login(user(name)).await.expect("login");
    }
    wait_json(hubs[1].admin, "/api/assign", "assigned server 10", |json| json["server"] == 10)
        .await;
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_sends_a_key_to_the_same_server_from_every_hub() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("acms.toml");
    std::fs::write(&config, "[assign]\npolicy = \"affinity\"\n").expect("config written");
    let nats = NatsCluster::start().await;
    let config = config.display().to_string();
    let hubs = start_hubs_with(&nats, &["--config", config.as_str()]).await;
    let (clusters, _events) = server_on_each(&hubs[..2]).await;
    // A hub that has heard of no server yet has none to assign (503).
    let assigned = async |admin: SocketAddr, key: &str| {
        let reply = http::request(admin, "GET", &format!("/api/assign?key={key}"), &[], None).await;
        assert!(matches!(reply.status, 200 | 503), "{}", reply.body);
        reply.json()["server"].as_u64()
    };
    // Once every hub counts both servers, each key maps to one server whichever hub is asked.
    let keys: Vec<String> = (0..40).map(|key| format!("team-{key}")).collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut answers = Vec::new();
        for hub in &hubs {
            let mut servers = Vec::new();
            for key in &keys {
                servers.push(assigned(hub.admin, key).await);
            }
            answers.push(servers);
        }
        let agreed = answers.iter().all(|servers| *servers == answers[0]);
        let both = [10, 11].iter().all(|&id| answers[0].contains(&Some(id)));
        if agreed && both {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hubs never agreed on both servers: A {:?}, B {:?}, C {:?}",
            answers[0],
            answers[1],
            answers[2]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_another_hub_drains_through_any_hub() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    let (clusters, mut events) = server_on_each(&hubs[..2]).await;
    clusters[0].login(user("alice")).await.expect("login");
    clusters[1].login(user("bob")).await.expect("login");
    let addr_10 = client_addr(hubs[0].admin, 10).await;
    client_addr(hubs[0].admin, 11).await;
    // Hub A drains server 11 of hub B: its hub tells it, and sends its clients to server 10.
    let reply = post(hubs[0].admin, "/api/servers/11/drain", "{}").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(answer["server"], 11, "{answer}");
    assert_eq!(answer["state"], "draining", "{answer}");
    assert_eq!(answer["target"], addr_10.as_str(), "{answer}");
    match next(&mut events[1], 11).await {
        Event::Drain { target } => assert_eq!(target.as_deref(), Some(addr_10.as_str())),
        other => panic!("expected the drain on server 11, got {other:?}"),
    }
    // No hub assigns it a client any more, though it has fewer users than server 10 once bob
    // leaves; and every hub lists it drained.
    clusters[1].logout(&user("bob")).await.expect("logout");
    for hub in &hubs {
        wait_json(hub.admin, "/api/servers", "listed server 11 drained", |json| {
            json.as_array()
                .is_some_and(|list| list.iter().any(|s| s["id"] == 11 && s["state"] == "drained"))
        })
        .await;
        let answer = http::request(hub.admin, "GET", "/api/assign", &[], None).await.json();
        assert_eq!(answer["server"], 10, "{answer}");
    }
    // A server no hub has is still unknown.
    post(hubs[0].admin, "/api/servers/99/drain", "{}").await.error(404);
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_of_any_hub_count_the_whole_cluster() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    // Server 10 on hub A with two users, server 11 on hub B with one; hub C has none.
    let (clusters, _events) = server_on_each(&hubs[..2]).await;
    for name in ["alice", "ann"] {
        clusters[0].login(user(name)).await.expect("login");
    }
    clusters[1].login(user("bob")).await.expect("login");
    let hub_c = hubs[2].admin;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while (metric(hub_c, "acms_cluster_servers").await, metric(hub_c, "acms_cluster_users").await)
        != (Some(2), Some(3))
    {
        let metrics = http::request(hub_c, "GET", "/metrics", &[], None).await.body;
        assert!(tokio::time::Instant::now() < deadline, "hub C never counted it all: {metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Per hub, by id; hub C's own figures stay its own.
    for (index, (servers, users)) in [(1, 2), (1, 1), (0, 0)].into_iter().enumerate() {
        let summary = http::request(hubs[index].admin, "GET", "/api/summary", &[], None).await;
        let id = summary.json()["backplane"]["hub"].as_str().expect("a hub id").to_owned();
        let label = format!("{{hub=\"{id}\"}}");
        let named = |name: &str| format!("acms_backplane_hub_{name}{label}");
        assert_eq!(metric(hub_c, &named("servers")).await, Some(servers), "hub {index}");
        assert_eq!(metric(hub_c, &named("users")).await, Some(users), "hub {index}");
    }
    assert_eq!(metric(hub_c, "acms_servers").await, Some(0), "hub-local: none connected to C");
    assert_eq!(metric(hub_c, "acms_users_online").await, Some(0), "hub-local");
    for cluster in clusters {
        cluster.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_servers_show_their_load_and_a_full_one_gets_no_client() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs(&nats).await;
    // Server 10 on hub A with two users; server 11 on hub B with one, and room for one only.
    let (clusters, _events) = server_on_each(&hubs[..1]).await;
    let (full, _full_events) = Cluster::builder(ServerId(11), hubs[1].transfer.to_string())
        .client_addr(format!("127.0.0.1:{}", free_port()))
        .capacity(1)
        .load_interval(Duration::from_millis(100))
        .start();
    wait_link(&full, LinkState::Connected).await;
    for name in ["alice", "ann"] {
        clusters[0].login(user(name)).await.expect("login");
    }
    full.login(user("bob")).await.expect("login");
    // Hub C's list (the dashboard's cards) shows server 11's load as hub B last reported it.
    let reported = |json: &serde_json::Value| {
        json.as_array().is_some_and(|list| {
            list.iter().any(|s| {
                s["id"] == 11
                    && s["users"] == 1
                    && s["capacity"] == 1
                    && s["cpu_percent"].is_number()
                    && s["memory_bytes"].as_u64().is_some_and(|bytes| bytes > 0)
                    && s["connected_since"].as_f64().is_some_and(|since| since > 0.0)
            })
        })
    };
    wait_json(hubs[2].admin, "/api/servers", "showed server 11's load", reported).await;
    // Full: no hub sends it a client, though it has fewer users than server 10.
    for hub in &hubs {
        let answer = http::request(hub.admin, "GET", "/api/assign", &[], None).await.json();
        assert_eq!(answer["server"], 10, "{answer}");
    }
    full.close().await;
    for cluster in clusters {
        cluster.close().await;
    }
}

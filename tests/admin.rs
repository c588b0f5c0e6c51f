//! The admin HTTP API over a real socket, with a hub and two app servers: every route, the bearer
//! token, bad input answered with JSON 4xx, pagination, pushes reaching users on any server,
//! kicks, load reports and assignment, /metrics, and the OpenAPI document kept true to the router.

use std::time::Duration;

use acms::AssignPolicy;
use acms::admin::ROUTES;
use acms_appserver::{Event, GroupId, LinkState};
use acms_tests::http::{Reply, TOKEN, TestAdmin, request};
use acms_tests::{PATIENCE, TestHub, TestServer, builder, eventually, user};
use bytes::Bytes;

/// A hub with its admin API, server 1 (alice) and server 2 (bob, carol).
async fn cluster() -> (TestHub, TestAdmin, TestServer, TestServer) {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let one = TestServer::start(1, hub.addr).await;
    let two = TestServer::start(2, hub.addr).await;
    one.login(&["alice"]).await;
    two.login(&["bob", "carol"]).await;
    hub.wait_for(2, 3).await;
    (hub, admin, one, two)
}

/// Pushes `text` to `to` and asserts it was delivered.
async fn push(admin: &TestAdmin, to: &str, text: &str) {
    let body = format!(r#"{{"from": "ops", "payload": "{text}"}}"#);
    let answer = admin.post(&format!("/api/users/{to}/messages"), &body).await;
    assert_eq!(answer.json()["status"], "delivered", "{}", answer.body);
}

/// Asserts that the next message `server` has is `text`: nothing came before it.
async fn next_is(server: &mut TestServer, text: &str) {
    match next_message(server).await {
        Event::Message { payload, .. } => assert_eq!(payload, Bytes::from(text.to_owned())),
        other => panic!("expected {text:?}, got {other:?}"),
    }
}

/// The next event that is not a presence or other bookkeeping event.
async fn next_message(server: &mut TestServer) -> Event {
    loop {
        match server.next_event().await {
            Event::Presence { .. } => continue,
            event => return event,
        }
    }
}

#[tokio::test]
async fn read_routes_list_servers_and_users_and_page_through_them() {
    let (_hub, admin, _one, _two) = cluster().await;

    let servers = admin.get("/api/servers").await;
    assert_eq!(servers.status, 200, "{}", servers.body);
    let servers = servers.json();
    let servers = servers.as_array().expect("an array");
    assert_eq!(servers.len(), 2);
    assert_eq!((servers[0]["id"].as_u64(), servers[0]["users"].as_u64()), (Some(1), Some(1)));
    assert_eq!((servers[1]["id"].as_u64(), servers[1]["users"].as_u64()), (Some(2), Some(2)));
    assert_eq!(servers[1]["client_addr"], "127.0.0.1:6002");
    assert_eq!(servers[1]["state"], "active");
    assert!(servers[1]["connected_since"].as_f64().unwrap() > 1.0e9);

    let bob = admin.get("/api/users/bob").await.json();
    assert_eq!((bob["online"].as_bool(), bob["server"].as_u64()), (Some(true), Some(2)));
    assert_eq!(bob["servers"], serde_json::json!([2]));
    let nobody = admin.get("/api/users/nobody").await.json();
    assert_eq!((nobody["online"].as_bool(), nobody["server"].is_null()), (Some(false), true));

    let first = admin.get("/api/users?limit=2").await.json();
    assert_eq!(
        first["users"],
        serde_json::json!([{"id": "alice", "server": 1}, {"id": "bob", "server": 2}])
    );
    assert_eq!(first["next"], "bob");
    let second = admin.get("/api/users?limit=2&after=bob").await.json();
    assert_eq!(second["users"], serde_json::json!([{"id": "carol", "server": 2}]));
    assert!(second["next"].is_null());
    let on_two = admin.get("/api/users?server=2").await.json();
    assert_eq!(on_two["users"].as_array().unwrap().len(), 2);
    assert!(on_two["next"].is_null());

    // Bad input: a JSON error with a 4xx status.
    let long = "x".repeat(300);
    admin.get(&format!("/api/users/{long}")).await.error(400);
    admin.get("/api/users?limit=0").await.error(400);
    admin.get("/api/users?limit=1001").await.error(400);
    admin.get("/api/users?limit=many").await.error(400);
    admin.get("/api/users?server=-1").await.error(400);
    admin.get("/api/nothing/here").await.error(404);
}

#[tokio::test]
async fn writes_need_the_token() {
    let (_hub, admin, _one, mut two) = cluster().await;
    let body = r#"{"from": "ops", "payload": "hi"}"#;
    let json = ("Content-Type", "application/json");
    for path in ["/api/users/bob/messages", "/api/groups/room/messages", "/api/broadcast"] {
        let none = request(admin.addr, "POST", path, &[json], Some(body)).await;
        assert!(none.error(401).contains("Bearer"));
        assert_eq!(none.header("www-authenticate"), Some("Bearer"));
        let wrong = [("Authorization", "Bearer not-the-token-at-all"), json];
        request(admin.addr, "POST", path, &wrong, Some(body)).await.error(401);
        let basic = [("Authorization", "Basic b3BzOm9wcw=="), json];
        request(admin.addr, "POST", path, &basic, Some(body)).await.error(401);
    }
    let kick = request(admin.addr, "POST", "/api/users/bob/kick", &[json], Some("{}")).await;
    kick.error(401);
    // Nothing reached anybody, and bob is still online.
    let bob = admin.get("/api/users/bob").await.json();
    assert_eq!(bob["online"], true);
    push(&admin, "bob", "with the token").await;
    next_is(&mut two, "with the token").await;
}

#[tokio::test]
async fn a_push_reaches_a_user_on_another_server_and_offline_users_are_said_so() {
    let (hub, admin, _one, mut two) = cluster().await;

    let answer =
        admin.post("/api/users/bob/messages", r#"{"from": "ops", "payload": "hello bob"}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({"status": "delivered", "servers": [2]}));
    match next_message(&mut two).await {
        Event::Message { from, to, payload } => {
            assert_eq!((from, to), (user("ops"), user("bob")));
            assert_eq!(payload, Bytes::from_static(b"hello bob"));
        }
        other => panic!("expected bob's message, got {other:?}"),
    }

    // Binary, as base64.
    let answer = admin
        .post("/api/users/carol/messages", r#"{"from": "ops", "payload_base64": "AAH/"}"#)
        .await;
    assert_eq!(answer.json()["status"], "delivered");
    match next_message(&mut two).await {
        Event::Message { to, payload, .. } => {
            assert_eq!((to, payload), (user("carol"), Bytes::from_static(&[0, 1, 255])));
        }
        other => panic!("expected carol's message, got {other:?}"),
    }

    let offline =
        admin.post("/api/users/dave/messages", r#"{"from": "ops", "payload": "x"}"#).await;
    assert_eq!(offline.status, 200);
    assert_eq!(offline.json(), serde_json::json!({"status": "offline", "servers": []}));
    assert_eq!(hub.hub.pushes_waiting(), 0);

    // Bad ids and bodies.
    let path = "/api/users/bob/messages";
    admin.post(path, "not json").await.error(400);
    admin.post(path, r#"{"payload": "no sender"}"#).await.error(400);
    admin.post(path, r#"{"from": "ops"}"#).await.error(400);
    admin
        .post(path, r#"{"from": "ops", "payload": "a", "payload_base64": "YQ=="}"#)
        .await
        .error(400);
    admin.post(path, r#"{"from": "ops", "payload_base64": "***"}"#).await.error(400);
    admin.post(path, r#"{"from": "", "payload": "empty sender"}"#).await.error(400);
    admin.post(path, r#"{"from": "ops", "payload": "x", "extra": 1}"#).await.error(400);
    let long = "x".repeat(300);
    admin
        .post(&format!("/api/users/{long}/messages"), r#"{"from": "ops", "payload": "x"}"#)
        .await
        .error(400);
    let big = format!(r#"{{"from": "ops", "payload": "{}"}}"#, "x".repeat(1 << 20));
    admin.post(path, &big).await.error(413);
    let auth = format!("Bearer {TOKEN}");
    let no_type = [("Authorization", auth.as_str())];
    request(admin.addr, "POST", path, &no_type, Some(r#"{"from": "ops", "payload": "x"}"#))
        .await
        .error(415);
    push(&admin, "bob", "after the bad ones").await;
    next_is(&mut two, "after the bad ones").await;
}

#[tokio::test]
async fn group_and_broadcast_pushes_reach_every_server_once() {
    let (hub, admin, mut one, mut two) = cluster().await;
    let room = GroupId::new("room").unwrap();
    one.cluster.join(&room, &user("alice")).await.unwrap();
    two.cluster.join(&room, &user("carol")).await.unwrap();
    eventually("both servers in the group", || {
        hub.hub.groups().servers_of("room", acms_protocol::ServerId::HUB).len() == 2
    })
    .await;

    let answer = admin
        .post("/api/groups/room/messages", r#"{"from": "ops", "payload": "to the room"}"#)
        .await;
    assert_eq!(answer.json(), serde_json::json!({"status": "delivered", "servers": [1, 2]}));
    for (server, member) in [(&mut one, "alice"), (&mut two, "carol")] {
        match next_message(server).await {
            Event::GroupMessage { group, from, to, payload } => {
                assert_eq!((group, from, to), (room.clone(), user("ops"), vec![user(member)]));
                assert_eq!(payload, Bytes::from_static(b"to the room"));
            }
            other => panic!("expected the group message, got {other:?}"),
        }
    }
    let empty =
        admin.post("/api/groups/nobody-here/messages", r#"{"from": "ops", "payload": "x"}"#).await;
    assert_eq!(empty.json(), serde_json::json!({"status": "delivered", "servers": []}));
    admin
        .post(
            &format!("/api/groups/{}/messages", "g".repeat(256)),
            r#"{"from": "o", "payload": "x"}"#,
        )
        .await
        .error(400);

    let answer = admin.post("/api/broadcast", r#"{"from": "ops", "payload": "everyone"}"#).await;
    let mut servers = answer.json()["servers"].as_array().unwrap().clone();
    servers.sort_by_key(|id| id.as_u64());
    assert_eq!(servers, [1, 2]);
    for (server, mut users) in [(&mut one, vec!["alice"]), (&mut two, vec!["bob", "carol"])] {
        match next_message(server).await {
            Event::Broadcast { from, mut to, payload } => {
                to.sort();
                users.sort();
                assert_eq!(from, user("ops"));
                assert_eq!(to, users.into_iter().map(user).collect::<Vec<_>>());
                assert_eq!(payload, Bytes::from_static(b"everyone"));
            }
            other => panic!("expected the broadcast, got {other:?}"),
        }
    }
    // Once each: the next messages are the ones pushed after.
    push(&admin, "alice", "after").await;
    push(&admin, "bob", "after").await;
    next_is(&mut one, "after").await;
    next_is(&mut two, "after").await;
}

#[tokio::test]
async fn a_kick_ends_the_session_with_the_reason() {
    let (hub, admin, _one, mut two) = cluster().await;
    let answer = admin.post("/api/users/bob/kick", r#"{"reason": "spamming"}"#).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({"servers": [2]}));
    match next_message(&mut two).await {
        Event::Kicked { user: kicked, reason } => {
            assert_eq!((kicked, reason.as_str()), (user("bob"), "spamming"));
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    hub.wait_for(2, 2).await;
    assert_eq!(admin.get("/api/users/bob").await.json()["online"], false);
    assert!(admin.post("/api/users/bob/kick", "{}").await.error(404).contains("online nowhere"));
    admin.post("/api/users/carol/kick", r#"{"reason": 5}"#).await.error(400);
    admin
        .post("/api/users/carol/kick", &format!(r#"{{"reason": "{}"}}"#, "r".repeat(2000)))
        .await
        .error(400);
    // The default reason.
    admin.post("/api/users/carol/kick", "{}").await;
    match next_message(&mut two).await {
        Event::Kicked { reason, .. } => assert_eq!(reason, "kicked by an administrator"),
        other => panic!("expected a kick, got {other:?}"),
    }
}

#[tokio::test]
async fn pushes_after_a_hub_restart_are_not_taken_for_duplicates() {
    // The receiver keeps the highest number it saw from the hub's origin; a new hub process
    // numbers from 1 again, and its new epoch in `Servers` must reset that.
    let hub = TestHub::start().await;
    let addr = hub.addr;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let mut two = TestServer::start(2, addr).await;
    two.login(&["bob"]).await;
    hub.wait_for(1, 1).await;
    for text in ["one", "two"] {
        let body = format!(r#"{{"from": "ops", "payload": "{text}"}}"#);
        assert_eq!(
            admin.post("/api/users/bob/messages", &body).await.json()["status"],
            "delivered"
        );
        assert!(matches!(next_message(&mut two).await, Event::Message { .. }));
    }
    drop(admin);
    hub.stop().await;

    let hub = TestHub::start_with(Default::default(), addr).await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    hub.wait_for(1, 1).await;
    let answer =
        admin.post("/api/users/bob/messages", r#"{"from": "ops", "payload": "three"}"#).await;
    assert_eq!(answer.json()["status"], "delivered");
    match next_message(&mut two).await {
        Event::Message { payload, .. } => assert_eq!(payload, Bytes::from_static(b"three")),
        other => panic!("expected the push after the restart, got {other:?}"),
    }
}

#[tokio::test]
async fn a_push_nobody_acknowledges_times_out_with_504() {
    // A hand-driven server that registers bob and never acknowledges anything.
    use acms_protocol::{Codec, Control, Hello, PROTOCOL_VERSION, ServerId};
    use futures_util::SinkExt;
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, Duration::from_millis(300)).await;
    let stream = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut peer = tokio_util::codec::Framed::new(stream, Codec::new(1 << 20));
    let hello = Hello {
        version: PROTOCOL_VERSION,
        server_id: ServerId(7),
        client_addr: "127.0.0.1:7".into(),
        epoch: 1,
        nonce: None,
    };
    peer.send(acms_protocol::Frame::Control(Control::Hello(hello))).await.unwrap();
    // Welcome, then Servers, which announces the hub's own epoch.
    acms_tests::next_frame(&mut peer).await;
    let servers = acms_tests::next_frame(&mut peer).await;
    let hub_epoch = acms_protocol::ServerEpoch { id: ServerId::HUB, epoch: hub.hub.push_epoch() };
    assert!(
        matches!(&servers, Some(acms_protocol::Frame::Control(Control::Servers { servers })) if servers.contains(&hub_epoch)),
        "{servers:?}"
    );
    peer.send(acms_protocol::Frame::Control(Control::Login { users: vec![user("bob")] }))
        .await
        .unwrap();
    hub.wait_for(1, 1).await;
    let answer = admin.post("/api/users/bob/messages", r#"{"from": "ops", "payload": "x"}"#).await;
    assert!(answer.error(504).contains("acknowledgement"));
    assert_eq!(hub.hub.pushes_waiting(), 0, "the timed-out push is forgotten");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let (_hub, admin, _one, mut two) = cluster().await;
    admin.post("/api/users/bob/messages", r#"{"from": "ops", "payload": "x"}"#).await;
    next_message(&mut two).await;
    let metrics = admin.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    for line in [
        "acms_servers 2",
        "acms_users_online 3",
        "acms_relayed_frames_total{kind=\"unicast\"}",
        "acms_undeliverable_total 0",
        "acms_slow_consumer_disconnects_total 0",
        "acms_queue_bytes{server=\"1\"}",
        "acms_queue_bytes{server=\"2\"}",
        "acms_relay_latency_seconds_count",
        "acms_relay_latency_seconds_bucket{le=\"0.000001\"}",
    ] {
        assert!(metrics.body.contains(line), "no {line} in:\n{}", metrics.body);
    }
    assert!(metrics.body.trim_end().ends_with("# EOF"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, PATIENCE).await;
    let document = admin.get("/api/openapi.json").await;
    assert_eq!(document.status, 200);
    let document = document.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{}", document["openapi"]);
    let paths = document["paths"].as_object().expect("paths");
    let documented: usize = paths.values().map(|path| path.as_object().unwrap().len()).sum();
    assert_eq!(documented, ROUTES.len(), "every documented operation is a route, and back");
    for (method, path) in ROUTES {
        let operation = &paths[*path][*method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(operation["responses"]["200"].is_object(), "{method} {path} has no 200");
        let secured = operation["security"].is_array();
        assert_eq!(secured, *method == "post", "{method} {path}: a bearer token iff it writes");
        // And the router serves it: an unknown route is "no such route", these are not.
        let concrete = path.replace("{id}", "someone");
        let reply: Reply = request(admin.addr, &method.to_uppercase(), &concrete, &[], None).await;
        assert!(reply.status != 404 || !reply.body.contains("no such route"), "{method} {path}");
    }
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
}

/// A server reporting its load every 50 ms, declaring `capacity` clients.
async fn reporting(id: u32, hub: &TestHub, capacity: u32) -> TestServer {
    let builder = builder(id, hub.addr).load_interval(Duration::from_millis(50)).capacity(capacity);
    TestServer::start_with(builder, LinkState::Connected).await
}

#[tokio::test]
async fn load_reports_fill_the_server_list_and_assignment_skips_full_servers() {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start_with(&hub.hub, PATIENCE, AssignPolicy::MinUsers).await;
    let empty = admin.get("/api/assign").await;
    assert_eq!(empty.status, 503, "{}", empty.body);
    assert!(empty.json()["error"].is_string());

    // Server 1 has the fewest users but is at its capacity of one.
    let one = reporting(1, &hub, 1).await;
    let two = reporting(2, &hub, 100).await;
    one.login(&["alice"]).await;
    two.login(&["bob", "carol"]).await;
    hub.wait_for(2, 3).await;
    eventually("reports counting every user", || {
        let servers = hub.hub.registry().servers();
        let users: Vec<_> = servers.iter().map(|info| info.load.map(|load| load.users)).collect();
        users == [Some(1), Some(2)]
    })
    .await;

    let servers = admin.get("/api/servers").await;
    assert_eq!(servers.status, 200, "{}", servers.body);
    let servers = servers.json();
    for (server, capacity) in servers.as_array().expect("an array").iter().zip([1, 100]) {
        assert!(server["cpu_percent"].as_f64().is_some_and(|cpu| cpu >= 0.0), "{server}");
        assert!(server["memory_bytes"].as_u64().is_some_and(|bytes| bytes > 0), "{server}");
        assert!(server["messages_in_per_second"].is_number(), "{server}");
        assert!(server["messages_out_per_second"].is_number(), "{server}");
        assert_eq!(server["capacity"], capacity, "{server}");
    }

    let answer = admin.get("/api/assign?key=alice").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), serde_json::json!({"server": 2, "client_addr": "127.0.0.1:6002"}));
    let long = admin.get(&format!("/api/assign?key={}", "k".repeat(257))).await;
    assert_eq!(long.status, 400, "{}", long.body);

    // Affinity: a key keeps its server, and there is no affinity without a key.
    let affinity = TestAdmin::start_with(&hub.hub, PATIENCE, AssignPolicy::Affinity).await;
    assert_eq!(affinity.get("/api/assign").await.status, 400);
    one.cluster.logout(&user("alice")).await.unwrap();
    hub.wait_for(2, 2).await;
    let first = affinity.get("/api/assign?key=team-7").await;
    assert_eq!(first.status, 200, "{}", first.body);
    for _ in 0..5 {
        assert_eq!(affinity.get("/api/assign?key=team-7").await.json(), first.json());
    }
}

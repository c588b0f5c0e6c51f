//! The shared directory of the backplane across a restart of the whole NATS cluster, and drift
//! between a hub's registry and the directory, repaired by the hub's reconciliation. Real
//! `acms` processes on a real three-node NATS cluster with JetStream.

use std::time::{Duration, Instant};

use acms_appserver::{Event, Events, GroupId};
use acms_tests::nats::{NatsCluster, metric, server_on_each, start_hubs_with, wait_located};
use acms_tests::process::start_hub_with;
use acms_tests::{PATIENCE, user};
use async_nats::jetstream::{self, kv};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;

/// Waits for the next message on `events`, skipping other events; asserts nothing else of
/// `from` comes within a short while after it (it arrived once).
async fn receive_once(events: &mut Events, from: &str) -> Bytes {
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    let payload = loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no message from {from} within {:?}", PATIENCE * 3))
            .expect("events open");
        if let Event::Message { from: sender, payload, .. } = event
            && sender.as_str() == from
        {
            break payload;
        }
    };
    let quiet = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(event)) = tokio::time::timeout_at(quiet, events.recv()).await {
        if let Event::Message { from: sender, payload: again, .. } = event {
            assert!(sender.as_str() != from, "a second message from {from}: {again:?}");
        }
    }
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_survives_a_restart_of_every_nats_node() {
    let mut nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (servers, mut events) = server_on_each(&hubs).await;
    let (alice, bob) = (user("alice"), user("bob"));
    servers[0].login(alice.clone()).await.expect("login alice");
    servers[1].login(bob.clone()).await.expect("login bob");
    for hub in &hubs {
        wait_located(hub.admin, "alice", 10).await;
        wait_located(hub.admin, "bob", 11).await;
    }

    nats.restart_all().await;

    // A hub that joins now knows only what the directory kept.
    let urls = nats.urls_from(0);
    let (_late, _transfer, late_admin) = start_hub_with(&["--backplane", &urls]).await;
    wait_located(late_admin, "bob", 11).await;
    wait_located(late_admin, "alice", 10).await;
    wait_located(hubs[2].admin, "bob", 11).await;
    servers[0].send_to_user(&alice, &bob, Bytes::from_static(b"after the restart")).await.unwrap();
    assert_eq!(receive_once(&mut events[1], "alice").await, "after the restart");
    servers[1].send_to_user(&bob, &alice, Bytes::from_static(b"and back")).await.unwrap();
    assert_eq!(receive_once(&mut events[0], "bob").await, "and back");
}

/// The bucket of the directory whose name starts with `prefix` (the cluster's name follows).
async fn bucket(js: &jetstream::Context, prefix: &str) -> kv::Store {
    let mut names = js.stream_names();
    while let Some(name) = names.next().await {
        let name = name.expect("stream names");
        if let Some(bucket) = name.strip_prefix("KV_").filter(|b| b.starts_with(prefix)) {
            return js.get_key_value(bucket).await.expect("open bucket");
        }
    }
    panic!("no bucket {prefix}*");
}

/// The keys of `store` now.
async fn keys(store: &kv::Store) -> Vec<String> {
    let mut keys = store.keys().await.expect("keys");
    let mut all = Vec::new();
    while let Some(key) = keys.next().await {
        all.push(key.expect("key"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_or_forged_behind_a_hubs_back_are_repaired() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (servers, _events) = server_on_each(&hubs).await;
    let alice = user("alice");
    servers[0].login(alice.clone()).await.expect("login alice");
    let room = GroupId::new("room").unwrap();
    servers[0].join(&room, &alice).await.expect("join");
    wait_located(hubs[1].admin, "alice", 10).await;

    let client = async_nats::connect(nats.nodes[0].url()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let (users, groups) = (bucket(&js, "acms-users-").await, bucket(&js, "acms-groups-").await);
    let alice_key = URL_SAFE_NO_PAD.encode("alice");
    let ghost_key = URL_SAFE_NO_PAD.encode("ghost");
    let deadline = Instant::now() + PATIENCE;
    let group_key = loop {
        if let Some(key) = keys(&groups).await.pop() {
            break key;
        }
        assert!(Instant::now() < deadline, "hub A never wrote its interest in the room");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let alice_entry = users.get(&alice_key).await.unwrap().expect("alice's entry");

    // Behind the hubs' backs: alice's entry and hub A's interest deleted, and a user nobody
    // logged in placed on hub A's server as alice is.
    users.put(&ghost_key, alice_entry.clone()).await.unwrap();
    users.delete(&alice_key).await.unwrap();
    groups.delete(&group_key).await.unwrap();
    let started = Instant::now();
    loop {
        let alice_back = users.get(&alice_key).await.unwrap() == Some(alice_entry.clone());
        let room_back = groups.get(&group_key).await.unwrap().is_some();
        let ghost_gone = users.get(&ghost_key).await.unwrap().is_none();
        if alice_back && room_back && ghost_gone {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE * 2,
            "not repaired: alice back {alice_back}, room back {room_back}, ghost gone {ghost_gone}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("directory repaired {:?} after the damage", started.elapsed());
    let repairs = metric(hubs[0].admin, "acms_backplane_repairs_total{what=\"group\"}").await;
    assert!(repairs >= Some(1), "the group repair is counted: {repairs:?}");
    let repairs =
        metric(hubs[0].admin, "acms_backplane_repairs_total{what=\"user_offline\"}").await;
    assert!(repairs >= Some(1), "the stale user's removal is counted: {repairs:?}");
}

/// The buckets of the cluster every test hub is in (`acms`, in hexadecimal).
const USERS: &str = "acms-users-61636d73";
const SERVERS: &str = "acms-servers-61636d73";

/// Deletes the stream of `bucket` and creates it again empty, with the same settings: what a
/// NATS cluster restarted with its buckets in memory leaves behind.
async fn empty(js: &jetstream::Context, bucket: &str) {
    let name = format!("KV_{bucket}");
    let config =
        js.get_stream(&name).await.expect("the bucket's stream").cached_info().config.clone();
    assert!(js.delete_stream(&name).await.expect("delete the stream").success);
    js.create_stream(config).await.expect("create the stream again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_emptied_behind_the_hubs_backs_is_written_again() {
    let nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (servers, mut events) = server_on_each(&hubs).await;
    let (alice, bob) = (user("alice"), user("bob"));
    servers[0].login(alice.clone()).await.expect("login alice");
    servers[1].login(bob.clone()).await.expect("login bob");
    wait_located(hubs[0].admin, "bob", 11).await;

    let client = async_nats::connect(nats.nodes[0].url()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    let emptied = Instant::now();
    empty(&js, USERS).await;
    empty(&js, SERVERS).await;

    // A hub that joins now knows only what the directory holds: the other hubs wrote it again.
    let urls = nats.urls_from(1);
    let (_late, _transfer, late_admin) = start_hub_with(&["--backplane", &urls]).await;
    wait_located(late_admin, "alice", 10).await;
    wait_located(late_admin, "bob", 11).await;
    println!("directory written again {:?} after it was emptied", emptied.elapsed());
    wait_located(hubs[2].admin, "bob", 11).await;
    servers[0].send_to_user(&alice, &bob, Bytes::from_static(b"still here")).await.unwrap();
    assert_eq!(receive_once(&mut events[1], "alice").await, "still here");
    for (hub, what) in [(0, "user_online"), (0, "server"), (1, "user_online")] {
        let name = format!("acms_backplane_repairs_total{{what=\"{what}\"}}");
        let repairs = metric(hubs[hub].admin, &name).await;
        assert!(repairs >= Some(1), "hub {hub} counts its {what} repair: {repairs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_an_older_hub_made_in_memory_is_replaced_by_one_on_file() {
    let nats = NatsCluster::start().await;
    let client = async_nats::connect(nats.nodes[0].url()).await.expect("connect to NATS");
    let js = jetstream::new(client);
    // The users bucket as hubs before file storage made it, with an entry of theirs.
    js.create_stream(jetstream::stream::Config {
        name: format!("KV_{USERS}"),
        subjects: vec![format!("$KV.{USERS}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::Memory,
        allow_rollup: true,
        deny_delete: true,
        num_replicas: 3,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("create the old bucket");
    let old = js.get_key_value(USERS).await.expect("the old bucket");
    old.put(URL_SAFE_NO_PAD.encode("ghost"), Bytes::from_static(b"10")).await.unwrap();

    let hubs = start_hubs_with(&nats, &[]).await;
    let storage = js.get_stream(format!("KV_{USERS}")).await.unwrap().cached_info().config.storage;
    assert_eq!(storage, jetstream::stream::StorageType::File);
    let (servers, _events) = server_on_each(&hubs).await;
    servers[0].login(user("alice")).await.expect("login alice");
    wait_located(hubs[1].admin, "alice", 10).await;
    // The old bucket's entries went with it.
    let ghost =
        acms_tests::http::request(hubs[1].admin, "GET", "/api/users/ghost", &[], None).await;
    assert_eq!(ghost.json()["online"], false, "{}", ghost.body);
}

/// Waits until the hub at `admin` says it is connected to NATS (`true`) or not, in its metrics
/// and in its summary.
async fn wait_connected(admin: std::net::SocketAddr, connected: bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    loop {
        let metric = metric(admin, "acms_backplane_connected").await;
        let summary = acms_tests::http::request(admin, "GET", "/api/summary", &[], None).await;
        let said = summary.json()["backplane"]["connected"].as_bool();
        if metric == Some(u64::from(connected)) && said == Some(connected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub {admin} never said connected = {connected}: metric {metric:?}, summary {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every NATS node down: each hub says so (metric and summary, which the dashboard shows), keeps
/// relaying between its own servers, and heals by itself when NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_loses_nats_says_so_keeps_serving_its_servers_and_heals() {
    let mut nats = NatsCluster::start().await;
    let hubs = start_hubs_with(&nats, &[]).await;
    let (servers, mut events) = server_on_each(&hubs).await;
    // A second server on hub A, so a message crosses hub A alone.
    let (local, mut local_events) = acms_appserver::Cluster::builder(
        acms_appserver::ServerId(20),
        hubs[0].transfer.to_string(),
    )
    .client_addr("127.0.0.1:1".to_owned())
    .start();
    acms_tests::wait_link(&local, acms_appserver::LinkState::Connected).await;
    let (alice, bob, dave) = (user("alice"), user("bob"), user("dave"));
    servers[0].login(alice.clone()).await.expect("login alice");
    servers[1].login(bob.clone()).await.expect("login bob");
    local.login(dave.clone()).await.expect("login dave");
    wait_located(hubs[0].admin, "bob", 11).await;
    wait_connected(hubs[0].admin, true).await;

    nats.stop_all().await;
    wait_connected(hubs[0].admin, false).await;
    servers[0]
        .send_to_user(&alice, &dave, Bytes::from_static(b"while NATS is away"))
        .await
        .unwrap();
    assert_eq!(receive_once(&mut local_events, "alice").await, "while NATS is away");

    nats.start_all().await;
    wait_connected(hubs[0].admin, true).await;
    wait_connected(hubs[1].admin, true).await;
    servers[0].send_to_user(&alice, &bob, Bytes::from_static(b"NATS is back")).await.unwrap();
    assert_eq!(receive_once(&mut events[1], "alice").await, "NATS is back");
    local.close().await;
}

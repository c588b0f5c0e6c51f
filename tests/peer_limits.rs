//! Limits on what one authenticated app server may make the hub hold: groups, through real
//! sockets on 127.0.0.1. Past a limit the server gets an error frame and is closed, the hub holds
//! no more than the limit, and everything it held for the server goes when the server does.

use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{ClusterError, LinkState};
use acms_protocol::{Control, ErrorCode, Frame, GroupId, ServerId};
use acms_tests::{PATIENCE, TestHub, TestServer, eventually, next_frame, raw_hello, user};
use futures_util::SinkExt;

/// Groups a hostile server asks for: ten times the hub's default limit.
const JOINS: usize = 1_000_000;
/// Groups per `Join` frame: about 80 KiB of names.
const PER_FRAME: usize = 10_000;

#[tokio::test]
async fn a_million_group_joins_from_one_server_are_refused_past_the_limit() {
    let config = HubConfig { reconnect_grace: Duration::from_millis(100), ..HubConfig::default() };
    let limit = config.max_groups_per_server;
    assert!(limit < JOINS);
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let mut peer = raw_hello(hub.addr, 3).await;
    let welcome = next_frame(&mut peer).await;
    let Some(Frame::Control(Control::Welcome(welcome))) = welcome else {
        panic!("expected Welcome, got {welcome:?}")
    };
    assert_eq!(welcome.max_groups as usize, limit, "the server learns the limit");
    next_frame(&mut peer).await;

    let names: Vec<GroupId> =
        (0..JOINS).map(|n| GroupId::new(&format!("g{n}")).expect("group id")).collect();
    // The hub closes the connection once past the limit: the sends after that may fail.
    for groups in names.chunks(PER_FRAME) {
        let join = Frame::Control(Control::Join { groups: groups.to_vec() });
        if peer.send(join).await.is_err() {
            break;
        }
    }
    let _ = peer.send(Frame::Control(Control::Ping { token: 1 })).await;
    let answer = loop {
        match next_frame(&mut peer).await {
            Some(Frame::Control(Control::Presence { .. })) => continue,
            other => break other,
        }
    };
    let groups = hub.hub.groups().len();
    match answer {
        Some(Frame::Control(Control::Error { code, message })) => {
            assert_eq!(code, ErrorCode::TooManyGroups, "{message}");
            assert!(message.contains(&limit.to_string()), "{message}");
        }
        other => panic!("expected TooManyGroups, got {other:?}; the hub holds {groups} groups"),
    }
    assert_eq!(groups, limit, "the hub holds the groups up to the limit, no more");
    assert_eq!(next_frame(&mut peer).await, None, "and closes the connection");

    // Once its grace is over, the server and every group it had are gone.
    let registry = hub.hub.registry();
    eventually("the server to leave", || registry.servers().is_empty()).await;
    eventually("its groups to go", || hub.hub.groups().is_empty()).await;
    assert_eq!(hub.hub.groups().count_of(ServerId(3)), 0);
    let room = hub.hub.groups().capacity();
    assert!(room < limit / 4, "the hub still has room for {room} groups");
}

/// The library knows the limit from the hub and refuses the join itself; the connection and
/// the groups within the limit carry on.
#[tokio::test]
async fn the_library_refuses_a_join_past_the_hubs_limit() {
    let config = HubConfig { max_groups_per_server: 2, ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let server = TestServer::start(1, hub.addr).await;
    server.login(&["al", "bo"]).await;
    let (al, bo) = (user("al"), user("bo"));
    let group = |name: &str| GroupId::new(name).unwrap();
    server.cluster.join(&group("one"), &al).await.unwrap();
    server.cluster.join(&group("two"), &al).await.unwrap();
    server.cluster.join(&group("two"), &bo).await.expect("a group it has costs nothing more");
    let refused = server.cluster.join(&group("three"), &bo).await;
    assert!(matches!(refused, Err(ClusterError::TooManyGroups { max: 2 })), "{refused:?}");
    assert_eq!(server.cluster.groups_of(&bo), [group("two")]);
    tokio::time::timeout(PATIENCE, server.cluster.flush()).await.unwrap().unwrap();
    assert_eq!(hub.hub.groups().count_of(ServerId(1)), 2);
    assert_eq!(*server.cluster.link_state().borrow(), LinkState::Connected);
    // Room again once a group has no member left.
    server.cluster.leave(&group("one"), &al).await.unwrap();
    server.cluster.join(&group("three"), &bo).await.unwrap();
    tokio::time::timeout(PATIENCE, server.cluster.flush()).await.unwrap().unwrap();
    eventually("the hub to have groups two and three", || {
        let groups = hub.hub.groups();
        groups.servers_of("three", ServerId(9)) == [ServerId(1)] && groups.len() == 2
    })
    .await;
}

/// The watch list is held to the hub's limit on users per server: the library refuses a watch
/// past it as a whole, and the hub, which enforces it too, never sees one.
#[tokio::test]
async fn the_library_refuses_a_watch_past_the_hubs_limit() {
    let config = HubConfig { max_users_per_server: 2, ..HubConfig::default() };
    let hub = TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let server = TestServer::start(1, hub.addr).await;
    server.cluster.watch([user("a"), user("b"), user("a")]).await.unwrap();
    let refused = server.cluster.watch([user("b"), user("c")]).await;
    assert!(matches!(refused, Err(ClusterError::TooManyWatches { max: 2 })), "{refused:?}");
    server.cluster.watch([user("b")]).await.expect("a user watched already costs nothing more");
    server.cluster.unwatch([user("a"), user("z")]).await.unwrap();
    server.cluster.watch([user("c")]).await.expect("room again after an unwatch");
    tokio::time::timeout(PATIENCE, server.cluster.flush()).await.unwrap().unwrap();
    assert_eq!(*server.cluster.link_state().borrow(), LinkState::Connected);
    assert_eq!(hub.hub.stats().protocol_errors, 0);
}

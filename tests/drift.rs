//! Registry drift: an app server's digest of its users against the hub's record of them, through
//! real sockets on 127.0.0.1. The drift is made for real: a raw protocol peer that claims another
//! set than it logged in, and a proxy that loses a `Logout` on its way to the hub.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use acms_appserver::{LinkState, ServerId};
use acms_protocol::{
    Codec, Control, Frame, FrameKind, PROTOCOL_VERSION, UserDigest, UserId, Welcome,
};
use acms_tests::{
    PATIENCE, Peer, TestHub, TestServer, builder, eventually, next_frame, raw_hello, user,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, FramedRead};

fn users(names: &[&str]) -> Vec<UserId> {
    names.iter().map(|name| user(name)).collect()
}

fn control(control: Control) -> Frame {
    Frame::Control(control)
}

/// Registers a raw peer as server `id` and reads the hub's `Welcome` and `Servers`.
async fn register(hub: &TestHub, id: u32) -> Peer {
    let mut peer = raw_hello(hub.addr, id).await;
    let welcome = next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    let servers = next_frame(&mut peer).await;
    assert!(matches!(servers, Some(Frame::Control(Control::Servers { .. }))), "{servers:?}");
    peer
}

/// Sends a `Ping` and expects its `Pong` as the next frame: the hub handled everything before it
/// and sent nothing else (no `Resync`) meanwhile.
async fn expect_quiet(peer: &mut Peer, token: u64) {
    peer.send(control(Control::Ping { token })).await.unwrap();
    assert_eq!(next_frame(peer).await, Some(control(Control::Pong { token })));
}

#[tokio::test]
async fn a_server_claiming_another_set_is_resynced_and_the_directory_repaired() {
    let hub = TestHub::start().await;
    let mut peer = register(&hub, 1).await;
    peer.send(control(Control::Login { users: users(&["a", "b", "c"]) })).await.unwrap();
    peer.send(control(Control::SnapshotDone)).await.unwrap();
    // The right digest changes nothing.
    peer.send(control(Control::Digest(UserDigest::of(&users(&["a", "b", "c"]))))).await.unwrap();
    expect_quiet(&mut peer, 1).await;
    assert_eq!((hub.hub.stats().digests, hub.hub.stats().resyncs), (1, 0));

    // The server now says its users are a, b and d: the hub's record has drifted.
    let claimed = users(&["a", "b", "d"]);
    peer.send(control(Control::Digest(UserDigest::of(&claimed)))).await.unwrap();
    assert_eq!(next_frame(&mut peer).await, Some(control(Control::Resync)));
    assert_eq!(hub.hub.stats().resyncs, 1);
    // Until the snapshot is done, the users of the old record stay where they were, and a
    // digest sent before the server saw the `Resync` is not compared.
    peer.send(control(Control::Digest(UserDigest::of(&users(&["x"]))))).await.unwrap();
    expect_quiet(&mut peer, 2).await;
    for name in ["a", "b", "c"] {
        assert_eq!(hub.hub.registry().locate(name), Some(ServerId(1)), "{name}");
    }
    peer.send(control(Control::Login { users: users(&["a", "b"]) })).await.unwrap();
    peer.send(control(Control::Login { users: users(&["d"]) })).await.unwrap();
    peer.send(control(Control::SnapshotDone)).await.unwrap();
    peer.send(control(Control::Digest(UserDigest::of(&claimed)))).await.unwrap();
    expect_quiet(&mut peer, 3).await;

    let registry = hub.hub.registry();
    assert_eq!(registry.locate("c"), None, "c left with the old record");
    for name in ["a", "b", "d"] {
        assert_eq!(registry.locate(name), Some(ServerId(1)), "{name}");
    }
    assert_eq!(registry.user_count(), 3);
    let stats = hub.hub.stats();
    assert_eq!((stats.digests, stats.resyncs), (3, 1), "{stats:?}");
}

/// Forwards a server's connection to the hub, losing the first `Logout` on its way there: the
/// hub's record keeps a user the server no longer has.
async fn lossy_proxy(hub: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lost = Arc::new(AtomicBool::new(false));
    let flag = lost.clone();
    tokio::spawn(async move {
        while let Ok((server, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(hub).await else { return };
            let (server_read, mut server_write) = server.into_split();
            let (mut hub_read, mut hub_write) = upstream.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut hub_read, &mut server_write).await;
            });
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut frames = FramedRead::new(server_read, Codec::default());
                while let Some(Ok(raw)) = frames.next().await {
                    let logout = raw.kind().ok() == Some(FrameKind::Control)
                        && matches!(raw.decode(), Ok(Frame::Control(Control::Logout { .. })));
                    if logout && !flag.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                    if hub_write.write_all(raw.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lost)
}

#[tokio::test]
async fn a_logout_lost_on_the_way_is_repaired_by_the_next_digest() {
    let hub = TestHub::start().await;
    let (proxy, lost) = lossy_proxy(hub.addr).await;
    let interval = Duration::from_millis(50);
    let server =
        TestServer::start_with(builder(1, proxy).digest_interval(interval), LinkState::Connected)
            .await;
    server.login(&["alice", "bob"]).await;
    server.cluster.logout(&user("bob")).await.unwrap();
    server.cluster.flush().await.unwrap();
    assert!(lost.load(Ordering::SeqCst), "the proxy lost the logout");
    // The next digest shows the hub's record off by one; the resync takes bob out.
    eventually("bob offline after the resync", || hub.hub.registry().locate("bob").is_none()).await;
    assert_eq!(hub.hub.registry().locate("alice"), Some(ServerId(1)));
    assert_eq!(hub.hub.stats().resyncs, 1);
    // From then on the digests agree.
    let checked = hub.hub.stats().digests;
    eventually("more digests", || hub.hub.stats().digests >= checked + 3).await;
    assert_eq!(hub.hub.stats().resyncs, 1);
    assert_eq!(hub.hub.registry().user_count(), 1);
}

/// Servers that did nothing wrong never resync, while users come, go and move between servers: a
/// user who logs in on a second server is listed under that one only, and the first server is
/// told to end its session (policy `replace`); it logs the user out like any logout, so its
/// record and its digest change together and neither digest flaps.
#[tokio::test]
async fn digests_agree_through_churn_and_a_user_who_moves() {
    let hub = TestHub::start().await;
    let interval = Duration::from_millis(10);
    let start = |id| {
        TestServer::start_with(
            builder(id, hub.addr).digest_interval(interval),
            LinkState::Connected,
        )
    };
    let (s0, s1) = (start(0).await, start(1).await);
    for round in 0..50 {
        let name = format!("u{round}");
        s0.login(&[&name]).await;
        if round % 3 == 0 {
            s0.cluster.logout(&user(&name)).await.unwrap();
        }
        s1.login(&[&format!("v{round}")]).await;
    }
    s0.login(&["mover"]).await;
    s1.login(&["mover"]).await;
    assert_eq!(hub.hub.registry().locate("mover"), Some(ServerId(1)));
    eventually("the kick of the older session", || !s0.cluster.is_local("mover")).await;
    assert!(s1.cluster.is_local("mover"));

    let checked = hub.hub.stats().digests;
    eventually("digests from both servers", || hub.hub.stats().digests >= checked + 20).await;
    let stats = hub.hub.stats();
    assert_eq!(stats.resyncs, 0, "{stats:?}");
    assert_eq!(hub.hub.registry().locate("mover"), Some(ServerId(1)), "never moved back");
    // u0, u3, ... u48 logged out: 33 left on s0, 50 on s1, and mover once.
    assert_eq!(hub.hub.registry().user_count(), 33 + 50 + 1);
}

/// The server's side: its digest is the digest of what it sent, and a `Resync` gets the whole
/// user set again. A fake hub on a raw socket plays the hub.
#[tokio::test]
async fn a_server_sends_its_digest_and_answers_resync_with_its_whole_set() {
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let (cluster, _events) = builder(4, addr).digest_interval(Duration::from_millis(20)).start();
    let names: BTreeSet<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
    for name in &names {
        cluster.login(user(name)).await.unwrap();
    }

    let (stream, _) = tokio::time::timeout(PATIENCE, fake.accept()).await.unwrap().unwrap();
    let mut hub = Framed::new(stream, Codec::default());
    assert!(matches!(next_frame(&mut hub).await, Some(Frame::Control(Control::Hello(_)))));
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        max_frame_len: 4096,
        max_users: 10_000,
        max_groups: 10_000,
    };
    hub.send(control(Control::Welcome(welcome))).await.unwrap();

    /// Reads `Login`s up to `SnapshotDone`, and returns the set they named.
    async fn snapshot(hub: &mut Peer) -> BTreeSet<String> {
        let mut got = BTreeSet::new();
        let mut batches = 0;
        loop {
            match next_frame(hub).await {
                Some(Frame::Control(Control::Login { users })) => {
                    batches += 1;
                    got.extend(users.iter().map(|user| user.as_str().to_owned()));
                }
                Some(Frame::Control(Control::SnapshotDone)) => break,
                other => panic!("expected the snapshot, got {other:?}"),
            }
        }
        assert!(batches > 1, "the hub's small frame limit splits the snapshot");
        got
    }

    /// Reads up to the next `Digest`; the logins queued before the connection may come first,
    /// repeating users of the snapshot.
    async fn digest(hub: &mut Peer, names: &BTreeSet<String>) -> UserDigest {
        loop {
            match next_frame(hub).await {
                Some(Frame::Control(Control::Digest(digest))) => return digest,
                Some(Frame::Control(Control::Login { users })) => {
                    assert!(users.iter().all(|user| names.contains(user.as_str())));
                }
                other => panic!("expected a digest, got {other:?}"),
            }
        }
    }

    assert_eq!(snapshot(&mut hub).await, names);
    let expected = UserDigest::of(&names.iter().map(|name| user(name)).collect::<Vec<_>>());
    assert_eq!(digest(&mut hub, &names).await, expected);

    hub.send(control(Control::Resync)).await.unwrap();
    // Digests already on their way may come first.
    let mut again = BTreeSet::new();
    loop {
        match next_frame(&mut hub).await {
            Some(Frame::Control(Control::Digest(digest))) => assert_eq!(digest, expected),
            Some(Frame::Control(Control::Login { users })) => {
                again.extend(users.iter().map(|user| user.as_str().to_owned()));
                break;
            }
            other => panic!("expected the snapshot again, got {other:?}"),
        }
    }
    again.extend(snapshot(&mut hub).await);
    assert_eq!(again, names);
    assert_eq!(digest(&mut hub, &names).await, expected);
    cluster.close().await;
}

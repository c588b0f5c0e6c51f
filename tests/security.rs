//! Authentication, TLS and limits on the transfer port, through real sockets on 127.0.0.1: app
//! servers on the `Cluster` handle, and raw protocol peers that try to get in without the secret.

use std::time::Duration;

use acms::{HubConfig, ServerTls};
use acms_appserver::{ClientTls, ClusterError, Event, LinkState, Secret};
use acms_protocol::{
    Codec, Control, ErrorCode, Frame, Hello, Nonce, PROTOCOL_VERSION, Prover, ServerId, UserId,
};
use acms_tests::pki::TestCa;
use acms_tests::{PATIENCE, Peer, TestHub, TestServer, builder, eventually, next_frame, user};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const SECRET: &str = "the cluster's shared secret";

fn secret(text: &str) -> Secret {
    Secret::new(text).expect("long enough")
}

fn hub_config(secret_text: Option<&str>) -> HubConfig {
    HubConfig { secret: secret_text.map(secret), ..HubConfig::default() }
}

async fn start_hub(config: HubConfig) -> TestHub {
    TestHub::start_with(config, "127.0.0.1:0".parse().unwrap()).await
}

fn message(from: &str, to: &str, text: &'static str) -> Event {
    Event::Message { from: user(from), to: user(to), payload: Bytes::from_static(text.as_bytes()) }
}

// ---------------------------------------------------------------------------------------------
// Raw protocol peers
// ---------------------------------------------------------------------------------------------

async fn raw_peer(hub: &TestHub) -> Peer {
    Framed::new(TcpStream::connect(hub.addr).await.unwrap(), Codec::default())
}

fn hello(id: u32, nonce: Option<Nonce>) -> Frame {
    Frame::Control(Control::Hello(Hello {
        version: PROTOCOL_VERSION,
        server_id: ServerId(id),
        client_addr: "127.0.0.1:7000".into(),
        epoch: 1,
        nonce,
    }))
}

/// Reads the hub's error frame, expects `code`, then expects the connection to close; returns
/// the message.
async fn expect_refusal(peer: &mut Peer, expected: ErrorCode) -> String {
    let message = match next_frame(peer).await {
        Some(Frame::Control(Control::Error { code, message })) => {
            assert_eq!(code, expected, "{message}");
            message
        }
        other => panic!("expected an error frame, got {other:?}"),
    };
    assert_eq!(next_frame(peer).await, None, "connection should close after the error");
    message
}

async fn expect_challenge(peer: &mut Peer) -> acms_protocol::Challenge {
    match next_frame(peer).await {
        Some(Frame::Control(Control::Challenge(challenge))) => challenge,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared secret
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_or_missing_secret_is_refused_while_the_right_one_carries_on() {
    let hub = start_hub(hub_config(Some(SECRET))).await;
    let good = |id| builder(id, hub.addr).secret(secret(SECRET));
    let mut s0 = TestServer::start_with(good(0), LinkState::Connected).await;
    let mut s1 = TestServer::start_with(good(1), LinkState::Connected).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    let refused = LinkState::Refused(ErrorCode::Unauthorized);
    let wrong = builder(2, hub.addr).secret(secret("not the cluster's secret"));
    let wrong = TestServer::start_with(wrong, refused).await;
    let none = TestServer::start_with(builder(3, hub.addr), refused).await;
    // What they queue waits for a connection that never comes.
    for intruder in [&wrong, &none] {
        intruder.cluster.login(user("mallory")).await.unwrap();
        let (from, to) = (user("mallory"), user("alice"));
        intruder.cluster.send_to_user(&from, &to, "psst".into()).await.unwrap();
    }
    // They keep retrying, and keep being refused.
    eventually("repeated refusals", || hub.hub.stats().unauthorized >= 4).await;
    assert_eq!(*wrong.cluster.link_state().borrow(), refused);
    assert_eq!(*none.cluster.link_state().borrow(), refused);

    hub.wait_for(2, 2).await;
    assert_eq!(hub.hub.registry().locate("mallory"), None);
    s1.cluster.send_to_user(&user("bob"), &user("alice"), "only me".into()).await.unwrap();
    // alice's first event is bob's: nothing from the intruders came before it.
    assert_eq!(s0.next_event().await, message("bob", "alice", "only me"));
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "hi bob".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "hi bob"));
}

#[tokio::test]
async fn raw_peers_without_the_secret_get_unauthorized() {
    let hub = start_hub(hub_config(Some(SECRET))).await;

    // No nonce: the AS has no secret.
    let mut peer = raw_peer(&hub).await;
    peer.send(hello(1, None)).await.unwrap();
    let reason = expect_refusal(&mut peer, ErrorCode::Unauthorized).await;
    assert!(reason.contains("ACMS_SECRET"), "{reason}");

    // A proof made with another secret.
    let mut peer = raw_peer(&hub).await;
    let as_nonce = Nonce::random();
    peer.send(hello(1, Some(as_nonce))).await.unwrap();
    let challenge = expect_challenge(&mut peer).await;
    let proof = secret("a guess at the secret").prove(
        Prover::AppServer,
        ServerId(1),
        &as_nonce,
        &challenge.nonce,
    );
    peer.send(Frame::Control(Control::Auth { proof })).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::Unauthorized).await;

    // Anything but the handshake before authentication: a login first, or instead of Auth.
    let login = || Frame::Control(Control::Login { users: vec![user("mallory")] });
    let mut peer = raw_peer(&hub).await;
    peer.send(login()).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::Unauthorized).await;
    let mut peer = raw_peer(&hub).await;
    peer.send(hello(1, Some(Nonce::random()))).await.unwrap();
    expect_challenge(&mut peer).await;
    peer.send(login()).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::Unauthorized).await;

    // A big frame before authentication is refused from its prefix, under the handshake limit.
    let mut peer = raw_peer(&hub).await;
    peer.get_mut().write_all(&5000u32.to_be_bytes()).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::TooLarge).await;

    let stats = hub.hub.stats();
    assert_eq!((stats.unauthorized, stats.refused_connections), (4, 5));
    assert!(hub.hub.registry().servers().is_empty());
    assert_eq!(hub.hub.registry().locate("mallory"), None);
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let hub = start_hub(hub_config(Some(SECRET))).await;
    let key = secret(SECRET);
    let as_nonce = Nonce::random();

    // An honest handshake, recorded by an eavesdropper.
    let mut first = raw_peer(&hub).await;
    first.send(hello(4, Some(as_nonce))).await.unwrap();
    let first_challenge = expect_challenge(&mut first).await;
    let hub_nonce = first_challenge.nonce;
    assert_eq!(
        key.verify(Prover::Hub, ServerId(4), &as_nonce, &hub_nonce, &first_challenge.proof),
        Ok(()),
        "the hub proves the secret over the server's nonce"
    );
    let recorded = key.prove(Prover::AppServer, ServerId(4), &as_nonce, &hub_nonce);
    first.send(Frame::Control(Control::Auth { proof: recorded })).await.unwrap();
    assert!(matches!(next_frame(&mut first).await, Some(Frame::Control(Control::Welcome(_)))));
    drop(first);
    hub.wait_for(0, 0).await;

    // The eavesdropper replays it: same Hello, same proof. The hub's nonce is new, so it fails.
    let mut replay = raw_peer(&hub).await;
    replay.send(hello(4, Some(as_nonce))).await.unwrap();
    let second = expect_challenge(&mut replay).await;
    assert_ne!(second.nonce, hub_nonce, "a fresh nonce for every connection");
    replay.send(Frame::Control(Control::Auth { proof: recorded })).await.unwrap();
    expect_refusal(&mut replay, ErrorCode::Unauthorized).await;
    assert!(hub.hub.registry().servers().is_empty());
}

#[tokio::test]
async fn without_a_secret_on_the_hub_loopback_servers_join_and_a_secret_on_one_side_is_refused() {
    let hub = start_hub(hub_config(None)).await;
    let s0 = TestServer::start(0, hub.addr).await;
    let mut s1 = TestServer::start(1, hub.addr).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "from loopback".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "from loopback"));

    // A server with a secret expects a hub that proves it: both sides say so.
    let with_secret = builder(2, hub.addr).secret(secret(SECRET));
    TestServer::start_with(with_secret, LinkState::Refused(ErrorCode::Unauthorized)).await;
    let mut peer = raw_peer(&hub).await;
    peer.send(hello(3, Some(Nonce::random()))).await.unwrap();
    let reason = expect_refusal(&mut peer, ErrorCode::Unauthorized).await;
    assert!(reason.contains("this hub has none"), "{reason}");
    assert_eq!(hub.hub.registry().servers().len(), 2);
}

/// 1,000 sockets that connect and never authenticate are all closed at the handshake deadline,
/// while two registered servers keep exchanging messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_sockets_are_closed_at_the_deadline_while_servers_carry_on() {
    const IDLE: usize = 1000;
    // Each idle socket costs two descriptors here, one for each end.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    let config = HubConfig {
        handshake_timeout: Duration::from_millis(300),
        max_connections: IDLE + 100,
        ..hub_config(Some(SECRET))
    };
    let hub = start_hub(config).await;
    let good = |id| builder(id, hub.addr).secret(secret(SECRET));
    let s0 = TestServer::start_with(good(0), LinkState::Connected).await;
    let mut s1 = TestServer::start_with(good(1), LinkState::Connected).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(hub.addr).await.expect("connect an idle socket"));
    }
    let closed = tokio::spawn(async move {
        let waits = idle.into_iter().map(|mut socket| async move {
            // The hub's HandshakeTimeout error frame, then the end of the stream.
            let mut received = Vec::new();
            tokio::time::timeout(PATIENCE, socket.read_to_end(&mut received)).await.is_ok()
        });
        futures_util::future::join_all(waits).await.into_iter().filter(|&closed| closed).count()
    });

    // Round trips through the hub while the idle sockets wait for their deadline.
    let mut sent = 0u32;
    while !closed.is_finished() {
        sent += 1;
        s0.cluster
            .send_to_user(&user("alice"), &user("bob"), Bytes::from(sent.to_string()))
            .await
            .unwrap();
        let Event::Message { payload, .. } = s1.next_event().await else { panic!("not a message") };
        assert_eq!(payload, Bytes::from(sent.to_string()));
    }
    assert_eq!(closed.await.unwrap(), IDLE);
    assert!(sent > 1, "no traffic went through while the idle sockets were open");
    let stats = hub.hub.stats();
    assert_eq!(stats.refused_connections, IDLE as u64);
    assert_eq!(stats.relayed_frames, u64::from(sent));
    hub.wait_for(2, 2).await;
}

/// 1,100 connections that open with `PeerStatus` and repeat it every second, as a peer hub's
/// status link once did, are held to the handshake deadline like any unauthenticated connection
/// (here they are refused at once: a status link must open with an authenticated `PeerHello`),
/// though there are more of them than `max_connections`; a new app server registers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_status_floods_are_closed_within_the_handshake_deadline_and_servers_still_register() {
    const FLOOD: usize = 1100;
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    // No secret and no peers: the loopback rule, the case every default hub is in.
    let config = HubConfig { handshake_timeout: Duration::from_millis(500), ..hub_config(None) };
    let hub = start_hub(config).await;
    let ask = Frame::Control(Control::PeerStatus).to_bytes(4096).unwrap();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut socket = TcpStream::connect(hub.addr).await.expect("connect a flooding socket");
        socket.write_all(&ask).await.expect("send PeerStatus");
        let ask = ask.clone();
        // Asks again every second until the hub closes the socket; true once it did.
        flood.push(tokio::spawn(async move {
            let asking = async {
                let mut scratch = vec![0; 4096];
                loop {
                    tokio::select! {
                        read = socket.read(&mut scratch) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {
                            if socket.write_all(&ask).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            };
            // Longer than the server below waits to register: the flood outlasts that wait.
            tokio::time::timeout(2 * PATIENCE, asking).await.is_ok()
        }));
    }
    // A new server gets a slot once the flood's are taken back.
    let server = TestServer::start(1, hub.addr).await;
    server.login(&["alice"]).await;
    let mut closed = 0;
    for socket in flood {
        closed += usize::from(socket.await.unwrap());
    }
    assert_eq!(closed, FLOOD, "every PeerStatus-only connection is closed");
    assert!(hub.hub.stats().refused_connections >= FLOOD as u64);
    hub.wait_for(1, 1).await;
}

/// A peer hub's status link authenticates like an app server: a hub with the cluster's secret
/// watches another (and finds it active), a hub with another secret is refused and counts the
/// peer unreachable, and links past `max_peer_links` are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_hubs_prove_the_secret_and_count_against_their_own_limit() {
    let config = HubConfig { max_peer_links: 1, ..hub_config(Some(SECRET)) };
    let active = start_hub(config).await;
    let peers = vec![active.addr.to_string()];
    let watcher = start_hub(HubConfig { peers: peers.clone(), ..hub_config(Some(SECRET)) }).await;
    let standby = watcher.hub.standby();
    eventually("the watcher to find the active hub", || {
        standby.active_hub() == Some(active.addr.to_string())
    })
    .await;
    assert!(!standby.is_active());

    // Another secret: refused by the hub it watches, which it therefore counts unreachable.
    let stranger =
        start_hub(HubConfig { peers, ..hub_config(Some("another cluster's secret")) }).await;
    eventually("the stranger to give up on the peer", || stranger.hub.standby().is_active()).await;
    assert_eq!(
        stranger.hub.standby().peers(),
        [(active.addr.to_string(), acms::standby::Seen::Unreachable)]
    );
    eventually("the refusals counted", || active.hub.stats().unauthorized >= 1).await;
    assert_eq!(standby.active_hub(), Some(active.addr.to_string()), "the right one still watches");

    // A loopback hub with no secret, one peer link allowed: the second is refused.
    let open = start_hub(HubConfig { max_peer_links: 1, ..hub_config(None) }).await;
    let peer_hello = Frame::Control(Control::PeerHello(acms_protocol::PeerHello {
        version: PROTOCOL_VERSION,
        nonce: None,
    }));
    let mut first = raw_peer(&open).await;
    first.send(peer_hello.clone()).await.unwrap();
    let answer = next_frame(&mut first).await;
    assert!(matches!(answer, Some(Frame::Control(Control::HubStatus(_)))), "{answer:?}");
    let mut second = raw_peer(&open).await;
    second.send(peer_hello).await.unwrap();
    let reason = expect_refusal(&mut second, ErrorCode::Unavailable).await;
    assert!(reason.contains("max_peer_links"), "{reason}");
    // A status request on the first link is still answered.
    first.send(Frame::Control(Control::PeerStatus)).await.unwrap();
    let answer = next_frame(&mut first).await;
    assert!(matches!(answer, Some(Frame::Control(Control::HubStatus(_)))), "{answer:?}");
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A CA, a hub certificate for `localhost` signed by it, and a client certificate signed by it,
/// all in PEM.
struct Pki {
    ca: String,
    hub_cert: String,
    hub_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Self {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = TestCa::new();
        let (hub_cert, hub_key) = ca.leaf(&["localhost", "127.0.0.1"], ServerAuth);
        let (client_cert, client_key) = ca.leaf(&["app-server"], ClientAuth);
        Self { ca: ca.pem(), hub_cert, hub_key, client_cert, client_key }
    }

    fn hub(&self, client_ca: bool) -> ServerTls {
        let client_ca = client_ca.then_some(self.ca.as_bytes());
        ServerTls::from_pem(self.hub_cert.as_bytes(), self.hub_key.as_bytes(), client_ca).unwrap()
    }

    fn server(&self, client_cert: bool) -> ClientTls {
        let client =
            client_cert.then_some((self.client_cert.as_bytes(), self.client_key.as_bytes()));
        ClientTls::from_pem(self.ca.as_bytes(), "localhost", client).unwrap()
    }
}

#[tokio::test]
async fn servers_exchange_messages_over_tls_with_a_secret() {
    let pki = Pki::new();
    let hub = TestHub::start_tls(hub_config(Some(SECRET)), pki.hub(false)).await;
    let tls = |id| builder(id, hub.addr).secret(secret(SECRET)).tls(pki.server(false));
    let mut s0 = TestServer::start_with(tls(0), LinkState::Connected).await;
    let mut s1 = TestServer::start_with(tls(1), LinkState::Connected).await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    s0.cluster.send_to_user(&user("alice"), &user("bob"), "sealed".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "sealed"));
    // A burst larger than the TLS buffers: nothing may stay behind in an unflushed record.
    const COUNT: u32 = 2000;
    let payload = Bytes::from(vec![b'x'; 1000]);
    for _ in 0..COUNT {
        s1.cluster.send_to_user(&user("bob"), &user("alice"), payload.clone()).await.unwrap();
    }
    for _ in 0..COUNT {
        let Event::Message { payload: got, .. } = s0.next_event().await else { panic!() };
        assert_eq!(got, payload);
    }
    s1.cluster.send_to_user(&user("bob"), &user("alice"), "last".into()).await.unwrap();
    assert_eq!(s0.next_event().await, message("bob", "alice", "last"));
    assert_eq!(hub.hub.stats().relayed_frames, u64::from(COUNT) + 2);
}

#[tokio::test]
async fn with_a_client_ca_only_servers_with_a_signed_certificate_get_in() {
    let pki = Pki::new();
    // No secret: the verified client certificate is what lets a server in.
    let hub = TestHub::start_tls(hub_config(None), pki.hub(true)).await;
    let mut s0 =
        TestServer::start_with(builder(0, hub.addr).tls(pki.server(true)), LinkState::Connected)
            .await;
    let mut s1 =
        TestServer::start_with(builder(1, hub.addr).tls(pki.server(true)), LinkState::Connected)
            .await;
    s0.login(&["alice"]).await;
    s1.login(&["bob"]).await;

    let refused = LinkState::Refused(ErrorCode::Unauthorized);
    let anonymous =
        TestServer::start_with(builder(2, hub.addr).tls(pki.server(false)), refused).await;
    anonymous.cluster.login(user("mallory")).await.unwrap();
    eventually("the refusal counted", || hub.hub.stats().unauthorized >= 1).await;

    hub.wait_for(2, 2).await;
    s0.cluster.send_to_user(&user("alice"), &user("bob"), "signed".into()).await.unwrap();
    assert_eq!(s1.next_event().await, message("alice", "bob", "signed"));
    s1.cluster.send_to_user(&user("bob"), &user("alice"), "and sealed".into()).await.unwrap();
    assert_eq!(s0.next_event().await, message("bob", "alice", "and sealed"));
}

#[tokio::test]
async fn plain_and_tls_peers_on_the_wrong_port_are_refused_clearly() {
    let pki = Pki::new();
    let refused = LinkState::Refused(ErrorCode::Unauthorized);

    // A plain server against a TLS hub is told so in plain frames, at once.
    let tls_hub = TestHub::start_tls(hub_config(None), pki.hub(false)).await;
    let mut peer = raw_peer(&tls_hub).await;
    peer.send(hello(1, None)).await.unwrap();
    let reason = expect_refusal(&mut peer, ErrorCode::Unauthorized).await;
    assert!(reason.contains("requires TLS"), "{reason}");
    TestServer::start_with(builder(2, tls_hub.addr), refused).await;

    // A TLS server against a plain hub: the hub spots the TLS record, the server's TLS fails.
    let plain_hub = start_hub(hub_config(None)).await;
    TestServer::start_with(builder(3, plain_hub.addr).tls(pki.server(false)), refused).await;
    eventually("the hub counted it", || plain_hub.hub.stats().unauthorized >= 1).await;
    assert!(plain_hub.hub.registry().servers().is_empty());
    assert!(tls_hub.hub.registry().servers().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_login_past_max_users_per_server_is_refused() {
    let config = HubConfig { max_users_per_server: 3, ..HubConfig::default() };
    let hub = start_hub(config).await;
    let s0 = TestServer::start(0, hub.addr).await;
    s0.login(&["a", "b", "c"]).await;
    // The library knows the limit from Welcome and refuses the fourth itself.
    let err = s0.cluster.login(user("d")).await.unwrap_err();
    assert!(matches!(err, ClusterError::TooManyUsers { max: 3 }), "{err}");
    s0.cluster.login(user("a")).await.expect("a user already online is no new login");
    assert_eq!(s0.cluster.local_users(), 3);

    // A server that sends it anyway is closed.
    let mut peer = raw_peer(&hub).await;
    peer.send(hello(1, None)).await.unwrap();
    let Some(Frame::Control(Control::Welcome(welcome))) = next_frame(&mut peer).await else {
        panic!("expected Welcome")
    };
    assert_eq!(welcome.max_users, 3);
    let servers = next_frame(&mut peer).await;
    assert!(matches!(servers, Some(Frame::Control(Control::Servers { .. }))), "{servers:?}");
    let users: Vec<UserId> = ["w", "x", "y", "z"].into_iter().map(user).collect();
    peer.send(Frame::Control(Control::Login { users })).await.unwrap();
    expect_refusal(&mut peer, ErrorCode::TooManyUsers).await;
    assert_eq!(hub.hub.stats().too_many_users, 1);
    hub.wait_for(1, 3).await;
}

#[tokio::test]
async fn connections_past_max_connections_are_refused_at_accept() {
    let config = HubConfig { max_connections: 2, ..HubConfig::default() };
    let hub = start_hub(config).await;
    let _first = raw_peer(&hub).await;
    let _second = raw_peer(&hub).await;
    let mut third = raw_peer(&hub).await;
    expect_refusal(&mut third, ErrorCode::Unavailable).await;
    assert_eq!(hub.hub.stats().refused_connections, 1);
}

/// The limit holds in the other direction too: a hub frame over the server's limit breaks only
/// that link, which reconnects.
#[tokio::test]
async fn a_frame_over_the_servers_limit_from_the_hub_drops_the_link_which_reconnects() {
    use acms_protocol::Welcome;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap();
    let (cluster, _events) = builder(5, addr).max_frame_len(1024).start();

    let accept = || async {
        let (stream, _) =
            tokio::time::timeout(PATIENCE, fake.accept()).await.expect("a connection").unwrap();
        let mut peer = Framed::new(stream, Codec::default());
        assert!(matches!(next_frame(&mut peer).await, Some(Frame::Control(Control::Hello(_)))));
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            max_frame_len: 1 << 20,
            max_users: 10,
            max_groups: 10,
        };
        peer.send(Frame::Control(Control::Welcome(welcome))).await.unwrap();
        // The server's snapshot: no users, then its end.
        let done = next_frame(&mut peer).await;
        assert_eq!(done, Some(Frame::Control(Control::SnapshotDone)));
        peer
    };
    let mut first = accept().await;
    acms_tests::wait_link(&cluster, LinkState::Connected).await;
    first.get_mut().write_all(&4096u32.to_be_bytes()).await.unwrap();
    // The server drops that connection and comes back.
    let mut second = accept().await;
    assert_eq!(next_frame(&mut first).await, None);
    acms_tests::wait_link(&cluster, LinkState::Connected).await;
    second.send(Frame::Control(Control::Ping { token: 9 })).await.unwrap();
    assert_eq!(next_frame(&mut second).await, Some(Frame::Control(Control::Pong { token: 9 })));
}

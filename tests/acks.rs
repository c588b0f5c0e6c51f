//! Acks whose runs claim far more than was ever sent, from an authenticated but hostile app
//! server: they cost what they cover of what is outstanding, never their claimed length. Both
//! the hub and the app server are real processes (`cargo build --workspace --bins --examples`
//! first), so that a receiver stuck in a loop cannot stall the test's own clock. A run no sender
//! could have sent is refused by the hub, which needs no process of its own to show it.

use std::net::SocketAddr;
use std::time::Duration;

use acms_appserver::LinkState;
use acms_protocol::{Ack, Control, Data, DataKind, ErrorCode, Frame, SeqRange, ServerId};
use acms_tests::http::{Reply, request};
use acms_tests::process::{ADMIN_TOKEN, Proc, program, start_hub};
use acms_tests::{PATIENCE, Peer, TestHub, TestServer, next_frame, raw_hello, user};
use futures_util::SinkExt;

/// How soon a receiver must answer after the hostile ack: generous for a debug build on a busy
/// machine, and far below the tens of seconds a walk over the claimed runs takes.
const RESPONSIVE: Duration = Duration::from_secs(1);

/// Runs of 2^32 - 1 numbers each, one after the other: one ack claims 64 of them.
fn hostile_runs(first: u64) -> Vec<SeqRange> {
    (0..64)
        .map(|run| SeqRange { first: first + run * u64::from(u32::MAX), count: u32::MAX })
        .collect()
}

/// Registers a raw peer as server `id` at `hub`, reading the hub's `Welcome` and `Servers`.
async fn register(hub: SocketAddr, id: u32) -> Peer {
    let mut peer = raw_hello(hub, id).await;
    let welcome = next_frame(&mut peer).await;
    assert!(matches!(welcome, Some(Frame::Control(Control::Welcome(_)))), "{welcome:?}");
    let servers = next_frame(&mut peer).await;
    assert!(matches!(servers, Some(Frame::Control(Control::Servers { .. }))), "{servers:?}");
    peer
}

/// `GET /api/servers` within [`RESPONSIVE`].
async fn servers_answer_in_time(admin: SocketAddr, when: &str) {
    let asked = tokio::time::Instant::now();
    let answer = tokio::time::timeout(RESPONSIVE, request(admin, "GET", "/api/servers", &[], None))
        .await
        .unwrap_or_else(|_| {
            panic!("the hub did not answer GET /api/servers within {RESPONSIVE:?} {when}")
        });
    assert_eq!(answer.status, 200, "{}", answer.body);
    eprintln!("GET /api/servers {when}: {:?}", asked.elapsed());
}

#[tokio::test]
async fn an_ack_claiming_billions_of_numbers_does_not_stall_the_app_server() {
    let (_hub, transfer, _admin) = start_hub().await;
    let args = ["--id", "1", "--listen", "127.0.0.1:0", "--acms", &transfer.to_string()];
    let mut server = Proc::start("im-server 1", &program("examples/im-server"), &args);
    server.stderr.wait_for("`connected to hub`", |line| line.contains("connected to hub")).await;
    let mut peer = register(transfer, 2).await;

    // 64 runs of 2^32 - 1 numbers, in one frame of 781 bytes, then a server message that the
    // app server acknowledges once its app has it.
    let ranges = hostile_runs(1);
    peer.send(Frame::Ack(Ack { to: ServerId(1), from: ServerId(2), ranges })).await.unwrap();
    let data = Data {
        kind: DataKind::Server,
        seq: 1,
        origin: ServerId(2),
        recipient: user("1"),
        sender: user("ops"),
        payload: "still there?".into(),
    };
    peer.send(Frame::Data(data)).await.unwrap();
    let sent = tokio::time::Instant::now();
    let acked = tokio::time::timeout(RESPONSIVE, async {
        loop {
            match next_frame(&mut peer).await {
                Some(Frame::Ack(ack)) => return ack,
                Some(_) => continue,
                None => panic!("the hub closed the connection"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the app server did not acknowledge a message within {RESPONSIVE:?} of a hostile ack"
        )
    });
    eprintln!("acknowledged after {:?}", sent.elapsed());
    assert_eq!((acked.to, acked.from), (ServerId(2), ServerId(1)));
    assert_eq!(acked.ranges, [SeqRange { first: 1, count: 1 }]);

    // It still stops when asked.
    server.terminate().await;
    server.exits_cleanly().await;
}

#[tokio::test]
async fn an_ack_to_the_hub_claiming_billions_of_numbers_does_not_stall_it() {
    let (_hub, transfer, admin) = start_hub().await;
    let mut peer = register(transfer, 7).await;
    peer.send(Frame::Control(Control::Login { users: vec![user("bob")] })).await.unwrap();
    // The login is in once a ping sent after it is answered.
    peer.send(Frame::Control(Control::Ping { token: 1 })).await.unwrap();
    assert_eq!(next_frame(&mut peer).await, Some(Frame::Control(Control::Pong { token: 1 })));

    let push = tokio::spawn(async move {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let body = r#"{"from": "ops", "payload": "x"}"#;
        request(admin, "POST", "/api/users/bob/messages", &headers, Some(body)).await
    });
    let pushed = loop {
        match next_frame(&mut peer).await {
            Some(Frame::Data(data)) => break data,
            Some(_) => continue,
            None => panic!("the hub closed the connection"),
        }
    };
    assert_eq!(pushed.origin, ServerId::HUB);

    // Runs from just after the push's number claim billions of numbers the hub never sent; the
    // push's own ack follows them.
    let ranges = hostile_runs(pushed.seq + 1);
    peer.send(Frame::Ack(Ack { to: ServerId::HUB, from: ServerId(7), ranges })).await.unwrap();
    servers_answer_in_time(admin, "after the hostile ack").await;
    let ranges = vec![SeqRange { first: pushed.seq, count: 1 }];
    peer.send(Frame::Ack(Ack { to: ServerId::HUB, from: ServerId(7), ranges })).await.unwrap();
    let answer: Reply = tokio::time::timeout(RESPONSIVE, push)
        .await
        .unwrap_or_else(|_| panic!("the push was not answered within {RESPONSIVE:?} of its ack"))
        .expect("push task");
    assert_eq!(answer.json()["status"], "delivered", "{}", answer.body);
    servers_answer_in_time(admin, "after the push").await;
}

#[tokio::test]
async fn an_ack_with_an_impossible_run_is_refused_and_only_its_sender_is_closed() {
    let hub = TestHub::start().await;
    let server = TestServer::start(1, hub.addr).await;
    for (id, first, count) in [(2, 5, 0), (3, u64::MAX, 1)] {
        let mut peer = register(hub.addr, id).await;
        let ranges = vec![SeqRange { first: 1, count: 1 }, SeqRange { first, count }];
        peer.send(Frame::Ack(Ack { to: ServerId(1), from: ServerId(id), ranges })).await.unwrap();
        match next_frame(&mut peer).await {
            Some(Frame::Control(Control::Error { code, message })) => {
                assert_eq!(code, ErrorCode::Malformed, "{message}");
                assert!(message.contains("impossible"), "{message}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        assert_eq!(next_frame(&mut peer).await, None, "closed");
    }
    tokio::time::timeout(PATIENCE, server.cluster.flush()).await.unwrap().unwrap();
    assert_eq!(*server.cluster.link_state().borrow(), LinkState::Connected);
}

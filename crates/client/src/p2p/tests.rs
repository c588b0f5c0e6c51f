//! The engine driven by hand: no sockets, an explicit clock.

use std::time::{Duration, Instant};

use super::engine::{ConnId, Engine, EngineConfig, Output, Path};
use crate::ClientLine;
use crate::paths::{DirectLine, Invite, Kind, Number, Role, Via};

fn fp(byte: &str) -> String {
    byte.repeat(32)
}

fn engine(user: &str, epoch: u64) -> Engine {
    Engine::new(EngineConfig::default(), user, epoch, fp(if user == "alice" { "aa" } else { "bb" }))
}

fn outputs(engine: &mut Engine) -> Vec<Output> {
    std::iter::from_fn(|| engine.poll_output()).collect()
}

fn invite(role: Role, fingerprint: &str) -> Invite {
    Invite {
        role,
        fingerprint: fp(fingerprint),
        candidates: vec![crate::paths::parse_candidate("1.2.3.4:5/r").unwrap()],
    }
}

/// The numbers of the text messages in `outputs` sent to the server.
fn through_server(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::ToServer(ClientLine::Numbered { number, .. }) => Some(number.seq),
            _ => None,
        })
        .collect()
}

/// The numbers of the messages in `outputs` written on a direct connection.
fn direct(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|output| match output {
            Output::Direct { line: DirectLine::Message { number, .. }, .. } => Some(number.seq),
            _ => None,
        })
        .collect()
}

/// Alice offers bob a path, gets his answer and connects on `conn`.
fn connected(alice: &mut Engine, now: Instant, conn: ConnId) -> Vec<Output> {
    alice.send(now, "bob", Kind::Text, "m1".into());
    let first = outputs(alice);
    assert!(matches!(&first[0], Output::ToServer(ClientLine::Offer { to, .. }) if to == "bob"));
    assert_eq!(alice.path("bob"), Path::Punching);
    alice.handle_reach(
        now,
        "bob",
        Some(vec![crate::paths::parse_candidate("1.2.3.4:5/r").unwrap()]),
    );
    assert!(matches!(&outputs(alice)[..], [Output::Punch { .. }]));
    alice.handle_invite(now, "bob", invite(Role::Answer, "bb"));
    let dial = outputs(alice);
    assert!(matches!(&dial[..], [Output::Dial { fingerprint, .. }] if *fingerprint == fp("bb")));
    alice.handle_connected(now, "bob", conn);
    outputs(alice)
}

#[test]
fn held_messages_go_direct_once_the_path_opens() {
    let mut alice = engine("alice", 1);
    let now = Instant::now();
    let out = connected(&mut alice, now, 7);
    assert_eq!(direct(&out), vec![1]);
    assert_eq!(alice.path("bob"), Path::Direct);
    alice.send(now, "bob", Kind::Text, "m2".into());
    assert_eq!(direct(&outputs(&mut alice)), vec![2]);
    assert!(alice.poll_timeout().is_none(), "no deadline once connected");
}

#[test]
fn no_path_within_the_deadline_sends_through_the_server_in_order() {
    let mut alice = engine("alice", 1);
    let now = Instant::now();
    alice.send(now, "bob", Kind::Text, "m1".into());
    alice.send(now, "bob", Kind::Text, "m2".into());
    outputs(&mut alice);
    let deadline = alice.poll_timeout().expect("a punch deadline");
    assert_eq!(deadline, now + Duration::from_secs(3));
    alice.handle_timeout(deadline - Duration::from_millis(1));
    assert!(through_server(&outputs(&mut alice)).is_empty(), "not yet");
    alice.handle_timeout(deadline);
    assert_eq!(through_server(&outputs(&mut alice)), vec![1, 2]);
    assert_eq!(alice.path("bob"), Path::Server);
    alice.send(deadline, "bob", Kind::Text, "m3".into());
    assert_eq!(through_server(&outputs(&mut alice)), vec![3]);
    // A connection that completes too late is not used.
    alice.handle_connected(deadline, "bob", 9);
    assert!(outputs(&mut alice).contains(&Output::Close { conn: 9 }));
    assert_eq!(alice.path("bob"), Path::Server);
}

#[test]
fn an_offline_peer_or_one_without_candidates_needs_no_wait() {
    let mut alice = engine("alice", 1);
    let now = Instant::now();
    alice.send(now, "bob", Kind::Text, "m1".into());
    outputs(&mut alice);
    alice.handle_reach(now, "bob", Some(vec![]));
    assert_eq!(through_server(&outputs(&mut alice)), vec![1]);
    alice.send(now, "carol", Kind::Text, "m1".into());
    outputs(&mut alice);
    alice.handle_reach(now, "carol", None);
    assert_eq!(through_server(&outputs(&mut alice)), vec![1]);
}

#[test]
fn a_broken_path_resends_the_unacknowledged_through_the_server() {
    let mut alice = engine("alice", 1);
    let now = Instant::now();
    connected(&mut alice, now, 7);
    for text in ["m2", "m3", "m4"] {
        alice.send(now, "bob", Kind::Text, text.into());
    }
    outputs(&mut alice);
    alice.handle_direct(now, "bob", 7, DirectLine::Ack { seq: 2 });
    // A close of another connection changes nothing.
    alice.handle_closed(now, "bob", 8);
    assert!(outputs(&mut alice).is_empty());
    alice.handle_closed(now, "bob", 7);
    assert_eq!(through_server(&outputs(&mut alice)), vec![3, 4]);
    alice.send(now, "bob", Kind::Text, "m5".into());
    assert_eq!(through_server(&outputs(&mut alice)), vec![5]);
}

#[test]
fn a_peer_that_does_not_acknowledge_is_given_up_with_bounded_memory() {
    let config = EngineConfig { max_unacked_bytes: 10, ..EngineConfig::default() };
    let mut alice = Engine::new(config, "alice", 1, fp("aa"));
    let now = Instant::now();
    connected(&mut alice, now, 7);
    alice.send(now, "bob", Kind::Text, "123456".into());
    assert_eq!(direct(&outputs(&mut alice)), vec![2]);
    alice.send(now, "bob", Kind::Text, "123456".into());
    let out = outputs(&mut alice);
    assert!(out.contains(&Output::Close { conn: 7 }));
    assert_eq!(through_server(&out), vec![1, 2, 3]);
}

#[test]
fn the_receiver_drops_what_it_saw_on_either_path() {
    let mut bob = engine("bob", 2);
    let now = Instant::now();
    bob.handle_invite(now, "alice", invite(Role::Offer, "aa"));
    let out = outputs(&mut bob);
    assert!(matches!(&out[0], Output::ToServer(ClientLine::Answer { to, .. }) if to == "alice"));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Accept { fingerprint, .. } if *fingerprint == fp("aa")))
    );
    bob.handle_connected(now, "alice", 3);
    outputs(&mut bob);
    let message = |seq| DirectLine::Message {
        number: Number { epoch: 1, seq },
        kind: Kind::Text,
        body: format!("m{seq}"),
    };
    bob.handle_direct(now, "alice", 3, message(1));
    bob.handle_direct(now, "alice", 3, message(2));
    let delivered = |out: &[Output]| -> Vec<(String, Via)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Deliver { body, via, .. } => Some((body.clone(), *via)),
                _ => None,
            })
            .collect()
    };
    let out = outputs(&mut bob);
    assert_eq!(delivered(&out), vec![("m1".into(), Via::P2p), ("m2".into(), Via::P2p)]);
    assert!(out.contains(&Output::Direct {
        peer: "alice".into(),
        conn: 3,
        line: DirectLine::Ack { seq: 2 }
    }));
    // The path broke before the acks arrived: alice resends 2 and sends 3 through the hub.
    for seq in [2, 3] {
        let number = Some(Number { epoch: 1, seq });
        bob.handle_server_message("alice", Via::Hub, number, Kind::Text, format!("m{seq}"));
    }
    assert_eq!(delivered(&outputs(&mut bob)), vec![("m3".into(), Via::Hub)]);
    // Alice restarted: a new epoch starts again from 1.
    bob.handle_server_message(
        "alice",
        Via::Server,
        Some(Number { epoch: 9, seq: 1 }),
        Kind::Text,
        "n1".into(),
    );
    // An unnumbered message (a web client) is always delivered.
    bob.handle_server_message("alice", Via::Server, None, Kind::Text, "w".into());
    assert_eq!(
        delivered(&outputs(&mut bob)),
        vec![("n1".into(), Via::Server), ("w".into(), Via::Server)]
    );
}

#[test]
fn crossed_offers_leave_one_dialler() {
    let now = Instant::now();
    let mut alice = engine("alice", 1);
    let mut bob = engine("bob", 2);
    alice.send(now, "bob", Kind::Text, "a1".into());
    bob.send(now, "alice", Kind::Text, "b1".into());
    outputs(&mut alice);
    outputs(&mut bob);
    // Each gets the other's offer: alice (the smaller name) keeps dialling, bob answers.
    alice.handle_invite(now, "bob", invite(Role::Offer, "bb"));
    assert!(outputs(&mut alice).is_empty());
    bob.handle_invite(now, "alice", invite(Role::Offer, "aa"));
    assert!(outputs(&mut bob).iter().any(|o| matches!(o, Output::Accept { .. })));
    bob.handle_connected(now, "alice", 4);
    assert_eq!(direct(&outputs(&mut bob)), vec![1], "bob's held message goes direct");
}

#[test]
fn disabled_sends_plain_lines() {
    let config = EngineConfig { enabled: false, ..EngineConfig::default() };
    let mut alice = Engine::new(config, "alice", 1, String::new());
    let now = Instant::now();
    alice.send(now, "bob", Kind::Text, "hi".into());
    alice.send(now, "bob", Kind::File, "ack 1 2".into());
    alice.handle_invite(now, "bob", invite(Role::Offer, "bb"));
    let out = outputs(&mut alice);
    assert_eq!(
        out,
        vec![
            Output::ToServer(ClientLine::Send { to: "bob".into(), text: "hi".into() }),
            Output::ToServer(ClientLine::File { to: "bob".into(), body: "ack 1 2".into() }),
        ]
    );
    assert_eq!(alice.path("bob"), Path::Server);
}

#[test]
fn the_peer_table_is_bounded() {
    let mut bob = engine("bob", 2);
    for i in 0..(super::engine::MAX_PEERS * 3) {
        let number = Some(Number { epoch: 1, seq: 1 });
        bob.handle_server_message(&format!("user{i}"), Via::Hub, number, Kind::Text, "x".into());
    }
    assert_eq!(outputs(&mut bob).len(), super::engine::MAX_PEERS * 3, "every message delivered");
    assert!(bob.peer_count() <= super::engine::MAX_PEERS);
}

//! Unit tests of the registry and the directory.

use super::*;

/// A server's record as a test registers it: loopback, client port 6000 + id.
pub(crate) fn info(id: u32) -> ServerInfo {
    ServerInfo {
        id: ServerId(id),
        client_addr: format!("127.0.0.1:{}", 6000 + id),
        peer_addr: SocketAddr::from(([127, 0, 0, 1], 50000)),
        connected_at: SystemTime::now(),
        load: None,
        draining: false,
    }
}
#[test]
fn a_drain_marks_a_registered_server_only() {
    let registry = Registry::new(Duration::ZERO);
    assert!(!registry.drain(ServerId(1)), "unknown server");
    let (outbox, _inbox) = Outbox::new(1024, 512);
    registry.register(info(1), 1, outbox, CancellationToken::new(), None).unwrap();
    assert!(!registry.servers()[0].draining);
    assert!(registry.drain(ServerId(1)));
    assert!(registry.servers()[0].draining);
}

#[test]
fn the_latest_load_report_is_kept() {
    let registry = Registry::default();
    let (outbox, _inbox) = Outbox::new(1024, 512);
    registry.register(info(1), 1, outbox, CancellationToken::new(), None).unwrap();
    assert_eq!(registry.servers()[0].load, None);
    let load = |users| Load {
        users,
        cpu_centipercent: 100,
        memory_bytes: 1 << 20,
        msgs_in_per_s: 0,
        msgs_out_per_s: 0,
        capacity: None,
    };
    registry.report_load(ServerId(1), load(3));
    registry.report_load(ServerId(1), load(5));
    registry.report_load(ServerId(2), load(9));
    assert_eq!(registry.servers()[0].load, Some(load(5)));
    assert_eq!(registry.servers().len(), 1);
}

#[test]
fn the_welcome_is_queued_as_the_server_is_registered_and_only_then() {
    let registry = Registry::default();
    let welcome = Bytes::from_static(b"welcome!");
    let (outbox, _inbox) = Outbox::new(1024, 512);
    let (token, hello) = (CancellationToken::new(), Some(welcome.clone()));
    registry.register(info(1), 1, outbox.clone(), token, hello).unwrap();
    // Queued before the outbox could be found: whatever another connection pushes next
    // comes after it.
    assert_eq!(outbox.pending(), welcome.len());
    assert_eq!(registry.outbox(ServerId(1)).map(|found| found.pending()), Some(8));
    // A refused registration queues nothing: its refusal is the first frame.
    let (other, _inbox) = Outbox::new(1024, 512);
    let refused =
        registry.register(info(1), 1, other.clone(), CancellationToken::new(), Some(welcome));
    assert!(refused.is_err());
    assert_eq!(other.pending(), 0);
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

#[test]
fn duplicate_id_is_refused_until_the_first_leaves() {
    let registry = Registry::default();
    let (outbox, _inbox) = Outbox::new(1024, 512);
    let token = CancellationToken::new();
    registry.register(info(1), 7, outbox.clone(), token.clone(), None).unwrap();
    assert_eq!(
        registry.register(info(1), 7, outbox.clone(), token.clone(), None).err(),
        Some(DuplicateServer(ServerId(1)))
    );
    registry.depart(ServerId(1), HashSet::new(), false);
    registry.register(info(1), 8, outbox, token, None).unwrap();
}

#[test]
fn departure_takes_only_the_servers_own_users() {
    let registry = Registry::default();
    let (alice, bob) = (user("alice"), user("bob"));
    registry.login(ServerId(1), alice.clone());
    registry.login(ServerId(1), bob.clone());
    // bob moved to server 2 before server 1 noticed.
    assert_eq!(registry.login(ServerId(2), bob.clone()), Placed::Moved(ServerId(1)));
    registry.depart(ServerId(1), HashSet::from([alice, bob]), false);
    assert_eq!(registry.locate("alice"), None);
    assert_eq!(registry.locate("bob"), Some(ServerId(2)));
}

#[test]
fn a_claim_confirms_or_fills_in_but_never_moves_a_user() {
    let registry = Registry::default();
    registry.login(ServerId(1), user("bob"));
    registry.login(ServerId(2), user("bob"));
    assert_eq!(registry.claim(ServerId(1), user("bob")), Placed::Lost(ServerId(2)));
    assert_eq!(registry.locate("bob"), Some(ServerId(2)), "a resync does not take bob back");
    assert_eq!(registry.claim(ServerId(1), user("carol")), Placed::Online);
    assert_eq!(registry.locate("carol"), Some(ServerId(1)), "nobody had carol");
}

#[test]
fn multi_keeps_every_session_and_the_last_login_is_where_the_user_is() {
    let registry = Registry::default().with_login_conflict(LoginConflict::Multi);
    let bob = user("bob");
    assert_eq!(registry.login(ServerId(1), bob.clone()), Placed::Online);
    assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(1), multi: false }));
    assert_eq!(registry.login(ServerId(2), bob.clone()), Placed::Joined(Some(ServerId(1))));
    assert_eq!(registry.login(ServerId(3), bob.clone()), Placed::Joined(None));
    assert_eq!(registry.claim(ServerId(1), bob.clone()), Placed::Already);
    assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(3), multi: true }));
    assert_eq!(registry.sessions("bob"), [ServerId(1), ServerId(2), ServerId(3)]);
    assert_eq!(registry.user_count(), 1);

    // Leaving an older session moves nobody; leaving the last one moves the user back.
    assert_eq!(registry.logout(ServerId(1), "bob"), Left::default());
    assert_eq!(registry.logout(ServerId(4), "bob"), Left::default(), "never on server 4");
    let moved = PresenceChange { user: bob.clone(), server: Some(ServerId(2)) };
    let alone = (bob.clone(), ServerId(2));
    assert_eq!(
        registry.logout(ServerId(3), "bob"),
        Left { moved: vec![moved], alone: vec![alone] }
    );
    assert_eq!(registry.route("bob"), Some(Owner { server: ServerId(2), multi: false }));
    assert_eq!(registry.sessions("bob"), [ServerId(2)]);
    assert!(registry.sessions.is_empty(), "a single session needs no second map");
    let offline = PresenceChange { user: bob, server: None };
    assert_eq!(registry.logout(ServerId(2), "bob").moved, [offline]);
    assert_eq!(registry.locate("bob"), None);
}

#[test]
fn relay_to_a_full_queue_closes_that_server() {
    let registry = Registry::default();
    let (outbox, _inbox) = Outbox::new(4, 2);
    let token = CancellationToken::new();
    registry.register(info(2), 0, outbox, token.clone(), None).unwrap();
    let frames = |text: &'static str| vec![Bytes::from_static(text.as_bytes())];
    let relay = |frames| registry.relay_batch(ServerId(1), ServerId(2), Some(1), frames, None);
    assert_eq!(
        registry.relay_batch(ServerId(1), ServerId(3), Some(1), frames("x"), None).err(),
        Some(RelayError::Gone(frames("x")))
    );
    assert!(matches!(relay(frames("1234")), Ok(Relayed::Queued(Some(_)))));
    assert!(!token.is_cancelled());
    assert_eq!(relay(frames("5")).err(), Some(RelayError::SlowConsumer { pending: 4 }));
    assert!(token.is_cancelled());
}

#[test]
fn an_away_server_holds_frames_for_its_origins_to_send_again() {
    let registry = Registry::default();
    let (outbox, _inbox) = Outbox::new(1024, 512);
    let alice = user("alice");
    registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None).unwrap();
    registry.login(ServerId(2), alice.clone());
    let Departure::Away(departure) =
        registry.depart(ServerId(2), HashSet::from([alice.clone()]), true)
    else {
        panic!("server 2 is registered: it goes away");
    };
    assert_eq!(registry.locate("alice"), Some(ServerId(2)), "kept while away");
    let frame = || vec![Bytes::from_static(b"f")];
    for seq in [40, 30, 50] {
        let held = registry.relay_batch(ServerId(1), ServerId(2), Some(seq), frame(), None);
        assert!(matches!(held, Ok(Relayed::Held)));
    }
    // Back within the grace: every connected server sends again all it has not had
    // acknowledged, and is blocked until it has.
    let (other, _other_inbox) = Outbox::new(1024, 512);
    registry.register(info(1), 0, other, CancellationToken::new(), None).unwrap();
    let back = registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
    assert_eq!(back.resend, HashMap::from([(ServerId(1), 0)]));
    assert_eq!(back.stale_users, HashSet::from([alice.clone()]));
    assert_eq!(registry.expire(ServerId(2), departure), None, "not away any more");
    let blocked = registry.relay_batch(ServerId(1), ServerId(2), Some(60), frame(), None);
    assert!(matches!(blocked, Ok(Relayed::Held)));
    registry.resent(ServerId(1), ServerId(2));
    let queued = registry.relay_batch(ServerId(1), ServerId(2), Some(61), frame(), None);
    assert!(matches!(queued, Ok(Relayed::Queued(None))));

    // Away again, and the grace ends: the server and its users are gone.
    let Departure::Away(departure) =
        registry.depart(ServerId(2), HashSet::from([alice.clone()]), true)
    else {
        panic!("server 2 is registered: it goes away");
    };
    let _ = registry.relay_batch(ServerId(3), ServerId(2), Some(9), frame(), None);
    assert_eq!(
        registry.expire(ServerId(2), departure),
        Some((
            HashMap::from([(ServerId(3), 9)]),
            Left { moved: vec![PresenceChange { user: alice, server: None }], alone: Vec::new() }
        ))
    );
    assert_eq!(registry.locate("alice"), None);
    assert_eq!(registry.servers().len(), 1, "only server 1 is left");
}

#[test]
fn frames_in_flight_to_a_server_that_does_not_come_back_are_sent_again() {
    let registry = Registry::default();
    let frame = || vec![Bytes::from_static(b"f")];
    let (outbox, _inbox) = Outbox::new(1024, 512);
    registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None).unwrap();
    let mut marks = [Marks::default(), Marks::default()];
    for (index, origin, seq) in [(0, 1, 40), (1, 3, 7), (0, 1, 41)] {
        let marks = Some(&mut marks[index]);
        let queued = registry.relay_batch(ServerId(origin), ServerId(2), Some(seq), frame(), marks);
        assert!(matches!(queued, Ok(Relayed::Queued(None))));
    }
    // The connection breaks with those frames in its queue; one more is held while away.
    let Departure::Away(departure) = registry.depart(ServerId(2), HashSet::new(), true) else {
        panic!("server 2 is registered: it goes away");
    };
    let held =
        registry.relay_batch(ServerId(3), ServerId(2), Some(8), frame(), Some(&mut marks[1]));
    assert!(matches!(held, Ok(Relayed::Held)));
    let (resend, _) = registry.expire(ServerId(2), departure).expect("still away");
    assert_eq!(resend, HashMap::from([(ServerId(1), 40), (ServerId(3), 7)]));

    // Back as a new server, which then says `Bye` with frames in its queue.
    registry.register(info(2), 1, outbox, CancellationToken::new(), None).unwrap();
    let queued =
        registry.relay_batch(ServerId(1), ServerId(2), Some(90), frame(), Some(&mut marks[0]));
    assert!(matches!(queued, Ok(Relayed::Queued(None))));
    let Departure::Gone { forwarded, .. } = registry.depart(ServerId(2), HashSet::new(), false)
    else {
        panic!("no grace: server 2 is gone");
    };
    assert_eq!(forwarded, HashMap::from([(ServerId(1), 90)]), "only the last connection's");
}

#[test]
fn the_settle_window_holds_frames_for_nobody_and_hands_them_to_newcomers() {
    let registry = Registry::new(Duration::from_secs(3600));
    assert!(
        !registry.hold_unclaimed(ServerId(1), 5, Instant::now()),
        "no window before the first server"
    );
    let (outbox, _inbox) = Outbox::new(1024, 512);
    let first = registry.register(info(1), 0, outbox.clone(), CancellationToken::new(), None);
    assert!(first.unwrap().first);
    assert!(registry.hold_unclaimed(ServerId(1), 5, Instant::now()));
    assert!(registry.hold_unclaimed(ServerId(1), 3, Instant::now()));
    let second = registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
    assert_eq!(second.resend, HashMap::from([(ServerId(1), 3)]));
    assert_eq!(registry.take_unclaimed(), HashMap::from([(ServerId(1), 3)]));
}

#[test]
fn a_blocked_origin_s_acks_pass_and_its_data_frames_wait() {
    use acms_protocol::{Ack, Data, DataKind, Frame, SeqRange, UserId};
    let registry = Registry::default();
    let (outbox, _inbox) = Outbox::new(1 << 20, 1 << 19);
    registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None).unwrap();
    registry.block(ServerId(2), ServerId(1));
    let mut bytes = bytes::BytesMut::new();
    let data = Data {
        kind: DataKind::Unicast,
        seq: 7,
        origin: ServerId(1),
        recipient: UserId::new("bob").unwrap(),
        sender: UserId::new("alice").unwrap(),
        payload: Bytes::from_static(b"hi"),
    };
    Frame::Data(data).encode(1 << 16, &mut bytes).unwrap();
    let data_len = bytes.len();
    let ranges = vec![SeqRange { first: 1, count: 3 }];
    Ack { to: ServerId(2), from: ServerId(1), ranges }.encode(1 << 16, &mut bytes);
    let ack_len = bytes.len() - data_len;
    // One chunk of both, as a run of a read or of a backplane message comes.
    let held = registry.relay_batch(ServerId(1), ServerId(2), Some(7), vec![bytes.freeze()], None);
    assert!(matches!(held, Ok(Relayed::Held)), "{held:?}");
    assert_eq!(outbox.pending(), ack_len, "the ack alone is queued");
    registry.resent(ServerId(1), ServerId(2));
    let frame = Bytes::from_static(b"x");
    let queued = registry.relay_batch(ServerId(1), ServerId(2), None, vec![frame], None);
    assert!(matches!(queued, Ok(Relayed::Queued(_))), "after `Resent`: {queued:?}");
}

/// A server returns while an origin keeps relaying to it: nothing of that origin reaches the
/// new connection before the origin's `Resent`, or it would overtake the frames sent again.
/// (Before, the connection could be found before its blocks were set: a frame relayed in that
/// moment was queued to it.)
#[test]
fn no_frame_reaches_a_returning_server_before_its_origins_resent() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let registry = Arc::new(Registry::default());
    let (origin, _origin_inbox) = Outbox::new(1024, 512);
    registry.register(info(1), 0, origin, CancellationToken::new(), None).unwrap();
    let (outbox, _inbox) = Outbox::new(1 << 20, 1 << 19);
    registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let relaying = std::thread::spawn({
        let (registry, stop) = (registry.clone(), stop.clone());
        move || {
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                let frame = vec![Bytes::from_static(b"f")];
                let _ = registry.relay_batch(ServerId(1), ServerId(2), Some(seq), frame, None);
                seq += 1;
            }
        }
    });
    let mut early = 0;
    for _ in 0..2_000 {
        let _away = registry.depart(ServerId(2), HashSet::new(), true);
        let (outbox, _inbox) = Outbox::new(1 << 20, 1 << 19);
        let back = registry.register(info(2), 0, outbox.clone(), CancellationToken::new(), None);
        assert_eq!(back.unwrap().resend, HashMap::from([(ServerId(1), 0)]));
        early += usize::from(outbox.pending() > 0);
        // It sends again, and its frames pass until the next return.
        registry.resent(ServerId(1), ServerId(2));
    }
    stop.store(true, Ordering::Relaxed);
    relaying.join().unwrap();
    assert_eq!(early, 0, "returns of 2,000 where a frame of server 1 came before its Resent");
}

/// An origin on another hub that this hub's replica does not list yet (its directory entry is
/// still on the way) forwarded to a server whose connection then broke: when the server returns,
/// that origin's later frames must wait for its `Resent` too, or they overtake the frames it
/// sends again.
#[test]
fn an_origin_the_replica_does_not_list_is_blocked_when_the_server_it_sent_to_returns() {
    let registry = Registry::default();
    let frame = || vec![Bytes::from_static(b"f")];
    let (outbox, _inbox) = Outbox::new(1024, 512);
    registry.register(info(2), 0, outbox, CancellationToken::new(), None).unwrap();
    let remote = ServerId(10);
    let mut marks = Marks::default();
    let queued = registry.relay_batch(remote, ServerId(2), Some(40), frame(), Some(&mut marks));
    assert!(matches!(queued, Ok(Relayed::Queued(None))));
    let _away = registry.depart(ServerId(2), HashSet::new(), true);
    // Back, on a backplane whose replica lists no server of another hub yet.
    let (outbox, _inbox) = Outbox::new(1024, 512);
    let arriving = Arriving { resend_all: true, remote: Vec::new() };
    registry
        .register_arriving(info(2), 0, outbox.clone(), CancellationToken::new(), None, arriving)
        .unwrap();
    let _ = registry.relay_batch(remote, ServerId(2), Some(2046), frame(), Some(&mut marks));
    assert_eq!(outbox.pending(), 0, "frame 2046 overtook the frames from 40 sent again");
    registry.resent(remote, ServerId(2));
    let _ = registry.relay_batch(remote, ServerId(2), Some(40), frame(), Some(&mut marks));
    assert!(outbox.pending() > 0, "after its Resent, its frames pass");
}

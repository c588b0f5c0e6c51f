//! Unit tests of the relay and session cores: byte buffers in, the real registry and in-memory
//! queues out, an explicit clock, no socket, and a runtime only where a reader's wait is awaited.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use acms_protocol::{
    Codec, Control, Data, DataKind, Frame, RawFrame, ServerId, UserDigest, UserId,
};
use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;

use super::relay::Relay;
use super::session::Session;
use super::{Close, OwnQueue};
use crate::backplane::{Backplane, HubId, Outbound, Place};
use crate::config::HubConfig;
use crate::outbox::{Inbox, Outbox};
use crate::state::HubState;

const MAX_FRAME_LEN: usize = 64 * 1024;

/// A registered server's ends: its queue, what was queued on it, and its connection's token.
struct Server {
    id: ServerId,
    outbox: Outbox,
    inbox: Inbox,
    closer: CancellationToken,
}

impl Server {
    /// The frames queued for it since last asked, by batch, as the writer would take them.
    fn batches(&mut self) -> Vec<Vec<Frame>> {
        self.inbox
            .take_queued()
            .into_iter()
            .map(|batch| batch.into_iter().flat_map(frames).collect())
            .collect()
    }

    /// Its own queue, as its connection's cores answer on it.
    fn own(&self, shared: &Arc<HubState>) -> OwnQueue {
        OwnQueue {
            outbox: self.outbox.clone(),
            shared: shared.clone(),
            server: Some(self.id),
            max_frame_len: MAX_FRAME_LEN,
        }
    }
}

/// The frames of one chunk of a batch (a chunk may hold several).
fn frames(mut chunk: Bytes) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !chunk.is_empty() {
        frames.push(RawFrame::split_first(&mut chunk).unwrap().decode().unwrap());
    }
    frames
}

fn hub(config: HubConfig) -> Arc<HubState> {
    Arc::new(HubState::new(HubConfig { max_frame_len: MAX_FRAME_LEN, ..config }, None))
}

/// A hub with no settle window.
fn settled_hub() -> Arc<HubState> {
    hub(HubConfig { settle: Duration::ZERO, ..HubConfig::default() })
}

fn register_with(shared: &HubState, id: u32, limit: usize) -> Server {
    let (outbox, inbox) = Outbox::new(limit, limit / 2);
    let closer = CancellationToken::new();
    let info = crate::registry::tests::info(id);
    shared.registry.register(info, 1, outbox.clone(), closer.clone(), None).expect("registers");
    // The hub's own pushes are not waited for here.
    shared.registry.resent(ServerId::HUB, ServerId(id));
    Server { id: ServerId(id), outbox, inbox, closer }
}

fn register(shared: &HubState, id: u32) -> Server {
    register_with(shared, id, 1 << 20)
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn relay(shared: &Arc<HubState>, origin: &Server) -> Relay {
    Relay::new(shared.clone(), origin.id, origin.own(shared), Codec::new(MAX_FRAME_LEN))
}

fn session(shared: &Arc<HubState>, server: &Server, now: Instant) -> Session {
    Session::new(shared.clone(), server.id, server.own(shared), HashSet::new(), now)
}

/// A unicast frame from `origin` to `recipient`, whose payload names its number.
fn unicast(origin: &Server, seq: u64, recipient: &str) -> Data {
    Data {
        kind: DataKind::Unicast,
        seq,
        origin: origin.id,
        recipient: user(recipient),
        sender: user("alice"),
        payload: Bytes::from(format!("payload {seq}")),
    }
}

fn encode(frames: impl IntoIterator<Item = Data>) -> BytesMut {
    let mut buf = BytesMut::new();
    for data in frames {
        Frame::Data(data).encode(MAX_FRAME_LEN, &mut buf).unwrap();
    }
    buf
}

fn data(frame: &Frame) -> &Data {
    match frame {
        Frame::Data(data) => data,
        other => panic!("a data frame, not {other:?}"),
    }
}

fn seqs(batch: &[Frame]) -> Vec<u64> {
    batch.iter().map(|frame| data(frame).seq).collect()
}

/// Relays one read, all of it: no control frame among the bytes.
fn relay_read(relay: &mut Relay, buf: &mut BytesMut, now: Instant) {
    let control = relay.handle_read(buf, now).expect("relayed");
    assert!(control.is_none(), "no control frame in this read");
    relay.flush().expect("handed over");
}

#[test]
fn a_read_goes_to_each_destination_as_one_batch_in_order_and_nobody_comes_back_whole() {
    let shared = settled_hub();
    let mut origin = register(&shared, 1);
    let mut bobs = register(&shared, 2);
    let mut carols = register(&shared, 3);
    shared.registry.login(bobs.id, user("bob"));
    shared.registry.login(carols.id, user("carol"));

    let mut buf = encode([
        unicast(&origin, 1, "bob"),
        unicast(&origin, 2, "carol"),
        unicast(&origin, 3, "bob"),
        unicast(&origin, 4, "nobody"),
        unicast(&origin, 5, "carol"),
    ]);
    let read = buf.as_ptr_range();
    let mut relay = relay(&shared, &origin);
    assert!(relay.handle_read(&mut buf, Instant::now()).unwrap().is_none());
    assert!(buf.is_empty(), "every whole frame left the read buffer");
    assert!(bobs.batches().is_empty(), "staged until the read is handed over");
    relay.flush().unwrap();

    // One batch per destination, in the order read, as slices of the read buffer.
    let queued = bobs.inbox.take_queued();
    assert_eq!(queued.len(), 1, "one batch for bob's server");
    for chunk in &queued[0] {
        assert!(read.contains(&chunk.as_ptr()), "the payload is not copied");
    }
    let batch: Vec<Frame> = queued.into_iter().flatten().flat_map(frames).collect();
    assert_eq!(seqs(&batch), [1, 3]);
    assert_eq!(data(&batch[1]).payload, "payload 3");
    let batches = carols.batches();
    assert_eq!(batches.len(), 1, "one batch for carol's server");
    assert_eq!(seqs(&batches[0]), [2, 5]);

    // The frame for a user online nowhere goes back to its origin, whole.
    let back = origin.batches();
    assert_eq!(back.len(), 1);
    let [Frame::Data(undeliverable)] = back[0].as_slice() else {
        panic!("one frame back: {back:?}");
    };
    assert_eq!(undeliverable.kind, DataKind::Undeliverable);
    assert_eq!((undeliverable.seq, undeliverable.recipient.as_str()), (4, "nobody"));
    assert_eq!(undeliverable.payload, "payload 4");
    let stats = shared.stats.snapshot();
    assert_eq!((stats.relayed_frames, stats.undeliverable), (4, 1));
}

#[test]
fn a_frame_split_across_two_reads_is_relayed_once_whole() {
    let shared = settled_hub();
    let origin = register(&shared, 1);
    let mut bobs = register(&shared, 2);
    shared.registry.login(bobs.id, user("bob"));
    let whole = encode([unicast(&origin, 1, "bob")]).freeze();
    let mut relay = relay(&shared, &origin);

    let mut buf = BytesMut::from(&whole[..whole.len() - 3]);
    relay_read(&mut relay, &mut buf, Instant::now());
    assert_eq!(buf.len(), whole.len() - 3, "the partial frame waits in the buffer");
    assert!(bobs.batches().is_empty(), "nothing relayed from a partial frame");

    buf.extend_from_slice(&whole[whole.len() - 3..]);
    relay_read(&mut relay, &mut buf, Instant::now());
    assert!(buf.is_empty());
    let queued = bobs.inbox.take_queued();
    assert_eq!(queued, [vec![whole]], "relayed once, as the bytes it came in");
}

#[test]
fn in_the_settle_window_a_frame_for_nobody_is_held_then_sent_again_when_it_ends() {
    let settle = Duration::from_secs(60);
    let shared = hub(HubConfig { settle, ..HubConfig::default() });
    let registered = Instant::now();
    let mut origin = register(&shared, 1);
    let mut bobs = register(&shared, 2);
    shared.registry.login(bobs.id, user("bob"));
    let ends = shared.registry.settle_ends().expect("the first registration opened the window");
    assert!(ends >= registered + settle);
    let mut relay = relay(&shared, &origin);

    // In the window: the frame for nobody is held, and the origin's later frames with it, so
    // that none overtakes it.
    let mut buf = encode([unicast(&origin, 7, "nobody"), unicast(&origin, 8, "bob")]);
    relay_read(&mut relay, &mut buf, ends - Duration::from_secs(1));
    assert!(origin.batches().is_empty(), "not bounced in the window");
    assert!(bobs.batches().is_empty(), "a later frame does not overtake the held one");
    assert_eq!(shared.stats.snapshot().held, 2);

    // The window ends: the origin is asked to send again from the held frame.
    shared.ask_to_resend(shared.registry.end_settle());
    let asked = origin.batches();
    assert_eq!(asked, [vec![Frame::Control(Control::Resend { from: 7 })]]);

    // Sent again after the window: the frame for nobody comes back whole, the next one goes on.
    let mut buf = encode([unicast(&origin, 7, "nobody"), unicast(&origin, 8, "bob")]);
    relay_read(&mut relay, &mut buf, ends + Duration::from_millis(1));
    let back = origin.batches();
    assert_eq!(back.len(), 1);
    assert_eq!(data(&back[0][0]).kind, DataKind::Undeliverable);
    assert_eq!(data(&back[0][0]).payload, "payload 7");
    assert_eq!(seqs(&bobs.batches().concat()), [8]);
}

#[test]
fn a_destination_past_its_limit_is_closed_and_counted_and_the_others_are_not() {
    let shared = settled_hub();
    let mut origin = register(&shared, 1);
    let limit = 256;
    let slow = register_with(&shared, 2, limit);
    let mut carols = register(&shared, 3);
    shared.registry.login(slow.id, user("bob"));
    shared.registry.login(carols.id, user("carol"));
    // The slow server stopped reading: its queue is past its limit.
    slow.outbox.push(Bytes::from(vec![0; 2 * limit])).unwrap();

    let mut relay = relay(&shared, &origin);
    let mut buf = encode([unicast(&origin, 1, "bob"), unicast(&origin, 2, "carol")]);
    relay_read(&mut relay, &mut buf, Instant::now());

    assert!(slow.closer.is_cancelled(), "the slow server is disconnected");
    assert_eq!(shared.stats.snapshot().slow_consumers, 1, "and counted once");
    assert!(!carols.closer.is_cancelled(), "the other destination stays");
    assert_eq!(seqs(&carols.batches().concat()), [2], "and gets its frame");
    assert!(!origin.closer.is_cancelled());
    assert!(origin.batches().is_empty(), "held for its origin to send again, not bounced");
}

#[test]
fn a_login_of_a_user_online_elsewhere_kicks_exactly_the_older_session() {
    let shared = settled_hub();
    let now = Instant::now();
    let mut first = register(&shared, 1);
    let mut second = register(&shared, 2);
    let mut third = register(&shared, 3);
    let mut sessions = [&first, &second, &third].map(|server| session(&shared, server, now));
    sessions[0].handle_control(Control::Login { users: vec![user("bob")] }, now).unwrap();
    sessions[2].handle_control(Control::Login { users: vec![user("carol")] }, now).unwrap();

    sessions[1].handle_control(Control::Login { users: vec![user("bob")] }, now).unwrap();

    let kicked = first.batches().concat();
    let [Frame::Control(Control::Kick { user: kicked, reason })] = kicked.as_slice() else {
        panic!("the older session is kicked: {kicked:?}");
    };
    assert_eq!(kicked.as_str(), "bob");
    assert_eq!(reason, "bob logged in on server 2");
    assert!(second.batches().is_empty(), "the new session is not kicked");
    assert!(third.batches().is_empty(), "nobody else is told");
    assert_eq!(shared.registry.locate("bob"), Some(second.id));
    assert_eq!(shared.registry.locate("carol"), Some(third.id));
}

#[test]
fn a_digest_that_differs_from_the_record_asks_for_a_resync_once() {
    let shared = settled_hub();
    let now = Instant::now();
    let mut server = register(&shared, 1);
    let mut session = session(&shared, &server, now);
    let users = [user("alice"), user("bob")];
    session.handle_control(Control::Login { users: users.to_vec() }, now).unwrap();

    session.handle_control(Control::Digest(UserDigest::of(&users)), now).unwrap();
    assert!(server.batches().is_empty(), "a digest that matches asks for nothing");

    let drifted = UserDigest::of(&users[..1]);
    session.handle_control(Control::Digest(drifted), now).unwrap();
    assert_eq!(server.batches(), [vec![Frame::Control(Control::Resync)]]);
    // Digests sent before the server saw the `Resync` are not compared meanwhile.
    session.handle_control(Control::Digest(drifted), now).unwrap();
    assert!(server.batches().is_empty());
    let stats = shared.stats.snapshot();
    assert_eq!((stats.digests, stats.resyncs), (2, 1));
    // The old record stays until the snapshot is done: the users keep their place meanwhile.
    assert_eq!(shared.registry.locate("bob"), Some(server.id));
}

#[test]
fn a_server_silent_past_keepalive_timeout_is_dead_and_not_before() {
    let timeout = Duration::from_secs(3);
    let shared = hub(HubConfig { keepalive_timeout: timeout, ..HubConfig::default() });
    let start = Instant::now();
    let server = register(&shared, 1);
    let mut session = session(&shared, &server, start);
    // It sent something at 2 s; the reader listens again after a pushback wait until 5 s.
    session.handle_listen(start + Duration::from_secs(5));
    let silence = session.silence();
    assert_eq!(silence.deadline(), start + Duration::from_secs(8));
    assert!(!silence.is_dead(start + Duration::from_secs(7)), "still within the timeout");
    assert!(silence.is_dead(start + Duration::from_secs(8)), "nothing by the deadline: dead");
}

#[test]
fn a_control_frame_is_handed_to_the_session_after_the_frames_read_before_it() {
    let shared = settled_hub();
    let origin = register(&shared, 1);
    let mut bobs = register(&shared, 2);
    shared.registry.login(bobs.id, user("bob"));
    let mut buf = encode([unicast(&origin, 1, "bob")]);
    let logout = Control::Logout { users: vec![user("carol")] };
    Frame::Control(logout.clone()).encode(MAX_FRAME_LEN, &mut buf).unwrap();
    buf.extend_from_slice(&encode([unicast(&origin, 2, "bob")]));

    let mut relay = relay(&shared, &origin);
    let control = relay.handle_read(&mut buf, Instant::now()).unwrap().expect("a control frame");
    // Handed over before the control's effects can run.
    assert_eq!(seqs(&bobs.batches().concat()), [1]);
    assert_eq!(control.decode().unwrap(), Frame::Control(logout));
    relay_read(&mut relay, &mut buf, Instant::now());
    assert_eq!(seqs(&bobs.batches().concat()), [2]);
}

#[test]
fn a_frame_claiming_another_origin_closes_only_its_connection() {
    let shared = settled_hub();
    let origin = register(&shared, 1);
    let other = register(&shared, 3);
    let mut bobs = register(&shared, 2);
    shared.registry.login(bobs.id, user("bob"));
    let mut relay = relay(&shared, &origin);
    let mut buf = encode([unicast(&origin, 1, "bob"), unicast(&other, 2, "bob")]);
    let refused = relay.handle_read(&mut buf, Instant::now());
    assert!(matches!(refused, Err(Close::Refused { .. })), "refused: {refused:?}");
    // What came before the spoofed frame is still handed over.
    relay.flush().unwrap();
    assert_eq!(seqs(&bobs.batches().concat()), [1]);
}

fn candidate(addr: &str) -> acms_protocol::Candidate {
    acms_protocol::Candidate {
        addr: addr.parse().unwrap(),
        kind: acms_protocol::CandidateKind::Reflexive,
    }
}

/// The control messages among `batches`, flattened.
fn controls(batches: Vec<Vec<Frame>>) -> Vec<Control> {
    batches
        .into_iter()
        .flatten()
        .map(|frame| match frame {
            Frame::Control(control) => control,
            other => panic!("a control frame, not {other:?}"),
        })
        .collect()
}

#[test]
fn candidates_go_with_the_users_place_to_watchers_and_locate_and_leave_with_the_session() {
    let shared = settled_hub();
    let alices = register(&shared, 1);
    let mut watcher = register(&shared, 2);
    // After the registrations: the (empty) settle window is over.
    let now = Instant::now();
    let mut session1 = session(&shared, &alices, now);
    let mut session2 = session(&shared, &watcher, now);
    let alice = user("alice");
    let presence = |server: Option<u32>, candidates: Vec<_>| Control::Presence {
        user: user("alice"),
        server: server.map(ServerId),
        candidates,
    };

    session2.handle_control(Control::Watch { users: vec![alice.clone()] }, now).unwrap();
    session1.handle_control(Control::Login { users: vec![alice.clone()] }, now).unwrap();
    assert_eq!(controls(watcher.batches()), [presence(None, vec![]), presence(Some(1), vec![])]);

    let set = |candidates| Control::Candidates { user: user("alice"), candidates };
    let first = vec![candidate("203.0.113.7:5000"), candidate("192.168.1.2:5000")];
    session1.handle_control(set(first.clone()), now).unwrap();
    assert_eq!(controls(watcher.batches()), [presence(Some(1), first.clone())]);
    session1.handle_control(set(first.clone()), now).unwrap();
    assert!(watcher.batches().is_empty(), "the same list is no change");

    session2.handle_control(Control::Locate { token: 9, user: alice.clone() }, now).unwrap();
    let located = Control::Located { token: 9, server: Some(ServerId(1)), candidates: first };
    assert_eq!(controls(watcher.batches()), [located]);

    session1.handle_control(Control::Logout { users: vec![alice.clone()] }, now).unwrap();
    assert_eq!(controls(watcher.batches()), [presence(None, vec![])]);
    assert_eq!(shared.registry.sessions_with_candidates(), 0);
    // Candidates that a logout overtook name no session: not kept.
    session1.handle_control(set(vec![candidate("203.0.113.7:5001")]), now).unwrap();
    assert_eq!(shared.registry.sessions_with_candidates(), 0);
    assert!(watcher.batches().is_empty());
}

#[test]
fn with_several_sessions_each_has_its_own_candidates_and_the_last_logins_are_reported() {
    let shared = hub(HubConfig {
        settle: Duration::ZERO,
        login_conflict: crate::config::LoginConflict::Multi,
        ..HubConfig::default()
    });
    let now = Instant::now();
    let (first, second) = (register(&shared, 1), register(&shared, 2));
    let mut watcher = register(&shared, 3);
    let mut sessions = [&first, &second, &watcher].map(|server| session(&shared, server, now));
    let alice = user("alice");
    let set = |candidates| Control::Candidates { user: user("alice"), candidates };
    let (on_first, on_second) = (vec![candidate("10.0.0.1:1")], vec![candidate("10.0.0.2:2")]);

    sessions[0].handle_control(Control::Login { users: vec![alice.clone()] }, now).unwrap();
    sessions[0].handle_control(set(on_first.clone()), now).unwrap();
    sessions[1].handle_control(Control::Login { users: vec![alice.clone()] }, now).unwrap();
    sessions[1].handle_control(set(on_second.clone()), now).unwrap();
    assert_eq!(shared.registry.reach("alice"), Some((ServerId(2), on_second)));
    sessions[2].handle_control(Control::Watch { users: vec![alice.clone()] }, now).unwrap();
    watcher.batches();

    // A change on the session that is not reported is kept, not pushed.
    let changed = vec![candidate("10.0.0.1:3")];
    sessions[0].handle_control(set(changed.clone()), now).unwrap();
    assert!(watcher.batches().is_empty());
    // The reported session leaves: the user's place moves to the other, with its candidates.
    sessions[1].handle_control(Control::Logout { users: vec![alice.clone()] }, now).unwrap();
    let moved = Control::Presence { user: alice, server: Some(ServerId(1)), candidates: changed };
    assert_eq!(controls(watcher.batches()), [moved]);
    assert_eq!(shared.registry.sessions_with_candidates(), 1);
}

#[test]
fn an_invitation_is_relayed_like_a_message_and_comes_back_for_a_user_online_nowhere() {
    let shared = settled_hub();
    let mut origin = register(&shared, 1);
    let mut bobs = register(&shared, 2);
    shared.registry.login(bobs.id, user("bob"));
    let template = unicast(&origin, 1, "bob");
    let invitation = |seq, recipient: &str| Data {
        kind: DataKind::Invitation,
        seq,
        recipient: user(recipient),
        payload: Bytes::from(format!("payload {seq}")),
        ..template.clone()
    };
    let mut buf = encode([invitation(1, "bob"), invitation(2, "nobody")]);
    let mut relay = relay(&shared, &origin);
    relay_read(&mut relay, &mut buf, Instant::now());
    let to_bob = bobs.batches().concat();
    assert_eq!(to_bob, [Frame::Data(invitation(1, "bob"))], "byte for byte");
    let back = origin.batches().concat();
    let expected = Data { kind: DataKind::Undeliverable, ..invitation(2, "nobody") };
    assert_eq!(back, [Frame::Data(expected)]);
}

#[test]
fn too_many_candidates_close_the_connection_as_malformed() {
    let shared = settled_hub();
    let now = Instant::now();
    let server = register(&shared, 1);
    let mut session = session(&shared, &server, now);
    session.handle_control(Control::Login { users: vec![user("alice")] }, now).unwrap();
    let nine = (1..=9).map(|port| candidate(&format!("10.0.0.1:{port}"))).collect();
    let frame = Frame::Control(Control::Candidates { user: user("alice"), candidates: nine });
    let raw = RawFrame::from_bytes(frame.to_bytes(MAX_FRAME_LEN).unwrap()).unwrap();
    let Err(Close::Refused { code, reason }) = session.handle_frame(raw, now) else {
        panic!("refused")
    };
    assert_eq!(code, acms_protocol::ErrorCode::Malformed);
    assert!(reason.contains("more than 8 candidates"), "{reason}");
    assert_eq!(shared.registry.sessions_with_candidates(), 0);
}

/// A hub on a backplane whose replica places `bob` on server 9 of the live hub 2; and the queue
/// of what it publishes.
fn hub_beside_another() -> (Arc<HubState>, tokio::sync::mpsc::UnboundedReceiver<Outbound>) {
    let cluster = acms_common::discovery::ClusterName::new("test".to_owned()).unwrap();
    let (core, published) = Backplane::new(HubId(1), &cluster, Duration::from_secs(3), 64);
    let place = Place { hub: HubId(2), epoch: 1, registration: 1, client_addr: String::new() };
    core.replica.set_place(ServerId(9), place);
    core.replica.heard(HubId(2), Instant::now());
    core.replica.set_user(user("bob"), vec![crate::backplane::Session::on(ServerId(9))], 1);
    let config =
        HubConfig { settle: Duration::ZERO, max_frame_len: MAX_FRAME_LEN, ..Default::default() };
    (Arc::new(HubState::new(config, None).with_backplane(Arc::new(core))), published)
}

#[tokio::test]
async fn a_read_that_fills_the_window_of_a_server_on_another_hub_pauses_its_reader_until_credit() {
    let (shared, mut published) = hub_beside_another();
    let backplane = shared.backplane.clone().unwrap();
    let origin = register(&shared, 1);
    let frame_len = encode([unicast(&origin, 1, "bob")]).len();
    backplane.windows.set_limit(2 * frame_len);
    let mut relay = relay(&shared, &origin);
    let now = Instant::now();
    let read = |relay: &mut Relay, seqs: &[u64]| {
        relay_read(relay, &mut encode(seqs.iter().map(|&seq| unicast(&origin, seq, "bob"))), now);
        relay.take_paused()
    };
    assert!(read(&mut relay, &[1, 2]).is_empty(), "a full window is still open");
    let paused = read(&mut relay, &[3]);
    assert_eq!(paused.len(), 1, "past the window: the reader waits");
    assert_eq!(paused[0].0, ServerId(9));
    assert_eq!(backplane.stats().pauses, 1);
    // Everything read was published all the same: a pause drops nothing.
    for _ in 0..2 {
        assert_eq!(published.try_recv().map(|(hub, _)| hub).ok(), Some(HubId(2)));
    }
    backplane.windows.credit(ServerId(9), frame_len);
    assert!(paused[0].1.wait().await, "credit reopened the window");
    assert_eq!(read(&mut relay, &[4]).len(), 1, "past the window again by one frame");
    backplane.windows.credit(ServerId(9), 3 * frame_len);
    assert!(read(&mut relay, &[5]).is_empty(), "all credited: open");
}

//! The link's core driven without a socket: bytes in as the hub would send them, an explicit
//! clock, and the frames it writes decoded back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acms_protocol::{
    Ack, Codec, Control, Data, DataKind, Frame, GroupId, SeqRange, ServerEpoch, ServerId, UserId,
};
use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio_util::codec::Decoder;

use super::core::CoreError;
use super::{Command, LinkCore};
use crate::builder::ClusterBuilder;
use crate::events::{Event, Outcome, Receipt, UndeliverableReason};
use crate::reliable::{Epoch, Seq};
use crate::state::ServerState;

const ME: ServerId = ServerId(1);
const PEER: ServerId = ServerId(2);
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// A core of server 1, connected at `t0`, its first writes taken.
fn connected(t0: Instant) -> LinkCore {
    let config = ClusterBuilder::new(ME, "hub:1".into()).keepalive(INTERVAL, TIMEOUT);
    let mut core = LinkCore::new(&config, Epoch(7), Arc::new(ServerState::default()), t0);
    core.handle_connected().unwrap();
    core.start_clocks(t0);
    written(&mut core);
    core
}

/// Everything the core queued for the hub, decoded.
fn written(core: &mut LinkCore) -> Vec<Frame> {
    let out = core.transmit();
    let mut bytes = BytesMut::from(&out.copy_to_bytes(out.remaining())[..]);
    let mut codec = Codec::default();
    let mut frames = Vec::new();
    while let Some(raw) = codec.decode(&mut bytes).unwrap() {
        frames.push(raw.decode().unwrap());
    }
    assert!(bytes.is_empty(), "whole frames only");
    frames
}

/// The sequence numbers of the data frames among `frames`.
fn data_seqs(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::Data(data) => Some(data.seq),
            _ => None,
        })
        .collect()
}

fn unicast(from: &str, to: &str, payload: &'static str) -> Data {
    Data {
        kind: DataKind::Unicast,
        seq: 0,
        origin: ME,
        recipient: user(to),
        sender: user(from),
        payload: Bytes::from_static(payload.as_bytes()),
    }
}

/// Sends `count` messages through the hub, each with a receipt.
fn send(core: &mut LinkCore, count: usize) -> Vec<oneshot::Receiver<Outcome>> {
    let receipts = (0..count)
        .map(|_| {
            let (receipt, rx) = oneshot::channel();
            let data = unicast("al", "bo", "hi");
            core.handle_command(Command::Data { data, receipt: Some(receipt), here: false })
                .unwrap();
            rx
        })
        .collect();
    core.handle_commands_done().unwrap();
    receipts
}

/// Bytes as the hub would send them.
fn from_hub(frames: impl IntoIterator<Item = Frame>) -> BytesMut {
    let mut bytes = BytesMut::new();
    for frame in frames {
        frame.encode(1 << 20, &mut bytes).unwrap();
    }
    bytes
}

fn ack(from: ServerId, runs: &[(u64, u32)]) -> Frame {
    let ranges = runs.iter().map(|&(first, count)| SeqRange { first, count }).collect();
    Frame::Ack(Ack { to: ME, from, ranges })
}

#[test]
fn an_ack_in_runs_settles_exactly_the_numbers_it_names() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let mut receipts = send(&mut core, 8);
    let frame_len = written(&mut core)[0].to_bytes(1 << 20).unwrap().len();

    // Runs 2..=3 and 5, and one run far past anything sent.
    let mut input = from_hub([ack(PEER, &[(2, 2), (5, 1), (1_000, u32::MAX)])]);
    core.handle_input(&mut input, t0).unwrap();

    let settled: Vec<u64> =
        (1..=8u64).filter(|&seq| receipts[seq as usize - 1].try_recv().is_ok()).collect();
    assert_eq!(settled, [2, 3, 5], "exactly the numbers of the runs");
    assert_eq!(core.take_released(), 3 * frame_len, "their room, and only theirs, given back");
    for seq in [1, 4, 6, 7, 8] {
        assert!(core.unacked.contains(Seq(seq)), "{seq} still waits");
    }
    for seq in [2, 3, 5] {
        assert!(!core.unacked.contains(Seq(seq)), "{seq} forgotten");
    }
}

#[test]
fn a_frame_received_twice_is_delivered_once_and_acknowledged_twice() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let mut from_peer = unicast("bo", "al", "hello");
    from_peer.origin = PEER;
    from_peer.seq = 1;
    let servers = vec![ServerEpoch { id: PEER, epoch: 9 }];
    let mut input = from_hub([
        Frame::Control(Control::Servers { servers }),
        Frame::Data(from_peer.clone()),
        Frame::Data(from_peer.clone()),
    ]);
    core.handle_input(&mut input, t0).unwrap();
    let events = core.poll_events().expect("one batch");
    assert_eq!(
        events,
        [Event::Message { from: user("bo"), to: user("al"), payload: from_peer.payload.clone() }]
    );
    assert!(written(&mut core).is_empty(), "no ack before the app has the message");
    core.handle_events_taken();
    let acks: Vec<u64> = written(&mut core)
        .into_iter()
        .flat_map(|frame| match frame {
            Frame::Ack(ack) => ack.ranges.into_iter().flat_map(SeqRange::seqs).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(acks, [1, 1], "the duplicate is acknowledged too, so its origin forgets it");

    // Sent again after a reconnect: still a duplicate.
    core.handle_connected().unwrap();
    written(&mut core);
    let mut input = from_hub([Frame::Data(from_peer)]);
    core.handle_input(&mut input, t0).unwrap();
    assert_eq!(core.poll_events(), None);
}

#[test]
fn after_a_reconnect_everything_unanswered_is_sent_again_in_order_after_the_snapshot() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    core.state.users.login(&user("al"), usize::MAX).unwrap();
    send(&mut core, 6);
    let mut input = from_hub([ack(PEER, &[(2, 1), (4, 1)])]);
    core.handle_input(&mut input, t0).unwrap();
    // The connection died with these written into it, or not: either way they are lost.
    written(&mut core);

    core.handle_connected().unwrap();
    let frames = written(&mut core);
    let done = frames
        .iter()
        .position(|frame| matches!(frame, Frame::Control(Control::SnapshotDone)))
        .expect("a snapshot");
    assert_eq!(
        frames[0],
        Frame::Control(Control::Login { users: vec![user("al")] }),
        "the user set first"
    );
    assert_eq!(data_seqs(&frames[..done]), Vec::<u64>::new(), "no data before the snapshot");
    assert_eq!(data_seqs(&frames[done..]), [1, 3, 5, 6], "every frame unanswered, in order");

    // A server that came back: `Resent` first, then the frames, oldest first.
    let server = ServerEpoch { id: PEER, epoch: 9 };
    let mut input = from_hub([Frame::Control(Control::ServerUp { server, resend_from: Some(0) })]);
    core.handle_input(&mut input, t0).unwrap();
    let frames = written(&mut core);
    assert_eq!(frames[0], Frame::Control(Control::Resent { server: PEER }));
    assert_eq!(data_seqs(&frames[1..]), [1, 3, 5, 6]);
}

#[tokio::test]
async fn receipts_resolve_delivered_offline_or_timed_out() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let mut receipts = send(&mut core, 3).into_iter();
    let frames = written(&mut core);
    let Some(Frame::Data(second)) = frames.get(1).cloned() else { panic!("{frames:?}") };

    // 1 acknowledged; 2 returned by the hub, its recipient online nowhere; 3 never answered.
    let mut undeliverable = second.clone();
    undeliverable.kind = DataKind::Undeliverable;
    let mut input = from_hub([ack(PEER, &[(1, 1)]), Frame::Data(undeliverable.clone())]);
    core.handle_input(&mut input, t0).unwrap();
    // Returned twice after a resend: the app hears of it once.
    let mut input = from_hub([Frame::Data(undeliverable)]);
    core.handle_input(&mut input, t0).unwrap();

    let outcome = |rx| Receipt::waiting(rx).outcome(Duration::ZERO);
    assert_eq!(outcome(receipts.next().unwrap()).await, Outcome::Delivered { sessions: 1 });
    assert_eq!(outcome(receipts.next().unwrap()).await, Outcome::Offline);
    let events = core.poll_events().unwrap();
    assert_eq!(
        events,
        [Event::Undeliverable {
            from: user("al"),
            to: user("bo"),
            payload: second.payload,
            reason: UndeliverableReason::Offline,
            invitation: false,
        }]
    );
    let third = receipts.next().unwrap();
    assert_eq!(Receipt::waiting(third).outcome(Duration::from_millis(20)).await, Outcome::TimedOut);
    assert!(core.unacked.contains(Seq(3)), "timed out, not given up: still kept to resend");
}

#[test]
fn a_kick_takes_the_user_out_and_tells_the_app_and_the_hub() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let al = user("al");
    let version = core.state.users.login(&al, usize::MAX).unwrap().unwrap();
    core.handle_command(Command::Login(al.clone(), version)).unwrap();
    written(&mut core);

    let reason = "logged in elsewhere".to_owned();
    let kick = Control::Kick { user: al.clone(), reason: reason.clone() };
    let mut input = from_hub([Frame::Control(kick.clone())]);
    core.handle_input(&mut input, t0).unwrap();
    assert!(!core.state.users.contains("al"), "out of the local users");
    assert_eq!(core.poll_events().unwrap(), [Event::Kicked { user: al.clone(), reason }]);
    assert_eq!(written(&mut core), [Frame::Control(Control::Logout { users: vec![al.clone()] })]);
    assert!(core.state.users.digest_if_told().is_some(), "the hub was told: digests agree");

    // Sent again (a resync claimed the user): nothing left to kick.
    let mut input = from_hub([Frame::Control(kick)]);
    core.handle_input(&mut input, t0).unwrap();
    assert_eq!(core.poll_events(), None);
    assert!(written(&mut core).is_empty());
}

#[test]
fn a_kicked_user_leaves_their_groups_and_the_hub_hears_of_the_emptied_ones() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let (al, bo) = (user("al"), user("bo"));
    let (lobby, duo) = (GroupId::new("lobby").unwrap(), GroupId::new("duo").unwrap());
    for who in [&al, &bo] {
        let version = core.state.users.login(who, usize::MAX).unwrap().unwrap();
        core.handle_command(Command::Login(who.clone(), version)).unwrap();
    }
    core.state.groups().join(&lobby, &al);
    core.state.groups().join(&duo, &al);
    core.state.groups().join(&duo, &bo);
    written(&mut core);

    let kick = Control::Kick { user: al.clone(), reason: "logged in elsewhere".to_owned() };
    core.handle_input(&mut from_hub([Frame::Control(kick)]), t0).unwrap();
    // A kicked user is gone as a logged-out one is: a group message is not fanned out to them,
    // and a group they alone had here is left, so the hub stops sending its traffic here.
    assert!(core.state.groups().groups_of("al").is_empty(), "out of every group");
    assert_eq!(core.state.groups().members("duo", None), [bo]);
    assert_eq!(
        written(&mut core),
        [
            Frame::Control(Control::Logout { users: vec![al] }),
            Frame::Control(Control::Leave { groups: vec![lobby] }),
        ]
    );
}

#[test]
fn a_quiet_link_pings_after_the_interval_and_dies_after_the_timeout() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    assert_eq!(core.poll_timeout(), t0 + INTERVAL, "the first deadline is the ping");
    core.handle_timeout(t0 + INTERVAL - Duration::from_millis(1)).unwrap();
    assert!(written(&mut core).is_empty(), "nothing before the interval");
    core.handle_timeout(t0 + INTERVAL).unwrap();
    assert!(matches!(written(&mut core)[..], [Frame::Control(Control::Ping { .. })]));
    assert_eq!(core.poll_timeout(), t0 + 2 * INTERVAL);

    // A byte read pushes the dead line on.
    let pong = Frame::Control(Control::Pong { token: 1 });
    core.handle_input(&mut from_hub([pong]), t0 + 2 * INTERVAL).unwrap();
    core.handle_timeout(t0 + TIMEOUT).unwrap();
    written(&mut core);
    let dead = t0 + 2 * INTERVAL + TIMEOUT;
    core.handle_timeout(dead - Duration::from_millis(1)).unwrap();
    assert!(matches!(core.handle_timeout(dead), Err(CoreError::Silent(after)) if after == TIMEOUT));

    // The deadlines count from when the new connection's snapshot was written, however long
    // that took.
    let mut core = connected(t0);
    core.handle_connected().unwrap();
    core.start_clocks(t0 + 10 * TIMEOUT);
    assert_eq!(core.poll_timeout(), t0 + 10 * TIMEOUT + INTERVAL);

    // Bytes that were waiting when the process woke past the dead line are not handed on.
    let mut core = connected(t0);
    let mut from_peer = unicast("bo", "al", "late");
    from_peer.origin = PEER;
    from_peer.seq = 1;
    let mut input = from_hub([Frame::Data(from_peer)]);
    assert!(matches!(core.handle_input(&mut input, t0 + TIMEOUT), Err(CoreError::Silent(_))));
    assert_eq!(core.poll_events(), None);
}

#[test]
fn encoded_batches_are_numbered_in_place_and_kept_for_resending() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    send(&mut core, 1);
    let mut batch = BytesMut::new();
    for payload in ["a", "b", "c"] {
        Frame::Data(unicast("al", "bo", payload)).encode(1 << 20, &mut batch).unwrap();
    }
    core.handle_command(Command::Encoded(batch)).unwrap();
    core.handle_commands_done().unwrap();
    assert_eq!(data_seqs(&written(&mut core)), [1, 2, 3, 4]);
    core.handle_connected().unwrap();
    assert_eq!(data_seqs(&written(&mut core)), [1, 2, 3, 4]);
}

fn candidates() -> Vec<acms_protocol::Candidate> {
    vec![acms_protocol::Candidate {
        addr: "203.0.113.7:5000".parse().unwrap(),
        kind: acms_protocol::CandidateKind::Reflexive,
    }]
}

#[test]
fn candidates_go_to_the_hub_when_set_and_with_every_snapshot_until_the_user_leaves() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let al = user("al");
    core.state.users.login(&al, usize::MAX).unwrap();
    core.state.users.set_candidates(&al, candidates()).unwrap();
    core.handle_command(Command::Candidates(al.clone())).unwrap();
    let set = Frame::Control(Control::Candidates { user: al.clone(), candidates: candidates() });
    assert_eq!(written(&mut core), std::slice::from_ref(&set));

    // A new hub hears them after the user set, before the snapshot is done.
    core.handle_connected().unwrap();
    let frames = written(&mut core);
    let login = Frame::Control(Control::Login { users: vec![al.clone()] });
    assert_eq!(frames[..2], [login, set]);
    assert!(frames[2..].contains(&Frame::Control(Control::SnapshotDone)));

    // Gone with the user: a change queued before the logout sends nothing, nor does a snapshot.
    core.state.users.logout(&al).unwrap();
    core.handle_command(Command::Candidates(al.clone())).unwrap();
    assert!(written(&mut core).is_empty());
    core.handle_connected().unwrap();
    let frames = written(&mut core);
    let sent_candidates =
        frames.iter().any(|frame| matches!(frame, Frame::Control(Control::Candidates { .. })));
    assert!(!sent_candidates, "{frames:?}");
    assert_eq!(core.state.users.set_candidates(&al, candidates()), Err(crate::users::NotHere));
}

#[test]
fn located_answers_a_reach_with_the_candidates() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let (answer, mut rx) = oneshot::channel();
    core.handle_command(Command::Locate(user("bo"), answer)).unwrap();
    let [Frame::Control(Control::Locate { token, user: asked })] = &written(&mut core)[..] else {
        panic!("one Locate")
    };
    assert_eq!(asked, &user("bo"));
    let located = Control::Located { token: *token, server: Some(PEER), candidates: candidates() };
    core.handle_input(&mut from_hub([Frame::Control(located)]), t0).unwrap();
    let reach = rx.try_recv().unwrap().expect("online");
    assert_eq!((reach.server, reach.candidates), (PEER, candidates()));
}

#[test]
fn an_invitation_is_handed_over_once_and_one_that_comes_back_says_so() {
    let t0 = Instant::now();
    let mut core = connected(t0);
    let mut invitation = unicast("bo", "al", "punch");
    invitation.kind = DataKind::Invitation;
    invitation.origin = PEER;
    invitation.seq = 1;
    let servers = vec![ServerEpoch { id: PEER, epoch: 9 }];
    let mut input = from_hub([
        Frame::Control(Control::Servers { servers }),
        Frame::Data(invitation.clone()),
        Frame::Data(invitation.clone()),
    ]);
    core.handle_input(&mut input, t0).unwrap();
    let expected = Event::Invitation { from: user("bo"), to: user("al"), payload: "punch".into() };
    assert_eq!(core.poll_events().unwrap(), [expected]);

    // One sent from here, and a message after it, both returned: only the first is marked.
    let mut mine = unicast("al", "cy", "punch back");
    mine.kind = DataKind::Invitation;
    core.handle_command(Command::Data { data: mine, receipt: None, here: false }).unwrap();
    core.handle_command(Command::Data {
        data: unicast("al", "cy", "hi"),
        receipt: None,
        here: false,
    })
    .unwrap();
    core.handle_commands_done().unwrap();
    let returned: Vec<Frame> = written(&mut core)
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Data(mut data) => {
                data.kind = DataKind::Undeliverable;
                Some(Frame::Data(data))
            }
            _ => None,
        })
        .collect();
    core.handle_input(&mut from_hub(returned), t0).unwrap();
    let flags: Vec<(String, bool)> = core
        .poll_events()
        .unwrap()
        .into_iter()
        .map(|event| match event {
            Event::Undeliverable { payload, invitation, .. } => {
                (String::from_utf8(payload.to_vec()).unwrap(), invitation)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(flags, [("punch back".to_string(), true), ("hi".to_string(), false)]);
    assert!(core.invitations.is_empty(), "settled, forgotten");
}

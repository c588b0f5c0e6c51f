//! Unit tests of the backplane's core: its queue to NATS, holds, snapshots, epochs, load reports and
//! drift.

use super::*;

fn backplane(max_pending: usize) -> (Backplane, mpsc::UnboundedReceiver<Outbound>) {
    let cluster = ClusterName::new("test".to_owned()).unwrap();
    Backplane::new(HubId(1), &cluster, Duration::from_secs(3), max_pending)
}

#[test]
fn a_message_dropped_past_the_backlog_spends_its_number_so_the_receiver_sees_a_gap() {
    let (sender, mut queue) = backplane(1);
    let frames = [Bytes::from_static(b"f")];
    let taken = 1 + backlog::HEADROOM;
    for _ in 0..=taken {
        sender.send_frames(HubId(2), (ServerId(1), 1), &[], &frames);
    }
    assert_eq!(sender.counters.dropped.load(Ordering::Relaxed), 1, "the last found it all taken");
    // The receiving side; the publisher takes those queued.
    let (receiver, _queue) = backplane(1);
    for _ in 0..taken {
        let (to, message) = queue.try_recv().unwrap();
        assert_eq!(to, HubId(2));
        let message = Message::decode(message).unwrap();
        assert_eq!(receiver.arrive(message.from, message.seq), Arrival::InOrder);
        sender.backlog.left();
    }
    sender.send_frames(HubId(2), (ServerId(1), 1), &[], &frames);
    let next = Message::decode(queue.try_recv().unwrap().1).unwrap();
    let first_missing = taken as u64 + 1;
    assert_eq!(receiver.arrive(next.from, next.seq), Arrival::Gap { first_missing });
}

#[test]
fn held_pairs_pass_again_after_resent() {
    let (backplane, _queue) = backplane(1);
    assert!(!backplane.is_held(ServerId(1), ServerId(2)));
    backplane.hold(ServerId(1), ServerId(2));
    assert!(backplane.is_held(ServerId(1), ServerId(2)));
    assert!(!backplane.is_held(ServerId(2), ServerId(1)));
    backplane.release(ServerId(1), ServerId(2));
    assert!(!backplane.is_held(ServerId(1), ServerId(2)));
}

#[test]
fn frames_wait_for_a_snapshot_only_while_it_runs_and_their_hubs_are_told_once() {
    let (backplane, _queue) = backplane(1);
    let server = ServerId(11);
    assert!(!backplane.wait_for_snapshot(server, HubId(2)), "not registered here");
    backplane.snapshot_begins(server);
    assert!(backplane.wait_for_snapshot(server, HubId(2)));
    assert!(backplane.wait_for_snapshot(server, HubId(2)));
    assert!(backplane.wait_for_snapshot(server, HubId(3)));
    let mut hubs: Vec<HubId> = backplane.snapshot_done(server).into_iter().collect();
    hubs.sort();
    assert_eq!(hubs, vec![HubId(2), HubId(3)]);
    assert!(!backplane.wait_for_snapshot(server, HubId(2)), "done: the user is not there");
    assert!(backplane.snapshot_done(server).is_empty());
}

#[test]
fn a_remote_servers_report_shows_while_its_hub_lives_and_goes_with_it() {
    let (backplane, _queue) = backplane(1);
    let (hub, server) = (HubId(2), ServerId(11));
    let place = Place { hub, epoch: 1, registration: 1, client_addr: "a:1".into() };
    let report =
        ServerReport { id: server, connected: true, draining: false, since_ms: 5, load: None };
    // Before the directory places it there, a report is not kept.
    backplane.heard_reports(hub, 1, vec![report], Instant::now());
    backplane.replica.set_place(server, place);
    assert!(backplane.replica.heard(hub, Instant::now()));
    assert_eq!(backplane.remote_server_list()[0].report, None);
    backplane.heard_reports(hub, 1, vec![report], Instant::now());
    assert_eq!(backplane.remote_server_list()[0].report, Some(report));
    backplane.drained_remote(hub, server, Instant::now());
    let listed = backplane.remote_server_list()[0].report.unwrap();
    assert!(listed.draining && !listed.takes_clients());
    backplane.hub_dead(hub, Instant::now());
    assert_eq!(backplane.remote_server_list()[0].report, None, "dead: no report");
}

#[test]
fn drift_of_a_key_being_written_waits_and_repairs_are_counted() {
    let (backplane, _queue) = backplane(1);
    let alice = acms_protocol::UserId::new("alice").unwrap();
    let found = vec![Drift::UserOnline(alice, ServerId(1)), Drift::Server(ServerId(2))];
    assert!(backplane.confirm_drift(found.clone()).is_empty(), "a first sighting");
    // A write of alice's entry is owed meanwhile: its outcome decides, not the check.
    backplane.writes.owe(Bucket::Users, user_key("alice"), Write::Delete);
    assert_eq!(backplane.confirm_drift(found), vec![Drift::Server(ServerId(2))]);
    let repairs = backplane.stats().repairs;
    assert_eq!(repairs[0], ("server", 1));
    assert_eq!(repairs[1], ("user_online", 0));
}

#[test]
fn an_origin_epoch_is_told_once_and_again_after_a_restart() {
    let (backplane, _queue) = backplane(1);
    assert!(backplane.tell_epoch(ServerId(1), 10, HubId(2)));
    assert!(!backplane.tell_epoch(ServerId(1), 10, HubId(2)));
    assert!(backplane.tell_epoch(ServerId(1), 11, HubId(2)));
}

#[test]
fn an_entry_older_than_this_hubs_claim_is_stale_until_the_claim_comes_back() {
    let writes = Writes::default();
    assert!(!writes.is_stale(Bucket::Users, "bob", 5), "nothing claimed: nothing stale");
    writes.claimed_at(Bucket::Users, "bob", 7);
    // Another hub's entry of revision 6, which this hub's claim wrote over, comes first.
    assert!(writes.is_stale(Bucket::Users, "bob", 6));
    assert!(!writes.is_stale(Bucket::Users, "alice", 6), "per key");
    // The claim itself comes back: the wait is over, and later entries are judged.
    assert!(!writes.is_stale(Bucket::Users, "bob", 7));
    assert!(!writes.is_stale(Bucket::Users, "bob", 6));
}

#[test]
fn a_batch_cut_into_messages_carries_its_credit_list_on_the_last() {
    use acms_protocol::{Data, DataKind, Frame, UserId};

    let (sender, mut queue) = backplane(64);
    let frame = |seq| {
        let data = Data {
            kind: DataKind::Unicast,
            seq,
            origin: ServerId(1),
            recipient: UserId::new("bob").unwrap(),
            sender: UserId::new("al").unwrap(),
            payload: Bytes::from(vec![0; 6000]),
        };
        Frame::Data(data).to_bytes(1 << 20).unwrap()
    };
    // Three frames of about 6 KiB: two messages of at most 16 KiB.
    let chunks = [frame(1), frame(2), frame(3)];
    let counted = [(ServerId(7), 18_000), (ServerId(8), 10)];
    sender.send_frames(HubId(2), (ServerId(1), 1), &counted, &chunks);
    let mut lists = Vec::new();
    while let Ok((_, message)) = queue.try_recv() {
        match Message::decode(message).unwrap().body {
            Body::Frames { counted, .. } => lists.push(counted),
            other => panic!("not frames: {other:?}"),
        }
    }
    assert_eq!(lists, vec![vec![], counted.to_vec()], "credited once, with the last part");
}

#[test]
fn an_ack_goes_back_the_way_its_origin_s_frames_came_until_the_directory_places_it() {
    let (backplane, _queue) = backplane(1);
    let origin = ServerId(10);
    assert_eq!(backplane.ack_hub(origin), None, "never heard of");
    // Its first frames came from hub 2 before its directory entry did.
    backplane.tell_epoch(origin, 1, HubId(2));
    assert_eq!(backplane.ack_hub(origin), Some(HubId(2)));
    // The directory's place wins once it is there.
    let place = Place { hub: HubId(3), epoch: 1, registration: 1, client_addr: "a:1".into() };
    backplane.replica.set_place(origin, place);
    assert_eq!(backplane.ack_hub(origin), Some(HubId(3)));
}

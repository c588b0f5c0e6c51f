//! Frames another hub relayed to this one, handed to the servers here: each unicast to its
//! recipient's sessions here, each fan-out frame to the servers the origin counts on, acks to
//! their targets; runs of adjacent frames for one server as one slice; what is for nobody here
//! back as undeliverable; the bytes credited back to the sending hub (`backplane::flow`).

use std::time::Instant;

use acms_protocol::{Ack, Control, DataKind, FrameKind, RawFrame, ServerEpoch, ServerId};
use bytes::Bytes;
use tracing::{debug, warn};

use crate::backplane::{Backplane, HubId};
use crate::forwarded::Marks;
use crate::outbox::Outbox;
use crate::registry::{RelayError, Relayed};
use crate::state::HubState;

/// What one message from another hub hands to one server here: spans of the message, each a
/// run of adjacent frames, so a burst to one server costs one slice and one iovec (as a run
/// does on the relay's own path), not one per frame.
struct Staged {
    target: ServerId,
    spans: Vec<std::ops::Range<usize>>,
    lowest: Option<u64>,
    /// Data frames among them (acks are not counted).
    count: usize,
}

impl Staged {
    fn new(target: ServerId, span: std::ops::Range<usize>, seq: Option<u64>) -> Self {
        let count = usize::from(seq.is_some());
        Self { target, spans: vec![span], lowest: seq, count }
    }

    /// Adds the frame at `span`, extending the last run if it ends where the frame starts.
    fn add(&mut self, span: std::ops::Range<usize>, seq: Option<u64>) {
        match self.spans.last_mut() {
            Some(last) if last.end == span.start => last.end = span.end,
            _ => self.spans.push(span),
        }
        self.lowest = match (self.lowest, seq) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.count += usize::from(seq.is_some());
    }
}

/// Frames of the server `origin` on `hub`, for servers of this hub: handed to each by the same
/// registry call as a local relay's, in order; those for nobody here go back as undeliverable.
/// The bytes `hub` counted against each server's credit window (`counted`, see
/// `backplane::flow`) are credited back, except for a server above its high water: returned
/// if its queue is not watched yet, for the credit to follow once it drains.
pub(super) fn deliver(
    shared: &HubState,
    core: &Backplane,
    hub: HubId,
    (origin, epoch): (ServerId, u64),
    counted: &[(ServerId, u32)],
    frames: Bytes,
) -> Vec<(ServerId, Outbox)> {
    let local_origin = shared.registry.is_registered(origin);
    if !local_origin && core.tell_epoch(origin, epoch, hub) {
        // The servers here learn the origin's process before its frames: a restarted origin
        // numbers from 1 again.
        let up = ServerEpoch { id: origin, epoch };
        let frame = shared.control_frame(Control::ServerUp { server: up, resend_from: None });
        for peer in shared.registry.peers(origin) {
            let _closing = shared.send_frame(peer.id, frame.clone());
        }
    }
    let mut staged: Vec<Staged> = Vec::new();
    let mut back: Vec<RawFrame> = Vec::new();
    // The servers here the frame at hand goes to: one list for the whole message, cleared per
    // frame, so a frame costs no allocation.
    let mut targets: Vec<ServerId> = Vec::new();
    let mut rest = frames.clone();
    while !rest.is_empty() {
        let start = frames.len() - rest.len();
        let frame = match RawFrame::split_first(&mut rest) {
            Ok(frame) => frame,
            Err(err) => {
                warn!(error = %err, %hub, "malformed frames from a hub; the rest of its message is dropped");
                break;
            }
        };
        let Ok(kind) = frame.kind() else { continue };
        let len = frames.len() - rest.len() - start;
        targets.clear();
        let seq = match kind {
            // An invitation (a P2P offer or answer) goes as a message does.
            FrameKind::Data(DataKind::Unicast | DataKind::Refused | DataKind::Invitation) => {
                let Ok(route) = frame.route() else { continue };
                if route.origin != origin {
                    warn!(%hub, claimed = %route.origin, %origin, "frame of another origin in a hub's batch; dropped");
                    continue;
                }
                if let Some(owner) = shared.registry.route(route.recipient) {
                    sessions_of(shared, core, route.recipient, owner, &mut targets);
                } else {
                    let placed = core.replica.user(route.recipient);
                    if placed.is_some_and(|server| core.has_moved(server)) {
                        // Late, for a server that moved from here: its origin sends it again
                        // there.
                        shared.stats.held(1);
                    } else if let Some(server) =
                        placed.filter(|&server| core.wait_for_snapshot(server, hub))
                    {
                        // For a user of a server that registered here and has not finished its
                        // snapshot (it moved here a moment ago): not bounced, since the user is
                        // about to be here. Dropped, and the origin's later frames to that
                        // server too until its `Resent`, so nothing overtakes it; its hub has
                        // its servers send again once the snapshot is done.
                        shared.registry.block(server, origin);
                        shared.stats.held(1);
                    } else {
                        back.push(frame);
                    }
                    continue;
                }
                Some(route.seq)
            }
            FrameKind::Data(DataKind::Undeliverable) => {
                // Bounced by another hub: back to its origin, here.
                let _away = shared.send_frame(origin, frame.into_bytes());
                continue;
            }
            FrameKind::Data(
                kind @ (DataKind::Broadcast | DataKind::BroadcastExceptSender | DataKind::Server),
            ) => {
                // One copy for this hub: one for each of its servers the origin counts on.
                let Ok(route) = frame.route() else { continue };
                if route.origin != origin {
                    continue;
                }
                match (kind, route.target_server()) {
                    (DataKind::Server, Some(target)) => {
                        if shared.registry.is_registered(target) {
                            targets.push(target);
                        }
                    }
                    _ => targets.extend(shared.registry.server_ids(origin)),
                }
                Some(route.seq)
            }
            FrameKind::Ack => {
                let Ok((target, from)) = Ack::route(frame.body()) else { continue };
                if from != origin || !shared.registry.is_registered(target) {
                    // For nobody here: its origin sends again and gets new acks.
                    continue;
                }
                targets.push(target);
                None
            }
            FrameKind::Data(DataKind::Group | DataKind::GroupExceptSender) => {
                // One copy for this hub: one for each of its servers with members, and for those
                // that left lately, which an origin whose hub had not seen it yet waits on.
                let Ok(route) = frame.route() else { continue };
                if route.origin != origin {
                    continue;
                }
                targets.extend(shared.groups.servers_of(route.recipient, origin));
                let listed = core.interest.listed(route.recipient, core.me);
                let left = core.interest.recently_left(route.recipient, Instant::now());
                for listed in listed.into_iter().chain(left) {
                    if !targets.contains(&listed) && shared.registry.is_registered(listed) {
                        targets.push(listed);
                    }
                }
                Some(route.seq)
            }
            _ => {
                debug!(%hub, "a frame of a kind no hub relays to another; dropped");
                continue;
            }
        };
        let span = start..start + len;
        for &target in &targets {
            match staged.iter_mut().find(|entry| entry.target == target) {
                Some(entry) => entry.add(span.clone(), seq),
                None => staged.push(Staged::new(target, span.clone(), seq)),
            }
        }
    }
    // What the origin handed each connection here is recorded there, as for a local origin:
    // if the connection breaks with these frames in its queue, the origin is asked to send them
    // again. (Without it, frames of an origin on another hub that died in a broken connection's
    // queue were never sent again, and its later frames overtook them.)
    let mut marks = Marks::default();
    for Staged { target, spans, lowest, count } in staged {
        let chunks: Vec<Bytes> = spans.into_iter().map(|span| frames.slice(span)).collect();
        let len: usize = chunks.iter().map(Bytes::len).sum();
        match shared.registry.relay_batch(origin, target, lowest, chunks, Some(&mut marks)) {
            Ok(Relayed::Queued(_)) => shared.stats.relayed(count, len),
            Ok(Relayed::Held) => shared.stats.held(count),
            Err(RelayError::Gone(_)) if core.has_moved(target) => shared.stats.held(count),
            Err(RelayError::Gone(chunks)) => {
                for chunk in chunks {
                    if let Ok(frame) = RawFrame::from_bytes(chunk) {
                        back.push(frame);
                    }
                }
            }
            Err(RelayError::SlowConsumer { pending }) => {
                shared.stats.held(count);
                shared.count_slow_consumer(Some(target), pending);
            }
        }
    }
    let backed_up = credit(shared, core, hub, counted);
    let back: Vec<Bytes> = back
        .into_iter()
        .filter(|frame| {
            matches!(
                frame.kind(),
                Ok(FrameKind::Data(DataKind::Unicast | DataKind::Refused | DataKind::Invitation))
            )
        })
        .filter_map(|frame| frame.with_data_kind(DataKind::Undeliverable).ok())
        .map(RawFrame::into_bytes)
        .collect();
    if !back.is_empty() {
        for _ in &back {
            shared.stats.undeliverable();
        }
        core.send_frames(hub, (origin, epoch), &[], &back);
    }
    backed_up
}

/// Credits `hub` with the bytes it `counted` against servers here, now that its message is
/// handed over: at once for a server under its high water, or one not here (its frames went
/// back or were dropped); withheld for one above it, until it drains. Returns the servers
/// whose queue is to be watched for that.
fn credit(
    shared: &HubState,
    core: &Backplane,
    hub: HubId,
    counted: &[(ServerId, u32)],
) -> Vec<(ServerId, Outbox)> {
    let mut backed_up = Vec::new();
    for &(target, bytes) in counted {
        let bytes = bytes as usize;
        if bytes == 0 {
            continue;
        }
        match shared.registry.outbox(target).filter(Outbox::above_high_water) {
            Some(outbox) => {
                if core.credits.withhold(hub, target, bytes) {
                    backed_up.push((target, outbox));
                }
            }
            None => {
                if let Some(credit) = core.credits.passed(hub, target, bytes) {
                    core.send_credit(hub, target, credit);
                }
            }
        }
    }
    backed_up
}

/// Adds to `targets` the servers here a unicast frame for `recipient`, whose last login here is
/// `owner`, goes to: under `multi`, every session of theirs here (the origin's hub sent this hub
/// one copy for all), and the servers here the directory still lists for them (a logout on the
/// way: the origin waits for their acks).
fn sessions_of(
    shared: &HubState,
    core: &Backplane,
    recipient: &str,
    owner: crate::registry::Owner,
    targets: &mut Vec<ServerId>,
) {
    let registry = &shared.registry;
    if !registry.multi() {
        targets.push(owner.server);
        return;
    }
    targets.extend(registry.sessions(recipient));
    for server in core.replica.sessions(recipient) {
        if !targets.contains(&server) && registry.is_registered(server) {
            targets.push(server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_frames_for_one_server_make_one_span() {
        let mut staged = Staged::new(ServerId(1), 0..10, Some(5));
        staged.add(10..25, Some(3));
        staged.add(25..30, None);
        // A frame skipped between (for nobody here) breaks the run.
        staged.add(40..50, Some(9));
        assert_eq!(staged.spans, vec![0..30, 40..50]);
        assert_eq!((staged.lowest, staged.count), (Some(3), 3), "acks are not counted");
    }
}

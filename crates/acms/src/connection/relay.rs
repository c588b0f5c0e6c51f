//! The relay core: what becomes of the frames of one socket read. Synchronous, with no socket
//! and no clock of its own (it is told the instant of the read), so a unit test drives it over a
//! byte buffer.
//!
//! Every whole frame is routed where it lies in the read buffer by its header, through the
//! directory: consecutive frames for the same destination stay in the buffer until the run ends,
//! then leave it as one slice, so a burst to one server costs one reference count and one iovec
//! rather than one per frame; the payload is never copied. Runs are staged by destination, and
//! [`Relay::flush`] hands each destination its frames of the read as one batch. A control frame
//! stops the walk: what was read before it is handed over first, then it is returned, for the
//! session to handle.

use std::sync::Arc;
use std::time::Instant;

use acms_protocol::{
    Ack, Codec, Control, DataKind, ErrorCode, FrameKind, LENGTH_PREFIX_LEN, RawFrame, Route,
    ServerId, UserId,
};
use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::{Close, OwnQueue};
use crate::backplane::{HubId, Pause, Remote};
use crate::forwarded::Marks;
use crate::outbox::Outbox;
use crate::registry::{RelayError, Relayed};
use crate::state::HubState;
use crate::stats::FanOut;

/// The relay of one registered server's frames.
pub(super) struct Relay {
    shared: Arc<HubState>,
    /// The server whose frames these are.
    server: ServerId,
    /// Its own queue: `Copies` and frames bounced as undeliverable go back on it.
    own: OwnQueue,
    codec: Codec,
    /// Consecutive frames at the start of the read buffer bound for one server.
    run: Run,
    /// Relayed frames of the current read, by destination, not yet handed over.
    staged: Vec<Staged>,
    /// Destinations above their high water after the last hand-over: the shell reads nothing
    /// until they drain.
    backed_up: Vec<(ServerId, Outbox)>,
    /// Bytes of frames staged for each server of another hub (and that hub), counted against
    /// its credit window when they are handed over, and listed in the message to that hub for
    /// its credit.
    remote: Vec<(HubId, ServerId, usize)>,
    /// Servers of other hubs whose window the hand-overs so far shut: the shell reads nothing
    /// until credit reopens them (pushback across hubs).
    paused: Vec<(ServerId, Arc<Pause>)>,
    /// Whether the hand-overs so far published to other hubs.
    fed_backplane: bool,
    /// The instant of the current read.
    read_at: Instant,
    /// What this AS forwarded to each destination's connection, as recorded there.
    marks: Marks,
    /// A frame of this AS for a user nobody had yet was dropped in the settle window: its
    /// sequence number. Every later frame is dropped too until the AS sends again from there
    /// (its stream goes back to a number no greater), so nothing overtakes the dropped frame.
    holding_from: Option<u64>,
    /// Policy `multi` and the settle window may still be open: unicast frames are held in it.
    /// Cleared the first time the window is found closed, so later frames pay one test.
    multi_settling: bool,
    /// The epoch of this server's process, sent with its frames to other hubs.
    epoch: u64,
}

/// Where a run of frames goes: a server of this hub, or another hub on the backplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Server(ServerId),
    Hub(HubId),
}

/// What becomes of a frame for a recipient this hub does not have, by the backplane.
enum Beyond {
    /// To this hub, where the server `.1` has the recipient.
    Hub(HubId, ServerId),
    /// Dropped: its origin sends it again once the recipient's server is reachable.
    Drop,
}

/// Frames routed to one server that still lie at the start of the read buffer.
#[derive(Debug, Default)]
struct Run {
    target: Option<Dest>,
    /// Bytes of the run, length prefixes included.
    len: usize,
    /// Data frames in the run; acks are not counted.
    frames: usize,
    /// Lowest sequence number of its data frames (acks have none). Usually the first, but an
    /// origin sending again goes back to a lower number within one read.
    lowest_seq: Option<u64>,
}

impl Run {
    /// Adds a data frame with its sequence number, or an ack without one.
    fn extend(&mut self, target: Dest, len: usize, seq: Option<u64>) {
        self.target = Some(target);
        self.len += len;
        self.frames += usize::from(seq.is_some());
        self.lowest_seq = lowest(self.lowest_seq, seq);
    }
}

/// The lower of two optional sequence numbers.
#[inline]
fn lowest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Frames of one read handed to one server together: slices of the read buffer, in order.
#[derive(Debug)]
struct Staged {
    target: Dest,
    chunks: Vec<Bytes>,
    frames: usize,
    lowest_seq: Option<u64>,
}

/// Refuses a frame that names another server as its sender: a server speaks only for itself.
fn claimed_by(server: ServerId, claimed: ServerId, what: &str) -> Result<(), Close> {
    if claimed == server {
        return Ok(());
    }
    Err(Close::refused(
        ErrorCode::Malformed,
        format!("{what} claims origin {claimed} on server {server}'s connection"),
    ))
}

impl Relay {
    /// The relay of `server`'s frames, answering on its queue `own`.
    pub(super) fn new(
        shared: Arc<HubState>,
        server: ServerId,
        own: OwnQueue,
        codec: Codec,
    ) -> Self {
        let multi_settling = shared.registry.multi();
        let epoch = shared.registry.epoch(server).unwrap_or_default();
        Self {
            shared,
            server,
            own,
            codec,
            run: Run::default(),
            staged: Vec::new(),
            backed_up: Vec::new(),
            remote: Vec::new(),
            paused: Vec::new(),
            fed_backplane: false,
            read_at: Instant::now(),
            marks: Marks::default(),
            holding_from: None,
            multi_settling,
            epoch,
        }
    }

    /// Routes the whole frames in `buf`, read at `now`, up to the first control frame, which is
    /// returned (decoded from the buffer) once everything before it was handed over; `None` when
    /// only part of a frame, or nothing, is left. The routed frames leave the buffer, staged for
    /// [`Relay::flush`].
    pub(super) fn handle_read(
        &mut self,
        buf: &mut BytesMut,
        now: Instant,
    ) -> Result<Option<RawFrame>, Close> {
        self.read_at = now;
        let result = self.route(buf, now);
        // Whatever ended the walk, the frames already routed are staged.
        self.end_run(buf);
        result
    }

    /// Hands each destination the frames staged for it, as one batch.
    pub(super) fn flush(&mut self) -> Result<(), Close> {
        let mut result = Ok(());
        let origin = self.server;
        for Staged { target, chunks, frames, lowest_seq } in std::mem::take(&mut self.staged) {
            let shared = &self.shared;
            let target = match target {
                Dest::Server(target) => target,
                Dest::Hub(hub) => {
                    if let Some(backplane) = &shared.backplane {
                        let bytes: usize = chunks.iter().map(Bytes::len).sum();
                        let counted: Vec<(ServerId, u32)> = (self.remote.iter())
                            .filter(|(on, ..)| *on == hub)
                            .map(|&(_, target, len)| {
                                (target, u32::try_from(len).unwrap_or(u32::MAX))
                            })
                            .collect();
                        backplane.send_frames(hub, (origin, self.epoch), &counted, &chunks);
                        shared.stats.relayed(frames, bytes);
                        self.fed_backplane = true;
                    }
                    continue;
                }
            };
            let bytes: usize = chunks.iter().map(Bytes::len).sum();
            let marks = Some(&mut self.marks);
            match shared.registry.relay_batch(origin, target, lowest_seq, chunks, marks) {
                Ok(Relayed::Queued(backed_up)) => {
                    shared.stats.relayed(frames, bytes);
                    self.backed_up.extend(backed_up.map(|outbox| (target, outbox)));
                }
                Ok(Relayed::Held) => shared.stats.held(frames),
                Err(RelayError::Gone(chunks)) => result = result.and(self.bounce(&chunks)),
                Err(RelayError::SlowConsumer { pending }) => {
                    // The registry closed the server's queue as it refused the batch.
                    shared.stats.held(frames);
                    shared.count_slow_consumer(Some(target), pending);
                }
            }
        }
        self.count_remote();
        result
    }

    /// Counts the frames just published for servers of other hubs against their credit
    /// windows; those it shuts are waited on before the next read.
    fn count_remote(&mut self) {
        if self.remote.is_empty() {
            return;
        }
        let Some(backplane) = &self.shared.backplane else { return };
        let now = self.read_at;
        let until = now + crate::backplane::pause_limit(self.shared.config.max_stall);
        for (_, target, bytes) in self.remote.drain(..) {
            if let Some(pause) = backplane.windows.sent(target, bytes, now, until)
                && !self.paused.iter().any(|(id, _)| *id == target)
            {
                backplane.counters.pauses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.paused.push((target, pause));
            }
        }
    }

    /// The destinations left above their high water by the hand-overs so far: the shell waits
    /// for each to drain before it reads again (pushback).
    pub(super) fn take_backed_up(&mut self) -> Vec<(ServerId, Outbox)> {
        std::mem::take(&mut self.backed_up)
    }

    /// Whether the hand-overs since the last call published to other hubs: the shell then
    /// waits while the queue to NATS is full (`backplane::backlog`).
    pub(super) fn take_fed_backplane(&mut self) -> bool {
        std::mem::take(&mut self.fed_backplane)
    }

    /// The servers of other hubs whose credit window the hand-overs since the last call shut:
    /// the shell waits for each to reopen (or for the pause's deadline) before it reads again.
    pub(super) fn take_paused(&mut self) -> Vec<(ServerId, Arc<Pause>)> {
        std::mem::take(&mut self.paused)
    }

    /// Notes `len` bytes of a frame staged for `target`, a server of the hub `hub`.
    fn note_remote(&mut self, hub: HubId, target: ServerId, len: usize) {
        match self.remote.iter_mut().find(|(_, id, _)| *id == target) {
            Some((_, _, bytes)) => *bytes += len,
            None => self.remote.push((hub, target, len)),
        }
    }

    fn route(&mut self, buf: &mut BytesMut, now: Instant) -> Result<Option<RawFrame>, Close> {
        let server = self.server;
        while let Some(len) = self.codec.whole_frame_len(&buf[self.run.len..])? {
            let start = self.run.len;
            let frame = &buf[start..start + len];
            let body = &frame[LENGTH_PREFIX_LEN..];
            match FrameKind::from_tag(body[0])? {
                // A refused message goes back to its sender exactly as a message goes to its
                // recipient: the recipient field names them. An invitation goes as a message.
                FrameKind::Data(DataKind::Unicast | DataKind::Refused | DataKind::Invitation) => {
                    let route = Route::parse(body)?;
                    claimed_by(server, route.origin, "frame")?;
                    let seq = route.seq;
                    match self.holding_from {
                        Some(from) if seq > from => {
                            self.end_run(buf);
                            self.shared.stats.held(1);
                            buf.advance(len);
                            continue;
                        }
                        Some(_) => self.holding_from = None,
                        None => {}
                    }
                    // Policy `multi`, in the settle window: the user may have sessions on servers
                    // that have not sent their snapshot yet, so the frame waits, like a group's.
                    if self.multi_settling {
                        if self.shared.registry.hold_unclaimed(server, seq, now) {
                            self.end_run(buf);
                            self.holding_from = Some(seq);
                            self.shared.stats.held(1);
                            buf.advance(len);
                            continue;
                        }
                        self.multi_settling = false;
                    }
                    // Policy `multi` on a backplane: sessions on other hubs' servers too.
                    if let Some(targets) = self.sessions_across_hubs(route.recipient) {
                        self.end_run(buf);
                        let frame = buf.split_to(len).freeze();
                        self.stage_copies(frame, seq, targets)?;
                        continue;
                    }
                    let target = match self.shared.registry.route(route.recipient) {
                        // Rare: a user online on several AS (policy `multi`).
                        Some(owner) if owner.multi => {
                            let targets = self.shared.registry.sessions(route.recipient);
                            if targets.len() > 1 {
                                self.end_run(buf);
                                let frame = buf.split_to(len).freeze();
                                self.stage_copies(frame, seq, targets)?;
                                continue;
                            }
                            targets.first().copied()
                        }
                        owner => owner.map(|owner| owner.server),
                    };
                    if target == Some(server) && self.shared.registry.multi() {
                        // Policy `multi`: the origin sent a message for its own user through the
                        // hub, thinking them multi-session; their only session is here now. It gets the
                        // frame back (and does not deliver it twice) and learns they are not.
                        if let Ok(user) = UserId::new(route.recipient) {
                            self.shared.tell_multi_session(server, user, false);
                        }
                    }
                    let target = match target {
                        Some(target) => Some(Dest::Server(target)),
                        None => match self.beyond(route.recipient) {
                            Some(Beyond::Hub(hub, target)) => {
                                self.note_remote(hub, target, len);
                                Some(Dest::Hub(hub))
                            }
                            Some(Beyond::Drop) => {
                                self.end_run(buf);
                                self.shared.stats.held(1);
                                buf.advance(len);
                                continue;
                            }
                            None => None,
                        },
                    };
                    if target.is_none() || target != self.run.target {
                        self.end_run(buf);
                    }
                    match target {
                        Some(target) => self.run.extend(target, len, Some(seq)),
                        None if self.shared.registry.hold_unclaimed(server, seq, now) => {
                            self.holding_from = Some(seq);
                            self.shared.stats.held(1);
                            buf.advance(len);
                        }
                        None => {
                            let frame = buf.split_to(len).freeze();
                            self.bounce(&[frame])?;
                        }
                    }
                }
                FrameKind::Data(kind) if kind.fans_out() => self.fan_out(buf, len, now)?,
                FrameKind::Ack => {
                    let (target, from) = Ack::route(body)?;
                    claimed_by(server, from, "ack")?;
                    if target == ServerId::HUB {
                        // Acks of the hub's own pushes end here.
                        self.end_run(buf);
                        let ack = Ack::decode(&buf[LENGTH_PREFIX_LEN..len])?;
                        self.shared.pushes.acked(&ack);
                        buf.advance(len);
                        continue;
                    }
                    let target = match self.ack_dest(target) {
                        Some(target) => target,
                        None => {
                            // For a server no hub has: its origin sends again and gets new acks.
                            self.end_run(buf);
                            buf.advance(len);
                            continue;
                        }
                    };
                    if Some(target) != self.run.target {
                        self.end_run(buf);
                    }
                    self.run.extend(target, len, None);
                }
                _ => {
                    // What this AS sent before a control message is handed over before its
                    // effects: a `Login` that kicks a user elsewhere must not overtake the
                    // messages for that user read with it.
                    self.end_run(buf);
                    self.flush()?;
                    let raw = self.codec.decode(buf)?.expect("a whole frame");
                    return Ok(Some(raw));
                }
            }
        }
        Ok(None)
    }

    /// Takes the current run of frames out of the read buffer and stages it for its destination.
    fn end_run(&mut self, buf: &mut BytesMut) {
        let Run { target: Some(target), len, frames, lowest_seq } = std::mem::take(&mut self.run)
        else {
            return;
        };
        let chunk = buf.split_to(len).freeze();
        self.stage(target, chunk, frames, lowest_seq);
    }

    /// Where a frame for `user`, whom no server of this hub has, goes on the backplane; `None`
    /// when no hub has them (or there is no backplane).
    fn beyond(&self, user: &str) -> Option<Beyond> {
        let backplane = self.shared.backplane.as_ref()?;
        let origin = self.server;
        match backplane.replica.route_user(user) {
            (Remote::Hub(hub), Some(target)) if !backplane.is_held(origin, target) => {
                Some(Beyond::Hub(hub, target))
            }
            (Remote::Hub(_), Some(_)) => Some(Beyond::Drop),
            (Remote::Moving, Some(target)) => {
                // Lost with the hub, or moving: sent again when the server is back somewhere,
                // and nothing later may overtake it.
                backplane.hold(origin, target);
                Some(Beyond::Drop)
            }
            _ => None,
        }
    }

    /// Where an ack for `target` goes: its connection here, the hub it is on, or nowhere.
    fn ack_dest(&self, target: ServerId) -> Option<Dest> {
        let Some(backplane) = &self.shared.backplane else {
            return Some(Dest::Server(target));
        };
        if self.shared.registry.is_registered(target) {
            return Some(Dest::Server(target));
        }
        backplane.ack_hub(target).map(Dest::Hub)
    }

    /// Adds whole frames to what is handed to `target` after this read, after what it has already.
    fn stage(&mut self, target: Dest, chunk: Bytes, frames: usize, lowest_seq: Option<u64>) {
        match self.staged.iter_mut().find(|staged| staged.target == target) {
            Some(staged) => {
                staged.chunks.push(chunk);
                staged.frames += frames;
                staged.lowest_seq = lowest(staged.lowest_seq, lowest_seq);
            }
            None => self.staged.push(Staged { target, chunks: vec![chunk], frames, lowest_seq }),
        }
    }

    /// Policy `multi` on a backplane: every server with a session of `user`, here and on other
    /// hubs, when there are several and one is on another hub; `None` otherwise (the frame takes
    /// the one-hub path). Servers here are the registry's; a server of another hub is listed while
    /// the directory places it on a hub (a dead one's copy is held until it is back).
    fn sessions_across_hubs(&self, user: &str) -> Option<Vec<ServerId>> {
        let backplane = self.shared.backplane.as_ref()?;
        let registry = &self.shared.registry;
        // Most users have no session on another hub: known without allocating.
        if !registry.multi() || !backplane.replica.any_session(user, |s| !registry.is_registered(s))
        {
            return None;
        }
        let remote = backplane.replica.sessions(user);
        let mut remote = remote.into_iter().filter(|&server| {
            !registry.is_registered(server)
                && !matches!(backplane.replica.route_server(server), Remote::Nowhere)
        });
        let first = remote.next()?;
        let mut targets = registry.sessions(user);
        for server in std::iter::once(first).chain(remote) {
            if !targets.contains(&server) {
                targets.push(server);
            }
        }
        (targets.len() > 1).then_some(targets)
    }

    /// Stages one data frame for each of several AS, as the same bytes: the recipient has a
    /// session on each (policy `multi`); one copy per other hub, which hands it to each of its
    /// servers with a session. The origin is told `Copies`, as for group fan-out, on
    /// its own queue before any copy is handed over, so it keeps the frame until every one of
    /// those AS acknowledged it (docs/RELIABILITY.md, "Several sessions"). An origin with a
    /// session of the user delivered it there itself: it gets no copy.
    fn stage_copies(
        &mut self,
        frame: Bytes,
        seq: u64,
        mut targets: Vec<ServerId>,
    ) -> Result<(), Close> {
        let origin = self.server;
        targets.retain(|&target| target != origin);
        self.stage_per_hub(&frame, seq, &targets);
        self.own.send(Control::Copies { seq, servers: targets })
    }

    /// Forwards the group, broadcast or server frame of `len` bytes at the start of the unrouted
    /// buffer to each server that needs it, as the same bytes, in order with the origin's other
    /// frames to that server; and tells the origin which servers those are (`Copies`), so that it
    /// keeps the frame until each has acknowledged it. The origin is never among them: it serves
    /// its own users.
    ///
    /// In the settle window after a hub start the hub cannot know every member or server yet, as
    /// some may not have sent their snapshot: the frame is held like a unicast frame for a user
    /// nobody has, and its origin sends it again when the directory is complete.
    fn fan_out(&mut self, buf: &mut BytesMut, len: usize, now: Instant) -> Result<(), Close> {
        self.end_run(buf);
        let server = self.server;
        let route = Route::parse(&buf[LENGTH_PREFIX_LEN..len])?;
        claimed_by(server, route.origin, "frame")?;
        let seq = route.seq;
        match self.holding_from {
            Some(from) if seq > from => {
                self.shared.stats.held(1);
                buf.advance(len);
                return Ok(());
            }
            Some(_) => self.holding_from = None,
            None => {}
        }
        let registry = &self.shared.registry;
        // On a backplane, broadcast and server frames reach the servers of other hubs too.
        let remote = || self.remote_servers();
        let (counter, targets) = match route.kind {
            DataKind::Group | DataKind::GroupExceptSender => {
                let here = self.shared.groups.servers_of(route.recipient, server);
                (FanOut::Group, [here, self.remote_group_servers(route.recipient)].concat())
            }
            DataKind::Server => match route.target_server() {
                Some(target) if target == server => (FanOut::Server, Vec::new()),
                Some(target) if !registry.is_registered(target) => {
                    let remote = remote().into_iter().filter(|&other| other == target);
                    (FanOut::Server, remote.collect())
                }
                Some(target) => (FanOut::Server, vec![target]),
                None => (FanOut::Server, [registry.server_ids(server), remote()].concat()),
            },
            _ => (FanOut::Broadcast, [registry.server_ids(server), remote()].concat()),
        };
        // A server message for a server known now needs nobody else's snapshot.
        let known = route.kind == DataKind::Server
            && !targets.is_empty()
            && route.target_server().is_some();
        if !known && registry.hold_unclaimed(server, seq, now) {
            self.holding_from = Some(seq);
            self.shared.stats.held(1);
            buf.advance(len);
            return Ok(());
        }
        let frame = buf.split_to(len).freeze();
        self.stage_per_hub(&frame, seq, &targets);
        self.shared.stats.fanned_out(counter, targets.len());
        self.own.send(Control::Copies { seq, servers: targets })
    }

    /// Stages `frame` once for each of `targets` here and once for each other hub with some of
    /// them (that hub hands one to each of its servers); none for a target whose hub is dead (held,
    /// sent again once the server is back somewhere).
    ///
    /// Each copy a server of another hub gets counts against that server's credit window
    /// (`backplane::flow`), as a unicast frame for it does: its hub credits it back per server
    /// it was counted for.
    fn stage_per_hub(&mut self, frame: &Bytes, seq: u64, targets: &[ServerId]) {
        let mut hubs: Vec<HubId> = Vec::new();
        for &target in targets {
            let dest = self.fan_out_dest(target);
            if let Some(Dest::Hub(hub)) = dest {
                self.note_remote(hub, target, frame.len());
            }
            match dest {
                Some(Dest::Hub(hub)) if hubs.contains(&hub) => {}
                Some(Dest::Hub(hub)) => {
                    hubs.push(hub);
                    self.stage(Dest::Hub(hub), frame.clone(), 1, Some(seq));
                }
                Some(dest) => self.stage(dest, frame.clone(), 1, Some(seq)),
                None => {}
            }
        }
    }

    /// The servers of other hubs, on a backplane: those of live hubs, and those whose hub died
    /// (their copy is held until they register again, or they leave the cluster).
    fn remote_servers(&self) -> Vec<ServerId> {
        let Some(backplane) = &self.shared.backplane else { return Vec::new() };
        let registry = &self.shared.registry;
        let remote = backplane.replica.remote_servers().into_iter().map(|(id, _)| id);
        remote.filter(|&id| id != self.server && !registry.is_registered(id)).collect()
    }

    /// The servers of other hubs with members of `group`, on a backplane (one copy goes to
    /// each of their hubs, which hands one to each).
    fn remote_group_servers(&self, group: &str) -> Vec<ServerId> {
        let Some(backplane) = &self.shared.backplane else { return Vec::new() };
        let mut remote = backplane.group_servers_remote(group);
        remote.retain(|&id| id != self.server && !self.shared.registry.is_registered(id));
        remote
    }

    /// Where a fan-out copy for `target` goes: its connection here, or its hub; `None` when it
    /// is held (its hub is dead: sent again when it registers elsewhere).
    fn fan_out_dest(&self, target: ServerId) -> Option<Dest> {
        let Some(backplane) = &self.shared.backplane else {
            return Some(Dest::Server(target));
        };
        if self.shared.registry.is_registered(target) {
            return Some(Dest::Server(target));
        }
        match backplane.replica.route_server(target) {
            Remote::Hub(hub) if !backplane.is_held(self.server, target) => Some(Dest::Hub(hub)),
            _ => {
                backplane.hold(self.server, target);
                None
            }
        }
    }

    /// Returns unicast (refused, invitation) frames to this AS as undeliverable; each chunk holds whole
    /// frames. Acks among them are dropped: their origin sends its frames again and gets new ones.
    fn bounce(&mut self, chunks: &[Bytes]) -> Result<(), Close> {
        let mut back = Vec::new();
        for chunk in chunks {
            let mut chunk = chunk.clone();
            while !chunk.is_empty() {
                let frame = RawFrame::split_first(&mut chunk)?;
                if matches!(
                    frame.kind()?,
                    FrameKind::Data(DataKind::Unicast | DataKind::Refused | DataKind::Invitation)
                ) {
                    self.shared.stats.undeliverable();
                    back.push(frame.with_data_kind(DataKind::Undeliverable)?.into_bytes());
                }
            }
        }
        if back.is_empty() {
            return Ok(());
        }
        self.own.push_batch(back)
    }
}

//! What the link's core does with each frame read from the hub: data frames become the app's
//! events (once each), acks and answers settle what was sent, control messages change the
//! link's view of the cluster.

use acms_protocol::{
    Ack, Control, DataKind, FrameKind, GroupId, LENGTH_PREFIX_LEN, ProtocolError, RawFrame,
    Refusal, UserId,
};
use tracing::{debug, info, warn};

use super::core::{CoreError, LinkCore};
use crate::events::{Event, Outcome, Reach, UndeliverableReason};
use crate::groups::Awaited;
use crate::reliable::{Epoch, Seq};

impl LinkCore {
    /// Handles one frame from the hub; the app's events it makes go to `events`.
    pub(super) fn handle_frame(
        &mut self,
        raw: RawFrame,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        match raw.kind()? {
            FrameKind::Data(kind @ (DataKind::Unicast | DataKind::Invitation)) => {
                let route = raw.route()?;
                let seq = Seq(route.seq);
                if self.received.receive(route.origin, seq)
                    && !(route.origin == self.server_id
                        && !self.delivered_here.is_empty()
                        && self.delivered_here.contains(&seq))
                {
                    events.push(self.event(&raw, kind)?);
                }
            }
            FrameKind::Data(DataKind::Undeliverable) => {
                let seq = Seq(raw.route()?.seq);
                let refusal = !self.refusals.is_empty() && self.refusals.contains(&seq);
                let invitation = !self.invitations.is_empty() && self.invitations.contains(&seq);
                // A frame sent again may come back twice: the app hears of it once.
                if self.settle(seq, Outcome::Offline) {
                    if refusal {
                        let route = raw.route()?;
                        warn!(
                            sender = route.recipient,
                            recipient = route.sender,
                            "a message refused here cannot go back: its sender is online nowhere"
                        );
                    } else {
                        let mut event = self.event(&raw, DataKind::Undeliverable)?;
                        if let Event::Undeliverable { invitation: flag, .. } = &mut event {
                            *flag = invitation;
                        }
                        events.push(event);
                    }
                }
            }
            FrameKind::Data(DataKind::Refused) => {
                let route = raw.route()?;
                if self.received.receive(route.origin, Seq(route.seq)) {
                    match refused_event(&raw) {
                        Ok(event) => events.push(event),
                        // Acknowledged all the same: sent again, it would be as bad.
                        Err(err) => warn!(
                            origin = %route.origin,
                            error = %err,
                            "a refused message came back malformed; dropped"
                        ),
                    }
                }
            }
            FrameKind::Data(kind) if kind.fans_out() => {
                let route = raw.route()?;
                if self.received.receive(route.origin, Seq(route.seq))
                    && let Some(event) = self.fanned_out_event(&raw)?
                {
                    events.push(event);
                }
            }
            FrameKind::Data(_) => {
                return Err(CoreError::Unexpected("a data kind only sent to the hub"));
            }
            FrameKind::Ack => self.handle_ack(&Ack::decode(raw.body())?),
            FrameKind::Control => {
                self.handle_control(Control::decode(&raw.body()[1..])?, events)?;
            }
        }
        Ok(())
    }

    /// Settles what an ack covers of the frames still waiting.
    fn handle_ack(&mut self, ack: &Ack) {
        // Runs the peer chose: walked only where they cover frames still waiting here (group,
        // broadcast and server frames in `awaited` wait there too), each once.
        let next_seq = self.next_seq().0;
        if let Some(range) = ack.beyond(next_seq) {
            warn!(
                from = %ack.from,
                first = range.first,
                count = range.count,
                next_seq,
                "ack names numbers this server never sent; only those outstanding count"
            );
        }
        let covered = ack.covered(self.unacked.outstanding());
        for range in covered {
            for seq in range.map(Seq) {
                // A number answered already costs one look at its slot, no more.
                if !self.unacked.contains(seq) {
                    continue;
                }
                if !self.awaited.is_empty()
                    && let Some(awaited) = self.awaited.get_mut(&seq)
                {
                    awaited.ack(ack.from);
                    self.settle_if_reached(seq);
                    continue;
                }
                // Delivered here too, and relayed by the hub to one other session.
                let also_here = !self.delivered_here.is_empty()
                    && ack.from != self.server_id
                    && self.delivered_here.contains(&seq);
                self.settle(seq, Outcome::Delivered { sessions: 1 + u32::from(also_here) });
            }
        }
    }

    fn handle_control(
        &mut self,
        control: Control,
        events: &mut Vec<Event>,
    ) -> Result<(), CoreError> {
        match control {
            Control::Pong { token } => {
                while self.flushes.front().is_some_and(|(waiting, _)| *waiting <= token) {
                    if let Some((_, done)) = self.flushes.pop_front() {
                        let _ = done.send(());
                    }
                }
            }
            Control::Ping { token } => self.encode(Control::Pong { token })?,
            Control::Servers { servers } => {
                self.live.clear();
                for server in servers {
                    self.received.epoch(server.id, Epoch(server.epoch));
                    self.live.insert(server.id);
                }
            }
            Control::ServerUp { server, resend_from } => {
                self.received.epoch(server.id, Epoch(server.epoch));
                self.live.insert(server.id);
                if let Some(from) = resend_from {
                    debug!(server = %server.id, from, "sending again what the hub held");
                    self.encode(Control::Resent { server: server.id })?;
                    self.resend(Seq(from));
                }
            }
            Control::Resend { from } => {
                debug!(from, "sending again what the hub held");
                self.resend(Seq(from));
            }
            Control::Copies { seq, servers } => {
                let seq = Seq(seq);
                if let Some(awaited) = self.awaited.get_mut(&seq) {
                    awaited.copies(servers, &self.live);
                    self.settle_if_reached(seq);
                } else if self.unacked.contains(seq) {
                    // A unicast frame the hub copied to each server with a session of its
                    // recipient (policy `multi`): it now waits for all of them, not the first
                    // ack. None of their acks can have settled it already: the hub queues this
                    // `Copies` on this connection before it hands any copy over, and an ack
                    // travels target -> hub -> this same connection, behind it. (Acks owed from
                    // a server's previous connection, which could overtake it, are forgotten
                    // when that server reconnects.)
                    let mut awaited = Awaited::unicast(self.delivered_here.contains(&seq));
                    awaited.copies(servers, &self.live);
                    self.awaited.insert(seq, awaited);
                    self.settle_if_reached(seq);
                }
            }
            Control::MultiSession { user, elsewhere } => {
                // Only for a user still here: one who left since needs nothing.
                if self.state.users.set_multi_session(user.clone(), elsewhere) {
                    debug!(%user, elsewhere, "user's sessions on other servers");
                }
            }
            Control::ServerDown { server } => {
                debug!(%server, "server left the cluster");
                self.live.remove(&server);
                let mut reached = Vec::new();
                for (&seq, awaited) in &mut self.awaited {
                    awaited.server_down(server);
                    reached.extend(awaited.reached().map(|_| seq));
                }
                for seq in reached {
                    self.settle_if_reached(seq);
                }
            }
            Control::Resync => {
                info!(users = self.state.users.len(), "hub asked for this server's users again");
                self.encode_snapshot()?;
                self.encode(Control::SnapshotDone)?;
            }
            Control::Located { token, server, candidates } => {
                if let Some((_, answer)) = self.locates.remove(&token) {
                    let _ = answer.send(server.map(|server| Reach { server, candidates }));
                }
            }
            Control::Presence { user, server, candidates } => {
                events.push(Event::Presence { user, server, candidates });
            }
            Control::Kick { user, reason } => self.handle_kick(user, reason, events)?,
            Control::Drain { target } => {
                info!(?target, "the hub drains this server");
                events.push(Event::Drain { target });
            }
            Control::Error { code, message } => return Err(CoreError::Refused { code, message }),
            _ => return Err(CoreError::Unexpected("handshake or login message")),
        }
        Ok(())
    }

    /// Settles a group, broadcast or server frame, or a unicast frame copied to several
    /// servers, once every server it went to acknowledged it.
    fn settle_if_reached(&mut self, seq: Seq) {
        if let Some(outcome) = self.awaited.get(&seq).and_then(Awaited::outcome) {
            self.settle(seq, outcome);
        }
    }

    /// The app's event of a group, broadcast or server frame from another server: for the local
    /// members it is for, if any.
    fn fanned_out_event(&mut self, raw: &RawFrame) -> Result<Option<Event>, ProtocolError> {
        let route = raw.route()?;
        let payload = raw.as_bytes().slice(LENGTH_PREFIX_LEN + route.payload_offset..);
        let except = route.kind.excludes_sender().then_some(route.sender);
        let event = match route.kind {
            DataKind::Server => {
                return Ok(Some(Event::ServerMessage { from: route.origin, payload }));
            }
            DataKind::Group | DataKind::GroupExceptSender => {
                let to = self.state.groups().members(route.recipient, except);
                if to.is_empty() {
                    return Ok(None);
                }
                let group = GroupId::new(route.recipient)?;
                Event::GroupMessage { group, from: UserId::new(route.sender)?, to, payload }
            }
            _ => {
                let to = self.state.users.all_but(except);
                if to.is_empty() {
                    return Ok(None);
                }
                Event::Broadcast { from: UserId::new(route.sender)?, to, payload }
            }
        };
        Ok(Some(event))
    }

    /// Makes the app's event of a data frame, sharing the ids it already holds.
    fn event(&mut self, raw: &RawFrame, kind: DataKind) -> Result<Event, ProtocolError> {
        let route = raw.route()?;
        let payload = raw.as_bytes().slice(LENGTH_PREFIX_LEN + route.payload_offset..);
        let (local, remote) = match kind {
            DataKind::Undeliverable => (route.sender, route.recipient),
            _ => (route.recipient, route.sender),
        };
        let local = UserId::new(local)?;
        let remote = match &self.last_sender {
            Some(user) if user.as_str() == remote => user.clone(),
            _ => {
                let user = UserId::new(remote)?;
                self.last_sender = Some(user.clone());
                user
            }
        };
        Ok(match kind {
            DataKind::Undeliverable => Event::Undeliverable {
                from: local,
                to: remote,
                payload,
                reason: UndeliverableReason::Offline,
                invitation: false,
            },
            DataKind::Invitation => Event::Invitation { from: remote, to: local, payload },
            _ => Event::Message { from: remote, to: local, payload },
        })
    }
}

/// The app's event of a message refused by its recipient's server: the recipient field names
/// the original sender (a user of this server), the sender field whom it was for.
fn refused_event(raw: &RawFrame) -> Result<Event, ProtocolError> {
    let route = raw.route()?;
    let payload = raw.as_bytes().slice(LENGTH_PREFIX_LEN + route.payload_offset..);
    let Refusal { reason, payload } = Refusal::decode(&payload)?;
    Ok(Event::Undeliverable {
        from: UserId::new(route.recipient)?,
        to: UserId::new(route.sender)?,
        payload,
        reason: UndeliverableReason::Refused(reason),
        invitation: false,
    })
}

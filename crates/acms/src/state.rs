//! The hub's state, shared by every connection, and the effects that reach beyond one connection:
//! the control frames the hub sends to other servers (kick, server down, resend, server up, the
//! multi-session notice) and the slow-consumer rule that guards every one of them.
//!
//! Every control frame for a server goes through [`HubState::send_control`] (or, encoded once
//! for several servers, [`HubState::send_frame`]): a queue past its limit closes that server's
//! connection and is counted, here and nowhere else. A connection answering its own server
//! queues on its own outbox and ends itself instead, and the relay closes a full queue under the
//! registry's lock so that the frames it holds are recorded at once; both count through
//! [`HubState::count_slow_consumer`], so the figure and the log line have one home too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use acms_protocol::{Candidate, Control, Frame, ServerEpoch, ServerId, UserId};
use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::warn;

use crate::backplane::Backplane;
use crate::config::HubConfig;
use crate::groups::Groups;
use crate::outbox::{Outbox, PushError};
use crate::push::Pushes;
use crate::registry::{Left, Peer, Registry};
use crate::standby::Standby;
use crate::stats::{RelayMetrics, Stats};
use crate::tls::ServerTls;
use crate::watches::Watches;

/// What every connection of a hub shares.
#[derive(Debug)]
pub(crate) struct HubState {
    pub(crate) config: HubConfig,
    pub(crate) registry: Registry,
    pub(crate) groups: Groups,
    pub(crate) stats: Stats,
    pub(crate) tls: Option<ServerTls>,
    pub(crate) standby: Standby,
    pub(crate) watches: Watches,
    pub(crate) pushes: Pushes,
    pub(crate) metrics: RelayMetrics,
    /// The peer hubs' status links open now, at most `max_peer_links`.
    pub(crate) peer_links: Arc<Semaphore>,
    /// The NATS backplane this hub shares with other active hubs, if it runs on one.
    pub(crate) backplane: Option<Arc<Backplane>>,
}

/// Why a control frame was not queued for a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotSent {
    /// The server is not connected now (gone, away, or its connection is closing).
    #[error("the server is not connected")]
    Away,
    /// The server's queue was past its limit: it is being disconnected.
    #[error("the server's queue is full ({pending} bytes pending): disconnected")]
    SlowConsumer {
        /// Bytes waiting when the frame was refused.
        pending: usize,
    },
}

impl HubState {
    /// A hub's state with no servers and no users yet.
    pub(crate) fn new(config: HubConfig, tls: Option<ServerTls>) -> Self {
        let registry = Registry::new(config.settle).with_login_conflict(config.login_conflict);
        let standby = if config.discovers_peers() {
            Standby::discovering(config.keepalive_timeout)
        } else {
            Standby::new(config.peers.clone(), config.keepalive_timeout)
        };
        let peer_links = Arc::new(Semaphore::new(config.max_peer_links));
        Self {
            config,
            registry,
            groups: Groups::default(),
            stats: Stats::default(),
            tls,
            standby,
            watches: Watches::default(),
            pushes: Pushes::default(),
            metrics: RelayMetrics::default(),
            peer_links,
            backplane: None,
        }
    }

    /// The same state on a backplane.
    pub(crate) fn with_backplane(mut self, backplane: Arc<Backplane>) -> Self {
        let config = &self.config;
        let window = crate::backplane::window(config.high_water_bytes, config.max_pending_bytes);
        backplane.windows.set_limit(window);
        self.groups.share_with(backplane.clone());
        self.backplane = Some(backplane);
        self
    }

    /// The server `user` is online on: here, or on a live hub of the backplane (their last
    /// login there).
    pub(crate) fn locate(&self, user: &str) -> Option<ServerId> {
        self.registry.locate(user).or_else(|| {
            let backplane = self.backplane.as_ref()?;
            match backplane.replica.route_user(user) {
                (crate::backplane::Remote::Hub(_), server) => server,
                _ => None,
            }
        })
    }

    /// Where `user` is and the P2P candidates of that session: here, or on another hub of a
    /// backplane, as the shared directory has them.
    pub(crate) fn reach(&self, user: &str) -> Option<(ServerId, Vec<Candidate>)> {
        self.registry
            .reach(user)
            .or_else(|| self.locate(user).map(|server| (server, self.candidates(user, server))))
    }

    /// The candidates of `user`'s session on `server`, a server of this hub or of another.
    pub(crate) fn candidates(&self, user: &str, server: ServerId) -> Vec<Candidate> {
        match &self.backplane {
            Some(backplane) if !self.registry.is_registered(server) => {
                backplane.replica.candidates(user, server)
            }
            _ => self.registry.candidates(user, server),
        }
    }

    /// Whether `user` has a session on another hub's server, as the shared directory says: the
    /// servers here with a session of theirs must send their messages to them through the hub.
    pub(crate) fn has_remote_sessions(&self, user: &str) -> bool {
        self.backplane.as_ref().is_some_and(|backplane| {
            backplane.has_remote_sessions(user, |server| self.registry.is_registered(server))
        })
    }

    /// Owes the shared directory what taking sessions off `server` changed, if `server` is
    /// registered here by the directory (one that moved to another hub is that hub's to write).
    pub(crate) fn left_directory(&self, server: ServerId, left: &Left) {
        let Some(backplane) = &self.backplane else { return };
        if !backplane.is_mine(server) {
            return;
        }
        for change in &left.moved {
            match change.server {
                None => backplane.user_offline(change.user.as_str(), server),
                Some(now) => backplane.user_online(change.user.as_str(), now),
            }
        }
    }

    /// A control frame as bytes; control frames the hub makes always fit its own limit.
    pub(crate) fn control_frame(&self, control: Control) -> Bytes {
        Frame::Control(control).to_bytes(self.config.max_frame_len).unwrap_or_default()
    }

    /// Queues `control` for `server`, never waiting; a server whose queue is full is
    /// disconnected and counted (the slow-consumer rule).
    pub(crate) fn send_control(&self, server: ServerId, control: Control) -> Result<(), NotSent> {
        self.send_frame(server, self.control_frame(control))
    }

    /// Queues a control frame already encoded (one frame for several servers) for `server`,
    /// under the same rule as [`HubState::send_control`].
    pub(crate) fn send_frame(&self, server: ServerId, frame: Bytes) -> Result<(), NotSent> {
        let outbox = self.registry.outbox(server).ok_or(NotSent::Away)?;
        self.push_frame(server, &outbox, frame)
    }

    /// Queues `frame` on `outbox`, the queue of `server`, applying the slow-consumer rule.
    fn push_frame(&self, server: ServerId, outbox: &Outbox, frame: Bytes) -> Result<(), NotSent> {
        match outbox.push(frame) {
            Ok(()) => Ok(()),
            Err(PushError::Closed) => Err(NotSent::Away),
            Err(PushError::Full { pending }) => {
                self.slow_consumer(server, pending);
                Err(NotSent::SlowConsumer { pending })
            }
        }
    }

    /// The slow-consumer rule: `server`, whose queue holds `pending` bytes and took no more (or
    /// did not drain in time), is disconnected, and counted. When it comes back it resyncs, and
    /// every server sends it again what it did not acknowledge, so nothing is lost for good.
    pub(crate) fn slow_consumer(&self, server: ServerId, pending: usize) {
        self.count_slow_consumer(Some(server), pending);
        self.registry.close(server);
    }

    /// The slow-consumer rule for a server that stayed above its high water for `max_stall`
    /// while senders waited for it: disconnected and counted like one whose queue is full.
    pub(crate) fn stalled(&self, server: ServerId, pending: usize, max_stall: Duration) {
        self.stats.slow_consumer();
        warn!(slow_server = %server, pending, ?max_stall, "slow consumer: did not drain in time; disconnecting it");
        self.registry.close(server);
    }

    /// Counts and logs one application of the slow-consumer rule, for callers that close the
    /// connection themselves: the relay (under the registry's lock) and a connection whose own
    /// queue is full (`server` is `None` before it registered).
    pub(crate) fn count_slow_consumer(&self, server: Option<ServerId>, pending: usize) {
        self.stats.slow_consumer();
        match server {
            Some(server) => {
                warn!(slow_server = %server, pending, "slow consumer: disconnecting it")
            }
            None => warn!(pending, "slow consumer: disconnecting it"),
        }
    }

    /// Tells `target` to end its session of `user`. If `target` cannot be told now (its
    /// connection is closing), its snapshot will claim the user when it comes back, and it is
    /// told then.
    pub(crate) fn kick(
        &self,
        target: ServerId,
        user: UserId,
        reason: String,
    ) -> Result<(), NotSent> {
        self.send_control(target, Control::Kick { user, reason })
    }

    /// Tells `server` whether its user `user` has sessions on other AS too (policy `multi`). An
    /// AS that cannot be told now is told again after its next snapshot, when it is.
    pub(crate) fn tell_multi_session(&self, server: ServerId, user: UserId, elsewhere: bool) {
        let _not_connected_now =
            self.send_control(server, Control::MultiSession { user, elsewhere });
    }

    /// A server left the cluster for good: its groups go, and the others are told, so that none
    /// waits any longer for its acknowledgement of a group, broadcast or server frame.
    pub(crate) fn server_down(&self, server: ServerId) {
        self.groups.remove_server(server);
        let frame = self.control_frame(Control::ServerDown { server });
        for peer in self.registry.peers(server) {
            // A peer that is closing learns the cluster anew when it registers again.
            let _closing = self.push_frame(peer.id, &peer.outbox, frame.clone());
        }
    }

    /// Asks each origin in `held` to send its frames again from the sequence number given: they
    /// now reach their recipients elsewhere, or come back undeliverable.
    pub(crate) fn ask_to_resend(&self, held: HashMap<ServerId, u64>) {
        for (origin, from) in held {
            // An origin that is away sends everything unacknowledged again when it returns.
            let _away = self.send_control(origin, Control::Resend { from });
        }
    }

    /// The `Servers` list a newly registered server gets: its `peers` and the hub itself, whose
    /// pushes are numbered as those of the origin [`ServerId::HUB`].
    pub(crate) fn servers(&self, peers: &[Peer]) -> Control {
        let hub = ServerEpoch { id: ServerId::HUB, epoch: self.pushes.epoch() };
        let servers = peers.iter().map(|peer| ServerEpoch { id: peer.id, epoch: peer.epoch });
        // On a backplane, the servers of the other hubs too: their epochs number their frames.
        let remote = self.backplane.iter().flat_map(|backplane| {
            let remote = backplane.replica.remote_servers();
            remote.into_iter().map(|(id, place)| ServerEpoch { id, epoch: place.epoch })
        });
        Control::Servers { servers: servers.chain(remote).chain([hub]).collect() }
    }

    /// Tells `peers` that `server` is up, each with where to send again from (`resend`), if the
    /// server's last connection lost frames of theirs.
    pub(crate) fn announce_up(
        &self,
        peers: Vec<Peer>,
        server: ServerEpoch,
        resend: &HashMap<ServerId, u64>,
    ) {
        for peer in peers {
            let resend_from = resend.get(&peer.id).copied();
            let up = self.control_frame(Control::ServerUp { server, resend_from });
            // A peer that is closing learns the cluster anew when it registers again.
            let _closing = self.push_frame(peer.id, &peer.outbox, up);
        }
    }
}

#[cfg(test)]
mod tests {

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::outbox::Inbox;

    /// A queue limit small enough to fill with one frame: an empty queue takes any batch.
    const LIMIT: usize = 64;

    /// A registered server's ends: its queue, its writer's end (kept, never drained: a server
    /// that stopped reading), and the token that ends its connection.
    struct Server {
        outbox: Outbox,
        _inbox: Inbox,
        closer: CancellationToken,
    }

    fn hub() -> HubState {
        HubState::new(HubConfig::default(), None)
    }

    fn register(state: &HubState, id: u32) -> Server {
        let (outbox, inbox) = Outbox::new(LIMIT, LIMIT / 2);
        let closer = CancellationToken::new();
        let info = crate::registry::tests::info(id);
        state.registry.register(info, 1, outbox.clone(), closer.clone(), None).expect("registers");
        Server { outbox, _inbox: inbox, closer }
    }

    /// Fills `server`'s queue past its limit, as a server that stopped reading would.
    fn fill(server: &Server) {
        server.outbox.push(Bytes::from(vec![0; 2 * LIMIT])).expect("an empty queue takes it");
    }

    fn slow_consumers(state: &HubState) -> u64 {
        state.stats.snapshot().slow_consumers
    }

    #[test]
    fn a_control_frame_for_a_full_queue_closes_that_server_and_counts_it_once() {
        let state = hub();
        let slow = register(&state, 1);
        let other = register(&state, 2);
        fill(&slow);

        let sent = state.send_control(ServerId(1), Control::Resend { from: 7 });
        assert_eq!(sent, Err(NotSent::SlowConsumer { pending: 2 * LIMIT }));
        assert_eq!(slow_consumers(&state), 1);
        assert!(slow.closer.is_cancelled(), "the slow server's connection is told to end");
        assert_eq!(slow.outbox.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        // Closed now: later frames find it away, and the rule is not counted again.
        assert_eq!(
            state.send_control(ServerId(1), Control::Resend { from: 8 }),
            Err(NotSent::Away)
        );
        assert_eq!(slow_consumers(&state), 1);

        // Nothing else affected: the other server takes the frame, whole, and stays open.
        let frame = state.control_frame(Control::Resend { from: 7 });
        assert_eq!(state.send_control(ServerId(2), Control::Resend { from: 7 }), Ok(()));
        assert_eq!(other.outbox.pending(), frame.len());
        assert!(!other.closer.is_cancelled());
        assert_eq!(slow_consumers(&state), 1);
    }

    #[test]
    fn a_server_that_did_not_drain_in_time_is_closed_and_counted_alone() {
        let state = hub();
        let slow = register(&state, 1);
        let other = register(&state, 2);
        state.stalled(ServerId(1), 2 * LIMIT, Duration::from_secs(5));
        assert!(slow.closer.is_cancelled());
        assert_eq!(slow.outbox.push(Bytes::from_static(b"x")), Err(PushError::Closed));
        assert_eq!(slow_consumers(&state), 1);
        assert!(!other.closer.is_cancelled());
        assert_eq!(state.send_control(ServerId(2), Control::Resend { from: 1 }), Ok(()));
    }

    #[test]
    fn a_control_frame_for_a_server_not_connected_is_not_a_slow_consumer() {
        let state = hub();
        let sent = state.send_control(ServerId(9), Control::Resend { from: 1 });
        assert_eq!(sent, Err(NotSent::Away));
        assert_eq!(slow_consumers(&state), 0);
    }

    #[test]
    fn every_hub_wide_push_applies_the_rule_to_a_full_queue() {
        // Each effect that used to drop its frame silently on a full queue.
        type Effect = fn(&HubState);
        let effects: [(&str, Effect); 5] = [
            ("server down", |state| state.server_down(ServerId(3))),
            ("resend", |state| state.ask_to_resend(HashMap::from([(ServerId(1), 5)]))),
            ("multi-session notice", |state| {
                state.tell_multi_session(ServerId(1), UserId::new("bob").unwrap(), true)
            }),
            ("kick", |state| {
                let _ = state.kick(ServerId(1), UserId::new("bob").unwrap(), "why".into());
            }),
            ("server up", |state| {
                let peers = state.registry.peers(ServerId(3));
                let up = ServerEpoch { id: ServerId(3), epoch: 1 };
                state.announce_up(peers, up, &HashMap::new());
            }),
        ];
        for (name, effect) in effects {
            let state = hub();
            let slow = register(&state, 1);
            let other = register(&state, 2);
            fill(&slow);
            effect(&state);
            assert!(slow.closer.is_cancelled(), "{name}: the full server is disconnected");
            assert_eq!(slow_consumers(&state), 1, "{name}: and counted once");
            assert!(!other.closer.is_cancelled(), "{name}: the other server stays");
        }
    }

    #[test]
    fn one_frame_for_several_servers_reaches_each_that_has_room() {
        let state = hub();
        let slow = register(&state, 1);
        let others = [register(&state, 2), register(&state, 4)];
        fill(&slow);
        state.server_down(ServerId(3));
        let frame = state.control_frame(Control::ServerDown { server: ServerId(3) });
        for other in &others {
            assert_eq!(other.outbox.pending(), frame.len(), "each gets its ServerDown");
        }
        assert!(slow.closer.is_cancelled());
        assert_eq!(slow_consumers(&state), 1);
    }
}

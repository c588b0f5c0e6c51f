//! Frames the hub itself originates: pushes from outside the cluster (the admin API) to a user,
//! a group or everyone.
//!
//! The hub sends them as an app server would, under the reserved origin [`ServerId::HUB`]: one
//! sequence per hub process, with the process's epoch announced in `Servers`, so the receiving
//! AS suppresses duplicates and acknowledges them exactly as for any origin, with no change on
//! its side. Numbers are handed out and frames queued under one lock, so frames reach each AS in
//! sequence order (the receiver's invariant, docs/RELIABILITY.md). The hub does not send a push
//! again: a push whose ack does not come in time is reported as timed out, never repeated.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use acms_protocol::{Ack, Data, DataKind, Frame, ProtocolError, ServerId, UserId};
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use crate::registry::{Registry, Relayed};

/// The hub's own sequence of pushed frames and the acks it waits for.
#[derive(Debug)]
pub(crate) struct Pushes {
    epoch: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_seq: u64,
    /// Ordered, so an ack's runs find what they cover by range, never number by number.
    waiting: BTreeMap<u64, Waiting>,
}

/// A pushed frame not yet acknowledged by every server it was queued for.
#[derive(Debug)]
struct Waiting {
    servers: HashSet<ServerId>,
    done: oneshot::Sender<()>,
}

/// A push queued for some servers.
#[derive(Debug)]
pub(crate) struct Pushed {
    /// The frame's sequence number, to forget it if no ack comes in time.
    pub(crate) seq: u64,
    /// The servers it was queued for.
    pub(crate) servers: Vec<ServerId>,
    /// Servers that could not take it now: away within their grace, or still registering.
    pub(crate) unavailable: Vec<ServerId>,
    /// Resolves once every server in `servers` acknowledged it.
    pub(crate) acked: oneshot::Receiver<()>,
}

impl Default for Pushes {
    fn default() -> Self {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Self { epoch, state: Mutex::default() }
    }
}

impl Pushes {
    /// The epoch of this hub process, announced to every AS under [`ServerId::HUB`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Numbers a data frame of `kind` from `sender` to `recipient` and queues it for each of
    /// `targets`, in sequence order with the hub's other pushes.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &self,
        registry: &Registry,
        max_frame_len: usize,
        kind: DataKind,
        recipient: UserId,
        sender: UserId,
        payload: Bytes,
        targets: &[ServerId],
    ) -> Result<Pushed, ProtocolError> {
        let (done, acked) = oneshot::channel();
        let mut state = self.state.lock().expect("pushes lock");
        let seq = state.last_seq + 1;
        let data = Data { kind, seq, origin: ServerId::HUB, recipient, sender, payload };
        let frame = Frame::Data(data).to_bytes(max_frame_len)?;
        state.last_seq = seq;
        let mut pushed = Pushed { seq, servers: Vec::new(), unavailable: Vec::new(), acked };
        for &target in targets {
            match registry.relay_batch(ServerId::HUB, target, Some(seq), vec![frame.clone()], None)
            {
                Ok(Relayed::Queued(_)) => pushed.servers.push(target),
                Ok(Relayed::Held) | Err(_) => pushed.unavailable.push(target),
            }
        }
        if pushed.servers.is_empty() {
            let _ = done.send(());
        } else {
            let servers = pushed.servers.iter().copied().collect();
            state.waiting.insert(seq, Waiting { servers, done });
        }
        Ok(pushed)
    }

    /// An AS acknowledged frames of the hub's. The runs are the AS's claim: each is looked up
    /// by range among the pushes waiting, so an ack costs what it covers of them, never the
    /// count it claims. Numbers the hub never sent are ignored, with a warning.
    pub(crate) fn acked(&self, ack: &Ack) {
        let mut state = self.state.lock().expect("pushes lock");
        let sent = 1..state.last_seq + 1;
        if let Some(range) = ack.beyond(sent.end) {
            warn!(
                from = %ack.from,
                first = range.first,
                count = range.count,
                last_seq = state.last_seq,
                "ack names pushes this hub never sent; only those waiting count"
            );
        }
        let mut done = Vec::new();
        for range in ack.covered(sent) {
            for (&seq, waiting) in state.waiting.range_mut(range) {
                waiting.servers.remove(&ack.from);
                if waiting.servers.is_empty() {
                    done.push(seq);
                }
            }
        }
        for seq in done {
            if let Some(waiting) = state.waiting.remove(&seq) {
                let _ = waiting.done.send(());
            }
        }
    }

    /// Stops waiting for the acks of `seq`: its caller gave up.
    pub(crate) fn forget(&self, seq: u64) {
        self.state.lock().expect("pushes lock").waiting.remove(&seq);
    }

    /// Pushes still waiting for an ack.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().expect("pushes lock").waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use acms_protocol::SeqRange;

    use super::*;

    #[test]
    fn a_push_with_no_server_resolves_at_once_and_numbers_go_on() {
        let pushes = Pushes::default();
        let registry = Registry::default();
        let user = UserId::new("alice").unwrap();
        let mut first = pushes
            .push(
                &registry,
                1024,
                DataKind::Unicast,
                user.clone(),
                user.clone(),
                "x".into(),
                &[ServerId(1)],
            )
            .unwrap();
        assert_eq!((first.seq, first.unavailable.as_slice()), (1, &[ServerId(1)][..]));
        assert!(first.acked.try_recv().is_ok());
        let second =
            pushes.push(&registry, 1024, DataKind::Unicast, user.clone(), user, "y".into(), &[]);
        assert_eq!(second.unwrap().seq, 2);
        assert_eq!(pushes.waiting(), 0);
        // An ack for a number nobody waits for is ignored.
        let ranges = vec![SeqRange { first: 1, count: 2 }];
        pushes.acked(&Ack { to: ServerId::HUB, from: ServerId(1), ranges });
    }

    #[test]
    fn acks_settle_the_pushes_their_runs_cover_whatever_length_they_claim() {
        let pushes = Pushes::default();
        let mut answers = Vec::new();
        {
            let mut state = pushes.state.lock().unwrap();
            state.last_seq = 6;
            for (seq, servers) in [(3, vec![ServerId(1), ServerId(2)]), (5, vec![ServerId(1)])] {
                let (done, acked) = oneshot::channel();
                let servers = servers.into_iter().collect();
                state.waiting.insert(seq, Waiting { servers, done });
                answers.push(acked);
            }
        }
        // Billions of numbers, over and over, from before the first push to past the last.
        let huge = SeqRange { first: 1, count: u32::MAX };
        let ranges = vec![huge; 64];
        pushes.acked(&Ack { to: ServerId::HUB, from: ServerId(1), ranges });
        assert!(answers[1].try_recv().is_ok(), "push 5 went to server 1 only");
        assert!(answers[0].try_recv().is_err(), "push 3 still waits for server 2");
        assert_eq!(pushes.waiting(), 1);
        let ranges = vec![SeqRange { first: 4, count: u32::MAX }];
        pushes.acked(&Ack { to: ServerId::HUB, from: ServerId(2), ranges });
        assert_eq!(pushes.waiting(), 1, "a run past push 3 does not settle it");
        let ranges = vec![SeqRange { first: 3, count: 1 }];
        pushes.acked(&Ack { to: ServerId::HUB, from: ServerId(2), ranges });
        assert!(answers[0].try_recv().is_ok());
        assert_eq!(pushes.waiting(), 0);
    }
}

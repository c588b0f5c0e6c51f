//! Frames the hub itself originates: pushes from outside the cluster (the admin API) to a user,
//! a group or everyone.
//!
//! The hub sends them as an app server would, under the reserved origin [`ServerId::HUB`]: one
//! sequence per hub process, with the process's epoch announced in `Servers`, so the receiving
//! AS suppresses duplicates and acknowledges them exactly as for any origin, with no change on
//! its side. Numbers are handed out and frames queued under one lock, so frames reach each AS in
//! sequence order (the receiver's invariant, docs/RELIABILITY.md). The hub does not send a push
//! again: a push whose ack does not come in time is reported as timed out, never repeated.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use acms_protocol::{Ack, Data, DataKind, Frame, ProtocolError, ServerId, UserId};
use bytes::Bytes;
use tokio::sync::oneshot;

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
    waiting: HashMap<u64, Waiting>,
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

    /// An AS acknowledged frames of the hub's.
    pub(crate) fn acked(&self, ack: &Ack) {
        let mut state = self.state.lock().expect("pushes lock");
        for range in &ack.ranges {
            for seq in range.seqs() {
                let Some(waiting) = state.waiting.get_mut(&seq) else { continue };
                waiting.servers.remove(&ack.from);
                if waiting.servers.is_empty()
                    && let Some(waiting) = state.waiting.remove(&seq)
                {
                    let _ = waiting.done.send(());
                }
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
}

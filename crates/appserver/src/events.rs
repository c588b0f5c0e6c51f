//! What the library hands the app: the events for this server's users and the queue they come
//! through, where a user can be reached, the state of the hub link, and the outcome of a message
//! sent with a receipt.

use std::time::Duration;

use acms_protocol::{Candidate, ErrorCode, GroupId, ServerId, UserId};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// What arrives for the users of this server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message for a user of this server, sent from this server or another.
    ///
    /// The user may have logged out while it travelled, or their client may not keep up: the app
    /// decides what then (store it, or send it back to its sender with
    /// [`Cluster::refuse`](crate::Cluster::refuse)).
    Message {
        /// Who sent it.
        from: UserId,
        /// The local user it is for.
        to: UserId,
        /// The sender's bytes, as they were sent.
        payload: Bytes,
    },
    /// A message sent from this server that did not reach its recipient: they are online nowhere,
    /// the message is over the hub's frame limit, or their server's app refused it
    /// ([`Cluster::refuse`](crate::Cluster::refuse)) after it arrived there. The payload comes back
    /// so the app can tell the sender, store it or retry.
    ///
    /// An invitation ([`Cluster::invite`](crate::Cluster::invite)) whose recipient is online
    /// nowhere comes back the same way, with `invitation` set.
    Undeliverable {
        /// Who sent it (a user of this server, or one who was when it was sent).
        from: UserId,
        /// Whom it was for.
        to: UserId,
        /// The bytes that were not delivered.
        payload: Bytes,
        /// Why.
        reason: UndeliverableReason,
        /// It was an invitation ([`Cluster::invite`](crate::Cluster::invite)), not a message.
        invitation: bool,
    },
    /// A watched user ([`Cluster::watch`](crate::Cluster::watch)) came online, went offline or
    /// moved; also sent once when the watch starts, and again after a reconnect to the hub, so
    /// treat it as the user's current state rather than as a change. An AS that dies takes its
    /// users offline only once its reconnect grace is over, so a short link blip is not reported.
    Presence {
        /// The watched user.
        user: UserId,
        /// The server they are online on now (with several sessions, the last one they logged
        /// in on); `None` when they are online nowhere.
        server: Option<ServerId>,
        /// The P2P candidates that server set for them
        /// ([`Cluster::set_candidates`](crate::Cluster::set_candidates)); empty when none were
        /// set or they are offline. A change of them alone is pushed too.
        candidates: Vec<Candidate>,
    },
    /// The hub ended a session of this server: the user logged in on another server and the
    /// hub's login-conflict policy is `replace`. The user is already logged out here; the app
    /// should tell their client why and close it.
    Kicked {
        /// The user who is no longer online here.
        user: UserId,
        /// Why, for people.
        reason: String,
    },
    /// An operator drains this server (a rolling upgrade): the hub assigns it no new clients.
    /// The app should tell its clients to reconnect to `target`; each one that logs in there
    /// is kicked here by the hub's `replace` policy, after every message routed here for them,
    /// so none is lost.
    Drain {
        /// The client address of the server the hub's assignment picks; `None` when no other
        /// server can take clients.
        target: Option<String>,
    },
    /// A message to a group, for its members on this server (sent from this server or another):
    /// one event per message, listing them.
    GroupMessage {
        /// The group it was sent to.
        group: GroupId,
        /// Who sent it.
        from: UserId,
        /// The group's members on this server it is for (the sender left out if they asked).
        to: Vec<UserId>,
        /// The sender's bytes, as they were sent.
        payload: Bytes,
    },
    /// A message to every user of the cluster, for those on this server: one event per message.
    Broadcast {
        /// Who sent it.
        from: UserId,
        /// The users of this server it is for (the sender left out if they asked).
        to: Vec<UserId>,
        /// The sender's bytes, as they were sent.
        payload: Bytes,
    },
    /// An invitation for a user of this server ([`Cluster::invite`](crate::Cluster::invite)),
    /// from a user of this server or another: handed over exactly once per session of `to`, like
    /// a message, but kept apart from messages so the app can act on it (start a P2P punch).
    Invitation {
        /// Who sent it.
        from: UserId,
        /// The local user it is for.
        to: UserId,
        /// The sender's bytes, as they were sent.
        payload: Bytes,
    },
    /// A message from another server (or this one) for this server itself, not its users.
    ServerMessage {
        /// The server that sent it.
        from: ServerId,
        /// Its bytes, as they were sent.
        payload: Bytes,
    },
}

/// Why a message came back as [`Event::Undeliverable`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UndeliverableReason {
    /// The recipient is online nowhere: the hub had nobody to route it to.
    Offline,
    /// The message fits this server's frame limit but not the hub's.
    TooLarge,
    /// The recipient's server received it and its app refused it with this reason (the user had
    /// left that server, their client could not keep up):
    /// [`Cluster::refuse`](crate::Cluster::refuse). That server had acknowledged it, so the
    /// sender's [`Receipt`](crate::Receipt) said `Delivered` before this came.
    Refused(String),
}

impl std::fmt::Display for UndeliverableReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Offline => f.write_str("offline"),
            Self::TooLarge => f.write_str("too large"),
            Self::Refused(reason) => f.write_str(reason),
        }
    }
}

/// Where a user is online and how their client may be reached directly: the answer of
/// [`Cluster::reach`](crate::Cluster::reach).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The server the user is online on (with several sessions, the last one they logged in on).
    pub server: ServerId,
    /// The P2P candidates that server set for them; empty when it set none.
    pub candidates: Vec<Candidate>,
}

/// The state of the connection to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected; connecting or waiting to retry.
    Connecting,
    /// Registered with the hub and its user set re-sent.
    Connected,
    /// The hub turned this server away for a reason that retrying alone will not fix: a wrong
    /// or missing shared secret (or one the hub lacks), a failed mutual authentication, another
    /// protocol version, too many users. The link keeps retrying with backoff meanwhile, so a fix
    /// on the hub's side heals it; the reason is also logged.
    Refused(ErrorCode),
    /// Closed for good: the cluster was closed or every handle dropped.
    Closed,
}

/// What became of a message sent with
/// [`Cluster::send_with_receipt`](crate::Cluster::send_with_receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the recipient's server's app (or, for a local recipient, to this server's
    /// events). Under policy `multi`, settled once every server with a session of the recipient
    /// has it. That app may still fail to hand it to the user's client and refuse it
    /// ([`Cluster::refuse`](crate::Cluster::refuse)): an [`Event::Undeliverable`] with reason
    /// [`UndeliverableReason::Refused`] then follows; the receipt is not revisited.
    Delivered {
        /// How many sessions of the recipient got it: one per server, this one included.
        sessions: u32,
    },
    /// The recipient is online nowhere; an [`Event::Undeliverable`] brings the payload back.
    Offline,
    /// No answer within the time asked for. The message is not given up: it stays in the
    /// retransmit buffer and may still be delivered, exactly once.
    TimedOut,
    /// A group, broadcast or server message was acknowledged by every other server the hub
    /// forwarded it to (those that left the cluster meanwhile aside); members on this server had
    /// it at once.
    Reached {
        /// How many other servers it reached: those with members of the group, every other
        /// server for a broadcast, and the one (or every other) server for a server message.
        servers: u32,
    },
}

/// The receiving end of a cluster's events.
///
/// Events arrive in batches, one per read from the hub, so a busy server pays for the queue once
/// per batch; [`Events::recv`] hands them out one at a time, [`Events::recv_batch`] all at once.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Vec<Event>>,
    ready: std::vec::IntoIter<Event>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Vec<Event>>) -> Self {
        Self { rx, ready: Vec::new().into_iter() }
    }

    /// The next event, or `None` once the cluster is closed and everything was received.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.next() {
                return Some(event);
            }
            self.ready = self.rx.recv().await?.into_iter();
        }
    }

    /// Every event received and not yet taken, waiting for at least one; `None` once the
    /// cluster is closed and everything was received.
    pub async fn recv_batch(&mut self) -> Option<Vec<Event>> {
        if self.ready.len() > 0 {
            return Some(std::mem::take(&mut self.ready).collect());
        }
        self.rx.recv().await
    }
}

/// The outcome of a message, to be awaited.
#[derive(Debug)]
pub struct Receipt(ReceiptInner);

#[derive(Debug)]
enum ReceiptInner {
    Known(Outcome),
    Waiting(oneshot::Receiver<Outcome>),
}

impl Receipt {
    /// A receipt whose outcome is known already (a local delivery).
    pub(crate) fn known(outcome: Outcome) -> Self {
        Self(ReceiptInner::Known(outcome))
    }

    /// A receipt the link answers through `rx`.
    pub(crate) fn waiting(rx: oneshot::Receiver<Outcome>) -> Self {
        Self(ReceiptInner::Waiting(rx))
    }

    /// Waits at most `timeout` for the outcome.
    pub async fn outcome(self, timeout: Duration) -> Outcome {
        match self.0 {
            ReceiptInner::Known(outcome) => outcome,
            ReceiptInner::Waiting(rx) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(outcome)) => outcome,
                // Closed before an answer came, or no answer in time.
                Ok(Err(_)) | Err(_) => Outcome::TimedOut,
            },
        }
    }
}

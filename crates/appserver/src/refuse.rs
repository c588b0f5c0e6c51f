//! A message this server's app could not hand to its user, going back to its sender.
//!
//! The link acknowledges a message once the app has it in [`crate::Events`], so a refusal comes
//! after the ack: it travels as a message of its own, a `Refused` data frame from this server to
//! the original sender (routed by the hub like any unicast message, numbered, kept for
//! retransmission and acknowledged like one), which the sender's server turns into
//! [`Event::Undeliverable`] with [`UndeliverableReason::Refused`]. A sender on this server gets
//! that event at once, without the hub.

use std::sync::atomic::Ordering;

use acms_protocol::UserId;
use bytes::Bytes;

use crate::cluster::{Cluster, ClusterError};
use crate::link::Command;
#[cfg(doc)]
use crate::{Event, UndeliverableReason};

impl Cluster {
    /// Sends a message this server received for its user `to` back to its sender `from`,
    /// because the app cannot deliver it: `to` left this server, their client cannot keep up.
    /// The sender's server gets [`Event::Undeliverable`] with
    /// [`UndeliverableReason::Refused`]`(reason)` (cut to 1,024 bytes), exactly once, across
    /// hub restarts, wherever the sender is online now; a sender online nowhere any more
    /// cannot be told, which this server logs.
    ///
    /// Never waits for the events queue, so the task that drains [`crate::Events`] may call it.
    /// Fails with [`ClusterError::Full`] when refusals not yet acknowledged already fill a
    /// retransmit buffer's worth (`retransmit_buffer`): memory stays bounded whatever the peers
    /// send.
    pub async fn refuse(
        &self,
        from: &UserId,
        to: &UserId,
        payload: Bytes,
        reason: impl Into<String>,
    ) -> Result<(), ClusterError> {
        if self.inner.server.refusing.load(Ordering::Acquire) >= self.inner.credit_cap {
            return Err(ClusterError::Full);
        }
        let command =
            Command::Refuse { from: from.clone(), to: to.clone(), payload, reason: reason.into() };
        self.command(command).await
    }
}

//! What a [`crate::Cluster`] handle asks of its link: the commands the link's core takes from
//! the command queue, with the oneshot senders that answer them.

use acms_protocol::{Data, GroupId, UserId};
use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::events::{Outcome, Reach};
use crate::users::SetVersion;

/// What a [`crate::Cluster`] handle asks of its connection task.
#[derive(Debug)]
pub(crate) enum Command {
    /// With the version of the user set the login made ([`crate::users::LocalUsers`]).
    Login(UserId, SetVersion),
    /// With the version of the user set the logout made.
    Logout(UserId, SetVersion),
    Data {
        data: Data,
        receipt: Option<oneshot::Sender<Outcome>>,
        /// A unicast message already delivered to a session on this server (its recipient has
        /// sessions elsewhere too): the hub relays it to the others only.
        here: bool,
    },
    /// Data frames the caller already encoded, back to back, sequence numbers still to be given.
    Encoded(BytesMut),
    /// A message the app could not deliver to its local recipient `to`, going back to `from`.
    Refuse {
        from: UserId,
        to: UserId,
        payload: Bytes,
        reason: String,
    },
    Flush(oneshot::Sender<()>),
    /// Asks the hub where a user is, and their P2P candidates there.
    Locate(UserId, oneshot::Sender<Option<Reach>>),
    /// The user's P2P candidates changed: tell the hub what they are now.
    Candidates(UserId),
    Watch(Vec<UserId>),
    Unwatch(Vec<UserId>),
    /// The group's local membership changed between none and some: tell the hub how it is now.
    Group(GroupId),
}

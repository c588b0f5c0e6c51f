//! [`ClusterError`]: why a call on a [`crate::Cluster`] failed.

use std::net::SocketAddr;

use acms_protocol::UserId;

/// Why a cluster call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster was closed; nothing more can be sent.
    #[error("cluster handle is closed")]
    Closed,
    /// [`Cluster::try_send_to_user`] found the retransmit buffer, or the queue to the hub, full.
    #[error("retransmit buffer or queue to the hub is full; try again later or use send_to_user")]
    Full,
    /// The message would not fit in one frame.
    #[error("message of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// Encoded size of the frame.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Only a user online on this server can join or leave a group here.
    #[error("{user} is not online on this server")]
    NotLocal {
        /// The user.
        user: UserId,
    },
    /// The login would pass the hub's limit on users per server (`max_users_per_server`).
    #[error("this server already has {max} users online, the hub's limit per server")]
    TooManyUsers {
        /// The limit in force.
        max: usize,
    },
    /// The watch would take this server's watch list past the hub's limit
    /// (`max_users_per_server`, which bounds watched users as it bounds online ones).
    #[error("this server already watches {max} users, the hub's limit per server")]
    TooManyWatches {
        /// The limit in force.
        max: usize,
    },
    /// The join would pass the hub's limit on groups per server (`max_groups_per_server`).
    #[error("this server already has members in {max} groups, the hub's limit per server")]
    TooManyGroups {
        /// The limit in force.
        max: usize,
    },
    /// [`Cluster::set_candidates`](crate::Cluster::set_candidates) was given more candidates
    /// than one session may have ([`acms_protocol::MAX_CANDIDATES`]); nothing was sent.
    #[error("{count} P2P candidates, the limit is {max}")]
    TooManyCandidates {
        /// How many were given.
        count: usize,
        /// The limit in force.
        max: usize,
    },
    /// [`Cluster::set_candidates`](crate::Cluster::set_candidates) was given an address nobody
    /// can send to (port 0, or an unspecified IP); nothing was sent.
    #[error("P2P candidate {addr} cannot be sent to (port 0 or unspecified IP)")]
    UnusableCandidate {
        /// The address.
        addr: SocketAddr,
    },
}

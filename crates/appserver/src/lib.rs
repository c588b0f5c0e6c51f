//! The library an app server (AS) embeds to become part of an ACMS cluster.
//!
//! The AS keeps talking to its own clients in its own protocol. Through a [`Cluster`] handle it
//! tells the hub which users it has online, sends to users wherever they are (delivering locally,
//! without the hub, when the recipient is its own), and receives, as a stream of [`Event`]s, what
//! other servers send to its users. The handle reconnects by itself, with backoff and jitter, and
//! re-sends its whole user set after every reconnect, so a hub restart heals without the app
//! noticing more than a delay.
//!
//! ```no_run
//! use acms_appserver::{Cluster, Event, ServerId, UserId};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (cluster, mut events) = Cluster::builder(ServerId(0), "127.0.0.1:12000")
//!     .client_addr("127.0.0.1:6000")
//!     .start();
//!
//! // A client logged in to this server: make them reachable cluster-wide.
//! let alice = UserId::new("alice")?;
//! cluster.login(alice.clone()).await?;
//!
//! // Local recipients are served here; others through the hub.
//! let bob = UserId::new("bob")?;
//! cluster.send_to_user(&alice, &bob, "hello".into()).await?;
//!
//! // Everything for this server's users arrives here, local or remote.
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message { from, to, payload } => println!("{from} -> {to}: {payload:?}"),
//!         Event::Undeliverable { to, reason, .. } => println!("not delivered to {to}: {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`cluster`]: [`Cluster`], the handle, how it starts, and its errors.
//! - `builder`: [`ClusterBuilder`], the settings of a cluster.
//! - `error`: [`ClusterError`].
//! - `events`: what the app is handed: [`Events`] of [`Event`]s, [`Reach`], [`LinkState`],
//!   [`Receipt`]s and their [`Outcome`].
//! - `users`: `LocalUsers`, this server's user set: the local users, their digest and version,
//!   the multi-session users; `login`, `logout`, `kick` and the snapshot.
//! - `state`: what the handles and the link share: the users, the groups, the watches, limits.
//! - `p2p`: [`Cluster::set_candidates`], [`Cluster::reach`] and
//!   [`Cluster::invite`]: P2P candidates in the directory and invitations between users' servers.
//! - `refuse`: [`Cluster::refuse`], a message this server's app could not deliver going back
//!   to its sender.
//! - `link`: the task that owns the hub connection, a thin async shell (connect, handshake and
//!   authentication, reconnects, moving bytes and ticks) around `link::core::LinkCore`, the
//!   exactly-once engine with no I/O and no clock (sequence numbers, retransmission, receipts,
//!   acks, snapshots, kicks, presence, keepalive deadlines).
//! - `write_queue`: `WriteQueue`, the bytes waiting for the hub's socket, in chunks shared with
//!   the retransmit buffer.
//! - `reliable`: the bookkeeping of exactly-once delivery: `Seq`, frames not yet acknowledged,
//!   duplicate suppression, acks owed.
//! - `load`: the load reports the link sends every load interval (CPU, memory, message rates).
//! - `groups`: the local members of each group, and group frames waiting for acknowledgements.
//! - [`tls`]: [`ClientTls`], optional TLS to the hub.
#![warn(missing_docs)]

mod builder;
pub mod cluster;
mod error;
mod events;
mod groups;
mod link;
mod load;
mod p2p;
mod refuse;
mod reliable;
mod state;
pub mod tls;
mod users;
mod write_queue;

pub use acms_protocol::{
    Candidate, CandidateKind, ErrorCode, GroupId, MAX_CANDIDATES, Secret, SecretError, ServerId,
    UserId, UserIdError,
};
pub use cluster::{
    BatchRoutes, Cluster, ClusterBuilder, ClusterError, Event, Events, LinkState, Outcome,
    Outgoing, Reach, Receipt, SentVia, UndeliverableReason,
};
pub use tls::{ClientTls, TlsError};

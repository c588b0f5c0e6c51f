//! Control messages: registration, user logins and logouts, group memberships, keepalive, errors,
//! and the status hubs of one cluster exchange.
//!
//! They are rare next to data frames, so they are plain serde types encoded with bincode (standard
//! configuration, with a size limit). Bytes after a decoded message are ignored, which lets a later
//! version append fields to a message without breaking the version check of [`Hello`].

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::MAX_FRAME_LEN_CEILING;
use crate::auth::{Nonce, Proof};
use crate::candidate::{self, Candidate};
use crate::digest::UserDigest;
pub use crate::error::ErrorCode;
use crate::error::ProtocolError;
use crate::ids::{GroupId, ServerId, UserId};

/// A control message, in either direction.
///
/// `Hello` must stay the first variant and `version` its first field in every version of the
/// protocol, so that any peer can read the version of any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// AS to hub, first frame of a connection: who the AS is.
    Hello(Hello),
    /// Hub to AS: the registration is accepted (the AS is authenticated, or the hub needs no
    /// secret and the AS is on its machine).
    Welcome(Welcome),
    /// Either direction: the peer is refused or broke the protocol; the sender closes after it.
    Error {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        #[serde(deserialize_with = "bounded::string")]
        message: String,
    },
    /// AS to hub: these users are now online on the sending AS. After a (re)connect the AS sends
    /// its whole user set as a series of these: the snapshot.
    Login {
        /// The users, in one batch.
        #[serde(deserialize_with = "bounded::seq")]
        users: Vec<UserId>,
    },
    /// AS to hub: these users left the sending AS.
    Logout {
        /// The users, in one batch.
        #[serde(deserialize_with = "bounded::seq")]
        users: Vec<UserId>,
    },
    /// Either direction: asks for a `Pong` with the same token once every earlier frame on this
    /// connection has been handled.
    Ping {
        /// Echoed in the answer.
        token: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The token of the `Ping`.
        token: u64,
    },
    /// AS to hub: the AS is leaving for good (closing down); its users go offline at once,
    /// with no grace to come back.
    Bye,
    /// AS to hub: the snapshot that followed `Hello` is complete. Users the hub still had for
    /// this AS from an earlier connection and that were not in it are now offline.
    SnapshotDone,
    /// Hub to AS, right after `Welcome`: the other registered servers and their epochs, so frames
    /// from them can be told apart from frames of their earlier lives.
    Servers {
        /// Every other registered AS.
        #[serde(deserialize_with = "bounded::seq")]
        servers: Vec<ServerEpoch>,
    },
    /// Hub to AS: another AS registered, or registered again after losing its connection.
    ServerUp {
        /// Who registered, and the epoch of the process.
        server: ServerEpoch,
        /// Set when frames from the receiving AS to `server` were held back by the hub, from this
        /// sequence number on: the AS answers with `Resent` and then sends again every frame not
        /// yet acknowledged from there. Until that `Resent`, the hub drops its frames to `server`,
        /// so they cannot overtake the ones sent again.
        resend_from: Option<u64>,
    },
    /// AS to hub: the retransmission asked for by the `ServerUp` of `server` follows.
    Resent {
        /// The server of that `ServerUp`.
        server: ServerId,
    },
    /// Hub to AS: frames from the receiving AS were held back from this sequence number on, for
    /// users who turned out to be offline; send again what is not yet acknowledged from there,
    /// and the hub answers each with `Undeliverable` or delivers it.
    Resend {
        /// The first sequence number to send again.
        from: u64,
    },
    /// Hub to AS, answering a `Hello` that carries a nonce: the hub's proof of the shared secret
    /// and the nonce the AS must prove it over.
    Challenge(Challenge),
    /// AS to hub, answering a `Challenge`: the AS's proof of the shared secret.
    Auth {
        /// HMAC-SHA256 over the server id and both nonces, with the app server's label.
        proof: Proof,
    },
    /// Hub to hub, every keepalive interval on a status link once [`PeerHello`] opened it:
    /// asks for a [`HubStatus`] (docs/FAILOVER.md). Refused as the first frame of a connection.
    PeerStatus,
    /// Hub to hub, the answer to `PeerStatus`: whether this hub is the active one of its cluster.
    HubStatus(HubStatus),
    /// AS to hub, every digest interval once the hub has been told of every login and logout so
    /// far: the digest of the AS's user set. The hub compares it with its record of the AS's users
    /// and answers `Resync` if they differ.
    Digest(UserDigest),
    /// Hub to AS: the hub's record of the AS's users differs from the AS's digest. The AS sends
    /// its whole user set again (`Login` batches, then `SnapshotDone`), and the hub replaces its
    /// record with it.
    Resync,
    /// AS to hub: asks where `user` is online; answered by `Located` with the same token.
    Locate {
        /// Echoed in the answer.
        token: u64,
        /// Whom to look for.
        user: UserId,
    },
    /// Hub to AS, the answer to `Locate`: the AS the user is online on (with several sessions,
    /// the one they logged in on last), or `None` when online nowhere, and the P2P candidates
    /// that AS set for the user (see [`Control::Candidates`]).
    Located {
        /// The token of the `Locate`.
        token: u64,
        /// Where the user is.
        server: Option<ServerId>,
        /// The user's candidates on that server; empty when none were set or they are offline.
        #[serde(deserialize_with = "candidate::bounded")]
        candidates: Vec<Candidate>,
    },
    /// AS to hub: tell this AS when any of these users comes online, goes offline or moves. The
    /// hub answers each with its current `Presence` at once. An AS sends its whole watch list
    /// again after every (re)connect, before `SnapshotDone`.
    Watch {
        /// The users to watch.
        #[serde(deserialize_with = "bounded::seq")]
        users: Vec<UserId>,
    },
    /// AS to hub: stop watching these users.
    Unwatch {
        /// The users no longer watched.
        #[serde(deserialize_with = "bounded::seq")]
        users: Vec<UserId>,
    },
    /// Hub to the AS that watch `user`: where the user is now online, or `None` for offline,
    /// and their P2P candidates there. Sent again when the candidates change.
    Presence {
        /// The watched user.
        user: UserId,
        /// Where they are now.
        server: Option<ServerId>,
        /// The user's candidates on that server; empty when none were set or they are offline.
        #[serde(deserialize_with = "candidate::bounded")]
        candidates: Vec<Candidate>,
    },
    /// Hub to AS: `user` logged in on another AS and the hub's policy is `replace`: this AS must
    /// end its session (it answers with a `Logout` for the user, as for any logout).
    Kick {
        /// The user whose session ends here.
        user: UserId,
        /// Why, for people.
        #[serde(deserialize_with = "bounded::string")]
        reason: String,
    },
    /// AS to hub: the sending AS now has members in these groups. Sent when a group gets its
    /// first local member, and for every group with members in the snapshot after `Hello` (before
    /// `SnapshotDone`); a group the hub already has for the AS is no change.
    Join {
        /// The groups, in one batch.
        #[serde(deserialize_with = "bounded::seq")]
        groups: Vec<GroupId>,
    },
    /// AS to hub: the sending AS no longer has members in these groups.
    Leave {
        /// The groups, in one batch.
        #[serde(deserialize_with = "bounded::seq")]
        groups: Vec<GroupId>,
    },
    /// Hub to AS: the servers the hub forwarded the receiving AS's group, broadcast or server
    /// frame `seq` to. The AS keeps the frame until each of them acknowledged it (or is gone);
    /// a frame sent again gets a new list, which replaces the old one.
    Copies {
        /// The frame's sequence number.
        seq: u64,
        /// The servers it was forwarded to; empty when nobody needs it.
        #[serde(deserialize_with = "bounded::seq")]
        servers: Vec<ServerId>,
    },
    /// Hub to AS: a server left the cluster for good (it said `Bye`, or its reconnect grace
    /// ended). No acknowledgement will come from it.
    ServerDown {
        /// The server that left.
        server: ServerId,
    },
    /// Hub to AS, policy `multi`: local user `user` also has sessions on other AS
    /// (`elsewhere`), or no longer has. While it has, the AS sends that user's messages from its
    /// own users through the hub as well as delivering them locally, and the hub relays them to
    /// the other sessions only. Soft state: the hub says it again after each `SnapshotDone` of
    /// the AS, and answers `elsewhere: false` when it finds such a message for a user whose only
    /// session is on the sending AS.
    MultiSession {
        /// The local user.
        user: UserId,
        /// Whether the user has a session on another AS now.
        elsewhere: bool,
    },
    /// AS to hub, every load interval: how busy the AS is, for the hub's choice of a server for
    /// new clients. The hub keeps the latest report of each AS.
    Load(Load),
    /// Hub to AS: an operator drains this AS (a rolling upgrade). The hub assigns it no new
    /// clients; the AS should send its clients to `target`, the client address of the server
    /// the hub's assignment picks (`None` when no other server can take them).
    Drain {
        /// Where the clients should reconnect.
        #[serde(deserialize_with = "bounded::opt_string")]
        target: Option<String>,
    },
    /// Hub to hub, the first frame of a status link, instead of `Hello`: a peer hub asks to
    /// watch this one. With a shared secret it carries a nonce and the two hubs prove the secret
    /// to each other (`Challenge`, `Auth`) as an AS and a hub do; with none, the loopback rule
    /// applies. The watched hub then answers `HubStatus`, and again for each `PeerStatus`.
    PeerHello(PeerHello),
    /// AS to hub: the P2P candidates of `user`'s session on the sending AS (addresses their
    /// client reported), replacing any earlier ones; empty clears them. At most
    /// [`crate::MAX_CANDIDATES`], each with a port and a specified IP, or the message is
    /// malformed. The hub keeps them while the session lasts, hands them out with the user's
    /// place (`Located`, `Presence`) and never uses them itself. Part of the snapshot: an AS
    /// sends them again for its users after every (re)connect, before `SnapshotDone`.
    Candidates {
        /// A user online on the sending AS.
        user: UserId,
        /// Their candidates.
        #[serde(deserialize_with = "candidate::bounded")]
        candidates: Vec<Candidate>,
    },
}

/// The opening of a hub-to-hub status link (see [`Control::PeerHello`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// [`crate::PROTOCOL_VERSION`] of the asking hub.
    pub version: u16,
    /// A fresh nonce when the asking hub has a shared secret; `None` when it has none.
    pub nonce: Option<Nonce>,
}

/// A load report (see [`Control::Load`]). Whole numbers, so reports compare exactly and encode
/// small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Users online on the AS.
    pub users: u32,
    /// CPU use of the AS process, in hundredths of a percent of one core (may pass 10,000 on
    /// several cores).
    pub cpu_centipercent: u32,
    /// Resident memory of the AS process, in bytes.
    pub memory_bytes: u64,
    /// Messages per second delivered to the AS from the hub, over the last interval.
    pub msgs_in_per_s: u32,
    /// Messages per second the AS sent through the hub, over the last interval.
    pub msgs_out_per_s: u32,
    /// Most clients the AS declares it takes; `None` when it declares no limit.
    pub capacity: Option<u32>,
}

/// What a hub tells the other hubs of its cluster, so that exactly one is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStatus {
    /// The hub accepts registrations (it is active), or refuses them (standby).
    pub active: bool,
    /// App servers connected to it now (none while it resumes from a pause): of two active
    /// hubs, the one with fewer yields.
    pub servers: u32,
    /// When the hub process started (nanoseconds since the Unix epoch): of two hubs otherwise
    /// equal, the older one is preferred.
    pub started: u64,
    /// Chosen at random at start: breaks a tie of `started`, and lets a hub that finds itself in
    /// its own peer list recognise itself.
    pub id: u64,
}

/// A registered AS and the epoch of its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEpoch {
    /// The server's id.
    pub id: ServerId,
    /// Chosen by the AS at start; a new epoch means a new process, which numbers its frames anew.
    pub epoch: u64,
}

/// The handshake an AS opens its connection with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_VERSION`] of the AS.
    pub version: u16,
    /// The id the AS registers under.
    pub server_id: ServerId,
    /// Where the AS's own clients connect to it, as it wants the cluster to advertise.
    #[serde(deserialize_with = "bounded::string")]
    pub client_addr: String,
    /// Chosen at process start and kept across reconnects (see [`ServerEpoch`]).
    pub epoch: u64,
    /// A fresh nonce when the AS has a shared secret: the hub must prove the secret over it, then
    /// challenge the AS. `None` when the AS has no secret.
    pub nonce: Option<Nonce>,
}

/// The hub's answer to a [`Hello`] with a nonce, when the hub has the shared secret too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// A fresh nonce the AS must prove the secret over.
    pub nonce: Nonce,
    /// HMAC-SHA256 over the server id and both nonces, with the hub's label.
    pub proof: Proof,
}

/// The hub's answer to an accepted [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`crate::PROTOCOL_VERSION`] of the hub.
    pub version: u16,
    /// Largest frame body the hub accepts.
    pub max_frame_len: u32,
    /// Most users the hub lets this AS have online at once.
    pub max_users: u32,
    /// Most groups the hub lets this AS have members in at once.
    pub max_groups: u32,
}

/// Decoding that allocates only for data the input holds, never for what a length field claims.
///
/// bincode decodes a `String` by allocating the claimed length and then reading into it, and
/// serde's `Vec` reserves room for up to 1 MiB of elements from the claimed count: a frame of a
/// few bytes could make the hub allocate megabytes before the decode fails. Here a string is
/// borrowed from the input (bincode checks the input holds it) and copied once, and a list grows
/// with the elements actually decoded.
mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

    pub(super) fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        struct Text;

        impl Visitor<'_> for Text {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
                Ok(text.to_owned())
            }
        }

        deserializer.deserialize_str(Text)
    }

    pub(super) fn opt_string<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        struct MaybeText;

        impl<'de> Visitor<'de> for MaybeText {
            type Value = Option<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an optional string")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Option<String>, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(
                self,
                inner: D,
            ) -> Result<Option<String>, D::Error> {
                string(inner).map(Some)
            }
        }

        deserializer.deserialize_option(MaybeText)
    }

    pub(super) fn seq<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct List<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for List<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                // The size hint is the peer's claim: ignored.
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(items)
            }
        }

        deserializer.deserialize_seq(List(PhantomData))
    }
}

/// Bincode settings shared by both ends; the limit bounds what a length claim may allocate.
fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Inputs up to this size decode under [`SMALL_LIMIT`]: most control frames are tiny, and a tiny
/// frame must not be able to claim a string of many megabytes.
const SMALL_INPUT: usize = 16 << 10;
const SMALL_LIMIT: usize = 1 << 20;

impl Control {
    /// Appends the bincode encoding of this message to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let mut writer = dst.writer();
        bincode::serde::encode_into_std_write(
            self,
            &mut writer,
            config::<MAX_FRAME_LEN_CEILING>(),
        )?;
        Ok(())
    }

    /// Decodes a message from the body of a control frame (after the kind byte).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let (control, _read) = if bytes.len() <= SMALL_INPUT {
            bincode::serde::decode_from_slice(bytes, config::<SMALL_LIMIT>())?
        } else {
            bincode::serde::decode_from_slice(bytes, config::<MAX_FRAME_LEN_CEILING>())?
        };
        Ok(control)
    }

    /// Shorthand for an error message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_frame_cannot_claim_a_huge_string() {
        // Error { code: Malformed, message: <claims 15 MiB> } in 8 bytes.
        let claim = 15u32 << 20;
        let mut bytes = vec![2, 2, 0xfc];
        bytes.extend_from_slice(&claim.to_le_bytes());
        let err = Control::decode(&bytes).unwrap_err();
        assert!(matches!(err, ProtocolError::Decode(_)), "{err}");
    }

    #[test]
    fn hub_status_messages_keep_their_variant_indices() {
        let status = HubStatus { active: true, servers: 3, started: 7, id: 9 };
        let hello = Control::PeerHello(PeerHello { version: 3, nonce: Some(Nonce([0x11; 32])) });
        for (control, index) in
            [(Control::PeerStatus, 15), (Control::HubStatus(status), 16), (hello, 32)]
        {
            let mut bytes = BytesMut::new();
            control.encode_into(&mut bytes).unwrap();
            assert_eq!(bytes[0], index, "{control:?}");
            assert_eq!(Control::decode(&bytes).unwrap(), control);
        }
    }

    #[test]
    fn a_full_frame_of_short_names_decodes() {
        let users: Vec<_> =
            (0..300_000u32).map(|i| UserId::new(&format!("{}", i % 10)).unwrap()).collect();
        let login = Control::Login { users };
        let mut bytes = BytesMut::new();
        login.encode_into(&mut bytes).unwrap();
        assert!(bytes.len() < crate::DEFAULT_MAX_FRAME_LEN);
        assert_eq!(Control::decode(&bytes).unwrap(), login);
    }
}

//! The backplane's names on NATS: the subjects and key-value buckets of one cluster, and the
//! subject-safe keys of user and server ids.
//!
//! A cluster name may hold `.`, which separates subject tokens, and a user id may hold any
//! character; both are encoded (hex, base64url) so that two clusters on one NATS never share a
//! subject or bucket and every user id is a valid key.

use std::fmt;

use acms_common::discovery::ClusterName;
use acms_protocol::{ServerId, UserId};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// One hub process on the backplane: random at start, so a restarted hub is a new hub whose
/// batch numbering starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HubId(pub u64);

impl HubId {
    /// A fresh, random id for this process.
    pub fn random() -> Self {
        // Zero is never used: it would look like an unset field in a dump.
        Self(rand::random::<u64>().max(1))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The subjects and buckets of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// The cluster name in hex: safe as a subject token and in a bucket name.
    cluster: String,
}

impl Names {
    pub(crate) fn new(cluster: &ClusterName) -> Self {
        let cluster = cluster.as_str().bytes().map(|byte| format!("{byte:02x}")).collect();
        Self { cluster }
    }

    /// Where the batches and notices for `hub` are published.
    pub(crate) fn relay(&self, hub: HubId) -> String {
        format!("acms.{}.relay.{hub}", self.cluster)
    }

    /// Where `hub`'s admin side takes questions from other hubs (pushes, kicks).
    pub(crate) fn admin(&self, hub: HubId) -> String {
        format!("acms.{}.admin.{hub}", self.cluster)
    }

    /// Where every hub publishes its heartbeat.
    pub(crate) fn heartbeat(&self) -> String {
        format!("acms.{}.heartbeat", self.cluster)
    }

    /// The bucket of the directory's first level: user -> app server.
    pub(crate) fn users_bucket(&self) -> String {
        format!("acms-users-{}", self.cluster)
    }

    /// The bucket of the directory's second level: app server -> hub.
    pub(crate) fn servers_bucket(&self) -> String {
        format!("acms-servers-{}", self.cluster)
    }

    /// The bucket of group interest: (group, hub) -> the hub's servers with members.
    pub(crate) fn groups_bucket(&self) -> String {
        format!("acms-groups-{}", self.cluster)
    }
}

/// The key of `user` in the users bucket: base64url of its bytes, valid whatever it holds.
pub(crate) fn user_key(user: &str) -> String {
    URL_SAFE_NO_PAD.encode(user.as_bytes())
}

/// The user of a key in the users bucket; `None` for a key no hub wrote.
pub(crate) fn user_of_key(key: &str) -> Option<UserId> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    UserId::new(&String::from_utf8(bytes).ok()?).ok()
}

/// The key of `server` in the servers bucket: its id in decimal.
pub(crate) fn server_key(server: ServerId) -> String {
    server.0.to_string()
}

/// The server of a key in the servers bucket.
pub(crate) fn server_of_key(key: &str) -> Option<ServerId> {
    key.parse().ok().map(ServerId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_user_id_makes_a_key_of_subject_safe_characters_and_back() {
        for user in ["alice", "a.b c*>", "ünïcødé/ユーザー", &"x".repeat(UserId::MAX_LEN)] {
            let key = user_key(user);
            assert!(
                key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{key}"
            );
            assert_eq!(user_of_key(&key).unwrap().as_str(), user);
        }
        assert_eq!(user_of_key("!!"), None);
    }

    #[test]
    fn two_clusters_never_share_a_subject_or_bucket() {
        let a = Names::new(&ClusterName::new("prod.eu".to_owned()).unwrap());
        let b = Names::new(&ClusterName::new("prod-eu".to_owned()).unwrap());
        assert_ne!(a.heartbeat(), b.heartbeat());
        assert_ne!(a.users_bucket(), b.users_bucket());
        assert!(!a.heartbeat().contains("prod.eu"), "the dot is encoded");
        let bucket = a.servers_bucket();
        assert!(bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "{bucket}");
    }
}

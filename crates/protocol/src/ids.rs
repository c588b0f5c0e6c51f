//! Identifiers of app servers, users and groups.

use smol_str::SmolStr;
use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Identifies one app server (AS) in the cluster; unique among the live AS of a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub u32);

impl ServerId {
    /// The origin of frames the hub itself sends (pushes from its admin API): reserved, never
    /// an app server's id. The hub announces its epoch under this id in `Servers`, numbers its
    /// frames like an AS, and consumes the acks the receivers send to it.
    pub const HUB: ServerId = ServerId(u32::MAX);
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ServerId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ServerId)
    }
}

/// Names one user of the cluster: 1 to [`UserId::MAX_LEN`] bytes of UTF-8.
///
/// A name of up to 23 bytes is held inline, a longer one behind a shared pointer: the hub keeps
/// each id in its directory and in the set of its server, so clones must not copy a long name,
/// and the directory looks one up for every relayed frame, which then compares the names where
/// the map holds them instead of following a pointer per lookup. It hashes and compares as a
/// `str`, so maps keyed by `UserId` can be searched with a `&str` borrowed from a received frame.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(SmolStr);

/// Why a string is not a valid [`UserId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    /// The name is empty.
    #[error("user id is empty")]
    Empty,
    /// The name is longer than the routing header can carry.
    #[error("user id is {0} bytes long, the limit is {max}", max = UserId::MAX_LEN)]
    TooLong(usize),
    /// The name is not UTF-8 (only when parsed from raw bytes).
    #[error("user id is not valid UTF-8")]
    NotUtf8,
}

impl UserId {
    /// Longest id in bytes: its length travels in one byte of the routing header.
    pub const MAX_LEN: usize = u8::MAX as usize;

    /// Validates `name` and makes an id of it.
    pub fn new(name: &str) -> Result<Self, UserIdError> {
        Self::check(name)?;
        Ok(Self(SmolStr::new(name)))
    }

    /// Checks `name` against the rules of a user id without allocating.
    pub fn check(name: &str) -> Result<(), UserIdError> {
        match name.len() {
            0 => Err(UserIdError::Empty),
            n if n > Self::MAX_LEN => Err(UserIdError::TooLong(n)),
            _ => Ok(()),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for UserId {
    type Error = UserIdError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl TryFrom<String> for UserId {
    type Error = UserIdError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::check(&name)?;
        Ok(Self(SmolStr::from(name)))
    }
}

impl FromStr for UserId {
    type Err = UserIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_str(), f)
    }
}

impl Serialize for UserId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserId {
    /// Asks for a `str` rather than a `String`: bincode then borrows it from the received frame
    /// after checking the frame holds it, so a length field cannot make the decoder allocate a
    /// buffer before the id is found too long. The id is checked, then copied once.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = UserId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a user id of 1 to {} bytes of UTF-8", UserId::MAX_LEN)
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<UserId, E> {
                UserId::new(name).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}

/// Names one group (a room, a channel) of the cluster. The same rules as a [`UserId`]: 1 to
/// [`UserId::MAX_LEN`] bytes of UTF-8, since it travels in the same field of the routing header.
///
/// Hashes and compares as a `str`, like [`UserId`], so maps keyed by it can be searched with a
/// name borrowed from a frame.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(UserId);

impl GroupId {
    /// Validates `name` and makes a group id of it.
    pub fn new(name: &str) -> Result<Self, UserIdError> {
        UserId::new(name).map(Self)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl FromStr for GroupId {
    type Err = UserIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Borrow<str> for GroupId {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_limits() {
        assert_eq!(UserId::new(""), Err(UserIdError::Empty));
        assert!(UserId::new(&"x".repeat(UserId::MAX_LEN)).is_ok());
        assert_eq!(
            UserId::new(&"x".repeat(UserId::MAX_LEN + 1)),
            Err(UserIdError::TooLong(UserId::MAX_LEN + 1))
        );
    }

    #[test]
    fn group_id_has_the_rules_of_a_user_id_and_is_found_by_str() {
        assert_eq!(GroupId::new(""), Err(UserIdError::Empty));
        assert!(GroupId::new(&"x".repeat(UserId::MAX_LEN + 1)).is_err());
        let mut set = std::collections::HashSet::new();
        set.insert(GroupId::new("room").unwrap());
        assert!(set.contains("room"));
    }

    #[test]
    fn user_id_is_found_by_str() {
        let mut set = std::collections::HashSet::new();
        set.insert(UserId::new("alice").unwrap());
        assert!(set.contains("alice"));
        assert!(!set.contains("bob"));
    }
}

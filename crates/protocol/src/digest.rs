//! A digest of a set of user ids that an AS and the hub compute the same way, so they can find out
//! cheaply whether the hub's record of the AS's users has drifted from the AS's own.
//!
//! The digest is the number of users and the wrapping sum of a 64-bit hash of each id. The hash is
//! XXH3-64 with seed 0 over the id's UTF-8 bytes: a specified hash, the same on every platform,
//! build and process (std's hasher is seeded at random per process). A sum does not depend on
//! order, and both adding and taking out a user are O(1), so each side keeps the digest up to date
//! as users come and go instead of scanning the set.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::ids::UserId;

/// The size and an order-independent hash of a set of user ids.
///
/// Kept in step with a set by calling [`UserDigest::insert`] for each id the set gains and
/// [`UserDigest::remove`] for each it loses: an id that was already in (or not in) the set must
/// not be counted again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserDigest {
    /// How many users the set holds.
    pub count: u64,
    /// The wrapping sum of [`UserDigest::hash`] of every id in the set.
    pub sum: u64,
}

impl UserDigest {
    /// The digest of `users`, which must not repeat an id.
    pub fn of<'a>(users: impl IntoIterator<Item = &'a UserId>) -> Self {
        let mut digest = Self::default();
        for user in users {
            digest.insert(user.as_str());
        }
        digest
    }

    /// The hash of one id: XXH3-64, seed 0, over its UTF-8 bytes.
    pub fn hash(user: &str) -> u64 {
        xxh3_64(user.as_bytes())
    }

    /// Counts a user the set has just gained.
    pub fn insert(&mut self, user: &str) {
        self.count = self.count.wrapping_add(1);
        self.sum = self.sum.wrapping_add(Self::hash(user));
    }

    /// Uncounts a user the set has just lost.
    pub fn remove(&mut self, user: &str) {
        self.count = self.count.wrapping_sub(1);
        self.sum = self.sum.wrapping_sub(Self::hash(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<UserId> {
        names.iter().map(|name| UserId::new(name).unwrap()).collect()
    }

    #[test]
    fn the_hash_is_the_specified_one() {
        // XXH3-64 of the empty input with seed 0, from the algorithm's specification; an id is
        // never empty, but this pins the function and the seed.
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        // Pinned so a change of hash (which would split old and new peers) fails a test.
        assert_eq!(UserDigest::hash("alice"), xxh3_64(b"alice"));
        assert_eq!(
            UserDigest::of(&ids(&["alice", "bob"])),
            UserDigest { count: 2, sum: xxh3_64(b"alice").wrapping_add(xxh3_64(b"bob")) }
        );
    }

    #[test]
    fn order_does_not_matter_and_removing_undoes_inserting() {
        let forward = UserDigest::of(&ids(&["a", "b", "c", "ü"]));
        let backward = UserDigest::of(&ids(&["ü", "c", "b", "a"]));
        assert_eq!(forward, backward);

        let mut digest = UserDigest::of(&ids(&["a", "b"]));
        digest.insert("c");
        digest.insert("ü");
        assert_eq!(digest, forward);
        digest.remove("ü");
        digest.remove("c");
        digest.remove("b");
        digest.remove("a");
        assert_eq!(digest, UserDigest::default());
    }

    #[test]
    fn sets_of_the_same_size_differ() {
        let one = UserDigest::of(&ids(&["a", "b", "c"]));
        let other = UserDigest::of(&ids(&["a", "b", "d"]));
        assert_eq!(one.count, other.count);
        assert_ne!(one, other);
        // A sum, unlike an XOR, does not cancel a pair: {x, x} is not {}.
        let mut twice = UserDigest::default();
        twice.insert("x");
        twice.insert("x");
        assert_ne!(twice.sum, 0);
    }

    #[test]
    fn a_large_set_keeps_in_step() {
        let users: Vec<_> =
            (0..10_000).map(|i| UserId::new(&format!("user-{i}")).unwrap()).collect();
        let mut digest = UserDigest::default();
        for user in &users {
            digest.insert(user.as_str());
        }
        assert_eq!(digest, UserDigest::of(&users));
        for user in &users[..5_000] {
            digest.remove(user.as_str());
        }
        assert_eq!(digest, UserDigest::of(&users[5_000..]));
    }
}

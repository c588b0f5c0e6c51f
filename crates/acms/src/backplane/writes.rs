//! The directory writes this hub owes the key-value store, coalesced per key: a login and a
//! logout of one user before the writer gets to them cost one write, and the pending set never
//! holds more than one write per key, so it is bounded by the directory itself.
//!
//! The writer keeps several writes in flight (each a round trip to the key-value store's
//! leader), but never two to one key, so the writes to a key are made in the order they were
//! owed. A write to the servers bucket is a barrier: it starts once every write owed before it is
//! done, and nothing owed after it starts before it is done, so a server's place is in the store
//! before its users, and its users are gone before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use acms_protocol::ServerId;
use bytes::Bytes;
use tokio::sync::Notify;

/// Which bucket a key is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Bucket {
    Users,
    Servers,
    /// Which hubs have members of which group.
    Groups,
}

/// One write owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// Set the key to this value.
    Put(Bytes),
    /// Delete the key if it still holds this value: another hub may have written it since.
    DeleteIf(Bytes),
    /// Delete the key: for keys only this hub writes.
    Delete,
    /// A user's entry, read, edited and written back over the revision read (again on a
    /// conflict), computed when it is applied: this hub's sessions of the user, from its
    /// registry, replace those of its servers, and the sessions on the servers in `drop` go
    /// (`sessions::merge`). So any number of logins, logouts and candidates of one user coalesce
    /// into one write, and two hubs' edits never undo each other.
    Sync { drop: Vec<ServerId> },
    /// A login under `replace`: this hub's session of the user, written only if the entry is
    /// still at the revision this hub saw when the user logged in (`None`: absent). With no
    /// session of the user left here when it is applied, it is a [`Write::Sync`].
    ///
    /// If the entry moved on, another hub wrote it since this hub's replica last saw it. A
    /// `fresh` login (the user logging in now) is written again over what it finds: it is the
    /// newer login, whether the other was a moment earlier (a replica behind) or raced it, and
    /// the other hub ends its session when it sees this entry, so exactly one survives. A login
    /// that only confirms a user the server had before (its snapshot after a reconnect, a
    /// resync) loses instead: the user logged in elsewhere since, and this hub ends its session.
    Claim { expected: Option<u64>, drop: Vec<ServerId>, fresh: bool },
}

impl Write {
    /// This write, owed after `older` to the same key: one write doing both. A login's claim is
    /// kept, and no server to drop is forgotten; any other newer write replaces the older.
    fn absorb(self, older: &Write) -> Write {
        let union = |mut newer: Vec<ServerId>, older: &[ServerId]| {
            for server in older {
                if !newer.contains(server) {
                    newer.push(*server);
                }
            }
            newer
        };
        match (self, older) {
            (Write::Sync { drop }, Write::Sync { drop: old }) => {
                Write::Sync { drop: union(drop, old) }
            }
            (Write::Sync { drop }, Write::Claim { expected, drop: old, fresh }) => {
                Write::Claim { expected: *expected, drop: union(drop, old), fresh: *fresh }
            }
            (Write::Claim { expected, drop, fresh }, Write::Sync { drop: old }) => {
                Write::Claim { expected, drop: union(drop, old), fresh }
            }
            (
                Write::Claim { expected, drop, fresh },
                Write::Claim { drop: old, fresh: was, .. },
            ) => Write::Claim { expected, drop: union(drop, old), fresh: fresh || *was },
            (newer, _) => newer,
        }
    }
}

/// Claims remembered until the watch echoes them, at most; a bound for a watch that broke.
const MAX_UNECHOED: usize = 65_536;

/// The pending writes and the writer's wake-up.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pending: Mutex<Pending>,
    notify: Notify,
}

type Key = (Bucket, String);

#[derive(Debug, Default)]
struct Pending {
    /// Keys of logins being decided (see [`Writes::begin`]): they count as owed.
    begun: HashSet<Key>,
    /// Keys this hub claimed, with the revision its write made, until the watch brings that
    /// revision (see [`Writes::is_stale`]).
    unechoed: HashMap<Key, u64>,
    /// Keys whose write the writer took and has not finished.
    writing: HashSet<Key>,
    /// Of those, how many are in the servers bucket: a barrier while above zero.
    writing_servers: usize,
    /// By key: the order it was first owed in, and the latest write.
    writes: HashMap<Key, (u64, Write)>,
    /// The keys owed, by that order.
    order: BTreeMap<u64, Key>,
    next: u64,
}

impl Pending {
    fn owe(&mut self, key: Key, write: Write, replace: bool) {
        match self.writes.get_mut(&key) {
            Some(slot) if replace => slot.1 = write.absorb(&slot.1),
            Some(slot) => slot.1 = slot.1.clone().absorb(&write),
            None => {
                let order = self.next;
                self.next += 1;
                self.order.insert(order, key.clone());
                self.writes.insert(key, (order, write));
            }
        }
    }
}

impl Writes {
    /// Owes `write` to `key` of `bucket`, replacing (or, for a user's entry, joining) a write to
    /// it not yet done.
    pub(crate) fn owe(&self, bucket: Bucket, key: String, write: Write) {
        self.pending.lock().expect("writes lock").owe((bucket, key), write, true);
        self.notify.notify_one();
    }

    /// Owes `write` again after it failed, unless a newer write to the key is owed already (which
    /// then also drops the servers the failed one dropped).
    pub(crate) fn owe_unless_newer(&self, bucket: Bucket, key: String, write: Write) {
        self.pending.lock().expect("writes lock").owe((bucket, key), write, false);
        self.notify.notify_one();
    }

    /// Whether a write to `key` is owed or being made: its outcome is not known yet.
    pub(crate) fn is_owed(&self, bucket: Bucket, key: &str) -> bool {
        let pending = self.pending.lock().expect("writes lock");
        let key = (bucket, key.to_owned());
        pending.writes.contains_key(&key)
            || pending.writing.contains(&key)
            || pending.begun.contains(&key)
    }

    /// A write to `key` is about to be decided: until [`Writes::done`], the key counts as owed,
    /// so nothing judges it by an entry this hub is about to replace.
    pub(crate) fn begin(&self, bucket: Bucket, key: String) {
        self.pending.lock().expect("writes lock").begun.insert((bucket, key));
    }

    /// A write begun by [`Writes::begin`] was decided (and owed, if there is one).
    pub(crate) fn done(&self, bucket: Bucket, key: &str) {
        self.pending.lock().expect("writes lock").begun.remove(&(bucket, key.to_owned()));
    }

    /// This hub's claim of `key` was written at `revision`: until the watch brings it, an
    /// older entry the watch brings is stale.
    pub(crate) fn claimed_at(&self, bucket: Bucket, key: &str, revision: u64) {
        let mut pending = self.pending.lock().expect("writes lock");
        if pending.unechoed.len() >= MAX_UNECHOED {
            // A watch that broke never echoes: what it owed is forgotten, not kept for good.
            pending.unechoed.clear();
        }
        let slot = pending.unechoed.entry((bucket, key.to_owned())).or_insert(revision);
        *slot = (*slot).max(revision);
    }

    /// Whether the watch's entry of `key` at `revision` is older than one this hub wrote since
    /// (the watch brings entries in order, so this hub's own comes after it): not to be judged,
    /// since it no longer stands. The entry at or past that revision ends the wait.
    pub(crate) fn is_stale(&self, bucket: Bucket, key: &str, revision: u64) -> bool {
        let mut pending = self.pending.lock().expect("writes lock");
        if pending.unechoed.is_empty() {
            return false;
        }
        let key = (bucket, key.to_owned());
        match pending.unechoed.get(&key) {
            Some(&written) if revision < written => true,
            Some(_) => {
                pending.unechoed.remove(&key);
                false
            }
            None => false,
        }
    }

    /// The writer finished the write to `key` it took: a write owed to the key since may start.
    pub(crate) fn written(&self, bucket: Bucket, key: &str) {
        let mut pending = self.pending.lock().expect("writes lock");
        if pending.writing.remove(&(bucket, key.to_owned())) && bucket == Bucket::Servers {
            pending.writing_servers -= 1;
        }
    }

    /// Takes up to `room` writes owed, oldest key first, that may start now: none to a key being
    /// written, and none past a write to the servers bucket that must wait for those before it.
    /// Each is being written until [`Writes::written`].
    pub(crate) fn take(&self, room: usize) -> Vec<(Bucket, String, Write)> {
        let mut pending = self.pending.lock().expect("writes lock");
        let pending = &mut *pending;
        if pending.writing_servers > 0 {
            return Vec::new();
        }
        let mut keys: Vec<(u64, Key)> = Vec::new();
        for (&order, key) in &pending.order {
            if keys.len() >= room {
                break;
            }
            if key.0 == Bucket::Servers {
                // A barrier: alone, after everything owed before it.
                if pending.writing.is_empty() && keys.is_empty() {
                    keys.push((order, key.clone()));
                }
                break;
            }
            if !pending.writing.contains(key) {
                keys.push((order, key.clone()));
            }
        }
        let mut taken = Vec::with_capacity(keys.len());
        for (order, key) in keys {
            pending.order.remove(&order);
            let (_, write) = pending.writes.remove(&key).expect("an owed key has a write");
            if key.0 == Bucket::Servers {
                pending.writing_servers += 1;
            }
            pending.writing.insert(key.clone());
            taken.push((key.0, key.1, write));
        }
        taken
    }

    /// Waits until a write is owed.
    pub(crate) async fn owed(&self) {
        self.notify.notified().await;
    }

    /// How many keys have a write owed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.lock().expect("writes lock").writes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(value: &'static [u8]) -> Write {
        Write::Put(Bytes::from_static(value))
    }

    #[test]
    fn writes_to_one_key_coalesce_into_the_last() {
        let writes = Writes::default();
        writes.owe(Bucket::Users, "a".into(), put(b"1"));
        writes.owe(Bucket::Users, "b".into(), put(b"2"));
        writes.owe(Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1")));
        writes.owe(Bucket::Servers, "a".into(), put(b"3"));
        assert_eq!(writes.len(), 3);
        let taken = writes.take(10);
        assert_eq!(
            taken,
            vec![
                (Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1"))),
                (Bucket::Users, "b".into(), put(b"2")),
            ],
            "the servers write waits for those owed before it"
        );
        assert!(writes.take(10).is_empty());
        assert!(writes.is_owed(Bucket::Users, "a"), "in flight until written");
        writes.written(Bucket::Users, "a");
        assert!(!writes.is_owed(Bucket::Users, "a"));
        assert!(writes.is_owed(Bucket::Users, "b"));
        assert!(writes.take(10).is_empty(), "b is still being written");
        writes.written(Bucket::Users, "b");
        assert_eq!(writes.take(10), vec![(Bucket::Servers, "a".into(), put(b"3"))]);
    }

    #[test]
    fn several_keys_are_written_at_once_but_one_key_only_once_at_a_time() {
        let writes = Writes::default();
        for key in ["a", "b", "c"] {
            writes.owe(Bucket::Users, key.into(), put(b"1"));
        }
        let first = writes.take(2);
        assert_eq!(first.len(), 2, "bounded by the room: {first:?}");
        assert_eq!((first[0].1.as_str(), first[1].1.as_str()), ("a", "b"), "oldest first");
        // A newer write to a key being written waits for it: the store sees them in order.
        writes.owe(Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1")));
        let next = writes.take(10);
        assert_eq!(next, vec![(Bucket::Users, "c".into(), put(b"1"))]);
        writes.written(Bucket::Users, "a");
        let again = writes.take(10);
        assert_eq!(
            again,
            vec![(Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1")))]
        );
        // A write that failed is owed again, unless a newer one came meanwhile.
        writes.owe(Bucket::Users, "b".into(), put(b"2"));
        writes.written(Bucket::Users, "b");
        writes.owe_unless_newer(Bucket::Users, "b".into(), put(b"1"));
        assert_eq!(writes.take(10), vec![(Bucket::Users, "b".into(), put(b"2"))]);
    }

    #[test]
    fn a_servers_write_is_a_barrier_in_the_order_owed() {
        let writes = Writes::default();
        writes.owe(Bucket::Users, "u1".into(), put(b"1"));
        writes.owe(Bucket::Servers, "s1".into(), put(b"place"));
        writes.owe(Bucket::Users, "u2".into(), put(b"1"));
        assert_eq!(writes.take(10), vec![(Bucket::Users, "u1".into(), put(b"1"))]);
        assert!(writes.take(10).is_empty(), "the server's place waits for u1");
        writes.written(Bucket::Users, "u1");
        assert_eq!(writes.take(10), vec![(Bucket::Servers, "s1".into(), put(b"place"))]);
        assert!(writes.take(10).is_empty(), "u2 waits for its server's place");
        writes.written(Bucket::Servers, "s1");
        assert_eq!(writes.take(10), vec![(Bucket::Users, "u2".into(), put(b"1"))]);
    }

    #[test]
    fn edits_of_a_user_s_entry_join_and_a_login_s_claim_is_kept() {
        let writes = Writes::default();
        let sync = |drop: &[u32]| Write::Sync { drop: drop.iter().map(|&s| ServerId(s)).collect() };
        writes.owe(
            Bucket::Users,
            "a".into(),
            Write::Claim { expected: Some(4), drop: vec![], fresh: true },
        );
        writes.owe(Bucket::Users, "a".into(), sync(&[7]));
        writes.owe(Bucket::Users, "a".into(), sync(&[8, 7]));
        let claim =
            Write::Claim { expected: Some(4), drop: vec![ServerId(8), ServerId(7)], fresh: true };
        assert_eq!(writes.take(10), vec![(Bucket::Users, "a".into(), claim)]);
        // Failed, while a newer edit was owed: that one is made, dropping what both drop.
        writes.owe(Bucket::Users, "a".into(), sync(&[9]));
        writes.written(Bucket::Users, "a");
        writes.owe_unless_newer(Bucket::Users, "a".into(), sync(&[7]));
        assert_eq!(writes.take(10), vec![(Bucket::Users, "a".into(), sync(&[9, 7]))]);
    }

    #[test]
    fn a_login_being_decided_counts_as_owed_without_blocking_the_writer() {
        let writes = Writes::default();
        writes.begin(Bucket::Users, "a".into());
        assert!(writes.is_owed(Bucket::Users, "a"));
        writes.owe(Bucket::Users, "a".into(), put(b"1"));
        writes.done(Bucket::Users, "a");
        assert!(writes.is_owed(Bucket::Users, "a"), "owed until written");
        assert_eq!(writes.take(10).len(), 1);
        writes.written(Bucket::Users, "a");
        assert!(!writes.is_owed(Bucket::Users, "a"));
    }
}

//! The directory writes this hub owes the key-value store, coalesced per key: a login and a
//! logout of one user before the writer gets to them cost one write, and the pending set never
//! holds more than one write per key, so it is bounded by the directory itself.

use std::collections::HashMap;
use std::sync::Mutex;

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
    /// A login under `replace`: set the key to this value only if it is still at the revision
    /// this hub saw when the user logged in (`None`: absent). A hub that loses such a race ends
    /// its own session of the user, so that exactly one survives.
    Claim { value: Bytes, expected: Option<u64> },
}

/// The pending writes and the writer's wake-up.
#[derive(Debug, Default)]
pub(crate) struct Writes {
    pending: Mutex<Pending>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    /// Keys whose write the writer took and has not finished.
    in_flight: std::collections::HashSet<(Bucket, String)>,
    /// By key: the order it was first written in, and the latest write.
    writes: HashMap<(Bucket, String), (u64, Write)>,
    next: u64,
}

impl Writes {
    /// Owes `write` to `key` of `bucket`, replacing a write to it not yet done.
    pub(crate) fn owe(&self, bucket: Bucket, key: String, write: Write) {
        let mut pending = self.pending.lock().expect("writes lock");
        let order = pending.next;
        pending.next += 1;
        pending
            .writes
            .entry((bucket, key))
            .and_modify(|slot| slot.1 = write.clone())
            .or_insert((order, write));
        drop(pending);
        self.notify.notify_one();
    }

    /// Owes `write` again after it failed, unless a newer write to the key is owed already.
    pub(crate) fn owe_unless_newer(&self, bucket: Bucket, key: String, write: Write) {
        let mut pending = self.pending.lock().expect("writes lock");
        let order = pending.next;
        pending.next += 1;
        pending.writes.entry((bucket, key)).or_insert((order, write));
        drop(pending);
        self.notify.notify_one();
    }

    /// Whether a write to `key` is owed or being made: its outcome is not known yet.
    pub(crate) fn is_owed(&self, bucket: Bucket, key: &str) -> bool {
        let pending = self.pending.lock().expect("writes lock");
        let key = (bucket, key.to_owned());
        pending.writes.contains_key(&key) || pending.in_flight.contains(&key)
    }

    /// A write to `key` is about to be decided: until [`Writes::done`], the key counts as owed,
    /// so nothing judges it by an entry this hub is about to replace.
    pub(crate) fn begin(&self, bucket: Bucket, key: String) {
        self.pending.lock().expect("writes lock").in_flight.insert((bucket, key));
    }

    /// The writer finished the write to `key` it took (or a write begun was decided).
    pub(crate) fn done(&self, bucket: Bucket, key: &str) {
        self.pending.lock().expect("writes lock").in_flight.remove(&(bucket, key.to_owned()));
    }

    /// Takes every write owed, oldest key first; each is in flight until [`Writes::done`].
    pub(crate) fn take(&self) -> Vec<(Bucket, String, Write)> {
        let mut pending = self.pending.lock().expect("writes lock");
        let writes = std::mem::take(&mut pending.writes);
        pending.in_flight.extend(writes.keys().cloned());
        drop(pending);
        let mut writes: Vec<_> = writes.into_iter().collect();
        writes.sort_by_key(|(_, (order, _))| *order);
        writes.into_iter().map(|((bucket, key), (_, write))| (bucket, key, write)).collect()
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

    #[test]
    fn writes_to_one_key_coalesce_into_the_last() {
        let writes = Writes::default();
        let put = |v: &'static [u8]| Write::Put(Bytes::from_static(v));
        writes.owe(Bucket::Users, "a".into(), put(b"1"));
        writes.owe(Bucket::Users, "b".into(), put(b"2"));
        writes.owe(Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1")));
        writes.owe(Bucket::Servers, "a".into(), put(b"3"));
        assert_eq!(writes.len(), 3);
        let taken = writes.take();
        assert_eq!(
            taken,
            vec![
                (Bucket::Users, "a".into(), Write::DeleteIf(Bytes::from_static(b"1"))),
                (Bucket::Users, "b".into(), put(b"2")),
                (Bucket::Servers, "a".into(), put(b"3")),
            ]
        );
        assert!(writes.take().is_empty());
        assert!(writes.is_owed(Bucket::Users, "a"), "in flight until done");
        writes.done(Bucket::Users, "a");
        assert!(!writes.is_owed(Bucket::Users, "a"));
        assert!(writes.is_owed(Bucket::Users, "b"));
    }
}

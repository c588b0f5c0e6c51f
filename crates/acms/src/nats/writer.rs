//! The directory writer: the writes this hub owes the key-value store (`backplane::writes`),
//! several in flight but one at a time per key; a user's entry read, merged with this hub's
//! sessions and written back over the revision read; a login's claim.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::effects;
use crate::backplane::{
    Backplane, Bucket, Session, Write, decode_sessions, encode_sessions, merge, user_of_key,
};
use crate::state::HubState;

/// Reads `key`'s entry: its sessions (none if absent, deleted or unreadable) and the revision to
/// write over (`None`: absent, to be created).
async fn read_entry(store: &kv::Store, key: &str) -> Result<(Vec<Session>, Option<u64>), String> {
    match store.entry(key).await.map_err(|e| e.to_string())? {
        Some(entry) if matches!(entry.operation, kv::Operation::Put) => {
            let sessions = decode_sessions(&entry.value).unwrap_or_else(|err| {
                warn!(%key, error = %err, "unreadable user entry; written over");
                Vec::new()
            });
            Ok((sessions, Some(entry.revision)))
        }
        _ => Ok((Vec::new(), None)),
    }
}

/// Tries of a read-modify-write of a user's entry that keeps losing to other hubs' writes before
/// it is owed again (after a pause).
const SYNC_TRIES: usize = 8;

/// Makes a [`Write::Sync`] of `key`: this hub's sessions of the user merged into the entry,
/// written over the revision read (first the replica's); read again on a conflict, a bounded
/// number of times.
async fn sync(
    store: &kv::Store,
    key: &str,
    drop: &[acms_protocol::ServerId],
    shared: &HubState,
    core: &Backplane,
) -> Result<(), String> {
    let Some(user) = user_of_key(key) else { return Ok(()) };
    let mut last = String::new();
    // First over the replica's copy, which is most often current: one round trip. A stale copy
    // only costs a refused write, and the entry is read then.
    let mut known = Some(core.replica.user_entry(user.as_str()));
    for _ in 0..SYNC_TRIES {
        let (replica, (old, revision)) = match known.take() {
            Some(known) => (true, known),
            None => (false, read_entry(store, key).await?),
        };
        let here = effects::sessions_here(shared, core, user.as_str());
        let new = merge(&old, &here, |server| core.is_mine(server), drop, shared.registry.multi());
        if new == old && (revision.is_some() || new.is_empty()) {
            if replica {
                // Nothing to write, by a copy that may be behind: the store decides.
                continue;
            }
            return Ok(());
        }
        let written = match (new.is_empty(), revision) {
            (true, Some(revision)) => {
                store.delete_expect_revision(key, Some(revision)).await.map_err(|e| e.to_string())
            }
            (true, None) => return Ok(()),
            (false, Some(revision)) => store
                .update(key, encode_sessions(&new), revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (false, None) => store
                .create(key, encode_sessions(&new))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(()),
            // Another hub wrote it since it was read (most likely): read again.
            Err(err) => last = err,
        }
    }
    Err(format!("the entry kept changing or could not be written: {last}"))
}

/// Writes a login under `replace` over the revision its hub knew (see [`Write::Claim`]). Lost
/// to another hub's login: this hub's session of the user ends, and the write is done. Returns
/// the session written and its revision, if it was.
async fn claim(
    store: &kv::Store,
    key: &str,
    (expected, drop, fresh): (Option<u64>, &[acms_protocol::ServerId], bool),
    shared: &HubState,
    core: &Backplane,
) -> Result<Option<(acms_protocol::ServerId, u64)>, String> {
    let Some(user) = user_of_key(key) else { return Ok(None) };
    let here = effects::sessions_here(shared, core, user.as_str());
    let Some(ours) = here.last().map(|session| session.server) else {
        // Logged out again before the write: only what the others need to know.
        return sync(store, key, drop, shared, core).await.map(|()| None);
    };
    let value = encode_sessions(&here);
    let written = match expected {
        None => store.create(key, value.clone()).await.map_err(|e| e.to_string()),
        Some(revision) => {
            store.update(key, value.clone(), revision).await.map_err(|e| e.to_string())
        }
    };
    let err = match written {
        Ok(revision) => return Ok(Some((ours, revision))),
        Err(err) => err,
    };
    let retry = |expected| Write::Claim { expected, drop: drop.to_vec(), fresh };
    match read_entry(store, key).await {
        Ok((sessions, Some(revision))) => {
            if sessions.iter().any(|session| session.server == ours) {
                // Written already (a write whose answer was lost): brought up to date.
                if sessions != here {
                    let drop = drop.to_vec();
                    core.writes.owe_unless_newer(
                        Bucket::Users,
                        key.to_owned(),
                        Write::Sync { drop },
                    );
                }
            } else if fresh || sessions.iter().all(|session| core.is_mine(session.server)) {
                // A new login is newer than what another hub wrote since this hub's replica saw
                // the entry (or only this hub's own earlier login was): written over it.
                core.writes.owe_unless_newer(Bucket::Users, key.to_owned(), retry(Some(revision)));
            } else if let Some(theirs) = sessions.last() {
                effects::login_lost(shared, key, ours, theirs.server);
            }
            Ok(None)
        }
        // The entry was deleted meanwhile (a logout): written afresh.
        Ok((_, None)) if expected.is_some() => {
            core.writes.owe_unless_newer(Bucket::Users, key.to_owned(), retry(None));
            Ok(None)
        }
        Ok(_) => Err(err),
        Err(read) => Err(format!("{err}; then {read}")),
    }
}

/// Directory writes in flight at once, at most: each is a round trip to the key-value store's
/// leader, and one at a time capped logins at about 2,400 a second across hubs.
const WRITES_IN_FLIGHT: usize = 64;

/// After a write failed (the backplane may be away), no new write starts for this long.
const WRITE_RETRY: Duration = Duration::from_millis(200);

/// What became of one directory write.
struct Applied {
    bucket: Bucket,
    key: String,
    write: Write,
    /// A login's write that won: its server and revision.
    claimed: Option<(acms_protocol::ServerId, u64)>,
    result: Result<(), String>,
}

/// Makes one directory write.
async fn apply(
    store: kv::Store,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    (bucket, key, write): (Bucket, String, Write),
) -> Applied {
    let mut claimed = None;
    let result = match &write {
        Write::Put(value) => {
            store.put(&key, value.clone()).await.map(drop).map_err(|e| e.to_string())
        }
        Write::Delete => store.delete(&key).await.map_err(|e| e.to_string()),
        Write::DeleteIf(expected) => match store.entry(&key).await {
            Ok(Some(entry))
                if entry.value == *expected && matches!(entry.operation, kv::Operation::Put) =>
            {
                store
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                    .map_err(|e| e.to_string())
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err.to_string()),
        },
        Write::Sync { drop } => sync(&store, &key, drop, &shared, &core).await,
        Write::Claim { expected, drop, fresh } => {
            let claim_of = (*expected, drop.as_slice(), *fresh);
            claim(&store, &key, claim_of, &shared, &core).await.map(|won| claimed = won)
        }
    };
    Applied { bucket, key, write, claimed, result }
}

/// The directory's buckets, for the writer.
pub(super) struct Stores {
    pub(super) users: kv::Store,
    pub(super) servers: kv::Store,
    pub(super) groups: kv::Store,
}

/// Applies the directory writes this hub owes, coalesced per key, up to [`WRITES_IN_FLIGHT`] at
/// once and one at a time per key (see `backplane::writes` for the order kept).
pub(super) async fn write(
    stores: Stores,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    shutdown: CancellationToken,
) {
    let mut writing = futures_util::stream::FuturesUnordered::new();
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        if paused_until.is_none_or(|until| tokio::time::Instant::now() >= until) {
            paused_until = None;
            for owed in core.writes.take(WRITES_IN_FLIGHT - writing.len()) {
                let store = match owed.0 {
                    Bucket::Users => stores.users.clone(),
                    Bucket::Servers => stores.servers.clone(),
                    Bucket::Groups => stores.groups.clone(),
                };
                writing.push(apply(store, shared.clone(), core.clone(), owed));
            }
        }
        let resume = paused_until.unwrap_or_else(tokio::time::Instant::now);
        let applied = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = core.writes.owed() => continue,
            _ = tokio::time::sleep_until(resume), if paused_until.is_some() => continue,
            applied = writing.next(), if !writing.is_empty() => applied,
        };
        let Some(Applied { bucket, key, write, claimed, result }) = applied else { continue };
        if let Some((_, revision)) = claimed {
            // Before the key stops counting as owed, so no older entry is judged in between.
            core.writes.claimed_at(bucket, &key, revision);
        }
        core.writes.written(bucket, &key);
        if let Some((server, revision)) = claimed {
            // A login elsewhere that the watch brought while this one was being written was
            // let pass then: judged now. (One that comes after is judged as it comes.)
            effects::login_settled(&shared, &core, &key, server, revision);
        }
        if let Err(err) = result {
            // Owed again unless a newer write replaced it; the backplane may be away.
            warn!(error = %err, ?bucket, %key, "directory write failed; retrying");
            core.writes.owe_unless_newer(bucket, key, write);
            paused_until = Some(tokio::time::Instant::now() + WRITE_RETRY);
        }
    }
}

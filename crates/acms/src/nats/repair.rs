//! The shell of the reconciliation (`backplane::reconcile`): a periodic check that the shared
//! directory holds what this hub's registry and groups say, and the sweep that makes the replica
//! forget entries the directory no longer holds when a watch starts again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use acms_protocol::ServerId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::effects;
use crate::backplane::reconcile;
use crate::backplane::{Backplane, Bucket, Counts, Drift, group_key, server_key, user_key};
use crate::state::HubState;

/// How often the directory is checked against this hub. A difference is repaired at the second
/// check that finds it, so drift heals within about twice this.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Checks after the NATS connection came back that compare everything, whatever the counts:
/// the first may run before the watches have swept the replica.
const FULL_AFTER_RECONNECT: u32 = 2;

/// Checks the directory every [`CHECK_EVERY`], and at once when the NATS connection comes back
/// (`reconnected` changes), until `shutdown`.
pub(super) async fn run(
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    mut reconnected: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    reconnected.borrow_and_update();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forced = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Ok(()) = reconnected.changed() => {
                reconnected.borrow_and_update();
                forced = FULL_AFTER_RECONNECT;
            }
        }
        check(&shared, &core, forced > 0);
        forced = forced.saturating_sub(1);
    }
}

/// One check: what differs between the directory (the replica) and this hub, repaired if the
/// check before found it too. The full comparison runs when `forced` or as
/// [`Backplane::full_check_due`] says.
pub(super) fn check(shared: &HubState, core: &Backplane, forced: bool) {
    let servers = shared.registry.servers();
    let mine: HashSet<ServerId> = servers.iter().map(|info| info.id).collect();
    let counts = Counts {
        sessions: shared.registry.user_count(),
        placed_here: mine.iter().map(|&server| core.replica.users_placed_on(server)).sum(),
        groups: shared.groups.len(),
        stored_groups: core.interest.stored_here_len(),
    };
    let connected = servers.iter().map(|info| info.id).filter(|&s| shared.registry.is_connected(s));
    let mut found =
        reconcile::servers(connected, |server| core.replica.place(server).map(|place| place.hub));
    if core.full_check_due(counts, forced) {
        let before = found.len();
        let sessions = shared.registry.sessions_here();
        let (missing, matched) =
            reconcile::missing_users(sessions, |user| core.replica.user(user.as_str()));
        found.extend(missing);
        // Entries on servers here beyond those matched by a session: some are stale. Not while
        // a snapshot is coming in: its users are not all in the registry yet.
        let complete: HashSet<ServerId> =
            mine.iter().copied().filter(|&server| !core.is_snapshotting(server)).collect();
        if counts.placed_here > matched && !shared.registry.settling() {
            let entries = core.replica.users_on_servers(&complete);
            found.extend(reconcile::stale_users(entries, |user, server| {
                shared.registry.sessions(user.as_str()).contains(&server)
            }));
        }
        found.extend(reconcile::groups(shared.groups.all(), &core.interest.stored_here()));
        core.full_check_done(counts, found.len() - before);
    }
    for drift in core.confirm_drift(found) {
        repair(shared, core, drift);
    }
}

/// Owes the directory what `drift` lacks.
fn repair(shared: &HubState, core: &Backplane, drift: Drift) {
    let what = drift.what();
    match drift {
        Drift::Server(server) => {
            let Some(info) = shared.registry.servers().into_iter().find(|info| info.id == server)
            else {
                return;
            };
            warn!(what, %server, "app server missing from the shared directory; registering it again");
            let epoch = shared.registry.epoch(server).unwrap_or_default();
            core.server_registered(server, epoch, info.client_addr);
        }
        Drift::UserOnline(user, server) => {
            warn!(what, %user, %server, "user missing from the shared directory; writing them again");
            core.user_online(user.as_str(), server);
        }
        Drift::UserOffline(user, server) => {
            warn!(what, %user, %server, "the shared directory places a user on an app server here that does not have them; taking them out");
            core.user_offline(user.as_str(), server);
        }
        Drift::Group(group) => {
            warn!(what, %group, "this hub's entry of a group differs in the shared directory; writing it again");
            shared.groups.share_again(&group);
        }
    }
}

/// The keys of `bucket` the replica holds now, but for those with a write of this hub owed.
/// Taken before a watch lists the bucket: these are the only entries the listing can show gone.
/// An entry this hub records while the listing runs (a server registering as the hub starts)
/// may be missing from it without being gone; forgotten, it would be registered again, and every
/// hub's servers would send that server again what it had not acknowledged.
pub(super) fn held(core: &Backplane, bucket: Bucket) -> HashSet<String> {
    let keys: Vec<String> = match bucket {
        Bucket::Users => {
            core.replica.user_ids().iter().map(|user| user_key(user.as_str())).collect()
        }
        Bucket::Servers => core.replica.server_ids().into_iter().map(server_key).collect(),
        Bucket::Groups => {
            let own = core.interest.stored_here().into_keys().map(|group| (group, core.me));
            let others = core.interest.entries_of_others(core.me).into_iter();
            own.chain(others).map(|(group, hub)| group_key(group.as_str(), hub)).collect()
        }
    };
    keys.into_iter().filter(|key| !core.writes.is_owed(bucket, key)).collect()
}

/// The keys `held` before the listing that the bucket no longer has (`listed`), and that have
/// no write of this hub owed now.
fn gone<'a>(
    core: &Backplane,
    bucket: Bucket,
    held: &'a HashSet<String>,
    listed: &HashSet<String>,
) -> HashSet<&'a str> {
    let gone = held.iter().filter(|key| !listed.contains(*key));
    gone.filter(|key| !core.writes.is_owed(bucket, key)).map(String::as_str).collect()
}

/// A watch of `bucket` starts (again) and the bucket holds the keys `listed`: every entry
/// [`held`] before the listing and not among them is gone from the directory (its stream was
/// emptied or replaced while this hub was away) and is handled as deleted, which also puts back
/// this hub's own.
pub(super) fn sweep(
    shared: &HubState,
    core: &Backplane,
    bucket: Bucket,
    held: &HashSet<String>,
    listed: &HashSet<String>,
) {
    let mut gone = gone(core, bucket, held, listed);
    if bucket == Bucket::Groups {
        // This hub's own entries are written again; the others' are forgotten below.
        for group in core.interest.stored_here().into_keys() {
            if gone.remove(group_key(group.as_str(), core.me).as_str()) {
                core.interest.set_stored_here(group, Vec::new());
            }
        }
    }
    if gone.is_empty() {
        return;
    }
    info!(
        ?bucket,
        entries = gone.len(),
        "entries no longer in the shared directory (its bucket was emptied or replaced); forgotten"
    );
    for key in gone {
        effects::directory(shared, bucket, key, None, 0);
    }
}

#[cfg(test)]
mod tests {
    use acms_common::discovery::ClusterName;

    use super::*;
    use crate::backplane::{HubId, Place};

    #[test]
    fn only_entries_held_before_the_listing_and_not_being_written_can_be_gone() {
        let cluster = ClusterName::new("test".to_owned()).unwrap();
        let (core, _queue) = Backplane::new(HubId(1), &cluster, Duration::from_secs(3), 8);
        let place = |hub| Place { hub, epoch: 1, registration: 1, client_addr: "a:1".into() };
        // Known from the watch: a server of another hub, and one of this hub's written before.
        let (elsewhere, here) = (ServerId(5), ServerId(6));
        core.replica.set_place(elsewhere, place(HubId(2)));
        core.replica.set_place(here, place(HubId(1)));
        // One registers here just before the listing: its write is still owed.
        let (owed, during) = (ServerId(11), ServerId(12));
        core.server_registered(owed, 1, "a:11".into());
        let held = held(&core, Bucket::Servers);
        assert_eq!(held, [elsewhere, here].into_iter().map(server_key).collect());
        // Another registers while the listing runs; the listing shows only `here`.
        core.server_registered(during, 1, "a:12".into());
        let listed = HashSet::from([server_key(here)]);
        let elsewhere = server_key(elsewhere);
        assert_eq!(
            gone(&core, Bucket::Servers, &held, &listed),
            HashSet::from([elsewhere.as_str()]),
            "neither server registering here is taken for gone"
        );
    }
}

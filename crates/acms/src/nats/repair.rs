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

/// A watch of `bucket` starts (again) and the bucket holds the keys `listed`: every entry of the
/// replica not among them is gone from the directory (its stream was emptied or replaced while
/// this hub was away) and is handled as deleted, which also puts back this hub's own.
pub(super) fn sweep(shared: &HubState, core: &Backplane, bucket: Bucket, listed: &HashSet<String>) {
    let gone: Vec<String> = match bucket {
        Bucket::Users => {
            let keys = core.replica.user_ids().into_iter().map(|user| user_key(user.as_str()));
            keys.filter(|key| !listed.contains(key)).collect()
        }
        Bucket::Servers => {
            let keys = core.replica.server_ids().into_iter().map(server_key);
            keys.filter(|key| !listed.contains(key)).collect()
        }
        Bucket::Groups => {
            for group in core.interest.stored_here().into_keys() {
                if !listed.contains(&group_key(group.as_str(), core.me)) {
                    core.interest.set_stored_here(group, Vec::new());
                }
            }
            let entries = core.interest.entries_of_others(core.me).into_iter();
            let keys = entries.map(|(group, hub)| group_key(group.as_str(), hub));
            keys.filter(|key| !listed.contains(key)).collect()
        }
    };
    if gone.is_empty() {
        return;
    }
    info!(
        ?bucket,
        entries = gone.len(),
        "entries no longer in the shared directory (its bucket was emptied or replaced); forgotten"
    );
    for key in gone {
        effects::directory(shared, bucket, &key, None, 0);
    }
}

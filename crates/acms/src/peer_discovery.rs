//! Peer hubs found on the LAN, for hot standby with `peers = "auto"` (`acms --peers auto`).
//!
//! A thread browses DNS-SD (`acms_common::discovery::Browser`) for the hubs of this hub's
//! cluster name and hands each change to a task, which keeps [`Standby`](crate::standby::Standby)'s
//! peers in step: a hub found gets a peer slot and a watcher (`peer_watch`), exactly like a
//! configured peer, so it still has to authenticate; a hub gone from the LAN loses both. The
//! hub's own announcement is skipped. The hub decides nothing before the first search had
//! `keepalive_timeout` to find the others: alone by then, it becomes active. Two hubs that start
//! without seeing each other both become active, and yield by the usual rule as soon as they
//! meet, so the app servers still end on one hub.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use acms_common::discovery::{Browser, Change, ClusterName, Hub};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::peer_watch;
use crate::state::HubState;

/// How often the browsing thread looks whether the hub is shutting down.
const POLL: Duration = Duration::from_millis(250);

/// Changes that may wait for the task; the browser keeps at most `MAX_HUBS` hubs, so this only
/// smooths a burst.
const CHANGES: usize = 64;

/// A peer found on the LAN: its slot in the standby state and what stops its watcher.
struct Found {
    slot: usize,
    addr: String,
    stop: CancellationToken,
}

/// Finds the peer hubs of `cluster` on the LAN until `shutdown`, skipping the instance `own`
/// (this hub's announcement, when it is announced).
pub(crate) async fn run(
    shared: Arc<HubState>,
    cluster: ClusterName,
    own: Option<String>,
    shutdown: CancellationToken,
) {
    let (changes, mut received) = mpsc::channel(CHANGES);
    let browsing = cluster.clone();
    let stop = shutdown.clone();
    let spawned = std::thread::Builder::new()
        .name("acms-peer-discovery".into())
        .spawn(move || browse(browsing, &changes, &stop));
    if let Err(err) = spawned {
        error!(error = %err, "cannot look for peer hubs on the LAN");
    }
    info!(%cluster, "looking for the peer hubs of this cluster on the LAN (DNS-SD)");
    let settle = tokio::time::sleep(shared.config.keepalive_timeout);
    tokio::pin!(settle);
    let mut settled = false;
    let mut found: HashMap<String, Found> = HashMap::new();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut settle, if !settled => {
                settled = true;
                let servers = shared.registry.connected_count();
                info!(peers = found.len(), "peer hubs found on the LAN so far: deciding which hub is active");
                peer_watch::act(&shared, shared.standby.handle_settled(servers));
                continue;
            }
            change = received.recv() => match change {
                Some(change) => change,
                // The browser stopped (logged there): the peers found so far stay watched.
                None => {
                    shutdown.cancelled().await;
                    break;
                }
            },
        };
        match change {
            Change::Added(hub) | Change::Updated(hub) => {
                if own.as_deref() == Some(hub.instance.as_str()) {
                    continue;
                }
                let addr = hub.addr.to_string();
                if found.get(&hub.instance).is_some_and(|known| known.addr == addr) {
                    // A new role: its watcher learns it over the status link.
                    continue;
                }
                if let Some(old) = found.remove(&hub.instance) {
                    forget(&shared, old);
                }
                found.insert(hub.instance.clone(), watch(&shared, &hub, &shutdown));
            }
            Change::Removed(hub) => {
                if let Some(gone) = found.remove(&hub.instance) {
                    info!(instance = %hub.instance, addr = %gone.addr, "peer hub gone from the LAN");
                    forget(&shared, gone);
                }
            }
        }
    }
    for (_, peer) in found.drain() {
        peer.stop.cancel();
    }
}

/// Gives a hub found on the LAN a peer slot and a watcher.
fn watch(shared: &Arc<HubState>, hub: &Hub, shutdown: &CancellationToken) -> Found {
    let addr = hub.addr.to_string();
    let slot = shared.standby.add_peer(addr.clone());
    info!(instance = %hub.instance, peer = %addr, role = hub.role.as_str(), "peer hub found on the LAN");
    let stop = shutdown.child_token();
    let span = info_span!("peer", peer = %addr);
    tokio::spawn(peer_watch::watch(shared.clone(), slot, stop.clone()).instrument(span));
    Found { slot, addr, stop }
}

/// Stops watching a peer and decides again without it.
fn forget(shared: &HubState, peer: Found) {
    peer.stop.cancel();
    let servers = shared.registry.connected_count();
    peer_watch::act(shared, shared.standby.remove_peer(peer.slot, servers));
}

/// Browses on a thread of its own (the browser waits synchronously) until `shutdown` or the
/// task is gone.
fn browse(cluster: ClusterName, changes: &mpsc::Sender<Change>, shutdown: &CancellationToken) {
    let mut browser = match Browser::new(cluster) {
        Ok(browser) => browser,
        Err(err) => {
            error!(error = %err, "cannot look for peer hubs on the LAN: this hub decides alone");
            return;
        }
    };
    while !shutdown.is_cancelled() && !changes.is_closed() {
        match browser.next_change(POLL) {
            Ok(Some(change)) => {
                if changes.blocking_send(change).is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(err) => {
                warn!(error = %err, "looking for peer hubs on the LAN stopped");
                return;
            }
        }
    }
}

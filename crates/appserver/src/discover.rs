//! The hubs of a cluster found on the LAN (`Cluster::builder(id, "auto")`, or
//! [`ClusterBuilder::discover`](crate::ClusterBuilder::discover)): a thread browses DNS-SD with
//! `acms_common::discovery::Browser` and publishes, at each change, the hubs' addresses in order
//! of preference, which the link reads before each connection attempt.
//!
//! Active hubs come first, then standbys, each by instance name, so every app server of the
//! cluster tries them in the same order and they all land on the same hub. A hub of another
//! protocol version is left out with a log line; one of another cluster name is never seen.
//! Discovery is a hint: the link authenticates a found hub like any other.

use std::time::Duration;

use acms_common::discovery::{Browser, Change, ClusterName, Hub, Role};
use acms_protocol::PROTOCOL_VERSION;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often the browsing thread looks whether the cluster closed.
const POLL: Duration = Duration::from_millis(250);

/// The hubs the link tries, in order of preference.
#[derive(Debug)]
pub(crate) enum HubList {
    /// Given by the app: never changes.
    Fixed(Vec<String>),
    /// Found on the LAN: changes as hubs come, go and change role.
    Discovered(watch::Receiver<Vec<String>>),
}

impl HubList {
    /// The hubs now.
    pub(crate) fn current(&mut self) -> Vec<String> {
        match self {
            Self::Fixed(hubs) => hubs.clone(),
            Self::Discovered(found) => found.borrow_and_update().clone(),
        }
    }

    /// Waits until the list changes: never for a fixed list, nor once discovery stopped.
    pub(crate) async fn changed(&mut self) {
        if let Self::Discovered(found) = self
            && found.changed().await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }

    /// Whether the hubs are found on the LAN.
    pub(crate) fn is_discovered(&self) -> bool {
        matches!(self, Self::Discovered(_))
    }
}

/// Starts browsing for the hubs of `cluster` on a thread of its own, until `shutdown`.
pub(crate) fn start(cluster: ClusterName, shutdown: CancellationToken) -> HubList {
    let (found, list) = watch::channel(Vec::new());
    let name = cluster.clone();
    let spawned = std::thread::Builder::new()
        .name("acms-discovery".into())
        .spawn(move || browse(&name, &found, &shutdown));
    if let Err(err) = spawned {
        error!(error = %err, %cluster, "cannot start looking for hubs on the LAN");
    }
    HubList::Discovered(list)
}

fn browse(cluster: &ClusterName, found: &watch::Sender<Vec<String>>, shutdown: &CancellationToken) {
    let mut browser = match Browser::new(cluster.clone()) {
        Ok(browser) => browser,
        Err(err) => {
            error!(error = %err, %cluster, "cannot look for hubs on the LAN: this server cannot find its cluster");
            return;
        }
    };
    info!(%cluster, "looking for the hubs of this cluster on the LAN (DNS-SD)");
    // Stops once the cluster closed, or the link (the list's only reader) is gone.
    while !shutdown.is_cancelled() && !found.is_closed() {
        let change = match browser.next_change(POLL) {
            Ok(Some(change)) => change,
            Ok(None) => continue,
            Err(err) => {
                error!(error = %err, %cluster, "looking for hubs on the LAN stopped");
                return;
            }
        };
        note(&change);
        let hubs = preferred(browser.hubs());
        found.send_if_modified(|list| {
            let changed = *list != hubs;
            if changed {
                info!(hubs = ?hubs, "hubs of the cluster on the LAN, in order of preference");
                *list = hubs;
            }
            changed
        });
    }
}

/// Logs a change of the hubs found.
fn note(change: &Change) {
    match change {
        Change::Added(hub) | Change::Updated(hub) if hub.version != PROTOCOL_VERSION => {
            warn!(instance = %hub.instance, addr = %hub.addr, version = hub.version, ours = PROTOCOL_VERSION, "a hub of another protocol version on the LAN: not used");
        }
        Change::Added(hub) => {
            info!(instance = %hub.instance, addr = %hub.addr, role = hub.role.as_str(), "hub found on the LAN")
        }
        Change::Updated(hub) => {
            info!(instance = %hub.instance, addr = %hub.addr, role = hub.role.as_str(), "hub changed on the LAN")
        }
        Change::Removed(hub) => {
            info!(instance = %hub.instance, addr = %hub.addr, "hub gone from the LAN")
        }
    }
}

/// The addresses of the usable hubs in order of preference: active first, then by instance
/// name, so every app server orders them alike.
fn preferred<'a>(hubs: impl Iterator<Item = &'a Hub>) -> Vec<String> {
    let mut usable: Vec<&Hub> = hubs.filter(|hub| hub.version == PROTOCOL_VERSION).collect();
    usable.sort_by(|a, b| {
        (a.role != Role::Active, &a.instance).cmp(&(b.role != Role::Active, &b.instance))
    });
    usable.iter().map(|hub| hub.addr.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(instance: &str, addr: &str, role: Role, version: u16) -> Hub {
        let addr = addr.parse().unwrap();
        Hub {
            addr,
            addrs: vec![addr],
            cluster: ClusterName::default(),
            role,
            version,
            instance: instance.to_owned(),
        }
    }

    #[test]
    fn active_hubs_come_first_and_other_versions_are_left_out() {
        let hubs = [
            hub("b", "10.0.0.2:12000", Role::Standby, PROTOCOL_VERSION),
            hub("c", "10.0.0.3:12000", Role::Active, PROTOCOL_VERSION),
            hub("a", "10.0.0.1:12000", Role::Standby, PROTOCOL_VERSION),
            hub("d", "10.0.0.4:12000", Role::Active, PROTOCOL_VERSION.wrapping_add(1)),
        ];
        assert_eq!(preferred(hubs.iter()), ["10.0.0.3:12000", "10.0.0.1:12000", "10.0.0.2:12000"]);
        // The same set in any order gives the same list.
        assert_eq!(preferred(hubs.iter().rev()), preferred(hubs.iter()));
        assert!(preferred([].iter()).is_empty());
    }

    #[tokio::test]
    async fn a_discovered_list_wakes_the_link_on_a_change() {
        let (found, list) = watch::channel(Vec::new());
        let mut hubs = HubList::Discovered(list);
        assert!(hubs.current().is_empty());
        found.send_replace(vec!["10.0.0.1:12000".to_owned()]);
        // Woken by the change, and the change is what it then reads.
        tokio::time::timeout(Duration::from_secs(5), hubs.changed()).await.expect("woken");
        assert_eq!(hubs.current(), ["10.0.0.1:12000"]);
        assert!(hubs.is_discovered());
        // A fixed list never changes.
        let mut fixed = HubList::Fixed(vec!["h:1".into()]);
        assert_eq!(fixed.current(), ["h:1"]);
        assert!(!fixed.is_discovered());
        let waited = tokio::time::timeout(Duration::from_millis(20), fixed.changed()).await;
        assert!(waited.is_err(), "a fixed list does not change");
    }
}

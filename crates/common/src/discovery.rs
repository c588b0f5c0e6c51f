//! Hubs on a LAN, found by DNS-SD over multicast DNS (`_acms._tcp.local.`).
//!
//! A hub announces its transfer port with three TXT properties: `cluster` (its cluster name),
//! `role` (`active` or `standby`) and `version` (the protocol version). A [`Browser`] keeps the
//! current set of hubs of one cluster name and reports each change. An announcement is a hint,
//! never trust: one that is malformed, oversized or of another cluster is ignored with a log
//! line, and a hub found here still has to pass authentication like any other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent};
use tracing::{debug, warn};

/// The DNS-SD service type every hub announces.
pub const SERVICE_TYPE: &str = "_acms._tcp.local.";

/// The TXT property that names the hub's cluster.
pub const CLUSTER_KEY: &str = "cluster";
/// The TXT property that says whether the hub is active or standby.
pub const ROLE_KEY: &str = "role";
/// The TXT property that holds the hub's protocol version.
pub const VERSION_KEY: &str = "version";

/// Most hubs of one cluster a [`Browser`] keeps: a LAN that announces more (by mistake or on
/// purpose) cannot grow its memory; the rest are ignored with a warning.
pub const MAX_HUBS: usize = 64;

/// Longest instance name kept (a DNS name is at most 255 bytes).
const MAX_INSTANCE_LEN: usize = 255;

/// Why a name or an announcement is refused, or discovery cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A cluster name outside 1..=63 bytes of `[A-Za-z0-9-_.]`.
    #[error(
        "bad cluster name {0:?}: it must be 1 to 63 characters of A-Z, a-z, 0-9, '-', '_', '.'"
    )]
    BadClusterName(String),
    /// An announcement of `_acms._tcp` that cannot be a hub's.
    #[error("ignored announcement {instance:?}: {reason}")]
    BadAnnouncement {
        /// The instance's full name, as announced (cut to 255 bytes).
        instance: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Multicast DNS could not be started (no usable interface, socket refused) or used.
    #[error("multicast DNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    /// Multicast DNS stopped while browsing: no change will come any more.
    #[error("multicast DNS stopped")]
    Stopped,
}

/// The name of a cluster: hubs and app servers of one name find each other, and only them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterName(String);

impl ClusterName {
    /// A name of 1 to 63 bytes of `[A-Za-z0-9-_.]`, so it fits one DNS label and a TXT value.
    pub fn new(name: impl Into<String>) -> Result<Self, DiscoveryError> {
        let name = name.into();
        let allowed = |byte: u8| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.');
        if (1..=63).contains(&name.len()) && name.bytes().all(allowed) {
            Ok(Self(name))
        } else {
            Err(DiscoveryError::BadClusterName(cut(name, 64)))
        }
    }

    /// The name's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ClusterName {
    /// `acms`, the cluster of a hub or app server configured with no name.
    fn default() -> Self {
        Self("acms".to_owned())
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ClusterName {
    type Err = DiscoveryError;

    fn from_str(name: &str) -> Result<Self, DiscoveryError> {
        Self::new(name)
    }
}

/// Whether an announced hub accepts app servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It accepts app servers.
    Active,
    /// It refuses them while another hub of its cluster is active.
    Standby,
}

impl Role {
    /// The value of the `role` TXT property.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Standby => "standby",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "standby" => Some(Self::Standby),
            _ => None,
        }
    }
}

/// A hub found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// Its transfer address: the first of `addrs`.
    pub addr: SocketAddr,
    /// Every address it announced with its transfer port, IPv4 first, in a stable order.
    pub addrs: Vec<SocketAddr>,
    /// Its cluster name.
    pub cluster: ClusterName,
    /// Active or standby when it last announced.
    pub role: Role,
    /// Its protocol version.
    pub version: u16,
    /// Its DNS-SD instance's full name, unique per hub.
    pub instance: String,
}

impl Hub {
    /// Reads a hub from a resolved `_acms._tcp` announcement, checking every field.
    pub fn from_resolved(service: &ResolvedService) -> Result<Self, DiscoveryError> {
        let instance = cut(service.get_fullname().to_owned(), MAX_INSTANCE_LEN);
        let bad = |reason| DiscoveryError::BadAnnouncement { instance: instance.clone(), reason };
        if !service.ty_domain.eq_ignore_ascii_case(SERVICE_TYPE) {
            return Err(bad("not of the service type _acms._tcp.local."));
        }
        if service.get_fullname().len() > MAX_INSTANCE_LEN {
            return Err(bad("instance name longer than 255 bytes"));
        }
        let cluster = service.get_property_val_str(CLUSTER_KEY).ok_or_else(|| bad("no cluster"))?;
        let cluster = ClusterName::new(cluster).map_err(|_| bad("bad cluster name"))?;
        let role = service.get_property_val_str(ROLE_KEY).ok_or_else(|| bad("no role"))?;
        let role = Role::parse(role).ok_or_else(|| bad("role is neither active nor standby"))?;
        let version = service.get_property_val_str(VERSION_KEY).ok_or_else(|| bad("no version"))?;
        let version = version.parse::<u16>().map_err(|_| bad("version is not a number"))?;
        let port = service.get_port();
        if port == 0 {
            return Err(bad("port 0"));
        }
        let mut ips: Vec<IpAddr> = service
            .get_addresses()
            .iter()
            .map(|scoped| scoped.to_ip_addr())
            .filter(usable)
            .collect();
        // IPv4 first (`IpAddr`'s order), then stable, so every reader picks the same one.
        ips.sort();
        ips.dedup();
        let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
        let addr = *addrs.first().ok_or_else(|| bad("no usable address"))?;
        Ok(Self { addr, addrs, cluster, role, version, instance })
    }
}

/// `text` cut to at most `max` bytes on a character boundary: what a log line shows of a
/// peer's string.
fn cut(mut text: String, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// An address a hub can be reached at from another machine without an interface scope.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        // A link-local IPv6 address needs the interface it was seen on, which a `SocketAddr`
        // parsed back from text would lose.
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local()),
    }
}

/// A change in the set of hubs a [`Browser`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A hub of the cluster appeared.
    Added(Hub),
    /// A known hub announced something new (its role, its addresses).
    Updated(Hub),
    /// A hub said goodbye, its announcement expired, or it now announces what is ignored.
    Removed(Hub),
}

/// Browses the LAN for the hubs of one cluster name, keeping the current set.
///
/// Synchronous: [`Browser::next_change`] waits with a timeout, so a caller may run it on a
/// thread of its own or poll it. Multicast DNS runs on a thread of `mdns-sd`, stopped on drop.
pub struct Browser {
    daemon: ServiceDaemon,
    events: mdns_sd::Receiver<ServiceEvent>,
    hubs: HubSet,
}

impl Browser {
    /// Starts browsing `_acms._tcp.local.` for the hubs of `cluster`.
    pub fn new(cluster: ClusterName) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new()?;
        let events = daemon.browse(SERVICE_TYPE)?;
        Ok(Self { daemon, events, hubs: HubSet::new(cluster) })
    }

    /// The hubs found so far and still announced.
    pub fn hubs(&self) -> impl Iterator<Item = &Hub> {
        self.hubs.hubs.values()
    }

    /// The next change of the set, waiting up to `timeout`: `Ok(None)` if there was none by
    /// then, an error once multicast DNS has stopped.
    pub fn next_change(&mut self, timeout: Duration) -> Result<Option<Change>, DiscoveryError> {
        let deadline = Instant::now() + timeout;
        loop {
            let event = match self.events.recv_deadline(deadline) {
                Ok(event) => event,
                Err(mdns_sd::RecvTimeoutError::Timeout) => return Ok(None),
                Err(mdns_sd::RecvTimeoutError::Disconnected) => {
                    return Err(DiscoveryError::Stopped);
                }
            };
            if let Some(change) = self.hubs.handle(event) {
                return Ok(Some(change));
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Best effort: the daemon's thread ends on its own once told; nothing waits for it.
        let _ = self.daemon.shutdown();
    }
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser").field("hubs", &self.hubs).finish_non_exhaustive()
    }
}

/// The hubs of one cluster, by instance name, fed `mdns-sd`'s events: the part of a
/// [`Browser`] that needs no network.
#[derive(Debug)]
struct HubSet {
    cluster: ClusterName,
    hubs: BTreeMap<String, Hub>,
}

impl HubSet {
    fn new(cluster: ClusterName) -> Self {
        Self { cluster, hubs: BTreeMap::new() }
    }

    fn handle(&mut self, event: ServiceEvent) -> Option<Change> {
        match event {
            ServiceEvent::ServiceResolved(service) => self.handle_resolved(&service),
            ServiceEvent::ServiceRemoved(_, instance) => {
                self.hubs.remove(&instance).map(Change::Removed)
            }
            _ => None,
        }
    }

    fn handle_resolved(&mut self, service: &ResolvedService) -> Option<Change> {
        let hub = match Hub::from_resolved(service) {
            Ok(hub) if hub.cluster == self.cluster => hub,
            Ok(hub) => {
                debug!(instance = %hub.instance, cluster = %hub.cluster, "a hub of another cluster: ignored");
                return self.hubs.remove(&hub.instance).map(Change::Removed);
            }
            Err(err) => {
                warn!(error = %err, "a malformed hub announcement: ignored");
                return self.hubs.remove(service.get_fullname()).map(Change::Removed);
            }
        };
        let full = self.hubs.len() >= MAX_HUBS;
        match self.hubs.get_mut(&hub.instance) {
            Some(known) if *known == hub => None,
            Some(known) => {
                *known = hub.clone();
                Some(Change::Updated(hub))
            }
            None if full => {
                warn!(instance = %hub.instance, limit = MAX_HUBS, "too many hubs announced for this cluster: ignored");
                None
            }
            None => {
                self.hubs.insert(hub.instance.clone(), hub.clone());
                Some(Change::Added(hub))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mdns_sd::ServiceInfo;

    use super::*;

    fn announce(name: &str, port: u16, properties: &[(&str, &str)]) -> ResolvedService {
        ServiceInfo::new(SERVICE_TYPE, name, "hub.local.", "10.1.2.3", port, properties)
            .expect("a service")
            .as_resolved_service()
    }

    fn good(name: &str, cluster: &str, role: &str) -> ResolvedService {
        announce(name, 12000, &[("cluster", cluster), ("role", role), ("version", "3")])
    }

    fn reason(service: &ResolvedService) -> String {
        Hub::from_resolved(service).expect_err("refused").to_string()
    }

    #[test]
    fn cluster_names_are_checked() {
        assert_eq!(ClusterName::default().as_str(), "acms");
        for name in ["a", "prod-eu_1.b", &"x".repeat(63)] {
            assert_eq!(ClusterName::new(name).expect("valid").as_str(), name);
        }
        for name in ["", "has space", "naïve", "a/b", &"x".repeat(64)] {
            let err = ClusterName::new(name).expect_err(name);
            assert!(err.to_string().contains("1 to 63"), "{err}");
        }
    }

    #[test]
    fn a_good_announcement_is_read() {
        let hub = Hub::from_resolved(&good("acms-12000-a1", "prod", "standby")).expect("a hub");
        assert_eq!(hub.addr, "10.1.2.3:12000".parse().unwrap());
        assert_eq!(hub.addrs, [hub.addr]);
        assert_eq!((hub.cluster.as_str(), hub.role, hub.version), ("prod", Role::Standby, 3));
        assert_eq!(hub.instance, "acms-12000-a1._acms._tcp.local.");
    }

    #[test]
    fn malformed_announcements_are_refused_with_why() {
        let cases = [
            (announce("a", 12000, &[("role", "active"), ("version", "3")]), "no cluster"),
            (announce("b", 12000, &[("cluster", "acms"), ("version", "3")]), "no role"),
            (good("c", "acms", "boss"), "neither active nor standby"),
            (good("d", "bad name!", "active"), "bad cluster name"),
            (
                announce("e", 12000, &[("cluster", "acms"), ("role", "active"), ("version", "x")]),
                "not a number",
            ),
            (announce("f", 12000, &[("cluster", "acms"), ("role", "active")]), "no version"),
            (
                announce("g", 0, &[("cluster", "acms"), ("role", "active"), ("version", "3")]),
                "port 0",
            ),
        ];
        for (service, why) in cases {
            let message = reason(&service);
            assert!(message.contains(why), "{message} (wanted {why})");
        }
        let props = [("cluster", "acms"), ("role", "active"), ("version", "3")];
        let nowhere = ServiceInfo::new(SERVICE_TYPE, "h", "h.local.", "0.0.0.0", 1, &props[..])
            .unwrap()
            .as_resolved_service();
        assert!(reason(&nowhere).contains("no usable address"));
    }

    #[test]
    fn oversized_properties_are_refused() {
        // The largest a TXT string allows (255 bytes with its key): not a cluster name.
        let long = "x".repeat(240);
        let message = reason(&good("big", &long, "active"));
        assert!(message.contains("bad cluster name"), "{message}");
        let message = reason(&good("big-role", "acms", &long));
        assert!(message.contains("neither active nor standby"), "{message}");
        let message = reason(&announce(
            "big-version",
            12000,
            &[("cluster", "acms"), ("role", "active"), ("version", &long)],
        ));
        assert!(message.contains("not a number"), "{message}");
    }

    fn resolved(service: ResolvedService) -> ServiceEvent {
        ServiceEvent::ServiceResolved(Box::new(service))
    }

    #[test]
    fn the_set_keeps_its_cluster_and_reports_changes() {
        let mut set = HubSet::new(ClusterName::new("prod").unwrap());
        assert_eq!(set.handle(resolved(good("other", "test", "active"))), None);
        assert_eq!(set.handle(resolved(good("bad", "prod", "boss"))), None);
        let Some(Change::Added(hub)) = set.handle(resolved(good("one", "prod", "standby"))) else {
            panic!("a hub of the cluster is added");
        };
        assert_eq!(hub.role, Role::Standby);
        // The same announcement again changes nothing; a new role is an update.
        assert_eq!(set.handle(resolved(good("one", "prod", "standby"))), None);
        let Some(Change::Updated(hub)) = set.handle(resolved(good("one", "prod", "active"))) else {
            panic!("a new role is an update");
        };
        assert_eq!(hub.role, Role::Active);
        // A known hub that turns malformed is no longer one to use.
        let Some(Change::Removed(_)) = set.handle(resolved(good("one", "prod", "boss"))) else {
            panic!("a malformed re-announcement removes the hub");
        };
        set.handle(resolved(good("one", "prod", "active")));
        let gone = ServiceEvent::ServiceRemoved(SERVICE_TYPE.into(), hub.instance.clone());
        assert_eq!(set.handle(gone.clone()), Some(Change::Removed(hub)));
        assert_eq!(set.handle(gone), None);
        assert!(set.hubs.is_empty());
    }

    #[test]
    fn the_set_is_bounded() {
        let mut set = HubSet::new(ClusterName::default());
        for index in 0..MAX_HUBS + 10 {
            set.handle(resolved(good(&format!("hub-{index}"), "acms", "active")));
        }
        assert_eq!(set.hubs.len(), MAX_HUBS);
    }
}

//! The hub's announcement on the LAN: DNS-SD over multicast DNS (`_acms._tcp.local.`), so that
//! app servers and other hubs of its cluster can find it with no address configured.
//!
//! The instance announces the transfer port, the transfer address (or, when the hub listens on
//! every interface, the machine's addresses, kept current by `mdns-sd`), and three TXT
//! properties read by `acms_common::discovery`: `cluster`, `role` and `version`. It is announced
//! again at each change of role, and withdrawn (a goodbye packet) at shutdown, waiting for that
//! no longer than [`UNREGISTER_WAIT`]. Multicast DNS that cannot start is a warning: the hub
//! serves anyway, it just cannot be found.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use acms_common::discovery::{self, CLUSTER_KEY, ClusterName, ROLE_KEY, SERVICE_TYPE, VERSION_KEY};
use mdns_sd::{ServiceDaemon, ServiceInfo, UnregisterStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::standby::Role;

/// Longest the hub's shutdown waits for its goodbye to be sent.
pub(crate) const UNREGISTER_WAIT: Duration = Duration::from_millis(800);

/// What is announced of this hub, apart from its role.
#[derive(Debug, Clone)]
struct Announcement {
    /// The DNS-SD instance name: the cluster name, the transfer port and a random part, so that
    /// hubs on one machine, or two machines' hubs on one port, never share it.
    instance: String,
    /// The host name of its address records, as unique as the instance.
    host: String,
    /// The transfer address's IP; unspecified for every interface's.
    ip: IpAddr,
    port: u16,
    cluster: ClusterName,
}

impl Announcement {
    fn new(cluster: &ClusterName, transfer: SocketAddr) -> Self {
        let tag: u32 = rand::random();
        let instance = format!("{cluster}-{}-{tag:08x}", transfer.port());
        let host = format!("acms-{}-{tag:08x}.local.", transfer.port());
        Self { instance, host, ip: transfer.ip(), port: transfer.port(), cluster: cluster.clone() }
    }

    /// The service record for `role`.
    fn service(&self, role: Role) -> Result<ServiceInfo, mdns_sd::Error> {
        let role = match role {
            Role::Active => discovery::Role::Active,
            Role::Standby => discovery::Role::Standby,
        };
        let version = acms_protocol::PROTOCOL_VERSION.to_string();
        let properties = [
            (CLUSTER_KEY, self.cluster.as_str()),
            (ROLE_KEY, role.as_str()),
            (VERSION_KEY, version.as_str()),
        ];
        let ips: &[IpAddr] = if self.ip.is_unspecified() { &[] } else { &[self.ip] };
        let mut service = ServiceInfo::new(
            SERVICE_TYPE,
            &self.instance,
            &self.host,
            ips,
            self.port,
            &properties[..],
        )?;
        // The random part makes the name unique; probing would only delay the announcement (and
        // each re-announcement of a new role) by most of a second.
        service.set_requires_probe(false);
        Ok(if self.ip.is_unspecified() { service.enable_addr_auto() } else { service })
    }
}

/// An announcement running: its task, which ends once the announcement is withdrawn, and its
/// instance's full name (what a browser on this machine sees of this hub).
pub(crate) struct Announced {
    pub(crate) task: JoinHandle<()>,
    pub(crate) instance: String,
}

/// Starts announcing the hub whose transfer port is `transfer`, its role following `roles`,
/// until `shutdown`. `None`, with a log line, when there is nothing to announce or multicast
/// DNS cannot start.
pub(crate) fn start(
    cluster: &ClusterName,
    transfer: SocketAddr,
    roles: watch::Receiver<Role>,
    shutdown: CancellationToken,
) -> Option<Announced> {
    if transfer.ip().is_loopback() {
        // Nobody else on the LAN could reach it; and tests' hubs stay off the network.
        debug!(%transfer, "transfer port on loopback: not announced");
        return None;
    }
    let daemon = match ServiceDaemon::new() {
        Ok(daemon) => daemon,
        Err(err) => {
            warn!(error = %err, "cannot start multicast DNS: this hub is not announced on the LAN");
            return None;
        }
    };
    let announcement = Announcement::new(cluster, transfer);
    let instance = format!("{}.{SERVICE_TYPE}", announcement.instance);
    Some(Announced {
        task: tokio::spawn(announce(daemon, announcement, roles, shutdown)),
        instance,
    })
}

async fn announce(
    daemon: ServiceDaemon,
    announcement: Announcement,
    mut roles: watch::Receiver<Role>,
    shutdown: CancellationToken,
) {
    let mut role = *roles.borrow_and_update();
    let mut fullname = register(&daemon, &announcement, role);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = roles.changed() => {
                if changed.is_err() {
                    // The hub's state is gone: it is shutting down.
                    break;
                }
                let now = *roles.borrow_and_update();
                if now != role {
                    role = now;
                    fullname = register(&daemon, &announcement, role).or(fullname);
                }
            }
        }
    }
    withdraw(daemon, fullname).await;
}

/// Registers (or replaces) the announcement; its full name, or `None` with a warning.
fn register(daemon: &ServiceDaemon, announcement: &Announcement, role: Role) -> Option<String> {
    let registered = announcement.service(role).and_then(|service| {
        let fullname = service.get_fullname().to_owned();
        daemon.register(service).map(|()| fullname)
    });
    match registered {
        Ok(fullname) => {
            info!(instance = %fullname, cluster = %announcement.cluster, ?role, "announced on the LAN (DNS-SD)");
            Some(fullname)
        }
        Err(err) => {
            warn!(error = %err, ?role, "cannot announce this hub on the LAN");
            None
        }
    }
}

/// Withdraws the announcement (a goodbye, so browsers drop the hub at once rather than at its
/// TTL) and stops multicast DNS, waiting at most [`UNREGISTER_WAIT`].
async fn withdraw(daemon: ServiceDaemon, fullname: Option<String>) {
    if let Some(fullname) = fullname {
        match daemon.unregister(&fullname) {
            Ok(status) => {
                let waited =
                    tokio::task::spawn_blocking(move || status.recv_timeout(UNREGISTER_WAIT)).await;
                match waited {
                    Ok(Ok(UnregisterStatus::OK)) => {
                        info!(instance = %fullname, "announcement withdrawn")
                    }
                    Ok(Ok(status)) => {
                        warn!(instance = %fullname, ?status, "announcement not withdrawn")
                    }
                    _ => {
                        warn!(instance = %fullname, wait = ?UNREGISTER_WAIT, "announcement withdrawal not confirmed in time")
                    }
                }
            }
            Err(err) => warn!(error = %err, "cannot withdraw the announcement"),
        }
    }
    // Best effort: the process may end before the daemon's thread does.
    let _ = daemon.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_what_discovery_reads() {
        let cluster = ClusterName::new("prod").unwrap();
        let transfer: SocketAddr = "10.9.8.7:12000".parse().unwrap();
        let announcement = Announcement::new(&cluster, transfer);
        assert!(announcement.instance.starts_with("prod-12000-"), "{}", announcement.instance);
        for (role, expected) in [(Role::Active, "active"), (Role::Standby, "standby")] {
            let resolved = announcement.service(role).unwrap().as_resolved_service();
            let hub = discovery::Hub::from_resolved(&resolved).expect("a valid announcement");
            assert_eq!((hub.addr, hub.cluster.as_str()), (transfer, "prod"));
            assert_eq!(
                (hub.role.as_str(), hub.version),
                (expected, acms_protocol::PROTOCOL_VERSION)
            );
        }
        // Every interface: the addresses are left to mdns-sd.
        let resolved = announcement.service(Role::Active).unwrap().as_resolved_service();
        let fullname = format!("{}.{SERVICE_TYPE}", announcement.instance);
        assert_eq!(resolved.get_fullname(), fullname, "what start() reports as the instance");
        let any = Announcement::new(&cluster, "0.0.0.0:12000".parse().unwrap());
        assert!(any.service(Role::Active).unwrap().is_addr_auto());
        assert_ne!(Announcement::new(&cluster, transfer).instance, announcement.instance);
    }

    #[tokio::test]
    async fn a_loopback_hub_is_not_announced() {
        let roles = watch::Sender::new(Role::Active).subscribe();
        let transfer = "127.0.0.1:12000".parse().unwrap();
        assert!(
            start(&ClusterName::default(), transfer, roles, CancellationToken::new()).is_none()
        );
    }
}

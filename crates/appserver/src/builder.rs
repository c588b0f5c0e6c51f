//! The settings of a [`Cluster`](crate::Cluster), set through [`ClusterBuilder`]; the link reads
//! them when it starts.

use std::time::Duration;

use acms_common::discovery::ClusterName;
use acms_protocol::{Secret, ServerId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::discover::{self, HubList};
use crate::tls::ClientTls;

/// The hub list that asks for discovery on the LAN instead of addresses.
pub const AUTO: &str = "auto";

/// Settings of a [`Cluster`](crate::Cluster), with defaults for all but the server id and hub
/// address.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    pub(crate) server_id: ServerId,
    pub(crate) hubs: Vec<String>,
    /// The cluster name to discover hubs of, when set with [`Self::discover`].
    pub(crate) cluster_name: Option<ClusterName>,
    pub(crate) client_addr: String,
    pub(crate) max_frame_len: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) event_capacity: usize,
    pub(crate) retransmit_buffer: usize,
    pub(crate) secret: Option<Secret>,
    pub(crate) tls: Option<ClientTls>,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) digest_interval: Duration,
    pub(crate) load_interval: Duration,
    pub(crate) capacity: Option<u32>,
    pub(crate) close_timeout: Duration,
}

impl ClusterBuilder {
    /// The defaults, for [`Cluster::builder`](crate::Cluster::builder).
    pub(crate) fn new(server_id: ServerId, hubs: String) -> Self {
        let hubs = hubs.split(',').map(str::trim).filter(|hub| !hub.is_empty());
        Self {
            server_id,
            hubs: hubs.map(str::to_owned).collect(),
            cluster_name: None,
            client_addr: String::new(),
            max_frame_len: acms_protocol::DEFAULT_MAX_FRAME_LEN,
            connect_timeout: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            queue_capacity: 8192,
            event_capacity: 64,
            retransmit_buffer: 64 << 20,
            secret: None,
            tls: None,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(3),
            digest_interval: Duration::from_secs(10),
            load_interval: Duration::from_secs(5),
            capacity: None,
            close_timeout: Duration::from_secs(5),
        }
    }

    /// The address this server's clients connect to, advertised to the cluster.
    pub fn client_addr(mut self, addr: impl Into<String>) -> Self {
        self.client_addr = addr.into();
        self
    }

    /// The hubs of the cluster, in order of preference (`host:port` each), replacing those given to
    /// [`Cluster::builder`](crate::Cluster::builder). On losing its hub, or being refused by a
    /// standby, the server tries the next one at once, and waits its backoff only after a whole
    /// pass failed.
    pub fn hubs(mut self, hubs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.hubs = hubs.into_iter().map(Into::into).collect();
        self
    }

    /// Finds the hubs of cluster `name` on the LAN (DNS-SD over multicast DNS, as the hubs
    /// announce themselves) when no hub address is given: with [`AUTO`] (`"auto"`) or no
    /// address. `Cluster::builder(id, "auto")` alone does the same for the default cluster name,
    /// `acms`. Addresses given explicitly always win and nothing is browsed.
    ///
    /// The server prefers an active hub, and follows the changes: a standby that becomes active,
    /// a hub that goes away, a new one. Discovery is a hint, never trust: a found hub still has
    /// to pass the shared secret's mutual authentication ([`Self::secret`]), and one that fails
    /// it is refused and reported like a configured one ([`LinkState::Refused`]).
    ///
    /// [`LinkState::Refused`]: crate::LinkState::Refused
    pub fn discover(mut self, name: ClusterName) -> Self {
        self.cluster_name = Some(name);
        self
    }

    /// Keepalive on the hub link (default 1 s and 3 s): a `Ping` goes out when nothing was
    /// written for `interval`, and the link is dropped, to try the next hub, when nothing was
    /// read for `timeout` (the hub answers every `Ping`). A silently cut path is so noticed
    /// within `timeout`.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive_interval = interval.max(Duration::from_millis(1));
        self.keepalive_timeout = timeout.max(self.keepalive_interval);
        self
    }

    /// Largest frame body sent or accepted; keep it equal to the hub's (default 1 MiB).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len.min(acms_protocol::MAX_FRAME_LEN_CEILING);
        self
    }

    /// How long one connection attempt may take (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds of the exponential, jittered delay between reconnection attempts
    /// (default 100 ms to 2 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    /// Messages and logins that may wait for the hub connection before `send_to_user` waits
    /// too (default 8192).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Batches of events (each at most one 64 KiB read from the hub, or one local delivery) that
    /// may wait for the app before the hub connection stops reading (default 64).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Bytes of sent messages kept until their recipient's server acknowledges them, to be sent
    /// again after a hub failure (default 64 MiB). When it is full, `send_to_user` waits and
    /// `try_send_to_user` fails.
    pub fn retransmit_buffer(mut self, bytes: usize) -> Self {
        self.retransmit_buffer = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// Longest [`Cluster::close`](crate::Cluster::close) waits, before it says `Bye`, for every
    /// message sent to be answered (acknowledged by its recipient's server, or returned
    /// undeliverable) (default 5 s). The hub keeps no message: one it dropped for this server
    /// to send again (its recipient's server away, or not in the directory yet) can only be
    /// sent again by this server, so leaving at once would lose it. Zero leaves at once.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The secret shared with the hub: the server proves it, and checks the hub's proof, by
    /// HMAC challenge-response; the secret itself is never sent. Without one, a hub that has no
    /// secret either admits this server only from its own machine. Read it from where the app
    /// keeps secrets (the demo server uses `ACMS_SECRET`).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// How often the server reports its load (users, CPU, memory, message rates) to the hub,
    /// which assigns new clients by the latest reports (default 5 s, the first one interval after
    /// connecting; at least 1 ms).
    pub fn load_interval(mut self, interval: Duration) -> Self {
        self.load_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The most clients this server takes, declared to the hub in its load reports: the hub's
    /// `weighted` assignment fills servers in proportion to it, and never sends a new client to a
    /// server at it. Undeclared by default.
    pub fn capacity(mut self, clients: u32) -> Self {
        self.capacity = Some(clients);
        self
    }

    /// How often the server sends the hub a digest of its users, so that a hub whose record has
    /// drifted asks for them all again (default 10 s; at least 1 ms).
    pub fn digest_interval(mut self, interval: Duration) -> Self {
        self.digest_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The hubs to try: the addresses given, or those found on the LAN, browsed until
    /// `shutdown`.
    pub(crate) fn hub_list(&self, shutdown: &CancellationToken) -> HubList {
        let is_auto = |hub: &String| hub.eq_ignore_ascii_case(AUTO);
        let explicit: Vec<String> = self.hubs.iter().filter(|hub| !is_auto(hub)).cloned().collect();
        let asked_auto = self.hubs.iter().any(is_auto);
        if !explicit.is_empty() {
            if asked_auto || self.cluster_name.is_some() {
                warn!(hubs = ?explicit, "hub addresses given: they are used, and no hub is looked for on the LAN");
            }
            return HubList::Fixed(explicit);
        }
        if !asked_auto && self.cluster_name.is_none() {
            return HubList::Fixed(Vec::new());
        }
        let cluster = self.cluster_name.clone().unwrap_or_default();
        info!(%cluster, "no hub address given: looking for the cluster's hubs on the LAN");
        discover::start(cluster, shutdown.clone())
    }

    /// Connects to the hub over TLS (when its transfer port has `[transfer.tls]`).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(list: HubList) -> Vec<String> {
        match list {
            HubList::Fixed(hubs) => hubs,
            HubList::Discovered(_) => panic!("addresses given: nothing is discovered"),
        }
    }

    #[tokio::test]
    async fn explicit_addresses_always_win_over_discovery() {
        let shutdown = CancellationToken::new();
        let builder = |hubs: &str| ClusterBuilder::new(ServerId(1), hubs.to_owned());
        let prod = ClusterName::new("prod").unwrap();
        assert_eq!(fixed(builder("10.0.0.1:12000, auto").hub_list(&shutdown)), ["10.0.0.1:12000"]);
        let given = builder("10.0.0.1:12000").discover(prod.clone());
        assert_eq!(fixed(given.hub_list(&shutdown)), ["10.0.0.1:12000"]);
        let replaced = builder("auto").hubs(["10.0.0.2:12000"]).discover(prod.clone());
        assert_eq!(fixed(replaced.hub_list(&shutdown)), ["10.0.0.2:12000"]);
        // Neither addresses nor discovery: nothing to join (the link says so).
        assert!(fixed(builder("").hub_list(&shutdown)).is_empty());
        // `auto`, in any case, or a cluster name with no address: the hubs are looked for.
        assert!(builder("AUTO").hub_list(&shutdown).is_discovered());
        assert!(builder("").discover(prod).hub_list(&shutdown).is_discovered());
        shutdown.cancel();
    }
}

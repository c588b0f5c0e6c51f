//! The hub: accepts AS connections, caps their number, and shuts down gracefully.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use acms_protocol::{Control, ErrorCode, Frame};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::config::HubConfig;
use crate::connection;
use crate::groups::Groups;
use crate::nats::BackplaneLink;
use crate::peer_watch;
use crate::registry::Registry;
use crate::standby::Standby;
use crate::state::HubState;
use crate::stats::StatsSnapshot;
use crate::tls::ServerTls;

/// A running hub's state; clones share it.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<HubState>,
}

impl Hub {
    /// A hub with no servers and no users yet, serving plain TCP.
    pub fn new(config: HubConfig) -> Self {
        Self::with_optional_tls(config, None)
    }

    /// A hub whose transfer port speaks TLS only.
    pub fn with_tls(config: HubConfig, tls: ServerTls) -> Self {
        Self::with_optional_tls(config, Some(tls))
    }

    fn with_optional_tls(config: HubConfig, tls: Option<ServerTls>) -> Self {
        Self { shared: Arc::new(HubState::new(config, tls)) }
    }

    /// A hub on the NATS backplane of `link`, active beside the other hubs on it.
    pub fn on_backplane(config: HubConfig, tls: Option<ServerTls>, link: &BackplaneLink) -> Self {
        Self { shared: Arc::new(HubState::new(config, tls).with_backplane(link.core())) }
    }

    /// The settings this hub runs with.
    pub fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// Registered servers and online users.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Which servers have members of which group.
    pub fn groups(&self) -> &Groups {
        &self.shared.groups
    }

    /// Whether this hub is the active one of its cluster, and what it tells its peers.
    pub fn standby(&self) -> &Standby {
        &self.shared.standby
    }

    /// The server `user` is online on, on this hub or, on a backplane, on any live hub.
    pub fn locate(&self, user: &str) -> Option<acms_protocol::ServerId> {
        self.shared.locate(user)
    }

    /// This hub's id on its backplane, if it runs on one.
    pub fn backplane_id(&self) -> Option<crate::HubId> {
        self.shared.backplane.as_ref().map(|backplane| backplane.me)
    }

    /// The app servers of the other hubs on the backplane, by id; none without one.
    pub fn remote_servers(&self) -> Vec<crate::RemoteServer> {
        let backplane = self.shared.backplane.as_ref();
        backplane.map(|backplane| backplane.remote_server_list()).unwrap_or_default()
    }

    /// The backplane's figures, if this hub runs on one.
    pub fn backplane_stats(&self) -> Option<crate::BackplaneStats> {
        self.shared.backplane.as_ref().map(|backplane| backplane.stats())
    }

    /// What the hub has relayed and refused so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Bytes waiting in the outbound queue of `server`, if it is connected.
    pub fn queue_depth(&self, server: acms_protocol::ServerId) -> Option<usize> {
        self.shared.registry.outbox(server).map(|outbox| outbox.pending())
    }

    /// Pushes from outside the cluster waiting for their acknowledgement.
    pub fn pushes_waiting(&self) -> usize {
        self.shared.pushes.waiting()
    }

    /// The epoch of this hub process, announced to every AS as that of the origin
    /// [`ServerId::HUB`](acms_protocol::ServerId::HUB), which numbers the hub's own pushes.
    pub fn push_epoch(&self) -> u64 {
        self.shared.pushes.epoch()
    }

    pub(crate) fn relay_metrics(&self) -> &crate::stats::RelayMetrics {
        &self.shared.metrics
    }

    pub(crate) fn shared(&self) -> &Arc<HubState> {
        &self.shared
    }

    /// Accepts AS on `listener` until `shutdown` is cancelled, then closes every connection,
    /// letting each flush its queue for up to `shutdown_grace`.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let config = &self.shared.config;
        if config.secret.is_none() {
            warn!(
                "no shared secret set (ACMS_SECRET or transfer.secret): app servers are accepted \
                 only from loopback addresses, or with a verified TLS client certificate"
            );
        }
        let tls = self.shared.tls.is_some();
        info!(transfer = %listener.local_addr()?, tls, "accepting app servers");
        let tracker = TaskTracker::new();
        // Peers found on the LAN get their watchers from `peer_discovery`.
        let configured = if config.discovers_peers() { 0 } else { config.peers.len() };
        for index in 0..configured {
            let peer = config.peers[index].clone();
            tracker.spawn(
                peer_watch::watch(self.shared.clone(), index, shutdown.clone())
                    .instrument(info_span!("peer", %peer)),
            );
        }
        if !config.peers.is_empty() {
            tracker.spawn(peer_watch::heartbeat(self.shared.clone(), shutdown.clone()));
            if config.discovers_peers() {
                info!("standby until the peer hubs found on the LAN are asked which one is active");
            } else {
                info!(peers = ?config.peers, "standby until the peer hubs are asked which one is active");
            }
        }
        let slots = Arc::new(Semaphore::new(config.max_connections));
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    warn!(error = %err, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.shared.stats.refused();
                warn!(%peer, limit = config.max_connections, "connection limit reached; refusing");
                let refusal =
                    Control::error(ErrorCode::Unavailable, "hub connection limit reached");
                if let Ok(bytes) = Frame::Control(refusal).to_bytes(config.max_frame_len) {
                    let _ = stream.try_write(&bytes);
                }
                continue;
            };
            if let Err(err) = stream.set_nodelay(true) {
                warn!(%peer, error = %err, "cannot set TCP_NODELAY");
            }
            let span = info_span!("as", %peer, server = tracing::field::Empty);
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                async move {
                    connection::serve(stream, peer, shared, shutdown).await;
                    drop(slot);
                }
                .instrument(span),
            );
        }
        drop(listener);
        tracker.close();
        info!(connections = tracker.len(), "shutting down");
        let grace = config.shutdown_grace + Duration::from_millis(500);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            warn!(?grace, "connections still open after the grace period");
        }
        Ok(())
    }
}

//! The whole hub as one value: the transfer port and the admin API bound, the admin token set
//! up, both served until a shutdown. The `acms` binary parses its flags and calls [`run`]; tests
//! bind a [`Daemon`] on port 0 and read its addresses back.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, DiscoveryConfig};
use crate::nats::{self, BackplaneLink};
use crate::token_file::{TokenFile, TokenFileError};
use crate::{AdminSettings, AdminToken, Config, HttpLimits, Hub, ServerTls};
use crate::{announce, peer_discovery};

/// Why the hub could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The settings contradict each other.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A port could not be bound.
    #[error("cannot listen on {addr}{what}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Which port, when not the transfer port.
        what: &'static str,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The admin token file cannot be used.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The transfer port failed while serving.
    #[error("transfer port: {0}")]
    Serve(#[source] std::io::Error),
    /// The admin API failed while serving.
    #[error("admin API: {0}")]
    Admin(#[source] std::io::Error),
    /// The backplane could not be joined.
    #[error(transparent)]
    Backplane(#[from] crate::nats::BackplaneError),
    /// The admin API's task panicked.
    #[error("admin API task: {0}")]
    AdminTask(#[from] tokio::task::JoinError),
}

/// The admin API's port, bound, with its token set up: `admin.token`, or one generated and kept
/// in `admin.token_file`. Serves any [`Hub`].
#[derive(Debug)]
pub struct AdminPort {
    listener: TcpListener,
    settings: AdminSettings,
    limits: HttpLimits,
    /// The file of a generated token, closed when the API stops.
    token_file: Option<TokenFile>,
}

impl AdminPort {
    /// Binds `config.admin.addr` and sets up the token; `[assign]` and the transfer port's
    /// shutdown grace (which open requests get too) come from `config` as well.
    pub async fn bind(config: &Config) -> Result<Self, DaemonError> {
        let listener = bind(config.admin.addr, " (admin API)").await?;
        let (token, token_file) = match config.admin.token.clone() {
            Some(token) => (token, None),
            None => {
                let port =
                    listener.local_addr().map_or(config.admin.addr.port(), |addr| addr.port());
                let file = TokenFile::open(&config.admin, port)?;
                (file.token.clone(), Some(file))
            }
        };
        let settings = AdminSettings {
            token,
            push_timeout: config.admin.push_timeout,
            assign: config.assign.policy,
        };
        let limits = config.admin.limits(config.transfer.shutdown_grace);
        Ok(Self { listener, settings, limits, token_file })
    }

    /// Where the admin API and `/metrics` listen.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bearer token of the state-changing routes.
    pub fn token(&self) -> &AdminToken {
        &self.settings.token
    }

    /// Serves the admin API of `hub` until `shutdown` is cancelled; then removes a per-run token
    /// file.
    pub async fn serve(self, hub: Hub, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self { listener, settings, limits, token_file } = self;
        let served = crate::admin::serve_with(listener, hub, settings, limits, shutdown).await;
        if let Some(file) = token_file {
            file.close();
        }
        served
    }
}

/// A hub whose ports are bound and whose admin token is set, ready to [`run`](Daemon::run).
#[derive(Debug)]
pub struct Daemon {
    hub: Hub,
    transfer: TcpListener,
    admin: AdminPort,
    discovery: DiscoveryConfig,
    backplane: Option<BackplaneLink>,
}

impl Daemon {
    /// Checks `config`, binds the transfer port and the admin API ([`AdminPort::bind`]). `tls`,
    /// read from the files of `transfer.tls` by the caller, makes the transfer port speak TLS.
    pub async fn bind(config: Config, tls: Option<ServerTls>) -> Result<Self, DaemonError> {
        config.validate()?;
        let transfer = bind(config.transfer.listen, "").await?;
        let admin = AdminPort::bind(&config).await?;
        let backplane = match config.backplane.enabled() {
            true => Some(nats::connect(&config.backplane, &config.discovery.cluster_name).await?),
            false => None,
        };
        let hub = match (&backplane, tls) {
            (Some(link), tls) => Hub::on_backplane(config.transfer, tls, link),
            (None, Some(tls)) => Hub::with_tls(config.transfer, tls),
            (None, None) => Hub::new(config.transfer),
        };
        Ok(Self { hub, transfer, admin, discovery: config.discovery, backplane })
    }

    /// The hub, for reading its registry and stats.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Where app servers connect.
    pub fn transfer_addr(&self) -> std::io::Result<SocketAddr> {
        self.transfer.local_addr()
    }

    /// Where the admin API and `/metrics` listen.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.addr()
    }

    /// The bearer token of the admin API's state-changing routes.
    pub fn admin_token(&self) -> &AdminToken {
        self.admin.token()
    }

    /// Serves app servers and the admin API until `shutdown` is cancelled (or the transfer port
    /// fails), letting connections flush for the shutdown grace. Announces the hub on the LAN
    /// meanwhile (`[discovery]`), and withdraws the announcement first thing at shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DaemonError> {
        let Self { hub, transfer, admin, discovery, backplane } = self;
        let backplane = backplane.map(|link| link.run(hub.shared().clone(), shutdown.clone()));
        let announced = match transfer.local_addr() {
            Ok(addr) if discovery.announce => announce::start(
                &discovery.cluster_name,
                addr,
                hub.standby().watch_role(),
                shutdown.clone(),
            ),
            Ok(_) => {
                tracing::info!("not announced on the LAN (announce = false)");
                None
            }
            Err(err) => {
                tracing::warn!(error = %err, "transfer address unknown: not announced on the LAN");
                None
            }
        };
        if hub.config().discovers_peers() {
            let own = announced.as_ref().map(|announced| announced.instance.clone());
            if own.is_none() {
                tracing::warn!(
                    "peers = auto but this hub is not announced: it finds its peers, but they cannot find it"
                );
            }
            let shared = hub.shared().clone();
            let cluster = discovery.cluster_name.clone();
            tokio::spawn(peer_discovery::run(shared, cluster, own, shutdown.clone()));
        }
        let admin = tokio::spawn(admin.serve(hub.clone(), shutdown.clone()));
        let served = hub.serve(transfer, shutdown.clone()).await;
        // The admin API stops with the hub, whatever stopped the hub.
        shutdown.cancel();
        if let Some(announced) = announced {
            // Bounded by the announcement's own wait; a margin for its task to be scheduled.
            let wait = announce::UNREGISTER_WAIT + std::time::Duration::from_millis(200);
            if tokio::time::timeout(wait, announced.task).await.is_err() {
                tracing::warn!("the announcement was not withdrawn in time");
            }
        }
        let admin = admin.await;
        if let Some(tasks) = backplane {
            if tokio::time::timeout(std::time::Duration::from_secs(2), tasks.wait()).await.is_err()
            {
                tracing::warn!("the backplane's tasks did not stop in time");
            }
        }
        served.map_err(DaemonError::Serve)?;
        admin?.map_err(DaemonError::Admin)?;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|source| DaemonError::Bind { addr, what, source })
}

/// Binds and runs the hub of `config` (see [`Daemon::bind`]) until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    Daemon::bind(config, tls).await?.run(shutdown).await
}

//! `im-server`: a small IM server that embeds the ACMS `Cluster` handle, the example to copy.
//!
//! Clients speak the line protocol of `acms-client` (`LOGIN`, `SEND`, `ALL`, `JOIN`, `LEAVE`,
//! `GROUP`, `WHO`, `WATCH`, `FILE`, `QUIT`); `acms_client::server` serves them: a task and a
//! bounded queue per client, the cluster's events put in the recipients' queues, and a message
//! that cannot be written to its client sent back to its sender (`Cluster::refuse`). Whether a
//! recipient is here or on another server, and who is in which group, is the cluster's business.
//! This file is the composition: settings, the `Cluster` handle, the listener, the shutdown.
//!
//! `--acms auto` finds the hubs of `--cluster-name` on the LAN instead of being told where they
//! are. The shared secret comes from `ACMS_SECRET` (or `secret` in the config file); TLS to the hub
//! from `--tls-ca` and its companions.
//!
//! With `--http ADDR` it also serves the chat page and its WebSocket there
//! (`acms_client::server::web`): browsers are clients like the others.
//!
//! It answers the clients' reflexive-address probe (`acms_client::p2p::probe`) on a UDP port,
//! by default the listen address's (UDP 6000 next to TCP 6000); `--udp ADDR` moves it, `--udp
//! off` turns it off (clients then open direct paths on their LAN only).
//!
//! Run: `cargo run --release -p acms-appserver --example im-server -- --id 0 --listen 127.0.0.1:6000`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use acms_appserver::{AUTO, ClientTls, Cluster, ClusterName, Secret, ServerId};
use acms_client::p2p::probe;
use acms_client::server::web::{WebServer, WebSettings};
use acms_client::server::{Clients, ServerSettings, advertised};
use acms_common::{logging, secret_from_env, signal::shutdown_on_signal};
use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use tokio::net::TcpListener;
use tracing::info;

/// Example IM server of an ACMS cluster.
#[derive(Debug, Parser)]
struct Args {
    /// TOML config file (see config/im-server.toml); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// This server's id in the cluster [default: 0].
    #[arg(long)]
    id: Option<u32>,
    /// Where clients connect [default: 0.0.0.0:6000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The address clients are told to use for this server (by `GET /api/assign`, and in the
    /// `MOVE` of a drain): host:port [default: the listen address; for an unspecified listen
    /// address such as 0.0.0.0, loopback with the listen port, with a warning].
    #[arg(long)]
    advertise: Option<String>,
    /// Serve the chat page and its WebSocket on this address (e.g. 127.0.0.1:8080) [default:
    /// off].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Answer the clients' reflexive-address probe on this UDP address, or `off` [default: the
    /// listen address and port, on UDP].
    #[arg(long)]
    udp: Option<String>,
    /// Address of the ACMS hub, or several separated by commas in order of preference (hot
    /// standby), or `auto` to find the hubs of --cluster-name on the LAN (DNS-SD)
    /// [default: 127.0.0.1:12000].
    #[arg(long)]
    acms: Option<String>,
    /// The cluster whose hubs `--acms auto` looks for: 1 to 63 characters of A-Z a-z 0-9 - _ .
    /// [default: acms].
    #[arg(long)]
    cluster_name: Option<ClusterName>,
    /// Connect to the hub over TLS, trusting this CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This server's TLS client certificate (PEM), for a hub that requires one; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the hubs' certificates must carry [default: the host of the first --acms].
    #[arg(long)]
    tls_server_name: Option<String>,
}

/// The config file; every key has a default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    id: u32,
    listen: SocketAddr,
    acms: String,
    /// The cluster whose hubs `acms = "auto"` looks for on the LAN.
    cluster_name: String,
    /// The client address advertised to the cluster; the listen address when empty.
    advertise: String,
    /// Where the chat page and its WebSocket are served; off when absent.
    http: Option<SocketAddr>,
    /// Where the reflexive-address probe answers (UDP): an address, `off`, or empty for the
    /// listen address and port.
    udp: String,
    #[serde(with = "humantime_serde")]
    login_timeout: Duration,
    /// How long a login may wait for the hub before the client is told it is unreachable.
    #[serde(with = "humantime_serde")]
    hub_login_timeout: Duration,
    /// Lines that may wait for one client.
    client_queue: usize,
    /// How long a line waits for room in a full client queue before the client is disconnected
    /// as too slow: a burst (the backlog after a hub restart) slows deliveries instead.
    #[serde(with = "humantime_serde")]
    client_grace: Duration,
    /// The secret shared with the hub; none by default.
    secret: Option<Secret>,
    /// TLS to the hub; plain TCP by default.
    tls: Option<TlsConfig>,
}

/// `[tls]` of the config file: PEM files and the hub's expected name.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsConfig {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let client = ServerSettings::default();
        Self {
            id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 6000)),
            acms: "127.0.0.1:12000".into(),
            cluster_name: ClusterName::default().to_string(),
            advertise: String::new(),
            http: None,
            udp: String::new(),
            login_timeout: client.login_timeout,
            hub_login_timeout: client.hub_login_timeout,
            client_queue: client.client_queue,
            client_grace: client.client_grace,
            secret: None,
            tls: None,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config: Config = match &args.config {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("bad config file {}", path.display()))?,
        None => Config::default(),
    };
    config.id = args.id.unwrap_or(config.id);
    config.listen = args.listen.unwrap_or(config.listen);
    config.acms = args.acms.unwrap_or(config.acms);
    let cluster_name = match args.cluster_name {
        Some(name) => name,
        None => ClusterName::new(config.cluster_name.as_str()).context("bad cluster_name")?,
    };
    config.advertise = args.advertise.unwrap_or(config.advertise);
    config.http = args.http.or(config.http);
    config.udp = args.udp.unwrap_or(config.udp);
    if let Some(secret) = secret_from_env()? {
        config.secret = Some(secret);
    }
    if args.tls_ca.is_some() || args.tls_cert.is_some() || args.tls_server_name.is_some() {
        let tls = config.tls.get_or_insert_with(TlsConfig::default);
        tls.ca = args.tls_ca.or(tls.ca.take());
        tls.cert = args.tls_cert.or(tls.cert.take());
        tls.key = args.tls_key.or(tls.key.take());
        tls.server_name = args.tls_server_name.or(tls.server_name.take());
    }
    if config.tls.as_ref().is_some_and(|tls| tls.server_name.is_none())
        && config.acms.trim().eq_ignore_ascii_case(AUTO)
    {
        anyhow::bail!(
            "TLS to hubs found on the LAN needs the name their certificates carry: --tls-server-name or tls.server_name"
        );
    }
    let tls = config.tls.as_ref().map(|tls| load_tls(tls, &config.acms)).transpose()?;
    logging::init(false);

    let shutdown = shutdown_on_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let advertise = advertised(&config.advertise, local)?;
    let probe = probe::bind(&config.udp, local).await?;
    let udp_port = match &probe {
        Some(socket) => Some(socket.local_addr()?.port()),
        None => None,
    };
    let udp = udp_port.map_or_else(|| "off".to_owned(), |port| port.to_string());
    info!(id = config.id, listen = %local, %advertise, acms = %config.acms, cluster = %cluster_name, %udp, "im-server started");
    if let Some(socket) = probe {
        tokio::spawn(probe::serve(socket, shutdown.clone()));
    }

    let web = match config.http {
        Some(addr) => Some(
            WebServer::bind(addr, &advertise, WebSettings::default())
                .await
                .with_context(|| format!("cannot serve the web page on {addr}"))?,
        ),
        None => None,
    };
    let mut builder = Cluster::builder(ServerId(config.id), &config.acms).client_addr(advertise);
    if config.acms.trim().eq_ignore_ascii_case(AUTO) {
        builder = builder.discover(cluster_name.clone());
    }
    if let Some(secret) = config.secret.clone() {
        builder = builder.secret(secret);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let (cluster, events) = builder.start();
    let settings = ServerSettings {
        id: config.id,
        login_timeout: config.login_timeout,
        hub_login_timeout: config.hub_login_timeout,
        client_queue: config.client_queue,
        client_grace: config.client_grace,
        udp_port,
        ..ServerSettings::default()
    };
    let clients = Clients::start(cluster, events, settings);
    if let Some(web) = web {
        tokio::spawn(web.serve(clients.clone(), shutdown.clone()));
    }
    clients.serve(listener, shutdown).await;
    info!("stopped");
    Ok(())
}

/// Reads the PEM files of `[tls]`; the hub's name defaults to the host part of its address (with
/// `acms = "auto"`, set `server_name`: found hubs have no name to check).
fn load_tls(tls: &TlsConfig, acms: &str) -> anyhow::Result<ClientTls> {
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca = read(tls.ca.as_ref().context("TLS needs the hub's CA: --tls-ca or tls.ca")?)?;
    let client = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => anyhow::bail!("a TLS client certificate needs both its cert and key"),
    };
    // One name for every hub: with several, their certificates must all carry it.
    let first = acms.split(',').next().unwrap_or(acms).trim();
    let host = first.rsplit_once(':').map_or(first, |(host, _port)| host);
    let name =
        tls.server_name.as_deref().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
    let client = client.as_ref().map(|(cert, key)| (cert.as_slice(), key.as_slice()));
    ClientTls::from_pem(&ca, name, client).context("bad TLS settings")
}

//! The `acms` daemon: parses flags, loads the optional config file, the secret (`ACMS_SECRET`),
//! the admin token (`ACMS_ADMIN_TOKEN`) and the TLS files, sets up logging, raises its open-file
//! limit and hands the rest to [`acms::run`] (ports, the generated admin token's file, serving)
//! until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use acms::{AdminToken, Config, LogFormat, LoginConflict, ServerTls, TlsFiles};
use acms_common::discovery::ClusterName;
use acms_common::signal::shutdown_on_signal;
use acms_common::{env, logging};
use anyhow::Context;
use clap::Parser;

/// ACMS cluster hub: registers app servers and their users, relays messages between servers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// TOML config file (see config/acms.toml); every setting has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address app servers connect to [default: 0.0.0.0:12000].
    #[arg(long)]
    transfer: Option<SocketAddr>,
    /// Address of the admin HTTP API and /metrics [default: 127.0.0.1:11000].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The other hubs of this cluster (their transfer addresses), for hot standby: this hub
    /// refuses app servers while one of them is active; `auto` finds the hubs of
    /// --cluster-name on the LAN [default: none, always active].
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Do not announce this hub on the LAN (DNS-SD over multicast DNS, `_acms._tcp.local.`)
    /// [default: announced, unless the transfer port is on loopback].
    #[arg(long)]
    no_announce: bool,
    /// The cluster's name, announced on the LAN: 1 to 63 characters of A-Z a-z 0-9 - _ .
    /// [default: acms].
    #[arg(long)]
    cluster_name: Option<ClusterName>,
    /// A user logging in on a second app server: `replace` kicks the older session, `multi`
    /// keeps both [default: replace].
    #[arg(long, value_enum)]
    login_conflict: Option<LoginConflict>,
    /// Log line format [default: plain]; RUST_LOG sets the level.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Run active beside other hubs on this NATS cluster (JetStream enabled): its URLs, e.g.
    /// nats://10.0.0.5:4222,nats://10.0.0.6:4222 [default: none, a single hub].
    #[arg(long, value_delimiter = ',')]
    backplane: Option<Vec<String>>,
    /// TLS on the transfer port: the hub's certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require app servers to present a client certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// The environment variable that holds the admin API's bearer token; it overrides `admin.token`.
const ADMIN_TOKEN_VAR: &str = "ACMS_ADMIN_TOKEN";
/// The environment variables of the backplane's NATS password and token.
const NATS_PASSWORD_VAR: &str = "ACMS_NATS_PASSWORD";
const NATS_TOKEN_VAR: &str = "ACMS_NATS_TOKEN";

fn main() -> anyhow::Result<()> {
    keep_freed_heap();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Config::from_toml(&text)
                .with_context(|| format!("bad config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(transfer) = args.transfer {
        config.transfer.listen = transfer;
    }
    if let Some(admin) = args.admin {
        config.admin.addr = admin;
    }
    if let Some(value) = env::var(ADMIN_TOKEN_VAR)? {
        config.admin.token = Some(
            AdminToken::new(value).with_context(|| format!("{ADMIN_TOKEN_VAR} is not usable"))?,
        );
    }
    if let Some(peers) = args.peers {
        config.transfer.peers = peers.into_iter().filter(|peer| !peer.is_empty()).collect();
    }
    if args.no_announce {
        config.discovery.announce = false;
    }
    if let Some(name) = args.cluster_name {
        config.discovery.cluster_name = name;
    }
    if let Some(policy) = args.login_conflict {
        config.transfer.login_conflict = policy;
    }
    if let Some(urls) = args.backplane {
        config.backplane.nats = urls.into_iter().filter(|url| !url.is_empty()).collect();
    }
    if let Some(password) = env::var(NATS_PASSWORD_VAR)? {
        config.backplane.password = Some(password);
    }
    if let Some(token) = env::var(NATS_TOKEN_VAR)? {
        config.backplane.token = Some(token);
    }
    if let Some(secret) = env::secret_from_env()? {
        config.transfer.secret = Some(secret);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.transfer.tls = Some(TlsFiles { cert, key, client_ca: args.tls_client_ca });
    }
    config.validate()?;
    let tls = config.transfer.tls.as_ref().map(load_tls).transpose()?;
    logging::init(args.log_format.unwrap_or(config.log.format) == LogFormat::Json);
    raise_open_file_limit();

    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = shutdown_on_signal()?;
        acms::run(config, tls, shutdown).await?;
        Ok(())
    })
}

/// Reads the PEM files of the transfer port's TLS.
fn load_tls(files: &TlsFiles) -> anyhow::Result<ServerTls> {
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read TLS file {}", path.display()))
    };
    let client_ca = files.client_ca.as_ref().map(read).transpose()?;
    ServerTls::from_pem(&read(&files.cert)?, &read(&files.key)?, client_ca.as_deref())
        .context("bad TLS settings")
}

/// glibc hands the free top of a heap back to the kernel once 128 KiB of it are free, and the
/// next allocation there faults it in again, zeroed. The relay's read buffers come and go at
/// that edge: the faults took a tenth to a fifth of a hub's CPU per 1 KiB message. Up to 64 MiB
/// free per heap is kept instead (docs/SCALING.md, run 6).
fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sets one parameter of the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Raises the soft limit on open files to the hard limit, so `max_connections` can be reached:
/// the usual soft limit of 1024 would stop the hub short of its default cap.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
    }
}

//! The `acms` daemon: parses flags, loads the optional config file, the secret (`ACMS_SECRET`) and
//! the TLS files and the admin token (`ACMS_ADMIN_TOKEN`, or one it generates and writes to a
//! file), sets up logging, raises its open-file limit, binds the transfer port and the admin
//! HTTP API and runs both until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use acms::{
    AdminSettings, AdminToken, Config, Hub, LogFormat, LoginConflict, Secret, ServerTls, TlsFiles,
};
use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    /// refuses app servers while one of them is active [default: none, always active].
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// A user logging in on a second app server: `replace` kicks the older session, `multi`
    /// keeps both [default: replace].
    #[arg(long, value_enum)]
    login_conflict: Option<LoginConflict>,
    /// Log line format [default: plain]; RUST_LOG sets the level.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
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

/// The environment variable that holds the shared secret; it overrides `transfer.secret`.
const SECRET_VAR: &str = "ACMS_SECRET";

/// The environment variable that holds the admin API's bearer token; it overrides `admin.token`.
const ADMIN_TOKEN_VAR: &str = "ACMS_ADMIN_TOKEN";

fn main() -> anyhow::Result<()> {
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
    if let Some(value) = std::env::var_os(ADMIN_TOKEN_VAR) {
        let value =
            value.into_string().map_err(|_| anyhow::anyhow!("{ADMIN_TOKEN_VAR} is not UTF-8"))?;
        config.admin.token = Some(
            AdminToken::new(value).with_context(|| format!("{ADMIN_TOKEN_VAR} is not usable"))?,
        );
    }
    if let Some(peers) = args.peers {
        config.transfer.peers = peers.into_iter().filter(|peer| !peer.is_empty()).collect();
    }
    if let Some(policy) = args.login_conflict {
        config.transfer.login_conflict = policy;
    }
    if let Some(value) = std::env::var_os(SECRET_VAR) {
        let value =
            value.into_string().map_err(|_| anyhow::anyhow!("{SECRET_VAR} is not UTF-8"))?;
        config.transfer.secret =
            Some(Secret::new(value).with_context(|| format!("{SECRET_VAR} is not usable"))?);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.transfer.tls = Some(TlsFiles { cert, key, client_ca: args.tls_client_ca });
    }
    if config.transfer.tls.is_some() && !config.transfer.peers.is_empty() {
        // Peers ask each other's status over plain TCP: against a TLS port every probe would
        // fail, and each hub would think itself alone and active.
        anyhow::bail!(
            "hot standby (peers) and TLS on the transfer port cannot be combined yet:              remove `peers`/--peers or the TLS settings"
        );
    }
    let tls = config.transfer.tls.as_ref().map(load_tls).transpose()?;
    init_tracing(args.log_format.unwrap_or(config.log.format));
    raise_open_file_limit();

    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = shutdown_on_signal()?;
        let listener = TcpListener::bind(config.transfer.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.transfer.listen))?;
        let admin_listener = TcpListener::bind(config.admin.addr)
            .await
            .with_context(|| format!("cannot listen on {} (admin API)", config.admin.addr))?;
        let token = match config.admin.token.clone() {
            Some(token) => token,
            None => generate_token(&config.admin, admin_listener.local_addr()?.port())?,
        };
        let settings = AdminSettings {
            token,
            push_timeout: config.admin.push_timeout,
            assign: config.assign.policy,
        };
        let hub = match tls {
            Some(tls) => Hub::with_tls(config.transfer, tls),
            None => Hub::new(config.transfer),
        };
        let admin = tokio::spawn(acms::admin::serve(
            admin_listener,
            hub.clone(),
            settings,
            shutdown.clone(),
        ));
        let served = hub.serve(listener, shutdown.clone()).await;
        // The admin API stops with the hub, whatever stopped the hub.
        shutdown.cancel();
        served?;
        admin.await.context("admin API task")?.context("admin API")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Makes a token for a hub that was given none, writes it to a file only this user can read, and
/// logs where: the API is never open by default, and the token never appears in a log.
fn generate_token(config: &acms::AdminConfig, port: u16) -> anyhow::Result<AdminToken> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = config.token_file.clone().unwrap_or_else(|| {
        let dir =
            std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        dir.join(format!("acms-admin-{port}.token"))
    });
    let token = AdminToken::generate();
    // A file left by an earlier run (or planted by someone else) is replaced, not reused.
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("cannot replace {}", path.display()));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    writeln!(file, "{}", token.expose())
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    tracing::warn!(
        file = %path.display(),
        "no admin token set (ACMS_ADMIN_TOKEN or admin.token): generated one and wrote it to this file"
    );
    Ok(token)
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

/// Raises the soft limit on open files to the hard limit, so `max_connections` can be reached:
/// the usual soft limit of 1024 would stop the hub short of its default cap.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open-file limit"),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed) is lost quietly: reporting it on
        // stderr as well would panic the task that logged.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// A token cancelled by the first SIGINT or SIGTERM. The handlers are in place when this returns,
/// so a signal that comes right after the ready log line is not lost.
fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("signal received; shutting down");
        token.cancel();
    });
    Ok(shutdown)
}

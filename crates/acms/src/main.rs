//! The `acms` daemon: parses flags, loads the optional config file, the secret (`ACMS_SECRET`) and
//! the TLS files and the admin token (`ACMS_ADMIN_TOKEN`, or one kept in a file, generated at
//! the first start), sets up logging, raises its open-file limit, binds the transfer port and the admin
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
        let (token, token_file) = match config.admin.token.clone() {
            Some(token) => (token, None),
            None => {
                let file = TokenFile::open(&config.admin, admin_listener.local_addr()?.port())?;
                (file.token.clone(), Some(file))
            }
        };
        let settings = AdminSettings {
            token,
            push_timeout: config.admin.push_timeout,
            assign: config.assign.policy,
        };
        let limits = config.admin.limits(config.transfer.shutdown_grace);
        let hub = match tls {
            Some(tls) => Hub::with_tls(config.transfer, tls),
            None => Hub::new(config.transfer),
        };
        let admin = tokio::spawn(acms::admin::serve_with(
            admin_listener,
            hub.clone(),
            settings,
            limits,
            shutdown.clone(),
        ));
        let served = hub.serve(listener, shutdown.clone()).await;
        // The admin API stops with the hub, whatever stopped the hub.
        shutdown.cancel();
        let admin = admin.await;
        if let Some(file) = token_file {
            file.close();
        }
        served?;
        admin.context("admin API task")?.context("admin API")?;
        tracing::info!("stopped");
        Ok(())
    })
}

/// The admin token of a hub that was given none, and the file that keeps it.
struct TokenFile {
    token: AdminToken,
    path: PathBuf,
    /// Made for this run only (an ephemeral admin port): removed when the hub stops.
    per_run: bool,
}

impl TokenFile {
    /// Reads the token kept in the file from an earlier run, or makes one and writes it to a file
    /// only this user can read, and logs where: the API is never open by default, the token never
    /// appears in a log, and it stays the same across restarts until the file is deleted.
    fn open(config: &acms::AdminConfig, port: u16) -> anyhow::Result<Self> {
        let per_run = config.token_file.is_none() && config.addr.port() == 0;
        let path = config.token_file.clone().unwrap_or_else(|| {
            let dir =
                std::env::var_os("XDG_RUNTIME_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
            dir.join(format!("acms-admin-{port}.token"))
        });
        if !per_run && let Some(token) = read_token(&path)? {
            tracing::info!(file = %path.display(), "admin token read from its file");
            return Ok(Self { token, path, per_run });
        }
        let token = AdminToken::generate();
        write_token(&path, &token)?;
        tracing::warn!(
            file = %path.display(),
            "no admin token set (ACMS_ADMIN_TOKEN or admin.token): generated one and wrote it to this file"
        );
        Ok(Self { token, path, per_run })
    }

    /// Removes a per-run file once the hub has stopped; a kept file stays for the next start.
    fn close(self) {
        if self.per_run
            && let Err(err) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(file = %self.path.display(), error = %err, "cannot remove the admin token file");
        }
    }
}

/// The token kept at `path`, or `None` if there is no file. A file this user does not own, that
/// others may read, or that holds no valid token is an error: reusing it could hand the API to
/// whoever wrote it, and replacing it silently would change the operators' token.
fn read_token(path: &std::path::Path) -> anyhow::Result<Option<AdminToken>> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("cannot read {shown}")),
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !metadata.file_type().is_file() || metadata.uid() != me {
        anyhow::bail!(
            "the admin token file {shown} is not a regular file owned by this user: remove it \
             (a new token is then generated) or set admin.token_file"
        );
    }
    if metadata.mode() & 0o077 != 0 {
        anyhow::bail!(
            "the admin token file {shown} may be read by other users (mode {:o}): `chmod 600` it, \
             or remove it to generate a new token",
            metadata.mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    let token = AdminToken::new(text.trim()).with_context(|| {
        format!("the admin token file {shown} holds no usable token: fix it, or remove it to generate a new one")
    })?;
    Ok(Some(token))
}

/// Writes `token` to a new file at `path` with mode 0600, replacing any file there.
fn write_token(path: &std::path::Path, token: &AdminToken) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).with_context(|| format!("cannot replace {}", path.display()));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    writeln!(file, "{}", token.expose())
        .with_context(|| format!("cannot write the admin token to {}", path.display()))
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

//! The `acms` daemon: parses flags, loads the optional config file, sets up logging, binds the
//! transfer port and runs the hub until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use acms::{Config, Hub, LogFormat};
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
    /// Log line format [default: plain]; RUST_LOG sets the level.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

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
    init_tracing(args.log_format.unwrap_or(config.log.format));

    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = shutdown_on_signal()?;
        let listener = TcpListener::bind(config.transfer.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.transfer.listen))?;
        Hub::new(config.transfer).serve(listener, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    })
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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

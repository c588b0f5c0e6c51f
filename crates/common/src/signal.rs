//! The signal that stops a process: SIGINT or SIGTERM, as a `CancellationToken`.

use tokio_util::sync::CancellationToken;

/// A token cancelled by the first SIGINT or SIGTERM. The handlers are in place when this returns,
/// so a signal that comes right after the ready log line is not lost. Needs a tokio runtime.
pub fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
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

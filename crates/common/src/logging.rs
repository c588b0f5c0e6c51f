//! Logging of a process: `tracing` to stderr, the level from `RUST_LOG` (`info` by default).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the process's `tracing` subscriber: one line per event on stderr, as JSON objects
/// when `json`, else plain text (coloured on a terminal). Call once, at start.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed) is lost quietly: reporting it on
        // stderr as well would panic the task that logged.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

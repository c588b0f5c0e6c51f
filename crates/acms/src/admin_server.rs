//! The admin API's HTTP server: an accept loop that caps open connections, and hyper's HTTP/1
//! connection with a deadline on each request's header, so clients that connect and stall (a
//! slowloris, or an idle keep-alive connection) cannot hold the port.
//!
//! `axum::serve` offers neither limit, so the loop is ours: past the cap a connection is answered
//! `503` with a JSON error and closed at once; a connection whose request header is not complete
//! within the deadline, counted from when the server starts waiting for it, is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Limits of the admin API's HTTP server (`[admin]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long a connection has to send a complete request header, from when the server starts
    /// waiting for one (at connect, and after each response on a keep-alive connection).
    pub header_read_timeout: Duration,
    /// Most admin connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// How long shutdown waits for open admin connections to finish before dropping them.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What a connection past the cap is sent before it is closed: a whole response, so a client
/// sees why rather than a reset.
const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\n\
    connection: close\r\n\
    retry-after: 1\r\n\
    content-length: 54\r\n\r\n\
    {\"error\":\"too many admin connections open; try again\"}";

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled; then stops
/// accepting, lets open requests finish for `limits.shutdown_grace`, and drops the rest.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(limits.max_connections.saturating_mul(4)));
    // Whether the cap is being hit: said once when it starts, not once per refused connection.
    let mut at_cap = false;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    warn!(error = %err, "admin API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            if !at_cap {
                warn!(
                    max_connections = limits.max_connections,
                    "admin API at its connection cap: refusing new connections with 503"
                );
                at_cap = true;
            }
            // Refusals take a slot of their own (four per connection slot: a refusal lasts at
            // most REFUSAL_TIME); past that a connection is dropped unanswered, so a flood costs
            // a bounded number of sockets.
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                tracker.spawn(refuse(stream, permit));
            }
            continue;
        };
        // Said again only once the flood has eased, not at every slot that frees up under it.
        if at_cap && open.available_permits() >= limits.max_connections / 2 {
            at_cap = false;
        }
        tracker.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            limits,
            permit,
            shutdown.clone(),
        ));
    }
    tracker.close();
    if tokio::time::timeout(limits.shutdown_grace, tracker.wait()).await.is_err() {
        warn!(open = tracker.len(), "admin connections still open at shutdown; dropping them");
    }
    Ok(())
}

/// Answers a connection past the cap, within [`REFUSAL_TIME`]: the `503`, then the peer's
/// request read and thrown away until it closes, since closing a socket with unread bytes resets
/// it and the peer could lose the answer.
async fn refuse(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let answer = async {
        stream.write_all(OVER_CAP).await?;
        stream.shutdown().await?;
        let mut scratch = [0; 1024];
        let mut left = MAX_REFUSAL_READ;
        while left > 0 {
            match stream.read(&mut scratch).await? {
                0 => break,
                read => left = left.saturating_sub(read),
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
}

/// Most bytes a connection's read buffer holds, so the longest request header accepted: with
/// the connection cap, the bound on what stalled or hostile clients cost in buffers (hyper's own
/// default is about 400 KiB).
const MAX_READ_BUFFER: usize = 64 * 1024;

/// Longest a refused connection is kept to deliver its `503`: time for the request it sent at
/// connect to arrive and be read, short enough that a flood of stalled clients frees the
/// refusal slots quickly.
const REFUSAL_TIME: Duration = Duration::from_millis(250);

/// Most bytes read from a refused connection before it is dropped.
const MAX_REFUSAL_READ: usize = 64 * 1024;

/// One admin connection, under its header deadline; `_permit` holds its place under the cap.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = shutdown.cancelled() => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match served {
        Ok(()) => {}
        Err(err) if err.is_timeout() => info!(
            %peer,
            timeout = ?limits.header_read_timeout,
            "admin connection closed: no complete request header in time"
        ),
        Err(err) => debug!(%peer, error = %err, "admin connection ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_cap_answer_is_whole() {
        let text = std::str::from_utf8(OVER_CAP).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length = head.lines().find_map(|line| line.strip_prefix("content-length: ")).unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("too many"));
    }
}

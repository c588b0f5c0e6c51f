//! The operating surface at its edges: the admin API against stalled clients and the wrong
//! method, the generated admin token across restarts, the address `im-server` advertises, and
//! what the hub and an app server say about client certificates.
//!
//! The tests with real programs need `cargo build --workspace --bins --examples` first.

use std::path::Path;
use std::time::Duration;

use acms::{HttpLimits, ServerTls};
use acms_appserver::{ClientTls, ErrorCode, LinkState};
use acms_tests::http::{TOKEN, TestAdmin, request};
use acms_tests::process::{ADMIN_TOKEN, Proc, field_addr, program, start_hub};
use acms_tests::{PATIENCE, TestHub, TestServer, builder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// The admin API's HTTP server
// ---------------------------------------------------------------------------------------------

/// Opens `count` connections to `addr` that never complete a request header: most send the
/// start of one and stall, every tenth sends nothing at all.
async fn stalled_connections(addr: std::net::SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut stalled = Vec::with_capacity(count);
    for index in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connect to the admin API");
        if index % 10 != 0 {
            stream
                .write_all(b"GET /api/servers HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
                .await
                .expect("send a partial header");
        }
        stalled.push(stream);
    }
    stalled
}

/// How many of `streams` the server has not closed within [`PATIENCE`].
async fn still_open(streams: Vec<TcpStream>) -> usize {
    let waits = streams.into_iter().map(|mut stream| async move {
        let mut sink = Vec::new();
        // EOF or a reset: either way the server closed it.
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink)).await.is_err()
    });
    futures_util::future::join_all(waits).await.into_iter().filter(|open| *open).count()
}

#[tokio::test]
async fn stalled_admin_connections_are_closed_at_the_header_deadline_while_requests_are_answered() {
    const STALLED: usize = 200;
    let hub = TestHub::start().await;
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 300,
        ..HttpLimits::default()
    };
    let admin = TestAdmin::start_limited(&hub.hub, limits).await;
    let stalled = stalled_connections(admin.addr, STALLED).await;
    let started = tokio::time::Instant::now();

    let reply = admin.get("/api/servers").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json(), serde_json::json!([]));

    let open = still_open(stalled).await;
    assert_eq!(open, 0, "{open} of {STALLED} stalled connections still open after {PATIENCE:?}");
    eprintln!("{STALLED} stalled connections closed within {:?}", started.elapsed());
    assert_eq!(admin.get("/api/servers").await.status, 200);
}

#[tokio::test]
async fn admin_connections_past_the_cap_get_a_503_and_the_port_recovers() {
    const CAP: usize = 4;
    let hub = TestHub::start().await;
    // Long enough that the stalled connections are surely open when the next one comes.
    let limits = HttpLimits {
        header_read_timeout: Duration::from_secs(5),
        max_connections: CAP,
        ..HttpLimits::default()
    };
    let admin = TestAdmin::start_limited(&hub.hub, limits).await;
    let stalled = stalled_connections(admin.addr, CAP).await;

    let refused = admin.get("/api/servers").await;
    let message = refused.error(503);
    assert!(message.contains("too many admin connections"), "{message}");

    assert_eq!(still_open(stalled).await, 0, "stalled connections outlived their deadline");
    let reply = admin.get("/api/servers").await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn the_wrong_method_on_a_route_gets_405_with_a_json_error_and_allow() {
    let hub = TestHub::start().await;
    let admin = TestAdmin::start(&hub.hub, Duration::from_secs(5)).await;

    // With the token or without: the route does not take GET, whoever asks.
    let auth = format!("Bearer {TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    for sent in [&headers[..], &[]] {
        let reply = request(admin.addr, "GET", "/api/broadcast", sent, None).await;
        let message = reply.error(405);
        assert_eq!(reply.header("allow"), Some("POST"), "{reply:?}");
        assert!(message.contains("POST"), "{message}");
    }

    let reply = request(admin.addr, "POST", "/api/servers", &headers, Some("{}")).await;
    let message = reply.error(405);
    let allow = reply.header("allow").expect("an Allow header").to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert!(message.contains("GET"), "{message}");
}


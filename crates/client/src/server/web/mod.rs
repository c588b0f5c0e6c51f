//! The chat page and its WebSocket: `im-server --http ADDR` serves the page at `/` and the
//! demo protocol at `/ws`, one line per text message, so a browser user goes through the same
//! sessions and router as a terminal user (login, conflicts, groups, presence, delivery, kicks,
//! drains) and the two talk to each other across servers. The page, its script and its style
//! are compiled into the binary and load nothing from elsewhere.
//!
//! A socket is accepted only from a page of this server or of another server of the cluster
//! (the `Origin` header; a request with none is not from a browser page and is let in); others
//! get 403 and a warning. Messages and frames are bounded ([`WebSettings::max_message`]), and
//! so are the bytes waiting to be written to a socket; a socket that sends binary, a line that
//! is not part of the protocol, or messages faster than the rate limit is closed alone.
//!
//! # Layout
//! - this module: [`WebSettings`], [`WebServer`] (bind, serve), the routes and the origin check.
//! - `socket`: a WebSocket as a client's lines, with the rate limit.
//! - `directory`: where the cluster's other pages are, learned by server-to-server messages.

mod directory;
mod socket;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub(crate) use directory::WebDirectory;
use directory::same_host;
use socket::WebLines;

use super::Clients;
use super::session::serve_client;
use crate::MAX_LINE_LEN;

const INDEX_HTML: &str = include_str!("assets/index.html");
const STYLE_CSS: &str = include_str!("assets/style.css");
const APP_JS: &str = include_str!("assets/app.js");
const TRANSFER_JS: &str = include_str!("assets/transfer.js");
/// js-sha256, vendored unchanged (assets/js-sha256/README.md): the incremental SHA-256 of file
/// transfers, which `crypto.subtle` lacks.
const SHA256_JS: &str = include_str!("assets/js-sha256/sha256.js");

/// The page may run its own scripts and styles and open WebSockets (to this server or, after a
/// drain, another of the cluster), and nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// Limits of the web sockets; every field has a default.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Longest message (and frame) a socket may send, in bytes: a protocol line, a file chunk
    /// included, fits.
    pub max_message: usize,
    /// Bytes that may wait to be written to one socket; past them the socket fails.
    pub max_write_buffer: usize,
    /// Messages a second a socket may send on average (a file upload at full speed sends well
    /// under it: 5,000 chunks are 160 MiB)...
    pub max_rate: u32,
    /// ... and at once.
    pub burst: u32,
}

impl Default for WebSettings {
    fn default() -> Self {
        Self {
            max_message: MAX_LINE_LEN,
            max_write_buffer: 4 * 1024 * 1024,
            max_rate: 5000,
            burst: 10_000,
        }
    }
}

/// The web server of one IM server, bound and not yet serving.
#[derive(Debug)]
pub struct WebServer {
    listener: TcpListener,
    client_addr: String,
    page: String,
    settings: WebSettings,
}

impl WebServer {
    /// Binds `addr`. `client_addr` is the address this server advertises to TCP clients; the
    /// page's own address is told to the other servers (for a drain's `MOVE`): the bound
    /// address, or for an unspecified one (0.0.0.0) the advertised host with the bound port.
    pub async fn bind(
        addr: SocketAddr,
        client_addr: &str,
        settings: WebSettings,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let page = if local.ip().is_unspecified() {
            let host = client_addr.rsplit_once(':').map_or(client_addr, |(host, _)| host);
            format!("{host}:{}", local.port())
        } else {
            local.to_string()
        };
        Ok(Self { listener, client_addr: client_addr.to_owned(), page, settings })
    }

    /// Where the page is: `host:port`.
    pub fn page_addr(&self) -> &str {
        &self.page
    }

    /// Serves the page and its sockets until `shutdown` is cancelled. The sessions run in
    /// `clients`' task tracker, so [`Clients::serve`] waits for them as for TCP clients.
    pub async fn serve(self, clients: Clients, shutdown: CancellationToken) {
        let Self { listener, client_addr, page, settings } = self;
        info!(http = %page, "web page listening");
        clients.web.announce(&clients.cluster, &client_addr, &page).await;
        let state = Arc::new(WebState { clients, settings, shutdown: shutdown.clone() });
        let app = Router::new()
            .route("/", get(index))
            .route("/style.css", get(|| asset("text/css; charset=utf-8", STYLE_CSS)))
            .route("/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
            .route("/transfer.js", get(|| asset("text/javascript; charset=utf-8", TRANSFER_JS)))
            .route("/sha256.js", get(|| asset("text/javascript; charset=utf-8", SHA256_JS)))
            .route("/ws", get(socket))
            .with_state(state);
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let served =
            axum::serve(listener, service).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(err) = served.await {
            warn!(error = %err, "the web server failed");
        }
    }
}

struct WebState {
    clients: Clients,
    settings: WebSettings,
    shutdown: CancellationToken,
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML).await
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/ws`: checks the origin, then runs a client session over the socket.
async fn socket(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(origin) = check_origin(&headers, &state.clients.web) {
        warn!(%peer, %origin, "WebSocket from a foreign page refused");
        return (StatusCode::FORBIDDEN, "this page may not open a socket here\n").into_response();
    }
    let settings = &state.settings;
    let session_state = state.clone();
    upgrade
        .max_message_size(settings.max_message)
        .max_frame_size(settings.max_message)
        .max_write_buffer_size(settings.max_write_buffer)
        .on_failed_upgrade(move |err| warn!(%peer, error = %err, "WebSocket upgrade failed"))
        .on_upgrade(move |socket| {
            let state = session_state;
            let tasks = state.clients.tasks.clone();
            let session = async move {
                info!("web client connected");
                let clients = &state.clients;
                let mut lines = WebLines::new(socket, clients.web.clone(), &state.settings);
                serve_client(&mut lines, clients, state.shutdown.clone(), true).await;
                lines.finish().await;
            };
            tasks.track_future(session.instrument(info_span!("web client", %peer)))
        })
}

/// Accepts a request with no `Origin` (not from a browser page), or one from this server's page
/// (the origin's host and port are the request's `Host`) or another page of the cluster;
/// otherwise returns the origin.
fn check_origin(headers: &HeaderMap, pages: &WebDirectory) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(header::HOST).map(|host| String::from_utf8_lossy(host.as_bytes()));
    match authority {
        Some(authority) if host.is_some_and(|host| same_host(&host) == same_host(authority)) => {
            Ok(())
        }
        Some(authority) if pages.is_cluster_page(authority) => Ok(()),
        _ => Err(origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_clusters_pages_may_open_a_socket() {
        let pages = WebDirectory::default();
        let here = "127.0.0.1:8080";
        assert!(check_origin(&headers(None, here), &pages).is_ok(), "not a browser page");
        assert!(check_origin(&headers(Some("http://127.0.0.1:8080"), here), &pages).is_ok());
        assert!(check_origin(&headers(Some("http://localhost:8080"), here), &pages).is_ok());
        for foreign in ["http://evil.example", "http://127.0.0.1:8081", "null", "127.0.0.1:8080"] {
            let refused = check_origin(&headers(Some(foreign), here), &pages);
            assert_eq!(refused, Err(foreign.to_owned()));
        }
    }
}

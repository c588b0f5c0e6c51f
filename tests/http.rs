//! A minimal HTTP/1.1 client for the admin API tests: one request per connection, over a real
//! socket, so the tests see exactly the bytes the hub sends.

use std::net::SocketAddr;
use std::time::Duration;

use acms::{AdminPort, AdminToken, AssignPolicy, Config, HttpLimits, Hub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::PATIENCE;

/// The token of the admin APIs these helpers start.
pub const TOKEN: &str = "admin-token-for-the-tests";

/// An admin API for `hub` on an ephemeral port; stopped when dropped.
pub struct TestAdmin {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestAdmin {
    /// Serves the admin API of `hub`, with [`TOKEN`], on 127.0.0.1.
    pub async fn start(hub: &Hub, push_timeout: Duration) -> Self {
        Self::start_with(hub, push_timeout, AssignPolicy::default()).await
    }

    /// As [`TestAdmin::start`], assigning servers by `assign`.
    pub async fn start_with(hub: &Hub, push_timeout: Duration, assign: AssignPolicy) -> Self {
        Self::serve(hub, push_timeout, assign, HttpLimits::default()).await
    }

    /// As [`TestAdmin::start`], with the HTTP server's `limits`.
    pub async fn start_limited(hub: &Hub, limits: HttpLimits) -> Self {
        Self::serve(hub, Duration::from_secs(5), AssignPolicy::default(), limits).await
    }

    /// The admin API as the daemon binds and serves it ([`AdminPort`]), with these settings.
    async fn serve(
        hub: &Hub,
        push_timeout: Duration,
        assign: AssignPolicy,
        limits: HttpLimits,
    ) -> Self {
        let mut config = Config::default();
        config.admin.addr = "127.0.0.1:0".parse().unwrap();
        config.admin.token = Some(AdminToken::new(TOKEN).unwrap());
        config.admin.push_timeout = push_timeout;
        config.admin.header_read_timeout = limits.header_read_timeout;
        config.admin.max_connections = limits.max_connections;
        config.transfer.shutdown_grace = limits.shutdown_grace;
        config.assign.policy = assign;
        let admin = AdminPort::bind(&config).await.expect("bind admin");
        let addr = admin.addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(admin.serve(hub.clone(), shutdown.clone()));
        Self { addr, shutdown }
    }

    /// `GET path`, with no token.
    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], None).await
    }

    /// `POST path` with a JSON body and the right token.
    pub async fn post(&self, path: &str, json: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        request(self.addr, "POST", path, &headers, Some(json)).await
    }
}

impl Drop for TestAdmin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: String,
}

impl Reply {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The body as JSON; fails the test if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {} {}", self.status, self.body))
    }

    /// Asserts a JSON error with `status`, and returns its message.
    pub fn error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        self.json()["error"].as_str().expect("an `error` string").to_owned()
    }
}

/// Sends one request and reads the whole response, within [`PATIENCE`].
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect to the admin API");
    request_on(stream, addr, method, path, headers, body).await
}

/// As [`request`], over a connection already made to `addr` (from another network namespace).
pub async fn request_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let exchange = async {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let body = body.unwrap_or("");
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(head.as_bytes()).await.expect("send request");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(PATIENCE, exchange).await.expect("an HTTP answer in time");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked =
        headers.iter().any(|(name, value)| name == "transfer-encoding" && value == "chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Reply { status, headers, body }
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    body
}

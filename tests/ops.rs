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
use acms_tests::pki::TestCa;
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

// ---------------------------------------------------------------------------------------------
// The generated admin token
// ---------------------------------------------------------------------------------------------

/// Starts `acms` with no admin token in its environment and both ports on 0; returns it with
/// its admin address.
async fn hub_without_token(args: &[&str], env: &[(&str, Option<&str>)]) -> (Proc, String) {
    let mut all = vec!["--transfer", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut hub = Proc::start_env("acms", &program("acms"), &all, env);
    let line = hub
        .stderr
        .wait_for("`admin HTTP API listening`", |line| line.contains("admin HTTP API listening"))
        .await;
    (hub, field_addr(&line, "admin").to_string())
}

/// The status of a kick of a user nobody has, with `token`: 404 if the token is right, 401 if
/// not.
async fn kick_status(admin: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let addr = admin.parse().unwrap();
    request(addr, "POST", "/api/users/nobody/kick", &headers, Some("{}")).await.status
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("the token file").permissions().mode() & 0o777
}

#[tokio::test]
async fn a_generated_admin_token_stays_the_same_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let config = dir.path().join("acms.toml");
    std::fs::write(&config, format!("[admin]\ntoken_file = \"{}\"\n", token_file.display()))
        .unwrap();
    let args = ["--config", config.to_str().unwrap()];

    let mut tokens: Vec<String> = Vec::new();
    for run in 0..2 {
        let (mut hub, admin) = hub_without_token(&args, &[]).await;
        let token = std::fs::read_to_string(&token_file).expect("the token file").trim().to_owned();
        assert_eq!(mode(&token_file), 0o600, "run {run}");
        assert_eq!(kick_status(&admin, &token).await, 404, "run {run}: the token opens the API");
        if let Some(first) = tokens.first() {
            assert_eq!(kick_status(&admin, first).await, 404, "the first run's token still works");
        }
        tokens.push(token);
        hub.terminate().await;
        hub.exits_cleanly().await;
        assert!(token_file.exists(), "run {run}: the token file stays for the next start");
    }
    assert_eq!(tokens[0], tokens[1], "the token changed across a restart");

    // A file others may read is not trusted: the hub says what to do instead of starting.
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .unwrap();
    let all = [
        "--config",
        config.to_str().unwrap(),
        "--transfer",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    let mut hub = Proc::start_env("acms", &program("acms"), &all, &[]);
    let status = hub.exit_status().await;
    let said = hub.stderr.until_closed().await.join("\n");
    assert!(!status.success(), "the hub started with a readable token file; it said:\n{said}");
    assert!(said.contains("chmod 600"), "{said}");
}

#[tokio::test]
async fn the_token_file_of_an_ephemeral_admin_port_is_removed_when_the_hub_stops() {
    let dir = tempfile::tempdir().unwrap();
    let runtime_dir = dir.path().to_str().unwrap();
    let (mut hub, admin) = hub_without_token(&[], &[("XDG_RUNTIME_DIR", Some(runtime_dir))]).await;
    let port = admin.rsplit(':').next().unwrap();
    let token_file = dir.path().join(format!("acms-admin-{port}.token"));
    let token = std::fs::read_to_string(&token_file).expect("the token file").trim().to_owned();
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(kick_status(&admin, &token).await, 404);

    hub.terminate().await;
    hub.exits_cleanly().await;
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// The address im-server advertises
// ---------------------------------------------------------------------------------------------

/// Starts an `im-server` with `args` joined to the hub at `transfer`; returns it with its
/// `im-server started` line, once it is connected.
async fn im_server(name: &str, transfer: &str, args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--acms", transfer];
    all.extend_from_slice(args);
    let mut server = Proc::start(name, &program("examples/im-server"), &all);
    let started = server
        .stderr
        .wait_for("`im-server started`", |line| line.contains("im-server started"))
        .await;
    server.stderr.wait_for("`connected to hub`", |line| line.contains("connected to hub")).await;
    (server, started)
}

#[tokio::test]
async fn im_server_tells_clients_the_advertised_address_and_never_0_0_0_0() {
    let (_hub, transfer, admin) = start_hub().await;
    let transfer = transfer.to_string();
    let advertised = "im.example.com:6000";
    let (_named, _) = im_server(
        "im-server 0",
        &transfer,
        &["--id", "0", "--listen", "127.0.0.1:0", "--advertise", advertised],
    )
    .await;
    let (_anywhere, started) =
        im_server("im-server 1", &transfer, &["--id", "1", "--listen", "0.0.0.0:0"]).await;
    let listen = field_addr(&started, "listen");
    let loopback = format!("127.0.0.1:{}", listen.port());
    assert_eq!(field_addr(&started, "advertise").to_string(), loopback, "{started}");

    let servers = request(admin, "GET", "/api/servers", &[], None).await.json();
    let addrs: Vec<&str> =
        servers.as_array().unwrap().iter().map(|s| s["client_addr"].as_str().unwrap()).collect();
    assert_eq!(addrs, [advertised, loopback.as_str()]);

    // A drain of server 1 tells its clients (MOVE) to go to the address server 0 advertised.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let drained =
        request(admin, "POST", "/api/servers/1/drain", &[("Authorization", &auth)], None).await;
    assert_eq!(drained.status, 200, "{drained:?}");
    assert_eq!(drained.json()["target"], advertised);
}

// ---------------------------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------------------------

/// A CA; a hub certificate for localhost; client certificates for clientAuth and, wrongly,
/// serverAuth only. PEM, as files in `dir` too.
struct Pki {
    ca: String,
    client: (String, String),
    server_only: (String, String),
}

impl Pki {
    fn new(dir: &Path) -> Self {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = TestCa::new();
        let hub = ca.leaf(&["localhost"], ServerAuth);
        let client = ca.leaf(&["app-server"], ClientAuth);
        let server_only = ca.leaf(&["app-server"], ServerAuth);
        for (name, text) in [("ca.pem", ca.pem()), ("hub.pem", hub.0), ("hub.key", hub.1)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        Self { ca: ca.pem(), client, server_only }
    }

    fn tls(&self, (cert, key): &(String, String)) -> ClientTls {
        let client = Some((cert.as_bytes(), key.as_bytes()));
        ClientTls::from_pem(self.ca.as_bytes(), "localhost", client).unwrap()
    }
}

#[test]
fn a_client_certificate_without_extensions_is_refused_naming_the_client_certificate() {
    // Made as many guides make one: `openssl x509 -req` with no extension file, which gives an
    // X.509 version 1 certificate.
    let cert = include_str!("fixtures/v1-client.pem");
    let key = include_str!("fixtures/v1-client.key");
    let ca = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem();
    let err =
        ClientTls::from_pem(ca.as_bytes(), "localhost", Some((cert.as_bytes(), key.as_bytes())))
            .unwrap_err()
            .to_string();
    assert!(err.contains("client certificate"), "{err}");
    assert!(err.contains("version 1") && err.contains("clientAuth"), "{err}");
    assert!(!err.contains("peer"), "{err}");

    // The same file as the hub's certificate is refused naming the hub certificate.
    let hub_err =
        ServerTls::from_pem(cert.as_bytes(), key.as_bytes(), None).unwrap_err().to_string();
    assert!(hub_err.contains("hub certificate") && hub_err.contains("version 1"), "{hub_err}");
}

#[tokio::test]
async fn the_hub_says_why_a_client_certificate_is_refused_and_how_a_server_was_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (cert, key, ca) = (file("hub.pem"), file("hub.key"), file("ca.pem"));
    let args = [
        "--transfer",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ];
    let mut hub = Proc::start("acms", &program("acms"), &args);
    let line = hub
        .stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;
    let transfer = field_addr(&line, "transfer");

    // A certificate for servers only: refused, and the hub's log says what it lacks.
    let refused = LinkState::Refused(ErrorCode::Unauthorized);
    let _wrong =
        TestServer::start_with(builder(1, transfer).tls(pki.tls(&pki.server_only)), refused).await;
    let said =
        hub.stderr.wait_for("the refusal", |line| line.contains("TLS handshake failed")).await;
    assert!(said.contains("client certificate was refused"), "{said}");
    assert!(said.contains("clientAuth"), "{said}");
    assert!(!said.contains("peer certificate"), "{said}");

    // A right one, from loopback: the log says the certificate let it in.
    let _right = TestServer::start_with(
        builder(2, transfer).tls(pki.tls(&pki.client)),
        LinkState::Connected,
    )
    .await;
    let registered = hub
        .stderr
        .wait_for("the registration", |line| line.contains("app server registered"))
        .await;
    assert!(registered.contains("admitted=certificate"), "{registered}");
}

/// The library runs the hub as the binary does: both ports bound (read back from port 0), the
/// admin API guarded by a generated token kept in its per-run file, and on shutdown both stop
/// and the file is removed.
#[tokio::test]
async fn the_daemon_serves_both_ports_and_removes_its_per_run_token_file() {
    let mut config = acms::Config::default();
    config.transfer.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.addr = "127.0.0.1:0".parse().unwrap();
    let daemon = acms::Daemon::bind(config, None).await.expect("bind the daemon");
    let transfer = daemon.transfer_addr().unwrap();
    let admin = daemon.admin_addr().unwrap();
    let token = daemon.admin_token().expose().to_owned();
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let file = dir.join(format!("acms-admin-{}.token", admin.port()));
    let kept = std::fs::read_to_string(&file).expect("the per-run token file");
    assert_eq!(kept.trim(), token, "the file holds the daemon's token");
    assert_eq!(mode(&file), 0o600, "only this user may read the token file");

    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(daemon.run(shutdown.clone()));
    let _server = TestServer::start(4, transfer).await;
    let servers = request(admin, "GET", "/api/servers", &[], None).await.json();
    assert_eq!(servers[0]["id"].as_u64(), Some(4), "{servers}");
    let refused = request(admin, "POST", "/api/servers/7/drain", &[], None).await;
    assert_eq!(refused.status, 401, "{refused:?}");
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let unknown = request(admin, "POST", "/api/servers/7/drain", &auth, None).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");

    shutdown.cancel();
    let stopped = tokio::time::timeout(PATIENCE, run).await.expect("the daemon stops in time");
    stopped.expect("daemon task").expect("daemon run");
    assert!(!file.exists(), "the per-run token file is removed at stop");
    assert!(TcpStream::connect(admin).await.is_err(), "the admin API stopped");
}

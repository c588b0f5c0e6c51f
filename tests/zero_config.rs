//! A cluster with no addresses configured, on a LAN of network namespaces (tests/netns.rs): the
//! hubs in namespace `a` announce themselves, the `im-server`s in `b` are told `--acms auto`,
//! two hubs told `--peers auto` find each other for hot standby. Discovery is only a hint: a
//! found hub still authenticates, and announcements of another cluster, or malformed ones, are
//! ignored. Every program is a real process; every wait is on a log line or the admin API.

use std::net::SocketAddr;
use std::time::Duration;

use acms_tests::http::{Reply, request_on};
use acms_tests::netns::{Lan, Side};
use acms_tests::process::{PATIENCE, Proc, field_addr, hub_listeners, program};

const SECRET: &str = "zero-config-test-secret-0123456789";

/// What tells an `im-server` to find its hubs on the LAN.
const AUTO: [&str; 2] = ["--acms", "auto"];

/// An `acms` in namespace `a` with its transfer and admin addresses (the admin API is on that
/// namespace's loopback, reached with [`Lan::connect`]).
struct TestHub {
    proc: Proc,
    transfer: SocketAddr,
    admin: SocketAddr,
}

/// Starts `acms` in `a` on a port of `10.203.0.1` with `extra` flags and `secret`, and waits
/// until both its listeners are up.
async fn start_hub(lan: &Lan, name: &str, extra: &[&str], secret: &str) -> TestHub {
    let mut args = vec!["--transfer", "10.203.0.1:0", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut proc = lan.start(Side::A, name, &program("acms"), &args, Some(secret));
    let (transfer, admin) = hub_listeners(&mut proc).await;
    TestHub { proc, transfer, admin }
}

impl TestHub {
    /// `GET path` on the hub's admin API, from inside its namespace.
    async fn get(&self, lan: &Lan, path: &str) -> serde_json::Value {
        let stream = lan.connect(Side::A, self.admin).expect("reach the admin API");
        let reply: Reply = request_on(stream, self.admin, "GET", path, &[], None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.json()
    }

    /// The ids of the app servers registered and connected now (not away).
    async fn server_ids(&self, lan: &Lan) -> Vec<u64> {
        let servers = self.get(lan, "/api/servers").await;
        let mut ids: Vec<u64> = servers
            .as_array()
            .expect("a list")
            .iter()
            .filter(|server| server["state"] != "away")
            .map(|server| server["id"].as_u64().expect("an id"))
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// Polls `check` every 50 ms until it gives a value, for state that has no line of its own (the
/// hubs' roles and registries); fails after [`PATIENCE`] with what `check` last said.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(tokio::time::Instant::now() < deadline, "{what} within {PATIENCE:?}: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `im-server` in namespace `b` with id `id`, `extra` flags (`--acms auto`, unless its
/// config file says so) and `secret`; returns it with the address its clients connect to.
async fn start_im_server(lan: &Lan, id: u32, extra: &[&str], secret: &str) -> (Proc, String) {
    let id = id.to_string();
    let mut args = vec!["--id", &id, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let name = format!("im-server {id}");
    let mut server = lan.start(Side::B, &name, &program("examples/im-server"), &args, Some(secret));
    let started = server
        .stderr
        .wait_for("`im-server started`", |line| line.contains("im-server started"))
        .await;
    (server, field_addr(&started, "listen").to_string())
}

/// Waits until `server` says it connected to a hub; that hub's address.
async fn connected_hub(server: &mut Proc) -> SocketAddr {
    let line = server
        .stderr
        .wait_for("`connected to hub`", |line| line.contains("connected to hub"))
        .await;
    field_addr(&line, "hub")
}

/// `im-client` for `user` in namespace `b`, logged in on the server at `listen` (id `id`).
async fn client(lan: &Lan, user: &str, listen: &str, id: u32) -> Proc {
    let args = ["--server", listen, "--user", user];
    let mut client = lan.start(Side::B, user, &program("im-client"), &args, None);
    let expected = format!("logged in as {user} on server {id} (");
    client.stderr.wait_for("the login", |line| line.starts_with(&expected)).await;
    client
}

/// alice on server 0 and bob on server 1 talk both ways, through the hub.
async fn chat(lan: &Lan, listen: &[String]) {
    let mut alice = client(lan, "alice", &listen[0], 0).await;
    let mut bob = client(lan, "bob", &listen[1], 1).await;
    alice.say("@bob hello bob").await;
    assert_eq!(bob.stdout.next("alice's message").await, "alice: hello bob");
    bob.say("@alice hi alice").await;
    assert_eq!(alice.stdout.next("bob's answer").await, "bob: hi alice");
}

#[tokio::test]
async fn im_servers_told_auto_find_the_hub_and_their_clients_chat() {
    let Some(lan) = Lan::create("im_servers_told_auto_find_the_hub_and_their_clients_chat") else {
        return;
    };
    // A cluster of another name than the default: server 0 is told it by flag, server 1 by its
    // config file (the shipped one, with `acms` and `cluster_name` changed).
    let hub = start_hub(&lan, "hub", &["--cluster-name", "lan-test"], SECRET).await;
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/im-server.toml"))
            .expect("config/im-server.toml");
    let file = shipped
        .replace("\nacms = \"127.0.0.1:12000\"\n", "\nacms = \"auto\"\n")
        .replace("\ncluster_name = \"acms\"\n", "\ncluster_name = \"lan-test\"\n");
    assert_ne!(file, shipped);
    let config = tempfile::NamedTempFile::new().expect("a config file");
    std::fs::write(config.path(), file).expect("write the config file");
    let config = config.path().to_str().expect("a UTF-8 path");
    let ways: [&[&str]; 2] =
        [&["--acms", "auto", "--cluster-name", "lan-test"], &["--config", config]];
    let mut listen = Vec::new();
    let mut servers = Vec::new();
    for (id, extra) in (0..2).zip(ways) {
        let (mut server, addr) = start_im_server(&lan, id, extra, SECRET).await;
        assert_eq!(connected_hub(&mut server).await, hub.transfer, "im-server {id}");
        listen.push(addr);
        servers.push(server);
    }
    assert_eq!(hub.server_ids(&lan).await, [0, 1]);
    chat(&lan, &listen).await;
}

#[tokio::test]
async fn a_found_hub_with_another_secret_is_refused_and_reported() {
    let Some(lan) = Lan::create("a_found_hub_with_another_secret_is_refused_and_reported") else {
        return;
    };
    let hub = start_hub(&lan, "hub", &[], "the-hubs-secret-is-not-the-servers").await;
    let (mut server, _) = start_im_server(&lan, 0, &AUTO, SECRET).await;
    let line = server
        .stderr
        .wait_for("the refusal", |line| line.contains("hub refused this server"))
        .await;
    assert!(line.contains(&hub.transfer.to_string()), "{line}");
    assert!(line.contains("could not prove the shared secret"), "{line}");
    let said = server.stderr.so_far().join("\n");
    assert!(!said.contains("connected to hub"), "{said}");
    assert!(hub.server_ids(&lan).await.is_empty());
}

#[tokio::test]
async fn another_clusters_hub_and_malformed_announcements_are_ignored() {
    let Some(lan) = Lan::create("another_clusters_hub_and_malformed_announcements_are_ignored")
    else {
        return;
    };
    // A hub of another cluster with the same secret: a server that took it for one of its own
    // would be let in, so only discovery keeps them apart.
    let other = start_hub(&lan, "other hub", &["--cluster-name", "other"], SECRET).await;
    // Malformed announcements, pointing at that hub's port.
    let port = other.transfer.port().to_string();
    let version = format!("version={}", acms_protocol::PROTOCOL_VERSION);
    let long_name = format!("cluster={}", "x".repeat(200));
    let malformed: [(&str, &str, [&str; 3]); 4] = [
        ("bad-role", &port, ["cluster=acms", "role=boss", &version]),
        ("bad-version", &port, ["cluster=acms", "role=active", "version=x"]),
        ("long-cluster", &port, [&long_name, "role=active", &version]),
        ("port-zero", "0", ["cluster=acms", "role=active", &version]),
    ];
    let mut announcers = Vec::new();
    for (instance, port, properties) in &malformed {
        let mut args = vec![*instance, "10.203.0.1", port];
        args.extend_from_slice(properties);
        let program = program("acms-test-announce");
        let mut announcer = lan.start(Side::A, instance, &program, &args, None);
        announcer.stdout.wait_for("the announcement", |line| line.starts_with("announced")).await;
        announcers.push(announcer);
    }

    let (mut server, listen) = start_im_server(&lan, 0, &AUTO, SECRET).await;
    // Each malformed announcement is seen, logged and ignored, in whatever order they come...
    let mut unseen: Vec<&str> = malformed.iter().map(|(instance, _, _)| *instance).collect();
    while !unseen.is_empty() {
        let line = server
            .stderr
            .wait_for("the malformed announcements' warnings", |line| {
                line.contains("malformed hub announcement")
            })
            .await;
        assert!(line.contains("WARN"), "{line}");
        unseen.retain(|instance| !line.contains(&format!("\"{instance}.")));
    }
    // ...and, like the other cluster's hub, never tried: the server is still waiting.
    let said = server.stderr.so_far().join("\n");
    assert!(!said.contains(&other.transfer.to_string()), "{said}");
    assert!(!said.contains("connected to hub"), "{said}");

    // The cluster's own hub comes, looking for peers too: it takes neither the other cluster's
    // active hub nor the malformed announcements for one (it would stay standby behind an
    // active peer), becomes active alone, and the server joins it.
    let mut hub = start_hub(&lan, "hub", &["--peers", "auto"], SECRET).await;
    hub.proc.stderr.wait_for("`now active`", |line| line.contains("this hub is now active")).await;
    let view = hub.get(&lan, "/api/hub").await;
    assert_eq!(view["peers"], serde_json::json!([]), "{view}");
    assert_eq!(connected_hub(&mut server).await, hub.transfer);
    assert_eq!(hub.server_ids(&lan).await, [0]);
    assert!(other.server_ids(&lan).await.is_empty());
    let said = server.stderr.so_far().join("\n");
    assert!(!said.contains(&other.transfer.to_string()), "{said}");
    let mut alice = client(&lan, "alice", &listen, 0).await;
    alice.say("@alice note to self").await;
    assert_eq!(alice.stdout.next("her own message").await, "alice: note to self");
}

/// What `/api/hub` says of a hub: its role and its registered servers.
async fn role_and_servers(lan: &Lan, hub: &TestHub) -> (String, u64) {
    let view = hub.get(lan, "/api/hub").await;
    let role = view["role"].as_str().expect("a role").to_owned();
    (role, view["servers"].as_u64().expect("a count"))
}

#[tokio::test]
async fn two_hubs_told_auto_converge_and_fail_over_when_the_active_one_is_killed() {
    let Some(lan) =
        Lan::create("two_hubs_told_auto_converge_and_fail_over_when_the_active_one_is_killed")
    else {
        return;
    };
    // Both hubs and both servers start together: the hubs find each other (or not yet) while
    // the servers find them; whatever the order, they must end on one active hub.
    let auto = ["--peers", "auto"];
    let (first, second) = tokio::join!(
        start_hub(&lan, "hub 1", &auto, SECRET),
        start_hub(&lan, "hub 2", &auto, SECRET)
    );
    let mut hubs = [first, second];
    let mut servers = Vec::new();
    let mut listen = Vec::new();
    for id in 0..2 {
        let (server, addr) = start_im_server(&lan, id, &AUTO, SECRET).await;
        servers.push(server);
        listen.push(addr);
    }
    let active = until("one active hub with both servers, and one standby with none", || async {
        let views =
            [role_and_servers(&lan, &hubs[0]).await, role_and_servers(&lan, &hubs[1]).await];
        match &views {
            [(a, 2), (b, 0)] if a == "active" && b == "standby" => Ok(0),
            [(a, 0), (b, 2)] if a == "standby" && b == "active" => Ok(1),
            _ => Err(format!("(role, servers) of the two hubs: {views:?}")),
        }
    })
    .await;
    let standby = 1 - active;
    assert_eq!(hubs[active].server_ids(&lan).await, [0, 1]);
    // The standby found its peer on the LAN and names it as the active hub.
    let view = hubs[standby].get(&lan, "/api/hub").await;
    assert_eq!(view["active_hub"], hubs[active].transfer.to_string(), "{view}");

    // The active hub crashes: the standby takes over and both servers move to it.
    let moved_to = hubs[standby].transfer;
    hubs[active].proc.kill().await;
    hubs[standby]
        .proc
        .stderr
        .wait_for("`now active`", |line| line.contains("this hub is now active"))
        .await;
    for server in &mut servers {
        server
            .stderr
            .wait_for("the move to the standby", |line| {
                line.contains("connected to hub") && field_addr(line, "hub") == moved_to
            })
            .await;
    }
    let survivor = &hubs[standby];
    until("both servers on the hub that took over", || async {
        match survivor.server_ids(&lan).await {
            ids if ids == [0, 1] => Ok(()),
            ids => Err(format!("servers registered: {ids:?}")),
        }
    })
    .await;
    chat(&lan, &listen).await;
}

//! The hub's announcement on a LAN, seen from another machine: real `acms` processes in one
//! network namespace, the `acms-discover` example browsing from another (tests/netns.rs), with
//! multicast DNS crossing the veth link between them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use acms_tests::netns::{Lan, Side};
use acms_tests::process::{ADMIN_TOKEN, PATIENCE, Proc, field_addr, program};

/// Starts `acms` in namespace `a` on `transfer`, with `extra` flags and `secret`.
fn spawn_hub(lan: &Lan, name: &str, transfer: &str, extra: &[&str], secret: Option<&str>) -> Proc {
    let acms = program("acms");
    let mut args = vec!["--transfer", transfer, "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let command = lan.command(Side::A, &acms, &args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let env = [("ACMS_ADMIN_TOKEN", Some(ADMIN_TOKEN)), ("ACMS_SECRET", secret)];
    Proc::start_env(name, Path::new("ip"), &command, &env)
}

/// [`spawn_hub`], and waits until it serves; returns it with its transfer address.
async fn start_hub(
    lan: &Lan,
    name: &str,
    transfer: &str,
    extra: &[&str],
    secret: Option<&str>,
) -> (Proc, SocketAddr) {
    let mut hub = spawn_hub(lan, name, transfer, extra, secret);
    let line = hub
        .stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;
    (hub, field_addr(&line, "transfer"))
}

/// Starts `acms-discover CLUSTER` in namespace `b` and waits until it browses.
async fn start_browser(lan: &Lan, cluster: &str) -> Proc {
    let discover = program("examples/acms-discover");
    let command = lan.command(Side::B, &discover, &[cluster]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut browser = Proc::start(&format!("browser {cluster}"), Path::new("ip"), &command);
    browser.stdout.wait_for("`browsing`", |line| line.starts_with("browsing")).await;
    browser
}

/// One line of `acms-discover`: what changed, the instance, and its `key=value` fields.
struct Seen {
    change: String,
    instance: String,
    addr: SocketAddr,
    fields: BTreeMap<String, String>,
}

fn parse(line: &str) -> Seen {
    let mut words = line.split_whitespace();
    let (Some(change), Some(instance), Some(addr)) = (words.next(), words.next(), words.next())
    else {
        panic!("not a change line: {line:?}");
    };
    let fields = words
        .filter_map(|word| word.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    Seen {
        change: change.to_owned(),
        instance: instance.to_owned(),
        addr: addr.parse().unwrap_or_else(|_| panic!("no address in {line:?}")),
        fields,
    }
}

#[tokio::test]
async fn a_hub_is_found_with_its_cluster_role_and_port_and_leaves_on_sigterm() {
    let Some(lan) = Lan::create("a_hub_is_found_with_its_cluster_role_and_port") else { return };
    let mut browser = start_browser(&lan, "acms").await;
    let (mut hub, transfer) = start_hub(&lan, "hub", "10.203.0.1:0", &[], None).await;
    assert_eq!(transfer.ip(), Lan::addr(Side::A));

    let line = browser
        .stdout
        .wait_for("the hub found", |line| {
            line.starts_with("added") && line.contains(&transfer.to_string())
        })
        .await;
    let found = parse(&line);
    assert_eq!(found.addr, transfer, "{line}");
    assert_eq!(found.fields["cluster"], "acms", "{line}");
    assert_eq!(found.fields["role"], "active", "{line}");
    assert_eq!(found.fields["version"], acms_protocol::PROTOCOL_VERSION.to_string(), "{line}");

    // A graceful stop withdraws the announcement (a goodbye), so the browser drops the hub at
    // once rather than when its records expire.
    hub.terminate().await;
    let line = browser.stdout.wait_for("the hub removed", |line| line.starts_with("removed")).await;
    assert_eq!(parse(&line).instance, found.instance, "{line}");
    let log = hub.exits_cleanly().await;
    assert!(log.iter().any(|line| line.contains("announcement withdrawn")), "{}", log.join("\n"));
}

#[tokio::test]
async fn other_clusters_and_unannounced_hubs_are_not_found() {
    let Some(lan) = Lan::create("other_clusters_and_unannounced_hubs_are_not_found") else {
        return;
    };
    let mut ours = start_browser(&lan, "acms").await;
    let mut theirs = start_browser(&lan, "other").await;
    let (_other, other_addr) =
        start_hub(&lan, "other hub", "10.203.0.1:0", &["--cluster-name", "other"], None).await;
    let mut silent = spawn_hub(&lan, "silent hub", "10.203.0.1:0", &["--no-announce"], None);
    silent
        .stderr
        .wait_for("`not announced`", |line| line.contains("not announced on the LAN"))
        .await;
    silent
        .stderr
        .wait_for("`accepting app servers`", |line| line.contains("accepting app servers"))
        .await;

    // Multicast crosses the link: the browser of the other cluster finds its hub...
    let line =
        theirs.stdout.wait_for("the other cluster's hub", |line| line.starts_with("added")).await;
    assert_eq!(parse(&line).addr, other_addr, "{line}");
    assert_eq!(parse(&line).fields["cluster"], "other", "{line}");
    // ...while ours finds nothing: neither the other cluster's hub nor the unannounced one. An
    // absence can only be waited for: 3 s is several times the announcement's round trip on a
    // veth link (the other browser above needed far less), short enough to keep the test quick.
    let window = Duration::from_secs(3);
    let quiet = tokio::time::timeout(window, async {
        while let Some(line) = ours.stdout.recv().await {
            if !line.starts_with("browsing") {
                return line;
            }
        }
        String::from("the browser exited")
    })
    .await;
    if let Ok(line) = quiet {
        panic!("the acms browser saw {line:?}");
    }
}

#[tokio::test]
async fn a_standby_that_takes_over_is_announced_active() {
    let Some(lan) = Lan::create("a_standby_that_takes_over_is_announced_active") else { return };
    // Two hubs of one cluster, peers of each other: their status links authenticate with the
    // shared secret, as they come from the link address and not loopback.
    let secret = Some("discovery-test-secret-0123456789");
    let (first, second) = ("10.203.0.1:12001", "10.203.0.1:12002");
    let peers = format!("{first},{second}");
    let mut browser = start_browser(&lan, "acms").await;
    let (hub1, addr1) = start_hub(&lan, "hub 1", first, &["--peers", &peers], secret).await;
    let (hub2, addr2) = start_hub(&lan, "hub 2", second, &["--peers", &peers], secret).await;

    // Each hub is announced standby at first and re-announced when the pair has decided: wait
    // until the browser's view is one active hub and one standby.
    let mut roles: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !(roles.len() == 2 && roles.values().filter(|role| *role == "active").count() == 1) {
        let line = tokio::time::timeout_at(deadline, browser.stdout.recv())
            .await
            .unwrap_or_else(|_| panic!("no decided pair within {PATIENCE:?}: {roles:?}"))
            .expect("the browser runs");
        if line.starts_with("browsing") {
            continue;
        }
        let seen = parse(&line);
        assert!([addr1, addr2].contains(&seen.addr), "{line}");
        match seen.change.as_str() {
            "removed" => roles.remove(&seen.addr),
            _ => roles.insert(seen.addr, seen.fields["role"].clone()),
        };
    }
    let (active, mut standby, standby_addr) =
        if roles[&addr1] == "active" { (hub1, hub2, addr2) } else { (hub2, hub1, addr1) };

    // The active hub stops: it leaves the browser's view, and the standby, once it counts the
    // peer unreachable, takes over and is announced active.
    active.terminate().await;
    let mut removed = false;
    let mut took_over = false;
    while !(removed && took_over) {
        let line =
            browser.stdout.wait_for("the take-over", |line| !line.starts_with("browsing")).await;
        let seen = parse(&line);
        removed |= seen.change == "removed" && seen.addr != standby_addr;
        took_over |= seen.change == "updated"
            && seen.addr == standby_addr
            && seen.fields["role"] == "active";
    }
    standby.stderr.wait_for("`now active`", |line| line.contains("this hub is now active")).await;
    drop(active);
}

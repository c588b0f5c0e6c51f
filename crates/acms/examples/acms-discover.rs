//! Prints the hubs of a cluster found on the LAN as they come, change and go, one line each:
//!
//! ```text
//! cargo run -p acms --example acms-discover -- [CLUSTER_NAME]   # default: acms
//! added prod-12000-1a2b3c4d._acms._tcp.local. 192.168.1.20:12000 cluster=prod role=active version=3
//! ```
//!
//! What `acms_common::discovery::Browser` sees, for checking a LAN by hand and for the
//! discovery tests, which run it in a network namespace of their own.

use std::time::Duration;

use acms_common::discovery::{Browser, Change, ClusterName, Hub};
use acms_common::logging;

fn main() -> anyhow::Result<()> {
    logging::init(false);
    let cluster = match std::env::args().nth(1) {
        Some(name) => ClusterName::new(name)?,
        None => ClusterName::default(),
    };
    let mut browser = Browser::new(cluster.clone())?;
    println!("browsing cluster={cluster}");
    loop {
        let Some(change) = browser.next_change(Duration::from_secs(60))? else { continue };
        let (what, hub) = match &change {
            Change::Added(hub) => ("added", hub),
            Change::Updated(hub) => ("updated", hub),
            Change::Removed(hub) => ("removed", hub),
        };
        println!("{what} {}", describe(hub));
    }
}

fn describe(hub: &Hub) -> String {
    format!(
        "{} {} cluster={} role={} version={}",
        hub.instance,
        hub.addr,
        hub.cluster,
        hub.role.as_str(),
        hub.version
    )
}

//! The hub's metrics in the Prometheus text format, for `GET /metrics`.
//!
//! The relay keeps its own relaxed atomic counters ([`crate::stats`]); a scrape reads them into a
//! fresh `prometheus-client` registry, so the hot path pays nothing for the exporter. The one
//! metric measured for it is the relay latency histogram: the time the hub takes to route the
//! frames of one socket read and queue them for their servers, sampled on one read in
//! `SAMPLE_EVERY`, so that most reads pay no clock read and no lock.
//!
//! Every metric counts this hub alone (on a backplane too), except `acms_cluster_*` and
//! `acms_backplane_hub_*`, shown only on a backplane, which count every hub of the cluster.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hub::Hub;

type Labels = Vec<(&'static str, String)>;

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: usize) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// The hub's metrics now, in the Prometheus text exposition format.
pub fn render(hub: &Hub) -> String {
    let stats = hub.stats();
    let registry_now = hub.registry();
    let mut registry = Registry::with_prefix("acms");

    let servers = registry_now.servers();
    let connected = servers.iter().filter(|info| registry_now.is_connected(info.id)).count();
    registry.register("servers", "App servers connected to this hub now", gauge(connected));
    registry.register(
        "servers_registered",
        "App servers registered, including those away within their reconnect grace",
        gauge(servers.len()),
    );
    registry.register(
        "hub_active",
        "1 while this hub is the active one of its cluster and accepts app servers, 0 while standby",
        gauge(usize::from(hub.standby().is_active())),
    );
    registry.register(
        "users_online",
        "Users online on this hub's app servers: the whole cluster but on a backplane, where \
         acms_cluster_users counts every hub's",
        gauge(registry_now.user_count()),
    );
    registry.register(
        "groups",
        "Groups with members on some app server",
        gauge(hub.groups().len()),
    );

    let frames = Family::<Labels, Counter>::default();
    let frame_counts = [
        ("unicast", stats.relayed_frames),
        ("group", stats.group_copies_out),
        ("broadcast", stats.broadcast_copies_out),
        ("server", stats.server_copies_out),
    ];
    for (kind, value) in frame_counts {
        frames.get_or_create(&vec![("kind", kind.to_owned())]).inc_by(value);
    }
    registry.register(
        "relayed_frames",
        "Data frames forwarded to app servers, by kind (a group, broadcast or server frame counts once per copy)",
        frames,
    );
    let frames_in = Family::<Labels, Counter>::default();
    let in_counts = [
        ("group", stats.group_frames_in),
        ("broadcast", stats.broadcast_frames_in),
        ("server", stats.server_frames_in),
    ];
    for (kind, value) in in_counts {
        frames_in.get_or_create(&vec![("kind", kind.to_owned())]).inc_by(value);
    }
    registry.register(
        "fan_out_frames_in",
        "Group, broadcast and server frames received from app servers, by kind",
        frames_in,
    );
    registry.register(
        "relayed_bytes",
        "Bytes of data and ack frames forwarded to app servers, length prefixes included",
        counter(stats.relayed_bytes),
    );
    registry.register(
        "undeliverable",
        "Frames returned to their origin because the recipient was online nowhere",
        counter(stats.undeliverable),
    );
    registry.register(
        "held",
        "Frames dropped for their origin to send again (recipient's server away, directory filling)",
        counter(stats.held),
    );
    registry.register(
        "slow_consumer_disconnects",
        "App servers disconnected by the slow-consumer rule",
        counter(stats.slow_consumers),
    );
    registry.register(
        "protocol_errors",
        "Connections closed for breaking the protocol",
        counter(stats.protocol_errors),
    );
    registry.register(
        "refused_connections",
        "Connections refused at the handshake or by the connection cap",
        counter(stats.refused_connections),
    );
    registry.register("resyncs", "User-set resyncs asked of app servers", counter(stats.resyncs));

    let depth = Family::<Labels, Gauge>::default();
    for info in &servers {
        let pending = hub.queue_depth(info.id).unwrap_or(0);
        depth
            .get_or_create(&vec![("server", info.id.to_string())])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
    registry.register(
        "queue_bytes",
        "Bytes waiting in each connected app server's outbound queue",
        depth,
    );
    registry.register(
        "pushes_waiting",
        "Pushes from the admin API waiting for their acknowledgement",
        gauge(hub.pushes_waiting()),
    );
    registry.register(
        "relay_latency_seconds",
        "Time to route the frames of one socket read and queue them for their servers \
         (sampled: one read in 64)",
        hub.relay_metrics().latency().clone(),
    );

    if let Some(backplane) = hub.backplane_stats() {
        registry.register(
            "backplane_connected",
            "Whether this hub is connected to its NATS backplane now (1) or not (0)",
            gauge(usize::from(backplane.connected)),
        );
        registry.register(
            "backplane_hubs_alive",
            "Other hubs heard from on the NATS backplane within the deadline",
            gauge(backplane.hubs_alive),
        );
        registry.register(
            "backplane_group_interest",
            "Pairs of a group and a hub with members of it (this hub's included): group frames \
             cross only to those hubs",
            gauge(backplane.group_interest),
        );
        let messages = Family::<Labels, Counter>::default();
        let counts = [
            ("published", backplane.published),
            ("received", backplane.received),
            ("dropped", backplane.dropped),
        ];
        for (what, value) in counts {
            messages.get_or_create(&vec![("what", what.to_owned())]).inc_by(value);
        }
        registry.register(
            "backplane_messages",
            "Messages to and from other hubs on the backplane: published, received, and dropped because the queue to NATS was full",
            messages,
        );
        registry.register(
            "backplane_gaps",
            "Gaps seen in the messages from other hubs, each repaired by having the origins send again",
            counter(backplane.gaps),
        );
        let repairs = Family::<Labels, Counter>::default();
        for (what, value) in backplane.repairs {
            repairs.get_or_create(&vec![("what", what.to_owned())]).inc_by(value);
        }
        registry.register(
            "backplane_repairs",
            "Drift between the shared directory and this hub repaired by its reconciliation: \
             servers registered again, users put back (user_online) or taken out (user_offline), \
             group entries written again",
            repairs,
        );
        registry.register(
            "backplane_pauses",
            "Readers paused before reading again: their frames shut the credit window of a \
             server of another hub (pushback across hubs), or filled the queue to NATS",
            counter(backplane.pauses),
        );
        registry.register(
            "backplane_windows_shut",
            "Credit windows to servers of other hubs shut now: their senders here wait for credit",
            gauge(backplane.windows_shut),
        );
        cluster_wide(hub, &mut registry, connected, servers.len(), registry_now.user_count());
    }

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

/// On a backplane, the figures of the whole cluster, every hub's servers and users as this hub's
/// replica of the shared directory has them (the same as `GET /api/summary`), beside the
/// hub-local ones: this hub has `connected` of its `registered` servers connected, and `users`.
fn cluster_wide(
    hub: &Hub,
    registry: &mut Registry,
    connected: usize,
    registered: usize,
    users: usize,
) {
    let Some(beyond) = crate::dashboard_cluster::beyond(hub, registered as u64, users as u64)
    else {
        return;
    };
    let clamp = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
    registry.register(
        "cluster_servers",
        "App servers connected in the whole cluster: this hub's, and those of the live hubs",
        gauge(connected.saturating_add(clamp(beyond.connected))),
    );
    registry.register(
        "cluster_users",
        "Users online in the whole cluster, on every hub",
        gauge(users.saturating_add(clamp(beyond.users))),
    );
    let servers = Family::<Labels, Gauge>::default();
    let hub_users = Family::<Labels, Gauge>::default();
    for entry in &beyond.view.hubs {
        let labels = vec![("hub", entry.id.clone())];
        servers.get_or_create(&labels).set(i64::try_from(entry.servers).unwrap_or(i64::MAX));
        hub_users.get_or_create(&labels).set(i64::try_from(entry.users).unwrap_or(i64::MAX));
    }
    registry.register(
        "backplane_hub_servers",
        "App servers registered on each hub of the backplane (this one included), by hub id",
        servers,
    );
    registry.register(
        "backplane_hub_users",
        "Users online on the servers of each hub of the backplane (this one included), by hub id",
        hub_users,
    );
}

//! The hub's metrics in the Prometheus text format, for `GET /metrics`.
//!
//! The relay keeps its own relaxed atomic counters ([`crate::stats`]); a scrape reads them into a
//! fresh `prometheus-client` registry, so the hot path pays nothing for the exporter. The one
//! metric measured for it is the relay latency histogram: the time the hub takes to route the
//! frames of one socket read and queue them for their servers, sampled on one read in
//! `SAMPLE_EVERY`, so that most reads pay no clock read and no lock.

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
    registry.register("servers", "App servers connected now", gauge(connected));
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
        "Users online in the cluster",
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
    }

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

//! The whole cluster of a backplane in `GET /api/summary`: every hub, with its servers and
//! users as this hub's replica of the shared directory has them, and the backplane's health.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::hub::Hub;

/// One hub of the backplane.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubEntry {
    /// Its id on the backplane (16 hex digits).
    pub id: String,
    /// This hub.
    pub me: bool,
    /// Heard from within the deadline (always true of this hub).
    pub alive: bool,
    /// App servers registered on it.
    pub servers: u64,
    /// Users online on those servers.
    pub users: u64,
}

/// The backplane's health and every hub of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackplaneView {
    /// This hub's id.
    pub hub: String,
    /// Every hub with servers, and every live hub, this one first.
    pub hubs: Vec<HubEntry>,
    /// Whether this hub is connected to NATS now: while it is not, it serves its own servers
    /// and holds or returns what is for other hubs' servers.
    pub connected: bool,
    /// Other hubs heard from within the deadline.
    pub hubs_alive: u64,
    /// Messages published to other hubs.
    pub published: u64,
    /// Messages received from other hubs.
    pub received: u64,
    /// Messages dropped because the queue to NATS was full.
    pub dropped: u64,
    /// Gaps seen in the messages from other hubs, each repaired by sending again.
    pub gaps: u64,
}

/// The cluster beyond this hub: its servers, those connected, its users; and the view.
pub(crate) struct Beyond {
    pub(crate) servers: u64,
    pub(crate) connected: u64,
    pub(crate) users: u64,
    pub(crate) view: BackplaneView,
}

/// What the backplane adds to the summary of `hub`, which has `here` servers and `users` users;
/// `None` without a backplane.
pub(crate) fn beyond(hub: &Hub, here: u64, users: u64) -> Option<Beyond> {
    let backplane = hub.shared().backplane.as_ref()?;
    let stats = backplane.stats();
    let remote = hub.remote_servers();
    let mut hubs: BTreeMap<crate::HubId, HubEntry> = BTreeMap::new();
    let entry = |id: crate::HubId, alive: bool| HubEntry {
        id: id.to_string(),
        me: id == backplane.me,
        alive,
        servers: 0,
        users: 0,
    };
    for id in backplane.replica.alive_hubs() {
        hubs.insert(id, entry(id, true));
    }
    let (mut servers, mut connected, mut remote_users) = (0, 0, 0);
    for server in &remote {
        let listed = hubs.entry(server.hub).or_insert_with(|| entry(server.hub, server.hub_alive));
        listed.servers += 1;
        listed.users += server.users as u64;
        servers += 1;
        connected += u64::from(server.hub_alive);
        remote_users += server.users as u64;
    }
    let mut list = vec![HubEntry { servers: here, users, ..entry(backplane.me, true) }];
    list.extend(hubs.into_values().filter(|hub| !hub.me));
    Some(Beyond {
        servers,
        connected,
        users: remote_users,
        view: BackplaneView {
            hub: backplane.me.to_string(),
            hubs: list,
            connected: stats.connected,
            hubs_alive: stats.hubs_alive as u64,
            published: stats.published,
            received: stats.received,
            dropped: stats.dropped,
            gaps: stats.gaps,
        },
    })
}

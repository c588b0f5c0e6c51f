//! The live dashboard at `GET /`: one HTML page with its CSS and JS inline, compiled into the
//! binary so an operator needs nothing but the hub (no CDN, no files beside it). The page polls
//! `GET /api/servers` and `GET /api/summary` and keeps the last ten minutes for its charts.
//! `GET /api/hub` tells whether this hub is the active one of its cluster or a standby, and
//! which hub is active: a standby's cluster looks empty, and that is why. On a backplane the
//! summary counts every hub's servers and users and lists the hubs (`dashboard_cluster`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

pub use crate::dashboard_cluster::{BackplaneView, HubEntry};
use crate::hub::Hub;
use crate::standby::{Role, Seen};

/// The page: markup, styles and script in one file.
const PAGE: &str = include_str!("../assets/dashboard.html");

/// The dashboard's routes. They only read, so they need no token.
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/summary", get(summary))
        .route("/api/hub", get(hub_view))
        .with_state(hub)
}

async fn page() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        // The page is live data: a cached copy would show a stale script after an upgrade.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, PAGE).into_response()
}

/// Cluster totals at one moment. The counters only grow, so a client turns two samples into
/// rates.
#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    /// When this was taken, in seconds since the Unix epoch, to divide counter deltas by.
    pub time: f64,
    /// Whether this hub accepts app servers (`active`) or refuses them (`standby`): a standby's
    /// cluster is empty because the servers are on the active hub.
    pub role: HubRole,
    /// The active hub's address as listed in `peers` (this hub's own when it is active and
    /// listed); null while a standby is still deciding, or for a hub with no peers.
    pub active_hub: Option<String>,
    /// Registered app servers, connected or away within their grace.
    pub servers: u64,
    /// Of those, the ones connected now.
    pub connected: u64,
    /// Users online in the cluster, each counted once.
    pub users: u64,
    /// Data frames the hub has forwarded since it started.
    pub relayed_frames: u64,
    /// Bytes of those frames.
    pub relayed_bytes: u64,
    /// Frames returned to their origin because the recipient was offline or unreachable.
    pub undeliverable: u64,
    /// App servers disconnected for letting their queue grow too long.
    pub slow_consumers: u64,
    /// On a backplane: every hub and the backplane's health (then `servers`, `connected` and
    /// `users` count every hub's); null for a hub alone.
    pub backplane: Option<BackplaneView>,
}

/// Cluster totals and the hub's counters, for the dashboard and scripts.
#[utoipa::path(get, path = "/api/summary", tag = "read",
    responses((status = 200, description = "cluster totals and counters", body = Summary)))]
async fn summary(State(hub): State<Hub>) -> Json<Summary> {
    let registry = hub.registry();
    let servers = registry.servers();
    let connected = servers.iter().filter(|info| registry.is_connected(info.id)).count();
    let stats = hub.stats();
    let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |now| now.as_secs_f64());
    let (servers, connected, users) =
        (servers.len() as u64, connected as u64, registry.user_count() as u64);
    let beyond = crate::dashboard_cluster::beyond(&hub, servers, users);
    let (more_servers, more_connected, more_users) = beyond
        .as_ref()
        .map_or((0, 0, 0), |beyond| (beyond.servers, beyond.connected, beyond.users));
    Json(Summary {
        time,
        role: hub.standby().role().into(),
        active_hub: hub.standby().active_hub(),
        servers: servers + more_servers,
        connected: connected + more_connected,
        users: users + more_users,
        relayed_frames: stats.relayed_frames,
        relayed_bytes: stats.relayed_bytes,
        undeliverable: stats.undeliverable,
        slow_consumers: stats.slow_consumers,
        backplane: beyond.map(|beyond| beyond.view),
    })
}

/// Whether a hub accepts app servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HubRole {
    /// Accepts app servers.
    Active,
    /// Refuses them: another hub of the cluster is active (docs/FAILOVER.md).
    Standby,
}

impl From<Role> for HubRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Active => Self::Active,
            Role::Standby => Self::Standby,
        }
    }
}

/// What a hub knows of one of its configured peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Not asked yet (or not since this hub was paused).
    Unknown,
    /// Did not answer, or refused this hub.
    Unreachable,
    /// This hub's own address.
    Myself,
    /// Answered: it accepts app servers.
    Active,
    /// Answered: it refuses them.
    Standby,
}

/// One configured peer hub.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeerHubView {
    /// Its address, as configured in `peers`.
    pub addr: String,
    /// What this hub knows of it.
    pub state: PeerState,
    /// The live app servers it reported; null unless it answered.
    pub servers: Option<u32>,
}

/// This hub's place in its cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubView {
    /// Active or standby.
    pub role: HubRole,
    /// The active hub's address as listed in `peers` (see [`Summary::active_hub`]).
    pub active_hub: Option<String>,
    /// App servers connected to this hub now.
    pub servers: u64,
    /// This hub was paused (or starved) past `keepalive_timeout` and has not yet heard from
    /// every peer again; meanwhile it counts none of its servers.
    pub resuming: bool,
    /// Every peer hub: those configured, in the configured order, or those found on the LAN
    /// (`peers = "auto"`), in the order found; empty for a hub alone.
    pub peers: Vec<PeerHubView>,
}

/// Whether this hub is active or standby, which hub is active, and what it knows of its peers.
#[utoipa::path(get, path = "/api/hub", tag = "read",
    responses((status = 200, description = "this hub's role in its cluster", body = HubView)))]
async fn hub_view(State(hub): State<Hub>) -> Json<HubView> {
    let standby = hub.standby();
    let peers = standby
        .peers()
        .into_iter()
        .map(|(addr, seen)| {
            let (state, servers) = match seen {
                Seen::Unknown => (PeerState::Unknown, None),
                Seen::Unreachable => (PeerState::Unreachable, None),
                Seen::Myself => (PeerState::Myself, None),
                Seen::Reachable(view) if view.active => (PeerState::Active, Some(view.servers)),
                Seen::Reachable(view) => (PeerState::Standby, Some(view.servers)),
            };
            PeerHubView { addr, state, servers }
        })
        .collect();
    Json(HubView {
        role: standby.role().into(),
        active_hub: standby.active_hub(),
        servers: hub.registry().connected_count() as u64,
        resuming: standby.is_resuming(),
        peers,
    })
}

/// The dashboard's part of the OpenAPI document, merged into the admin API's.
#[derive(OpenApi)]
#[openapi(
    paths(summary, hub_view),
    components(schemas(
        Summary,
        HubRole,
        HubView,
        PeerHubView,
        PeerState,
        BackplaneView,
        HubEntry
    ))
)]
pub struct DashboardDoc;

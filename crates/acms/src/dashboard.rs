//! The live dashboard at `GET /`: one HTML page with its CSS and JS inline, compiled into the
//! binary so an operator needs nothing but the hub (no CDN, no files beside it). The page polls
//! `GET /api/servers` and `GET /api/summary` and keeps the last ten minutes for its charts.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::hub::Hub;

/// The page: markup, styles and script in one file.
const PAGE: &str = include_str!("../assets/dashboard.html");

/// The dashboard's routes. They only read, so they need no token.
pub fn router(hub: Hub) -> Router {
    Router::new().route("/", get(page)).route("/api/summary", get(summary)).with_state(hub)
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
    Json(Summary {
        time,
        servers: servers.len() as u64,
        connected: connected as u64,
        users: registry.user_count() as u64,
        relayed_frames: stats.relayed_frames,
        relayed_bytes: stats.relayed_bytes,
        undeliverable: stats.undeliverable,
        slow_consumers: stats.slow_consumers,
    })
}

/// The dashboard's part of the OpenAPI document, merged into the admin API's.
#[derive(OpenApi)]
#[openapi(paths(summary), components(schemas(Summary)))]
pub struct DashboardDoc;

//! The routes about app servers: the list, the assignment of a new client, and the drain of a
//! server for a rolling upgrade.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use acms_protocol::{Control, ServerId};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, ErrorBody};
use crate::assign::{Candidate, Policy};

/// Whether an app server is taking new clients.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Connected and taking clients.
    Active,
    /// Drained by an operator: taking no new clients while its users move away.
    Draining,
    /// Draining, and no users left: it can be stopped.
    Drained,
    /// Its connection broke; it stays registered, its users online, for its reconnect grace.
    Away,
    /// Connected to another hub of the backplane (`hub` names it); load figures, queue and
    /// connection details are that hub's to show.
    Remote,
    /// Registered on another hub of the backplane that is silent past its deadline: it is
    /// moving to another hub, or leaves the cluster after its reconnect grace.
    Moving,
}

/// One app server of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    /// The id it registered under.
    pub id: u32,
    /// Where its clients connect, as it advertised.
    pub client_addr: String,
    /// The address its hub connection comes from.
    pub peer_addr: String,
    /// Users the directory lists on it.
    pub users: u64,
    /// CPU use in percent of one core, from its load reports; null until it sends them.
    pub cpu_percent: Option<f64>,
    /// Resident memory in bytes, from its load reports; null until it sends them.
    pub memory_bytes: Option<u64>,
    /// Messages per second the hub delivered to it, from its load reports; null until it sends
    /// them.
    pub messages_in_per_second: Option<f64>,
    /// Messages per second it sent through the hub, from its load reports; null until it sends
    /// them.
    pub messages_out_per_second: Option<f64>,
    /// Most clients it declares it takes, from its load reports; null when it declares none.
    pub capacity: Option<u32>,
    /// Bytes waiting in its outbound queue at the hub; null while it is away.
    pub queue_bytes: Option<u64>,
    /// Active, draining, drained (draining with no users left), or away within its grace.
    pub state: ServerState,
    /// When it registered, in seconds since the Unix epoch; 0 for a server of another hub.
    pub connected_since: f64,
    /// On a backplane, the id of the hub it is connected to (16 hex digits); null otherwise.
    pub hub: Option<String>,
}

/// Every app server, by id: on a backplane, those of every hub.
#[utoipa::path(get, path = "/api/servers", tag = "read",
    responses((status = 200, description = "every registered app server", body = [ServerView])))]
pub(super) async fn list_servers(State(state): State<AppState>) -> Json<Vec<ServerView>> {
    let registry = state.hub.registry();
    let counts = registry.user_counts();
    let here = state.hub.backplane_id().map(|hub| hub.to_string());
    let servers = registry.servers().into_iter().map(|info| {
        let queue = state.hub.queue_depth(info.id);
        let users = counts.get(&info.id).copied().unwrap_or(0) as u64;
        ServerView {
            id: info.id.0,
            client_addr: info.client_addr,
            peer_addr: info.peer_addr.to_string(),
            users,
            cpu_percent: info.load.map(|load| f64::from(load.cpu_centipercent) / 100.0),
            memory_bytes: info.load.map(|load| load.memory_bytes),
            messages_in_per_second: info.load.map(|load| f64::from(load.msgs_in_per_s)),
            messages_out_per_second: info.load.map(|load| f64::from(load.msgs_out_per_s)),
            capacity: info.load.and_then(|load| load.capacity),
            queue_bytes: queue.map(|bytes| bytes as u64),
            state: server_state(queue.is_some(), info.draining, users),
            connected_since: info
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64()),
            hub: here.clone(),
        }
    });
    let remote = state.hub.remote_servers().into_iter().map(|server| ServerView {
        id: server.id.0,
        client_addr: server.client_addr,
        peer_addr: String::new(),
        users: server.users as u64,
        cpu_percent: None,
        memory_bytes: None,
        messages_in_per_second: None,
        messages_out_per_second: None,
        capacity: None,
        queue_bytes: None,
        state: if server.hub_alive { ServerState::Remote } else { ServerState::Moving },
        connected_since: 0.0,
        hub: Some(server.hub.to_string()),
    });
    let mut servers: Vec<ServerView> = servers.chain(remote).collect();
    servers.sort_by_key(|server| server.id);
    Json(servers)
}

/// A server's state: away wins, since an away server's users wait for it whatever else holds.
pub(super) fn server_state(connected: bool, draining: bool, users: u64) -> ServerState {
    match (connected, draining, users) {
        (false, _, _) => ServerState::Away,
        (true, false, _) => ServerState::Active,
        (true, true, 0) => ServerState::Drained,
        (true, true, _) => ServerState::Draining,
    }
}

/// `GET /api/assign` parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignQuery {
    /// What the client groups by (a team or group id; the user name will do): policy `affinity`
    /// needs it and sends every client with the same key to the same server. Up to 256 bytes.
    pub key: Option<String>,
}

/// The server a new client should use.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssignAnswer {
    /// Its id.
    pub server: u32,
    /// Where the client connects.
    pub client_addr: String,
}

/// Longest assignment key accepted.
const MAX_ASSIGN_KEY: usize = 256;

/// The server a new client should use, by the hub's assignment policy: never one that is away,
/// draining, or at its declared capacity.
#[utoipa::path(get, path = "/api/assign", tag = "read", params(AssignQuery),
    responses(
        (status = 200, description = "the chosen server", body = AssignAnswer),
        (status = 400, description = "bad key, or none where policy `affinity` needs one", body = ErrorBody),
        (status = 503, description = "no server can take a client", body = ErrorBody)))]
pub(super) async fn assign(
    State(state): State<AppState>,
    query: Result<Query<AssignQuery>, QueryRejection>,
) -> Result<Json<AssignAnswer>, ApiError> {
    let Query(query) = query?;
    let key = query.key.unwrap_or_default();
    if key.len() > MAX_ASSIGN_KEY {
        return Err(ApiError::bad_request(format!("key longer than {MAX_ASSIGN_KEY} bytes")));
    }
    let policy = state.settings.assign;
    if policy == Policy::Affinity && key.is_empty() {
        return Err(ApiError::bad_request("policy affinity needs a key"));
    }
    let chosen = choose_server(&state, &key).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no app server can take a client")
    })?;
    Ok(Json(AssignAnswer { server: chosen.id.0, client_addr: chosen.client_addr }))
}

/// The server the hub's policy picks for a client with `key`, if any can take one.
pub(super) fn choose_server(state: &AppState, key: &str) -> Option<crate::registry::ServerInfo> {
    let registry = state.hub.registry();
    let counts = registry.user_counts();
    let servers = registry.servers();
    let candidates: Vec<Candidate> = servers
        .iter()
        .map(|info| Candidate {
            id: info.id,
            users: counts.get(&info.id).copied().unwrap_or(0) as u64,
            load: info.load,
            active: state.hub.queue_depth(info.id).is_some() && !info.draining,
        })
        .collect();
    let turn = state.turn.fetch_add(1, Ordering::Relaxed);
    crate::assign::choose(state.settings.assign, &candidates, key, turn)
        .and_then(|id| servers.into_iter().find(|info| info.id == id))
}

/// The answer to a drain.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrainAnswer {
    /// The drained server.
    pub server: u32,
    /// Its state now: draining, or drained if it has no users.
    pub state: ServerState,
    /// Where its clients were told to reconnect; null when no other server can take them.
    pub target: Option<String>,
}

/// Drains an app server (a rolling upgrade): the hub assigns it no new clients, and tells it to
/// send its clients to the server assignment picks. `GET /api/servers` shows it `drained` once
/// it has no users left. Draining a draining server tells it again.
#[utoipa::path(post, path = "/api/servers/{id}/drain", tag = "write",
    params(("id" = u32, Path, description = "server id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the server was told to drain", body = DrainAnswer),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such server", body = ErrorBody),
        (status = 503, description = "the server is away; drain it once it is back", body = ErrorBody)))]
pub(super) async fn drain_server(
    State(state): State<AppState>,
    id: Result<Path<u32>, PathRejection>,
) -> ApiResult<DrainAnswer> {
    let Path(id) = id?;
    let server = ServerId(id);
    let shared = state.hub.shared();
    if !shared.registry.is_registered(server) {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no server {id}")));
    }
    let away = || ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("server {id} is away"));
    if shared.registry.outbox(server).is_none() {
        return Err(away());
    }
    shared.registry.drain(server);
    // Chosen after the mark, so the drained server is never its own target.
    let target = choose_server(&state, "").map(|info| info.client_addr);
    // A server whose queue is full is disconnected (the slow-consumer rule): away, too.
    shared.send_control(server, Control::Drain { target: target.clone() }).map_err(|_| away())?;
    let users = shared.registry.user_counts().get(&server).copied().unwrap_or(0) as u64;
    tracing::info!(%server, ?target, "server drained through the admin API");
    Ok(Json(DrainAnswer { server: id, state: server_state(true, true, users), target }))
}

//! The routes about app servers: the list, the assignment of a new client, and the drain of a
//! server for a rolling upgrade.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use acms_protocol::ServerId;
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, ErrorBody, remote};
use crate::assign::{Candidate, Policy};
use crate::hub_requests::drain_here;

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
    /// Connected to another hub of the backplane (`hub` names it) and taking clients, or not
    /// reported yet by that hub. Its load figures come from that hub's heartbeats (within a
    /// second); its queue and connection details are that hub's to show. A remote server that
    /// is drained shows `draining` or `drained` instead.
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
    /// Bytes waiting in its outbound queue at the hub; null while it is away, and for a server
    /// of another hub.
    pub queue_bytes: Option<u64>,
    /// Active, draining, drained (draining with no users left), or away within its grace; on a
    /// backplane, remote or moving for a server of another hub.
    pub state: ServerState,
    /// When it registered, in seconds since the Unix epoch; 0 for a server of another hub that
    /// has not reported it yet.
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
    let remote = state.hub.remote_servers().into_iter().map(|server| {
        let users = server.users as u64;
        let load = server.report.and_then(|report| report.load);
        let state = match server.report {
            _ if !server.hub_alive => ServerState::Moving,
            Some(report) if report.draining => server_state(true, true, users),
            _ => ServerState::Remote,
        };
        ServerView {
            id: server.id.0,
            client_addr: server.client_addr,
            peer_addr: String::new(),
            users,
            cpu_percent: load.map(|load| f64::from(load.cpu_centipercent) / 100.0),
            memory_bytes: load.map(|load| load.memory_bytes),
            messages_in_per_second: load.map(|load| f64::from(load.msgs_in_per_s)),
            messages_out_per_second: load.map(|load| f64::from(load.msgs_out_per_s)),
            capacity: load.and_then(|load| load.capacity),
            queue_bytes: None,
            state,
            connected_since: server.report.map_or(0.0, |report| report.since_ms as f64 / 1000.0),
            hub: Some(server.hub.to_string()),
        }
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
/// draining, or at its declared capacity. On a backplane, any server of any live hub, as the
/// hubs' heartbeats report them: every hub answers `affinity` alike.
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
    let chosen = choose_server(&state, &key, None).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no app server can take a client")
    })?;
    Ok(Json(AssignAnswer { server: chosen.id.0, client_addr: chosen.client_addr }))
}

/// A server assignment may pick: its id and where its clients connect.
pub(super) struct Chosen {
    pub(super) id: ServerId,
    pub(super) client_addr: String,
}

/// The server the hub's policy picks for a client with `key`, if any can take one, other than
/// `except`. On a backplane, among the servers of every live hub, as their hubs' heartbeats
/// report them: the same candidates on every hub, so `affinity` maps a key to the same server
/// whichever hub is asked.
pub(super) fn choose_server(
    state: &AppState,
    key: &str,
    except: Option<ServerId>,
) -> Option<Chosen> {
    let registry = state.hub.registry();
    let counts = registry.user_counts();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut addrs: Vec<(ServerId, String)> = Vec::new();
    for info in registry.servers() {
        candidates.push(Candidate {
            id: info.id,
            users: counts.get(&info.id).copied().unwrap_or(0) as u64,
            load: info.load,
            active: state.hub.queue_depth(info.id).is_some() && !info.draining,
        });
        addrs.push((info.id, info.client_addr));
    }
    for server in state.hub.remote_servers() {
        // A server's hub that has not reported it yet (it registered a moment ago), or is
        // dead, gets no client from here; nor does an id this hub still has.
        let Some(report) = server.report else { continue };
        if registry.is_registered(server.id) {
            continue;
        }
        candidates.push(Candidate {
            id: server.id,
            users: server.users as u64,
            load: report.load,
            active: report.takes_clients(),
        });
        addrs.push((server.id, server.client_addr));
    }
    candidates.retain(|candidate| Some(candidate.id) != except);
    let turn = state.turn.fetch_add(1, Ordering::Relaxed);
    let id = crate::assign::choose(state.settings.assign, &candidates, key, turn)?;
    let client_addr = addrs.into_iter().find(|(listed, _)| *listed == id)?.1;
    Some(Chosen { id, client_addr })
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
/// it has no users left. Draining a draining server tells it again. On a backplane, a server of
/// another hub is drained through its hub, with the same answers.
#[utoipa::path(post, path = "/api/servers/{id}/drain", tag = "write",
    params(("id" = u32, Path, description = "server id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the server was told to drain", body = DrainAnswer),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 404, description = "no such server", body = ErrorBody),
        (status = 502, description = "the server's hub (on a backplane) did not answer", body = ErrorBody),
        (status = 503, description = "the server is away, or moving between hubs; drain it once it is back", body = ErrorBody)))]
pub(super) async fn drain_server(
    State(state): State<AppState>,
    id: Result<Path<u32>, PathRejection>,
) -> ApiResult<DrainAnswer> {
    let Path(id) = id?;
    let server = ServerId(id);
    let shared = state.hub.shared();
    if !shared.registry.is_registered(server)
        && let Some(hub) = remote::server_hub(shared, server)?
    {
        // Another hub's: it drains it, sending its clients where this hub's view of the
        // whole cluster says.
        let target = choose_server(&state, "", Some(server)).map(|chosen| chosen.client_addr);
        let users = remote::drain(shared, hub, server, target.clone()).await?;
        tracing::info!(%server, %hub, ?target, "server of another hub drained through the admin API");
        return Ok(Json(DrainAnswer {
            server: id,
            state: server_state(true, true, users),
            target,
        }));
    }
    // Chosen after the mark, so the drained server is never its own target.
    let target = || choose_server(&state, "", None).map(|chosen| chosen.client_addr);
    let (target, users) = drain_here(shared, server, target).map_err(|err| {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError::new(status, err.message(server))
    })?;
    tracing::info!(%server, ?target, "server drained through the admin API");
    Ok(Json(DrainAnswer { server: id, state: server_state(true, true, users), target }))
}

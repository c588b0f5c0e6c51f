//! The admin HTTP API: JSON over HTTP/1 (axum), beside the transfer port, for operators and
//! outside systems. Reading is open; anything that changes state needs `Authorization: Bearer
//! TOKEN`. Bad input gets a JSON error with a 4xx status, never a 500.
//!
//! The router is built from sections ([`router`]): read routes, pushes and kicks, metrics and the
//! OpenAPI document. `GET /api/assign` is a read route: it answers from the servers' latest load
//! reports by the configured policy ([`crate::assign`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use acms_protocol::{Control, DataKind, EVERYONE, GroupId, ServerId, UserId};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::admin_server::HttpLimits;
use crate::assign::{Candidate, Policy};
pub use crate::config::{AdminToken, BadToken, DEFAULT_ADDR};
use crate::hub::Hub;
use crate::stats::FanOut;

/// What the admin API needs besides the hub.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Required on every request that changes state.
    pub token: AdminToken,
    /// How long a push waits for the recipient's server to acknowledge it before answering 504.
    pub push_timeout: Duration,
    /// How `GET /api/assign` picks a server.
    pub assign: Policy,
}

#[derive(Debug, Clone)]
struct AppState {
    hub: Hub,
    settings: AdminSettings,
    /// Advanced by every assignment, for `round-robin`.
    turn: Arc<AtomicU64>,
}

/// Serves the admin API on `listener` until `shutdown` is cancelled, with the default
/// [`HttpLimits`].
pub async fn serve(
    listener: TcpListener,
    hub: Hub,
    settings: AdminSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, hub, settings, HttpLimits::default(), shutdown).await
}

/// Serves the admin API on `listener` within `limits` (header deadline, connection cap) until
/// `shutdown` is cancelled.
pub async fn serve_with(
    listener: TcpListener,
    hub: Hub,
    settings: AdminSettings,
    limits: HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(admin = %listener.local_addr()?, "admin HTTP API listening");
    crate::admin_server::serve(listener, router(hub, settings), limits, shutdown).await
}

/// The admin API's routes, each section a router of its own merged here.
pub fn router(hub: Hub, settings: AdminSettings) -> Router {
    // Room for a payload of a whole frame as base64, and the JSON around it.
    let body_limit = hub.config().max_frame_len * 4 / 3 + 64 * 1024;
    let dashboard = crate::dashboard::router(hub.clone());
    let state = AppState { hub, settings, turn: Arc::default() };
    let read = Router::new()
        .route("/api/servers", get(list_servers))
        .route("/api/assign", get(assign))
        .route("/api/users", get(list_users))
        .route("/api/users/{id}", get(find_user))
        .route("/api/openapi.json", get(openapi_json))
        .route("/metrics", get(metrics));
    // The token guards each POST handler, not the route: another method gets its 405 (with
    // `Allow`) whoever asks, rather than a 401 for a request the route would never take.
    let token = middleware::from_fn_with_state(state.clone(), require_token);
    let write = Router::new()
        .route("/api/users/{id}/messages", post(push_to_user).route_layer(token.clone()))
        .route("/api/users/{id}/kick", post(kick_user).route_layer(token.clone()))
        .route("/api/groups/{id}/messages", post(push_to_group).route_layer(token.clone()))
        .route("/api/broadcast", post(broadcast).route_layer(token.clone()))
        .route("/api/servers/{id}/drain", post(drain_server).route_layer(token));
    let api = read
        .merge(write)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
        .merge(dashboard);
    // Around the whole router: axum adds the `Allow` header of a 405 as the answer leaves a
    // route, so only out here can the error body name the methods.
    Router::new().fallback_service(api).layer(middleware::map_response(explain_wrong_method))
}

/// Gives axum's bare `405` (a known path, another method) a JSON error body like every other
/// error of the API, keeping its `Allow` header.
async fn explain_wrong_method(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let message = match allow.as_ref().and_then(|allow| allow.to_str().ok()) {
        Some(allowed) => format!("method not allowed here; this route takes {allowed}"),
        None => "method not allowed here".to_owned(),
    };
    let mut answer = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, message).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// A JSON error: `{"error": "..."}` with a 4xx (or 503/504) status.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match offered {
        Some(token) if state.settings.token.matches(token) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token").into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this route changes state: send `Authorization: Bearer TOKEN` (admin.token, or \
             ACMS_ADMIN_TOKEN)",
        )
        .into_response(),
    }
}

fn user_id(text: &str) -> Result<UserId, ApiError> {
    UserId::new(text).map_err(|err| ApiError::bad_request(format!("bad user id: {err}")))
}

// ---------------------------------------------------------------------------------------------
// Read routes

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
    /// When it registered, in seconds since the Unix epoch.
    pub connected_since: f64,
}

/// Every app server, by id.
#[utoipa::path(get, path = "/api/servers", tag = "read",
    responses((status = 200, description = "every registered app server", body = [ServerView])))]
async fn list_servers(State(state): State<AppState>) -> Json<Vec<ServerView>> {
    let registry = state.hub.registry();
    let counts = registry.user_counts();
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
        }
    });
    Json(servers.collect())
}

/// A server's state: away wins, since an away server's users wait for it whatever else holds.
fn server_state(connected: bool, draining: bool, users: u64) -> ServerState {
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
async fn assign(
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
fn choose_server(state: &AppState, key: &str) -> Option<crate::registry::ServerInfo> {
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

/// Where one user is online.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// The user's id.
    pub id: String,
    /// Whether they are online on any app server.
    pub online: bool,
    /// The server they logged in on last; null when offline.
    pub server: Option<u32>,
    /// Every server they have a session on (several under the login policy `multi`).
    pub servers: Vec<u32>,
}

/// Whether a user is online, and on which app server.
#[utoipa::path(get, path = "/api/users/{id}", tag = "read",
    params(("id" = String, Path, description = "user id, 1 to 255 bytes")),
    responses(
        (status = 200, description = "the user, online or not", body = UserView),
        (status = 400, description = "not a valid user id", body = ErrorBody)))]
async fn find_user(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<UserView> {
    let Path(id) = id?;
    let user = user_id(&id)?;
    let registry = state.hub.registry();
    let servers: Vec<u32> = registry.sessions(user.as_str()).iter().map(|id| id.0).collect();
    Ok(Json(UserView {
        id: user.to_string(),
        online: !servers.is_empty(),
        server: registry.locate(user.as_str()).map(|id| id.0),
        servers,
    }))
}

/// The query of `GET /api/users`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Only users whose last login is on this server.
    pub server: Option<u32>,
    /// The `next` cursor of the previous page: users after this id.
    pub after: Option<String>,
    /// Users per page, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// One online user in a page.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEntry {
    /// The user's id.
    pub id: String,
    /// The server they logged in on last.
    pub server: u32,
}

/// A page of online users, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// Up to `limit` users, by id.
    pub users: Vec<UserEntry>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

/// Pages through the online users in id order.
#[utoipa::path(get, path = "/api/users", tag = "read", params(UsersQuery),
    responses(
        (status = 200, description = "a page of online users", body = UserPage),
        (status = 400, description = "a bad query", body = ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> ApiResult<UserPage> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let server = query.server.map(ServerId);
    let page = state.hub.registry().users_page(server, query.after.as_deref(), limit as usize + 1);
    let more = page.len() > limit as usize;
    let users: Vec<UserEntry> = page
        .into_iter()
        .take(limit as usize)
        .map(|(user, server)| UserEntry { id: user.to_string(), server: server.0 })
        .collect();
    let next = more.then(|| users.last().map(|last| last.id.clone())).flatten();
    Ok(Json(UserPage { users, next }))
}

/// The OpenAPI 3 description of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "read",
    responses((status = 200, description = "this document", content_type = "application/json")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    let mut document = ApiDoc::openapi();
    document.merge(crate::dashboard::DashboardDoc::openapi());
    Json(document)
}

/// The hub's metrics, in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "read",
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(&state.hub);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

// ---------------------------------------------------------------------------------------------
// Pushes and kicks

/// A message from outside the cluster. Exactly one of `payload` and `payload_base64`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    /// The sender the recipient sees: a user id, 1 to 255 bytes.
    #[schema(min_length = 1, max_length = 255)]
    pub from: String,
    /// The message as text.
    pub payload: Option<String>,
    /// The message as base64, for binary payloads.
    pub payload_base64: Option<String>,
}

impl PushBody {
    fn parse(self) -> Result<(UserId, Bytes), ApiError> {
        let from = UserId::new(&self.from)
            .map_err(|err| ApiError::bad_request(format!("bad `from`: {err}")))?;
        let payload = match (self.payload, self.payload_base64) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map(Bytes::from)
                .map_err(|err| ApiError::bad_request(format!("bad `payload_base64`: {err}")))?,
            _ => {
                return Err(ApiError::bad_request(
                    "give exactly one of `payload` and `payload_base64`",
                ));
            }
        };
        Ok((from, payload))
    }
}

/// What became of a push.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushStatus {
    /// Every server it was sent to acknowledged it: its users have it.
    Delivered,
    /// The user is online nowhere; nothing was sent.
    Offline,
}

/// The answer to a push.
#[derive(Debug, Serialize, ToSchema)]
pub struct PushAnswer {
    /// Delivered or offline.
    pub status: PushStatus,
    /// The servers that acknowledged it.
    pub servers: Vec<u32>,
}

/// Sends a payload and waits for the acknowledgements.
async fn push(
    state: &AppState,
    kind: DataKind,
    recipient: UserId,
    (from, payload): (UserId, Bytes),
    targets: Vec<ServerId>,
) -> ApiResult<PushAnswer> {
    let shared = state.hub.shared();
    let max = shared.config.max_frame_len;
    let pushed = shared
        .pushes
        .push(&shared.registry, max, kind, recipient, from, payload, &targets)
        .map_err(|err| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, err.to_string()))?;
    if pushed.servers.is_empty() && !pushed.unavailable.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recipient's server is reconnecting; try again",
        ));
    }
    match tokio::time::timeout(state.settings.push_timeout, pushed.acked).await {
        Ok(_) => {
            let servers = pushed.servers.iter().map(|id| id.0).collect();
            Ok(Json(PushAnswer { status: PushStatus::Delivered, servers }))
        }
        Err(_) => {
            shared.pushes.forget(pushed.seq);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "no acknowledgement in time: the message may or may not have arrived",
            ))
        }
    }
}

/// Pushes a payload to a user wherever they are; answers once their server acknowledged it.
#[utoipa::path(post, path = "/api/users/{id}/messages", tag = "write",
    params(("id" = String, Path, description = "recipient user id")),
    request_body = PushBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "delivered, or the user is offline", body = PushAnswer),
        (status = 400, description = "bad id or body", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 413, description = "payload larger than a frame", body = ErrorBody),
        (status = 415, description = "body is not JSON", body = ErrorBody),
        (status = 503, description = "the user's server is reconnecting", body = ErrorBody),
        (status = 504, description = "no acknowledgement in time", body = ErrorBody)))]
async fn push_to_user(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> ApiResult<PushAnswer> {
    let Path(id) = id?;
    let user = user_id(&id)?;
    let body = body?.0.parse()?;
    let targets = state.hub.registry().sessions(user.as_str());
    if targets.is_empty() {
        state.hub.shared().stats.undeliverable();
        return Ok(Json(PushAnswer { status: PushStatus::Offline, servers: Vec::new() }));
    }
    push(&state, DataKind::Unicast, user, body, targets).await
}

/// Pushes a payload to every member of a group, on every server with members.
#[utoipa::path(post, path = "/api/groups/{id}/messages", tag = "write",
    params(("id" = String, Path, description = "group id, 1 to 255 bytes")),
    request_body = PushBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "every server with members acknowledged it", body = PushAnswer),
        (status = 400, description = "bad id or body", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 413, description = "payload larger than a frame", body = ErrorBody),
        (status = 415, description = "body is not JSON", body = ErrorBody),
        (status = 503, description = "every server with members is reconnecting", body = ErrorBody),
        (status = 504, description = "no acknowledgement in time", body = ErrorBody)))]
async fn push_to_group(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> ApiResult<PushAnswer> {
    let Path(id) = id?;
    let group =
        GroupId::new(&id).map_err(|err| ApiError::bad_request(format!("bad group id: {err}")))?;
    let body = body?.0.parse()?;
    let targets = state.hub.groups().servers_of(group.as_str(), ServerId::HUB);
    state.hub.shared().stats.fanned_out(FanOut::Group, targets.len());
    let recipient = user_id(group.as_str())?;
    push(&state, DataKind::Group, recipient, body, targets).await
}

/// Pushes a payload to every user online on any server.
#[utoipa::path(post, path = "/api/broadcast", tag = "write",
    request_body = PushBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "every server acknowledged it", body = PushAnswer),
        (status = 400, description = "bad body", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 413, description = "payload larger than a frame", body = ErrorBody),
        (status = 415, description = "body is not JSON", body = ErrorBody),
        (status = 503, description = "every server is reconnecting", body = ErrorBody),
        (status = 504, description = "no acknowledgement in time", body = ErrorBody)))]
async fn broadcast(
    State(state): State<AppState>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> ApiResult<PushAnswer> {
    let body = body?.0.parse()?;
    let targets = state.hub.registry().server_ids(ServerId::HUB);
    state.hub.shared().stats.fanned_out(FanOut::Broadcast, targets.len());
    push(&state, DataKind::Broadcast, user_id(EVERYONE)?, body, targets).await
}

/// Why a user is disconnected.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KickBody {
    /// Shown to the user's client; "kicked by an administrator" when left out.
    pub reason: Option<String>,
}

/// The answer to a kick.
#[derive(Debug, Serialize, ToSchema)]
pub struct KickAnswer {
    /// The servers told to end the user's session.
    pub servers: Vec<u32>,
}

/// Longest kick reason, in bytes.
const MAX_REASON: usize = 1024;

/// Disconnects a user: their server ends the session and tells their client why.
#[utoipa::path(post, path = "/api/users/{id}/kick", tag = "write",
    params(("id" = String, Path, description = "user id")),
    request_body = KickBody, security(("bearer" = [])),
    responses(
        (status = 200, description = "their servers were told", body = KickAnswer),
        (status = 400, description = "bad id or body", body = ErrorBody),
        (status = 401, description = "no or wrong bearer token", body = ErrorBody),
        (status = 404, description = "the user is online nowhere", body = ErrorBody),
        (status = 415, description = "body is not JSON", body = ErrorBody)))]
async fn kick_user(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<KickBody>, JsonRejection>,
) -> ApiResult<KickAnswer> {
    let Path(id) = id?;
    let user = user_id(&id)?;
    let Json(body) = body?;
    let reason = body.reason.unwrap_or_else(|| "kicked by an administrator".to_owned());
    if reason.len() > MAX_REASON {
        return Err(ApiError::bad_request(format!("reason longer than {MAX_REASON} bytes")));
    }
    let shared = state.hub.shared();
    let mut servers = Vec::new();
    for server in shared.registry.sessions(user.as_str()) {
        if shared.kick(server, user.clone(), reason.clone()).is_ok() {
            servers.push(server.0);
        }
    }
    if servers.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("{user} is online nowhere")));
    }
    tracing::info!(%user, %reason, ?servers, "user kicked through the admin API");
    Ok(Json(KickAnswer { servers }))
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
async fn drain_server(
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

// ---------------------------------------------------------------------------------------------
// The OpenAPI document

/// The OpenAPI description of the admin API, served at `/api/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "ACMS admin API", description = "Servers, users, pushes, kicks and metrics of an ACMS hub. Routes that change state need `Authorization: Bearer TOKEN`."),
    paths(list_servers, assign, list_users, find_user, openapi_json, metrics, push_to_user, push_to_group, broadcast, kick_user, drain_server),
    components(schemas(ErrorBody, AssignAnswer, ServerView, ServerState, UserView, UserEntry, UserPage, PushBody, PushStatus, PushAnswer, KickBody, KickAnswer, DrainAnswer)),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The routes the router serves, as (method, OpenAPI path), for the test that keeps the document
/// true.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/servers"),
    ("get", "/api/summary"),
    ("get", "/api/hub"),
    ("get", "/api/assign"),
    ("get", "/api/users"),
    ("get", "/api/users/{id}"),
    ("get", "/api/openapi.json"),
    ("get", "/metrics"),
    ("post", "/api/users/{id}/messages"),
    ("post", "/api/users/{id}/kick"),
    ("post", "/api/groups/{id}/messages"),
    ("post", "/api/broadcast"),
    ("post", "/api/servers/{id}/drain"),
];

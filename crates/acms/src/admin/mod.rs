//! The admin HTTP API: JSON over HTTP/1 (axum), beside the transfer port, for operators and
//! outside systems. Reading is open; anything that changes state needs `Authorization: Bearer
//! TOKEN`. Bad input gets a JSON error with a 4xx status, never a 500.
//!
//! The router is built from sections ([`router`]): read routes, pushes and kicks, metrics and the
//! OpenAPI document. The routes live by area: `servers` (list, assignment, drain), `users`
//! (locate, list, kick), `push` (to a user, a group, everyone) and `remote` (the pushes and kicks
//! forwarded to another hub of a backplane); this module holds the router,
//! the errors, the token check and the document. `GET /api/assign` is a read route: it answers
//! from the servers' latest load reports by the configured policy ([`crate::assign`]).

mod push;
mod remote;
mod servers;
mod users;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use acms_protocol::UserId;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use self::push::{PushAnswer, PushBody, PushStatus};
use self::push::{broadcast, push_to_group, push_to_user};
pub use self::servers::{AssignAnswer, AssignQuery, DrainAnswer, ServerState, ServerView};
use self::servers::{assign, drain_server, list_servers};
pub use self::users::{
    CandidateView, KickAnswer, KickBody, UserEntry, UserPage, UserView, UsersQuery,
};
use self::users::{find_user, kick_user, list_users};
use crate::admin_server::HttpLimits;
use crate::assign::Policy;
pub use crate::config::{AdminToken, BadToken, DEFAULT_ADDR};
use crate::hub::Hub;

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

/// The OpenAPI description of the admin API, served at `/api/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "ACMS admin API", description = "Servers, users, pushes, kicks and metrics of an ACMS hub. Routes that change state need `Authorization: Bearer TOKEN`."),
    paths(servers::list_servers, servers::assign, users::list_users, users::find_user, openapi_json, metrics, push::push_to_user, push::push_to_group, push::broadcast, users::kick_user, servers::drain_server),
    components(schemas(ErrorBody, AssignAnswer, ServerView, ServerState, UserView, CandidateView, UserEntry, UserPage, PushBody, PushStatus, PushAnswer, KickBody, KickAnswer, DrainAnswer)),
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

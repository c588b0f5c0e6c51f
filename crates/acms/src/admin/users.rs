//! The routes about users: where one is, a page of those online, and a kick.

use acms_protocol::ServerId;
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, ErrorBody, user_id};

/// Where one user is online.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// The user's id.
    pub id: String,
    /// Whether they are online on any app server.
    pub online: bool,
    /// The server they logged in on last; null when offline.
    pub server: Option<u32>,
    /// Every server they have a session on (several under the login policy `multi`), on a
    /// backplane those of every hub.
    pub servers: Vec<u32>,
    /// The P2P candidates the server of `server` set for them (addresses their client reported);
    /// empty when none were set or they are offline. The hub never uses them itself.
    pub candidates: Vec<CandidateView>,
}

/// One P2P candidate of a user's session.
#[derive(Debug, Serialize, ToSchema)]
pub struct CandidateView {
    /// The address, `ip:port` (`[ip]:port` for IPv6).
    pub addr: String,
    /// How the client learnt it: `local` (an interface of its own) or `reflexive` (as a server
    /// outside its NAT saw it).
    pub kind: String,
}

/// Whether a user is online, and on which app server.
#[utoipa::path(get, path = "/api/users/{id}", tag = "read",
    params(("id" = String, Path, description = "user id, 1 to 255 bytes")),
    responses(
        (status = 200, description = "the user, online or not", body = UserView),
        (status = 400, description = "not a valid user id", body = ErrorBody)))]
pub(super) async fn find_user(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<UserView> {
    let Path(id) = id?;
    let user = user_id(&id)?;
    let registry = state.hub.registry();
    let mut servers: Vec<u32> = registry.sessions(user.as_str()).iter().map(|id| id.0).collect();
    // On a backplane, their sessions on other hubs' servers too, as the shared directory says.
    if let Some(backplane) = state.hub.shared().backplane.as_deref() {
        let elsewhere = backplane.replica.sessions(user.as_str()).into_iter();
        servers.extend(elsewhere.filter(|&s| !registry.is_registered(s)).map(|id| id.0));
    }
    let (server, candidates) = match registry.reach(user.as_str()) {
        Some((server, candidates)) => (Some(server.0), candidates),
        None => (None, Vec::new()),
    };
    // A user on another hub of a backplane: located through the shared directory.
    let located = state.hub.locate(user.as_str()).map(|id| id.0);
    let candidates = candidates
        .into_iter()
        .map(|candidate| CandidateView {
            addr: candidate.addr.to_string(),
            kind: candidate.kind.to_string(),
        })
        .collect();
    Ok(Json(UserView {
        id: user.to_string(),
        online: !servers.is_empty() || located.is_some(),
        server: server.or(located),
        servers,
        candidates,
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
pub(super) async fn list_users(
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
pub(super) async fn kick_user(
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
    // On a backplane, the user may have sessions on other hubs' servers (several under
    // `multi`): those hubs kick them.
    servers.extend(super::remote::kick(shared, &user, &reason).await?);
    if servers.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("{user} is online nowhere")));
    }
    servers.sort_unstable();
    tracing::info!(%user, %reason, ?servers, "user kicked through the admin API");
    Ok(Json(KickAnswer { servers }))
}

//! The pushes from outside the cluster: to a user, to a group, to everyone; each answered once
//! the servers it went to acknowledged it.

use acms_protocol::{DataKind, EVERYONE, GroupId, ServerId, UserId};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState, ErrorBody, user_id};
use crate::hub_requests::push_here;
use crate::stats::FanOut;

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

/// As [`push_here`], with the admin API's timeout.
async fn push(
    state: &AppState,
    kind: DataKind,
    recipient: UserId,
    body: (UserId, Bytes),
    targets: Vec<ServerId>,
) -> ApiResult<PushAnswer> {
    let shared = state.hub.shared();
    let timeout = state.settings.push_timeout;
    match push_here(shared, timeout, kind, recipient, body, targets).await {
        Ok(servers) => {
            let servers = servers.iter().map(|id| id.0).collect();
            Ok(Json(PushAnswer { status: PushStatus::Delivered, servers }))
        }
        Err(failure) => Err(ApiError::new(
            StatusCode::from_u16(failure.status).unwrap_or(StatusCode::BAD_GATEWAY),
            failure.message,
        )),
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
pub(super) async fn push_to_user(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> ApiResult<PushAnswer> {
    let Path(id) = id?;
    let user = user_id(&id)?;
    let body = body?.0.parse()?;
    let targets = state.hub.registry().sessions(user.as_str());
    // On a backplane, the user may have sessions on other hubs' servers (several under
    // `multi`): each of those hubs pushes to its own, meanwhile.
    let shared = state.hub.shared();
    let timeout = state.settings.push_timeout;
    let elsewhere = super::remote::push_to_user(shared, &user, &body, timeout);
    if targets.is_empty() {
        if let Some(answer) = elsewhere.await? {
            return Ok(Json(answer));
        }
        shared.stats.undeliverable();
        return Ok(Json(PushAnswer { status: PushStatus::Offline, servers: Vec::new() }));
    }
    let here = push(&state, DataKind::Unicast, user.clone(), body.clone(), targets);
    let (here, elsewhere) = tokio::join!(here, elsewhere);
    let Json(mut answer) = here?;
    if let Some(other) = elsewhere? {
        answer.servers.extend(other.servers);
        answer.servers.sort_unstable();
    }
    Ok(Json(answer))
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
pub(super) async fn push_to_group(
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
    // On a backplane, each other hub with members pushes to its own servers, meanwhile.
    let shared = state.hub.shared();
    let timeout = state.settings.push_timeout;
    let hubs = super::remote::group_hubs(shared, group.as_str());
    let elsewhere = hubs.into_iter().map(|hub| {
        let (group, body) = (&group, &body);
        async move { super::remote::push_to_group(shared, hub, group, body, timeout).await }
    });
    let here = push(&state, DataKind::Group, recipient, body.clone(), targets);
    let (here, elsewhere) = tokio::join!(here, futures_util::future::join_all(elsewhere));
    let Json(mut answer) = here?;
    for other in elsewhere {
        answer.servers.extend(other?.servers);
    }
    answer.servers.sort_unstable();
    Ok(Json(answer))
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
pub(super) async fn broadcast(
    State(state): State<AppState>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> ApiResult<PushAnswer> {
    let body = body?.0.parse()?;
    let targets = state.hub.registry().server_ids(ServerId::HUB);
    state.hub.shared().stats.fanned_out(FanOut::Broadcast, targets.len());
    push(&state, DataKind::Broadcast, user_id(EVERYONE)?, body, targets).await
}

//! Pushes and kicks for users of another hub, and drains of its servers, on a backplane: the hub
//! whose admin API was asked forwards the request to the hub of the user's server (or to each
//! hub with members of the group, or to the server's hub), which does it as for its own and
//! answers with what became of it. The payload is carried as it was given; only the hub that
//! holds the servers numbers and sends it.

use std::time::Duration;

use acms_protocol::{GroupId, ServerId, UserId};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::ApiError;
use super::push::{PushAnswer, PushStatus};
use crate::backplane::{Backplane, HubId, Remote};
use crate::hub_requests::{Answer, Question};
use crate::state::HubState;

/// The other hubs a request for `user` goes to: the live hub of each of their sessions' servers
/// not on this hub (several under `multi`); `Ok(None)` when they have none elsewhere (or there
/// is no backplane). 503 while their only sessions elsewhere are on servers moving between hubs.
fn user_hubs<'a>(
    shared: &'a HubState,
    user: &UserId,
) -> Result<Option<(&'a Backplane, Vec<HubId>)>, ApiError> {
    let Some(backplane) = shared.backplane.as_deref() else { return Ok(None) };
    let (mut hubs, mut moving) = (Vec::new(), false);
    // A session the replica places on a server here that the registry no longer has is this
    // hub's own logout, which the replica has not seen yet: skipped.
    let elsewhere = backplane.replica.sessions(user.as_str());
    for server in elsewhere.into_iter().filter(|&s| !shared.registry.is_registered(s)) {
        match backplane.replica.route_server(server) {
            Remote::Hub(hub) if !hubs.contains(&hub) => hubs.push(hub),
            Remote::Hub(_) | Remote::Nowhere => {}
            Remote::Moving => moving = true,
        }
    }
    if hubs.is_empty() && moving {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recipient's server is moving to another hub; try again",
        ));
    }
    Ok((!hubs.is_empty()).then_some((backplane, hubs)))
}

/// Asks `hub` `question` and reads its answer.
async fn ask(backplane: &Backplane, hub: HubId, question: &Question) -> Result<Answer, ApiError> {
    let bytes = serde_json::to_vec(question).expect("a question serializes");
    let unavailable = |why: String| ApiError::new(StatusCode::BAD_GATEWAY, why);
    let answer = backplane.ask(hub, bytes.into()).await.map_err(unavailable)?;
    serde_json::from_slice(&answer)
        .map_err(|err| unavailable(format!("unreadable answer from hub {hub}: {err}")))
}

/// The answer of an asked hub to a push, as this hub's.
fn pushed(answer: Answer) -> Result<PushAnswer, ApiError> {
    match answer {
        Answer::Pushed { servers, offline: false } => {
            Ok(PushAnswer { status: PushStatus::Delivered, servers })
        }
        Answer::Pushed { offline: true, .. } => {
            Ok(PushAnswer { status: PushStatus::Offline, servers: Vec::new() })
        }
        Answer::Failed { status, error } => Err(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            error,
        )),
        Answer::Kicked { .. } | Answer::Drained { .. } => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "another question's answer to a push"))
        }
    }
}

/// Pushes to `user` through the hubs of their sessions on other hubs' servers: the servers that
/// acknowledged it, or `None` when they have no session elsewhere (or it went offline there).
pub(super) async fn push_to_user(
    shared: &HubState,
    user: &UserId,
    (from, payload): &(UserId, Bytes),
    timeout: Duration,
) -> Result<Option<PushAnswer>, ApiError> {
    let Some((backplane, hubs)) = user_hubs(shared, user)? else { return Ok(None) };
    let question = Question::PushUser {
        user: user.to_string(),
        from: from.to_string(),
        payload: STANDARD.encode(payload),
        timeout_ms: timeout.as_millis() as u64,
    };
    let asked = hubs.into_iter().map(|hub| ask(backplane, hub, &question));
    let mut servers = Vec::new();
    for answer in futures_util::future::join_all(asked).await {
        let answer = pushed(answer?)?;
        if matches!(answer.status, PushStatus::Delivered) {
            servers.extend(answer.servers);
        }
    }
    servers.sort_unstable();
    Ok((!servers.is_empty()).then_some(PushAnswer { status: PushStatus::Delivered, servers }))
}

/// The hubs other than this one with members of `group`, alive or not heard from yet.
pub(super) fn group_hubs(shared: &HubState, group: &str) -> Vec<HubId> {
    let Some(backplane) = shared.backplane.as_deref() else { return Vec::new() };
    let mut hubs: Vec<HubId> = backplane
        .interest
        .servers_of(group, backplane.me)
        .into_iter()
        .map(|(hub, _)| hub)
        .filter(|&hub| backplane.replica.reachable(hub))
        .collect();
    hubs.sort_unstable();
    hubs.dedup();
    hubs
}

/// Pushes to the members of `group` on `hub`'s servers.
pub(super) async fn push_to_group(
    shared: &HubState,
    hub: HubId,
    group: &GroupId,
    (from, payload): &(UserId, Bytes),
    timeout: Duration,
) -> Result<PushAnswer, ApiError> {
    let backplane = shared.backplane.as_deref().expect("group hubs come from the backplane");
    let question = Question::PushGroup {
        group: group.to_string(),
        from: from.to_string(),
        payload: STANDARD.encode(payload),
        timeout_ms: timeout.as_millis() as u64,
    };
    pushed(ask(backplane, hub, &question).await?)
}

/// Kicks `user` off their sessions on other hubs' servers, through those hubs: the servers
/// told, none when they have no session elsewhere.
pub(super) async fn kick(
    shared: &HubState,
    user: &UserId,
    reason: &str,
) -> Result<Vec<u32>, ApiError> {
    let Some((backplane, hubs)) = user_hubs(shared, user)? else { return Ok(Vec::new()) };
    let question = Question::Kick { user: user.to_string(), reason: reason.to_owned() };
    let asked = hubs.into_iter().map(|hub| ask(backplane, hub, &question));
    let mut kicked = Vec::new();
    for answer in futures_util::future::join_all(asked).await {
        match answer? {
            Answer::Kicked { servers } => kicked.extend(servers),
            Answer::Failed { status, error } => {
                return Err(ApiError::new(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    error,
                ));
            }
            Answer::Pushed { .. } | Answer::Drained { .. } => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "another question's answer to a kick",
                ));
            }
        }
    }
    Ok(kicked)
}

/// Where the drain of `server`, not registered on this hub, goes: the live hub it is on;
/// `Ok(None)` when no hub has it (or there is no backplane).
pub(super) fn server_hub(shared: &HubState, server: ServerId) -> Result<Option<HubId>, ApiError> {
    let Some(backplane) = shared.backplane.as_deref() else { return Ok(None) };
    match backplane.replica.route_server(server) {
        Remote::Hub(hub) => Ok(Some(hub)),
        Remote::Moving => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("server {server} is moving to another hub; drain it once it is back"),
        )),
        Remote::Nowhere => Ok(None),
    }
}

/// Drains `server` of `hub` through that hub, its clients sent to `target`: the users it has
/// left, or the asked hub's error with its status (404 unknown there, 503 away).
pub(super) async fn drain(
    shared: &HubState,
    hub: HubId,
    server: ServerId,
    target: Option<String>,
) -> Result<u64, ApiError> {
    let backplane = shared.backplane.as_deref().expect("a server's hub comes from the backplane");
    let question = Question::Drain { server: server.0, target };
    match ask(backplane, hub, &question).await? {
        Answer::Drained { users } => {
            backplane.drained_remote(hub, server, std::time::Instant::now());
            Ok(users)
        }
        Answer::Failed { status, error } => Err(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            error,
        )),
        Answer::Pushed { .. } | Answer::Kicked { .. } => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "another question's answer to a drain"))
        }
    }
}

//! Requests between the admin sides of hubs on a backplane: a push or a kick that one hub's
//! admin API took for users of another, or the drain of another hub's server. The asked hub does
//! it as for its own and answers with what became of it. Here: the questions and answers, the
//! answering side, and the push and the drain on servers of this hub that both the admin API and
//! the answering side make.

use std::time::Duration;

use acms_protocol::{Control, DataKind, ServerId, UserId};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::state::HubState;
use crate::stats::FanOut;

/// Why a push to servers of this hub failed, with the HTTP status the admin API answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushFailure {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl PushFailure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

/// Sends a payload to servers of this hub and waits up to `timeout` for their
/// acknowledgements: the servers that acknowledged it.
pub(crate) async fn push_here(
    shared: &HubState,
    timeout: Duration,
    kind: DataKind,
    recipient: UserId,
    (from, payload): (UserId, Bytes),
    targets: Vec<ServerId>,
) -> Result<Vec<ServerId>, PushFailure> {
    let max = shared.config.max_frame_len;
    let pushed = shared
        .pushes
        .push(&shared.registry, max, kind, recipient, from, payload, &targets)
        .map_err(|err| PushFailure::new(413, err.to_string()))?;
    if pushed.servers.is_empty() && !pushed.unavailable.is_empty() {
        return Err(PushFailure::new(503, "the recipient's server is reconnecting; try again"));
    }
    match tokio::time::timeout(timeout, pushed.acked).await {
        Ok(_) => Ok(pushed.servers),
        Err(_) => {
            shared.pushes.forget(pushed.seq);
            Err(PushFailure::new(
                504,
                "no acknowledgement in time: the message may or may not have arrived",
            ))
        }
    }
}

/// Why a drain of a server of this hub failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainFailure {
    /// No server of this id is registered here.
    Unknown,
    /// It is away (or its queue just overflowed): drain it once it is back.
    Away,
}

impl DrainFailure {
    /// The HTTP status the admin API answers.
    pub(crate) fn status(self) -> u16 {
        match self {
            Self::Unknown => 404,
            Self::Away => 503,
        }
    }

    /// The error the admin API answers.
    pub(crate) fn message(self, server: ServerId) -> String {
        match self {
            Self::Unknown => format!("no server {server}"),
            Self::Away => format!("server {server} is away"),
        }
    }
}

/// Drains `server`, registered here: marks it so that assignment skips it, then tells it to
/// send its clients to `target()` (called after the mark, so never the drained server itself).
/// Its target and the users it has left.
pub(crate) fn drain_here(
    shared: &HubState,
    server: ServerId,
    target: impl FnOnce() -> Option<String>,
) -> Result<(Option<String>, u64), DrainFailure> {
    if !shared.registry.is_registered(server) {
        return Err(DrainFailure::Unknown);
    }
    if shared.registry.outbox(server).is_none() {
        return Err(DrainFailure::Away);
    }
    shared.registry.drain(server);
    let target = target();
    // A server whose queue is full is disconnected (the slow-consumer rule): away, too.
    shared
        .send_control(server, Control::Drain { target: target.clone() })
        .map_err(|_| DrainFailure::Away)?;
    let users = shared.registry.user_counts().get(&server).copied().unwrap_or(0) as u64;
    Ok((target, users))
}

/// The longest push the asked hub waits for: inside the asker's wait for its answer.
const MAX_REMOTE_PUSH: Duration = Duration::from_secs(10);

/// A question of one hub's admin side to another's.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Question {
    /// Push to a user of the asked hub's servers.
    PushUser { user: String, from: String, payload: String, timeout_ms: u64 },
    /// Push to the members of a group on the asked hub's servers.
    PushGroup { group: String, from: String, payload: String, timeout_ms: u64 },
    /// Kick a user off the asked hub's servers.
    Kick { user: String, reason: String },
    /// Drain a server of the asked hub, sending its clients to `target`, which the asking hub
    /// chose among the servers of the whole cluster.
    Drain { server: u32, target: Option<String> },
}

/// The asked hub's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    /// Pushed and acknowledged by these servers; `offline` when the user was on none.
    Pushed { servers: Vec<u32>, offline: bool },
    /// These servers were told to end the user's sessions.
    Kicked { servers: Vec<u32> },
    /// The server was told to drain; it has `users` left.
    Drained { users: u64 },
    /// Failed, with the HTTP status the asker answers.
    Failed { status: u16, error: String },
}

impl Answer {
    fn failed(err: PushFailure) -> Self {
        Self::Failed { status: err.status, error: err.message }
    }
}

/// Answers another hub's question to this hub's admin side: bytes of an [`Answer`], whatever
/// the question holds (a bad one is answered `Failed`, with a log line).
pub(crate) async fn answer_hub(shared: &HubState, question: Bytes) -> Bytes {
    let answer = match serde_json::from_slice::<Question>(&question) {
        Ok(question) => answer(shared, question).await,
        Err(err) => {
            tracing::warn!(error = %err, "unreadable question from another hub");
            Answer::Failed { status: 400, error: format!("unreadable question: {err}") }
        }
    };
    serde_json::to_vec(&answer).expect("an answer serializes").into()
}

async fn answer(shared: &HubState, question: Question) -> Answer {
    let bad = |what: &str, err: &dyn std::fmt::Display| Answer::Failed {
        status: 400,
        error: format!("bad {what}: {err}"),
    };
    let timeout = |ms: u64| Duration::from_millis(ms).min(MAX_REMOTE_PUSH);
    match question {
        Question::PushUser { user, from, payload, timeout_ms } => {
            let user = match UserId::new(&user) {
                Ok(user) => user,
                Err(err) => return bad("user", &err),
            };
            let body = match parse_body(&from, &payload) {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let targets = shared.registry.sessions(user.as_str());
            if targets.is_empty() {
                shared.stats.undeliverable();
                return Answer::Pushed { servers: Vec::new(), offline: true };
            }
            let pushed =
                push_here(shared, timeout(timeout_ms), DataKind::Unicast, user, body, targets);
            match pushed.await {
                Ok(servers) => Answer::Pushed {
                    servers: servers.iter().map(|id| id.0).collect(),
                    offline: false,
                },
                Err(err) => Answer::failed(err),
            }
        }
        Question::PushGroup { group, from, payload, timeout_ms } => {
            let recipient = match UserId::new(&group) {
                Ok(recipient) => recipient,
                Err(err) => return bad("group", &err),
            };
            let body = match parse_body(&from, &payload) {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let targets = shared.groups.servers_of(recipient.as_str(), ServerId::HUB);
            shared.stats.fanned_out(FanOut::Group, targets.len());
            let pushed =
                push_here(shared, timeout(timeout_ms), DataKind::Group, recipient, body, targets);
            match pushed.await {
                Ok(servers) => Answer::Pushed {
                    servers: servers.iter().map(|id| id.0).collect(),
                    offline: false,
                },
                Err(err) => Answer::failed(err),
            }
        }
        Question::Kick { user, reason } => {
            let user = match UserId::new(&user) {
                Ok(user) => user,
                Err(err) => return bad("user", &err),
            };
            let mut servers = Vec::new();
            for server in shared.registry.sessions(user.as_str()) {
                if shared.kick(server, user.clone(), reason.clone()).is_ok() {
                    servers.push(server.0);
                }
            }
            tracing::info!(%user, %reason, ?servers, "user kicked at another hub's request");
            Answer::Kicked { servers }
        }
        Question::Drain { server, target } => {
            let server = ServerId(server);
            match drain_here(shared, server, || target) {
                Ok((target, users)) => {
                    tracing::info!(%server, ?target, "server drained at another hub's request");
                    Answer::Drained { users }
                }
                Err(err) => Answer::Failed { status: err.status(), error: err.message(server) },
            }
        }
    }
}

/// The sender and payload of a forwarded push.
fn parse_body(from: &str, payload: &str) -> Result<(UserId, Bytes), Answer> {
    let from = UserId::new(from)
        .map_err(|err| Answer::Failed { status: 400, error: format!("bad `from`: {err}") })?;
    let payload = STANDARD
        .decode(payload)
        .map_err(|err| Answer::Failed { status: 400, error: format!("bad payload: {err}") })?;
    Ok((from, payload.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;

    async fn ask(shared: &HubState, question: &[u8]) -> Answer {
        let answer = answer_hub(shared, Bytes::copy_from_slice(question)).await;
        serde_json::from_slice(&answer).expect("an answer reads back")
    }

    #[tokio::test]
    async fn bad_questions_get_a_failed_answer_and_users_here_none_are_offline() {
        let shared = HubState::new(HubConfig::default(), None);
        for bad in [&b"nonsense"[..], br#"{"Kick":{"user":"","reason":"x"}}"#] {
            assert!(matches!(ask(&shared, bad).await, Answer::Failed { status: 400, .. }));
        }
        let push = Question::PushUser {
            user: "bob".into(),
            from: "ops".into(),
            payload: "!!not base64".into(),
            timeout_ms: 10,
        };
        let push = serde_json::to_vec(&push).unwrap();
        assert!(matches!(ask(&shared, &push).await, Answer::Failed { status: 400, .. }));
        let push = Question::PushUser {
            user: "bob".into(),
            from: "ops".into(),
            payload: STANDARD.encode("hi"),
            timeout_ms: 10,
        };
        let push = serde_json::to_vec(&push).unwrap();
        assert!(matches!(ask(&shared, &push).await, Answer::Pushed { offline: true, .. }));
        let kick = serde_json::to_vec(&Question::Kick { user: "bob".into(), reason: "x".into() });
        let answer = ask(&shared, &kick.unwrap()).await;
        assert!(matches!(answer, Answer::Kicked { servers } if servers.is_empty()));
        let drain = serde_json::to_vec(&Question::Drain { server: 7, target: None }).unwrap();
        assert!(matches!(ask(&shared, &drain).await, Answer::Failed { status: 404, .. }));
    }
}

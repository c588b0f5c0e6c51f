//! A user's entry in the users bucket: the list of their sessions, each a server and the P2P
//! candidates its client reported, oldest login first. Under `replace` it holds one session;
//! under `multi` one per server the user is on, across hubs.
//!
//! Every hub edits the entry of a user by reading it, merging its own sessions in
//! ([`merge`]) and writing it back over the revision it read, so two hubs' edits never undo each
//! other. The encoding is JSON, compact (`[{"s":10}]`, candidates only when there are some), and
//! a bare decimal server id (the entry before sessions were listed) still reads as one session.

use acms_protocol::{Candidate, MAX_CANDIDATES, ServerId};
use serde::{Deserialize, Serialize};

/// At most this many sessions in one entry are read: more is a corrupt or hostile entry, ignored.
pub(crate) const MAX_SESSIONS: usize = 1024;

/// At most this many bytes of an entry are read (NATS's default largest message).
const MAX_VALUE: usize = 1 << 20;

/// One session of a user: the server it is on, and the candidates its client reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    #[serde(rename = "s")]
    pub(crate) server: ServerId,
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) candidates: Vec<Candidate>,
}

impl Session {
    /// A session on `server` with no candidates.
    pub(crate) fn on(server: ServerId) -> Self {
        Self { server, candidates: Vec::new() }
    }
}

/// Why an entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EntryError {
    #[error("not a list of sessions: {0}")]
    Malformed(String),
    #[error("{0} sessions, the limit is {MAX_SESSIONS}")]
    TooManySessions(usize),
    #[error("{count} candidates for server {server}, the limit is {MAX_CANDIDATES}")]
    TooManyCandidates { server: ServerId, count: usize },
    #[error("no session")]
    Empty,
}

/// The value of an entry holding `sessions` (none: the entry is to be deleted, not written).
pub(crate) fn encode(sessions: &[Session]) -> bytes::Bytes {
    serde_json::to_vec(sessions).expect("sessions serialize").into()
}

/// The sessions of an entry's value, bounded whatever the value claims.
pub(crate) fn decode(value: &[u8]) -> Result<Vec<Session>, EntryError> {
    if let Some(server) = std::str::from_utf8(value).ok().and_then(|text| text.parse().ok()) {
        return Ok(vec![Session::on(ServerId(server))]);
    }
    if value.len() > MAX_VALUE {
        return Err(EntryError::Malformed(format!("{} bytes", value.len())));
    }
    let sessions: Vec<Session> =
        serde_json::from_slice(value).map_err(|err| EntryError::Malformed(err.to_string()))?;
    if sessions.is_empty() {
        return Err(EntryError::Empty);
    }
    if sessions.len() > MAX_SESSIONS {
        return Err(EntryError::TooManySessions(sessions.len()));
    }
    if let Some(session) = sessions.iter().find(|session| session.candidates.len() > MAX_CANDIDATES)
    {
        let count = session.candidates.len();
        return Err(EntryError::TooManyCandidates { server: session.server, count });
    }
    Ok(sessions)
}

/// What a hub's edit makes of an entry holding `old`: sessions on the hub's own servers (`mine`)
/// are replaced by `here`, its sessions of the user now (oldest login first); sessions on the
/// servers in `drop` (that left the hub, or whose dead hub was given up) go; the others stay, in
/// their order, and new sessions of this hub come last. Under `replace` (`!multi`), a session of
/// another hub that remains is the newer login (it wins, and kicks this hub's): this hub adds
/// none.
pub(crate) fn merge(
    old: &[Session],
    here: &[Session],
    mine: impl Fn(ServerId) -> bool,
    drop: &[ServerId],
    multi: bool,
) -> Vec<Session> {
    let kept = |session: &&Session| {
        here.iter().any(|new| new.server == session.server)
            || !(mine(session.server) || drop.contains(&session.server))
    };
    let mut merged: Vec<Session> = old
        .iter()
        .filter(kept)
        .map(|session| {
            // Still here: with its candidates now, in its place.
            here.iter().find(|new| new.server == session.server).unwrap_or(session).clone()
        })
        .collect();
    let others = merged.iter().any(|session| !here.iter().any(|new| new.server == session.server));
    if !multi && others {
        merged.retain(|session| !here.iter().any(|new| new.server == session.server));
        return merged;
    }
    for new in here {
        if !merged.iter().any(|session| session.server == new.server) {
            merged.push(new.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use acms_protocol::CandidateKind;

    use super::*;

    fn candidate(port: u16) -> Candidate {
        Candidate::new(([192, 0, 2, 1], port).into(), CandidateKind::Local)
    }

    fn with(server: u32, candidates: &[Candidate]) -> Session {
        Session { server: ServerId(server), candidates: candidates.to_vec() }
    }

    #[test]
    fn an_entry_is_compact_and_reads_back() {
        let sessions = vec![Session::on(ServerId(10)), with(11, &[candidate(4000)])];
        let value = encode(&sessions);
        assert!(value.starts_with(br#"[{"s":10},{"s":11,"c":["#), "{value:?}");
        assert_eq!(decode(&value).unwrap(), sessions);
        // The entry of a hub before sessions were listed: one session, no candidates.
        assert_eq!(decode(b"42").unwrap(), vec![Session::on(ServerId(42))]);
    }

    #[test]
    fn a_bad_entry_is_refused_whatever_it_claims() {
        assert!(matches!(decode(b"{\"s\":1}"), Err(EntryError::Malformed(_))));
        assert_eq!(decode(b"[]"), Err(EntryError::Empty));
        let many: Vec<Session> =
            (0..=MAX_SESSIONS as u32).map(|id| Session::on(ServerId(id))).collect();
        assert_eq!(decode(&encode(&many)), Err(EntryError::TooManySessions(MAX_SESSIONS + 1)));
        let crowded = with(3, &vec![candidate(1); MAX_CANDIDATES + 1]);
        assert_eq!(
            decode(&encode(&[crowded])),
            Err(EntryError::TooManyCandidates { server: ServerId(3), count: MAX_CANDIDATES + 1 })
        );
        assert!(matches!(decode(&vec![b' '; MAX_VALUE + 1]), Err(EntryError::Malformed(_))));
    }

    /// Servers 1 and 2 are this hub's; 7 and 8 another's.
    fn mine(server: ServerId) -> bool {
        server.0 < 5
    }

    #[test]
    fn a_hub_replaces_its_own_sessions_and_keeps_the_others() {
        let old = vec![Session::on(ServerId(7)), Session::on(ServerId(1))];
        // A login on server 2 here, new candidates on server 1: the other hub's session stays.
        let here = vec![with(1, &[candidate(9)]), Session::on(ServerId(2))];
        let merged = merge(&old, &here, mine, &[], true);
        assert_eq!(
            merged,
            vec![Session::on(ServerId(7)), with(1, &[candidate(9)]), Session::on(ServerId(2))]
        );
        // Both sessions here end: only the other hub's is left.
        assert_eq!(merge(&merged, &[], mine, &[], true), vec![Session::on(ServerId(7))]);
        // The other hub was given up: its server is dropped; nothing left.
        assert_eq!(merge(&[Session::on(ServerId(7))], &[], mine, &[ServerId(7)], true), vec![]);
    }

    #[test]
    fn a_dropped_server_still_here_keeps_its_session() {
        // A logout then a login again on server 1 before the write: the registry decides.
        let old = vec![Session::on(ServerId(1))];
        let here = vec![Session::on(ServerId(1))];
        assert_eq!(merge(&old, &here, mine, &[ServerId(1)], true), here);
        // A server that left this hub is dropped, though no longer counted as this hub's.
        let old = vec![Session::on(ServerId(6)), Session::on(ServerId(8))];
        assert_eq!(merge(&old, &[], mine, &[ServerId(6)], true), vec![Session::on(ServerId(8))]);
    }

    #[test]
    fn under_replace_another_hubs_newer_login_is_left_to_win() {
        let theirs = vec![Session::on(ServerId(7))];
        let here = vec![with(1, &[candidate(9)])];
        assert_eq!(merge(&theirs, &here, mine, &[], false), theirs);
        // This hub's own session, with new candidates, replaces the one written before.
        let ours = vec![Session::on(ServerId(1))];
        assert_eq!(merge(&ours, &here, mine, &[], false), here);
        // A move between two servers of this hub.
        let moved = vec![Session::on(ServerId(2))];
        assert_eq!(merge(&ours, &moved, mine, &[], false), moved);
    }
}

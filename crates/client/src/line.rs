//! Lines of the demo protocol.

use std::fmt;

use crate::paths::{self, Candidate, Invite, Kind, Number, Via, format_candidates};

/// A line a client sends to the IM server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientLine {
    /// Log in as `user`; must be the first line.
    Login {
        /// The user name: no spaces.
        user: String,
    },
    /// Send `text` to `to`.
    Send {
        /// The recipient.
        to: String,
        /// The message, possibly with spaces.
        text: String,
    },
    /// Leave.
    Quit,
    /// Where is `user`? Answered by [`ServerLine::Located`].
    Who {
        /// The user asked about.
        user: String,
    },
    /// Tell me when these users come online or go offline (a friends list): answered by one
    /// [`ServerLine::Presence`] per user now, and another on each change.
    Watch {
        /// The users to watch, at least one.
        users: Vec<String>,
    },
    /// Send `text` to every online user but this one.
    All {
        /// The message.
        text: String,
    },
    /// Join a group (a room); answered with `JOINED` once every server can reach this user
    /// through it.
    Join {
        /// The group: no spaces.
        group: String,
    },
    /// Leave a group; answered with `LEFT`.
    Leave {
        /// The group.
        group: String,
    },
    /// Send `text` to every member of `group` but this user.
    Group {
        /// The group.
        group: String,
        /// The message.
        text: String,
    },
    /// A file-transfer message for `to`, relayed unread by the server (see [`crate::transfer`]).
    File {
        /// The peer of the transfer.
        to: String,
        /// The transfer message, as [`crate::transfer::FileMessage`] formats it.
        body: String,
    },
    /// Which UDP port answers the reflexive-address probe? Answered by [`ServerLine::Udp`].
    Udp,
    /// The addresses this client can be reached at directly (at most 8; none is fine). Also
    /// asks for messages as [`ServerLine::Routed`], labelled with their path.
    Candidates {
        /// Local and reflexive addresses.
        candidates: Vec<Candidate>,
    },
    /// Let's open a direct path to `to`: answered by [`ServerLine::Reach`], and relayed to
    /// `to` as an invitation with this client's candidates.
    Offer {
        /// The peer.
        to: String,
        /// SHA-256 of this client's certificate.
        fingerprint: String,
    },
    /// Yes to `to`'s offer: relayed to `to` as an invitation with this client's candidates.
    Answer {
        /// The peer that offered.
        to: String,
        /// SHA-256 of this client's certificate.
        fingerprint: String,
    },
    /// A numbered message for `to`, sent through the server (the peer drops a number it saw on
    /// the direct path).
    Numbered {
        /// The recipient.
        to: String,
        /// Its number.
        number: Number,
        /// Text or file transfer.
        kind: Kind,
        /// What it says.
        body: String,
    },
}

/// A line the IM server sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerLine {
    /// Logged in on the server with this id.
    Ok {
        /// Id of the server the client is on.
        server: u32,
    },
    /// A message for this client.
    Message {
        /// Who sent it.
        from: String,
        /// What they wrote.
        text: String,
    },
    /// A message this client sent could not be delivered.
    Undeliverable {
        /// Whom it was for.
        to: String,
        /// Why (`offline`, `too slow`, ...), with no `)` and no line break.
        reason: String,
        /// What it said.
        text: String,
    },
    /// A request failed, or the server is closing the connection.
    Error {
        /// Why, for the user.
        reason: String,
    },
    /// The answer to [`ClientLine::Who`].
    Located {
        /// The user asked about.
        user: String,
        /// The server they are online on; `None` when offline.
        server: Option<u32>,
    },
    /// A watched user's state: online on a server, or offline.
    Presence {
        /// The watched user.
        user: String,
        /// The server they are online on; `None` when offline.
        server: Option<u32>,
    },
    /// The user logged in elsewhere and this session ends; the server closes the connection.
    Kicked {
        /// Why, for the user.
        reason: String,
    },
    /// The server is drained: log in at `addr` (a client address, `host:port`), then read this
    /// connection until the server closes it (after `KICKED`), so nothing sent here is missed.
    Move {
        /// Where to reconnect.
        addr: String,
    },
    /// A message to a group this client is a member of.
    Group {
        /// The group.
        group: String,
        /// Who sent it.
        from: String,
        /// What they wrote.
        text: String,
    },
    /// A message to every online user.
    Broadcast {
        /// Who sent it.
        from: String,
        /// What they wrote.
        text: String,
    },
    /// This client is a member of `group` now.
    Joined {
        /// The group.
        group: String,
    },
    /// This client left `group`.
    Left {
        /// The group.
        group: String,
    },
    /// A file-transfer message from `from` (see [`crate::transfer`]).
    File {
        /// The peer of the transfer.
        from: String,
        /// The transfer message, as the peer's client formatted it.
        body: String,
    },
    /// The server's link to the cluster's hub went down (`HUB down`) or came back (`HUB up`):
    /// messages sent meanwhile wait on the server and are delivered once it is back. Sent to web
    /// clients only.
    Hub {
        /// Whether the link is up.
        up: bool,
    },
    /// A file-transfer message this client sent could not be delivered: `to` is offline.
    FileUndeliverable {
        /// Whom it was for.
        to: String,
        /// The transfer message.
        body: String,
    },
    /// The answer to [`ClientLine::Udp`]: the probe's port on this server, if it runs one.
    Udp {
        /// The UDP port; `None` when the server answers no probes.
        port: Option<u16>,
    },
    /// The answer to [`ClientLine::Offer`]: `user`'s server and candidates.
    Reach {
        /// The peer.
        user: String,
        /// The server they are online on; `None` when offline.
        server: Option<u32>,
        /// Where they can be reached directly (possibly nowhere).
        candidates: Vec<Candidate>,
    },
    /// A peer's offer or answer of a direct path, relayed by the servers.
    Invite {
        /// The peer.
        from: String,
        /// Its role, certificate fingerprint and candidates.
        invite: Invite,
    },
    /// A message for a client that reported candidates: with the path it came by and, from a
    /// client that numbers them, its number.
    Routed {
        /// Who sent it.
        from: String,
        /// `server` (same server) or `hub`.
        via: Via,
        /// Its number; `None` from a sender that does not number (a web client).
        number: Option<Number>,
        /// Text or file transfer.
        kind: Kind,
        /// What it says.
        body: String,
    },
}

/// A line that is not part of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad line {line:?}: {reason}")]
pub struct LineError {
    line: String,
    reason: &'static str,
}

pub(crate) fn bad(line: &str, reason: &'static str) -> LineError {
    LineError { line: line.chars().take(80).collect(), reason }
}

/// Splits `VERB rest` and `NAME text`; the text may be empty.
fn word(rest: &str) -> (&str, &str) {
    rest.split_once(' ').unwrap_or((rest, ""))
}

impl ClientLine {
    /// Parses one line, without its line ending.
    pub fn parse(line: &str) -> Result<Self, LineError> {
        let (verb, rest) = word(line);
        match verb {
            "LOGIN" if !rest.is_empty() && !rest.contains(' ') => {
                Ok(Self::Login { user: rest.to_owned() })
            }
            "LOGIN" => Err(bad(line, "LOGIN takes one user name without spaces")),
            "SEND" => match word(rest) {
                ("", _) => Err(bad(line, "SEND takes a user and a text")),
                (to, text) => Ok(Self::Send { to: to.to_owned(), text: text.to_owned() }),
            },
            "QUIT" => Ok(Self::Quit),
            "WHO" if !rest.is_empty() && !rest.contains(' ') => {
                Ok(Self::Who { user: rest.to_owned() })
            }
            "WHO" => Err(bad(line, "WHO takes one user name")),
            "WATCH" => match rest.split(' ').filter(|user| !user.is_empty()).collect::<Vec<_>>() {
                users if users.is_empty() => Err(bad(line, "WATCH takes one or more user names")),
                users => Ok(Self::Watch { users: users.into_iter().map(str::to_owned).collect() }),
            },
            "ALL" => Ok(Self::All { text: rest.to_owned() }),
            "JOIN" | "LEAVE" if rest.is_empty() || rest.contains(' ') => {
                Err(bad(line, "JOIN and LEAVE take one group name without spaces"))
            }
            "JOIN" => Ok(Self::Join { group: rest.to_owned() }),
            "LEAVE" => Ok(Self::Leave { group: rest.to_owned() }),
            "GROUP" => match word(rest) {
                ("", _) => Err(bad(line, "GROUP takes a group and a text")),
                (group, text) => Ok(Self::Group { group: group.to_owned(), text: text.to_owned() }),
            },
            "FILE" => match word(rest) {
                ("", _) | (_, "") => Err(bad(line, "FILE takes a user and a transfer message")),
                (to, body) => Ok(Self::File { to: to.to_owned(), body: body.to_owned() }),
            },
            "UDP" if rest.is_empty() => Ok(Self::Udp),
            "CANDIDATES" => paths::parse_candidates(rest.split(' '))
                .map(|candidates| Self::Candidates { candidates })
                .map_err(|_| bad(line, "CANDIDATES takes up to 8 ADDR/l or ADDR/r")),
            "OFFER" | "ANSWER" => match word(rest) {
                (to, fingerprint)
                    if !to.is_empty() && paths::check_fingerprint(fingerprint).is_ok() =>
                {
                    let (to, fingerprint) = (to.to_owned(), fingerprint.to_owned());
                    Ok(if verb == "OFFER" {
                        Self::Offer { to, fingerprint }
                    } else {
                        Self::Answer { to, fingerprint }
                    })
                }
                _ => Err(bad(line, "OFFER and ANSWER take a user and a SHA-256 fingerprint")),
            },
            "PSEND" => match word(rest) {
                (to, numbered) if !to.is_empty() => match paths::numbered(numbered) {
                    Ok((number, kind, body)) => Ok(Self::Numbered {
                        to: to.to_owned(),
                        number,
                        kind,
                        body: body.to_owned(),
                    }),
                    Err(_) => Err(bad(line, "PSEND takes a user, EPOCH.SEQ, m or f, and a body")),
                },
                _ => Err(bad(line, "PSEND takes a user, EPOCH.SEQ, m or f, and a body")),
            },
            _ => Err(bad(
                line,
                "expected LOGIN, SEND, ALL, JOIN, LEAVE, GROUP, WHO, WATCH, FILE, UDP, CANDIDATES, \
                 OFFER, ANSWER, PSEND or QUIT",
            )),
        }
    }
}

impl fmt::Display for ClientLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login { user } => write!(f, "LOGIN {user}"),
            Self::Send { to, text } => write!(f, "SEND {to} {text}"),
            Self::Quit => f.write_str("QUIT"),
            Self::Who { user } => write!(f, "WHO {user}"),
            Self::Watch { users } => write!(f, "WATCH {}", users.join(" ")),
            Self::All { text } => write!(f, "ALL {text}"),
            Self::Join { group } => write!(f, "JOIN {group}"),
            Self::Leave { group } => write!(f, "LEAVE {group}"),
            Self::Group { group, text } => write!(f, "GROUP {group} {text}"),
            Self::File { to, body } => write!(f, "FILE {to} {body}"),
            Self::Udp => f.write_str("UDP"),
            Self::Candidates { candidates } => {
                write!(f, "CANDIDATES {}", format_candidates(candidates))
            }
            Self::Offer { to, fingerprint } => write!(f, "OFFER {to} {fingerprint}"),
            Self::Answer { to, fingerprint } => write!(f, "ANSWER {to} {fingerprint}"),
            Self::Numbered { to, number, kind, body } => {
                write!(f, "PSEND {to} {number} {} {body}", kind.letter())
            }
        }
    }
}

impl ServerLine {
    /// Parses one line, without its line ending.
    pub fn parse(line: &str) -> Result<Self, LineError> {
        let (verb, rest) = word(line);
        match verb {
            "OK" => rest
                .parse()
                .map(|server| Self::Ok { server })
                .map_err(|_| bad(line, "OK takes a server id")),
            "MSG" => match word(rest) {
                ("", _) => Err(bad(line, "MSG takes a sender and a text")),
                (from, text) => Ok(Self::Message { from: from.to_owned(), text: text.to_owned() }),
            },
            "UNDELIVERABLE" => {
                let usage = "UNDELIVERABLE takes a recipient, a (reason) and a text";
                let (to, rest) = word(rest);
                let (reason, text) = rest
                    .strip_prefix('(')
                    .and_then(|rest| rest.split_once(')'))
                    .ok_or_else(|| bad(line, usage))?;
                if to.is_empty() {
                    return Err(bad(line, usage));
                }
                let (to, reason) = (to.to_owned(), reason.to_owned());
                Ok(Self::Undeliverable { to, reason, text: text.trim_start().to_owned() })
            }
            "ERR" => Ok(Self::Error { reason: rest.to_owned() }),
            "LOCATED" => place(line, rest).map(|(user, server)| Self::Located { user, server }),
            "PRESENCE" => place(line, rest).map(|(user, server)| Self::Presence { user, server }),
            "KICKED" => Ok(Self::Kicked { reason: rest.to_owned() }),
            "MOVE" if !rest.is_empty() && !rest.contains(' ') => {
                Ok(Self::Move { addr: rest.to_owned() })
            }
            "MOVE" => Err(bad(line, "MOVE takes one address")),
            "GMSG" => match (word(rest), word(word(rest).1)) {
                (("", _), _) | (_, ("", _)) => {
                    Err(bad(line, "GMSG takes a group, a sender and a text"))
                }
                ((group, _), (from, text)) => Ok(Self::Group {
                    group: group.to_owned(),
                    from: from.to_owned(),
                    text: text.to_owned(),
                }),
            },
            "BCAST" => match word(rest) {
                ("", _) => Err(bad(line, "BCAST takes a sender and a text")),
                (from, text) => {
                    Ok(Self::Broadcast { from: from.to_owned(), text: text.to_owned() })
                }
            },
            "HUB" => match rest {
                "up" => Ok(Self::Hub { up: true }),
                "down" => Ok(Self::Hub { up: false }),
                _ => Err(bad(line, "HUB takes `up` or `down`")),
            },
            "JOINED" if !rest.is_empty() => Ok(Self::Joined { group: rest.to_owned() }),
            "LEFT" if !rest.is_empty() => Ok(Self::Left { group: rest.to_owned() }),
            "FILE" => match word(rest) {
                ("", _) | (_, "") => Err(bad(line, "FILE takes a sender and a transfer message")),
                (from, body) => Ok(Self::File { from: from.to_owned(), body: body.to_owned() }),
            },
            "FILE-UNDELIVERABLE" => match word(rest) {
                ("", _) | (_, "") => {
                    Err(bad(line, "FILE-UNDELIVERABLE takes a recipient and a transfer message"))
                }
                (to, body) => {
                    Ok(Self::FileUndeliverable { to: to.to_owned(), body: body.to_owned() })
                }
            },
            "UDP" => match rest {
                "off" => Ok(Self::Udp { port: None }),
                port => port
                    .parse()
                    .map(|port| Self::Udp { port: Some(port) })
                    .map_err(|_| bad(line, "UDP takes a port or `off`")),
            },
            "REACH" => {
                let usage = "REACH takes a user and `offline`, or a server id and candidates";
                let (user, rest) = word(rest);
                let (server, candidates) = word(rest);
                let user = match user {
                    "" => return Err(bad(line, usage)),
                    user => user.to_owned(),
                };
                if server == "offline" && candidates.is_empty() {
                    return Ok(Self::Reach { user, server: None, candidates: vec![] });
                }
                let server = server.parse().map_err(|_| bad(line, usage))?;
                let candidates =
                    paths::parse_candidates(candidates.split(' ')).map_err(|_| bad(line, usage))?;
                Ok(Self::Reach { user, server: Some(server), candidates })
            }
            "INVITE" => match word(rest) {
                (from, invite) if !from.is_empty() => invite
                    .parse()
                    .map(|invite| Self::Invite { from: from.to_owned(), invite })
                    .map_err(|_| bad(line, "INVITE takes a user and an invitation")),
                _ => Err(bad(line, "INVITE takes a user and an invitation")),
            },
            "PMSG" => {
                let usage = "PMSG takes a user, server or hub, EPOCH.SEQ or -, m or f, and a body";
                let (from, rest) = word(rest);
                let (via, rest) = word(rest);
                let (number, rest) = word(rest);
                let (kind, body) = word(rest);
                let via = match via {
                    "server" => Via::Server,
                    "hub" => Via::Hub,
                    _ => return Err(bad(line, usage)),
                };
                let number = match number {
                    "-" => None,
                    number => Some(number.parse().map_err(|_| bad(line, usage))?),
                };
                let kind = Kind::from_letter(kind).map_err(|_| bad(line, usage))?;
                if from.is_empty() {
                    return Err(bad(line, usage));
                }
                let (from, body) = (from.to_owned(), body.to_owned());
                Ok(Self::Routed { from, via, number, kind, body })
            }
            _ => Err(bad(
                line,
                "expected OK, MSG, GMSG, BCAST, JOINED, LEFT, UNDELIVERABLE, ERR, LOCATED, PRESENCE, \
                 KICKED, MOVE, HUB, FILE, FILE-UNDELIVERABLE, UDP, REACH, INVITE or PMSG",
            )),
        }
    }
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok { server } => write!(f, "OK {server}"),
            Self::Message { from, text } => write!(f, "MSG {from} {text}"),
            Self::Undeliverable { to, reason, text } => {
                // The reason ends at the first `)`: any other would cut it short.
                let reason = reason.replace(')', "]").replace(['\r', '\n'], " ");
                write!(f, "UNDELIVERABLE {to} ({reason}) {text}")
            }
            Self::Error { reason } => write!(f, "ERR {reason}"),
            Self::Located { user, server } => write!(f, "LOCATED {user} {}", Place(*server)),
            Self::Presence { user, server } => write!(f, "PRESENCE {user} {}", Place(*server)),
            Self::Kicked { reason } => write!(f, "KICKED {reason}"),
            Self::Move { addr } => write!(f, "MOVE {addr}"),
            Self::Group { group, from, text } => write!(f, "GMSG {group} {from} {text}"),
            Self::Broadcast { from, text } => write!(f, "BCAST {from} {text}"),
            Self::Joined { group } => write!(f, "JOINED {group}"),
            Self::Left { group } => write!(f, "LEFT {group}"),
            Self::File { from, body } => write!(f, "FILE {from} {body}"),
            Self::FileUndeliverable { to, body } => write!(f, "FILE-UNDELIVERABLE {to} {body}"),
            Self::Hub { up } => f.write_str(if *up { "HUB up" } else { "HUB down" }),
            Self::Udp { port: Some(port) } => write!(f, "UDP {port}"),
            Self::Udp { port: None } => f.write_str("UDP off"),
            Self::Reach { user, server: None, .. } => write!(f, "REACH {user} offline"),
            Self::Reach { user, server: Some(server), candidates } => {
                write!(f, "REACH {user} {server} {}", format_candidates(candidates))
            }
            Self::Invite { from, invite } => write!(f, "INVITE {from} {invite}"),
            Self::Routed { from, via, number, kind, body } => {
                let number = number.map_or_else(|| "-".to_owned(), |number| number.to_string());
                write!(f, "PMSG {from} {} {number} {} {body}", via.label(), kind.letter())
            }
        }
    }
}

/// A user's place on the wire: a server id, or `offline`.
struct Place(Option<u32>);

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(server) => write!(f, "{server}"),
            None => f.write_str("offline"),
        }
    }
}

/// Parses `<user> <server>|offline`.
fn place(line: &str, rest: &str) -> Result<(String, Option<u32>), LineError> {
    let (user, place) = word(rest);
    let server = match place {
        "offline" => None,
        id => Some(
            id.parse().map_err(|_| bad(line, "expected a user and a server id or `offline`"))?,
        ),
    };
    if user.is_empty() {
        return Err(bad(line, "expected a user and a server id or `offline`"));
    }
    Ok((user.to_owned(), server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let client = [
            ClientLine::Login { user: "alice".into() },
            ClientLine::Send { to: "bob".into(), text: "hello there".into() },
            ClientLine::Send { to: "bob".into(), text: String::new() },
            ClientLine::Quit,
            ClientLine::Who { user: "bob".into() },
            ClientLine::Watch { users: vec!["bob".into(), "carol".into()] },
            ClientLine::All { text: "to all of you".into() },
            ClientLine::Join { group: "room".into() },
            ClientLine::Leave { group: "room".into() },
            ClientLine::Group { group: "room".into(), text: "hi room".into() },
            ClientLine::File { to: "bob".into(), body: "ack 7 3".into() },
            ClientLine::Udp,
            ClientLine::Candidates { candidates: vec![] },
            ClientLine::Candidates {
                candidates: vec![
                    crate::paths::parse_candidate("10.0.0.2:4000/l").unwrap(),
                    crate::paths::parse_candidate("1.2.3.4:5/r").unwrap(),
                ],
            },
            ClientLine::Offer { to: "bob".into(), fingerprint: "0a".repeat(32) },
            ClientLine::Answer { to: "bob".into(), fingerprint: "0a".repeat(32) },
            ClientLine::Numbered {
                to: "bob".into(),
                number: Number { epoch: 5, seq: 1 },
                kind: Kind::Text,
                body: "hi  there".into(),
            },
        ];
        for line in client {
            assert_eq!(ClientLine::parse(&line.to_string()), Ok(line));
        }
        let server = [
            ServerLine::Ok { server: 3 },
            ServerLine::Message { from: "alice".into(), text: "hi  you".into() },
            ServerLine::Undeliverable {
                to: "carol".into(),
                reason: "too slow".into(),
                text: "x".into(),
            },
            ServerLine::Error { reason: "no such user".into() },
            ServerLine::Located { user: "bob".into(), server: Some(2) },
            ServerLine::Located { user: "bob".into(), server: None },
            ServerLine::Presence { user: "carol".into(), server: Some(0) },
            ServerLine::Presence { user: "carol".into(), server: None },
            ServerLine::Kicked { reason: "bob logged in on server 1".into() },
            ServerLine::Move { addr: "127.0.0.1:6001".into() },
            ServerLine::Group { group: "room".into(), from: "al".into(), text: "hi  room".into() },
            ServerLine::Broadcast { from: "al".into(), text: "hi all".into() },
            ServerLine::Joined { group: "room".into() },
            ServerLine::Left { group: "room".into() },
            ServerLine::File { from: "alice".into(), body: "offer 7 10 a b.txt".into() },
            ServerLine::FileUndeliverable { to: "bob".into(), body: "chunk 7 0 AAEC".into() },
            ServerLine::Hub { up: true },
            ServerLine::Hub { up: false },
            ServerLine::Udp { port: Some(6000) },
            ServerLine::Udp { port: None },
            ServerLine::Reach { user: "bob".into(), server: None, candidates: vec![] },
            ServerLine::Reach { user: "bob".into(), server: Some(2), candidates: vec![] },
            ServerLine::Reach {
                user: "bob".into(),
                server: Some(0),
                candidates: vec![crate::paths::parse_candidate("1.2.3.4:5/r").unwrap()],
            },
            ServerLine::Invite {
                from: "al".into(),
                invite: format!("offer {} 1.2.3.4:5/r", "0a".repeat(32)).parse().unwrap(),
            },
            ServerLine::Routed {
                from: "al".into(),
                via: Via::Hub,
                number: Some(Number { epoch: 1, seq: 2 }),
                kind: Kind::File,
                body: "ack 7 3".into(),
            },
            ServerLine::Routed {
                from: "al".into(),
                via: Via::Server,
                number: None,
                kind: Kind::Text,
                body: String::new(),
            },
        ];
        for line in server {
            assert_eq!(ServerLine::parse(&line.to_string()), Ok(line));
        }
    }

    #[test]
    fn bad_lines_are_refused() {
        for line in [
            "",
            "HELLO",
            "LOGIN",
            "LOGIN two words",
            "SEND",
            "SEND  text",
            "WHO",
            "WHO a b",
            "WATCH",
            "WATCH  ",
            "JOIN",
            "JOIN a b",
            "GROUP",
            "FILE bob",
            "FILE  x",
            "UDP x",
            "CANDIDATES 1.2.3.4:5/q",
            "OFFER bob xyz",
            "PSEND bob 1 m hi",
        ] {
            assert!(ClientLine::parse(line).is_err(), "{line:?}");
        }
        for line in [
            "",
            "OK x",
            "MSG",
            "MOVE",
            "MOVE a b",
            "NOPE 1",
            "LOCATED bob",
            "PRESENCE bob x",
            "LOCATED  1",
            "GMSG room",
            "BCAST",
            "JOINED",
            "FILE alice",
            "FILE-UNDELIVERABLE",
            "HUB",
            "HUB maybe",
            "UNDELIVERABLE carol x",
            "UNDELIVERABLE carol (offline x",
            "UDP",
            "REACH",
            "REACH bob x",
            "REACH bob 1 nowhere",
            "INVITE al offer x",
            "PMSG al p2p - m hi",
            "PMSG al hub 1 m hi",
        ] {
            assert!(ServerLine::parse(line).is_err(), "{line:?}");
        }
    }
}

//! Lines of the demo protocol.

use std::fmt;

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
            _ => Err(bad(
                line,
                "expected LOGIN, SEND, ALL, JOIN, LEAVE, GROUP, WHO, WATCH, FILE or QUIT",
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
            _ => Err(bad(
                line,
                "expected OK, MSG, GMSG, BCAST, JOINED, LEFT, UNDELIVERABLE, ERR, LOCATED, PRESENCE, \
                 KICKED, MOVE, HUB, FILE or FILE-UNDELIVERABLE",
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
        ] {
            assert!(ServerLine::parse(line).is_err(), "{line:?}");
        }
    }
}

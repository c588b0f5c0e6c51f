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
        /// What it said.
        text: String,
    },
    /// A request failed, or the server is closing the connection.
    Error {
        /// Why, for the user.
        reason: String,
    },
    /// A file-transfer message from `from` (see [`crate::transfer`]).
    File {
        /// The peer of the transfer.
        from: String,
        /// The transfer message, as the peer's client formatted it.
        body: String,
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
            "FILE" => match word(rest) {
                ("", _) | (_, "") => Err(bad(line, "FILE takes a user and a transfer message")),
                (to, body) => Ok(Self::File { to: to.to_owned(), body: body.to_owned() }),
            },
            _ => Err(bad(line, "expected LOGIN, SEND, QUIT or FILE")),
        }
    }
}

impl fmt::Display for ClientLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login { user } => write!(f, "LOGIN {user}"),
            Self::Send { to, text } => write!(f, "SEND {to} {text}"),
            Self::Quit => f.write_str("QUIT"),
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
            "UNDELIVERABLE" => match word(rest) {
                ("", _) => Err(bad(line, "UNDELIVERABLE takes a recipient and a text")),
                (to, text) => Ok(Self::Undeliverable { to: to.to_owned(), text: text.to_owned() }),
            },
            "ERR" => Ok(Self::Error { reason: rest.to_owned() }),
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
            _ => Err(bad(line, "expected OK, MSG, UNDELIVERABLE, ERR, FILE or FILE-UNDELIVERABLE")),
        }
    }
}

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok { server } => write!(f, "OK {server}"),
            Self::Message { from, text } => write!(f, "MSG {from} {text}"),
            Self::Undeliverable { to, text } => write!(f, "UNDELIVERABLE {to} {text}"),
            Self::Error { reason } => write!(f, "ERR {reason}"),
            Self::File { from, body } => write!(f, "FILE {from} {body}"),
            Self::FileUndeliverable { to, body } => write!(f, "FILE-UNDELIVERABLE {to} {body}"),
        }
    }
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
            ClientLine::File { to: "bob".into(), body: "ack 7 3".into() },
        ];
        for line in client {
            assert_eq!(ClientLine::parse(&line.to_string()), Ok(line));
        }
        let server = [
            ServerLine::Ok { server: 3 },
            ServerLine::Message { from: "alice".into(), text: "hi  you".into() },
            ServerLine::Undeliverable { to: "carol".into(), text: "x".into() },
            ServerLine::Error { reason: "no such user".into() },
            ServerLine::File { from: "alice".into(), body: "offer 7 10 a b.txt".into() },
            ServerLine::FileUndeliverable { to: "bob".into(), body: "chunk 7 0 AAEC".into() },
        ];
        for line in server {
            assert_eq!(ServerLine::parse(&line.to_string()), Ok(line));
        }
    }

    #[test]
    fn bad_lines_are_refused() {
        for line in
            ["", "HELLO", "LOGIN", "LOGIN two words", "SEND", "SEND  text", "FILE bob", "FILE  x"]
        {
            assert!(ClientLine::parse(line).is_err(), "{line:?}");
        }
        for line in ["", "OK x", "MSG", "NOPE 1", "FILE alice", "FILE-UNDELIVERABLE"] {
            assert!(ServerLine::parse(line).is_err(), "{line:?}");
        }
    }
}

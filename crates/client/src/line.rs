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
}

/// A line that is not part of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad line {line:?}: {reason}")]
pub struct LineError {
    line: String,
    reason: &'static str,
}

fn bad(line: &str, reason: &'static str) -> LineError {
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
            _ => Err(bad(line, "expected LOGIN, SEND or QUIT")),
        }
    }
}

impl fmt::Display for ClientLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Login { user } => write!(f, "LOGIN {user}"),
            Self::Send { to, text } => write!(f, "SEND {to} {text}"),
            Self::Quit => f.write_str("QUIT"),
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
            _ => Err(bad(line, "expected OK, MSG, UNDELIVERABLE or ERR")),
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
        ];
        for line in client {
            assert_eq!(ClientLine::parse(&line.to_string()), Ok(line));
        }
        let server = [
            ServerLine::Ok { server: 3 },
            ServerLine::Message { from: "alice".into(), text: "hi  you".into() },
            ServerLine::Undeliverable { to: "carol".into(), text: "x".into() },
            ServerLine::Error { reason: "no such user".into() },
        ];
        for line in server {
            assert_eq!(ServerLine::parse(&line.to_string()), Ok(line));
        }
    }

    #[test]
    fn bad_lines_are_refused() {
        for line in ["", "HELLO", "LOGIN", "LOGIN two words", "SEND", "SEND  text"] {
            assert!(ClientLine::parse(line).is_err(), "{line:?}");
        }
        for line in ["", "OK x", "MSG", "NOPE 1"] {
            assert!(ServerLine::parse(line).is_err(), "{line:?}");
        }
    }
}

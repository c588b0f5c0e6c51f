//! The demo client protocol of ACMS: the line protocol spoken between `im-client` and the example
//! IM server, a small async client for it, and the server's side of it over a `Cluster`.
//!
//! The protocol is one UTF-8 line per message, so it can be typed into `nc` by hand:
//!
//! | direction | line | meaning |
//! | --- | --- | --- |
//! | client → server | `LOGIN <user>` | first line: who this client is |
//! | client → server | `SEND <user> <text>` | send text to a user on any server |
//! | client → server | `WHO <user>` | where is user? |
//! | client → server | `WATCH <user> [<user>...]` | tell me when these users come and go |
//! | client → server | `QUIT` | leave |
//! | server → client | `OK <server-id>` | logged in on that server |
//! | server → client | `MSG <from> <text>` | a message arrived |
//! | server → client | `UNDELIVERABLE <to> (<reason>) <text>` | a message could not be delivered: `(offline)`, or the recipient's server's reason (`(too slow)`, `(left the server)`) |
//! | server → client | `ERR <reason>` | a request failed, or the server is closing this client |
//! | server → client | `LOCATED <user> <server-id>\|offline` | the answer to `WHO` |
//! | server → client | `PRESENCE <user> <server-id>\|offline` | a watched user's state, now and on each change |
//! | server → client | `KICKED <reason>` | the user logged in elsewhere; the server closes this client |
//! | client → server | `FILE <user> <message>` | a file-transfer message for a user, relayed unread |
//! | server → client | `FILE <from> <message>` | a file-transfer message from a user |
//! | server → client | `FILE-UNDELIVERABLE <to> <message>` | a file-transfer message came back: offline, or not delivered by the peer's server |
//! | server → client | `MOVE <addr>` | the server is drained: log in at `addr`, then read this connection until it closes |
//! | server → client | `HUB up\|down` | web clients only: the server's link to the hub came back or went down |
//! | client → server | `UDP` | which UDP port answers the reflexive-address probe? |
//! | server → client | `UDP <port>\|off` | the answer |
//! | client → server | `CANDIDATES [<addr>/l\|r ...]` | this client's direct-path candidates (local, reflexive; at most 8); also asks for `PMSG` |
//! | client → server | `OFFER <user> <fingerprint>` | let's open a direct path: answered by `REACH`, relayed to the peer as `INVITE` |
//! | server → client | `REACH <user> offline\|<server-id> [<candidate> ...]` | the peer's place and candidates |
//! | client → server | `ANSWER <user> <fingerprint>` | yes to the peer's offer, relayed as `INVITE` |
//! | server → client | `INVITE <from> offer\|answer <fingerprint> [<candidate> ...]` | a peer's offer or answer, checked by the servers |
//! | client → server | `PSEND <user> <epoch>.<seq> m\|f <body>` | a numbered message (text or file transfer) through the server |
//! | server → client | `PMSG <from> server\|hub <epoch>.<seq>\|- m\|f <body>` | a message, with the path it came by, for a client that sent `CANDIDATES` |
//!
//! A web browser speaks the same lines over a WebSocket, one line per text message
//! ([`server::web`]).
//!
//! # Layout
//! - [`line`]: [`ClientLine`] and [`ServerLine`], parsing and formatting.
//! - [`client`]: [`ImClient`], connect, log in, send, receive.
//! - [`p2p`]: the direct path between two clients (punching, QUIC), tried before the server's;
//!   [`paths`]: its text forms and the path labels.
//! - [`transfer`]: file transfer between two clients: messages, flow control, files on disk.
//! - [`server`]: the IM server's side: per-client sessions, the cluster's events into their
//!   queues ([`server::serve`]), and the web page with its WebSocket ([`server::web`]); the
//!   example `im-server` of `acms-appserver` runs it.

pub mod client;
pub mod line;
pub mod p2p;
pub mod paths;
pub mod server;
pub mod transfer;

pub use client::{ClientError, ImClient};
pub use line::{ClientLine, LineError, ServerLine};

/// Longest line either side accepts, in bytes.
pub const MAX_LINE_LEN: usize = 64 * 1024;

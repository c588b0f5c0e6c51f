//! The reflexive-address probe, a small STUN-like exchange on the IM server's UDP port: a client
//! sends `ACMSPRB1` and an 8-byte transaction id; the server answers `ACMSRFX1`, the same id, and
//! the source address it saw (family byte 4 or 6, port, address, all big-endian). That address is
//! the client's NAT mapping towards the server: its reflexive candidate.
//!
//! The server's [`Responder`] answers only a request of exactly the right size and magic, at most
//! a few per second per source address (a bounded table), and logs what it refuses (those logs
//! are rate-limited the same way): a reply is never larger than a request times 2, so the port is
//! no amplifier.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

const REQUEST_MAGIC: &[u8; 8] = b"ACMSPRB1";
const REPLY_MAGIC: &[u8; 8] = b"ACMSRFX1";
/// A request's exact size: magic and transaction id.
pub const REQUEST_LEN: usize = 16;

/// A probe request for transaction `id`.
pub fn request(id: u64) -> [u8; REQUEST_LEN] {
    let mut datagram = [0; REQUEST_LEN];
    datagram[..8].copy_from_slice(REQUEST_MAGIC);
    datagram[8..].copy_from_slice(&id.to_be_bytes());
    datagram
}

/// Why a datagram is no probe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Not [`REQUEST_LEN`] bytes.
    #[error("a probe request is 16 bytes, this one is {0}")]
    Size(usize),
    /// Not the protocol's magic.
    #[error("not a probe request (bad magic)")]
    Magic,
}

/// Reads a request: its transaction id.
pub fn parse_request(datagram: &[u8]) -> Result<u64, ProbeError> {
    if datagram.len() != REQUEST_LEN {
        return Err(ProbeError::Size(datagram.len()));
    }
    if &datagram[..8] != REQUEST_MAGIC {
        return Err(ProbeError::Magic);
    }
    Ok(u64::from_be_bytes(datagram[8..].try_into().expect("8 bytes")))
}

/// The reply to transaction `id` from `seen`.
pub fn reply(id: u64, seen: SocketAddr) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(35);
    datagram.extend_from_slice(REPLY_MAGIC);
    datagram.extend_from_slice(&id.to_be_bytes());
    match seen.ip() {
        IpAddr::V4(ip) => {
            datagram.push(4);
            datagram.extend_from_slice(&seen.port().to_be_bytes());
            datagram.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            datagram.push(6);
            datagram.extend_from_slice(&seen.port().to_be_bytes());
            datagram.extend_from_slice(&ip.octets());
        }
    }
    datagram
}

/// Reads a reply to transaction `id`: the address the server saw; `None` for anything else.
pub fn parse_reply(id: u64, datagram: &[u8]) -> Option<SocketAddr> {
    let (head, rest) = datagram.split_at_checked(19)?;
    if &head[..8] != REPLY_MAGIC || head[8..16] != id.to_be_bytes() {
        return None;
    }
    let port = u16::from_be_bytes([head[17], head[18]]);
    let ip = match (head[16], rest.len()) {
        (4, 4) => IpAddr::from(<[u8; 4]>::try_from(rest).ok()?),
        (6, 16) => IpAddr::from(<[u8; 16]>::try_from(rest).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How many datagrams one source address may send per second, in a burst at most.
const PER_SECOND: f64 = 5.0;
const BURST: f64 = 10.0;
/// Sources the rate limiter remembers; past it, the table starts again (bounded memory).
const MAX_SOURCES: usize = 4096;

/// What to do with one datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send this reply back to the source.
    Reply(Vec<u8>),
    /// Not a probe: drop it, with a log line.
    Refuse(ProbeError),
    /// Over the source's rate: drop it silently.
    Limited,
}

/// The server's side of the probe, with a per-source token bucket: sans-IO.
#[derive(Debug, Default)]
pub struct Responder {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Responder {
    /// Judges a datagram from `source` that arrived at `now`.
    pub fn handle(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) -> Verdict {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source.ip()) {
            self.buckets.clear();
        }
        let (tokens, last) = self.buckets.entry(source.ip()).or_insert((BURST, now));
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * PER_SECOND).min(BURST);
        *last = now;
        if *tokens < 1.0 {
            return Verdict::Limited;
        }
        *tokens -= 1.0;
        match parse_request(datagram) {
            Ok(id) => Verdict::Reply(reply(id, source)),
            Err(err) => Verdict::Refuse(err),
        }
    }
}

/// Why the probe's socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The setting is neither `off` nor an `IP:port`.
    #[error("the probe address {0:?} is neither `off` nor IP:port")]
    Address(String),
    /// The system refused the address.
    #[error("cannot answer probes on UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The system's reason.
        source: std::io::Error,
    },
}

/// Binds the probe's socket as the server's `udp` setting says: `off` (none), an address, or
/// empty: the TCP listener's address and port, or any port there when UDP has that one taken.
pub async fn bind(udp: &str, listen: SocketAddr) -> Result<Option<UdpSocket>, BindError> {
    let bind = |addr: SocketAddr| async move {
        UdpSocket::bind(addr).await.map_err(|source| BindError::Bind { addr, source })
    };
    match udp {
        "off" => Ok(None),
        "" => match UdpSocket::bind(listen).await {
            Ok(socket) => Ok(Some(socket)),
            Err(err) => {
                warn!(%listen, error = %err, "the listen port is taken on UDP: the probe uses another");
                Ok(Some(bind(SocketAddr::new(listen.ip(), 0)).await?))
            }
        },
        addr => {
            let addr = addr.parse().map_err(|_| BindError::Address(addr.to_owned()))?;
            Ok(Some(bind(addr).await?))
        }
    }
}

/// Answers probes on `socket` until `shutdown`.
pub async fn serve(socket: UdpSocket, shutdown: CancellationToken) {
    let mut responder = Responder::default();
    // One byte more than a request, so that an oversized datagram is seen as such.
    let mut buffer = [0u8; REQUEST_LEN + 1];
    loop {
        let (len, source) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                // An ICMP error of an earlier reply, say: the socket itself is fine.
                Err(err) => { info!(error = %err, "probe socket"); continue; }
            },
        };
        match responder.handle(Instant::now(), source, &buffer[..len]) {
            Verdict::Reply(reply) => {
                if let Err(err) = socket.send_to(&reply, source).await {
                    info!(%source, error = %err, "cannot answer a probe");
                }
            }
            Verdict::Refuse(err) => warn!(%source, error = %err, "bad probe datagram; ignored"),
            Verdict::Limited => {}
        }
    }
}

/// Asks the probe at `server` through `socket` which address it sees: a few tries, each
/// waiting `wait`; `None` when no answer came.
pub async fn ask(socket: &UdpSocket, server: SocketAddr, wait: Duration) -> Option<SocketAddr> {
    let id: u64 = rand::random();
    let mut buffer = [0u8; 64];
    for _ in 0..3 {
        socket.send_to(&request(id), server).await.ok()?;
        let answer = async {
            loop {
                let (len, from) = socket.recv_from(&mut buffer).await.ok()?;
                if from == server {
                    if let Some(seen) = parse_reply(id, &buffer[..len]) {
                        return Some(seen);
                    }
                }
            }
        };
        if let Ok(Some(seen)) = tokio::time::timeout(wait, answer).await {
            return Some(seen);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_with_the_source_address() {
        let mut responder = Responder::default();
        let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let Verdict::Reply(answer) = responder.handle(Instant::now(), source, &request(42)) else {
            panic!("no reply");
        };
        assert!(answer.len() <= 2 * REQUEST_LEN);
        assert_eq!(parse_reply(42, &answer), Some(source));
        assert_eq!(parse_reply(41, &answer), None, "another transaction's reply");
        let v6: SocketAddr = "[2001:db8::7]:9".parse().unwrap();
        assert_eq!(parse_reply(1, &reply(1, v6)), Some(v6));
    }

    #[test]
    fn malformed_and_oversized_datagrams_are_refused() {
        let mut responder = Responder::default();
        let now = Instant::now();
        let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let mut long = request(1).to_vec();
        long.push(0);
        assert_eq!(responder.handle(now, source, &long), Verdict::Refuse(ProbeError::Size(17)));
        assert_eq!(responder.handle(now, source, b""), Verdict::Refuse(ProbeError::Size(0)));
        let mut wrong = request(1);
        wrong[0] = b'X';
        assert_eq!(responder.handle(now, source, &wrong), Verdict::Refuse(ProbeError::Magic));
    }

    #[test]
    fn each_source_is_rate_limited_and_the_table_is_bounded() {
        let mut responder = Responder::default();
        let now = Instant::now();
        let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let answered = (0..100)
            .filter(|_| matches!(responder.handle(now, source, &request(1)), Verdict::Reply(_)))
            .count();
        assert_eq!(answered, BURST as usize, "a burst, then nothing");
        let other: SocketAddr = "203.0.113.10:40000".parse().unwrap();
        assert!(matches!(responder.handle(now, other, &request(1)), Verdict::Reply(_)));
        let later = now + Duration::from_secs(1);
        assert!(matches!(responder.handle(later, source, &request(1)), Verdict::Reply(_)));
        for i in 0..(MAX_SOURCES as u32 * 2) {
            let source = SocketAddr::from((i.to_be_bytes(), 1));
            responder.handle(now, source, &request(1));
        }
        assert!(responder.buckets.len() <= MAX_SOURCES);
    }
}

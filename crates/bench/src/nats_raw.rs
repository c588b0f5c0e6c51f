//! Worker roles on NATS that speak the client protocol themselves over a plain tokio
//! `TcpStream`: the default driver of the throughput runs.
//!
//! # Why not async-nats for throughput
//! The comparison is meant to measure the brokers, so both must be driven with the same,
//! efficient client policy, and the benchmark must control that policy. The reference NATS
//! figures of the issue (about 3.1M msg/s at 64 B, about 0.35 µs of nats-server CPU per message)
//! were measured with the sender writing in 64 KiB batches. `async-nats` cannot be made to do
//! that: it has no batched publish (one `publish` call, through its channel to the connection
//! task, per message), and its subscriber, one `Subscriber` stream per subject fed through
//! channels by the connection task, saturates its core well below what nats-server delivers.
//! Driven through it, the run measured async-nats (about 0.5M msg/s, nats-server idling at
//! 1.45 µs a message), not nats-server.
//!
//! So here, as the ACMS workers do with `Cluster::send_batch` and `Events::recv_batch`:
//! - the sender reads `INFO`, sends `CONNECT {"verbose":false,"pedantic":false}`, and writes
//!   `PUB <subject> <len>\r\n<payload>\r\n` commands accumulated into buffers of
//!   [`crate::wire::batch_msgs`] messages (about 64 KiB), one `write_all` per buffer; it ends
//!   with `PING` and waits for the `PONG`, which proves the server processed every `PUB` (it
//!   handles a connection's operations in order) as the ACMS sender's `flush` does;
//! - the receiver sends one `SUB u<i> <sid>` per user and a `PING`, says READY once the `PONG`
//!   is back, then reads with at least 64 KiB of room a read (as the ACMS app-server link does)
//!   and counts `MSG <subject> <sid> [reply] <len>\r\n<payload>\r\n` frames with the small
//!   incremental parser [`parse_op`] (a frame split across reads waits for the next read; the
//!   server's `PING`s are answered with `PONG`), stopping at N.
//!
//! The round-trip roles here (`--nats-rtt-client raw`) do the same for one message in flight:
//! the client publishes to `echo` with a reply subject it subscribed to, the echo publishes the
//! payload back to the reply subject.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire::{self, RecvCounter, RttResult, SendResult};
use crate::{EchoArgs, RecvArgs, RttArgs, SendArgs};

/// Least room in the read buffer before each read: many frames per system call, as the ACMS
/// app-server link reads.
const READ_CHUNK: usize = 64 * 1024;

/// Longest control line accepted (nats-server's default `max_control_line` is 4 KiB).
const MAX_CONTROL_LINE: usize = 4096;

/// Longest payload accepted (nats-server's hard ceiling is 64 MB).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// The `CONNECT` this client sends: no `+OK` per command, no strict checks.
const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";

/// How long the server may take to answer a `PING` once everything before it is written.
const PONG_TIMEOUT: Duration = Duration::from_secs(120);

/// Subject the round-trip client receives the echoes on.
const RTT_INBOX: &str = "bench.rtt.inbox";

/// One operation sent by the server, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// A message for one of this client's subscriptions.
    Msg {
        /// The subject it was published to.
        subject: &'a [u8],
        /// The subscription id it is delivered for.
        sid: &'a [u8],
        /// The reply subject, if the publisher gave one.
        reply: Option<&'a [u8]>,
        /// The payload.
        payload: &'a [u8],
    },
    /// The server checks the connection: answer `PONG`.
    Ping,
    /// The answer to this client's `PING`.
    Pong,
    /// Acknowledgement (verbose mode only).
    Ok,
    /// A protocol error; the text after `-ERR`.
    Err(&'a [u8]),
    /// Server information; the JSON after `INFO`.
    Info(&'a [u8]),
}

/// Parses the operation at the start of `buf`.
///
/// Returns `Ok(None)` if it has not been read whole yet (a frame split across reads: read more
/// and call again with the same start), else the operation and the bytes it takes.
pub fn parse_op(buf: &[u8]) -> anyhow::Result<Option<(ServerOp<'_>, usize)>> {
    let window = &buf[..buf.len().min(MAX_CONTROL_LINE + 2)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        ensure!(
            buf.len() <= MAX_CONTROL_LINE + 1,
            "no end of line within {MAX_CONTROL_LINE} bytes: {}",
            printable(window)
        );
        return Ok(None);
    };
    let line = buf[..newline].strip_suffix(b"\r").with_context(|| {
        format!("control line not ended by CRLF: {}", printable(&buf[..newline]))
    })?;
    let line_len = newline + 1;
    let (op, args) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(at) => (&line[..at], &line[at + 1..]),
        None => (line, &line[line.len()..]),
    };
    let op = if op.eq_ignore_ascii_case(b"MSG") {
        let mut fields = [&b""[..]; 4];
        let mut count = 0;
        for field in args.split(|&b| b == b' ' || b == b'\t').filter(|f| !f.is_empty()) {
            ensure!(count < fields.len(), "MSG with too many fields: {}", printable(line));
            fields[count] = field;
            count += 1;
        }
        let (subject, sid, reply, len) = match count {
            3 => (fields[0], fields[1], None, fields[2]),
            4 => (fields[0], fields[1], Some(fields[2]), fields[3]),
            _ => bail!("MSG with {count} fields: {}", printable(line)),
        };
        let len = parse_len(len).with_context(|| format!("bad MSG: {}", printable(line)))?;
        let end = line_len + len + 2;
        if buf.len() < end {
            return Ok(None);
        }
        ensure!(&buf[end - 2..end] == b"\r\n", "MSG payload not followed by CRLF");
        let payload = &buf[line_len..end - 2];
        return Ok(Some((ServerOp::Msg { subject, sid, reply, payload }, end)));
    } else if op.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if op.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if op.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        ServerOp::Err(args)
    } else if op.eq_ignore_ascii_case(b"INFO") {
        ServerOp::Info(args)
    } else {
        bail!("unexpected operation from the server: {}", printable(line));
    };
    Ok(Some((op, line_len)))
}

/// A payload length: decimal digits, at most [`MAX_PAYLOAD`].
fn parse_len(digits: &[u8]) -> anyhow::Result<usize> {
    ensure!(!digits.is_empty() && digits.len() <= 9, "bad length {}", printable(digits));
    let mut len = 0usize;
    for &b in digits {
        ensure!(b.is_ascii_digit(), "bad length {}", printable(digits));
        len = len * 10 + usize::from(b - b'0');
    }
    ensure!(len <= MAX_PAYLOAD, "length {len} exceeds {MAX_PAYLOAD}");
    Ok(len)
}

/// Bytes from the wire, shortened and escaped for an error message.
fn printable(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(120)];
    let mut text = shown.escape_ascii().to_string();
    if shown.len() < bytes.len() {
        text.push('…');
    }
    text
}

/// A client connection: the socket and a read buffer parsed in place.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Read bytes live in `buf[start..end]`; parsed operations advance `start`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Conn {
    /// Connects to `url` (`nats://HOST:PORT` or `HOST:PORT`), reads the server's `INFO`, sends
    /// `CONNECT` and waits for the `PONG` of a `PING`, so the server has accepted the client.
    async fn connect(url: &str) -> anyhow::Result<Self> {
        let addr = url.strip_prefix("nats://").unwrap_or(url);
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("no connection to {addr} within 10 s"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Self { stream, buf: vec![0; 2 * READ_CHUNK], start: 0, end: 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match conn.take_op()? {
                Some(ServerOp::Info(_)) => break,
                Some(ServerOp::Err(err)) => bail!("server error: {}", printable(err)),
                Some(_) => bail!("the server did not start with INFO"),
                None => conn.fill_by(deadline).await?,
            }
        }
        conn.write_all(CONNECT).await?;
        conn.ping_pong(Duration::from_secs(10)).await?;
        Ok(conn)
    }

    /// The next whole operation already read, if any, taken off the buffer.
    fn take_op(&mut self) -> anyhow::Result<Option<ServerOp<'_>>> {
        let Some((op, len)) = parse_op(&self.buf[self.start..self.end])? else {
            return Ok(None);
        };
        self.start += len;
        Ok(Some(op))
    }

    /// Reads what the socket has, after moving the unparsed rest (at most one partial frame)
    /// to the front, with at least [`READ_CHUNK`] of room; `Ok(false)` once the server closed
    /// the connection. Cancel-safe: nothing is lost if the read is dropped before it completes.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < READ_CHUNK {
            // A frame longer than the buffer: make room for it.
            self.buf.resize(self.end + READ_CHUNK, 0);
        }
        let read = self.stream.read(&mut self.buf[self.end..]).await?;
        self.end += read;
        Ok(read > 0)
    }

    /// [`Conn::fill`] with a deadline, failing at the end of the stream.
    async fn fill_by(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let read = tokio::time::timeout_at(deadline.into(), self.fill())
            .await
            .context("no answer from the server in time")??;
        ensure!(read, "the server closed the connection");
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Sends `PING` and waits up to `timeout` for the `PONG`: then the server has processed
    /// everything this client sent before. Answers the server's `PING`s meanwhile; a message
    /// or an error is a failure.
    async fn ping_pong(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.write_all(b"PING\r\n").await?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.take_op()? {
                Some(ServerOp::Pong) => return Ok(()),
                Some(ServerOp::Ping) => self.write_all(b"PONG\r\n").await?,
                Some(ServerOp::Err(err)) => bail!("server error: {}", printable(err)),
                Some(ServerOp::Msg { subject, .. }) => {
                    bail!("unexpected message on {} before PONG", printable(subject))
                }
                Some(ServerOp::Ok | ServerOp::Info(_)) => {}
                None => self.fill_by(deadline).await?,
            }
        }
    }
}

/// Receiver: one subscription per user, counts messages until N arrived.
pub fn recv(args: RecvArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let mut done = wire::watch_stdin();
        let mut conn = Conn::connect(&args.addr).await?;
        let mut subs = Vec::with_capacity(args.users as usize * 16);
        for i in 0..args.users {
            subs.extend_from_slice(format!("SUB {} {}\r\n", wire::user_name(i), i + 1).as_bytes());
        }
        conn.write_all(&subs).await?;
        drop(subs);
        conn.ping_pong(PONG_TIMEOUT).await?;
        wire::emit(wire::READY, &wire::Ready { users: args.users })?;

        let mut counter = RecvCounter::new(args.n);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let (mut timed_out, mut disconnects, mut slow_consumer_events) = (false, 0, 0);
        while !counter.complete() {
            tokio::select! {
                read = conn.fill() => {
                    if !read? {
                        eprintln!("nats: the server closed the connection");
                        disconnects += 1;
                        break;
                    }
                    let (mut messages, mut bytes, mut pings) = (0, 0, 0);
                    while let Some(op) = conn.take_op()? {
                        match op {
                            ServerOp::Msg { payload, .. } => {
                                messages += 1;
                                bytes += payload.len() as u64;
                            }
                            ServerOp::Ping => pings += 1,
                            ServerOp::Err(err) => {
                                let err = printable(err);
                                eprintln!("nats: server error: {err}");
                                if err.to_ascii_lowercase().contains("slow consumer") {
                                    slow_consumer_events += 1;
                                }
                            }
                            ServerOp::Pong | ServerOp::Ok | ServerOp::Info(_) => {}
                        }
                    }
                    counter.add(messages, bytes);
                    for _ in 0..pings {
                        conn.write_all(b"PONG\r\n").await?;
                    }
                }
                _ = tick.tick() => {
                    if counter.gave_up(*done.borrow_and_update()) {
                        timed_out = true;
                        break;
                    }
                }
            }
        }
        let mut result = counter.result();
        result.timed_out = timed_out;
        result.disconnects = disconnects;
        result.slow_consumer_events = slow_consumer_events;
        result.policy =
            format!("raw: {} SUBs, MSG frames parsed from reads of >= 64 KiB", args.users);
        wire::emit(wire::RESULT, &result)
    })
}

/// Sender: publishes N messages of the payload size to uniformly random users' subjects, a
/// batch of PUB commands per write, then waits for the `PONG` of a final `PING`.
pub fn send(args: SendArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let mut conn = Conn::connect(&args.addr).await?;
        let heads: Vec<Vec<u8>> = (0..args.users)
            .map(|i| format!("PUB {} {}\r\n", wire::user_name(i), args.size).into_bytes())
            .collect();
        let payload = wire::payload(args.size);
        let per_batch = wire::batch_msgs(args.size, args.batch_bytes) as u64;
        let longest_head = heads.iter().map(Vec::len).max().unwrap_or_default();
        let mut out = Vec::with_capacity(per_batch as usize * (longest_head + args.size + 2));
        let mut rng = SmallRng::seed_from_u64(args.seed);

        let (start, start_ns) = (Instant::now(), crate::sys::unix_ns());
        let cpu0 = crate::sys::cpu_time("self")?;
        let (mut left, mut writes) = (args.n, 0);
        while left > 0 {
            let count = per_batch.min(left);
            for _ in 0..count {
                out.extend_from_slice(&heads[rng.random_range(0..heads.len())]);
                out.extend_from_slice(&payload);
                out.extend_from_slice(b"\r\n");
            }
            conn.write_all(&out).await?;
            out.clear();
            writes += 1;
            left -= count;
        }
        let queued = start.elapsed();
        conn.ping_pong(PONG_TIMEOUT).await?;
        let elapsed = start.elapsed();
        let cpu = crate::sys::cpu_time("self")?.saturating_sub(cpu0);
        wire::emit(
            wire::RESULT,
            &SendResult {
                sent: args.n,
                start_ns,
                queued_s: queued.as_secs_f64(),
                elapsed_s: elapsed.as_secs_f64(),
                msg_per_s: args.n as f64 / elapsed.as_secs_f64(),
                cpu_s: cpu.as_secs_f64(),
                undeliverable: 0,
                policy: format!(
                    "raw: {per_batch} PUB commands per write_all, PING/PONG at the end"
                ),
                batches: writes,
            },
        )
    })
}

/// Echo: answers every message on subject `echo` by publishing its payload to its reply subject;
/// what one read brings is answered with one write.
pub fn echo(args: EchoArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let mut conn = Conn::connect(&args.addr).await?;
        conn.write_all(b"SUB echo 1\r\n").await?;
        conn.ping_pong(Duration::from_secs(10)).await?;
        wire::emit(wire::READY, &wire::Ready { users: 1 })?;
        let mut out = Vec::with_capacity(READ_CHUNK);
        loop {
            if !conn.fill().await? {
                return Ok(());
            }
            while let Some(op) = conn.take_op()? {
                match op {
                    ServerOp::Msg { reply: Some(reply), payload, .. } => {
                        out.extend_from_slice(b"PUB ");
                        out.extend_from_slice(reply);
                        out.extend_from_slice(format!(" {}\r\n", payload.len()).as_bytes());
                        out.extend_from_slice(payload);
                        out.extend_from_slice(b"\r\n");
                    }
                    ServerOp::Ping => out.extend_from_slice(b"PONG\r\n"),
                    ServerOp::Err(err) => bail!("server error: {}", printable(err)),
                    _ => {}
                }
            }
            if !out.is_empty() {
                conn.write_all(&out).await?;
                out.clear();
            }
        }
    })
}

/// Round-trip client: one message in flight to `echo` with a reply subject, timed.
pub fn rtt(args: RttArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let mut conn = Conn::connect(&args.addr).await?;
        conn.write_all(format!("SUB {RTT_INBOX} 1\r\n").as_bytes()).await?;
        conn.ping_pong(Duration::from_secs(10)).await?;
        let payload = wire::payload(args.size);
        let mut request = format!("PUB echo {RTT_INBOX} {}\r\n", args.size).into_bytes();
        request.extend_from_slice(&payload);
        request.extend_from_slice(b"\r\n");
        let mut hist = wire::rtt_histogram();
        for i in 0..args.warmup + args.iterations {
            let start = Instant::now();
            conn.write_all(&request).await?;
            let deadline = start + Duration::from_secs(10);
            loop {
                match conn.take_op()? {
                    Some(ServerOp::Msg { payload: back, .. }) => {
                        ensure!(
                            back.len() == payload.len(),
                            "echo of {} bytes for {} sent",
                            back.len(),
                            payload.len()
                        );
                        break;
                    }
                    Some(ServerOp::Ping) => conn.write_all(b"PONG\r\n").await?,
                    Some(ServerOp::Err(err)) => bail!("server error: {}", printable(err)),
                    Some(_) => {}
                    None => conn.fill_by(deadline).await.context("no echo within 10 s")?,
                }
            }
            let elapsed = start.elapsed();
            if i >= args.warmup {
                hist.saturating_record(elapsed.as_nanos() as u64);
            }
        }
        wire::emit(wire::RESULT, &RttResult::from_histogram(&hist, args.warmup, args.size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(
        subject: &'a [u8],
        sid: &'a [u8],
        reply: Option<&'a [u8]>,
        payload: &'a [u8],
    ) -> ServerOp<'a> {
        ServerOp::Msg { subject, sid, reply, payload }
    }

    /// Every operation of `wire`, parsed as a reader would that gets it in pieces of `step`.
    fn parse_in_pieces(wire: &[u8], step: usize) -> Vec<String> {
        let mut ops = Vec::new();
        let (mut start, mut end) = (0, 0);
        while start < wire.len() {
            match parse_op(&wire[start..end]).unwrap() {
                Some((op, len)) => {
                    ops.push(format!("{op:?}"));
                    start += len;
                }
                None => {
                    assert!(end < wire.len(), "incomplete at the end: {:?}", &wire[start..]);
                    end = (end + step).min(wire.len());
                }
            }
        }
        ops
    }

    #[test]
    fn parses_each_operation() {
        let cases: [(&[u8], ServerOp<'_>); 7] = [
            (b"MSG u1 7 5\r\nhello\r\n", msg(b"u1", b"7", None, b"hello")),
            (b"MSG u1 7 _INBOX.x 2\r\nhi\r\n", msg(b"u1", b"7", Some(b"_INBOX.x"), b"hi")),
            (b"msg  u1\t7   0\r\n\r\n", msg(b"u1", b"7", None, b"")),
            (b"PING\r\n", ServerOp::Ping),
            (b"PONG\r\n", ServerOp::Pong),
            (b"-ERR 'Slow Consumer'\r\n", ServerOp::Err(b"'Slow Consumer'")),
            (b"INFO {\"a\":1}\r\n", ServerOp::Info(b"{\"a\":1}")),
        ];
        for (wire, op) in cases {
            assert_eq!(parse_op(wire).unwrap(), Some((op, wire.len())), "{wire:?}");
            for cut in 0..wire.len() {
                assert_eq!(parse_op(&wire[..cut]).unwrap(), None, "{wire:?} cut at {cut}");
            }
        }
        assert_eq!(parse_op(b"+OK\r\nPING\r\n").unwrap(), Some((ServerOp::Ok, 5)));
    }

    #[test]
    fn payload_may_hold_anything() {
        let wire = b"MSG s 1 6\r\nPING\r\n\r\nPONG\r\n";
        assert_eq!(parse_op(wire).unwrap(), Some((msg(b"s", b"1", None, b"PING\r\n"), 19)));
    }

    #[test]
    fn frames_split_anywhere_parse_alike() {
        let mut wire = Vec::new();
        for i in 0..50 {
            let payload: Vec<u8> = (0..i * 7).map(|b| (b % 251) as u8).collect();
            wire.extend_from_slice(format!("MSG u{i} {i} {}\r\n", payload.len()).as_bytes());
            wire.extend_from_slice(&payload);
            wire.extend_from_slice(b"\r\n");
            if i % 10 == 0 {
                wire.extend_from_slice(b"PING\r\n");
            }
        }
        let whole = parse_in_pieces(&wire, wire.len());
        assert_eq!(whole.len(), 55);
        for step in [1, 2, 3, 7, 64, 1000] {
            assert_eq!(parse_in_pieces(&wire, step), whole, "pieces of {step}");
        }
    }

    #[test]
    fn rejects_what_is_not_the_protocol() {
        for bad in [
            &b"MSG u1 7\r\n"[..],
            b"MSG u1 7 a b 5\r\n",
            b"MSG u1 7 5x\r\nhello\r\n",
            b"MSG u1 7 3\r\nhello\r\n",
            b"MSG u1 7 5\nhello\r\n",
            b"HELLO\r\n",
        ] {
            assert!(parse_op(bad).is_err(), "{bad:?}");
        }
        assert!(parse_op(&[b'x'; MAX_CONTROL_LINE + 10]).is_err());
        assert_eq!(parse_op(&[b'x'; 100]).unwrap(), None);
    }
}

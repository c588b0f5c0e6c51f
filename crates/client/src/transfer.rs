//! File transfer between two clients, in chunks, with flow control end to end.
//!
//! The servers and the hub relay the transfer's messages without reading them: a client sends
//! `FILE <peer> <message>` lines, the IM server wraps `<message>` into an opaque cluster payload
//! (see [`payload`]) and the peer's server hands it over as `FILE <sender> <message>`. The
//! messages, as [`FileMessage`] formats them:
//!
//! | message | from | meaning |
//! | --- | --- | --- |
//! | `offer <id> <size> <name>` | sender | wants to send `size` bytes as `name` |
//! | `accept <id>` | receiver | the file is open; send |
//! | `chunk <id> <index> <base64>` | sender | bytes `index * CHUNK_LEN ..` of the file |
//! | `ack <id> <count>` | receiver | the first `count` chunks are written |
//! | `end <id> <sha256>` | sender | no more chunks; the SHA-256 of the whole file, in hex |
//! | `done <id> <sha256>` | receiver | the file is complete and its SHA-256 matches |
//! | `abort <id> <reason>` | either | the transfer is given up, for this reason |
//!
//! The sender keeps at most [`WINDOW`] chunks unacknowledged, so every hop holds at most that
//! much of a transfer; a peer that sends nothing for the transfer timeout ends the transfer with
//! an error on the other side. docs/FILE_TRANSFER.md tells the whole design.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::line::{LineError, bad};

/// Bytes of the file in one chunk: base64 makes 43,692 characters of it, well under the line
/// limit ([`crate::MAX_LINE_LEN`]).
pub const CHUNK_LEN: usize = 32 * 1024;

/// Chunks the sender may have sent and not seen acknowledged: 512 KiB of file, about 700 KiB
/// of lines, in flight per transfer, enough to keep a local link busy.
pub const WINDOW: u64 = 16;

/// First byte of a cluster payload that carries a transfer message. It never begins UTF-8
/// text, so a server tells file messages from chat messages without any other framing.
pub const PAYLOAD_TAG: u8 = 0xFF;

/// The cluster payload that carries transfer message `body`.
pub fn payload(body: &str) -> Bytes {
    let mut payload = BytesMut::with_capacity(1 + body.len());
    payload.put_u8(PAYLOAD_TAG);
    payload.put_slice(body.as_bytes());
    payload.freeze()
}

/// The transfer message in a cluster payload, if it carries one (`None` for chat text).
pub fn from_payload(payload: &[u8]) -> Option<Result<&str, std::str::Utf8Error>> {
    match payload.split_first() {
        Some((&PAYLOAD_TAG, body)) => Some(std::str::from_utf8(body)),
        _ => None,
    }
}

/// One message of a transfer, between the two clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMessage {
    /// The sender proposes a file.
    Offer {
        /// The transfer, chosen by the sender, unique among its transfers to this peer.
        id: u64,
        /// Length of the file in bytes.
        size: u64,
        /// The file's name, without any directory; the receiver sanitizes it again.
        name: String,
    },
    /// The receiver is ready for chunks.
    Accept {
        /// The transfer.
        id: u64,
    },
    /// A piece of the file.
    Chunk {
        /// The transfer.
        id: u64,
        /// Number of the chunk, from 0, in order.
        index: u64,
        /// At most [`CHUNK_LEN`] bytes.
        data: Vec<u8>,
    },
    /// The receiver wrote the first `count` chunks.
    Ack {
        /// The transfer.
        id: u64,
        /// Chunks written so far.
        count: u64,
    },
    /// The sender sent every chunk.
    End {
        /// The transfer.
        id: u64,
        /// SHA-256 of the whole file, lowercase hex.
        sha256: String,
    },
    /// The receiver has the whole file and its checksum matches.
    Done {
        /// The transfer.
        id: u64,
        /// SHA-256 of the bytes received, lowercase hex.
        sha256: String,
    },
    /// Either side gives the transfer up.
    Abort {
        /// The transfer.
        id: u64,
        /// Why, for the user.
        reason: String,
    },
}

impl FileMessage {
    /// The transfer this message belongs to.
    pub fn id(&self) -> u64 {
        match self {
            Self::Offer { id, .. }
            | Self::Accept { id }
            | Self::Chunk { id, .. }
            | Self::Ack { id, .. }
            | Self::End { id, .. }
            | Self::Done { id, .. }
            | Self::Abort { id, .. } => *id,
        }
    }

    /// Parses the body of a `FILE` line.
    pub fn parse(body: &str) -> Result<Self, LineError> {
        let mut words = body.splitn(3, ' ');
        let verb = words.next().unwrap_or_default();
        let id = words.next().and_then(|id| id.parse().ok());
        let rest = words.next().unwrap_or_default();
        let Some(id) = id else {
            return Err(bad(body, "a transfer message is `<verb> <id> ...`"));
        };
        let number_and_rest = |what| {
            let (number, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            number.parse::<u64>().map(|number| (number, tail)).map_err(|_| bad(body, what))
        };
        let hex = |rest: &str| {
            if rest.len() == 64 && rest.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                Ok(rest.to_ascii_lowercase())
            } else {
                Err(bad(body, "a checksum is 64 hex digits"))
            }
        };
        match verb {
            "offer" => {
                let (size, name) = number_and_rest("offer takes a size and a name")?;
                if name.is_empty() {
                    return Err(bad(body, "offer takes a size and a name"));
                }
                Ok(Self::Offer { id, size, name: name.to_owned() })
            }
            "accept" => Ok(Self::Accept { id }),
            "chunk" => {
                let (index, data) = number_and_rest("chunk takes an index and base64 data")?;
                let data =
                    BASE64.decode(data).map_err(|_| bad(body, "chunk data is not base64"))?;
                if data.len() > CHUNK_LEN {
                    return Err(bad(body, "chunk longer than CHUNK_LEN"));
                }
                Ok(Self::Chunk { id, index, data })
            }
            "ack" => Ok(Self::Ack { id, count: number_and_rest("ack takes a count")?.0 }),
            "end" => Ok(Self::End { id, sha256: hex(rest)? }),
            "done" => Ok(Self::Done { id, sha256: hex(rest)? }),
            "abort" => Ok(Self::Abort { id, reason: rest.to_owned() }),
            _ => Err(bad(body, "expected offer, accept, chunk, ack, end, done or abort")),
        }
    }
}

impl fmt::Display for FileMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Offer { id, size, name } => write!(f, "offer {id} {size} {name}"),
            Self::Accept { id } => write!(f, "accept {id}"),
            Self::Chunk { id, index, data } => {
                write!(f, "chunk {id} {index} {}", BASE64.encode(data))
            }
            Self::Ack { id, count } => write!(f, "ack {id} {count}"),
            Self::End { id, sha256 } => write!(f, "end {id} {sha256}"),
            Self::Done { id, sha256 } => write!(f, "done {id} {sha256}"),
            // A reason is one line, whatever the peer's error said.
            Self::Abort { id, reason } => {
                write!(f, "abort {id} {}", reason.replace(['\r', '\n'], " "))
            }
        }
    }
}

/// A file name safe to create inside the download directory: its last path component only
/// (either kind of slash), no control characters, no leading dot (no `..`, no hidden files),
/// at most 200 bytes; `download` when nothing is left.
pub fn sanitize_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String =
        last.chars().map(|c| if c.is_control() { '_' } else { c }).collect::<String>();
    let clean = clean.trim().trim_start_matches('.').trim();
    let mut end = clean.len().min(200);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    match &clean[..end] {
        "" => "download".to_owned(),
        name => name.to_owned(),
    }
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The peer is not online anywhere.
    #[error("{0} is offline")]
    Offline(String),
    /// The peer sent nothing for the transfer timeout.
    #[error("no progress from {peer} for {timeout:?}; giving up")]
    Stalled {
        /// The peer.
        peer: String,
        /// The timeout in force.
        timeout: Duration,
    },
    /// The peer gave the transfer up.
    #[error("{peer} aborted the transfer: {reason}")]
    Aborted {
        /// The peer.
        peer: String,
        /// What the peer said.
        reason: String,
    },
    /// The bytes received do not have the checksum the sender computed.
    #[error("checksum mismatch: sender's sha256 {expected}, received bytes' sha256 {actual}")]
    Checksum {
        /// What the sender said.
        expected: String,
        /// What the received bytes have.
        actual: String,
    },
    /// The peer broke the transfer protocol.
    #[error("{0}")]
    Protocol(String),
    /// The peer sent more than the window allows, faster than this client could write it.
    #[error("{0} sent past the flow-control window")]
    Overrun(String),
}

impl TransferError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Whether the peer already knows (it ended the transfer, or cannot be reached).
    fn peer_knows(&self) -> bool {
        matches!(self, Self::Offline(_) | Self::Aborted { .. })
    }
}

/// Which way a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This client sends.
    Send,
    /// This client receives.
    Receive,
}

/// A finished transfer.
#[derive(Debug)]
pub struct Finished {
    /// Which way it went.
    pub direction: Direction,
    /// The other client.
    pub peer: String,
    /// The file's name as offered.
    pub name: String,
    /// What became of it.
    pub result: Result<Summary, TransferError>,
}

/// A transfer that completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Bytes transferred.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex, the same on both sides.
    pub sha256: String,
    /// Where the receiver put the file (the sender's own file for the sender).
    pub path: PathBuf,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, to) = match self.direction {
            Direction::Send => ("sent", "to"),
            Direction::Receive => ("received", "from"),
        };
        let (name, peer) = (&self.name, &self.peer);
        match &self.result {
            Ok(Summary { bytes, sha256, path }) => write!(
                f,
                "{verb} {name} {to} {peer}: {bytes} bytes, sha256 {sha256}, {} ({})",
                path.display(),
                match self.direction {
                    Direction::Send => "checksum confirmed by the receiver",
                    Direction::Receive => "checksum verified",
                }
            ),
            Err(err) => write!(f, "file transfer of {name} {to} {peer} failed: {err}"),
        }
    }
}

/// What a transfer task gets from the connection.
#[derive(Debug)]
enum Reply {
    Message(FileMessage),
    /// A message of this transfer came back: the peer is offline.
    Undeliverable,
}

/// Outgoing transfer messages for the connection to send: `(peer, message)`.
pub type Outbox = mpsc::Receiver<(String, FileMessage)>;

type Key = (String, u64);

/// The transfers of one client, each run by a task of its own.
///
/// The connection loop hands it every `FILE` line ([`Transfers::handle`]), sends what comes out
/// of the [`Outbox`], and reports what [`Transfers::next_finished`] returns.
#[derive(Debug)]
pub struct Transfers {
    download_dir: PathBuf,
    timeout: Duration,
    progress: MultiProgress,
    out: mpsc::Sender<(String, FileMessage)>,
    sending: HashMap<Key, mpsc::Sender<Reply>>,
    receiving: HashMap<Key, mpsc::Sender<Reply>>,
    tasks: JoinSet<(Key, Finished)>,
    next_id: u64,
}

impl Transfers {
    /// Transfers that receive into `download_dir` and give up on a peer silent for `timeout`;
    /// progress bars go to stderr when it is a terminal.
    pub fn new(download_dir: PathBuf, timeout: Duration) -> (Self, Outbox) {
        let (out, outbox) = mpsc::channel(2 * WINDOW as usize);
        // Ids only need to differ between this client's transfers to one peer, and from those
        // of a client that ran before under the same name.
        let next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_micros() as u64);
        let transfers = Self {
            download_dir,
            timeout,
            progress: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            out,
            sending: HashMap::new(),
            receiving: HashMap::new(),
            tasks: JoinSet::new(),
            next_id,
        };
        (transfers, outbox)
    }

    /// The progress bars: print through [`MultiProgress::suspend`] so lines do not tear them.
    pub fn progress(&self) -> &MultiProgress {
        &self.progress
    }

    /// Transfers this client is sending.
    pub fn sending(&self) -> usize {
        self.sending.len()
    }

    /// Transfers running either way.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Starts sending the file at `path` to `to`.
    pub fn send_file(&mut self, to: &str, path: PathBuf) {
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::channel(WINDOW as usize + 4);
        let key = (to.to_owned(), id);
        self.sending.insert(key.clone(), tx);
        let name = sanitize_name(&path.file_name().unwrap_or_default().to_string_lossy());
        let bar = self.bar(format!("{name} → {to}"));
        let peer = Peer { name: to.to_owned(), id, out: self.out.clone(), timeout: self.timeout };
        self.tasks.spawn(async move {
            let result = peer.run(send(&peer, &path, &name, rx, &bar)).await;
            bar.finish_and_clear();
            let finished = Finished { direction: Direction::Send, peer: peer.name, name, result };
            (key, finished)
        });
    }

    /// Takes one transfer message from `from`. An error means the message was not understood;
    /// the transfers carry on.
    pub fn handle(&mut self, from: &str, body: &str) -> Result<(), LineError> {
        let message = FileMessage::parse(body)?;
        let key = (from.to_owned(), message.id());
        let to_sender = matches!(
            message,
            FileMessage::Accept { .. } | FileMessage::Ack { .. } | FileMessage::Done { .. }
        );
        match message {
            FileMessage::Offer { id, size, name } => match self.receiving.entry(key.clone()) {
                Entry::Occupied(_) => Self::reply(&self.out, from, id, "duplicate transfer id"),
                Entry::Vacant(slot) => {
                    let (tx, rx) = mpsc::channel(WINDOW as usize + 4);
                    slot.insert(tx);
                    self.receive_file(key, size, name, rx);
                }
            },
            FileMessage::Abort { .. } => {
                // An abort is never answered, so two sides that both gave up do not ping-pong.
                for map in [&mut self.sending, &mut self.receiving] {
                    if let Some(task) = map.get(&key) {
                        let _ = task.try_send(Reply::Message(message.clone()));
                    }
                }
            }
            message => {
                let map = if to_sender { &mut self.sending } else { &mut self.receiving };
                let overrun = match map.get(&key) {
                    Some(task) => task.try_send(Reply::Message(message)).is_err(),
                    // Finished or never started here: tell the peer so it stops at once,
                    // unless this was the last word of a transfer that just ended.
                    None => {
                        if !matches!(message, FileMessage::Done { .. }) {
                            Self::reply(&self.out, from, key.1, "no such transfer");
                        }
                        false
                    }
                };
                if overrun {
                    // The peer ignored the window. Dropping the task's inbox ends it with an
                    // error.
                    map.remove(&key);
                }
            }
        }
        Ok(())
    }

    /// Takes a transfer message to `to` that came back undeliverable.
    pub fn handle_undeliverable(&mut self, to: &str, body: &str) -> Result<(), LineError> {
        let key = (to.to_owned(), FileMessage::parse(body)?.id());
        for map in [&mut self.sending, &mut self.receiving] {
            if let Some(task) = map.get(&key) {
                let _ = task.try_send(Reply::Undeliverable);
            }
        }
        Ok(())
    }

    /// The next transfer to finish, waiting for one; `None` when none is running.
    pub async fn next_finished(&mut self) -> Option<Finished> {
        loop {
            match self.tasks.join_next().await? {
                Ok((key, finished)) => {
                    match finished.direction {
                        Direction::Send => self.sending.remove(&key),
                        Direction::Receive => self.receiving.remove(&key),
                    };
                    return Some(finished);
                }
                // Only aborted by `shutdown`, and a panic is a bug to show, not to hide.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => {}
            }
        }
    }

    /// Ends every transfer: the peers are told `reason`, partial files are removed. Returns
    /// the messages to send the peers before leaving.
    pub async fn shutdown(&mut self, reason: &str) -> Vec<(String, FileMessage)> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let mut farewells = Vec::new();
        for ((peer, id), _) in self.sending.drain().chain(self.receiving.drain()) {
            farewells.push((peer, FileMessage::Abort { id, reason: reason.to_owned() }));
        }
        farewells
    }

    fn receive_file(&mut self, key: Key, size: u64, offered: String, rx: mpsc::Receiver<Reply>) {
        let name = sanitize_name(&offered);
        let bar = self.bar(format!("{name} ← {}", key.0));
        bar.set_length(size);
        let peer =
            Peer { name: key.0.clone(), id: key.1, out: self.out.clone(), timeout: self.timeout };
        let dir = self.download_dir.clone();
        let progress = self.progress.clone();
        self.tasks.spawn(async move {
            let result = peer.run(receive(&peer, size, &dir, &name, rx, &bar, &progress)).await;
            bar.finish_and_clear();
            let finished =
                Finished { direction: Direction::Receive, peer: peer.name, name: offered, result };
            (key, finished)
        });
    }

    /// Turns a peer's message away; apart from `self` so it can be called while a map of
    /// transfers is borrowed.
    fn reply(out: &mpsc::Sender<(String, FileMessage)>, to: &str, id: u64, reason: &str) {
        // Best effort: a full outbox means the connection is busy with live transfers.
        let _ = out.try_send((to.to_owned(), FileMessage::Abort { id, reason: reason.into() }));
    }

    fn bar(&self, message: String) -> ProgressBar {
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        self.progress.add(ProgressBar::new(0).with_style(style).with_message(message))
    }
}

/// The other end of one transfer, as its task sees it.
#[derive(Debug)]
struct Peer {
    name: String,
    id: u64,
    out: mpsc::Sender<(String, FileMessage)>,
    timeout: Duration,
}

impl Peer {
    async fn send(&self, message: FileMessage) {
        // Closed only when the client is leaving, and then this task is being cancelled.
        let _ = self.out.send((self.name.clone(), message)).await;
    }

    /// The next message of the transfer, within the timeout. Aborts and undeliverables from
    /// the peer end the transfer here.
    async fn next(&self, inbox: &mut mpsc::Receiver<Reply>) -> Result<FileMessage, TransferError> {
        match tokio::time::timeout(self.timeout, inbox.recv()).await {
            Err(_) => {
                Err(TransferError::Stalled { peer: self.name.clone(), timeout: self.timeout })
            }
            // The connection dropped this transfer's inbox: it overflowed.
            Ok(None) => Err(TransferError::Overrun(self.name.clone())),
            Ok(Some(reply)) => self.classify(reply),
        }
    }

    fn classify(&self, reply: Reply) -> Result<FileMessage, TransferError> {
        match reply {
            Reply::Undeliverable => Err(TransferError::Offline(self.name.clone())),
            Reply::Message(FileMessage::Abort { reason, .. }) => {
                Err(TransferError::Aborted { peer: self.name.clone(), reason })
            }
            Reply::Message(message) => Ok(message),
        }
    }

    /// Runs one side of the transfer; a failure found on this side is told to the peer.
    async fn run(
        &self,
        transfer: impl Future<Output = Result<Summary, TransferError>>,
    ) -> Result<Summary, TransferError> {
        let result = transfer.await;
        if let Err(err) = &result {
            if !err.peer_knows() {
                self.send(FileMessage::Abort { id: self.id, reason: err.to_string() }).await;
            }
        }
        result
    }

    fn unexpected(&self, message: &FileMessage) -> TransferError {
        let verb = message.to_string();
        let verb = verb.split(' ').next().unwrap_or_default();
        TransferError::Protocol(format!("unexpected `{verb}` from {}", self.name))
    }
}

/// The sender's side: offer, stream within the window, end, wait for the receiver's checksum.
async fn send(
    peer: &Peer,
    path: &Path,
    name: &str,
    mut inbox: mpsc::Receiver<Reply>,
    bar: &ProgressBar,
) -> Result<Summary, TransferError> {
    let shown = path.display();
    let mut file =
        File::open(path).await.map_err(TransferError::io(format!("cannot open {shown}")))?;
    let meta = file.metadata().await.map_err(TransferError::io(format!("cannot stat {shown}")))?;
    if !meta.is_file() {
        return Err(TransferError::Io {
            what: format!("cannot send {shown}"),
            source: io::Error::other("not a regular file"),
        });
    }
    let size = meta.len();
    let id = peer.id;
    peer.send(FileMessage::Offer { id, size, name: name.to_owned() }).await;
    match peer.next(&mut inbox).await? {
        FileMessage::Accept { .. } => {}
        other => return Err(peer.unexpected(&other)),
    }
    bar.set_length(size);

    let mut hasher = Sha256::new();
    let (mut sent, mut acked, mut bytes) = (0u64, 0u64, 0u64);
    let on_ack = |message: FileMessage, acked: &mut u64, sent: u64| match message {
        FileMessage::Ack { count, .. } if (*acked..=sent).contains(&count) => {
            *acked = count;
            bar.set_position((count * CHUNK_LEN as u64).min(size));
            Ok(())
        }
        FileMessage::Ack { count, .. } => Err(TransferError::Protocol(format!(
            "{} acknowledged {count} chunks of {sent} sent",
            peer.name
        ))),
        other => Err(peer.unexpected(&other)),
    };
    loop {
        // Acks that came meanwhile, without waiting.
        while let Ok(reply) = inbox.try_recv() {
            on_ack(peer.classify(reply)?, &mut acked, sent)?;
        }
        if sent - acked >= WINDOW {
            let message = peer.next(&mut inbox).await?;
            on_ack(message, &mut acked, sent)?;
            continue;
        }
        let mut data = vec![0; CHUNK_LEN];
        let len = read_full(&mut file, &mut data)
            .await
            .map_err(TransferError::io(format!("cannot read {shown}")))?;
        if len == 0 {
            break;
        }
        data.truncate(len);
        hasher.update(&data);
        bytes += len as u64;
        peer.send(FileMessage::Chunk { id, index: sent, data }).await;
        sent += 1;
    }
    if bytes != size {
        return Err(TransferError::Protocol(format!(
            "{shown} changed while it was sent ({size} bytes offered, {bytes} read)"
        )));
    }
    let sha256 = format!("{:x}", hasher.finalize());
    peer.send(FileMessage::End { id, sha256: sha256.clone() }).await;
    loop {
        match peer.next(&mut inbox).await? {
            FileMessage::Done { sha256: theirs, .. } if theirs == sha256 => break,
            FileMessage::Done { sha256: theirs, .. } => {
                return Err(TransferError::Checksum { expected: sha256, actual: theirs });
            }
            message => on_ack(message, &mut acked, sent)?,
        }
    }
    Ok(Summary { bytes, sha256, path: path.to_owned() })
}

/// Reads until `buf` is full or the file ends; the length read.
async fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]).await? {
            0 => break,
            read => len += read,
        }
    }
    Ok(len)
}

/// The receiver's side: a `.part` file written chunk by chunk, checked, then given its name.
async fn receive(
    peer: &Peer,
    size: u64,
    dir: &Path,
    name: &str,
    mut inbox: mpsc::Receiver<Reply>,
    bar: &ProgressBar,
    progress: &MultiProgress,
) -> Result<Summary, TransferError> {
    let id = peer.id;
    let (part, mut file) = PartFile::create(dir, name).await?;
    progress.suspend(|| {
        eprintln!("receiving {name} ({size} bytes) from {} into {}", peer.name, part.path.display())
    });
    peer.send(FileMessage::Accept { id }).await;
    let mut hasher = Sha256::new();
    let (mut count, mut bytes) = (0u64, 0u64);
    loop {
        match peer.next(&mut inbox).await? {
            FileMessage::Chunk { index, data, .. } => {
                if index != count {
                    return Err(TransferError::Protocol(format!(
                        "chunk {index} from {} where chunk {count} was due",
                        peer.name
                    )));
                }
                bytes += data.len() as u64;
                if bytes > size {
                    return Err(TransferError::Protocol(format!(
                        "{} sent more than the {size} bytes offered",
                        peer.name
                    )));
                }
                hasher.update(&data);
                file.write_all(&data)
                    .await
                    .map_err(TransferError::io(format!("cannot write {}", part.path.display())))?;
                count += 1;
                peer.send(FileMessage::Ack { id, count }).await;
                bar.set_position(bytes);
            }
            FileMessage::End { sha256, .. } => {
                file.flush()
                    .await
                    .map_err(TransferError::io(format!("cannot write {}", part.path.display())))?;
                drop(file);
                if bytes != size {
                    return Err(TransferError::Protocol(format!(
                        "{} ended after {bytes} of the {size} bytes offered",
                        peer.name
                    )));
                }
                let mine = format!("{:x}", hasher.finalize());
                if mine != sha256 {
                    return Err(TransferError::Checksum { expected: sha256, actual: mine });
                }
                let path = part.commit()?;
                peer.send(FileMessage::Done { id, sha256: mine.clone() }).await;
                return Ok(Summary { bytes, sha256: mine, path });
            }
            other => return Err(peer.unexpected(&other)),
        }
    }
}

/// A file being received, `<name>.part` in the download directory; removed when dropped
/// unless committed, so a failed or cancelled transfer leaves nothing behind.
#[derive(Debug)]
struct PartFile {
    path: PathBuf,
    /// The names to try, in order, when committing.
    candidates: Vec<PathBuf>,
    committed: bool,
}

impl PartFile {
    /// Creates the part file next to the first free name among `name`, `name-1`, ...: no
    /// existing file is ever opened for writing.
    async fn create(dir: &Path, name: &str) -> Result<(Self, File), TransferError> {
        let candidates: Vec<PathBuf> = (0..100).map(|n| dir.join(numbered(name, n))).collect();
        for (n, target) in candidates.iter().enumerate() {
            if tokio::fs::try_exists(target).await.unwrap_or(true) {
                continue;
            }
            let mut path = target.clone().into_os_string();
            path.push(".part");
            let path = PathBuf::from(path);
            match tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await {
                Ok(file) => {
                    let candidates = candidates[n..].to_vec();
                    return Ok((Self { path, candidates, committed: false }, file));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    let what = format!("cannot create a file in {}", dir.display());
                    return Err(TransferError::Io { what, source });
                }
            }
        }
        Err(TransferError::Io {
            what: format!("cannot receive {name}"),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "every numbered name is taken"),
        })
    }

    /// Gives the file its final name, the first still free: a hard link never replaces an
    /// existing file, so a file that appeared meanwhile is not overwritten either.
    fn commit(mut self) -> Result<PathBuf, TransferError> {
        for target in &self.candidates {
            match std::fs::hard_link(&self.path, target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.path);
                    self.committed = true;
                    return Ok(target.clone());
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                // No hard links on this file system: a rename, checked just before.
                Err(_) if !target.exists() => {
                    std::fs::rename(&self.path, target).map_err(TransferError::io(format!(
                        "cannot rename {}",
                        self.path.display()
                    )))?;
                    self.committed = true;
                    return Ok(target.clone());
                }
                Err(_) => continue,
            }
        }
        Err(TransferError::Io {
            what: format!("cannot name {}", self.path.display()),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "every numbered name is taken"),
        })
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `name` for 0, else `stem-n.ext`.
fn numbered(name: &str, n: usize) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let sha = "ab".repeat(32);
        let messages = [
            FileMessage::Offer { id: 7, size: 10, name: "a b.txt".into() },
            FileMessage::Accept { id: 7 },
            FileMessage::Chunk { id: 7, index: 3, data: vec![0, 0xFF, b'\n', b' '] },
            FileMessage::Chunk { id: 7, index: 4, data: Vec::new() },
            FileMessage::Ack { id: 7, count: 4 },
            FileMessage::End { id: 7, sha256: sha.clone() },
            FileMessage::Done { id: 7, sha256: sha },
            FileMessage::Abort { id: 7, reason: "disk full".into() },
        ];
        for message in messages {
            assert_eq!(FileMessage::parse(&message.to_string()), Ok(message));
        }
    }

    #[test]
    fn bad_messages_are_refused() {
        let long = format!("chunk 1 0 {}", BASE64.encode(vec![0; CHUNK_LEN + 1]));
        for body in
            ["", "offer", "offer x 1 a", "offer 1 2", "chunk 1 0 !!", "end 1 abc", "what 1", &long]
        {
            assert!(FileMessage::parse(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn a_full_chunk_fits_in_a_line() {
        let chunk = FileMessage::Chunk { id: u64::MAX, index: u64::MAX, data: vec![0; CHUNK_LEN] };
        let line = crate::ClientLine::File { to: "x".repeat(64), body: chunk.to_string() };
        assert!(line.to_string().len() < crate::MAX_LINE_LEN);
    }

    #[test]
    fn payloads_tell_files_from_text() {
        assert_eq!(from_payload(&payload("ack 1 2")), Some(Ok("ack 1 2")));
        assert_eq!(from_payload(b"hello"), None);
        assert_eq!(from_payload(b""), None);
        assert!(from_payload(&[PAYLOAD_TAG, 0xC3]).is_some_and(|body| body.is_err()));
    }

    #[test]
    fn names_cannot_escape_the_download_directory() {
        for (offered, safe) in [
            ("report.pdf", "report.pdf"),
            ("../../etc/passwd", "passwd"),
            ("..\\..\\boot.ini", "boot.ini"),
            ("/abs/path/x", "x"),
            ("..", "download"),
            ("", "download"),
            (".bashrc", "bashrc"),
            ("a\nb\u{7}c", "a_b_c"),
            ("dir/", "download"),
        ] {
            assert_eq!(sanitize_name(offered), safe, "{offered:?}");
        }
        assert!(sanitize_name(&"é".repeat(300)).len() <= 200);
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("a.tar.gz", 0), "a.tar.gz");
        assert_eq!(numbered("a.tar.gz", 2), "a.tar-2.gz");
        assert_eq!(numbered("README", 1), "README-1");
        assert_eq!(numbered(".x", 1), ".x-1");
    }

    /// Runs transfers between two in-process clients, alice and bob, until both sides of the
    /// one transfer finished; `tamper` may change each message from alice on its way.
    async fn exchange(
        alice: &mut (Transfers, Outbox),
        bob: &mut (Transfers, Outbox),
        tamper: impl Fn(FileMessage) -> FileMessage,
    ) -> (Finished, Finished) {
        let (mut sent, mut received) = (None, None);
        while sent.is_none() || received.is_none() {
            tokio::select! {
                Some((_, message)) = alice.1.recv() => {
                    bob.0.handle("alice", &tamper(message).to_string()).unwrap();
                }
                Some((_, message)) = bob.1.recv() => {
                    alice.0.handle("bob", &message.to_string()).unwrap();
                }
                Some(done) = alice.0.next_finished(), if alice.0.running() > 0 => sent = Some(done),
                Some(done) = bob.0.next_finished(), if bob.0.running() > 0 => received = Some(done),
            }
        }
        (sent.unwrap(), received.unwrap())
    }

    fn pair(downloads: &Path, timeout: Duration) -> ((Transfers, Outbox), (Transfers, Outbox)) {
        (Transfers::new(PathBuf::from("."), timeout), Transfers::new(downloads.into(), timeout))
    }

    #[tokio::test]
    async fn a_file_arrives_intact_beside_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        let bytes: Vec<u8> = (0..CHUNK_LEN as u32 * 3 + 5).map(|n| (n % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        let downloads = dir.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        std::fs::write(downloads.join("source.bin"), b"mine").unwrap();
        let (mut alice, mut bob) = pair(&downloads, Duration::from_secs(10));

        alice.0.send_file("bob", source);
        let (sent, received) = exchange(&mut alice, &mut bob, |message| message).await;
        let (sent, received) = (sent.result.unwrap(), received.result.unwrap());
        assert_eq!(sent.sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert_eq!(received.sha256, sent.sha256);
        assert_eq!(received.path, downloads.join("source-1.bin"));
        assert_eq!(std::fs::read(&received.path).unwrap(), bytes);
        assert_eq!(std::fs::read(downloads.join("source.bin")).unwrap(), b"mine");
    }

    #[tokio::test]
    async fn a_corrupted_chunk_is_caught_by_the_checksum_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        std::fs::write(&source, vec![7; CHUNK_LEN * 2]).unwrap();
        let downloads = dir.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        let (mut alice, mut bob) = pair(&downloads, Duration::from_secs(10));

        alice.0.send_file("bob", source);
        let flip = |message| match message {
            FileMessage::Chunk { id, index: 1, mut data } => {
                data[0] ^= 1;
                FileMessage::Chunk { id, index: 1, data }
            }
            other => other,
        };
        let (sent, received) = exchange(&mut alice, &mut bob, flip).await;
        let received = received.result.unwrap_err();
        assert!(matches!(received, TransferError::Checksum { .. }), "{received}");
        let sent = sent.result.unwrap_err().to_string();
        assert!(sent.starts_with("bob aborted the transfer: checksum mismatch"), "{sent}");
        assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 0, "the .part is removed");
    }

    #[tokio::test]
    async fn a_silent_peer_ends_the_transfer_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        std::fs::write(&source, b"hello").unwrap();
        let (mut alice, outbox) = Transfers::new(dir.path().into(), Duration::from_millis(100));
        alice.send_file("bob", source);
        let finished = alice.next_finished().await.unwrap();
        assert_eq!(
            finished.to_string(),
            "file transfer of source.bin to bob failed: no progress from bob for 100ms; giving up"
        );
        let err = finished.result.unwrap_err();
        assert!(matches!(err, TransferError::Stalled { .. }), "{err}");
        drop(outbox);
    }
}

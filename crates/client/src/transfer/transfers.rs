//! The transfers of one client: a task per transfer, fed the peer's messages by the connection
//! loop, writing its own into a shared outbox.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::receive::receive;
use super::send::send;
use super::{Direction, FileMessage, Finished, Summary, TransferError, WINDOW, sanitize_name};
use crate::line::LineError;

/// What a transfer task gets from the connection.
#[derive(Debug)]
pub(super) enum Reply {
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
pub(super) struct Peer {
    pub(super) name: String,
    pub(super) id: u64,
    out: mpsc::Sender<(String, FileMessage)>,
    timeout: Duration,
}

impl Peer {
    pub(super) async fn send(&self, message: FileMessage) {
        // Closed only when the client is leaving, and then this task is being cancelled.
        let _ = self.out.send((self.name.clone(), message)).await;
    }

    /// The next message of the transfer, within the timeout. Aborts and undeliverables from
    /// the peer end the transfer here.
    pub(super) async fn next(
        &self,
        inbox: &mut mpsc::Receiver<Reply>,
    ) -> Result<FileMessage, TransferError> {
        match tokio::time::timeout(self.timeout, inbox.recv()).await {
            Err(_) => {
                Err(TransferError::Stalled { peer: self.name.clone(), timeout: self.timeout })
            }
            // The connection dropped this transfer's inbox: it overflowed.
            Ok(None) => Err(TransferError::Overrun(self.name.clone())),
            Ok(Some(reply)) => self.classify(reply),
        }
    }

    pub(super) fn classify(&self, reply: Reply) -> Result<FileMessage, TransferError> {
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

    pub(super) fn unexpected(&self, message: &FileMessage) -> TransferError {
        let verb = message.to_string();
        let verb = verb.split(' ').next().unwrap_or_default();
        TransferError::Protocol(format!("unexpected `{verb}` from {}", self.name))
    }
}

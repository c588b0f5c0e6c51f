//! The sender's side of one transfer.

use std::io;
use std::path::Path;

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::transfers::{Peer, Reply};
use super::{CHUNK_LEN, FileMessage, Summary, TransferError, WINDOW};

/// The sender's side: offer, stream within the window, end, wait for the receiver's checksum.
pub(super) async fn send(
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

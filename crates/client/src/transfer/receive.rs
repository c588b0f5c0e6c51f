//! The receiver's side of one transfer, and the part file it writes.

use std::io;
use std::path::{Path, PathBuf};

use indicatif::{MultiProgress, ProgressBar};
use sha2::{Digest, Sha256};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::transfers::{Peer, Reply};
use super::{FileMessage, Summary, TransferError};

/// The receiver's side: a `.part` file written chunk by chunk, checked, then given its name.
pub(super) async fn receive(
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
pub(super) fn numbered(name: &str, n: usize) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

//! The transfer messages, names, and whole transfers between two in-process clients.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::receive::numbered;
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

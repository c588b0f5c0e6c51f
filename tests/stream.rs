//! Numbered message streams, for the tests that count every message: each payload is its number,
//! so a loss, a duplicate or a reordering shows as the wrong number.

use std::net::SocketAddr;
use std::time::Duration;

use acms::HubConfig;
use acms_appserver::{Event, Events};
use bytes::Bytes;

use crate::{PATIENCE, TestHub};

/// Message `seq` of a stream: its number as text, padded with spaces to `size` bytes.
pub fn numbered(seq: u32, size: usize) -> Bytes {
    let mut text = seq.to_string().into_bytes();
    text.resize(size.max(text.len()), b' ');
    Bytes::from(text)
}

/// The number of a message made by [`numbered`].
pub fn number(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload).unwrap().trim_end().parse().unwrap()
}

/// Receives messages `0..count` from `from` (to the user, a group the user is in, or everyone),
/// asserting each arrives once and in order, and that nothing trails them.
pub async fn expect_stream(events: &mut Events, from: &str, count: u32) {
    receive_stream(events, from, count, None).await;
}

/// [`expect_stream`] by a slow app: it pauses for `pause` after every batch of events.
pub async fn expect_stream_slowly(events: &mut Events, from: &str, count: u32, pause: Duration) {
    receive_stream(events, from, count, Some(pause)).await;
}

async fn receive_stream(events: &mut Events, from: &str, count: u32, pause: Option<Duration>) {
    let mut next = 0;
    while next < count {
        let batch = tokio::time::timeout(PATIENCE * 3, events.recv_batch())
            .await
            .unwrap_or_else(|_| panic!("stalled after {next} of {count} messages from {from}"))
            .expect("events open");
        for event in batch {
            match event {
                Event::Message { from: sender, payload, .. }
                | Event::GroupMessage { from: sender, payload, .. }
                | Event::Broadcast { from: sender, payload, .. }
                    if sender.as_str() == from =>
                {
                    let got = number(&payload);
                    assert_eq!(got, next, "message {got} from {from} arrived where {next} was due");
                    next += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), events.recv()).await;
    assert!(extra.is_err(), "unexpected event after the stream from {from}: {extra:?}");
}

/// A hub on a runtime of its own, so the test can kill it without any goodbye
/// (`Runtime::shutdown_background`): its sockets close as a killed process's would, and whatever
/// it had queued is lost.
pub fn start_doomed_hub(addr: SocketAddr) -> (tokio::runtime::Runtime, SocketAddr) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let hub = TestHub::start_with(HubConfig::default(), addr).await;
        tx.send(hub.addr).unwrap();
        std::future::pending::<()>().await;
        drop(hub);
    });
    let addr = rx.recv_timeout(PATIENCE).expect("hub started");
    (runtime, addr)
}

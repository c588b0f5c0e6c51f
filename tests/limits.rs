//! Limits under load, with a real `acms` process: an app server that stops reading while the
//! others keep sending costs the hub no more memory than its per-server pending limit, costs the
//! other servers nothing, and gets every message once it reads again.
//!
//! The hub is the real program (`cargo build --workspace --bins` first; `scripts/test.sh` does),
//! started with a config file that sets its limits, on port 0. The app servers are the real
//! library in this process. Memory is the hub's resident set, read from `/proc/PID/status`.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use acms_appserver::{Cluster, Event, LinkState, ServerId};
use acms_tests::process::{ADMIN_TOKEN, program};
use acms_tests::stream::{expect_stream, number, numbered};
use acms_tests::{PATIENCE, TestServer, builder, next_frame, user, wait_link};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

/// The hub's limits in this test. The pending limit is the hard bound on one server's queue;
/// pushback from the high water keeps it well under that in practice.
const MAX_PENDING_BYTES: u64 = 8 << 20;
const HIGH_WATER_BYTES: u64 = 1 << 20;

/// Messages each way between the two servers that keep reading: 5,000 a second each way, so the
/// others send 10,000 a second together.
const PAIR_COUNT: u32 = 15_000;
/// Messages of 1 KiB for the server that stops reading, at 5,000 a second.
const SLOW_COUNT: u32 = 10_000;
/// Messages sent every 10 ms by each paced sender.
const PER_TICK: u32 = 50;

/// The hub process, killed when dropped; its log lines arrive on `lines` (and are echoed, so a
/// failing test shows them).
struct HubProcess {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    config: PathBuf,
}

impl HubProcess {
    fn start(config_text: &str) -> Self {
        let config = std::env::temp_dir().join(format!("acms-limits-{}.toml", std::process::id()));
        std::fs::write(&config, config_text).expect("write the hub's config file");
        let mut child = Command::new(program("acms"))
            .arg("--config")
            .arg(&config)
            // No fixed admin port (another hub may hold it) and no token file left behind.
            .args(["--admin", "127.0.0.1:0"])
            .env("ACMS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("ACMS_SECRET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start acms");
        let (tx, lines) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("piped stderr");
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[acms] {line}");
                let _ = tx.send(line);
            }
        });
        Self { child, lines, config }
    }

    /// Waits for a log line containing `text` and returns it.
    async fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE * 3;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(text) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("acms exited before logging `{text}`"),
                Err(_) => panic!("acms did not log `{text}` in time"),
            }
        }
    }

    /// The hub's resident set size in bytes.
    fn rss(&self) -> u64 {
        let pid = self.child.id().expect("acms is running");
        rss_of(pid)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

/// The address following `transfer=` in the hub's start line.
fn transfer_addr(line: &str) -> String {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix("transfer="))
        .map(|value| value.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no transfer address in {line:?}"))
}

/// Sends messages `0..count` from `from` to `to`, `PER_TICK` every 10 ms.
async fn paced(cluster: Cluster, from: &str, to: &str, count: u32, size: usize) {
    let (from, to) = (user(from), user(to));
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0;
    while seq < count {
        ticks.tick().await;
        for _ in 0..PER_TICK.min(count - seq) {
            cluster.send_to_user(&from, &to, numbered(seq, size)).await.expect("send");
            seq += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_costs_the_hub_at_most_its_pending_limit() {
    // A long grace: a server counts as back if it reconnects within it, and a loaded machine
    // must not turn "back a moment later" into "gone".
    let mut hub = HubProcess::start(&format!(
        "[transfer]\nlisten = \"127.0.0.1:0\"\nhigh_water_bytes = {HIGH_WATER_BYTES}\n\
         max_pending_bytes = {MAX_PENDING_BYTES}\nmax_stall = \"300ms\"\nreconnect_grace = \"30s\"\n"
    ));
    let ready = hub.wait_for("accepting app servers").await;
    let addr = transfer_addr(&ready).parse().expect("a socket address");

    // Two servers that talk to each other, one that feeds the slow one, and the slow one, whose
    // app stops reading: its link then stops reading from the hub.
    let a = TestServer::start(0, addr).await;
    let b = TestServer::start(1, addr).await;
    let feeder = TestServer::start(2, addr).await;
    let (slow, mut slow_events) = builder(3, addr).event_capacity(1).start();
    wait_link(&slow, LinkState::Connected).await;
    a.login(&["alice"]).await;
    b.login(&["bob"]).await;
    feeder.login(&["fred"]).await;
    slow.login(user("sam")).await.unwrap();
    slow.flush().await.unwrap();
    let TestServer { cluster: a, events: mut a_events } = a;
    let TestServer { cluster: b, events: mut b_events } = b;

    // Warm-up, so the baseline includes what any relay allocates once: a first stream each way
    // between the pair, and a few messages the slow server still reads.
    tokio::join!(
        paced(a.clone(), "alice", "bob", 1_000, 64),
        paced(b.clone(), "bob", "alice", 1_000, 64),
        paced(feeder.cluster.clone(), "fred", "sam", 100, 1024),
        expect_stream(&mut b_events, "alice", 1_000),
        expect_stream(&mut a_events, "bob", 1_000),
        expect_stream(&mut slow_events, "fred", 100),
    );
    let baseline = hub.rss();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let pid = hub.child.id().expect("acms is running");
    let sampler = tokio::spawn({
        let (stop, peak) = (stop.clone(), peak.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // The slow server's app reads nothing from now on; the others keep sending.
    let pair = tokio::spawn({
        let (a, b) = (a.clone(), b.clone());
        async move {
            tokio::join!(
                paced(a, "alice", "bob", PAIR_COUNT, 256),
                paced(b, "bob", "alice", PAIR_COUNT, 256),
                expect_stream(&mut b_events, "alice", PAIR_COUNT),
                expect_stream(&mut a_events, "bob", PAIR_COUNT),
            );
        }
    });
    // Numbered on from the warm-up's 100, which the slow server already has.
    let feeding = tokio::spawn({
        let cluster = feeder.cluster.clone();
        async move {
            let (fred, sam) = (user("fred"), user("sam"));
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut seq = 100;
            while seq < 100 + SLOW_COUNT {
                ticks.tick().await;
                for _ in 0..PER_TICK {
                    cluster.send_to_user(&fred, &sam, numbered(seq, 1024)).await.expect("send");
                    seq += 1;
                }
            }
        }
    });

    // Cut off by the slow-consumer rule; then its app reads again, while the others still send.
    hub.wait_for("slow consumer").await;
    let slow_reader = tokio::spawn(async move {
        // Everything it missed, once, in order, after the 100 it had.
        let mut next = 100;
        while next < 100 + SLOW_COUNT {
            let batch = tokio::time::timeout(PATIENCE * 3, slow_events.recv_batch())
                .await
                .unwrap_or_else(|_| panic!("the slow server stalled at message {next}"))
                .expect("events open");
            for event in batch {
                let Event::Message { payload, .. } = event else { panic!("{event:?}") };
                assert_eq!(number(&payload), next, "out of order or duplicated");
                next += 1;
            }
        }
        let extra = tokio::time::timeout(Duration::from_millis(300), slow_events.recv()).await;
        assert!(extra.is_err(), "a duplicate trailed the stream: {extra:?}");
    });
    let registered_again = hub.wait_for("app server registered").await;
    assert!(registered_again.contains("server=3"), "{registered_again}");
    pair.await.expect("the pair lost nothing and saw no duplicate");
    feeding.await.expect("every message to the slow server accepted");
    slow_reader.await.expect("the slow server got everything once, in order");

    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let growth = peak.saturating_sub(baseline);
    let bound = MAX_PENDING_BYTES + MAX_PENDING_BYTES / 10;
    println!(
        "acms RSS: baseline {} KiB, peak {} KiB, growth {} KiB; bound {} KiB \
         (max_pending_bytes {} KiB + 10%)",
        baseline >> 10,
        peak >> 10,
        growth >> 10,
        bound >> 10,
        MAX_PENDING_BYTES >> 10
    );
    assert!(growth < bound, "the hub grew by {growth} bytes, over {bound}");
    assert_eq!(slow.server_id(), ServerId(3));
    slow.close().await;
}

/// A user id over 255 bytes in a `Login` is refused with a message that names the limit; only
/// that connection closes, and the servers around it carry on.
#[tokio::test]
async fn an_over_long_user_id_in_a_login_is_refused_clearly() {
    use acms_protocol::{Codec, Control, ErrorCode, Frame, Hello, PROTOCOL_VERSION};
    use futures_util::SinkExt;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Framed;

    let hub = acms_tests::TestHub::start().await;
    let a = TestServer::start(0, hub.addr).await;
    let mut b = TestServer::start(1, hub.addr).await;
    a.login(&["alice"]).await;
    b.login(&["bob"]).await;

    let stream = tokio::net::TcpStream::connect(hub.addr).await.unwrap();
    let mut peer = Framed::new(stream, Codec::default());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        server_id: ServerId(9),
        client_addr: "127.0.0.1:7000".into(),
        epoch: 1,
        nonce: None,
    };
    peer.send(Frame::Control(Control::Hello(hello))).await.unwrap();
    assert!(matches!(next_frame(&mut peer).await, Some(Frame::Control(Control::Welcome(_)))));
    assert!(matches!(next_frame(&mut peer).await, Some(Frame::Control(Control::Servers { .. }))));
    // Login { users: [256 × "m"] }, encoded by hand: the library cannot make such an id.
    let mut body = vec![0x00, 3, 1, 0xfb];
    body.extend_from_slice(&256u16.to_le_bytes());
    body.extend_from_slice(&[b'm'; 256]);
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&body);
    peer.get_mut().write_all(&wire).await.unwrap();
    match next_frame(&mut peer).await {
        Some(Frame::Control(Control::Error { code, message })) => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
            assert!(message.contains("user id is 256 bytes long, the limit is 255"), "{message}");
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    assert_eq!(next_frame(&mut peer).await, None, "closed after the error");

    assert_eq!(hub.hub.stats().protocol_errors, 1);
    assert_eq!(hub.hub.registry().user_count(), 2);
    a.cluster
        .send_to_user(&user("alice"), &user("bob"), Bytes::from_static(b"still here"))
        .await
        .unwrap();
    let event = b.next_event().await;
    let Event::Message { payload, .. } = event else { panic!("{event:?}") };
    assert_eq!(&payload[..], b"still here");
}

//! Worker roles on ACMS: app servers built on [`acms_appserver::Cluster`], as an application
//! would use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acms_appserver::{Cluster, Event, Events, LinkState, Outgoing, ServerId, UserId};
use anyhow::{Context, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::results::AcmsSend;
use crate::wire::{self, RecvCounter, RttResult, ScaleReady, ScaleResynced, SendResult};
use crate::{EchoArgs, RecvArgs, RttArgs, ScaleArgs, SendArgs};

/// Joins the hub at `addr` as server `id`.
fn join(addr: &str, id: u32) -> (Cluster, Events) {
    Cluster::builder(ServerId(id), addr).client_addr(format!("bench-{id}")).start()
}

/// Waits until the link is registered with the hub.
async fn connected(cluster: &Cluster) -> anyhow::Result<()> {
    let mut state = cluster.link_state();
    tokio::time::timeout(Duration::from_secs(30), state.wait_for(|s| *s == LinkState::Connected))
        .await
        .context("no connection to the hub within 30 s")?
        .context("cluster closed")?;
    Ok(())
}

/// Counts link drops (a `Connected` followed by anything else) until the cluster closes.
fn count_disconnects(cluster: &Cluster) -> tokio::task::JoinHandle<u64> {
    let mut state = cluster.link_state();
    tokio::spawn(async move {
        let mut drops = 0;
        let mut was_connected = *state.borrow_and_update() == LinkState::Connected;
        while state.changed().await.is_ok() {
            let now = *state.borrow_and_update();
            if was_connected && now == LinkState::Connecting {
                drops += 1;
                eprintln!("link to the hub dropped");
            }
            if now == LinkState::Closed {
                break;
            }
            was_connected = now == LinkState::Connected;
        }
        drops
    })
}

/// Logs in users `offset..offset + count`, named by [`wire::user_name`].
async fn login_range(cluster: &Cluster, offset: u64, count: u64) -> anyhow::Result<()> {
    for i in offset..offset + count {
        cluster.login(UserId::new(&wire::user_name(i))?).await?;
    }
    Ok(())
}

/// Receiving AS: logs in the users, then counts messages until N arrived.
pub fn recv(args: RecvArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let mut done = wire::watch_stdin();
        let (cluster, mut events) = join(&args.addr, args.server_id);
        let disconnects = count_disconnects(&cluster);
        login_range(&cluster, 0, args.users).await?;
        cluster.flush().await?;
        wire::emit(wire::READY, &wire::Ready { users: args.users })?;

        let mut counter = RecvCounter::new(args.n);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut timed_out = false;
        while !counter.complete() {
            tokio::select! {
                batch = events.recv_batch() => {
                    let Some(batch) = batch else { bail!("cluster closed while receiving") };
                    let (mut messages, mut bytes) = (0, 0);
                    for event in &batch {
                        if let Event::Message { payload, .. } = event {
                            messages += 1;
                            bytes += payload.len() as u64;
                        }
                    }
                    counter.add(messages, bytes);
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
        result.policy = format!("{} users logged in, Events::recv_batch", args.users);
        cluster.close().await;
        drop(cluster);
        result.disconnects = disconnects.await.unwrap_or_default();
        wire::emit(wire::RESULT, &result)
    })
}

/// Sending AS: sends N messages of the payload size to uniformly random users, then flushes.
///
/// With `--send batch` (the default) a `Cluster::send_batch` call takes
/// [`wire::batch_msgs`] messages (about 64 KiB of frames), as the NATS raw sender writes that
/// many `PUB` commands at a time; `--send single` calls `Cluster::send_to_user` per message.
pub fn send(args: SendArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        // With --wait-go, stdin first carries GO; it is watched for DONE after that.
        let done = (!args.wait_go).then(wire::watch_stdin);
        let (cluster, mut events) = join(&args.addr, args.server_id);
        // Count what comes back undeliverable (nothing should).
        let undeliverable = Arc::new(AtomicU64::new(0));
        let counted = undeliverable.clone();
        let events_ended = tokio::spawn(async move {
            while let Some(batch) = events.recv_batch().await {
                let count = batch.iter().filter(|e| matches!(e, Event::Undeliverable { .. }));
                counted.fetch_add(count.count() as u64, Ordering::Relaxed);
            }
        });
        connected(&cluster).await?;
        let users: Vec<UserId> =
            (0..args.users).map(|i| UserId::new(&wire::user_name(i))).collect::<Result<_, _>>()?;
        let from = UserId::new("sender")?;
        let mut done = match done {
            Some(done) => done,
            None => {
                // Online, so that the orchestrator can see the receiver's hub route back here.
                cluster.login(from.clone()).await?;
                cluster.flush().await?;
                wire::emit(wire::READY, &wire::Ready { users: 1 })?;
                wire::await_go().await;
                wire::watch_stdin()
            }
        };
        let payload = wire::payload(args.size);
        let mut rng = SmallRng::seed_from_u64(args.seed);

        let (start, start_ns) = (Instant::now(), crate::sys::unix_ns());
        let cpu0 = crate::sys::cpu_time("self")?;
        let (batches, policy) = match args.send {
            AcmsSend::Batch => {
                let per_batch = wire::batch_msgs(args.size, args.batch_bytes) as u64;
                let (mut left, mut batches) = (args.n, 0);
                while left > 0 {
                    let count = per_batch.min(left);
                    let messages = (0..count).map(|_| Outgoing {
                        from: from.clone(),
                        to: users[rng.random_range(0..users.len())].clone(),
                        payload: payload.clone(),
                    });
                    let routes = cluster.send_batch(messages).await?;
                    if routes.local > 0 {
                        bail!("{} messages were for users of the sender itself", routes.local);
                    }
                    batches += 1;
                    left -= count;
                }
                (batches, format!("Cluster::send_batch of {per_batch} messages, then flush"))
            }
            AcmsSend::Single => {
                for _ in 0..args.n {
                    let to = &users[rng.random_range(0..users.len())];
                    cluster.send_to_user(&from, to, payload.clone()).await?;
                }
                (args.n, "Cluster::send_to_user per message, then flush".to_owned())
            }
        };
        let queued = start.elapsed();
        cluster.flush().await?;
        let elapsed = start.elapsed();
        let cpu = crate::sys::cpu_time("self")?.saturating_sub(cpu0);

        if !args.linger {
            cluster.close().await;
            drop(cluster);
            let _ = events_ended.await;
            return emit_sent(
                &args,
                queued,
                elapsed,
                cpu,
                &undeliverable,
                start_ns,
                policy,
                batches,
            );
        }
        emit_sent(&args, queued, elapsed, cpu, &undeliverable, start_ns, policy, batches)?;
        // Acknowledgements come back from the receiving server; until they do, only this
        // process can send again what the backplane lost: it stays until the receiver is done.
        let _ = done.wait_for(|done| *done).await;
        cluster.close().await;
        Ok(())
    })
}

/// The sender's RESULT line.
#[allow(clippy::too_many_arguments)]
fn emit_sent(
    args: &SendArgs,
    queued: Duration,
    elapsed: Duration,
    cpu: Duration,
    undeliverable: &AtomicU64,
    start_ns: u64,
    policy: String,
    batches: u64,
) -> anyhow::Result<()> {
    wire::emit(
        wire::RESULT,
        &SendResult {
            sent: args.n,
            start_ns,
            queued_s: queued.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            msg_per_s: args.n as f64 / elapsed.as_secs_f64(),
            cpu_s: cpu.as_secs_f64(),
            undeliverable: undeliverable.load(Ordering::Relaxed),
            policy,
            batches,
        },
    )
}

/// Echo AS: user `echo` sends every message straight back to its sender.
pub fn echo(args: EchoArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let (cluster, mut events) = join(&args.addr, args.server_id);
        cluster.login(UserId::new("echo")?).await?;
        cluster.flush().await?;
        wire::emit(wire::READY, &wire::Ready { users: 1 })?;
        while let Some(event) = events.recv().await {
            if let Event::Message { from, to, payload } = event {
                cluster.send_to_user(&to, &from, payload).await?;
            }
        }
        Ok(())
    })
}

/// Round-trip client AS: one message in flight to `echo` and back, timed.
pub fn rtt(args: RttArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        // With --wait-go, stdin first carries GO; it is watched for its end after that.
        let mut done = (!args.wait_go).then(wire::watch_stdin);
        let (cluster, mut events) = join(&args.addr, args.server_id);
        let me = UserId::new("client")?;
        let echo = UserId::new("echo")?;
        cluster.login(me.clone()).await?;
        cluster.flush().await?;
        if done.is_none() {
            wire::emit(wire::READY, &wire::Ready { users: 1 })?;
            wire::await_go().await;
            done = Some(wire::watch_stdin());
        }
        let _done = done;
        let payload = wire::payload(args.size);
        let mut hist = wire::rtt_histogram();
        for i in 0..args.warmup + args.iterations {
            let start = Instant::now();
            cluster.send_to_user(&me, &echo, payload.clone()).await?;
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .context("no echo within 10 s")?
                .context("cluster closed")?;
            let elapsed = start.elapsed();
            match event {
                Event::Message { payload: back, .. } if back.len() == payload.len() => {}
                other => bail!("unexpected event instead of the echo: {other:?}"),
            }
            if i >= args.warmup {
                hist.saturating_record(elapsed.as_nanos() as u64);
            }
        }
        cluster.close().await;
        wire::emit(wire::RESULT, &RttResult::from_histogram(&hist, args.warmup, args.size))
    })
}

/// Scale AS: logs in its share of users and flushes; then, when the hub goes away, reports when
/// the restarted hub has its whole user set again.
pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let (cluster, _events) = join(&args.addr, args.server_id);
        let start_ns = crate::sys::unix_ns();
        login_range(&cluster, args.offset, args.users).await?;
        cluster.flush().await?;
        let ready = ScaleReady { users: args.users, start_ns, done_ns: crate::sys::unix_ns() };
        wire::emit(wire::READY, &ready)?;

        let mut state = cluster.link_state();
        state.wait_for(|s| *s != LinkState::Connected).await?;
        let down_ns = crate::sys::unix_ns();
        // Queued now, the flush's Ping goes out on the new connection right after the snapshot,
        // so it completes once the new hub has handled every Login.
        let mut connected_ns = 0;
        let (reconnected, flushed) = tokio::join!(
            async {
                let result = state.wait_for(|s| *s == LinkState::Connected).await.map(|_| ());
                connected_ns = crate::sys::unix_ns();
                result
            },
            cluster.flush()
        );
        reconnected?;
        flushed?;
        let done_ns = crate::sys::unix_ns();
        wire::emit(wire::RESYNCED, &ScaleResynced { down_ns, connected_ns, done_ns })?;
        // Stay online until the orchestrator ends the step (closing stdin exits the process).
        std::future::pending::<()>().await;
        Ok(())
    })
}

//! Worker roles on NATS, with the `async-nats` client: the same workloads as
//! [`crate::acms_roles`], one subject per user.
//!
//! The default for the round trip (`--nats-rtt-client`), where one message is in flight and the
//! client library is part of what a user gets, as `acms_appserver` is on the other side. For
//! throughput it is the alternative `--nats-client async-nats`: it publishes one message per
//! call and its subscriber saturates its core first, so [`crate::nats_raw`] is the default
//! there (its module docs say more).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::{Client, Event, Subject};
use futures_util::{FutureExt, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::wire::{self, RecvCounter, RttResult, SendResult};
use crate::{EchoArgs, RecvArgs, RttArgs, SendArgs};

/// Most messages taken from the subscriptions without waiting, between two looks at the clock.
const DRAIN_BATCH: usize = 1024;

/// What the client library reported about the connection.
#[derive(Debug, Default)]
struct Notices {
    slow_consumer: AtomicU64,
    disconnects: AtomicU64,
}

/// Connects to the server at `url`, counting slow-consumer and disconnect notices.
async fn connect(url: &str) -> anyhow::Result<(Client, Arc<Notices>)> {
    let notices = Arc::new(Notices::default());
    let seen = notices.clone();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                match event {
                    Event::SlowConsumer(_) => {
                        seen.slow_consumer.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::Disconnected => {
                        seen.disconnects.fetch_add(1, Ordering::Relaxed);
                        eprintln!("nats: disconnected");
                    }
                    other => eprintln!("nats: {other}"),
                }
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok((client, notices))
}

/// Waits until the server has processed everything this client sent before the call.
///
/// `Client::flush` only writes the client's buffers to the socket; it does not wait for the
/// server. The server handles a connection's operations in order, so once a message this client
/// publishes to its own fresh inbox comes back, every earlier SUB and PUB has been processed (the
/// published messages are queued for their subscribers).
async fn server_barrier(client: &Client) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, bytes::Bytes::new()).await?;
    client.flush().await?;
    tokio::time::timeout(Duration::from_secs(60), echo.next())
        .await
        .context("the server did not answer within 60 s")?
        .context("subscription closed")?;
    echo.unsubscribe().await?;
    Ok(())
}

/// Receiver: one subscription per user, counts messages until N arrived.
pub fn recv(args: RecvArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let mut done = wire::watch_stdin();
        let (client, notices) = connect(&args.addr).await?;
        let mut subscriptions = Vec::with_capacity(args.users as usize);
        for i in 0..args.users {
            subscriptions.push(client.subscribe(wire::user_name(i)).await?);
        }
        server_barrier(&client).await?;
        wire::emit(wire::READY, &wire::Ready { users: args.users })?;

        let mut messages = futures_util::stream::select_all(subscriptions);
        let mut counter = RecvCounter::new(args.n);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut timed_out = false;
        while !counter.complete() {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { bail!("subscriptions closed") };
                    let (mut count, mut bytes) = (1, message.payload.len() as u64);
                    // Take what is already there, as the ACMS receiver takes a batch.
                    while count < DRAIN_BATCH as u64 {
                        match messages.next().now_or_never() {
                            Some(Some(message)) => {
                                count += 1;
                                bytes += message.payload.len() as u64;
                            }
                            Some(None) => bail!("subscriptions closed"),
                            None => break,
                        }
                    }
                    counter.add(count, bytes);
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
        result.slow_consumer_events = notices.slow_consumer.load(Ordering::Relaxed);
        result.disconnects = notices.disconnects.load(Ordering::Relaxed);
        result.policy = format!("async-nats: {} subscriptions, select_all", args.users);
        wire::emit(wire::RESULT, &result)
    })
}

/// Sender: publishes N messages of the payload size to uniformly random users' subjects, then
/// waits until the server has processed them all (as the ACMS sender's `flush` does).
pub fn send(args: SendArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let (client, _notices) = connect(&args.addr).await?;
        let subjects: Vec<Subject> = (0..args.users).map(|i| wire::user_name(i).into()).collect();
        let payload = wire::payload(args.size);
        let mut rng = SmallRng::seed_from_u64(args.seed);

        let (start, start_ns) = (Instant::now(), crate::sys::unix_ns());
        let cpu0 = crate::sys::cpu_time("self")?;
        for _ in 0..args.n {
            let to = &subjects[rng.random_range(0..subjects.len())];
            client.publish(to.clone(), payload.clone()).await?;
        }
        let queued = start.elapsed();
        server_barrier(&client).await?;
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
                policy: "async-nats: publish() per message, then a server round trip".to_owned(),
                batches: args.n,
            },
        )
    })
}

/// Echo: answers every request on subject `echo` with its own payload.
pub fn echo(args: EchoArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let (client, _notices) = connect(&args.addr).await?;
        let mut requests = client.subscribe("echo").await?;
        server_barrier(&client).await?;
        wire::emit(wire::READY, &wire::Ready { users: 1 })?;
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client.publish(reply, request.payload).await?;
            }
        }
        Ok(())
    })
}

/// Round-trip client: one request in flight to `echo`, timed.
pub fn rtt(args: RttArgs) -> anyhow::Result<()> {
    wire::runtime()?.block_on(async {
        let _done = wire::watch_stdin();
        let (client, _notices) = connect(&args.addr).await?;
        let payload = wire::payload(args.size);
        let mut hist = wire::rtt_histogram();
        for i in 0..args.warmup + args.iterations {
            let start = Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                client.request("echo", payload.clone()),
            )
            .await
            .context("no echo within 10 s")??;
            let elapsed = start.elapsed();
            if answer.payload.len() != payload.len() {
                bail!("echo of {} bytes for {} sent", answer.payload.len(), payload.len());
            }
            if i >= args.warmup {
                hist.saturating_record(elapsed.as_nanos() as u64);
            }
        }
        wire::emit(wire::RESULT, &RttResult::from_histogram(&hist, args.warmup, args.size))
    })
}

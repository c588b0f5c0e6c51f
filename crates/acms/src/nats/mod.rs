//! The backplane's async shell: the NATS connection and the tasks that move bytes between it and
//! the synchronous core (`backplane`) and the hub's state. Every decision is made in the core or
//! in `effects`; here are the connection, the subscriptions, the key-value watches, the
//! heartbeat timer, the publisher and the directory writer.
//!
//! # Layout
//! - here: [`connect`] (the first connection, the buckets; an error names the URLs) and
//!   [`BackplaneLink::run`], which spawns the tasks.
//! - `asks`: questions between the hubs' admin sides (pushes and kicks for another hub's users).
//! - `deliver`: frames another hub relayed to this one, handed to the servers here.
//! - `effects`: what a message from another hub, a directory change or a hub's death does to
//!   this hub's servers.
//! - `repair`: the periodic check of the directory against this hub (reconciliation), and the
//!   sweep of the replica when a watch starts again.
//! - `writer`: the directory writer: the writes this hub owes the key-value store, several in
//!   flight, a user's entry read, merged and written back, a login's claim.

mod asks;
mod deliver;
mod effects;
mod repair;
mod writer;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use acms_protocol::ServerId;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch as signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backplane::{Backplane, Bucket, HubId, Outbound, ServerReport};
use crate::config::BackplaneConfig;
use crate::outbox::Outbox;
use crate::state::HubState;
use acms_common::discovery::ClusterName;

/// Why the hub could not join its backplane.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// No NATS server of the list answered.
    #[error("cannot connect to the NATS backplane at {urls}: {reason}")]
    Connect {
        /// The URLs tried.
        urls: String,
        /// What the client said.
        reason: String,
    },
    /// A credentials or TLS file cannot be read.
    #[error("backplane: cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A directory bucket could not be opened or created (is JetStream enabled?).
    #[error(
        "NATS backplane at {urls}: key-value bucket {bucket}: {reason} (is JetStream enabled?)"
    )]
    Bucket {
        /// The URLs of the backplane.
        urls: String,
        /// The bucket.
        bucket: String,
        /// What the server said.
        reason: String,
    },
}

/// A hub's connection to its backplane, made at start, before the hub serves.
#[derive(Debug)]
pub struct BackplaneLink {
    client: async_nats::Client,
    users: kv::Store,
    servers: kv::Store,
    groups: kv::Store,
    core: Arc<Backplane>,
    queue: mpsc::UnboundedReceiver<Outbound>,
    heartbeat: Duration,
    /// Heartbeat ticks a recovery may wait before it is asked for again.
    stuck_ticks: u32,
    /// Counts the connections to NATS made: a change is a reconnection, after which the
    /// watches start again and the directory is checked at once.
    reconnected: signal::Receiver<u64>,
}

/// Connects to the NATS servers of `config` and opens (or creates) the directory's buckets of
/// `cluster`. An unreachable backplane is an error naming the URLs: the hub does not start.
pub async fn connect(
    config: &BackplaneConfig,
    cluster: &ClusterName,
) -> Result<BackplaneLink, BackplaneError> {
    let urls = config.nats.join(",");
    let me = HubId::random();
    let (connections, reconnected) = signal::channel(0u64);
    let connections = Arc::new(connections);
    let link_up = Arc::new(AtomicBool::new(false));
    let up = link_up.clone();
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("acms-hub-{me}"))
        .connection_timeout(config.connect_timeout)
        .ping_interval(config.heartbeat.max(Duration::from_secs(1)))
        .event_callback(move |event| {
            let (connections, up) = (connections.clone(), up.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        info!("backplane connected");
                        up.store(true, Ordering::Relaxed);
                        connections.send_modify(|count| *count += 1);
                    }
                    async_nats::Event::Disconnected => {
                        up.store(false, Ordering::Relaxed);
                        warn!("backplane disconnected; reconnecting")
                    }
                    other => debug!(event = %other, "backplane event"),
                }
            }
        });
    if config.in_order {
        options = options.retain_servers_order();
    }
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|source| BackplaneError::File { path: path.display().to_string(), source })?;
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    let addrs = config
        .nats
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| BackplaneError::Connect { urls: urls.clone(), reason: err.to_string() })?;
    // Bounded: a client that keeps retrying inside `connect` would hide the error.
    let connected = tokio::time::timeout(config.connect_timeout * 2, options.connect(addrs)).await;
    let client = match connected {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => {
            return Err(BackplaneError::Connect { urls, reason: err.to_string() });
        }
        Err(_) => {
            let reason = format!("no answer within {:?}", config.connect_timeout * 2);
            return Err(BackplaneError::Connect { urls, reason });
        }
    };
    // One replica per NATS server of the cluster, up to three: the directory survives the death
    // of any one of them.
    let cluster_size = 1 + client.server_info().connect_urls.len();
    let replicas = config.kv_replicas.unwrap_or(cluster_size.min(3));
    let jetstream = jetstream::new(client.clone());
    let (mut core, queue) =
        Backplane::new(me, cluster, config.dead_after, config.max_pending_batches);
    // Connected by now: the event of the first connection may come after this.
    link_up.store(true, Ordering::Relaxed);
    core.connected = link_up;
    let patience = config.connect_timeout;
    let open = |bucket: String| open_bucket(&jetstream, bucket, replicas, &urls, patience);
    let users = open(core.names.users_bucket()).await?;
    let servers = open(core.names.servers_bucket()).await?;
    let groups = open(core.names.groups_bucket()).await?;
    info!(hub = %me, %urls, replicas, "joined the backplane");
    Ok(BackplaneLink {
        client,
        users,
        servers,
        groups,
        core: Arc::new(core),
        queue,
        heartbeat: config.heartbeat,
        stuck_ticks: (config.dead_after.as_millis() / config.heartbeat.as_millis().max(1)) as u32,
        reconnected,
    })
}

/// Opens a bucket, creating it if no hub has yet. The bucket's stream is created as the
/// key-value layout defines it (`KV_<bucket>` on `$KV.<bucket>.>`) rather than through the
/// client's bucket creation, which asks for account details that nats-server 2.9 answers in a
/// form the client cannot read.
///
/// On file storage, so the directory survives a restart of every NATS server. A bucket an older
/// hub made on memory storage is replaced (a stream's storage cannot change in place): its
/// entries are dropped, and each hub writes its own again at its next reconciliation check.
///
/// Tried again, backing off, for up to `patience` (at least three times): two hubs may create
/// the bucket at once, and a NATS cluster that has just formed may answer that it has no peers
/// for the replicas yet ("peer offline") until its nodes have all reported.
async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: String,
    replicas: usize,
    urls: &str,
    patience: Duration,
) -> Result<kv::Store, BackplaneError> {
    let name = format!("KV_{bucket}");
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(50);
    for attempt in 0.. {
        if attempt >= 3 && tokio::time::Instant::now() >= deadline {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        if let Ok(stream) = jetstream.get_stream(&name).await {
            let info = stream.cached_info();
            if info.config.storage != jetstream::stream::StorageType::Memory {
                match jetstream.get_key_value(bucket.clone()).await {
                    Ok(store) => return Ok(store),
                    Err(err) => last = err.to_string(),
                }
                continue;
            }
            warn!(
                %bucket,
                entries = info.state.messages,
                "directory bucket on memory storage, made by an older hub: replacing it with one on \
                 file storage; every hub writes its entries again"
            );
            if let Err(err) = jetstream.delete_stream(&name).await {
                last = err.to_string();
                continue;
            }
        }
        let config = jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            // Reads go to the stream's leader: a replica's direct answer may not have the latest
            // write yet, and a login lost to another hub's must see the winner's entry.
            allow_direct: false,
            num_replicas: replicas.max(1),
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        };
        if let Err(err) = jetstream.create_stream(config).await {
            last = err.to_string();
        }
    }
    Err(BackplaneError::Bucket { urls: urls.to_owned(), bucket, reason: last })
}

impl BackplaneLink {
    /// The core this link feeds, for the hub's state.
    pub(crate) fn core(&self) -> Arc<Backplane> {
        self.core.clone()
    }

    /// This hub's id on the backplane.
    pub fn hub_id(&self) -> HubId {
        self.core.me
    }

    /// Runs the backplane's tasks for the hub `shared` until `shutdown`.
    pub(crate) fn run(self, shared: Arc<HubState>, shutdown: CancellationToken) -> TaskTracker {
        let Self {
            client,
            users,
            servers,
            groups,
            core,
            queue,
            heartbeat,
            stuck_ticks,
            reconnected,
        } = self;
        let ticks = Ticks { every: heartbeat, stuck: stuck_ticks };
        let tracker = TaskTracker::new();
        tracker.spawn(publish(client.clone(), core.clone(), queue, shutdown.clone()));
        tracker.spawn(beat(client.clone(), shared.clone(), core.clone(), ticks, shutdown.clone()));
        tracker.spawn(listen_hubs(client.clone(), shared.clone(), core.clone(), shutdown.clone()));
        let (asks, asked) = mpsc::channel(asks::MAX_WAITING);
        core.set_asks(asks);
        tracker.spawn(asks::ask(client.clone(), core.clone(), asked, shutdown.clone()));
        tracker.spawn(asks::answer(client.clone(), shared.clone(), core.clone(), shutdown.clone()));
        tracker.spawn(listen_relay(client, shared.clone(), core.clone(), shutdown.clone()));
        for (store, bucket) in
            [(&servers, Bucket::Servers), (&users, Bucket::Users), (&groups, Bucket::Groups)]
        {
            let watching =
                Watching { store: store.clone(), bucket, reconnected: reconnected.clone() };
            tracker.spawn(watch(watching, shared.clone(), core.clone(), shutdown.clone()));
        }
        let checks = repair::run(shared.clone(), core.clone(), reconnected, shutdown.clone());
        tracker.spawn(checks);
        tracker.spawn(writer::write(
            writer::Stores { users, servers, groups },
            shared,
            core,
            shutdown,
        ));
        tracker.close();
        tracker
    }
}

/// Publishes what the relay queued for other hubs, in order.
async fn publish(
    client: async_nats::Client,
    core: Arc<Backplane>,
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(64);
    loop {
        batch.clear();
        let got = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = queue.recv_many(&mut batch, 64) => got,
        };
        if got == 0 {
            return;
        }
        for (hub, message) in batch.drain(..) {
            let subject = core.names.relay(hub);
            let published = client.publish(subject, message).await;
            core.backlog.left();
            if let Err(err) = published {
                // Counted as a gap by the receiver, which has the origins send again.
                warn!(error = %err, %hub, "backplane publish failed");
            } else {
                core.counters.published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The heartbeat's period, and the ticks a recovery may wait.
struct Ticks {
    every: Duration,
    stuck: u32,
}

/// Publishes this hub's heartbeat, and runs the tick's checks ([`effects::tick`]).
async fn beat(
    client: async_nats::Client,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    ticks: Ticks,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(ticks.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = core.heartbeat(reports(&shared));
        if let Err(err) = client.publish(core.names.heartbeat(), beat).await {
            warn!(error = %err, "backplane heartbeat not sent");
        }
        effects::tick(&shared, &core, Instant::now(), ticks.stuck);
    }
}

/// The state of this hub's app servers, for its heartbeat.
fn reports(shared: &HubState) -> Vec<ServerReport> {
    shared
        .registry
        .servers()
        .into_iter()
        .map(|info| ServerReport {
            id: info.id,
            connected: shared.registry.is_connected(info.id),
            draining: info.draining,
            since_ms: info
                .connected_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis() as u64),
            load: info.load,
        })
        .collect()
}

/// Hears the other hubs' heartbeats.
async fn listen_hubs(
    client: async_nats::Client,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    shutdown: CancellationToken,
) {
    let mut beats = match client.subscribe(core.names.heartbeat()).await {
        Ok(beats) => beats,
        Err(err) => {
            warn!(error = %err, "cannot subscribe to the backplane's heartbeats");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = beats.next() => message,
        };
        let Some(message) = message else { return };
        effects::heartbeat(&shared, &core, message.payload, Instant::now());
    }
}

/// Receives what other hubs relay to this one.
async fn listen_relay(
    client: async_nats::Client,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    shutdown: CancellationToken,
) {
    let mut messages = match client.subscribe(core.names.relay(core.me)).await {
        Ok(messages) => messages,
        Err(err) => {
            warn!(error = %err, "cannot subscribe to this hub's backplane subject");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = messages.next() => message,
        };
        let Some(message) = message else { return };
        for (target, outbox) in effects::message(&shared, &core, message.payload) {
            tokio::spawn(resume_when_drained(shared.clone(), core.clone(), target, outbox));
        }
    }
}

/// Waits until `target`, a server here that frames from other hubs left above its high water,
/// drains, then sends those hubs the credit withheld meanwhile. A server that does not drain
/// within `max_stall` is disconnected (the slow-consumer rule, as for a local sender's
/// pushback), and its credit is sent all the same.
async fn resume_when_drained(
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    target: ServerId,
    outbox: Outbox,
) {
    let max_stall = shared.config.max_stall;
    if tokio::time::timeout(max_stall, outbox.drained()).await.is_err() {
        shared.stalled(target, outbox.pending(), max_stall);
    }
    for (hub, bytes) in core.credits.drained(target) {
        core.send_credit(hub, target, bytes);
    }
}

/// One bucket to watch, and the signal of a reconnection.
struct Watching {
    store: kv::Store,
    bucket: Bucket,
    reconnected: signal::Receiver<u64>,
}

/// Keeps the replica of one bucket: every value, then every change. A watch that ends (the
/// connection was lost), a reconnection, or a bucket found replaced or emptied (its stream's
/// last sequence is below what the watch saw) starts it again from the current values, after the replica forgot what the bucket no longer holds (see [`repair::sweep`]).
async fn watch(
    Watching { store, bucket, mut reconnected }: Watching,
    shared: Arc<HubState>,
    core: Arc<Backplane>,
    shutdown: CancellationToken,
) {
    let retry = Duration::from_millis(500);
    loop {
        reconnected.borrow_and_update();
        let started = async {
            let held = repair::held(&core, bucket);
            let listed = keys(&store).await?;
            let entries = store.watch_with_history(">").await.map_err(|err| err.to_string())?;
            Ok::<_, String>((held, listed, entries))
        };
        let mut entries = match started.await {
            Ok((held, listed, entries)) => {
                repair::sweep(&shared, &core, bucket, &held, &listed);
                entries
            }
            Err(err) => {
                warn!(error = %err, ?bucket, "backplane watch failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(retry) => continue,
                }
            }
        };
        let mut seen = 0;
        let mut check = tokio::time::interval(repair::CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                Ok(()) = reconnected.changed() => {
                    info!(?bucket, "backplane reconnected; watching the bucket again");
                    break;
                }
                _ = check.tick() => {
                    // Asked afresh (the store's own status is what it was when opened); not by
                    // the stream's creation time, which each replica answers with its own.
                    let mut stream = store.stream.clone();
                    match stream.info().await.map(|info| info.state.last_sequence) {
                        Ok(last) if last < seen => {
                            warn!(?bucket, "directory bucket replaced or emptied; watching it again");
                            break;
                        }
                        _ => continue,
                    }
                }
                entry = entries.next() => entry,
            };
            match entry {
                Some(Ok(entry)) => {
                    seen = seen.max(entry.revision);
                    let value =
                        matches!(entry.operation, kv::Operation::Put).then_some(&entry.value);
                    effects::directory(&shared, bucket, &entry.key, value, entry.revision);
                }
                Some(Err(err)) => {
                    warn!(error = %err, ?bucket, "backplane watch broke; watching again");
                    break;
                }
                None => break,
            }
        }
    }
}

/// The keys `store` holds now: a pass over its headers.
async fn keys(store: &kv::Store) -> Result<HashSet<String>, String> {
    let mut keys = store.keys().await.map_err(|err| err.to_string())?;
    let mut listed = HashSet::new();
    while let Some(key) = keys.next().await {
        listed.insert(key.map_err(|err| err.to_string())?);
    }
    Ok(listed)
}

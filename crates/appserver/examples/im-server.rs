//! `im-server`: a small IM server that embeds the ACMS `Cluster` handle, the example to copy.
//!
//! Clients speak the line protocol of `acms-client` (`LOGIN`, `SEND`, `ALL`, `JOIN`, `LEAVE`,
//! `GROUP`, `WHO`, `WATCH`, `FILE`, `QUIT`). Each client gets a task and a bounded queue of lines
//! to write; one task takes the cluster's events and puts each message, presence change or kick in
//! its recipients' queues. Whether the recipients are here or on other servers, and who is in which
//! group, is the cluster's business, not this file's. A message that cannot be written to its
//! client (the user left, the client does not keep up, the server stops) goes back to its sender
//! with `Cluster::refuse`: none is dropped with only a log line. File transfers are relayed
//! unread, as tagged payloads (`acms_client::transfer`); their flow control is end to end between
//! clients.
//!
//! The shared secret comes from `ACMS_SECRET` (or `secret` in the config file); TLS to the hub
//! from `--tls-ca` and its companions.
//!
//! Run: `cargo run --release -p acms-appserver --example im-server -- --id 0 --listen 127.0.0.1:6000`

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use acms_appserver::{ClientTls, Cluster, Event, GroupId, LinkState, Secret, ServerId, UserId};
use acms_client::{ClientLine, MAX_LINE_LEN, ServerLine, transfer};
use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// Example IM server of an ACMS cluster.
#[derive(Debug, Parser)]
struct Args {
    /// TOML config file (see config/im-server.toml); flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// This server's id in the cluster [default: 0].
    #[arg(long)]
    id: Option<u32>,
    /// Where clients connect [default: 0.0.0.0:6000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The address clients are told to use for this server (by `GET /api/assign`, and in the
    /// `MOVE` of a drain): host:port [default: the listen address; for an unspecified listen
    /// address such as 0.0.0.0, loopback with the listen port, with a warning].
    #[arg(long)]
    advertise: Option<String>,
    /// Address of the ACMS hub, or several separated by commas in order of preference (hot
    /// standby) [default: 127.0.0.1:12000].
    #[arg(long)]
    acms: Option<String>,
    /// Connect to the hub over TLS, trusting this CA certificate (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This server's TLS client certificate (PEM), for a hub that requires one; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the hubs' certificates must carry [default: the host of the first --acms].
    #[arg(long)]
    tls_server_name: Option<String>,
}

/// The environment variable that holds the shared secret; it overrides `secret` in the file.
const SECRET_VAR: &str = "ACMS_SECRET";

/// The config file; every key has a default.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    id: u32,
    listen: SocketAddr,
    acms: String,
    /// The client address advertised to the cluster; the listen address when empty.
    advertise: String,
    #[serde(with = "humantime_serde")]
    login_timeout: Duration,
    /// How long a login may wait for the hub before the client is told it is unreachable.
    #[serde(with = "humantime_serde")]
    hub_login_timeout: Duration,
    /// Lines that may wait for one client.
    client_queue: usize,
    /// How long a line waits for room in a full client queue before the client is disconnected
    /// as too slow: a burst (the backlog after a hub restart) slows deliveries instead.
    #[serde(with = "humantime_serde")]
    client_grace: Duration,
    /// The secret shared with the hub; none by default.
    secret: Option<Secret>,
    /// TLS to the hub; plain TCP by default.
    tls: Option<TlsConfig>,
}

/// `[tls]` of the config file: PEM files and the hub's expected name.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TlsConfig {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: 0,
            listen: SocketAddr::from(([0, 0, 0, 0], 6000)),
            acms: "127.0.0.1:12000".into(),
            advertise: String::new(),
            login_timeout: Duration::from_secs(10),
            hub_login_timeout: Duration::from_secs(10),
            client_queue: 1024,
            client_grace: Duration::from_secs(1),
            secret: None,
            tls: None,
        }
    }
}

/// The queue of lines to write to each logged-in client.
type Sessions = Arc<DashMap<UserId, mpsc::Sender<Outbound>>>;

/// A line for one client and, for a message, its sender and bytes: what `Cluster::refuse` needs
/// to send it back should it never be written.
struct Outbound {
    line: ServerLine,
    message: Option<(UserId, Bytes)>,
}

/// How long a stopping server waits for its clients and the hub link before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// For each watched user, the local clients who have them as a friend.
type Friends = Arc<DashMap<UserId, Vec<UserId>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config: Config = match &args.config {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("bad config file {}", path.display()))?,
        None => Config::default(),
    };
    config.id = args.id.unwrap_or(config.id);
    config.listen = args.listen.unwrap_or(config.listen);
    config.acms = args.acms.unwrap_or(config.acms);
    config.advertise = args.advertise.unwrap_or(config.advertise);
    if let Some(value) = std::env::var_os(SECRET_VAR) {
        let value =
            value.into_string().map_err(|_| anyhow::anyhow!("{SECRET_VAR} is not UTF-8"))?;
        config.secret =
            Some(Secret::new(value).with_context(|| format!("{SECRET_VAR} is not usable"))?);
    }
    if args.tls_ca.is_some() || args.tls_cert.is_some() || args.tls_server_name.is_some() {
        let tls = config.tls.get_or_insert_with(TlsConfig::default);
        tls.ca = args.tls_ca.or(tls.ca.take());
        tls.cert = args.tls_cert.or(tls.cert.take());
        tls.key = args.tls_key.or(tls.key.take());
        tls.server_name = args.tls_server_name.or(tls.server_name.take());
    }
    let tls = config.tls.as_ref().map(|tls| load_tls(tls, &config.acms)).transpose()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed) is lost quietly: reporting it on
        // stderr as well would panic the task that logged.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let shutdown = shutdown_on_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let advertise = advertised(&config.advertise, local)?;
    info!(id = config.id, listen = %local, %advertise, acms = %config.acms, "im-server started");

    let mut builder = Cluster::builder(ServerId(config.id), &config.acms).client_addr(advertise);
    if let Some(secret) = config.secret.clone() {
        builder = builder.secret(secret);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let (cluster, events) = builder.start();
    let sessions = Sessions::default();
    let friends = Friends::default();
    let router =
        Router { cluster: cluster.clone(), sessions: sessions.clone(), grace: config.client_grace };
    tokio::spawn(route_events(events, router, friends.clone()));

    let clients = TaskTracker::new();
    let config = Arc::new(config);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => { warn!(error = %err, "accept failed"); continue; }
            },
        };
        let session = serve_client(
            stream,
            cluster.clone(),
            (sessions.clone(), friends.clone()),
            config.clone(),
            shutdown.clone(),
        );
        clients.spawn(session.instrument(info_span!("client", %peer)));
    }
    clients.close();
    // Whatever a client or the hub link still waits for, the server stops in bounded time.
    let stopped = async {
        clients.wait().await;
        cluster.close().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
        warn!(grace = ?SHUTDOWN_GRACE, "clients or the hub link did not finish in time; stopping anyway");
    }
    info!("stopped");
    Ok(())
}

/// The address clients are told to use: `configured` if set, else the listen address. An
/// unspecified address (0.0.0.0, ::) is no address a client can connect to: given, it is an
/// error; as the listen address, loopback with its port is advertised instead, with a warning.
fn advertised(configured: &str, local: SocketAddr) -> anyhow::Result<String> {
    if !configured.is_empty() {
        let unspecified = configured
            .parse::<SocketAddr>()
            .is_ok_and(|addr| addr.ip().is_unspecified() || addr.port() == 0);
        anyhow::ensure!(
            !unspecified,
            "--advertise {configured} is no address a client can connect to: give this \
             server's reachable host and port"
        );
        return Ok(configured.to_owned());
    }
    if !local.ip().is_unspecified() {
        return Ok(local.to_string());
    }
    let loopback = match local {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, local.port())),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, local.port())),
    };
    warn!(
        listen = %local,
        advertise = %loopback,
        "listening on an unspecified address: advertising loopback, which only clients on this \
         machine can use; pass --advertise HOST:PORT (or `advertise` in the config) for others"
    );
    Ok(loopback.to_string())
}

/// Reads the PEM files of `[tls]`; the hub's name defaults to the host part of its address.
fn load_tls(tls: &TlsConfig, acms: &str) -> anyhow::Result<ClientTls> {
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca = read(tls.ca.as_ref().context("TLS needs the hub's CA: --tls-ca or tls.ca")?)?;
    let client = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
        (None, None) => None,
        _ => anyhow::bail!("a TLS client certificate needs both its cert and key"),
    };
    // One name for every hub: with several, their certificates must all carry it.
    let first = acms.split(',').next().unwrap_or(acms).trim();
    let host = first.rsplit_once(':').map_or(first, |(host, _port)| host);
    let name =
        tls.server_name.as_deref().unwrap_or(host.trim_start_matches('[').trim_end_matches(']'));
    let client = client.as_ref().map(|(cert, key)| (cert.as_slice(), key.as_slice()));
    ClientTls::from_pem(&ca, name, client).context("bad TLS settings")
}

/// Hands every message the cluster delivers to this server to its recipient's session, a
/// watched user's presence to the clients who have them as a friend, and a kick to its client.
async fn route_events(mut events: acms_appserver::Events, router: Router, friends: Friends) {
    let cluster = &router.cluster;
    while let Some(event) = events.recv().await {
        let (users, line) = match event {
            Event::Presence { user, server } => {
                let watchers = friends.get(&user).map(|watchers| watchers.clone());
                let line =
                    ServerLine::Presence { user: user.to_string(), server: server.map(|id| id.0) };
                for watcher in watchers.into_iter().flatten() {
                    let out = Outbound { line: line.clone(), message: None };
                    router.deliver(watcher, out).await;
                }
                continue;
            }
            Event::Kicked { user, reason } => (vec![user], ServerLine::Kicked { reason }),
            Event::Message { from, to, payload } => {
                let line = match transfer::from_payload(&payload) {
                    None => ServerLine::Message { from: from.to_string(), text: text(&payload) },
                    Some(Ok(body)) => {
                        ServerLine::File { from: from.to_string(), body: body.into() }
                    }
                    Some(Err(_)) => {
                        warn!(%from, %to, "file-transfer payload is not UTF-8; refused");
                        refuse(cluster, &to, Some((from, payload)), "not a valid file transfer")
                            .await;
                        continue;
                    }
                };
                router.deliver(to, Outbound { line, message: Some((from, payload)) }).await;
                continue;
            }
            Event::Undeliverable { from, to, payload, reason } => {
                match transfer::from_payload(&payload) {
                    None => {
                        let (to, reason, text) =
                            (to.to_string(), reason.to_string(), text(&payload));
                        (vec![from], ServerLine::Undeliverable { to, reason, text })
                    }
                    Some(body) => {
                        let body = body.unwrap_or_default().into();
                        (vec![from], ServerLine::FileUndeliverable { to: to.to_string(), body })
                    }
                }
            }
            Event::GroupMessage { group, from, to, payload } => {
                let (group, from) = (group.to_string(), from.to_string());
                (to, ServerLine::Group { group, from, text: text(&payload) })
            }
            Event::Broadcast { from, to, payload } => {
                (to, ServerLine::Broadcast { from: from.to_string(), text: text(&payload) })
            }
            Event::Drain { target: Some(addr) } => {
                // Every client moves; the hub kicks each session here once it logged in there.
                let users: Vec<UserId> =
                    router.sessions.iter().map(|entry| entry.key().clone()).collect();
                info!(users = users.len(), %addr, "draining: clients move");
                (users, ServerLine::Move { addr })
            }
            Event::Drain { target: None } => {
                warn!("draining, but no other server can take clients: they stay");
                continue;
            }
            Event::ServerMessage { from, payload } => {
                info!(%from, text = text(&payload), "message from another server");
                continue;
            }
            _ => continue,
        };
        for user in users {
            router.deliver(user, Outbound { line: line.clone(), message: None }).await;
        }
    }
}

/// What the events task needs to put lines in the clients' queues.
struct Router {
    cluster: Cluster,
    sessions: Sessions,
    grace: Duration,
}

impl Router {
    /// Puts a line in `user`'s queue, waiting up to the grace for room; a message that cannot
    /// be queued goes back to its sender.
    async fn deliver(&self, user: UserId, out: Outbound) {
        let Some(session) = self.sessions.get(&user).map(|session| session.clone()) else {
            return refuse(&self.cluster, &user, out.message, "left the server").await;
        };
        let out = match session.try_send(out) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(out)) => out,
            Err(mpsc::error::TrySendError::Closed(out)) => {
                return refuse(&self.cluster, &user, out.message, "left the server").await;
            }
        };
        if let Ok(Ok(permit)) = tokio::time::timeout(self.grace, session.reserve()).await {
            return permit.send(out);
        }
        // A client that does not read cannot hold up everyone else's deliveries for long.
        warn!(%user, "client is not reading; disconnecting it");
        self.sessions.remove_if(&user, |_, current| current.same_channel(&session));
        refuse(&self.cluster, &user, out.message, "too slow").await;
    }
}

/// Sends a message for `to` that will not be written back to its sender, with `reason`.
async fn refuse(cluster: &Cluster, to: &UserId, message: Option<(UserId, Bytes)>, reason: &str) {
    let Some((from, payload)) = message else {
        // Presence, group and broadcast lines have no single sender to tell.
        return warn!(user = %to, reason, "line for a client that cannot take it; dropped");
    };
    if let Err(err) = cluster.refuse(&from, to, payload, reason).await {
        error!(%from, %to, error = %err, "cannot send an undelivered message back");
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).replace(['\r', '\n'], " ")
}

/// One client, from its LOGIN line until it quits, goes away, or the server stops.
async fn serve_client(
    stream: TcpStream,
    cluster: Cluster,
    (sessions, friends): (Sessions, Friends),
    config: Arc<Config>,
    shutdown: CancellationToken,
) {
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_LEN));
    let user = tokio::select! {
        _ = shutdown.cancelled() => Err("server is shutting down".to_owned()),
        user = login(&mut lines, &config) => user,
    };
    let user = match user {
        Ok(user) => user,
        Err(reason) => {
            let _ = lines.send(ServerLine::Error { reason }.to_string()).await;
            return;
        }
    };
    let (queue, mut inbox) = mpsc::channel::<Outbound>(config.client_queue);
    match sessions.entry(user.clone()) {
        dashmap::Entry::Vacant(slot) => slot.insert(queue),
        dashmap::Entry::Occupied(_) => {
            let _ = lines
                .send(
                    ServerLine::Error { reason: format!("{user} is already online here") }
                        .to_string(),
                )
                .await;
            return;
        }
    };
    match join(&cluster, &user, &config, &shutdown).await {
        Ok(()) if lines.send(ServerLine::Ok { server: config.id }.to_string()).await.is_ok() => {
            info!(%user, "logged in");
            let result = chat(&mut lines, &mut inbox, &cluster, &user, &friends, &shutdown).await;
            info!(%user, ?result, "logged out");
        }
        Ok(()) => {}
        Err(reason) => {
            warn!(%user, %reason, "login failed");
            let _ = lines.send(ServerLine::Error { reason }.to_string()).await;
        }
    }
    // The cluster keeps watching: another client here may add the same friend at any moment,
    // and an unwatch racing that watch could lose it. The hub only pushes changes.
    friends.iter_mut().for_each(|mut watchers| watchers.retain(|watcher| *watcher != user));
    friends.retain(|_, watchers| !watchers.is_empty());
    sessions.remove(&user);
    // Messages queued and never written go back to their senders.
    inbox.close();
    while let Ok(Outbound { message, .. }) = inbox.try_recv() {
        refuse(&cluster, &user, message, "left the server").await;
    }
    // A no-op after a kick: the cluster already logged the user out here.
    let _ = cluster.logout(&user).await;
}

/// Makes `user` reachable from every server: done once the hub has the login. Fails when the
/// hub does not have it within `hub_login_timeout`, or the server stops meanwhile.
async fn join(
    cluster: &Cluster,
    user: &UserId,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    if *cluster.link_state().borrow() != LinkState::Connected {
        info!(%user, "login waits for the hub");
    }
    let joined = async {
        cluster.login(user.clone()).await?;
        cluster.flush().await
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err("server is shutting down".into()),
        joined = tokio::time::timeout(config.hub_login_timeout, joined) => match joined {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(_) => Err(format!(
                "the cluster's hub did not answer within {:?}; try again later",
                config.hub_login_timeout
            )),
        },
    }
}

async fn login(
    lines: &mut Framed<TcpStream, LinesCodec>,
    config: &Config,
) -> Result<UserId, String> {
    let first = tokio::time::timeout(config.login_timeout, lines.next()).await;
    let Ok(Some(Ok(line))) = first else {
        return Err("expected `LOGIN <user>` in time".into());
    };
    match ClientLine::parse(&line) {
        Ok(ClientLine::Login { user }) => UserId::new(&user).map_err(|err| err.to_string()),
        _ => Err("expected `LOGIN <user>`".into()),
    }
}

async fn chat(
    lines: &mut Framed<TcpStream, LinesCodec>,
    inbox: &mut mpsc::Receiver<Outbound>,
    cluster: &Cluster,
    user: &UserId,
    friends: &Friends,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // What this client was last told of each friend: presence comes again after reconnects and
    // for every watch, and the client hears only changes.
    let mut known = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                lines.send(ServerLine::Error { reason: "server is shutting down".into() }.to_string()).await?;
                return Ok(());
            }
            // Closed when the session was dropped for not reading.
            out = inbox.recv() => match out.context("too slow: disconnected")? {
                Outbound { line: line @ ServerLine::Kicked { .. }, .. } => {
                    lines.send(line.to_string()).await?;
                    return Ok(());
                }
                Outbound { line: ServerLine::Presence { user: friend, server }, .. } => {
                    if known.insert(friend.clone(), server) != Some(server) {
                        lines.send(ServerLine::Presence { user: friend, server }.to_string()).await?;
                    }
                }
                Outbound { line, message } => {
                    if let Err(err) = lines.send(line.to_string()).await {
                        refuse(cluster, user, message, "left the server").await;
                        return Err(err.into());
                    }
                }
            },
            line = lines.next() => match ClientLine::parse(&line.context("client left")??) {
                Ok(ClientLine::Send { to, text }) => match UserId::new(&to) {
                    Ok(to) => { cluster.send_to_user(user, &to, text.into()).await?; }
                    Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                },
                Ok(ClientLine::Who { user: name }) => {
                    let line = match UserId::new(&name) {
                        Ok(who) => ServerLine::Located { user: name, server: cluster.locate(&who).await?.map(|id| id.0) },
                        Err(err) => ServerLine::Error { reason: err.to_string() },
                    };
                    lines.send(line.to_string()).await?;
                }
                Ok(ClientLine::Watch { users }) => {
                    let mut watched = Vec::new();
                    for name in users {
                        match UserId::new(&name) {
                            Ok(friend) => watched.push(friend),
                            Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                        }
                    }
                    for friend in &watched {
                        let mut watchers = friends.entry(friend.clone()).or_default();
                        if !watchers.contains(user) {
                            watchers.push(user.clone());
                        }
                    }
                    // The cluster answers with each friend's current state.
                    cluster.watch(watched).await?;
                }
                Ok(ClientLine::All { text }) => { cluster.broadcast(user, text.into(), true).await?; }
                Ok(ClientLine::Group { group, text }) => match GroupId::new(&group) {
                    Ok(group) => { cluster.send_to_group(user, &group, text.into(), true).await?; }
                    Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                },
                Ok(ClientLine::Join { group }) => lines.send(membership(cluster, user, &group, true).await?.to_string()).await?,
                Ok(ClientLine::Leave { group }) => lines.send(membership(cluster, user, &group, false).await?.to_string()).await?,
                // Relayed unread: the transfer is the two clients' business (acms_client::transfer).
                Ok(ClientLine::File { to, body }) => match UserId::new(&to) {
                    Ok(to) => { cluster.send_to_user(user, &to, transfer::payload(&body)).await?; }
                    Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
                },
                Ok(ClientLine::Quit) => return Ok(()),
                Ok(ClientLine::Login { .. }) => lines.send(ServerLine::Error { reason: "already logged in".into() }.to_string()).await?,
                Err(err) => lines.send(ServerLine::Error { reason: err.to_string() }.to_string()).await?,
            },
        }
    }
}

/// Joins or leaves `group`, answering once the hub has it, so that a message sent to the group
/// from any server after the answer reaches the user.
async fn membership(
    cluster: &Cluster,
    user: &UserId,
    group: &str,
    join: bool,
) -> anyhow::Result<ServerLine> {
    let group = match GroupId::new(group) {
        Ok(group) => group,
        Err(err) => return Ok(ServerLine::Error { reason: err.to_string() }),
    };
    if join {
        cluster.join(&group, user).await?;
    } else {
        cluster.leave(&group, user).await?;
    }
    cluster.flush().await?;
    let group = group.to_string();
    Ok(if join { ServerLine::Joined { group } } else { ServerLine::Left { group } })
}

/// A token cancelled by the first SIGINT or SIGTERM. The handlers are in place when this returns,
/// so a signal that comes right after the ready log line is not lost.
fn shutdown_on_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        info!("signal received; shutting down");
        token.cancel();
    });
    Ok(shutdown)
}

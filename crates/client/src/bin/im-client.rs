//! `im-client`: chat through the example IM server from a terminal or a pipe.
//!
//! Reads commands from stdin, one per line: `@user text` sends text to user; `/all text` to every
//! online user but you; `/join ROOM` and `/leave ROOM` join and leave a group, `#ROOM text` sends
//! to its members; `/who user` tells whether user is online and on which server; `/file user
//! path` sends a file; `/quit` leaves, cancelling transfers (the end of stdin leaves too, once the
//! files being sent are through). Every received message is printed on stdout: `sender: text`,
//! `#ROOM sender: text` for a group, `* sender: text` for a message to all. Status, progress and
//! errors go to stderr, so stdout can be piped to another program. Files received go to
//! `--download-dir`. With `--friends a,b`, a line `online: a (server 1)` or `offline: a` tells
//! each friend's state at the start and whenever it changes. A client whose user logs in
//! elsewhere (and is kicked by the hub's `replace` policy) prints why and exits; one whose server
//! is drained (told `MOVE ADDR`) logs in at ADDR, joins its groups again there, and carries on,
//! missing no message sent to it (a group message sent while it moves may be missed). A login
//! that is refused or not answered within 30 s ends the client with the reason.
//!
//! With `--acms-http URL` (the hub's admin API) and no `--server`, the client asks the hub which
//! server to use (`GET /api/assign`, keyed by `--key` or the user name) and connects to it.
//!
//! A message to a user goes by a direct path (QUIC through the NATs, punched with the servers'
//! help: `acms_client::p2p`) when one opens within `--punch-timeout`, else through the server;
//! `--no-p2p` never opens one. `--show-path` ends each received message with ` [p2p]`,
//! ` [server]` or ` [hub]`, and `/path user` tells the path to user.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use acms_client::p2p::shell::PathsConfig;
use acms_client::p2p::{EngineConfig, Kind, Path, Paths, PathsEvent, Via};
use acms_client::transfer::Transfers;
use acms_client::{ClientError, ImClient, ServerLine};
use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Interactive client of the example IM server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the IM server to log in to (default 127.0.0.1:6000, unless `--acms-http`).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// The hub's admin API (e.g. `http://127.0.0.1:11000`): without `--server`, ask it which
    /// server to use.
    #[arg(long)]
    acms_http: Option<String>,
    /// What the hub assigns by (a team or group id, for its `affinity` policy); the user name
    /// by default.
    #[arg(long)]
    key: Option<String>,
    /// Your user name (no spaces).
    #[arg(long)]
    user: String,
    /// Users to hear about when they come online or go offline, separated by commas.
    #[arg(long, value_delimiter = ',')]
    friends: Vec<String>,
    /// Where files sent to you are written; an existing file is never replaced.
    #[arg(long, default_value = ".")]
    download_dir: PathBuf,
    /// How long a file transfer waits for its peer before it fails (e.g. `15s`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    file_timeout: Duration,
    /// End each received message with the path it came by: ` [p2p]`, ` [server]` or ` [hub]`.
    #[arg(long)]
    show_path: bool,
    /// Never open a direct path to a peer: everything goes through the server.
    #[arg(long)]
    no_p2p: bool,
    /// How long a direct path may take to open before messages go through the server.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    punch_timeout: Duration,
    /// How long a direct path may stay silent (keepalives every second) before it counts as
    /// broken and messages go through the server.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    p2p_idle_timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(chat(args));
    // A read of stdin may still be pending on a blocking thread; do not wait for it.
    runtime.shutdown_background();
    result
}

/// The answer of `GET /api/assign`.
#[derive(Debug, serde::Deserialize)]
struct Assigned {
    server: u32,
    client_addr: String,
}

/// Asks the hub's admin API at `base` which server to use. Blocking: run it off the runtime.
fn assigned(base: &str, key: &str) -> anyhow::Result<Assigned> {
    let url = format!("{}/api/assign", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(&url).query("key", key).call()?;
    if !response.status().is_success() {
        let body = response.body_mut().read_to_string().unwrap_or_default();
        anyhow::bail!("{} answered {}: {}", url, response.status(), body.trim());
    }
    Ok(response.body_mut().read_json()?)
}

/// The server to log in to: `--server`, else the hub's answer, else the default.
async fn server_addr(args: &Args) -> anyhow::Result<String> {
    match (args.server, &args.acms_http) {
        (Some(server), _) => Ok(server.to_string()),
        (None, Some(base)) => {
            let (base, key) = (base.clone(), args.key.clone().unwrap_or_else(|| args.user.clone()));
            let answer = tokio::task::spawn_blocking(move || assigned(&base, &key))
                .await?
                .context("cannot ask the hub which server to use")?;
            eprintln!("the hub assigned server {} ({})", answer.server, answer.client_addr);
            Ok(answer.client_addr)
        }
        (None, None) => Ok("127.0.0.1:6000".to_owned()),
    }
}

/// How long a login may take before the client gives up: the server answers within its own
/// `hub_login_timeout` when the hub is unreachable, so this only catches a server that hangs.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to `server` and logs in as `user`, within [`LOGIN_TIMEOUT`].
async fn log_in(server: &str, user: &str) -> anyhow::Result<ImClient> {
    match tokio::time::timeout(LOGIN_TIMEOUT, ImClient::connect(server, user)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => anyhow::bail!("cannot log in to {server} as {user}: {err}"),
        Err(_) => {
            anyhow::bail!("cannot log in to {server} as {user}: no answer in {LOGIN_TIMEOUT:?}")
        }
    }
}

async fn chat(args: Args) -> anyhow::Result<()> {
    let server = server_addr(&args).await?;
    let mut client = log_in(&server, &args.user).await?;
    let mut paths = open_paths(&args, &mut client).await?;
    eprintln!(
        "logged in as {} on server {} ({server}); type `@user text` to send, `/quit` to leave, `/help` for more",
        args.user,
        client.server(),
    );
    let show_path = args.show_path;
    let friends: Vec<String> = args.friends.into_iter().filter(|name| !name.is_empty()).collect();
    if !friends.is_empty() {
        client.watch(&friends).await?;
    }
    let (mut transfers, mut outbox) = Transfers::new(args.download_dir, args.file_timeout);
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut reading = true;
    // The groups this client is in, joined again after a move.
    let mut groups = BTreeSet::new();
    // Leaves at `/quit`, or at the end of stdin once the files being sent are through.
    while reading || transfers.sending() > 0 {
        tokio::select! {
            line = stdin.next_line(), if reading => match line?.as_deref().map(str::trim) {
                None => reading = false,
                Some("/quit") => break,
                Some("") => {}
                Some(command) => {
                    if let Some(rest) = command.strip_prefix("/file ") {
                        match rest.trim().split_once(' ') {
                            Some((to, path)) if !to.is_empty() && !path.trim().is_empty() => {
                                let path = PathBuf::from(path.trim());
                                transfers.progress().suspend(|| {
                                    eprintln!("sending {} to {to}", path.display())
                                });
                                transfers.send_file(to, path);
                            }
                            _ => eprintln!("usage: {USAGE}"),
                        }
                    } else {
                        run(&mut client, &mut paths, command).await?;
                    }
                }
            },
            line = client.recv() => match line {
                Ok(Some(line)) if Paths::takes(&line) => paths.handle_line(line),
                Ok(Some(ServerLine::Kicked { reason })) => {
                    transfers.progress().suspend(|| eprintln!("kicked: {reason}"));
                    return Ok(());
                }
                Ok(Some(ServerLine::Move { addr })) => {
                    match log_in(&addr, &args.user).await {
                        Ok(moved) => {
                            let old = std::mem::replace(&mut client, moved);
                            paths.moved(client.server());
                            client.send_line(&paths.candidates_line()).await?;
                            finish(old, &mut transfers, &mut paths).await?;
                            rejoin(&mut client, &groups, &mut transfers, &mut paths).await?;
                            if !friends.is_empty() {
                                client.watch(&friends).await?;
                            }
                            eprintln!("moved to server {} ({addr})", client.server());
                        }
                        Err(err) => eprintln!("{err:#}; staying"),
                    }
                }
                Ok(Some(line @ (ServerLine::Joined { .. } | ServerLine::Left { .. }))) => {
                    match &line {
                        ServerLine::Joined { group } => groups.insert(group.clone()),
                        ServerLine::Left { group } => groups.remove(group),
                        _ => false,
                    };
                    transfers.progress().suspend(|| show(&line))?;
                }
                Ok(Some(ServerLine::File { from, body })) => {
                    if let Err(err) = transfers.handle(&from, &body) {
                        transfers.progress().suspend(|| eprintln!("from {from}: {err}"));
                    }
                }
                Ok(Some(ServerLine::FileUndeliverable { to, body })) => {
                    if let Err(err) = transfers.handle_undeliverable(&to, &body) {
                        transfers.progress().suspend(|| eprintln!("for {to}: {err}"));
                    }
                }
                Ok(Some(line)) => transfers.progress().suspend(|| show(&line))?,
                Ok(None) => {
                    transfers.shutdown("connection closed").await;
                    eprintln!("server closed the connection");
                    return Ok(());
                }
                Err(err @ ClientError::Line(_)) => eprintln!("{err}"),
                Err(err) => return Err(err.into()),
            },
            Some((to, message)) = outbox.recv() => paths.send(&to, Kind::File, message.to_string()),
            event = paths.next() => act(event, &mut client, &mut transfers, show_path).await?,
            Some(finished) = transfers.next_finished(), if transfers.running() > 0 => {
                transfers.progress().suspend(|| eprintln!("{finished}"));
            }
        }
    }
    let reason = format!("{} left", args.user);
    for (to, message) in transfers.shutdown(&reason).await {
        paths.send(&to, Kind::File, message.to_string());
    }
    // What waits for a punch or for the direct path's ack is sure of its path first: through
    // the server at worst, within the punch and idle timeouts.
    let patience = args.punch_timeout + args.p2p_idle_timeout + Duration::from_secs(5);
    let flushed = async {
        loop {
            tokio::select! {
                event = paths.next() => act(event, &mut client, &mut transfers, show_path).await?,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if paths.pending() == 0 && paths.idle() {
                return Ok::<(), anyhow::Error>(());
            }
        }
    };
    if tokio::time::timeout(patience, flushed).await.is_err() {
        eprintln!("leaving with {} messages unconfirmed", paths.pending());
    }
    paths.close();
    client.quit().await?;
    Ok(())
}

/// Sets up the direct path after the login: the probe's port, the socket, the candidates.
async fn open_paths(args: &Args, client: &mut ImClient) -> anyhow::Result<Paths> {
    let engine = EngineConfig {
        enabled: !args.no_p2p,
        punch_timeout: args.punch_timeout,
        ..EngineConfig::default()
    };
    let config =
        PathsConfig { engine, idle_timeout: args.p2p_idle_timeout, ..PathsConfig::default() };
    let udp = if args.no_p2p { None } else { client.udp_port().await? };
    let server = (client.server_addr()?, client.server());
    let paths = Paths::start(config, &args.user, server, udp).await;
    // Candidates (none with --no-p2p) also ask for messages labelled with their path.
    if !args.no_p2p || args.show_path {
        client.send_line(&paths.candidates_line()).await?;
        // One more question and answer: once it is answered, the server has taken the
        // candidates and handed them to the cluster, so a peer that hears of this login and
        // offers a direct path at once finds them.
        client.udp_port().await?;
    }
    Ok(paths)
}

/// Does what the direct path asks: a line to the server, a message to show or to transfer.
async fn act(
    event: PathsEvent,
    client: &mut ImClient,
    transfers: &mut Transfers,
    show_path: bool,
) -> anyhow::Result<()> {
    match event {
        PathsEvent::ToServer(line) => client.send_line(&line).await?,
        PathsEvent::Deliver { from, kind: Kind::File, body, .. } => {
            if let Err(err) = transfers.handle(&from, &body) {
                transfers.progress().suspend(|| eprintln!("from {from}: {err}"));
            }
        }
        PathsEvent::Deliver { from, via, kind: Kind::Text, body } => {
            transfers
                .progress()
                .suspend(|| print_message(&from, &body, show_path.then_some(via)))?;
        }
        PathsEvent::Notice(notice) => transfers.progress().suspend(|| eprintln!("{notice}")),
        PathsEvent::PathChanged { peer, path } if show_path => {
            let notice = match path {
                Path::Punching => format!("opening a direct path to {peer}"),
                Path::Direct => format!("direct path to {peer} open"),
                _ => format!("to {peer}: through the server"),
            };
            transfers.progress().suspend(|| eprintln!("{notice}"));
        }
        PathsEvent::PathChanged { .. } => {}
    }
    Ok(())
}

/// Prints a message on stdout, with its path if asked.
fn print_message(from: &str, text: &str, via: Option<Via>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match via {
        Some(via) => writeln!(stdout, "{from}: {text} [{}]", via.label())?,
        None => writeln!(stdout, "{from}: {text}")?,
    }
    stdout.flush()?;
    Ok(())
}

/// How long a drained server may take to end the old session once the client logged in on the
/// new one; past it (a hub policy other than `replace` keeps both) the client leaves it.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shows what the old connection of a move still brings, until its server closes it: messages
/// routed there before the login on the new server arrive only there.
async fn finish(
    mut old: ImClient,
    transfers: &mut Transfers,
    paths: &mut Paths,
) -> anyhow::Result<()> {
    let reading = async {
        loop {
            match old.recv().await {
                Ok(Some(line)) if Paths::takes(&line) => paths.handle_line(line),
                Ok(Some(ServerLine::Kicked { .. } | ServerLine::Move { .. })) => {}
                Ok(Some(ServerLine::File { from, body })) => {
                    if let Err(err) = transfers.handle(&from, &body) {
                        transfers.progress().suspend(|| eprintln!("from {from}: {err}"));
                    }
                }
                Ok(Some(line)) => transfers.progress().suspend(|| show(&line))?,
                Ok(None) => return Ok::<(), anyhow::Error>(()),
                Err(err @ ClientError::Line(_)) => eprintln!("{err}"),
                Err(_) => return Ok(()),
            }
        }
    };
    match tokio::time::timeout(MOVE_TIMEOUT, reading).await {
        Ok(result) => result,
        Err(_) => {
            eprintln!("the old server kept the session; leaving it");
            Ok(())
        }
    }
}

/// Joins `groups` on the server the client just moved to, and waits until each is in effect, so
/// the move is only announced once the client hears its groups again. Lines that arrive
/// meanwhile are shown as usual.
async fn rejoin(
    client: &mut ImClient,
    groups: &BTreeSet<String>,
    transfers: &mut Transfers,
    paths: &mut Paths,
) -> anyhow::Result<()> {
    for group in groups {
        client.join(group).await?;
    }
    let mut waiting = groups.len();
    while waiting > 0 {
        match client.recv().await? {
            Some(line) if Paths::takes(&line) => paths.handle_line(line),
            Some(ServerLine::Joined { group }) if groups.contains(&group) => waiting -= 1,
            Some(ServerLine::Error { reason }) => {
                // One answer per join: a refused join answers with an error.
                eprintln!("error: {reason}");
                waiting -= 1;
            }
            Some(ServerLine::File { from, body }) => {
                if let Err(err) = transfers.handle(&from, &body) {
                    transfers.progress().suspend(|| eprintln!("from {from}: {err}"));
                }
            }
            Some(line) => transfers.progress().suspend(|| show(&line))?,
            None => anyhow::bail!("the new server closed the connection"),
        }
    }
    Ok(())
}

const USAGE: &str = "`@user text` sends text to user, `/all text` to everyone online, `/join ROOM` \
                     and `/leave ROOM` join and leave a group, `#ROOM text` sends to its members, \
                     `/who user` finds user, `/path user` tells the path to user, `/file user path` \
                     sends a file, `/quit` leaves";

/// Runs one command typed by the user.
async fn run(client: &mut ImClient, paths: &mut Paths, command: &str) -> anyhow::Result<()> {
    let (verb, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    match verb {
        "/all" if !rest.is_empty() => client.broadcast(rest).await?,
        "/join" if !rest.is_empty() && !rest.contains(' ') => client.join(rest).await?,
        "/leave" if !rest.is_empty() && !rest.contains(' ') => client.leave(rest).await?,
        "/who" if !rest.is_empty() && !rest.contains(' ') => client.who(rest).await?,
        "/path" if !rest.is_empty() && !rest.contains(' ') => {
            eprintln!("path to {rest}: {}", paths.label(rest))
        }
        _ => match verb.split_at_checked(1) {
            Some(("@", to)) if !to.is_empty() => paths.send(to, Kind::Text, rest.to_owned()),
            Some(("#", group)) if !group.is_empty() => client.send_to_group(group, rest).await?,
            _ => eprintln!("usage: {USAGE}"),
        },
    }
    Ok(())
}

/// Prints one line from the server: messages on stdout, the rest on stderr.
fn show(line: &ServerLine) -> anyhow::Result<()> {
    match line {
        ServerLine::Message { from, text } => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{from}: {text}")?;
            stdout.flush()?;
        }
        ServerLine::Undeliverable { to, reason, text } => {
            eprintln!("not delivered to {to} ({reason}): {text}")
        }
        ServerLine::Group { group, from, text } => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "#{group} {from}: {text}")?;
            stdout.flush()?;
        }
        ServerLine::Broadcast { from, text } => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "* {from}: {text}")?;
            stdout.flush()?;
        }
        ServerLine::Joined { group } => eprintln!("joined #{group}"),
        ServerLine::Left { group } => eprintln!("left #{group}"),
        ServerLine::Error { reason } => eprintln!("error: {reason}"),
        ServerLine::Located { user, server: Some(server) } => {
            eprintln!("{user} is online on server {server}")
        }
        ServerLine::Located { user, server: None } => eprintln!("{user} is offline"),
        ServerLine::Presence { user, server: Some(server) } => {
            eprintln!("online: {user} (server {server})")
        }
        ServerLine::Presence { user, server: None } => eprintln!("offline: {user}"),
        ServerLine::Hub { up: true } => eprintln!("the server reached the hub again"),
        ServerLine::Hub { up: false } => {
            eprintln!("the server lost the hub; messages wait there until it is back")
        }
        ServerLine::Ok { .. }
        | ServerLine::Move { .. }
        | ServerLine::Kicked { .. }
        | ServerLine::File { .. }
        | ServerLine::FileUndeliverable { .. }
        | ServerLine::Udp { .. }
        | ServerLine::Reach { .. }
        | ServerLine::Invite { .. }
        | ServerLine::Routed { .. } => {}
    }
    Ok(())
}

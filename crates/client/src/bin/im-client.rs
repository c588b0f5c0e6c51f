//! `im-client`: chat through the example IM server from a terminal or a pipe.
//!
//! Reads commands from stdin, one per line: `@user text` sends text to user; `/who user` tells
//! whether user is online and on which server; `/quit` leaves (so does the end of stdin). Every
//! received message is printed on stdout as `sender: text`; status and errors go to stderr, so
//! stdout can be piped to another program. With `--friends a,b`, a line `online: a (server 1)` or
//! `offline: a` tells each friend's state at the start and whenever it changes. A client whose
//! user logs in elsewhere (and is kicked by the hub's `replace` policy) prints why and exits.

use std::io::Write;
use std::net::SocketAddr;

use acms_client::{ClientError, ImClient, ServerLine};
use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Interactive client of the example IM server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of the IM server to log in to.
    #[arg(long, default_value = "127.0.0.1:6000")]
    server: SocketAddr,
    /// Your user name (no spaces).
    #[arg(long)]
    user: String,
    /// Users to hear about when they come online or go offline, separated by commas.
    #[arg(long, value_delimiter = ',')]
    friends: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(chat(args));
    // A read of stdin may still be pending on a blocking thread; do not wait for it.
    runtime.shutdown_background();
    result
}

async fn chat(args: Args) -> anyhow::Result<()> {
    let mut client = ImClient::connect(args.server, &args.user)
        .await
        .with_context(|| format!("cannot log in to {} as {}", args.server, args.user))?;
    eprintln!(
        "logged in as {} on server {} ({}); type `@user text` to send, `/quit` to leave",
        args.user,
        client.server(),
        args.server
    );
    let friends: Vec<String> = args.friends.into_iter().filter(|name| !name.is_empty()).collect();
    if !friends.is_empty() {
        client.watch(&friends).await?;
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line?.as_deref().map(str::trim) {
                None | Some("/quit") => break,
                Some("") => {}
                Some(command) if command.starts_with("/who") => match command.split_whitespace().collect::<Vec<_>>()[..] {
                    ["/who", user] => client.who(user).await?,
                    _ => eprintln!("usage: `/who user` tells whether user is online and where"),
                },
                Some(command) => match command.strip_prefix('@').and_then(|rest| rest.split_once(' ')) {
                    Some((to, text)) if !to.is_empty() => client.send(to, text).await?,
                    _ => eprintln!("usage: `@user text` sends text to user, `/who user` finds user, `/quit` leaves"),
                },
            },
            line = client.recv() => match line {
                Ok(Some(ServerLine::Kicked { reason })) => {
                    eprintln!("kicked: {reason}");
                    return Ok(());
                }
                Ok(Some(line)) => show(&line)?,
                Ok(None) => {
                    eprintln!("server closed the connection");
                    return Ok(());
                }
                Err(err @ ClientError::Line(_)) => eprintln!("{err}"),
                Err(err) => return Err(err.into()),
            },
        }
    }
    client.quit().await?;
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
        ServerLine::Undeliverable { to, text } => {
            eprintln!("not delivered to {to} (offline): {text}")
        }
        ServerLine::Error { reason } => eprintln!("error: {reason}"),
        ServerLine::Located { user, server: Some(server) } => {
            eprintln!("{user} is online on server {server}")
        }
        ServerLine::Located { user, server: None } => eprintln!("{user} is offline"),
        ServerLine::Presence { user, server: Some(server) } => {
            eprintln!("online: {user} (server {server})")
        }
        ServerLine::Presence { user, server: None } => eprintln!("offline: {user}"),
        ServerLine::Ok { .. } | ServerLine::Kicked { .. } => {}
    }
    Ok(())
}

//! The links that watch the peer hubs for hot standby: one per peer, authenticated like an app
//! server's (`PeerHello`), asking for the peer's `HubStatus` every `keepalive_interval`, and the
//! heartbeat that shows when this hub was paused. What they learn goes to
//! [`Standby`](crate::standby::Standby), which
//! decides the hub's role.

use std::sync::Arc;
use std::time::{Duration, Instant};

use acms_protocol::{
    Challenge, Codec, Control, ErrorCode, Frame, HANDSHAKE_MAX_FRAME_LEN, Nonce, PROTOCOL_VERSION,
    PeerHello, ProtocolError, Prover, Secret, ServerId,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::MissedTickBehavior;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::standby::{RoleChange, Seen};
use crate::state::HubState;

/// Why a peer link ended.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("no status within {0:?}")]
    Silent(Duration),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("unexpected message from the peer")]
    Unexpected,
    #[error(
        "the peer's proof does not match this hub's secret (set the same ACMS_SECRET on every hub)"
    )]
    BadProof,
}

/// Notes every `keepalive_interval` that the hub runs, so that a pause shows as a gap.
pub(crate) async fn heartbeat(shared: Arc<HubState>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(shared.config.keepalive_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => shared.standby.beat(Instant::now()),
        }
    }
}

/// Watches the peer of `slot` until shutdown: one connection at a time, a status request every
/// `keepalive_interval`, and a new connection after any failure.
pub(crate) async fn watch(shared: Arc<HubState>, slot: usize, shutdown: CancellationToken) {
    let Some(addr) = shared.standby.peer_addr(slot) else { return };
    let index = slot;
    let interval = shared.config.keepalive_interval;
    let mut reachable = None;
    loop {
        let mut asked = shared.standby.pauses();
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return,
            ended = probe(&shared, index, &addr, &mut reachable, &mut asked) => ended,
        };
        if reachable != Some(false) {
            warn!(peer = %addr, error = %ended, "peer hub unreachable");
            reachable = Some(false);
        }
        report(&shared, index, Seen::Unreachable, asked);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One connection to a peer: authenticates (`PeerHello`), reads each answer within
/// `keepalive_timeout`, and waits the interval before asking again while watching the socket, so
/// that a peer that dies is noticed at once.
async fn probe(
    shared: &Arc<HubState>,
    index: usize,
    addr: &str,
    reachable: &mut Option<bool>,
    asked: &mut u64,
) -> PeerError {
    let timeout = shared.config.keepalive_timeout;
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return err.into(),
        Err(_) => return PeerError::Silent(timeout),
    };
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = BytesMut::with_capacity(1024);
    let mut codec = Codec::new(HANDSHAKE_MAX_FRAME_LEN);
    let secret = shared.config.secret.as_ref();
    let opened = open(secret, &mut reader, &mut writer, &mut buf, &mut codec);
    match tokio::time::timeout(timeout, opened).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return err,
        Err(_) => return PeerError::Silent(timeout),
    }
    loop {
        let answer =
            tokio::time::timeout(timeout, next_control(&mut reader, &mut buf, &mut codec)).await;
        let status = match answer {
            Err(_) => return PeerError::Silent(timeout),
            Ok(Err(err)) => return err,
            Ok(Ok(Control::HubStatus(status))) => status,
            Ok(Ok(Control::Error { message, .. })) => return PeerError::Refused(message),
            Ok(Ok(_)) => return PeerError::Unexpected,
        };
        let seen = if status.id == shared.standby.rank.id
            && status.started == shared.standby.rank.started
        {
            Seen::Myself
        } else {
            Seen::Reachable(status.into())
        };
        if *reachable != Some(true) {
            info!(peer = %addr, active = status.active, servers = status.servers, myself = seen == Seen::Myself, "peer hub reachable");
            *reachable = Some(true);
        }
        report(shared, index, seen, *asked);
        if seen == Seen::Myself {
            // Nothing to watch; the slot stays known and never counts as a peer.
            std::future::pending::<()>().await;
        }
        let read = tokio::select! {
            _ = tokio::time::sleep(shared.config.keepalive_interval) => None,
            read = reader.read_buf(&mut buf) => Some(read),
        };
        match read {
            None => {
                *asked = shared.standby.pauses();
                if let Err(err) = write_control(&mut writer, Control::PeerStatus).await {
                    return err;
                }
            }
            Some(Ok(0)) => return PeerError::Closed,
            Some(Ok(_)) => return PeerError::Unexpected,
            Some(Err(err)) => return err.into(),
        }
    }
}

/// Opens a status link: `PeerHello`, then with a secret the challenge-response, in which this
/// hub checks the peer's proof before it gives its own (docs/FAILOVER.md).
async fn open(
    secret: Option<&Secret>,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    codec: &mut Codec,
) -> Result<(), PeerError> {
    let nonce = secret.map(|_| Nonce::random());
    write_control(writer, Control::PeerHello(PeerHello { version: PROTOCOL_VERSION, nonce }))
        .await?;
    let (Some(secret), Some(ours)) = (secret, nonce) else {
        return Ok(());
    };
    match next_control(reader, buf, codec).await? {
        Control::Challenge(Challenge { nonce: theirs, proof }) => {
            if secret.verify(Prover::Watched, ServerId::HUB, &ours, &theirs, &proof).is_err() {
                let refusal = Control::error(
                    ErrorCode::Unauthorized,
                    "the hub's proof does not match the shared secret of the hub watching it",
                );
                let _ = write_control(writer, refusal).await;
                return Err(PeerError::BadProof);
            }
            let proof = secret.prove(Prover::Watcher, ServerId::HUB, &ours, &theirs);
            write_control(writer, Control::Auth { proof }).await
        }
        Control::Error { message, .. } => Err(PeerError::Refused(message)),
        _ => Err(PeerError::Unexpected),
    }
}

async fn write_control(writer: &mut OwnedWriteHalf, control: Control) -> Result<(), PeerError> {
    let bytes = Frame::Control(control).to_bytes(HANDSHAKE_MAX_FRAME_LEN)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// The next control message on a peer link.
async fn next_control(
    reader: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    codec: &mut Codec,
) -> Result<Control, PeerError> {
    loop {
        if let Some(raw) = codec.decode(buf)? {
            return match raw.decode()? {
                Frame::Control(control) => Ok(control),
                _ => Err(PeerError::Unexpected),
            };
        }
        if reader.read_buf(buf).await? == 0 {
            return Err(PeerError::Closed);
        }
    }
}

/// Records what was learnt of a peer and acts on a change of role.
fn report(shared: &HubState, index: usize, seen: Seen, asked: u64) {
    let servers = shared.registry.connected_count();
    act(shared, shared.standby.update(index, seen, servers, asked));
}

/// Acts on a change of this hub's role: a hub that yields closes its app servers, so they move
/// to the active one.
pub(crate) fn act(shared: &HubState, change: Option<RoleChange>) {
    let servers = shared.registry.connected_count();
    match change {
        Some(RoleChange::BecameActive) => {
            info!(servers, "this hub is now active: accepting app servers")
        }
        Some(RoleChange::Yielded) => {
            warn!(
                servers,
                "another active hub has more app servers (or ranks first): going standby and closing this hub's app servers so they move"
            );
            for server in shared.registry.servers() {
                shared.registry.close(server.id);
            }
        }
        None => {}
    }
}

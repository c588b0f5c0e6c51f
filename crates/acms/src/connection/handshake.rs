//! The handshake of a connection, within one deadline, whatever the peer sends: TLS when
//! configured, `Hello`, then the shared-secret challenge (or, with no secret, the loopback rule),
//! and the registration. Nothing but the handshake is accepted before the peer is authenticated,
//! and under a small frame limit.
//!
//! It ends in the registered server's [`Session`] (so nothing later waits for a server id that
//! may be missing), or in a peer hub's status link (docs/FAILOVER.md): a connection that opens
//! with `PeerHello` is authenticated like an app server and takes one of the hub's few peer-link
//! slots.

use std::time::SystemTime;

use acms_protocol::{
    Challenge, Codec, Control, ErrorCode, Frame, HANDSHAKE_MAX_FRAME_LEN, Hello, Nonce,
    PROTOCOL_VERSION, PeerHello, Prover, Secret, ServerEpoch, ServerId, Welcome,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{Span, info, warn};

use super::session::Session;
use super::{Close, Connection, end_settle};
use crate::auth::{Admission, admit_without_secret};
use crate::registry::{Arriving, ServerInfo};
use crate::state::HubState;
use crate::tls::{self, Refusal, ServerTls};

/// What a connection turned out to be once its handshake was done.
pub(super) enum Opened {
    /// A registered app server, with the hub's record of it.
    Server(Box<Session>),
    /// An app server registered, then refused before its session started (this hub went
    /// standby meanwhile, or its queue took nothing): its session takes it out of the cluster.
    Failed(Box<Session>, Close),
    /// A peer hub watching this one; the codec of the handshake stays in force, and the
    /// peer-link slot is held as long as the link.
    Peer(Codec, OwnedSemaphorePermit),
}

/// The TLS handshake, within the connection's handshake deadline. A failure is logged and counted
/// here; a plain-TCP peer is told in plain frames that the port needs TLS.
pub(super) async fn accept_tls(
    tls: &ServerTls,
    stream: TcpStream,
    shared: &HubState,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return None,
        accepted = tokio::time::timeout_at(deadline, tls.accept(stream)) => accepted,
    };
    let refusal = match accepted {
        Ok(Ok(stream)) => return Some(stream),
        Ok(Err(refusal)) => refusal,
        Err(_) => {
            shared.stats.refused();
            warn!(timeout = ?shared.config.handshake_timeout, "no TLS handshake in time; closing connection");
            return None;
        }
    };
    shared.stats.refused();
    match refusal {
        Refusal::Closed => {
            info!("peer closed before the TLS handshake");
            None
        }
        Refusal::Failed(err) => {
            shared.stats.unauthorized();
            let error = crate::tls::explain_failure(&err);
            warn!(%error, "TLS handshake failed; closing connection");
            None
        }
        Refusal::NotTls(mut stream) => {
            shared.stats.unauthorized();
            let reason = "this hub's transfer port requires TLS: configure TLS on the app server \
                          (ClusterBuilder::tls, or --tls-ca for im-server)";
            warn!(code = ?ErrorCode::Unauthorized, reason, "plain-TCP peer on the TLS port; closing connection");
            // Take what the peer sent (its Hello) first: closing a socket with unread bytes
            // resets it, and the peer could lose the explanation.
            let mut scratch = [0; HANDSHAKE_MAX_FRAME_LEN];
            while matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {}
            let refusal = Control::error(ErrorCode::Unauthorized, reason);
            if let Ok(bytes) = Frame::Control(refusal).to_bytes(HANDSHAKE_MAX_FRAME_LEN) {
                let _ = tokio::time::timeout_at(deadline, async {
                    stream.write_all(&bytes).await?;
                    stream.shutdown().await
                })
                .await;
            }
            None
        }
    }
}

/// Refuses a peer (`who`: "server", "peer hub") that speaks another protocol version.
fn check_version(theirs: u16, who: &str) -> Result<(), Close> {
    if theirs == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Close::refused(
        ErrorCode::VersionMismatch,
        format!("hub speaks protocol version {PROTOCOL_VERSION}, {who} speaks {theirs}"),
    ))
}

impl Connection {
    /// The next handshake message, reading as needed under the small handshake frame limit.
    /// Anything but a control message is refused: the peer is not authenticated yet.
    pub(super) async fn handshake_message(&mut self, codec: &mut Codec) -> Result<Control, Close> {
        loop {
            if self.shared.tls.is_none() && tls::looks_like_tls(&self.read_buf) {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "the app server speaks TLS but this hub's transfer port is plain TCP: set \
                     [transfer.tls] on the hub, or turn TLS off on the app server",
                ));
            }
            if let Some(raw) = codec.decode(&mut self.read_buf)? {
                return match raw.decode()? {
                    Frame::Control(control) => Ok(control),
                    Frame::Data(_) | Frame::Ack(_) => Err(Close::refused(
                        ErrorCode::Unauthorized,
                        "data or ack frame before authentication: only the handshake is accepted",
                    )),
                };
            }
            self.read_more(None).await?;
        }
    }

    /// Authenticates and registers the AS, or authenticates a peer hub asking for this hub's
    /// status, all within the handshake deadline, whatever the peer sends.
    pub(super) async fn handshake(&mut self) -> Result<Opened, Close> {
        let timeout = self.shared.config.handshake_timeout;
        match tokio::time::timeout_at(self.handshake_deadline, self.authenticate()).await {
            Ok(result) => result,
            Err(_) => Err(Close::refused(
                ErrorCode::HandshakeTimeout,
                format!("no complete handshake within {timeout:?}"),
            )),
        }
    }

    async fn authenticate(&mut self) -> Result<Opened, Close> {
        let mut codec = Codec::new(HANDSHAKE_MAX_FRAME_LEN.min(self.max_frame_len));
        let hello = match self.handshake_message(&mut codec).await? {
            Control::Hello(hello) => hello,
            Control::PeerHello(hello) => {
                let slot = self.authenticate_peer(hello, &mut codec).await?;
                return Ok(Opened::Peer(codec, slot));
            }
            Control::PeerStatus => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "PeerStatus before PeerHello: a peer hub authenticates first, as an app \
                     server does (docs/FAILOVER.md)",
                ));
            }
            _ => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "the first frame must be Hello: only the handshake is accepted before \
                     authentication",
                ));
            }
        };
        check_version(hello.version, "server")?;
        Span::current().record("server", hello.server_id.0);
        if hello.server_id == ServerId::HUB {
            return Err(Close::refused(
                ErrorCode::Malformed,
                format!("server id {} is reserved for the hub itself", ServerId::HUB),
            ));
        }
        let admission = self.check_secret(&hello, &mut codec).await?;
        self.check_active()?;
        self.register(hello, admission)
    }

    /// Registers an authenticated AS and starts its session: `Welcome`, the list of the other
    /// servers, and `ServerUp` to them.
    fn register(&mut self, hello: Hello, admission: Admission) -> Result<Opened, Close> {
        let info = ServerInfo {
            id: hello.server_id,
            client_addr: hello.client_addr,
            peer_addr: self.peer,
            connected_at: SystemTime::now(),
            load: None,
            draining: false,
        };
        let client_addr = info.client_addr.clone();
        let id = info.id;
        let config = &self.shared.config;
        let welcome = Frame::Control(Control::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            max_frame_len: self.max_frame_len as u32,
            max_users: u32::try_from(config.max_users_per_server).unwrap_or(u32::MAX),
            max_groups: u32::try_from(config.max_groups_per_server).unwrap_or(u32::MAX),
        }))
        .to_bytes(self.max_frame_len)?;
        // Queued by the registry before another connection can push to this AS.
        let outbox = self.own.outbox.clone();
        // On a backplane the server may come from another hub, where frames for it died: every
        // origin sends again, and those of other hubs only after their `Resent`.
        let arriving = match &self.shared.backplane {
            Some(backplane) => Arriving {
                resend_all: true,
                remote: backplane.replica.remote_servers().into_iter().map(|(id, _)| id).collect(),
            },
            None => Arriving::default(),
        };
        let registration = self
            .shared
            .registry
            .register_arriving(
                info,
                hello.epoch,
                outbox,
                self.closer.clone(),
                Some(welcome),
                arriving,
            )
            .map_err(|err| Close::refused(ErrorCode::DuplicateServer, err.to_string()))?;
        if let Some(backplane) = &self.shared.backplane {
            backplane.snapshot_begins(id);
            backplane.server_registered(id, hello.epoch, client_addr.clone());
        }
        let returning = !registration.stale_users.is_empty();
        let own = self.own.registered(id);
        let now = Instant::now().into_std();
        let session = Session::new(self.shared.clone(), id, own, registration.stale_users, now);
        let started = (|| -> Result<(), Close> {
            // It may have gone standby since the check before, and closed its servers before
            // this one.
            self.check_active()?;
            info!(%client_addr, returning, admitted = %admission, "app server registered");
            if registration.first {
                tokio::spawn(end_settle(self.shared.clone()));
            }
            let own = session.own();
            own.outbox.keep_alive();
            let peers = self.shared.registry.peers(id);
            own.send(self.shared.servers(&peers))?;
            // The AS knows the hub's epoch now: the hub's own pushes may reach it.
            self.shared.registry.resent(ServerId::HUB, id);
            let server = ServerEpoch { id, epoch: hello.epoch };
            self.shared.announce_up(peers, server, &registration.resend);
            Ok(())
        })();
        Ok(match started {
            Ok(()) => Opened::Server(Box::new(session)),
            Err(close) => Opened::Failed(Box::new(session), close),
        })
    }

    /// A standby refuses app servers, naming the active hub, so that they go there.
    fn check_active(&self) -> Result<(), Close> {
        if self.shared.standby.is_active() {
            return Ok(());
        }
        Err(Close::refused(ErrorCode::Unavailable, self.shared.standby.refusal()))
    }

    /// The shared-secret challenge, the same for an app server and a peer hub but for the labels
    /// each side proves under: this hub proves `ours` over both nonces, then checks the peer's
    /// `theirs`. A proof that does not match is `Close::Refused` with an empty reason, for the
    /// caller to name the peer (`Close::or_refused`).
    async fn challenge(
        &mut self,
        codec: &mut Codec,
        secret: &Secret,
        id: ServerId,
        their_nonce: &Nonce,
        (ours, theirs): (Prover, Prover),
    ) -> Result<(), Close> {
        let nonce = Nonce::random();
        let proof = secret.prove(ours, id, their_nonce, &nonce);
        self.own.send(Control::Challenge(Challenge { nonce, proof }))?;
        match self.handshake_message(codec).await? {
            Control::Auth { proof } => secret
                .verify(theirs, id, their_nonce, &nonce, &proof)
                .map_err(|_| Close::refused(ErrorCode::Unauthorized, "")),
            Control::Error { code, message } => Err(Close::RefusedByPeer { code, message }),
            _ => Err(Close::refused(
                ErrorCode::Unauthorized,
                "expected Auth: only the handshake is accepted before authentication",
            )),
        }
    }

    /// The shared-secret part of an app server's handshake: with a secret on both sides, the hub
    /// proves it over the AS's nonce and challenges the AS with its own; with none on either, the
    /// loopback rule. A secret on one side only is refused, so a misconfiguration shows at once.
    /// Says how the server was admitted.
    async fn check_secret(&mut self, hello: &Hello, codec: &mut Codec) -> Result<Admission, Close> {
        let secret = self.shared.config.secret.clone();
        match (secret, hello.nonce) {
            (Some(secret), Some(as_nonce)) => {
                let provers = (Prover::Hub, Prover::AppServer);
                self.challenge(codec, &secret, hello.server_id, &as_nonce, provers).await.map_err(
                    |close| close.or_refused("the app server's proof does not match the hub's secret (set the same ACMS_SECRET on both)"),
                )?;
                Ok(Admission::by_secret(self.client_verified))
            }
            (Some(_), None) => Err(Close::refused(
                ErrorCode::Unauthorized,
                "this hub requires a shared secret and the app server has none: set ACMS_SECRET \
                 (or `secret` in its config) on the app server, the same as on the hub",
            )),
            (None, Some(_)) => Err(Close::refused(
                ErrorCode::Unauthorized,
                "the app server has a shared secret but this hub has none: set the same \
                 ACMS_SECRET on the hub, or remove it from the app server",
            )),
            (None, None) => admit_without_secret(self.peer, self.client_verified)
                .map_err(|reason| Close::refused(ErrorCode::Unauthorized, reason)),
        }
    }

    /// Authenticates a peer hub that opened with `PeerHello` and takes a peer-link slot for it,
    /// held as long as the link. Runs inside the handshake deadline.
    async fn authenticate_peer(
        &mut self,
        hello: PeerHello,
        codec: &mut Codec,
    ) -> Result<OwnedSemaphorePermit, Close> {
        self.peer_hub = true;
        check_version(hello.version, "peer hub")?;
        match (self.shared.config.secret.clone(), hello.nonce) {
            (Some(secret), Some(their_nonce)) => {
                let provers = (Prover::Watched, Prover::Watcher);
                self.challenge(codec, &secret, ServerId::HUB, &their_nonce, provers).await.map_err(
                    |close| close.or_refused("the peer hub's proof does not match this hub's secret (set the same ACMS_SECRET on every hub)"),
                )?;
            }
            (Some(_), None) => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "this hub requires the cluster's shared secret and the peer hub has none: set \
                     the same ACMS_SECRET on every hub",
                ));
            }
            (None, Some(_)) => {
                return Err(Close::refused(
                    ErrorCode::Unauthorized,
                    "the peer hub has a shared secret but this hub has none: set the same \
                     ACMS_SECRET on every hub",
                ));
            }
            (None, None) => {
                admit_without_secret(self.peer, self.client_verified)
                    .map_err(|reason| Close::refused(ErrorCode::Unauthorized, reason))?;
            }
        }
        let limit = self.shared.config.max_peer_links;
        self.shared.peer_links.clone().try_acquire_owned().map_err(|_| {
            Close::refused(
                ErrorCode::Unavailable,
                format!("peer hub link limit ({limit}, transfer.max_peer_links) reached"),
            )
        })
    }
}

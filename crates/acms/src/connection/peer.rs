//! The watched side of a peer hub's status link (docs/FAILOVER.md): a connection that opens with
//! `PeerHello` is authenticated like an app server (the shared secret's challenge-response, or
//! the loopback rule), within the same handshake deadline, and takes one of the hub's few
//! peer-link slots; only then is it answered `HubStatus`, once and for each `PeerStatus`.

use acms_protocol::{Codec, Control, ErrorCode, PeerHello, Prover, ServerId};
use tokio::sync::OwnedSemaphorePermit;
use tracing::info;

use super::{Close, Connection, check_version};
use crate::auth::admit_without_secret;

impl Connection {
    /// Authenticates a peer hub that opened with `PeerHello` and takes a peer-link slot for it,
    /// held as long as the link. Runs inside the handshake deadline.
    pub(super) async fn authenticate_peer(
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

    /// Answers a peer hub's status requests until it goes away or falls silent: the link it
    /// watches this hub over. Nothing else is accepted on it.
    pub(super) async fn answer_peer(&mut self, mut codec: Codec) -> Close {
        info!("peer hub watching this hub");
        let timeout = self.shared.config.keepalive_timeout;
        loop {
            let status = self.shared.standby.status(self.shared.registry.connected_count());
            if let Err(close) = self.send(Control::HubStatus(status)) {
                return close;
            }
            match tokio::time::timeout(timeout, self.handshake_message(&mut codec)).await {
                Err(_) => return Close::Idle,
                Ok(Ok(Control::PeerStatus)) => {}
                Ok(Ok(_)) => {
                    return Close::refused(
                        ErrorCode::Malformed,
                        "a peer hub's link carries only PeerStatus",
                    );
                }
                Ok(Err(Close::PeerClosed)) => return Close::PeerHub,
                Ok(Err(close)) => return close,
            }
        }
    }
}

//! Connecting to a hub: TCP, TLS when configured, then `Hello`, the shared secret's challenge
//! and answer when there is one, and `Welcome` (or a refusal) back; and why a session ended.

use std::io;
use std::time::Duration;

use acms_protocol::{
    Codec, Control, ErrorCode, Frame, Hello, Nonce, PROTOCOL_VERSION, ProtocolError, Prover,
};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::Link;
use super::core::CoreError;
use crate::events::LinkState;
use crate::tls::{self, ReadHalf, WriteHalf};

/// Room made in the read buffer before each read: many small frames per system call.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// The read half of the hub connection with its buffer; the core decodes whole reads from it.
pub(super) struct Reader {
    half: ReadHalf,
    pub(super) buf: BytesMut,
}

impl Reader {
    /// Reads what the socket has; `Ok(false)` once the hub closed it.
    pub(super) async fn read_more(&mut self) -> io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.half.read_buf(&mut self.buf).await? > 0)
    }
}

/// Why a session with the hub ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("TLS with the hub failed: {}", tls::explain_failure(.0))]
    Tls(io::Error),
    #[error(
        "the hub could not prove the shared secret: the secrets differ (set the same ACMS_SECRET on both), or this is not the hub"
    )]
    HubUnauthenticated,
    #[error(
        "the hub did not authenticate itself although this server has a shared secret: set the same ACMS_SECRET on the hub"
    )]
    HubWithoutSecret,
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("hub refused the connection ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("hub closed the connection")]
    HubClosed,
    #[error("no answer to Hello within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("unexpected message from the hub: {0}")]
    Unexpected(&'static str),
    #[error("nothing from the hub for {0:?} (keepalive timeout): the path may be cut")]
    Silent(Duration),
}

impl From<CoreError> for SessionError {
    fn from(err: CoreError) -> Self {
        match err {
            CoreError::Protocol(err) => Self::Protocol(err),
            CoreError::Refused { code, message } => Self::Refused { code, message },
            CoreError::Unexpected(what) => Self::Unexpected(what),
            CoreError::Silent(after) => Self::Silent(after),
        }
    }
}

impl SessionError {
    /// How the link's state shows this failure: a refusal that retrying will not heal by itself
    /// is shown as such, everything else as a plain retry.
    pub(super) fn state(&self) -> LinkState {
        match self {
            Self::Refused { code, .. }
                if matches!(
                    code,
                    ErrorCode::Unauthorized
                        | ErrorCode::VersionMismatch
                        | ErrorCode::TooManyUsers
                        | ErrorCode::TooManyGroups
                ) =>
            {
                LinkState::Refused(*code)
            }
            Self::HubUnauthenticated | Self::HubWithoutSecret => {
                LinkState::Refused(ErrorCode::Unauthorized)
            }
            // A certificate refused, or the hub not speaking TLS: settings, not bad luck.
            Self::Tls(err) if tls::tls_failure(err).is_some() => {
                LinkState::Refused(ErrorCode::Unauthorized)
            }
            _ => LinkState::Connecting,
        }
    }
}

impl Link {
    /// Connects and registers: TLS if configured, then the protocol handshake. The handshake
    /// runs on the whole stream, so a TLS failure is reported as such; the stream is split
    /// after it.
    pub(super) async fn connect(&mut self, hub: &str) -> Result<(Reader, WriteHalf), SessionError> {
        let timeout = self.config.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(hub))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let (half, writer) = match self.config.tls.clone() {
            None => {
                let mut stream = stream;
                self.handshake(&mut stream, &mut buf).await?;
                tls::split_plain(stream)
            }
            Some(tls) => {
                let mut stream = tokio::time::timeout(timeout, tls.connect(stream))
                    .await
                    .map_err(|_| SessionError::HandshakeTimeout(timeout))?
                    .map_err(SessionError::Tls)?;
                self.handshake(&mut stream, &mut buf).await.map_err(|err| match err {
                    SessionError::Io(err) if tls::tls_failure(&err).is_some() => {
                        SessionError::Tls(err)
                    }
                    err => err,
                })?;
                tls::split_tls(stream)
            }
        };
        Ok((Reader { half, buf }, writer))
    }

    /// The protocol handshake on a connected stream; frames that follow `Welcome` stay in `buf`.
    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        buf: &mut BytesMut,
    ) -> Result<(), SessionError> {
        let timeout = self.config.connect_timeout;
        let server = self.config.server_id;
        let as_nonce = self.config.secret.as_ref().map(|_| Nonce::random());
        let hello = Control::Hello(Hello {
            version: PROTOCOL_VERSION,
            server_id: server,
            client_addr: self.config.client_addr.clone(),
            epoch: self.core.epoch().0,
            nonce: as_nonce,
        });
        self.write_control(stream, hello).await?;
        let mut answer = self.handshake_answer(stream, buf, timeout).await?;
        if let (Some(secret), Some(as_nonce)) = (self.config.secret.clone(), as_nonce) {
            let challenge = match answer {
                Control::Challenge(challenge) => challenge,
                Control::Welcome(_) => return Err(SessionError::HubWithoutSecret),
                other => return Err(refusal(other)),
            };
            let hub_nonce = challenge.nonce;
            if secret.verify(Prover::Hub, server, &as_nonce, &hub_nonce, &challenge.proof).is_err()
            {
                let refusal = Control::error(
                    ErrorCode::Unauthorized,
                    "the hub's proof does not match this app server's secret",
                );
                let _ = self.write_control(stream, refusal).await;
                return Err(SessionError::HubUnauthenticated);
            }
            let proof = secret.prove(Prover::AppServer, server, &as_nonce, &hub_nonce);
            self.write_control(stream, Control::Auth { proof }).await?;
            answer = self.handshake_answer(stream, buf, timeout).await?;
        }
        match answer {
            Control::Welcome(welcome) if welcome.version == PROTOCOL_VERSION => {
                self.core.handle_welcome(&welcome);
                Ok(())
            }
            Control::Welcome(welcome) => Err(SessionError::Refused {
                code: ErrorCode::VersionMismatch,
                message: format!("hub speaks protocol version {}", welcome.version),
            }),
            other => Err(refusal(other)),
        }
    }

    async fn write_control<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        control: Control,
    ) -> Result<(), SessionError> {
        stream.write_all(&Frame::Control(control).to_bytes(self.config.max_frame_len)?).await?;
        // TLS holds written bytes until flushed.
        stream.flush().await?;
        Ok(())
    }

    /// The hub's next handshake message, within `timeout`.
    async fn handshake_answer<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        timeout: Duration,
    ) -> Result<Control, SessionError> {
        let mut codec = Codec::new(self.config.max_frame_len);
        let next = async {
            loop {
                if let Some(raw) = codec.decode(buf)? {
                    return match raw.decode()? {
                        Frame::Control(control) => Ok(control),
                        Frame::Data(_) | Frame::Ack(_) => {
                            Err(SessionError::Unexpected("data or ack frame in the handshake"))
                        }
                    };
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(SessionError::HubClosed);
                }
            }
        };
        tokio::time::timeout(timeout, next)
            .await
            .map_err(|_| SessionError::HandshakeTimeout(timeout))?
    }
}

/// The error for a handshake answer that is not the one expected.
fn refusal(answer: Control) -> SessionError {
    match answer {
        Control::Error { code, message } => SessionError::Refused { code, message },
        _ => {
            SessionError::Unexpected("expected Welcome, or Challenge when this server has a secret")
        }
    }
}

//! A WebSocket as a client's lines: each text message is one line of the demo protocol, either
//! way. What a browser may not do closes its socket alone, with a warning and a close code: a
//! binary message, a line that is not part of the protocol, more messages than the rate allows.
//! A message over the size limit is refused by the WebSocket layer itself.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tracing::warn;

use super::WebSettings;
use super::directory::WebDirectory;
use crate::{ClientLine, LineError};

/// Why a web client's socket was closed from this side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebError {
    /// The WebSocket failed: the peer vanished, or broke the WebSocket protocol or its limits.
    #[error("WebSocket: {0}")]
    Socket(#[from] axum::Error),
    /// The protocol is text.
    #[error("a binary message, where the protocol is text lines")]
    Binary,
    /// A line that is not part of the protocol: a browser running the page never sends one.
    #[error(transparent)]
    Line(#[from] LineError),
    /// More messages than the rate limit allows.
    #[error("more than {0} messages a second")]
    Flood(u32),
}

/// A WebSocket read and written as lines; see the module's comment.
pub(crate) struct WebLines {
    socket: WebSocket,
    pages: WebDirectory,
    rate: TokenBucket,
    /// The close frame to send when the session ends, set by the error that ends it.
    close: Option<CloseFrame>,
}

impl WebLines {
    pub(crate) fn new(socket: WebSocket, pages: WebDirectory, settings: &WebSettings) -> Self {
        let rate = TokenBucket::new(settings.max_rate, settings.burst, Instant::now());
        Self { socket, pages, rate, close: None }
    }

    /// Closes the socket, with the reason of the error that ended the session if there was one;
    /// bounded, as a peer that does not read may never take the close frame.
    pub(crate) async fn finish(mut self) {
        let frame = self
            .close
            .take()
            .unwrap_or(CloseFrame { code: close_code::NORMAL, reason: "bye".into() });
        let close = async {
            let _ = self.socket.send(Message::Close(Some(frame))).await;
            let _ = self.socket.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    }

    /// Ends the stream with `err`, closing with `code` and the error as the reason.
    fn fail(&mut self, code: u16, err: WebError) -> Poll<Option<Result<String, WebError>>> {
        warn!(error = %err, "closing a misbehaving web client");
        let mut reason = err.to_string();
        // A close frame's reason has at most 123 bytes.
        let mut end = reason.len().min(120);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        self.close = Some(CloseFrame { code, reason: reason.into() });
        Poll::Ready(Some(Err(err)))
    }
}

impl Stream for WebLines {
    type Item = Result<String, WebError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let message = match ready!(self.socket.poll_next_unpin(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(None),
                Some(Err(err)) => return self.fail(close_code::POLICY, err.into()),
                // The WebSocket layer answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Binary(_))) => {
                    return self.fail(close_code::UNSUPPORTED, WebError::Binary);
                }
                Some(Ok(Message::Text(text))) => text,
            };
            if !self.rate.take(Instant::now()) {
                let rate = self.rate.rate;
                return self.fail(close_code::POLICY, WebError::Flood(rate));
            }
            if let Err(err) = ClientLine::parse(message.as_str()) {
                return self.fail(close_code::POLICY, err.into());
            }
            return Poll::Ready(Some(Ok(message.as_str().to_owned())));
        }
    }
}

impl Sink<String> for WebLines {
    type Error = WebError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WebError>> {
        self.socket.poll_ready_unpin(cx).map_err(WebError::from)
    }

    fn start_send(mut self: Pin<&mut Self>, line: String) -> Result<(), WebError> {
        // A drain names the new server's client address; a browser needs its page's.
        let line = match line.strip_prefix("MOVE ") {
            Some(addr) => match self.pages.page_of(addr) {
                Some(page) => format!("MOVE {page}"),
                None => {
                    warn!(%addr, "draining, but the target server has no web page: browsers stay");
                    "ERR this server is being drained, but the server taking its clients has no \
                     web page: staying here"
                        .to_owned()
                }
            },
            None => line,
        };
        self.socket.start_send_unpin(Message::Text(line.into())).map_err(WebError::from)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WebError>> {
        self.socket.poll_flush_unpin(cx).map_err(WebError::from)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WebError>> {
        self.socket.poll_close_unpin(cx).map_err(WebError::from)
    }
}

/// At most `rate` messages a second on average, `burst` at once.
#[derive(Debug)]
struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self { rate, burst, tokens: f64::from(burst), last: now }
    }

    /// Takes one token if there is one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate)).min(f64::from(self.burst));
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 5, start);
        assert_eq!((0..8).filter(|_| bucket.take(start)).count(), 5, "the burst, no more");
        let later = start + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| bucket.take(later)).count(), 3, "10 a second for 0.3 s");
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| bucket.take(much_later)).count(), 5, "never above the burst");
    }
}

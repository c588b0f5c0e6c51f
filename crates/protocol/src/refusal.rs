//! The payload of a [`DataKind::Refused`](crate::DataKind::Refused) frame: why the recipient's
//! server could not deliver a message, then the message's own payload.
//!
//! ```text
//! reason_len u16 | reason (UTF-8) | original payload
//! ```
//!
//! The hub never reads it (it routes on the header alone); the two app servers do.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;

/// Longest reason carried, in bytes; a longer one is cut at a character boundary.
pub const MAX_REASON_LEN: usize = 1024;

/// Bytes before the reason: its length.
const REASON_LEN_LEN: usize = 2;

/// A refused message as it travels back: the reason and the original payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why it was not delivered, for people; at most [`MAX_REASON_LEN`] bytes.
    pub reason: String,
    /// The sender's bytes, as they were sent.
    pub payload: Bytes,
}

impl Refusal {
    /// A refusal of `payload` for `reason`, cut to [`MAX_REASON_LEN`] bytes if longer.
    pub fn new(reason: &str, payload: Bytes) -> Self {
        Self { reason: cut(reason, MAX_REASON_LEN).to_owned(), payload }
    }

    /// Length once encoded.
    pub fn encoded_len(&self) -> usize {
        REASON_LEN_LEN + self.reason.len() + self.payload.len()
    }

    /// Shortens the reason so that the encoding is at most `len` bytes; false if even an empty
    /// reason does not fit.
    pub fn fit(&mut self, len: usize) -> bool {
        let room = len.saturating_sub(REASON_LEN_LEN + self.payload.len());
        if REASON_LEN_LEN + self.payload.len() > len {
            return false;
        }
        let keep = cut(&self.reason, room).len();
        self.reason.truncate(keep);
        true
    }

    /// The payload of the Refused frame.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        // The reason is at most MAX_REASON_LEN bytes, well within u16.
        out.put_u16(self.reason.len() as u16);
        out.put_slice(self.reason.as_bytes());
        out.put_slice(&self.payload);
        out.freeze()
    }

    /// Reads a Refused frame's payload; the original payload shares its bytes.
    pub fn decode(payload: &Bytes) -> Result<Self, ProtocolError> {
        let len = payload
            .get(..REASON_LEN_LEN)
            .map(|len| usize::from(u16::from_be_bytes([len[0], len[1]])))
            .ok_or(ProtocolError::Refusal("shorter than its reason's length"))?;
        if len > MAX_REASON_LEN {
            return Err(ProtocolError::Refusal("reason longer than 1024 bytes"));
        }
        let end = REASON_LEN_LEN + len;
        let reason = payload
            .get(REASON_LEN_LEN..end)
            .ok_or(ProtocolError::Refusal("ends inside its reason"))?;
        let reason = std::str::from_utf8(reason)
            .map_err(|_| ProtocolError::Refusal("reason is not UTF-8"))?
            .to_owned();
        Ok(Self { reason, payload: payload.slice(end..) })
    }
}

/// The longest prefix of `text` of at most `len` bytes that ends at a character boundary.
fn cut(text: &str, len: usize) -> &str {
    if text.len() <= len {
        return text;
    }
    let mut end = len;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_round_trips_and_bad_ones_are_errors() {
        let refusal = Refusal::new("too slow", Bytes::from_static(b"hi"));
        let encoded = refusal.encode();
        assert_eq!(&encoded[..], b"\x00\x08too slowhi");
        assert_eq!(encoded.len(), refusal.encoded_len());
        assert_eq!(Refusal::decode(&encoded).unwrap(), refusal);

        for bad in [&b""[..], b"\x00", b"\x00\x09too slow", b"\x00\x01\xff", b"\x04\x01"] {
            assert!(Refusal::decode(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
        let long = "é".repeat(MAX_REASON_LEN);
        let refusal = Refusal::new(&long, Bytes::new());
        assert!(refusal.reason.len() <= MAX_REASON_LEN && refusal.reason.starts_with('é'));
        assert_eq!(Refusal::decode(&refusal.encode()).unwrap(), refusal);
    }

    #[test]
    fn fit_shortens_the_reason_only() {
        let mut refusal = Refusal::new("the client is too slow", Bytes::from_static(b"abc"));
        assert!(refusal.fit(2 + 7 + 3));
        assert_eq!(refusal.reason, "the cli");
        assert!(refusal.fit(5));
        assert_eq!(refusal.reason, "");
        assert!(!refusal.fit(4), "the payload itself does not fit");
    }
}

//! The length-delimited frame codec.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::error::ProtocolError;
use crate::frame::{Frame, RawFrame};
use crate::{DEFAULT_MAX_FRAME_LEN, LENGTH_PREFIX_LEN, MAX_FRAME_LEN_CEILING};

/// Splits a byte stream into [`RawFrame`]s and writes [`Frame`]s, enforcing one length limit both ways.
///
/// A frame whose prefix claims more than the limit is an error as soon as the prefix arrives, before
/// any of its body is buffered. An incomplete frame decodes to `Ok(None)`.
#[derive(Debug, Clone)]
pub struct Codec {
    frames: LengthDelimitedCodec,
    max_frame_len: usize,
}

impl Codec {
    /// A codec with the given limit on frame bodies, capped at [`MAX_FRAME_LEN_CEILING`].
    pub fn new(max_frame_len: usize) -> Self {
        let max_frame_len = max_frame_len.min(MAX_FRAME_LEN_CEILING);
        let frames = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(LENGTH_PREFIX_LEN)
            .max_frame_length(max_frame_len)
            // Keep the prefix in the decoded bytes so the hub can forward a frame as it came.
            .num_skip(0)
            .length_adjustment(LENGTH_PREFIX_LEN as isize)
            .new_codec();
        Self { frames, max_frame_len }
    }

    /// The limit on frame bodies in force.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Length of the whole frame at the start of `src`, prefix included, once all of it is there.
    ///
    /// Lets a relay walk frames where they lie and forward a run of them as one slice, under the
    /// same limits as [`Decoder::decode`]: an oversized prefix is an error as soon as it arrives.
    pub fn whole_frame_len(&self, src: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > self.max_frame_len {
            return Err(ProtocolError::FrameTooLarge { len, max: self.max_frame_len });
        }
        if len == 0 {
            return Err(ProtocolError::Empty);
        }
        let whole = LENGTH_PREFIX_LEN + len;
        Ok((src.len() >= whole).then_some(whole))
    }
}

impl Default for Codec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for Codec {
    type Item = RawFrame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, ProtocolError> {
        let claimed = (src.len() >= LENGTH_PREFIX_LEN).then(|| (&src[..]).get_u32() as usize);
        match self.frames.decode(src) {
            Ok(Some(bytes)) if bytes.len() == LENGTH_PREFIX_LEN => Err(ProtocolError::Empty),
            Ok(Some(bytes)) => Ok(Some(RawFrame::new(bytes.freeze()))),
            Ok(None) => Ok(None),
            Err(err) if err.get_ref().is_some_and(|e| e.is::<LengthDelimitedCodecError>()) => {
                Err(ProtocolError::FrameTooLarge {
                    len: claimed.unwrap_or_default(),
                    max: self.max_frame_len,
                })
            }
            Err(err) => Err(err.into()),
        }
    }
}

impl Encoder<&Frame> for Codec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(self.max_frame_len, dst)
    }
}

impl Encoder<Frame> for Codec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(self.max_frame_len, dst)
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};

    use super::*;
    use crate::{
        Challenge, Control, Data, DataKind, ErrorCode, Hello, Nonce, Proof, ServerId, UserId,
        Welcome,
    };

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn every_kind_of_frame() -> Vec<Frame> {
        vec![
            Frame::Control(Control::Hello(Hello {
                version: crate::PROTOCOL_VERSION,
                server_id: ServerId(7),
                client_addr: "127.0.0.1:6000".into(),
                epoch: 1_763_700_000_000_000_000,
                nonce: Some(Nonce([9; 32])),
            })),
            Frame::Control(Control::Welcome(Welcome {
                version: 1,
                max_frame_len: 1024,
                max_users: 10,
                max_groups: 20,
            })),
            Frame::Control(Control::Challenge(Challenge {
                nonce: Nonce([1; 32]),
                proof: Proof([2; 32]),
            })),
            Frame::Control(Control::Auth { proof: Proof([3; 32]) }),
            Frame::Control(Control::error(ErrorCode::DuplicateServer, "server 7 is registered")),
            Frame::Control(Control::Login { users: vec![user("alice"), user("bob")] }),
            Frame::Control(Control::Logout { users: vec![user("alice")] }),
            Frame::Control(Control::Ping { token: u64::MAX }),
            Frame::Control(Control::SnapshotDone),
            Frame::Control(Control::Bye),
            Frame::Control(Control::Servers {
                servers: vec![crate::ServerEpoch { id: ServerId(2), epoch: 9 }],
            }),
            Frame::Control(Control::ServerUp {
                server: crate::ServerEpoch { id: ServerId(2), epoch: 9 },
                resend_from: Some(17),
            }),
            Frame::Control(Control::Resent { server: ServerId(2) }),
            Frame::Control(Control::Resend { from: 3 }),
            Frame::Ack(crate::Ack {
                to: ServerId(1),
                from: ServerId(2),
                ranges: vec![
                    crate::SeqRange { first: 1, count: 3 },
                    crate::SeqRange { first: 9, count: 1 },
                ],
            }),
            Frame::Control(Control::Pong { token: 0 }),
            Frame::Data(Data {
                kind: DataKind::Unicast,
                seq: 42,
                origin: ServerId(1),
                recipient: user("bob"),
                sender: user("alice"),
                payload: Bytes::from_static(b"hello"),
            }),
            Frame::Data(Data {
                kind: DataKind::Undeliverable,
                seq: 0,
                origin: ServerId(u32::MAX),
                recipient: user(&"r".repeat(UserId::MAX_LEN)),
                sender: user("s"),
                payload: Bytes::new(),
            }),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let mut codec = Codec::default();
        let mut buf = BytesMut::new();
        let frames = every_kind_of_frame();
        for frame in &frames {
            codec.encode(frame, &mut buf).unwrap();
        }
        for frame in &frames {
            let raw = codec.decode(&mut buf).unwrap().expect("a whole frame");
            assert_eq!(&raw.decode().unwrap(), frame);
        }
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    #[test]
    fn route_reads_the_header_in_place() {
        let frame = every_kind_of_frame().pop().unwrap();
        let mut buf = BytesMut::new();
        Codec::default().encode(&frame, &mut buf).unwrap();
        let raw = Codec::default().decode(&mut buf).unwrap().unwrap();
        let route = raw.route().unwrap();
        assert_eq!(route.kind, DataKind::Undeliverable);
        assert_eq!(route.origin, ServerId(u32::MAX));
        assert_eq!(route.sender, "s");
        assert_eq!(route.payload_offset, raw.body().len());
    }

    #[test]
    fn oversized_prefix_fails_before_buffering() {
        let mut codec = Codec::new(64);
        let mut buf = BytesMut::new();
        buf.put_u32(65);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { len: 65, max: 64 }), "{err}");
    }

    #[test]
    fn oversized_frame_is_not_encoded() {
        let frame = Frame::Data(Data {
            kind: DataKind::Unicast,
            seq: 1,
            origin: ServerId(0),
            recipient: user("b"),
            sender: user("a"),
            payload: Bytes::from(vec![0; 100]),
        });
        let mut buf = BytesMut::from(&b"kept"[..]);
        let err = Codec::new(64).encode(&frame, &mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { max: 64, .. }), "{err}");
        assert_eq!(&buf[..], b"kept");
    }

    #[test]
    fn empty_and_unknown_frames_are_errors() {
        let mut buf = BytesMut::new();
        buf.put_u32(0);
        assert!(matches!(Codec::default().decode(&mut buf), Err(ProtocolError::Empty)));

        let mut buf = BytesMut::new();
        buf.put_u32(1);
        buf.put_u8(0x7f);
        let raw = Codec::default().decode(&mut buf).unwrap().unwrap();
        assert!(matches!(raw.decode(), Err(ProtocolError::UnknownKind(0x7f))));
    }

    #[test]
    fn truncated_header_is_an_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(16);
        buf.put_u8(DataKind::Unicast as u8);
        buf.put_u64(1);
        buf.put_u32(1);
        buf.put_u8(5); // recipient claims 5 bytes, 2 follow
        buf.put_slice(b"ab");
        let raw = Codec::default().decode(&mut buf).unwrap().unwrap();
        assert!(matches!(raw.route(), Err(ProtocolError::Truncated)));
    }

    #[test]
    fn undeliverable_copy_keeps_everything_but_the_kind() {
        let unicast =
            |frame: &Frame| matches!(frame, Frame::Data(data) if data.kind == DataKind::Unicast);
        let frame = every_kind_of_frame().into_iter().find(unicast).unwrap();
        let raw = {
            let mut buf = BytesMut::new();
            Codec::default().encode(&frame, &mut buf).unwrap();
            Codec::default().decode(&mut buf).unwrap().unwrap()
        };
        let back = raw.with_data_kind(DataKind::Undeliverable).unwrap();
        let Frame::Data(mut data) = frame else { unreachable!() };
        data.kind = DataKind::Undeliverable;
        assert_eq!(back.decode().unwrap(), Frame::Data(data));
    }

    #[test]
    fn walking_in_place_agrees_with_decoding() {
        let codec = Codec::new(1024);
        let mut buf = BytesMut::new();
        for frame in &every_kind_of_frame() {
            codec.clone().encode(frame, &mut buf).unwrap();
        }
        let mut whole = Bytes::copy_from_slice(&buf);
        let first_len = codec.whole_frame_len(&buf).unwrap().unwrap();
        let mut offset = 0;
        while let Some(len) = codec.whole_frame_len(&buf[offset..]).unwrap() {
            let split = RawFrame::split_first(&mut whole).unwrap();
            let decoded = codec.clone().decode(&mut BytesMut::from(&buf[offset..])).unwrap();
            assert_eq!(split.as_bytes().len(), len);
            assert_eq!(Some(split), decoded);
            offset += len;
        }
        assert_eq!(offset, buf.len());
        assert!(whole.is_empty());
        // A partial frame is not whole yet; an oversized or empty one is refused from its prefix.
        assert_eq!(codec.whole_frame_len(&buf[..buf.len() - 1]).unwrap(), Some(first_len));
        assert_eq!(codec.whole_frame_len(&buf[..first_len - 1]).unwrap(), None);
        assert!(matches!(
            codec.whole_frame_len(&2000u32.to_be_bytes()),
            Err(ProtocolError::FrameTooLarge { len: 2000, max: 1024 })
        ));
        assert!(matches!(codec.whole_frame_len(&[0; 4]), Err(ProtocolError::Empty)));
    }
}

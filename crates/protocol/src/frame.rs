//! Frame kinds, the routing header of data frames, and frames as owned values or raw bytes.
//!
//! A data frame after its length prefix:
//!
//! ```text
//! kind u8 | seq u64 | origin u32 | recipient_len u8 | recipient | sender_len u8 | sender | payload
//! ```
//!
//! All integers are big-endian. The header is read in place from the received buffer: nothing in
//! it needs serde, and the payload is the rest of the frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::LENGTH_PREFIX_LEN;
use crate::control::Control;
use crate::error::ProtocolError;
use crate::ids::{ServerId, UserId};

/// The first byte of every frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A bincode-encoded [`Control`] message.
    Control,
    /// A data frame with a routing header.
    Data(DataKind),
    /// Acknowledgements from a receiving AS to an origin AS, routed by server id.
    Ack,
}

/// What a data frame asks of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataKind {
    /// AS to hub to AS: deliver to the recipient, wherever they are.
    Unicast = 1,
    /// Hub to the origin AS: the recipient of this unicast frame is not online anywhere, or could
    /// not be reached; the frame comes back whole so the app can store or retry it.
    Undeliverable = 2,
    /// AS to hub to every other AS with members of the group named by the recipient field; each
    /// hands it to its own members. The hub answers the origin with `Copies`.
    Group = 4,
    /// As [`DataKind::Group`], but not for the sender.
    GroupExceptSender = 5,
    /// AS to hub to every other AS, for all their users; the recipient field is `*`. The hub
    /// answers the origin with `Copies`.
    Broadcast = 6,
    /// As [`DataKind::Broadcast`], but not for the sender.
    BroadcastExceptSender = 7,
    /// AS to hub to the AS whose id the recipient field holds in decimal, or to every other AS
    /// for `*`; for the server itself, not its users. The hub answers the origin with `Copies`.
    Server = 8,
    /// AS to hub to AS: a unicast message the recipient's server handed to its app, which could
    /// not deliver it (the user left, the client is too slow), going back to its sender. The
    /// recipient field names the original sender, the sender field the original recipient, and
    /// the payload is a [`crate::Refusal`]: the reason, then the original payload. Routed like
    /// `Unicast`, to wherever the original sender is online, and returned as `Undeliverable` when
    /// they are online nowhere.
    Refused = 9,
    /// AS to hub to AS: an invitation from one user's server to another's (a P2P "let's punch"
    /// offer, say), routed, numbered, acknowledged and returned as `Undeliverable` exactly like
    /// `Unicast`; the receiving AS hands it to its app as an invitation, not a message.
    Invitation = 10,
}

impl DataKind {
    /// Whether the hub forwards this kind to a set of servers (possibly one or none) and tells the
    /// origin which with `Copies`, rather than routing it to one user's server.
    pub fn fans_out(self) -> bool {
        matches!(
            self,
            Self::Group
                | Self::GroupExceptSender
                | Self::Broadcast
                | Self::BroadcastExceptSender
                | Self::Server
        )
    }

    /// Whether the sender is left out of the users it is delivered to.
    pub fn excludes_sender(self) -> bool {
        matches!(self, Self::GroupExceptSender | Self::BroadcastExceptSender)
    }
}

/// The recipient field of a broadcast, and of a server message for every server.
pub const EVERYONE: &str = "*";

const CONTROL_TAG: u8 = 0;
const ACK_TAG: u8 = 3;

/// Bytes of the routing header before the recipient's name: kind, seq, origin, recipient length.
const FIXED_HEADER_LEN: usize = 1 + 8 + 4 + 1;

impl FrameKind {
    /// Reads the kind from the first byte of a frame body.
    pub fn from_tag(tag: u8) -> Result<Self, ProtocolError> {
        Ok(match tag {
            CONTROL_TAG => Self::Control,
            1 => Self::Data(DataKind::Unicast),
            2 => Self::Data(DataKind::Undeliverable),
            ACK_TAG => Self::Ack,
            4 => Self::Data(DataKind::Group),
            5 => Self::Data(DataKind::GroupExceptSender),
            6 => Self::Data(DataKind::Broadcast),
            7 => Self::Data(DataKind::BroadcastExceptSender),
            8 => Self::Data(DataKind::Server),
            9 => Self::Data(DataKind::Refused),
            10 => Self::Data(DataKind::Invitation),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    /// The byte that stands for this kind on the wire.
    pub fn tag(self) -> u8 {
        match self {
            Self::Control => CONTROL_TAG,
            Self::Data(kind) => kind as u8,
            Self::Ack => ACK_TAG,
        }
    }
}

/// The routing header of a data frame, borrowed from the frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// What the hub should do with the frame.
    pub kind: DataKind,
    /// Sequence number given by the origin AS, for acknowledgement and duplicate suppression.
    pub seq: u64,
    /// The AS the frame started from.
    pub origin: ServerId,
    /// Whom the frame is for.
    pub recipient: &'a str,
    /// Who sent it.
    pub sender: &'a str,
    /// Where the payload starts in the frame body.
    pub payload_offset: usize,
}

impl<'a> Route<'a> {
    /// Parses the routing header at the start of a data frame `body` (after the length prefix).
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut buf = body;
        let tag = *buf.first().ok_or(ProtocolError::Empty)?;
        let kind = match FrameKind::from_tag(tag)? {
            FrameKind::Data(kind) => kind,
            FrameKind::Control | FrameKind::Ack => return Err(ProtocolError::NotData),
        };
        if buf.len() < FIXED_HEADER_LEN {
            return Err(ProtocolError::Truncated);
        }
        buf.advance(1);
        let seq = buf.get_u64();
        let origin = ServerId(buf.get_u32());
        let recipient = take_name(&mut buf)?;
        let sender = take_name(&mut buf)?;
        match kind {
            DataKind::Broadcast | DataKind::BroadcastExceptSender if recipient != EVERYONE => {
                return Err(ProtocolError::Recipient("a broadcast is addressed to `*`"));
            }
            DataKind::Server if recipient != EVERYONE && recipient.parse::<u32>().is_err() => {
                return Err(ProtocolError::Recipient(
                    "a server message is addressed to a server id in decimal, or `*`",
                ));
            }
            _ => {}
        }
        Ok(Self { kind, seq, origin, recipient, sender, payload_offset: body.len() - buf.len() })
    }

    /// The server a [`DataKind::Server`] frame is for: `None` for every server.
    pub fn target_server(&self) -> Option<ServerId> {
        self.recipient.parse().ok().map(ServerId)
    }
}

/// Reads one length-prefixed user name and checks it as a [`UserId`].
fn take_name<'a>(buf: &mut &'a [u8]) -> Result<&'a str, ProtocolError> {
    let len = usize::from(*buf.first().ok_or(ProtocolError::Truncated)?);
    let bytes = buf.get(1..1 + len).ok_or(ProtocolError::Truncated)?;
    let name = std::str::from_utf8(bytes).map_err(|_| crate::UserIdError::NotUtf8)?;
    UserId::check(name)?;
    *buf = &buf[1 + len..];
    Ok(name)
}

/// A run of consecutive sequence numbers: `first`, `first + 1`, ..., `first + count - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// The first sequence number of the run.
    pub first: u64,
    /// How many numbers the run holds, at least 1.
    pub count: u32,
}

impl SeqRange {
    /// The numbers of the run (cut short at `u64::MAX`, which no sender reaches).
    ///
    /// A peer chooses `count`: walk [`SeqRange::clip`] of it to what is outstanding, never this.
    pub fn seqs(self) -> std::ops::Range<u64> {
        self.first..self.first.saturating_add(u64::from(self.count))
    }

    /// The numbers of the run that lie in `outstanding`, the numbers its receiver still waits
    /// on: an ack costs what it covers of those, never the length it claims.
    pub fn clip(self, outstanding: std::ops::Range<u64>) -> std::ops::Range<u64> {
        let seqs = self.seqs();
        seqs.start.max(outstanding.start)..seqs.end.min(outstanding.end)
    }

    /// Whether a sender could have sent the run: it holds a number, and its last is a `u64`.
    fn is_possible(self) -> bool {
        self.count > 0 && self.first.checked_add(u64::from(self.count)).is_some()
    }
}

/// An acknowledgement frame: the receiving AS `from` tells the origin AS `to` which of its
/// unicast frames it has handed to its app (or had already), so `to` can forget them.
///
/// ```text
/// kind u8 = 3 | to u32 | from u32 | (first u64 | count u32) * n
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The origin AS the acknowledged frames came from; the hub routes on this.
    pub to: ServerId,
    /// The AS that received them.
    pub from: ServerId,
    /// The sequence numbers received, as runs.
    pub ranges: Vec<SeqRange>,
}

/// Bytes of an ack body before its ranges, and of one range.
const ACK_HEADER_LEN: usize = 1 + 4 + 4;
const ACK_RANGE_LEN: usize = 8 + 4;

impl Ack {
    /// Reads the two server ids of an ack `body` in place, as the hub does to route it, and
    /// checks that each run is one a sender could have sent (see [`ProtocolError::AckRun`]): the
    /// hub refuses an impossible ack rather than forward it.
    pub fn route(body: &[u8]) -> Result<(ServerId, ServerId), ProtocolError> {
        if body.first() != Some(&ACK_TAG) {
            return Err(ProtocolError::NotData);
        }
        if body.len() < ACK_HEADER_LEN || (body.len() - ACK_HEADER_LEN) % ACK_RANGE_LEN != 0 {
            return Err(ProtocolError::Truncated);
        }
        if let Some(range) = Self::runs(body).find(|range| !range.is_possible()) {
            return Err(ProtocolError::AckRun { first: range.first, count: range.count });
        }
        let mut buf = &body[1..];
        Ok((ServerId(buf.get_u32()), ServerId(buf.get_u32())))
    }

    /// The runs of an ack `body` whose length `route` checked.
    fn runs(body: &[u8]) -> impl Iterator<Item = SeqRange> + '_ {
        body[ACK_HEADER_LEN..]
            .chunks_exact(ACK_RANGE_LEN)
            .map(|mut range| SeqRange { first: range.get_u64(), count: range.get_u32() })
    }

    /// The first run that names a number at or past `end`, the next number its receiver would
    /// send: no honest peer acknowledges what was never sent, so its receiver logs it.
    pub fn beyond(&self, end: u64) -> Option<SeqRange> {
        self.ranges.iter().copied().find(|range| range.seqs().end > end)
    }

    /// The numbers this ack names that lie in `outstanding` (those its receiver still waits
    /// on), as sorted ranges that neither overlap nor touch. Walking them visits each
    /// outstanding number at most once, however many runs the ack repeats and however long
    /// they claim to be: an ack costs its receiver what it covers of what is outstanding.
    pub fn covered(&self, outstanding: std::ops::Range<u64>) -> Vec<std::ops::Range<u64>> {
        let mut covered: Vec<_> = self
            .ranges
            .iter()
            .map(|range| range.clip(outstanding.clone()))
            .filter(|range| !range.is_empty())
            .collect();
        covered.sort_unstable_by_key(|range| range.start);
        let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(covered.len());
        for range in covered {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        merged
    }

    /// Length of the body of this ack as one frame.
    pub fn body_len(&self) -> usize {
        ACK_HEADER_LEN + self.ranges.len() * ACK_RANGE_LEN
    }

    /// Decodes an ack `body` (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let (to, from) = Self::route(body)?;
        Ok(Self { to, from, ranges: Self::runs(body).collect() })
    }

    /// Appends this ack, length prefix included, to `dst`; many ranges are split over several
    /// frames so each fits in `max_frame_len`.
    pub fn encode(&self, max_frame_len: usize, dst: &mut BytesMut) {
        let per_frame = (max_frame_len.saturating_sub(ACK_HEADER_LEN) / ACK_RANGE_LEN).max(1);
        // An ack of nothing is still one frame.
        let frames = self.ranges.len().div_ceil(per_frame).max(1);
        for index in 0..frames {
            let end = ((index + 1) * per_frame).min(self.ranges.len());
            let ranges = &self.ranges[(index * per_frame).min(end)..end];
            let len = ACK_HEADER_LEN + ranges.len() * ACK_RANGE_LEN;
            dst.reserve(LENGTH_PREFIX_LEN + len);
            // At most max_frame_len, itself far below u32::MAX.
            dst.put_u32(len as u32);
            dst.put_u8(ACK_TAG);
            dst.put_u32(self.to.0);
            dst.put_u32(self.from.0);
            for range in ranges {
                dst.put_u64(range.first);
                dst.put_u32(range.count);
            }
        }
    }
}

/// An owned data frame, as an AS builds and receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// What the hub should do with the frame.
    pub kind: DataKind,
    /// Sequence number given by the origin AS.
    pub seq: u64,
    /// The AS the frame started from.
    pub origin: ServerId,
    /// Whom the frame is for.
    pub recipient: UserId,
    /// Who sent it.
    pub sender: UserId,
    /// The application's bytes, never looked at by the hub.
    pub payload: Bytes,
}

impl Data {
    /// Length of the body once encoded (everything after the length prefix).
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + self.recipient.as_str().len()
            + 1
            + self.sender.as_str().len()
            + self.payload.len()
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u8(self.kind as u8);
        dst.put_u64(self.seq);
        dst.put_u32(self.origin.0);
        for name in [&self.recipient, &self.sender] {
            // UserId guarantees the length fits in a byte.
            dst.put_u8(name.as_str().len() as u8);
            dst.put_slice(name.as_str().as_bytes());
        }
        dst.put_slice(&self.payload);
    }
}

/// Where a data frame's sequence number lies, counted from the first byte of the frame's length
/// prefix: after the prefix and the kind byte, as a big-endian `u64`. An AS that encodes data
/// frames before it numbers them (a batch encoded by the app's task, numbered by the link)
/// writes the number there with [`set_data_seq`]; the routing header stays as it was.
pub const DATA_SEQ_AT: usize = LENGTH_PREFIX_LEN + 1;

/// Writes `seq` into the whole data frame at the start of `frame` (length prefix included).
/// Fails with [`ProtocolError::Truncated`], changing nothing, if `frame` is too short to hold
/// one; the caller vouches that it is a data frame.
pub fn set_data_seq(frame: &mut [u8], seq: u64) -> Result<(), ProtocolError> {
    let slot = frame.get_mut(DATA_SEQ_AT..DATA_SEQ_AT + 8).ok_or(ProtocolError::Truncated)?;
    slot.copy_from_slice(&seq.to_be_bytes());
    Ok(())
}

/// The sequence number of the whole data frame at the start of `frame` (length prefix
/// included), or `None` if `frame` is too short to hold one.
pub fn data_seq(frame: &[u8]) -> Option<u64> {
    let slot = frame.get(DATA_SEQ_AT..DATA_SEQ_AT + 8)?;
    Some(u64::from_be_bytes(slot.try_into().ok()?))
}

/// A frame decoded into owned values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A control message.
    Control(Control),
    /// A data frame.
    Data(Data),
    /// An acknowledgement.
    Ack(Ack),
}

impl Frame {
    /// Appends this frame, length prefix included, to `dst`.
    ///
    /// Fails, leaving `dst` as it was, when the body would exceed `max_frame_len`.
    pub fn encode(&self, max_frame_len: usize, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0);
        match self {
            Frame::Control(control) => {
                dst.put_u8(CONTROL_TAG);
                if let Err(err) = control.encode_into(dst) {
                    dst.truncate(start);
                    return Err(err);
                }
            }
            Frame::Ack(ack) => {
                dst.truncate(start);
                let len = ack.body_len();
                if len > max_frame_len {
                    return Err(ProtocolError::FrameTooLarge { len, max: max_frame_len });
                }
                ack.encode(max_frame_len, dst);
                return Ok(());
            }
            Frame::Data(data) => {
                let len = data.encoded_len();
                if len > max_frame_len {
                    dst.truncate(start);
                    return Err(ProtocolError::FrameTooLarge { len, max: max_frame_len });
                }
                dst.reserve(len);
                data.encode_body(dst);
            }
        }
        let len = dst.len() - start - LENGTH_PREFIX_LEN;
        if len > max_frame_len {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge { len, max: max_frame_len });
        }
        // The limit is at most MAX_FRAME_LEN_CEILING, far below u32::MAX.
        dst[start..start + LENGTH_PREFIX_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }

    /// Encodes this frame into a buffer of its own, ready to be queued for a socket.
    pub fn to_bytes(&self, max_frame_len: usize) -> Result<Bytes, ProtocolError> {
        let mut dst = BytesMut::new();
        self.encode(max_frame_len, &mut dst)?;
        Ok(dst.freeze())
    }
}

/// One received frame as the bytes it came in, length prefix included.
///
/// The hub forwards these bytes unchanged; an AS turns them into a [`Frame`] with [`RawFrame::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame(Bytes);

impl RawFrame {
    /// Wraps the bytes of a whole frame. The codec guarantees the prefix and a non-empty body.
    pub(crate) fn new(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() > LENGTH_PREFIX_LEN);
        Self(bytes)
    }

    /// Wraps the bytes of one whole frame, checking that its length prefix matches them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, ProtocolError> {
        let body_len =
            bytes.len().checked_sub(LENGTH_PREFIX_LEN).ok_or(ProtocolError::Truncated)?;
        if body_len == 0 {
            return Err(ProtocolError::Empty);
        }
        if (&bytes[..]).get_u32() as usize != body_len {
            return Err(ProtocolError::Truncated);
        }
        Ok(Self(bytes))
    }

    /// Takes the first frame off `frames`, a buffer of whole frames (as a relay forwards them).
    pub fn split_first(frames: &mut Bytes) -> Result<Self, ProtocolError> {
        let body_len = frames.get(..LENGTH_PREFIX_LEN).ok_or(ProtocolError::Truncated)?;
        let whole = LENGTH_PREFIX_LEN + (&body_len[..]).get_u32() as usize;
        if whole > frames.len() {
            return Err(ProtocolError::Truncated);
        }
        Self::from_bytes(frames.split_to(whole))
    }

    /// The frame body: everything after the length prefix.
    pub fn body(&self) -> &[u8] {
        &self.0[LENGTH_PREFIX_LEN..]
    }

    /// The kind of this frame.
    pub fn kind(&self) -> Result<FrameKind, ProtocolError> {
        FrameKind::from_tag(self.body()[0])
    }

    /// The routing header, if this is a data frame.
    pub fn route(&self) -> Result<Route<'_>, ProtocolError> {
        Route::parse(self.body())
    }

    /// The whole frame, length prefix included, to be written to another socket as it is.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Gives up the wrapper and returns the whole frame.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// A copy of this data frame with another kind, for the rare frames the hub sends back.
    pub fn with_data_kind(&self, kind: DataKind) -> Result<RawFrame, ProtocolError> {
        self.route()?;
        let mut bytes = BytesMut::from(&self.0[..]);
        bytes[LENGTH_PREFIX_LEN] = kind as u8;
        Ok(Self(bytes.freeze()))
    }

    /// Decodes the frame into owned values; the payload of a data frame shares these bytes.
    pub fn decode(&self) -> Result<Frame, ProtocolError> {
        match self.kind()? {
            FrameKind::Control => Control::decode(&self.body()[1..]).map(Frame::Control),
            FrameKind::Ack => Ack::decode(self.body()).map(Frame::Ack),
            FrameKind::Data(_) => {
                let route = self.route()?;
                let payload_start = LENGTH_PREFIX_LEN + route.payload_offset;
                Ok(Frame::Data(Data {
                    kind: route.kind,
                    seq: route.seq,
                    origin: route.origin,
                    recipient: UserId::new(route.recipient)?,
                    sender: UserId::new(route.sender)?,
                    payload: self.0.slice(payload_start..),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(ranges: Vec<SeqRange>) -> BytesMut {
        let mut out = BytesMut::new();
        Ack { to: ServerId(1), from: ServerId(2), ranges }.encode(1 << 20, &mut out);
        out.split_off(LENGTH_PREFIX_LEN)
    }

    #[test]
    fn runs_no_sender_could_send_are_refused_and_runs_are_clipped_to_what_is_outstanding() {
        let huge = SeqRange { first: 5, count: u32::MAX };
        assert_eq!(Ack::route(&body(vec![huge])).unwrap(), (ServerId(1), ServerId(2)));
        assert_eq!(huge.clip(10..20), 10..20);
        assert_eq!(huge.clip(0..7), 5..7);
        assert!(huge.clip(1..5).is_empty());
        assert!(SeqRange { first: 30, count: 2 }.clip(10..20).is_empty());

        for (first, count) in [(5, 0), (u64::MAX, 1), (u64::MAX - 10, 12)] {
            let impossible = body(vec![SeqRange { first: 1, count: 1 }, SeqRange { first, count }]);
            assert!(
                matches!(Ack::route(&impossible), Err(ProtocolError::AckRun { .. })),
                "{first} {count}"
            );
            assert!(Ack::decode(&impossible).is_err());
        }
        assert_eq!(SeqRange { first: u64::MAX - 1, count: 9 }.seqs(), u64::MAX - 1..u64::MAX);
    }

    #[test]
    // A list of ranges holding one range is what is meant here.
    #[allow(clippy::single_range_in_vec_init)]
    fn covered_runs_are_clipped_sorted_and_merged() {
        let run = |first, count| SeqRange { first, count };
        let ranges = vec![run(50, 5), run(1, u32::MAX), run(1, u32::MAX), run(12, 3), run(3, 2)];
        let ack = Ack { to: ServerId(1), from: ServerId(2), ranges };
        assert_eq!(ack.covered(10..20), [10..20], "billions claimed, ten outstanding");
        let ranges = vec![run(15, 2), run(3, 2), run(12, 3), run(30, 1), run(5, 1), run(99, 1)];
        let ack = Ack { to: ServerId(1), from: ServerId(2), ranges };
        assert_eq!(ack.covered(4..31), [4..6, 12..17, 30..31]);
        assert!(ack.covered(100..200).is_empty());
        assert!(ack.covered(7..7).is_empty());
        assert_eq!(ack.beyond(100), None, "99 is the last number named");
        assert_eq!(ack.beyond(99), Some(run(99, 1)));
        assert_eq!(ack.beyond(16), Some(run(15, 2)), "the first such run, in the ack's order");
    }

    #[test]
    fn a_sequence_number_written_into_raw_bytes_is_the_one_the_header_reads() {
        let data = |seq| Data {
            kind: DataKind::Unicast,
            seq,
            origin: ServerId(7),
            recipient: UserId::new("bob").unwrap(),
            sender: UserId::new("al").unwrap(),
            payload: Bytes::from_static(b"hi"),
        };
        let mut frames = BytesMut::new();
        Frame::Data(data(0)).encode(1 << 20, &mut frames).unwrap();
        let len = frames.len();
        Frame::Data(data(0)).encode(1 << 20, &mut frames).unwrap();
        set_data_seq(&mut frames[..], 41).unwrap();
        set_data_seq(&mut frames[len..], u64::MAX).unwrap();
        assert_eq!(data_seq(&frames[..]), Some(41));
        let second = RawFrame::from_bytes(frames.split_off(len).freeze()).unwrap();
        let first = RawFrame::from_bytes(frames.freeze()).unwrap();
        assert_eq!(first.decode().unwrap(), Frame::Data(data(41)), "only the number changed");
        assert_eq!(second.route().unwrap().seq, u64::MAX);

        let mut short = [0u8; DATA_SEQ_AT + 7];
        assert!(matches!(set_data_seq(&mut short, 1), Err(ProtocolError::Truncated)));
        assert_eq!(short, [0; DATA_SEQ_AT + 7], "nothing written");
        assert_eq!(data_seq(&short), None);
    }
}

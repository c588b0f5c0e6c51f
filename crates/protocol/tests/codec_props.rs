//! Property tests of the frame codec: round trips, arbitrary split points, hostile input and limits.

use acms_protocol::{
    Ack, Candidate, CandidateKind, Challenge, Codec, Control, Data, DataKind, ErrorCode, Frame,
    FrameKind, GroupId, Hello, HubStatus, LENGTH_PREFIX_LEN, Load, MAX_CANDIDATES,
    MAX_FRAME_LEN_CEILING, Nonce, PeerHello, Proof, ProtocolError, Prover, RawFrame, Secret,
    SeqRange, ServerEpoch, ServerId, UserDigest, UserId, Welcome,
};
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Characters of every UTF-8 width, ASCII most often.
fn name_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        6 => proptest::char::range('a', 'z'),
        2 => any::<char>(),
        1 => Just('é'),
        1 => Just('中'),
        1 => Just('😀'),
    ]
}

/// Builds a name from `chars`, stopping before the one that would pass the byte limit.
fn name_from(chars: Vec<char>) -> UserId {
    let mut name = String::new();
    for c in chars {
        if name.len() + c.len_utf8() > UserId::MAX_LEN {
            break;
        }
        name.push(c);
    }
    UserId::new(&name).expect("1..=255 bytes")
}

/// User ids of 1 to 255 bytes of UTF-8, short ones most often, the byte limit exactly sometimes.
fn user_id() -> BoxedStrategy<UserId> {
    prop_oneof![
        6 => vec(name_char(), 1..12).prop_map(name_from),
        2 => vec(name_char(), 1..=UserId::MAX_LEN).prop_map(name_from),
        1 => Just(UserId::new(&"x".repeat(UserId::MAX_LEN)).unwrap()),
        1 => Just(UserId::new(&format!("{}x", "é".repeat(127))).unwrap()),
    ]
    .boxed()
}

/// Short user ids, for the small streams of the every-split-point test.
fn short_user_id() -> BoxedStrategy<UserId> {
    vec(name_char(), 1..4).prop_map(name_from).boxed()
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::DuplicateServer),
        Just(ErrorCode::Malformed),
        Just(ErrorCode::TooLarge),
        Just(ErrorCode::HandshakeTimeout),
        Just(ErrorCode::SlowConsumer),
        Just(ErrorCode::Unavailable),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::TooManyUsers),
        Just(ErrorCode::TooManyGroups),
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Every [`Control`] variant, with user lists drawn from `users`.
fn control_with(
    users: BoxedStrategy<UserId>,
    max_users: usize,
    max_text: usize,
) -> impl Strategy<Value = Control> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), text(max_text), any::<u64>(), proptest::option::of(nonce()))
            .prop_map(|(version, id, client_addr, epoch, nonce)| {
                Control::Hello(Hello {
                    version,
                    server_id: ServerId(id),
                    client_addr,
                    epoch,
                    nonce,
                })
            }),
        (any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(version, max_frame_len, max_users, max_groups)| Control::Welcome(Welcome {
                version,
                max_frame_len,
                max_users,
                max_groups,
            })
        ),
        (error_code(), text(max_text)).prop_map(|(code, message)| Control::Error { code, message }),
        vec(users.clone(), 0..max_users).prop_map(|users| Control::Login { users }),
        vec(users.clone(), 0..max_users).prop_map(|users| Control::Logout { users }),
        any::<u64>().prop_map(|token| Control::Ping { token }),
        any::<u64>().prop_map(|token| Control::Pong { token }),
        Just(Control::Bye),
        Just(Control::SnapshotDone),
        vec(server_epoch(), 0..max_users).prop_map(|servers| Control::Servers { servers }),
        (server_epoch(), proptest::option::of(any::<u64>()))
            .prop_map(|(server, resend_from)| Control::ServerUp { server, resend_from }),
        any::<u32>().prop_map(|id| Control::Resent { server: ServerId(id) }),
        any::<u64>().prop_map(|from| Control::Resend { from }),
        (nonce(), proof())
            .prop_map(|(nonce, proof)| Control::Challenge(Challenge { nonce, proof })),
        proof().prop_map(|proof| Control::Auth { proof }),
        Just(Control::PeerStatus),
        (any::<bool>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
            |(active, servers, started, id)| Control::HubStatus(HubStatus {
                active,
                servers,
                started,
                id
            })
        ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(count, sum)| Control::Digest(UserDigest { count, sum })),
        Just(Control::Resync),
        (any::<u64>(), users.clone()).prop_map(|(token, user)| Control::Locate { token, user }),
        (any::<u64>(), proptest::option::of(any::<u32>()), candidates()).prop_map(
            |(token, server, candidates)| Control::Located {
                token,
                server: server.map(ServerId),
                candidates
            }
        ),
        vec(users.clone(), 0..max_users).prop_map(|users| Control::Watch { users }),
        vec(users.clone(), 0..max_users).prop_map(|users| Control::Unwatch { users }),
        (users.clone(), proptest::option::of(any::<u32>()), candidates()).prop_map(
            |(user, server, candidates)| Control::Presence {
                user,
                server: server.map(ServerId),
                candidates
            }
        ),
        (users.clone(), text(max_text)).prop_map(|(user, reason)| Control::Kick { user, reason }),
        vec(group_id(), 0..max_users).prop_map(|groups| Control::Join { groups }),
        vec(group_id(), 0..max_users).prop_map(|groups| Control::Leave { groups }),
        (any::<u64>(), vec(any::<u32>().prop_map(ServerId), 0..max_users))
            .prop_map(|(seq, servers)| Control::Copies { seq, servers }),
        any::<u32>().prop_map(|id| Control::ServerDown { server: ServerId(id) }),
        (users.clone(), any::<bool>())
            .prop_map(|(user, elsewhere)| Control::MultiSession { user, elsewhere }),
        (any::<[u32; 5]>(), any::<u64>(), any::<Option<u32>>()).prop_map(
            |(n, memory_bytes, capacity)| {
                Control::Load(Load {
                    users: n[0],
                    cpu_centipercent: n[1],
                    memory_bytes,
                    msgs_in_per_s: n[2],
                    msgs_out_per_s: n[3] ^ n[4],
                    capacity,
                })
            }
        ),
        proptest::option::of(text(max_text)).prop_map(|target| Control::Drain { target }),
        (any::<u16>(), proptest::option::of(nonce()))
            .prop_map(|(version, nonce)| Control::PeerHello(PeerHello { version, nonce })),
        (users, candidates())
            .prop_map(|(user, candidates)| Control::Candidates { user, candidates }),
    ]
}

/// Valid candidate lists: up to the limit, IPv4 and IPv6, usable addresses.
fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let addr = prop_oneof![
        (any::<[u8; 4]>(), 1..=u16::MAX).prop_map(|(ip, port)| {
            let ip = if ip == [0; 4] { [10, 0, 0, 1] } else { ip };
            SocketAddr::from((ip, port))
        }),
        (any::<[u16; 8]>(), 1..=u16::MAX).prop_map(|(ip, port)| {
            let ip = if ip == [0; 8] { [0xfe80, 0, 0, 0, 0, 0, 0, 1] } else { ip };
            SocketAddr::from((ip, port))
        }),
    ];
    let kind = prop_oneof![Just(CandidateKind::Local), Just(CandidateKind::Reflexive)];
    vec((addr, kind).prop_map(|(addr, kind)| Candidate { addr, kind }), 0..=MAX_CANDIDATES)
}

/// Group ids: the rules of user ids, short ones.
fn group_id() -> BoxedStrategy<GroupId> {
    short_user_id().prop_map(|name| GroupId::new(name.as_str()).unwrap()).boxed()
}

fn server_epoch() -> impl Strategy<Value = ServerEpoch> {
    (any::<u32>(), any::<u64>()).prop_map(|(id, epoch)| ServerEpoch { id: ServerId(id), epoch })
}

fn ack(max_ranges: usize) -> impl Strategy<Value = Ack> {
    // Runs a sender could have sent: not empty, ending within a u64.
    let firsts = 0..=u64::MAX - u64::from(u32::MAX);
    let range = (firsts, 1..=u32::MAX).prop_map(|(first, count)| SeqRange { first, count });
    (any::<u32>(), any::<u32>(), vec(range, 0..max_ranges)).prop_map(|(to, from, ranges)| Ack {
        to: ServerId(to),
        from: ServerId(from),
        ranges,
    })
}

fn nonce() -> impl Strategy<Value = Nonce> {
    any::<[u8; 32]>().prop_map(Nonce)
}

fn proof() -> impl Strategy<Value = Proof> {
    any::<[u8; 32]>().prop_map(Proof)
}

fn data_kind() -> impl Strategy<Value = DataKind> {
    prop_oneof![
        4 => Just(DataKind::Unicast),
        2 => Just(DataKind::Undeliverable),
        1 => Just(DataKind::Group),
        1 => Just(DataKind::GroupExceptSender),
        1 => Just(DataKind::Broadcast),
        1 => Just(DataKind::BroadcastExceptSender),
        1 => Just(DataKind::Server),
        1 => Just(DataKind::Refused),
        1 => Just(DataKind::Invitation),
    ]
}

/// The recipient field a kind requires: `*` for a broadcast, a server id or `*` for a server
/// message (by the parity of `seq`), any name otherwise.
fn recipient_for(kind: DataKind, seq: u64, name: UserId) -> UserId {
    match kind {
        DataKind::Broadcast | DataKind::BroadcastExceptSender => UserId::new("*").unwrap(),
        DataKind::Server if seq % 2 == 0 => UserId::new("*").unwrap(),
        DataKind::Server => UserId::new(&(seq % 1000).to_string()).unwrap(),
        _ => name,
    }
}

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..=max.min(16)),
        1 => vec(any::<u8>(), 0..=max),
    ]
    .prop_map(Bytes::from)
}

fn data_with(users: BoxedStrategy<UserId>, max_payload: usize) -> impl Strategy<Value = Data> {
    (data_kind(), any::<u64>(), any::<u32>(), users.clone(), users, payload(max_payload)).prop_map(
        |(kind, seq, origin, recipient, sender, payload)| Data {
            kind,
            seq,
            origin: ServerId(origin),
            recipient: recipient_for(kind, seq, recipient),
            sender,
            payload,
        },
    )
}

/// Any frame: every control variant and both data kinds, payloads of 0 to 2047 bytes.
fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        control_with(user_id(), 8, 40).prop_map(Frame::Control),
        data_with(user_id(), 2047).prop_map(Frame::Data),
        ack(8).prop_map(Frame::Ack),
    ]
}

/// Frames that encode to a few dozen bytes, so a stream of them can be cut at every point.
fn small_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        control_with(short_user_id(), 3, 6).prop_map(Frame::Control),
        data_with(short_user_id(), 12).prop_map(Frame::Data),
        ack(2).prop_map(Frame::Ack),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode_all(codec: &mut Codec, frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut buf).expect("frame fits the limit");
    }
    buf
}

/// Appends `chunk` to `buf` and decodes every frame that is now whole.
fn feed(codec: &mut Codec, buf: &mut BytesMut, chunk: &[u8], out: &mut Vec<Frame>) {
    buf.extend_from_slice(chunk);
    while let Some(raw) = codec.decode(buf).expect("a valid stream") {
        out.push(raw.decode().expect("a valid frame"));
    }
}

/// Decodes a whole stream delivered in the given pieces; checks nothing is left at the end.
fn decode_in_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Frame> {
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        feed(&mut codec, &mut buf, piece, &mut out);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    assert!(codec.decode_eof(&mut buf).expect("clean end of stream").is_none());
    out
}

/// Runs every read-only operation on whatever the decoder accepts; none may panic.
fn poke(raw: &RawFrame, max: usize) {
    assert!(raw.body().len() <= max, "decoder passed a frame over its limit");
    assert!(!raw.body().is_empty(), "decoder passed an empty frame");
    let _ = raw.kind();
    let _ = raw.route();
    let _ = raw.decode();
    if let Ok(back) = raw.with_data_kind(DataKind::Undeliverable) {
        assert_eq!(back.as_bytes().len(), raw.as_bytes().len());
        assert_eq!(back.body()[1..], raw.body()[1..]);
    }
}

/// Decodes everything in `bytes` with a codec limited to `max`; errors end it, panics fail it.
fn decode_hostile(bytes: &[u8], max: usize) {
    let mut codec = Codec::new(max);
    let mut buf = BytesMut::from(bytes);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(raw)) => poke(&raw, codec.max_frame_len()),
            Ok(None) => break,
            Err(err) => {
                assert!(err.code().is_some(), "decoding failed as i/o: {err}");
                return;
            }
        }
    }
    let _ = codec.decode_eof(&mut buf);
}

fn encoded_body_len(frame: &Frame) -> usize {
    frame.to_bytes(MAX_FRAME_LEN_CEILING).unwrap().len() - LENGTH_PREFIX_LEN
}

fn variant_index(control: &Control) -> usize {
    match control {
        Control::Hello(_) => 0,
        Control::Welcome(_) => 1,
        Control::Error { .. } => 2,
        Control::Login { .. } => 3,
        Control::Logout { .. } => 4,
        Control::Ping { .. } => 5,
        Control::Pong { .. } => 6,
        Control::Bye => 7,
        Control::SnapshotDone => 8,
        Control::Servers { .. } => 9,
        Control::ServerUp { .. } => 10,
        Control::Resent { .. } => 11,
        Control::Resend { .. } => 12,
        Control::Challenge(_) => 13,
        Control::Auth { .. } => 14,
        Control::PeerStatus => 15,
        Control::HubStatus(_) => 16,
        Control::Digest(_) => 17,
        Control::Resync => 18,
        Control::Locate { .. } => 19,
        Control::Located { .. } => 20,
        Control::Watch { .. } => 21,
        Control::Unwatch { .. } => 22,
        Control::Presence { .. } => 23,
        Control::Kick { .. } => 24,
        Control::Join { .. } => 25,
        Control::Leave { .. } => 26,
        Control::Copies { .. } => 27,
        Control::ServerDown { .. } => 28,
        Control::MultiSession { .. } => 29,
        Control::Load(_) => 30,
        Control::Drain { .. } => 31,
        Control::PeerHello(_) => 32,
        Control::Candidates { .. } => 33,
    }
}

const CONTROL_VARIANTS: usize = 34;

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(frames in vec(frame(), 0..8)) {
        let mut codec = Codec::default();
        let mut buf = encode_all(&mut codec, &frames);
        let mut decoded = Vec::new();
        while let Some(raw) = codec.decode(&mut buf).unwrap() {
            let frame = raw.decode().unwrap();
            // The raw bytes are exactly the frame's encoding: what the hub forwards is what was sent.
            prop_assert_eq!(raw.as_bytes(), &frame.to_bytes(codec.max_frame_len()).unwrap());
            if let Frame::Data(data) = &frame {
                let route = raw.route().unwrap();
                prop_assert_eq!(route.kind, data.kind);
                prop_assert_eq!(route.seq, data.seq);
                prop_assert_eq!(route.origin, data.origin);
                prop_assert_eq!(route.recipient, data.recipient.as_str());
                prop_assert_eq!(route.sender, data.sender.as_str());
                prop_assert_eq!(&raw.body()[route.payload_offset..], &data.payload[..]);
                prop_assert_eq!(raw.kind().unwrap(), FrameKind::Data(data.kind));
            } else {
                let kind = if matches!(frame, Frame::Ack(_)) { FrameKind::Ack } else { FrameKind::Control };
                prop_assert_eq!(raw.kind().unwrap(), kind);
                prop_assert!(matches!(raw.route(), Err(ProtocolError::NotData)));
            }
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn stream_decodes_in_random_chunks(
        frames in vec(frame(), 1..6),
        sizes in vec(1usize..700, 1..32),
    ) {
        let stream = encode_all(&mut Codec::default(), &frames);
        let mut pieces = Vec::new();
        let mut rest = &stream[..];
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*size).min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        prop_assert_eq!(decode_in_pieces(pieces), frames);
    }

    #[test]
    fn control_ignores_trailing_bytes(
        control in control_with(user_id(), 4, 20),
        trailing in vec(any::<u8>(), 0..32),
    ) {
        let mut body = BytesMut::new();
        control.encode_into(&mut body).unwrap();
        body.put_slice(&trailing);
        prop_assert_eq!(Control::decode(&body).unwrap(), control);
    }

    #[test]
    fn hello_is_variant_zero_with_version_first(
        version in any::<u16>(),
        id in any::<u32>(),
        addr in text(20),
        nonce in proptest::option::of(nonce()),
    ) {
        let hello = Control::Hello(Hello {
            version,
            server_id: ServerId(id),
            client_addr: addr,
            epoch: 1,
            nonce,
        });
        let bytes = Frame::Control(hello).to_bytes(MAX_FRAME_LEN_CEILING).unwrap();
        let body = &bytes[LENGTH_PREFIX_LEN..];
        prop_assert_eq!(body[0], 0, "control kind");
        prop_assert_eq!(body[1], 0, "variant index of Hello");
        // bincode varint: one byte below 251, else 251 then the u16 little-endian.
        if version < 251 {
            prop_assert_eq!(body[2], version as u8);
        } else {
            prop_assert_eq!(&body[2..5], &[251, version as u8, (version >> 8) as u8][..]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), max in 0usize..1024) {
        decode_hostile(&bytes, max);
        decode_hostile(&bytes, acms_protocol::DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn framed_garbage_never_panics(
        bodies in vec(
            (0u8..4, 0u8..9, vec(any::<u8>(), 0..300)).prop_map(|(kind, variant, rest)| {
                let mut body = vec![kind, variant];
                body.extend(rest);
                body
            }),
            1..6,
        ),
        cut in any::<Index>(),
    ) {
        let mut stream = Vec::new();
        for body in &bodies {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body);
        }
        decode_hostile(&stream, acms_protocol::DEFAULT_MAX_FRAME_LEN);
        // The same stream cut short: an incomplete tail is just "more to come".
        decode_hostile(&stream[..cut.index(stream.len() + 1)], acms_protocol::DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn corrupted_streams_never_panic(
        frames in vec(frame(), 1..5),
        flips in vec((any::<Index>(), 1u8..=255), 1..8),
        max in prop_oneof![Just(acms_protocol::DEFAULT_MAX_FRAME_LEN), 0usize..4096],
    ) {
        let mut stream = encode_all(&mut Codec::default(), &frames).to_vec();
        for (at, xor) in flips {
            let at = at.index(stream.len());
            stream[at] ^= xor;
        }
        decode_hostile(&stream, max);
    }

    #[test]
    fn oversized_prefix_fails_at_once(
        max in 0usize..4096,
        excess in 1u64..=u64::from(u32::MAX),
        body in vec(any::<u8>(), 0..64),
    ) {
        let claimed = (max as u64 + excess).min(u64::from(u32::MAX)) as usize;
        prop_assume!(claimed > max);
        let mut buf = BytesMut::with_capacity(LENGTH_PREFIX_LEN + body.len());
        buf.put_u32(claimed as u32);
        buf.put_slice(&body);
        let capacity = buf.capacity();
        let err = Codec::new(max).decode(&mut buf).unwrap_err();
        prop_assert!(
            matches!(err, ProtocolError::FrameTooLarge { len, max: m } if len == claimed && m == max),
            "{}", err
        );
        prop_assert_eq!(err.code(), Some(ErrorCode::TooLarge));
        // Nothing was reserved for the body.
        prop_assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn oversized_frame_is_not_encoded(
        frame in frame(),
        below in any::<Index>(),
        prefill in vec(any::<u8>(), 0..16),
    ) {
        let len = encoded_body_len(&frame);
        let max = below.index(len); // 0..len: always too small by at least one byte
        let mut dst = BytesMut::from(&prefill[..]);
        let err = Codec::new(max).encode(&frame, &mut dst).unwrap_err();
        prop_assert!(
            matches!(err, ProtocolError::FrameTooLarge { len: l, max: m } if l == len && m == max),
            "{}", err
        );
        prop_assert_eq!(&dst[..], &prefill[..]);
        // At exactly the limit it fits, and decodes under the same limit.
        Codec::new(len).encode(frame.clone(), &mut dst).unwrap();
        dst.advance(prefill.len());
        let raw = Codec::new(len).decode(&mut dst).unwrap().unwrap();
        prop_assert_eq!(raw.decode().unwrap(), frame);
    }
}

proptest! {
    // Each case decodes its stream once per byte, so the streams are small and the cases fewer.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn stream_decodes_when_cut_at_every_point(frames in vec(small_frame(), 1..5)) {
        let stream = encode_all(&mut Codec::default(), &frames);
        for split in 0..=stream.len() {
            let (head, tail) = stream.split_at(split);
            prop_assert_eq!(&decode_in_pieces([head, tail]), &frames, "split at {}", split);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_strategy_covers_every_variant() {
    let mut runner = TestRunner::deterministic();
    let strategy = frame();
    let mut controls = [false; CONTROL_VARIANTS];
    let (mut unicast, mut undeliverable, mut multibyte, mut longest) = (false, false, false, false);
    let mut acks = false;
    let mut kinds = std::collections::HashSet::new();
    for _ in 0..2000 {
        match strategy.new_tree(&mut runner).unwrap().current() {
            Frame::Control(control) => controls[variant_index(&control)] = true,
            Frame::Ack(_) => acks = true,
            Frame::Data(data) => {
                kinds.insert(data.kind as u8);
                unicast |= data.kind == DataKind::Unicast;
                undeliverable |= data.kind == DataKind::Undeliverable;
                for name in [&data.recipient, &data.sender] {
                    multibyte |= name.as_str().len() > name.as_str().chars().count();
                    longest |= name.as_str().len() == UserId::MAX_LEN;
                }
            }
        }
    }
    assert_eq!(controls, [true; CONTROL_VARIANTS], "control variants seen");
    assert!(unicast && undeliverable && multibyte && longest && acks);
    assert_eq!(kinds.len(), 9, "every data kind seen: {kinds:?}");
}

#[test]
fn codec_limit_is_capped_at_the_ceiling() {
    assert_eq!(Codec::new(usize::MAX).max_frame_len(), MAX_FRAME_LEN_CEILING);
    assert_eq!(Codec::default().max_frame_len(), acms_protocol::DEFAULT_MAX_FRAME_LEN);
}

fn repeat(byte: &str, count: usize) -> String {
    vec![byte; count].join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The worked examples of the protocol document, byte for byte.
#[test]
fn documented_examples() {
    let user = |name| UserId::new(name).unwrap();
    let unicast = Frame::Data(Data {
        kind: DataKind::Unicast,
        seq: 1,
        origin: ServerId(7),
        recipient: user("bob"),
        sender: user("al"),
        payload: Bytes::from_static(b"hi"),
    });
    assert_eq!(
        hex(&unicast.to_bytes(1024).unwrap()),
        "00 00 00 16 01 00 00 00 00 00 00 00 01 00 00 00 07 03 62 6f 62 02 61 6c 68 69"
    );

    // bob's server (AS 9) could not deliver it and sends it back to al, with the reason.
    let refused = Frame::Data(Data {
        kind: DataKind::Refused,
        seq: 1,
        origin: ServerId(9),
        recipient: user("al"),
        sender: user("bob"),
        payload: acms_protocol::Refusal::new("slow", Bytes::from_static(b"hi")).encode(),
    });
    assert_eq!(
        hex(&refused.to_bytes(1024).unwrap()),
        "00 00 00 1c 09 00 00 00 00 00 00 00 01 00 00 00 09 02 61 6c 03 62 6f 62 00 04 73 6c 6f 77 68 69"
    );

    let hello = Frame::Control(Control::Hello(Hello {
        version: 3,
        server_id: ServerId(7),
        client_addr: "h:1".into(),
        epoch: 5,
        nonce: None,
    }));
    assert_eq!(hex(&hello.to_bytes(1024).unwrap()), "00 00 00 0a 00 00 03 07 03 68 3a 31 05 00");

    // The handshake with a secret. Nonces and proofs are 32 raw bytes each.
    let as_nonce = Nonce([0x11; 32]);
    let hub_nonce = Nonce([0x22; 32]);
    let hello = Frame::Control(Control::Hello(Hello {
        version: 3,
        server_id: ServerId(7),
        client_addr: "h:1".into(),
        epoch: 5,
        nonce: Some(as_nonce),
    }));
    assert_eq!(
        hex(&hello.to_bytes(1024).unwrap()),
        format!("00 00 00 2a 00 00 03 07 03 68 3a 31 05 01 {}", repeat("11", 32))
    );
    let secret = Secret::new("an example secret").unwrap();
    let hub_proof = secret.prove(Prover::Hub, ServerId(7), &as_nonce, &hub_nonce);
    assert_eq!(
        hex(&hub_proof.0),
        "cb a1 78 2f 40 bf ee ea b4 c5 7a 03 2f 18 85 04 fb 74 cd d6 7d e2 77 d2 16 e2 4c 9c d5 0a 33 fa"
    );
    let challenge =
        Frame::Control(Control::Challenge(Challenge { nonce: hub_nonce, proof: hub_proof }));
    assert_eq!(
        hex(&challenge.to_bytes(1024).unwrap()),
        format!("00 00 00 42 00 0d {} {}", repeat("22", 32), hex(&hub_proof.0))
    );
    let as_proof = secret.prove(Prover::AppServer, ServerId(7), &as_nonce, &hub_nonce);
    assert_eq!(
        hex(&as_proof.0),
        "3f 6e 9c 89 ab f7 79 6b ae 2c 51 79 a1 e7 87 70 19 76 33 57 2c e6 c7 b2 f3 51 6f 3a bd 61 17 32"
    );
    let auth = Frame::Control(Control::Auth { proof: as_proof });
    assert_eq!(
        hex(&auth.to_bytes(1024).unwrap()),
        format!("00 00 00 22 00 0e {}", hex(&as_proof.0))
    );

    // A peer hub's status link with the same secret and nonces: the same exchange, other labels,
    // and the server id of the hub itself.
    let peer_hello = Frame::Control(Control::PeerHello(PeerHello { version: 3, nonce: None }));
    assert_eq!(hex(&peer_hello.to_bytes(1024).unwrap()), "00 00 00 04 00 20 03 00");
    let peer_hello =
        Frame::Control(Control::PeerHello(PeerHello { version: 3, nonce: Some(as_nonce) }));
    assert_eq!(
        hex(&peer_hello.to_bytes(1024).unwrap()),
        format!("00 00 00 24 00 20 03 01 {}", repeat("11", 32))
    );
    let watched_proof = secret.prove(Prover::Watched, ServerId::HUB, &as_nonce, &hub_nonce);
    let watcher_proof = secret.prove(Prover::Watcher, ServerId::HUB, &as_nonce, &hub_nonce);
    assert_eq!(
        hex(&watched_proof.0),
        "47 5b 1b c0 97 db 4c 48 b6 00 3c 3b 2c b0 2f 09 62 b1 23 5e cd ae 26 e1 70 de 98 80 70 27 be 64"
    );
    assert_eq!(
        hex(&watcher_proof.0),
        "ea 1a c3 48 29 f8 59 76 63 a1 62 d0 12 2e 34 3b 52 83 a8 fd b4 02 14 9c 95 81 d0 59 51 2a d9 c3"
    );
    let peer_status = Frame::Control(Control::PeerStatus);
    assert_eq!(hex(&peer_status.to_bytes(1024).unwrap()), "00 00 00 02 00 0f");

    let welcome = Frame::Control(Control::Welcome(Welcome {
        version: 3,
        max_frame_len: 1 << 20,
        max_users: 1_000_000,
        max_groups: 100_000,
    }));
    assert_eq!(
        hex(&welcome.to_bytes(1024).unwrap()),
        "00 00 00 12 00 01 03 fc 00 00 10 00 fc 40 42 0f 00 fc a0 86 01 00"
    );

    let ack = Frame::Ack(Ack {
        to: ServerId(7),
        from: ServerId(9),
        ranges: vec![SeqRange { first: 1, count: 3 }],
    });
    assert_eq!(
        hex(&ack.to_bytes(1024).unwrap()),
        "00 00 00 15 03 00 00 00 07 00 00 00 09 00 00 00 00 00 00 00 01 00 00 00 03"
    );

    let login = Frame::Control(Control::Login { users: vec![user("bob"), user("al")] });
    assert_eq!(hex(&login.to_bytes(1024).unwrap()), "00 00 00 0a 00 03 02 03 62 6f 62 02 61 6c");

    let ping = Frame::Control(Control::Ping { token: 300 });
    assert_eq!(hex(&ping.to_bytes(1024).unwrap()), "00 00 00 05 00 05 fb 2c 01");

    let error = Frame::Control(Control::error(ErrorCode::DuplicateServer, "dup"));
    assert_eq!(hex(&error.to_bytes(1024).unwrap()), "00 00 00 07 00 02 01 03 64 75 70");

    // The digest of the set {bob, al}: XXH3-64 of each name, summed.
    let digest = UserDigest::of(&[user("bob"), user("al")]);
    assert_eq!(digest.count, 2);
    assert_eq!(format!("{:016x}", digest.sum), "64dbf82bf07f59d2");
    let digest = Frame::Control(Control::Digest(digest));
    assert_eq!(
        hex(&digest.to_bytes(1024).unwrap()),
        "00 00 00 0c 00 11 02 fd d2 59 7f f0 2b f8 db 64"
    );
    let resync = Frame::Control(Control::Resync);
    assert_eq!(hex(&resync.to_bytes(1024).unwrap()), "00 00 00 02 00 12");

    let locate = Frame::Control(Control::Locate { token: 1, user: user("bob") });
    assert_eq!(hex(&locate.to_bytes(1024).unwrap()), "00 00 00 07 00 13 01 03 62 6f 62");
    let located = Frame::Control(Control::Located {
        token: 1,
        server: Some(ServerId(7)),
        candidates: vec![],
    });
    assert_eq!(hex(&located.to_bytes(1024).unwrap()), "00 00 00 06 00 14 01 01 07 00");
    let watch = Frame::Control(Control::Watch { users: vec![user("bob"), user("al")] });
    assert_eq!(hex(&watch.to_bytes(1024).unwrap()), "00 00 00 0a 00 15 02 03 62 6f 62 02 61 6c");
    let unwatch = Frame::Control(Control::Unwatch { users: vec![user("al")] });
    assert_eq!(hex(&unwatch.to_bytes(1024).unwrap()), "00 00 00 06 00 16 01 02 61 6c");
    let presence =
        Frame::Control(Control::Presence { user: user("bob"), server: None, candidates: vec![] });
    assert_eq!(hex(&presence.to_bytes(1024).unwrap()), "00 00 00 08 00 17 03 62 6f 62 00 00");
    let reflexive = Candidate {
        addr: SocketAddr::from(([203, 0, 113, 5], 4000)),
        kind: CandidateKind::Reflexive,
    };
    let candidates =
        Frame::Control(Control::Candidates { user: user("bob"), candidates: vec![reflexive] });
    assert_eq!(
        hex(&candidates.to_bytes(1024).unwrap()),
        "00 00 00 10 00 21 03 62 6f 62 01 00 cb 00 71 05 fb a0 0f 01"
    );
    let kick = Frame::Control(Control::Kick { user: user("bob"), reason: "moved".into() });
    assert_eq!(
        hex(&kick.to_bytes(1024).unwrap()),
        "00 00 00 0c 00 18 03 62 6f 62 05 6d 6f 76 65 64"
    );
    // Groups, broadcast and server messages.
    let group = Frame::Data(Data {
        kind: DataKind::Group,
        seq: 2,
        origin: ServerId(7),
        recipient: user("room"),
        sender: user("al"),
        payload: Bytes::from_static(b"hi"),
    });
    assert_eq!(
        hex(&group.to_bytes(1024).unwrap()),
        "00 00 00 17 04 00 00 00 00 00 00 00 02 00 00 00 07 04 72 6f 6f 6d 02 61 6c 68 69"
    );
    let join = Frame::Control(Control::Join { groups: vec![GroupId::new("room").unwrap()] });
    assert_eq!(hex(&join.to_bytes(1024).unwrap()), "00 00 00 08 00 19 01 04 72 6f 6f 6d");
    let copies =
        Frame::Control(Control::Copies { seq: 2, servers: vec![ServerId(8), ServerId(9)] });
    assert_eq!(hex(&copies.to_bytes(1024).unwrap()), "00 00 00 06 00 1b 02 02 08 09");
    let down = Frame::Control(Control::ServerDown { server: ServerId(9) });
    assert_eq!(hex(&down.to_bytes(1024).unwrap()), "00 00 00 03 00 1c 09");
    let shared = Frame::Control(Control::MultiSession { user: user("bob"), elsewhere: true });
    assert_eq!(hex(&shared.to_bytes(1024).unwrap()), "00 00 00 07 00 1d 03 62 6f 62 01");
    let load = Frame::Control(Control::Load(Load {
        users: 3,
        cpu_centipercent: 1250,
        memory_bytes: 1000,
        msgs_in_per_s: 5,
        msgs_out_per_s: 7,
        capacity: Some(100),
    }));
    assert_eq!(
        hex(&load.to_bytes(1024).unwrap()),
        "00 00 00 0d 00 1e 03 fb e2 04 fb e8 03 05 07 01 64"
    );
    let drain = Frame::Control(Control::Drain { target: Some("h:1".into()) });
    assert_eq!(hex(&drain.to_bytes(1024).unwrap()), "00 00 00 07 00 1f 01 03 68 3a 31");
}

/// A broadcast names `*` and a server message a server id or `*`; anything else is refused.
#[test]
fn fan_out_kinds_check_their_recipient() {
    let frame = |kind, recipient: &str| {
        let data = Data {
            kind,
            seq: 1,
            origin: ServerId(7),
            recipient: UserId::new(recipient).unwrap(),
            sender: UserId::new("al").unwrap(),
            payload: Bytes::new(),
        };
        Frame::Data(data).to_bytes(1024).map(|bytes| RawFrame::from_bytes(bytes).unwrap())
    };
    assert!(frame(DataKind::Broadcast, "*").unwrap().route().is_ok());
    let wrong = frame(DataKind::BroadcastExceptSender, "bob").unwrap();
    assert!(matches!(wrong.route(), Err(ProtocolError::Recipient(_))));
    let server = frame(DataKind::Server, "12").unwrap();
    assert_eq!(server.route().unwrap().target_server(), Some(ServerId(12)));
    assert_eq!(frame(DataKind::Server, "*").unwrap().route().unwrap().target_server(), None);
    let wrong = frame(DataKind::Server, "twelve").unwrap();
    assert!(matches!(wrong.route(), Err(ProtocolError::Recipient(_))));
    let group = frame(DataKind::GroupExceptSender, "room").unwrap();
    assert!(group.route().unwrap().kind.excludes_sender());
}

/// `route` names the first thing wrong: an unknown kind, then a control frame, then a short header.
#[test]
fn route_errors_name_the_first_fault() {
    let raw = |body: &[u8]| {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(body);
        Codec::default().decode(&mut buf).unwrap().unwrap()
    };
    assert!(matches!(raw(&[0x7f]).route(), Err(ProtocolError::UnknownKind(0x7f))));
    assert!(matches!(raw(&[0x00, 0x05, 0x01]).route(), Err(ProtocolError::NotData)));
    assert!(matches!(raw(&[0x01, 0x00]).route(), Err(ProtocolError::Truncated)));
    assert!(matches!(raw(&[0x02]).route(), Err(ProtocolError::Truncated)));
}

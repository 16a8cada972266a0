//! Property tests: valid messages round-trip however they are split, and no
//! byte string makes the decoders panic.
#![allow(clippy::unwrap_used)] // tests panic on purpose

use std::io::Cursor;

use proptest::prelude::*;
use secure_tunnel_protocol::{
    encode_frame, read_frame, Accept, CaptureReport, CaptureState, ClockReport, FrameReader,
    GuestMessage, Hello, HostMessage, ProtocolError, RejectReason, SampleFormat, StreamSpec,
    WireMessage, CHANNEL_POSITION_LIMIT, MAGIC, MAX_CHANNELS, MAX_RATE, MAX_TARGET_LATENCY_USEC,
    MIN_RATE, MIN_TARGET_LATENCY_USEC,
};

fn format() -> impl Strategy<Value = SampleFormat> {
    prop_oneof![
        Just(SampleFormat::S16Le),
        Just(SampleFormat::S32Le),
        Just(SampleFormat::F32Le),
    ]
}

fn spec() -> impl Strategy<Value = StreamSpec> {
    (
        format(),
        MIN_RATE..=MAX_RATE,
        prop::collection::vec(0..CHANNEL_POSITION_LIMIT, 1..=usize::from(MAX_CHANNELS)),
    )
        .prop_map(|(format, rate, channel_map)| StreamSpec {
            format,
            rate,
            channel_map,
        })
}

/// Text without control characters; 32 chars of at most 4 bytes fit in 128.
fn text() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{0,32}"
}

fn latency() -> impl Strategy<Value = u32> {
    MIN_TARGET_LATENCY_USEC..=MAX_TARGET_LATENCY_USEC
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    prop_oneof![
        (any::<u16>(), spec(), latency(), text()).prop_map(|(version, spec, lat, name)| {
            GuestMessage::Hello(Hello {
                magic: MAGIC,
                version,
                spec,
                target_latency_usec: lat,
                stream_name: name,
            })
        }),
        prop::collection::vec(any::<u8>(), 1..2048).prop_map(GuestMessage::Audio),
        Just(GuestMessage::Cork),
        Just(GuestMessage::Uncork),
        Just(GuestMessage::Flush),
        latency().prop_map(|target_latency_usec| GuestMessage::SetLatency {
            target_latency_usec
        }),
        any::<u64>().prop_map(|guest_time_usec| GuestMessage::Ping { guest_time_usec }),
        text().prop_map(|reason| GuestMessage::Goodbye { reason }),
        (any::<u16>(), spec(), latency(), text()).prop_map(|(version, spec, lat, name)| {
            GuestMessage::CaptureHello(Hello {
                magic: MAGIC,
                version,
                spec,
                target_latency_usec: lat,
                stream_name: name,
            })
        }),
        any::<u64>().prop_map(|limit_bytes| GuestMessage::CaptureCredit { limit_bytes }),
        any::<u64>().prop_map(|bytes| GuestMessage::Rewind { bytes }),
    ]
}

fn capture_state() -> impl Strategy<Value = CaptureState> {
    prop_oneof![
        Just(CaptureState::Attached),
        Just(CaptureState::Idle),
        Just(CaptureState::AwaitingGrant),
        Just(CaptureState::Unavailable),
    ]
}

fn reject_reason() -> impl Strategy<Value = RejectReason> {
    prop_oneof![
        Just(RejectReason::UnsupportedVersion),
        Just(RejectReason::UnsupportedFormat),
        Just(RejectReason::NotAllowed),
        Just(RejectReason::TooManyClients),
        Just(RejectReason::BadRequest),
        Just(RejectReason::ServerError),
    ]
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<u64>()).prop_map(|(version, buffer_bytes, t)| {
            HostMessage::Accept(Accept {
                version,
                buffer_bytes,
                host_time_usec: t,
            })
        }),
        (reject_reason(), text())
            .prop_map(|(reason, message)| HostMessage::Reject { reason, message }),
        any::<u64>().prop_map(|limit_bytes| HostMessage::Credit { limit_bytes }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>()
        )
            .prop_map(|(t, a, b, lat, underruns, playing)| {
                HostMessage::Clock(ClockReport {
                    host_time_usec: t,
                    received_bytes: a.max(b),
                    played_bytes: a.min(b),
                    device_latency_usec: lat,
                    underruns,
                    playing,
                })
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(g, h)| HostMessage::Pong {
            guest_time_usec: g,
            host_time_usec: h,
        }),
        text().prop_map(|reason| HostMessage::Goodbye { reason }),
        prop::collection::vec(any::<u8>(), 1..2048).prop_map(HostMessage::CaptureData),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(t, sent, delay, dropped, running)| {
                HostMessage::CaptureClock(CaptureReport {
                    host_time_usec: t,
                    sent_bytes: sent,
                    delay_usec: delay,
                    dropped_bytes: dropped,
                    running,
                })
            }),
        capture_state().prop_map(|state| HostMessage::CaptureState { state }),
    ]
}

fn encode_all<M: WireMessage>(msgs: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        encode_frame(m, &mut out).unwrap();
    }
    out
}

/// Feeds `bytes` in pieces of the given sizes (cycled), collecting messages.
fn feed_in_pieces<M: WireMessage>(bytes: &[u8], sizes: &[usize]) -> Vec<M> {
    let mut reader = FrameReader::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).min(rest.len());
        reader.feed(&rest[..n]);
        rest = &rest[n..];
        while let Some(m) = reader.next_message().unwrap() {
            out.push(m);
        }
    }
    assert_eq!(reader.pending(), 0);
    out
}

fn read_all<M: WireMessage>(bytes: &[u8]) -> Vec<M> {
    let mut cursor = Cursor::new(bytes);
    let mut out = Vec::new();
    loop {
        match read_frame(&mut cursor) {
            Ok(m) => out.push(m),
            Err(ProtocolError::Closed) => return out,
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

/// Drives both decoders over arbitrary bytes; they must agree and not panic.
fn decode_garbage<M: WireMessage + std::fmt::Debug>(bytes: &[u8]) {
    let mut reader = FrameReader::new();
    reader.feed(bytes);
    let mut incremental = Vec::new();
    let incremental_end = loop {
        match reader.next_message::<M>() {
            Ok(Some(m)) => {
                m.validate().unwrap();
                incremental.push(m);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut cursor = Cursor::new(bytes);
    let mut blocking = Vec::new();
    let blocking_end = loop {
        match read_frame::<M, _>(&mut cursor) {
            Ok(m) => blocking.push(m),
            Err(e) => break e,
        }
    };
    assert_eq!(format!("{incremental:?}"), format!("{blocking:?}"));
    match (incremental_end, blocking_end) {
        // FrameReader waits for more; read_frame hits end of stream.
        (None, ProtocolError::Closed | ProtocolError::Truncated) => {}
        (Some(a), b) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (None, b) => panic!("FrameReader waits but read_frame says {b:?}"),
    }
}

proptest! {
    #[test]
    fn guest_messages_round_trip(
        msgs in prop::collection::vec(guest_message(), 1..8),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        for m in &msgs {
            prop_assert!(m.validate().is_ok(), "generator made invalid {:?}", m);
        }
        let bytes = encode_all(&msgs);
        prop_assert_eq!(&feed_in_pieces::<GuestMessage>(&bytes, &sizes), &msgs);
        prop_assert_eq!(&read_all::<GuestMessage>(&bytes), &msgs);
    }

    #[test]
    fn host_messages_round_trip(
        msgs in prop::collection::vec(host_message(), 1..8),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        let bytes = encode_all(&msgs);
        prop_assert_eq!(&feed_in_pieces::<HostMessage>(&bytes, &sizes), &msgs);
        prop_assert_eq!(&read_all::<HostMessage>(&bytes), &msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_garbage::<GuestMessage>(&bytes);
        decode_garbage::<HostMessage>(&bytes);
    }

    /// Arbitrary payloads behind a correct length prefix reach the decoder
    /// proper instead of stopping at the framing checks.
    #[test]
    fn arbitrary_payloads_never_panic(
        tag in 0u32..10,
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut payload = tag.to_le_bytes().to_vec();
        payload.extend_from_slice(&body);
        let mut bytes = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        decode_garbage::<GuestMessage>(&bytes);
        decode_garbage::<HostMessage>(&bytes);
    }

    /// Corrupting one byte of a valid stream never panics, and whatever still
    /// decodes is valid.
    #[test]
    fn corrupted_streams_never_panic(
        msgs in prop::collection::vec(guest_message(), 1..4),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut bytes = encode_all(&msgs);
        let i = index.index(bytes.len());
        bytes[i] = value;
        decode_garbage::<GuestMessage>(&bytes);
    }
}

//! Every bound and every malformed-input path returns the right error.
#![allow(clippy::unwrap_used)] // tests panic on purpose

mod common;

use std::io::{self, Cursor, Read};

use common::{frame, hello, stereo_spec};
use secure_tunnel_protocol::{
    encode_frame, read_frame, ClockReport, FrameReader, GuestMessage, HostMessage, ProtocolError,
    SampleFormat, WireMessage, MAGIC, MAX_AUDIO_CHUNK, MAX_FRAME_LEN, MAX_REASON_LEN,
    MAX_STREAM_NAME, MAX_TARGET_LATENCY_USEC, MIN_TARGET_LATENCY_USEC,
};

/// Decodes `bytes` through both paths, which must agree on the outcome.
fn decode_both(bytes: &[u8]) -> Result<GuestMessage, ProtocolError> {
    let mut reader = FrameReader::new();
    reader.feed(bytes);
    let incremental = reader
        .next_message::<GuestMessage>()
        .map(|m| m.expect("a whole frame was fed"));
    let blocking = read_frame::<GuestMessage, _>(&mut Cursor::new(bytes));
    assert_eq!(
        format!("{incremental:?}"),
        format!("{blocking:?}"),
        "FrameReader and read_frame disagree"
    );
    incremental
}

fn encode_unchecked<M: WireMessage>(msg: &M) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out).unwrap();
    out
}

fn assert_invalid<M: WireMessage + std::fmt::Debug>(msg: M, expected_field: &str) {
    match msg.validate() {
        Err(ProtocolError::Invalid { field, .. }) => {
            assert_eq!(field, expected_field, "wrong field for {msg:?}")
        }
        other => panic!("{msg:?} should be invalid ({expected_field}), got {other:?}"),
    }
    // The same message must be refused when it arrives from the wire.
    let bytes = encode_unchecked(&msg);
    let mut reader = FrameReader::new();
    reader.feed(&bytes);
    assert!(matches!(
        reader.next_message::<M>(),
        Err(ProtocolError::Invalid { field, .. }) if field == expected_field
    ));
    assert!(matches!(
        read_frame::<M, _>(&mut Cursor::new(&bytes)),
        Err(ProtocolError::Invalid { field, .. }) if field == expected_field
    ));
}

// ---- framing -------------------------------------------------------------

#[test]
fn zero_length_frame_is_empty_frame() {
    assert!(matches!(
        decode_both(&[0, 0, 0, 0]),
        Err(ProtocolError::EmptyFrame)
    ));
}

#[test]
fn overlong_prefix_is_refused_from_the_prefix_alone() {
    for len in [MAX_FRAME_LEN + 1, u32::MAX] {
        // FrameReader sees only the prefix: it must not wait for the payload.
        let mut reader = FrameReader::new();
        reader.feed(&len.to_le_bytes());
        match reader.next_message::<GuestMessage>() {
            Err(ProtocolError::FrameTooLong { len: l, max }) => {
                assert_eq!((l, max), (len, MAX_FRAME_LEN));
            }
            other => panic!("len {len}: expected FrameTooLong, got {other:?}"),
        }
        // The error is sticky: the stream stays unusable.
        assert!(reader.next_message::<GuestMessage>().is_err());

        // read_frame must fail without trying to read (or allocate) a payload.
        struct PrefixOnly([u8; 4], usize);
        impl Read for PrefixOnly {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                assert!(self.1 < 4, "read_frame read past an invalid prefix");
                let n = buf.len().min(4 - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        assert!(matches!(
            read_frame::<GuestMessage, _>(&mut PrefixOnly(len.to_le_bytes(), 0)),
            Err(ProtocolError::FrameTooLong { .. })
        ));
    }
}

#[test]
fn max_frame_len_itself_is_accepted_as_a_length() {
    // A prefix of exactly MAX_FRAME_LEN is legal: the reader waits for it.
    let mut reader = FrameReader::new();
    reader.feed(&MAX_FRAME_LEN.to_le_bytes());
    assert!(reader.next_message::<GuestMessage>().unwrap().is_none());
    assert_eq!(reader.wanted(), MAX_FRAME_LEN as usize);
}

#[test]
fn truncated_frames() {
    let whole = encode_unchecked(&GuestMessage::Hello(hello()));
    for cut in 1..whole.len() {
        let part = &whole[..cut];
        assert!(
            matches!(
                read_frame::<GuestMessage, _>(&mut Cursor::new(part)),
                Err(ProtocolError::Truncated)
            ),
            "cut at {cut}"
        );
        let mut reader = FrameReader::new();
        reader.feed(part);
        assert!(reader.next_message::<GuestMessage>().unwrap().is_none());
        assert_eq!(reader.pending(), cut);
        reader.feed(&whole[cut..]);
        assert_eq!(
            reader.next_message::<GuestMessage>().unwrap(),
            Some(GuestMessage::Hello(hello()))
        );
    }
    assert!(matches!(
        read_frame::<GuestMessage, _>(&mut Cursor::new(&[])),
        Err(ProtocolError::Closed)
    ));
}

#[test]
fn trailing_bytes_are_refused() {
    // Cork is a bare tag (4 bytes); a frame of 6 carries two extra bytes.
    let bytes = frame(&[2, 0, 0, 0, 0xaa, 0xbb]);
    assert!(matches!(
        decode_both(&bytes),
        Err(ProtocolError::TrailingBytes { extra: 2 })
    ));
    let mut audio = encode_unchecked(&GuestMessage::Audio(vec![1, 2, 3]));
    audio.push(9);
    let len = u32::try_from(audio.len() - 4).unwrap();
    audio[..4].copy_from_slice(&len.to_le_bytes());
    assert!(matches!(
        decode_both(&audio),
        Err(ProtocolError::TrailingBytes { extra: 1 })
    ));
}

// ---- decoding ------------------------------------------------------------

#[test]
fn unknown_enum_tags_are_decode_errors() {
    // GuestMessage has 10 variants, HostMessage 9 (version 2 appended the
    // capture ones).
    assert!(matches!(
        decode_both(&frame(&[10, 0, 0, 0])),
        Err(ProtocolError::Decode(_))
    ));
    assert!(matches!(
        decode_both(&frame(&[0xff, 0xff, 0xff, 0xff])),
        Err(ProtocolError::Decode(_))
    ));
    let mut reader = FrameReader::new();
    reader.feed(&frame(&[9, 0, 0, 0]));
    assert!(matches!(
        reader.next_message::<HostMessage>(),
        Err(ProtocolError::Decode(_))
    ));
    // RejectReason has 6 variants: tag 6 inside a Reject.
    let mut reject = vec![1, 0, 0, 0, 6, 0, 0, 0];
    reject.extend_from_slice(&0u64.to_le_bytes());
    let mut reader = FrameReader::new();
    reader.feed(&frame(&reject));
    assert!(matches!(
        reader.next_message::<HostMessage>(),
        Err(ProtocolError::Decode(_))
    ));
    // SampleFormat has 3 variants: patch the Hello's format tag (offset 10).
    let mut hello_bytes = encode_unchecked(&GuestMessage::Hello(hello()));
    hello_bytes[4 + 10] = 3;
    assert!(matches!(
        decode_both(&hello_bytes),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn bool_other_than_0_or_1_is_a_decode_error() {
    let clock = HostMessage::Clock(ClockReport {
        host_time_usec: 1,
        received_bytes: 2,
        played_bytes: 1,
        device_latency_usec: 0,
        underruns: 0,
        playing: true,
    });
    let mut bytes = encode_unchecked(&clock);
    *bytes.last_mut().unwrap() = 2;
    let mut reader = FrameReader::new();
    reader.feed(&bytes);
    assert!(matches!(
        reader.next_message::<HostMessage>(),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn inner_lengths_beyond_the_frame_are_decode_errors() {
    for claimed in [5u64, 1 << 30, u64::MAX] {
        // Audio claiming `claimed` bytes but carrying 4.
        let mut payload = vec![1, 0, 0, 0];
        payload.extend_from_slice(&claimed.to_le_bytes());
        payload.extend_from_slice(&[1, 2, 3, 4]);
        assert!(
            matches!(decode_both(&frame(&payload)), Err(ProtocolError::Decode(_))),
            "audio length {claimed}"
        );
        // Goodbye whose reason claims `claimed` bytes.
        let mut payload = vec![7, 0, 0, 0];
        payload.extend_from_slice(&claimed.to_le_bytes());
        payload.extend_from_slice(b"bye");
        assert!(
            matches!(decode_both(&frame(&payload)), Err(ProtocolError::Decode(_))),
            "reason length {claimed}"
        );
    }
}

#[test]
fn invalid_utf8_is_a_decode_error() {
    let mut payload = vec![7, 0, 0, 0];
    payload.extend_from_slice(&2u64.to_le_bytes());
    payload.extend_from_slice(&[0xc3, 0x28]);
    assert!(matches!(
        decode_both(&frame(&payload)),
        Err(ProtocolError::Decode(_))
    ));
}

#[test]
fn truncated_payload_inside_a_complete_frame_is_a_decode_error() {
    // A Ping whose frame holds only half of the u64.
    assert!(matches!(
        decode_both(&frame(&[6, 0, 0, 0, 1, 2, 3, 4])),
        Err(ProtocolError::Decode(_))
    ));
}

// ---- validation ----------------------------------------------------------

#[test]
fn valid_hello_passes() {
    hello().validate().unwrap();
    let mut edge = hello();
    edge.spec.rate = 8_000;
    edge.target_latency_usec = MIN_TARGET_LATENCY_USEC;
    edge.spec.channel_map = vec![0];
    edge.stream_name = "é".repeat(MAX_STREAM_NAME / 2);
    edge.validate().unwrap();
    edge.spec.rate = 192_000;
    edge.target_latency_usec = MAX_TARGET_LATENCY_USEC;
    edge.spec.channel_map = vec![50; 8];
    edge.spec.format = SampleFormat::F32Le;
    edge.stream_name = String::new();
    edge.validate().unwrap();
}

fn hello_with(f: impl FnOnce(&mut secure_tunnel_protocol::Hello)) -> GuestMessage {
    let mut h = hello();
    f(&mut h);
    GuestMessage::Hello(h)
}

#[test]
fn hello_bounds() {
    assert_invalid(hello_with(|h| h.magic = *b"STuN"), "magic");
    assert_invalid(hello_with(|h| h.magic = [0; 4]), "magic");
    assert_invalid(hello_with(|h| h.spec.rate = 7_999), "rate");
    assert_invalid(hello_with(|h| h.spec.rate = 192_001), "rate");
    assert_invalid(hello_with(|h| h.spec.rate = 0), "rate");
    assert_invalid(hello_with(|h| h.spec.channel_map.clear()), "channel_map");
    assert_invalid(
        hello_with(|h| h.spec.channel_map = vec![1; 9]),
        "channel_map",
    );
    assert_invalid(
        hello_with(|h| h.spec.channel_map = vec![1, 51]),
        "channel_map",
    );
    assert_invalid(
        hello_with(|h| h.spec.channel_map = vec![255]),
        "channel_map",
    );
    assert_invalid(
        hello_with(|h| h.target_latency_usec = MIN_TARGET_LATENCY_USEC - 1),
        "target_latency_usec",
    );
    assert_invalid(
        hello_with(|h| h.target_latency_usec = MAX_TARGET_LATENCY_USEC + 1),
        "target_latency_usec",
    );
    assert_invalid(
        hello_with(|h| h.stream_name = "x".repeat(MAX_STREAM_NAME + 1)),
        "stream_name",
    );
    // 129 bytes but only 65 characters: the bound is in bytes.
    assert_invalid(
        hello_with(|h| h.stream_name = format!("x{}", "é".repeat(64))),
        "stream_name",
    );
    for bad in ["a\nb", "\0", "tab\there", "\u{7f}", "\u{9b}"] {
        assert_invalid(hello_with(|h| h.stream_name = bad.into()), "stream_name");
    }
}

#[test]
fn hello_does_not_judge_the_version() {
    // An unknown version gets its own reject reason, so validate() lets it
    // through for the host to compare.
    let mut h = hello();
    h.version = 0xbeef;
    h.validate().unwrap();
    assert_eq!(h.magic, MAGIC);
}

#[test]
fn audio_bounds() {
    assert_invalid(GuestMessage::Audio(Vec::new()), "audio");
    assert_invalid(GuestMessage::Audio(vec![0; MAX_AUDIO_CHUNK + 1]), "audio");
    GuestMessage::Audio(vec![0; 1]).validate().unwrap();
    GuestMessage::Audio(vec![0; MAX_AUDIO_CHUNK])
        .validate()
        .unwrap();
}

#[test]
fn capture_bounds() {
    assert_invalid(HostMessage::CaptureData(Vec::new()), "capture data");
    assert_invalid(
        HostMessage::CaptureData(vec![0; MAX_AUDIO_CHUNK + 1]),
        "capture data",
    );
    HostMessage::CaptureData(vec![0; MAX_AUDIO_CHUNK])
        .validate()
        .unwrap();
    // The largest capture chunk fits a frame, like the largest Audio.
    let mut out = Vec::new();
    secure_tunnel_protocol::encode_frame(
        &HostMessage::CaptureData(vec![0; MAX_AUDIO_CHUNK]),
        &mut out,
    )
    .unwrap();
    // A CaptureHello is judged like a Hello.
    let mut bad = hello();
    bad.target_latency_usec = 0;
    assert_invalid(GuestMessage::CaptureHello(bad), "target_latency_usec");
}

#[test]
fn set_latency_bounds() {
    for bad in [0, MIN_TARGET_LATENCY_USEC - 1, MAX_TARGET_LATENCY_USEC + 1] {
        assert_invalid(
            GuestMessage::SetLatency {
                target_latency_usec: bad,
            },
            "target_latency_usec",
        );
    }
    for good in [MIN_TARGET_LATENCY_USEC, MAX_TARGET_LATENCY_USEC] {
        GuestMessage::SetLatency {
            target_latency_usec: good,
        }
        .validate()
        .unwrap();
    }
}

#[test]
fn reason_texts_are_bounded() {
    let long = "r".repeat(MAX_REASON_LEN + 1);
    let max = "r".repeat(MAX_REASON_LEN);
    assert_invalid(
        GuestMessage::Goodbye {
            reason: long.clone(),
        },
        "reason",
    );
    assert_invalid(
        GuestMessage::Goodbye {
            reason: "a\rb".into(),
        },
        "reason",
    );
    assert_invalid(
        HostMessage::Goodbye {
            reason: long.clone(),
        },
        "reason",
    );
    assert_invalid(
        HostMessage::Reject {
            reason: secure_tunnel_protocol::RejectReason::BadRequest,
            message: long,
        },
        "message",
    );
    assert_invalid(
        HostMessage::Reject {
            reason: secure_tunnel_protocol::RejectReason::BadRequest,
            message: "\u{1b}[31m".into(),
        },
        "message",
    );
    GuestMessage::Goodbye {
        reason: max.clone(),
    }
    .validate()
    .unwrap();
    HostMessage::Goodbye { reason: max }.validate().unwrap();
}

#[test]
fn clock_report_played_never_exceeds_received() {
    let report = |received, played| {
        HostMessage::Clock(ClockReport {
            host_time_usec: 10,
            received_bytes: received,
            played_bytes: played,
            device_latency_usec: 0,
            underruns: 0,
            playing: false,
        })
    };
    assert_invalid(report(100, 101), "played_bytes");
    assert_invalid(report(0, u64::MAX), "played_bytes");
    report(100, 100).validate().unwrap();
    report(0, 0).validate().unwrap();
}

#[test]
fn stream_spec_validate_alone() {
    stereo_spec().validate().unwrap();
    let mut spec = stereo_spec();
    spec.channel_map = vec![0, 1, 2, 3, 4, 5, 6, 7];
    spec.validate().unwrap();
}

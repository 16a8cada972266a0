//! Golden byte vectors: the wire format, frozen.
//!
//! Each vector is a complete frame (u32 LE length prefix, then the payload),
//! written one field per group so it can be checked against docs/protocol.md
//! by eye. If one of these tests fails, the wire format has changed: that is
//! a protocol version bump, not a test to update.
#![allow(clippy::unwrap_used)] // tests panic on purpose

mod common;

use common::{all_guest, all_host, from_hex, hello, to_hex};
use secure_tunnel_protocol::{
    encode_frame, CaptureState, FrameReader, GuestMessage, HostMessage, RejectReason, SampleFormat,
    WireMessage,
};

/// (name, hex) for `common::all_guest()`, in the same order.
const GUEST: [(&str, &str); 11] = [
    (
        "Hello",
        "2a000000 \
         00000000 \
         5354756e \
         0100 \
         00000000 80bb0000 0200000000000000 0102 \
         204e0000 \
         0200000000000000 766d",
    ),
    ("Audio", "10000000 01000000 0400000000000000 01020304"),
    ("Cork", "04000000 02000000"),
    ("Uncork", "04000000 03000000"),
    ("Flush", "04000000 04000000"),
    ("SetLatency", "08000000 05000000 50c30000"),
    ("Ping", "0c000000 06000000 0807060504030201"),
    ("Goodbye", "0f000000 07000000 0300000000000000 627965"),
    (
        "CaptureHello",
        "2a000000 \
         08000000 \
         5354756e \
         0200 \
         00000000 80bb0000 0200000000000000 0102 \
         204e0000 \
         0200000000000000 766d",
    ),
    ("CaptureCredit", "0c000000 09000000 0096000000000000"),
    ("Rewind", "0c000000 0a000000 002d000000000000"),
];

/// (name, hex) for `common::all_host()`, in the same order.
const HOST: [(&str, &str); 9] = [
    ("Accept", "12000000 00000000 0100 004b0000 15cd5b0700000000"),
    (
        "Reject",
        "14000000 01000000 03000000 0400000000000000 66756c6c",
    ),
    ("Credit", "0c000000 02000000 0000010000000000"),
    (
        "Clock",
        "25000000 \
         03000000 \
         40420f0000000000 \
         8025000000000000 \
         c012000000000000 \
         88130000 \
         01000000 \
         01",
    ),
    (
        "Pong",
        "14000000 04000000 2a00000000000000 2b00000000000000",
    ),
    (
        "Goodbye",
        "14000000 05000000 0800000000000000 73687574646f776e",
    ),
    ("CaptureData", "0e000000 06000000 0200000000000000 0a0b"),
    (
        "CaptureClock",
        "21000000 \
         07000000 \
         80841e0000000000 \
         004b000000000000 \
         d4300000 \
         0000000000000000 \
         01",
    ),
    ("CaptureState", "08000000 08000000 02000000"),
];

fn check<M: WireMessage + PartialEq + std::fmt::Debug>(name: &str, msg: &M, hex: &str) {
    let expected = from_hex(hex);
    let mut actual = Vec::new();
    encode_frame(msg, &mut actual).unwrap();
    assert_eq!(
        to_hex(&actual),
        to_hex(&expected),
        "{name}: encoding changed"
    );
    let mut reader = FrameReader::new();
    reader.feed(&expected);
    assert_eq!(
        reader.next_message::<M>().unwrap().as_ref(),
        Some(msg),
        "{name}: decoding changed"
    );
}

#[test]
fn guest_messages() {
    let msgs = all_guest();
    assert_eq!(msgs.len(), GUEST.len());
    for (msg, (name, hex)) in msgs.iter().zip(GUEST) {
        assert!(format!("{msg:?}").starts_with(name), "{name} out of order");
        check(name, msg, hex);
    }
}

#[test]
fn host_messages() {
    let msgs = all_host();
    assert_eq!(msgs.len(), HOST.len());
    for (msg, (name, hex)) in msgs.iter().zip(HOST) {
        assert!(format!("{msg:?}").starts_with(name), "{name} out of order");
        check(name, msg, hex);
    }
}

/// Every `RejectReason` tag, in declaration order.
#[test]
fn reject_reason_tags() {
    let reasons = [
        RejectReason::UnsupportedVersion,
        RejectReason::UnsupportedFormat,
        RejectReason::NotAllowed,
        RejectReason::TooManyClients,
        RejectReason::BadRequest,
        RejectReason::ServerError,
    ];
    for (tag, reason) in reasons.into_iter().enumerate() {
        let hex = format!("10000000 01000000 {tag:02x}000000 0000000000000000");
        let msg = HostMessage::Reject {
            reason,
            message: String::new(),
        };
        check(&format!("{reason:?}"), &msg, &hex);
    }
}

/// Every `SampleFormat` tag, in declaration order, inside the Hello vector.
#[test]
fn sample_format_tags() {
    let formats = [
        SampleFormat::S16Le,
        SampleFormat::S32Le,
        SampleFormat::F32Le,
    ];
    for (tag, format) in formats.into_iter().enumerate() {
        let mut h = hello();
        h.spec.format = format;
        let hex = GUEST[0]
            .1
            .replacen("00000000 80bb0000", &format!("{tag:02x}000000 80bb0000"), 1);
        check(&format!("{format:?}"), &GuestMessage::Hello(h), &hex);
    }
}

/// Every `CaptureState` tag, in declaration order.
#[test]
fn capture_state_tags() {
    let states = [
        CaptureState::Attached,
        CaptureState::Idle,
        CaptureState::AwaitingGrant,
        CaptureState::Unavailable,
    ];
    for (tag, state) in states.into_iter().enumerate() {
        let hex = format!("08000000 08000000 {tag:02x}000000");
        check(
            &format!("{state:?}"),
            &HostMessage::CaptureState { state },
            &hex,
        );
    }
}

/// The worked example in docs/protocol.md, which must match the encoder.
#[test]
fn documented_hello_example() {
    const DOC: &str = include_str!("../../docs/protocol.md");
    let hex = "2a000000000000005354756e01000000000080bb000002000000000000000102204e00000200000000000000766d";
    assert!(
        DOC.contains(hex),
        "docs/protocol.md lost the worked example"
    );
    check("doc Hello", &GuestMessage::Hello(hello()), hex);
}

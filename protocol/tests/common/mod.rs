//! Shared fixtures: one instance of every message variant, and hex helpers.
#![allow(dead_code)] // each test binary uses a different subset

use secure_tunnel_protocol::{
    Accept, CaptureReport, CaptureState, ClockReport, GuestMessage, Hello, HostMessage,
    RejectReason, SampleFormat, StreamSpec, CAPTURE_PROTOCOL_VERSION, MAGIC, PROTOCOL_VERSION,
};

pub fn stereo_spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

pub fn hello() -> Hello {
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        spec: stereo_spec(),
        target_latency_usec: 20_000,
        stream_name: "vm".into(),
    }
}

/// One instance of every `GuestMessage` variant, in declaration order.
pub fn all_guest() -> Vec<GuestMessage> {
    vec![
        GuestMessage::Hello(hello()),
        GuestMessage::Audio(vec![1, 2, 3, 4]),
        GuestMessage::Cork,
        GuestMessage::Uncork,
        GuestMessage::Flush,
        GuestMessage::SetLatency {
            target_latency_usec: 50_000,
        },
        GuestMessage::Ping {
            guest_time_usec: 0x0102_0304_0506_0708,
        },
        GuestMessage::Goodbye {
            reason: "bye".into(),
        },
        GuestMessage::CaptureHello(Hello {
            version: CAPTURE_PROTOCOL_VERSION,
            ..hello()
        }),
        GuestMessage::CaptureCredit {
            limit_bytes: 38_400,
        },
        GuestMessage::Rewind { bytes: 11_520 },
    ]
}

/// One instance of every `HostMessage` variant, in declaration order.
pub fn all_host() -> Vec<HostMessage> {
    vec![
        HostMessage::Accept(Accept {
            version: PROTOCOL_VERSION,
            buffer_bytes: 19_200,
            host_time_usec: 123_456_789,
        }),
        HostMessage::Reject {
            reason: RejectReason::TooManyClients,
            message: "full".into(),
        },
        HostMessage::Credit {
            limit_bytes: 65_536,
        },
        HostMessage::Clock(ClockReport {
            host_time_usec: 1_000_000,
            received_bytes: 9_600,
            played_bytes: 4_800,
            device_latency_usec: 5_000,
            underruns: 1,
            playing: true,
        }),
        HostMessage::Pong {
            guest_time_usec: 42,
            host_time_usec: 43,
        },
        HostMessage::Goodbye {
            reason: "shutdown".into(),
        },
        HostMessage::CaptureData(vec![10, 11]),
        HostMessage::CaptureClock(CaptureReport {
            host_time_usec: 2_000_000,
            sent_bytes: 19_200,
            delay_usec: 12_500,
            dropped_bytes: 0,
            running: true,
        }),
        HostMessage::CaptureState {
            state: CaptureState::AwaitingGrant,
        },
    ]
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses hex, ignoring whitespace (so vectors can be laid out by field).
pub fn from_hex(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ASCII");
            u8::from_str_radix(s, 16).expect("hex digit")
        })
        .collect()
}

/// A frame with `payload` behind a correct length prefix.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len())
        .expect("small payload")
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

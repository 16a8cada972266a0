//! The secure-tunnel wire protocol, shared by the guest module and host-playd,
//! and the one grammar of their endpoint addresses ([`addr`]).
//!
//! Every frame on the byte stream is a little-endian `u32` length followed by
//! exactly that many bytes holding one bincode-encoded message. The length is
//! checked against [`MAX_FRAME_LEN`] before anything is allocated, and decoding
//! never panics on peer input: it returns a [`ProtocolError`].
//!
//! `docs/protocol.md` describes every byte; the golden vectors in
//! `tests/golden.rs` keep the format from drifting.
#![forbid(unsafe_code)]

pub mod addr;
mod codec;
mod error;
mod messages;
mod spec;

pub use addr::{AddrError, Address, VSOCK_CID_ANY};
pub use codec::{
    encode_audio_frame, encode_frame, read_frame, write_frame, FrameReader, WireMessage,
};
pub use error::ProtocolError;
pub use messages::{
    Accept, CaptureReport, CaptureState, ClockReport, GuestMessage, Hello, HostMessage,
    RejectReason,
};
pub use spec::{
    SampleFormat, StreamSpec, CHANNEL_POSITION_LIMIT, MAX_CHANNELS, MAX_RATE, MIN_RATE,
};

/// The playback version. A playback guest offers it in [`Hello`]; the host
/// answers with [`Accept`] (same version) or [`RejectReason::UnsupportedVersion`].
/// Playback guests keep offering 1 so that they work with every host.
pub const PROTOCOL_VERSION: u16 = 1;

/// Version 2 is version 1 plus capture: [`GuestMessage::CaptureHello`] and
/// [`GuestMessage::CaptureCredit`], [`HostMessage::CaptureData`],
/// [`HostMessage::CaptureClock`] and [`HostMessage::CaptureState`], all
/// appended to their enums so that every version-1 message is unchanged. A
/// capture guest offers 2 in its `CaptureHello`; a version-1 host cannot
/// decode that message and closes the connection.
pub const CAPTURE_PROTOCOL_VERSION: u16 = 2;

/// Version 3 is version 1 plus [`GuestMessage::Rewind`] (appended to the
/// enum, so every version-1 message is unchanged). A playback guest that
/// can rewind offers 3 in its `Hello`; a host that speaks it answers
/// `Accept` with 3, and one that does not rejects with
/// [`RejectReason::UnsupportedVersion`], after which the guest offers 1
/// (and never rewinds). A host accepts both 1 and 3.
pub const REWIND_PROTOCOL_VERSION: u16 = 3;

/// First four bytes of every [`Hello`], so that a stray client of another
/// protocol is recognised at once.
pub const MAGIC: [u8; 4] = *b"STun";

/// Largest audio payload in one [`GuestMessage::Audio`] frame, in bytes.
pub const MAX_AUDIO_CHUNK: usize = 64 * 1024;

/// Largest frame payload (the length prefix excluded). An audio chunk plus the
/// enum tag and the vector length fit with room to spare.
pub const MAX_FRAME_LEN: u32 = MAX_AUDIO_CHUNK as u32 + 64;

/// Longest stream name in a [`Hello`], in bytes of UTF-8.
pub const MAX_STREAM_NAME: usize = 128;

/// Longest free-text reason in a reject or goodbye, in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 256;

/// Bounds of the target latency a guest may ask for, in microseconds.
pub const MIN_TARGET_LATENCY_USEC: u32 = 1_000;
/// See [`MIN_TARGET_LATENCY_USEC`].
pub const MAX_TARGET_LATENCY_USEC: u32 = 10_000_000;

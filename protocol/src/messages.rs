use bincode::{Decode, Encode};

use crate::{
    ProtocolError, StreamSpec, MAGIC, MAX_AUDIO_CHUNK, MAX_REASON_LEN, MAX_STREAM_NAME,
    MAX_TARGET_LATENCY_USEC, MIN_TARGET_LATENCY_USEC,
};

/// The guest's opening message: who it is and what it will send.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The protocol version the guest speaks.
    pub version: u16,
    /// The audio the guest will send.
    pub spec: StreamSpec,
    /// End-to-end latency the guest would like, in microseconds.
    pub target_latency_usec: u32,
    /// Human-readable name of the stream (the guest sink's name); the host may
    /// show it or replace it by policy.
    pub stream_name: String,
}

/// The host's acceptance of a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Accept {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// Bytes of audio the host will keep queued ahead of its device: the
    /// granted share of the target latency.
    pub buffer_bytes: u32,
    /// Host monotonic clock at the moment of acceptance, in microseconds. Its
    /// epoch is the host's own and means nothing to the guest.
    pub host_time_usec: u64,
}

/// Why the host refused a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum RejectReason {
    /// The host does not speak the version offered in [`Hello`].
    UnsupportedVersion,
    /// The host cannot play the offered [`StreamSpec`].
    UnsupportedFormat,
    /// Policy forbids this guest.
    NotAllowed,
    /// The host is serving as many guests as it will.
    TooManyClients,
    /// The first message was not a valid [`Hello`].
    BadRequest,
    /// The host failed internally (e.g. could not open its device).
    ServerError,
}

/// The host's view of its playback clock, sent periodically while a stream is
/// open. Positions count bytes of the guest's stream since the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ClockReport {
    /// Host monotonic clock when the position was sampled, in microseconds
    /// (host epoch; map it to the guest clock with [`HostMessage::Pong`]).
    pub host_time_usec: u64,
    /// Audio bytes received from the guest so far.
    pub received_bytes: u64,
    /// Audio bytes that have left the host's speaker (or were dropped by a
    /// flush) at `host_time_usec`. Never exceeds `received_bytes`.
    pub played_bytes: u64,
    /// Latency of the host device below the host stream, in microseconds.
    pub device_latency_usec: u32,
    /// Underruns of the host stream since the handshake.
    pub underruns: u32,
    /// Whether the host clock is advancing (false while corked or starved).
    pub playing: bool,
}

/// Why the host is not recording for a capture guest right now
/// ([`HostMessage::CaptureState`], protocol version 2). The guest shows it
/// (a detached microphone is not a silent one) and posts silence meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum CaptureState {
    /// The host's recording stream is open and data flows.
    Attached,
    /// The guest has not asked to record (it sent no `Uncork`, or a `Cork`).
    Idle,
    /// Policy needs an administrator's live grant, which is not given (or
    /// was revoked).
    AwaitingGrant,
    /// The host's pinned source is missing or failed.
    Unavailable,
}

/// The host's view of its capture clock, sent while a capture stream is
/// attached (protocol version 2). Positions count bytes of the capture
/// stream since the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CaptureReport {
    /// Host monotonic clock at the sample, in microseconds (host epoch).
    pub host_time_usec: u64,
    /// Capture bytes the host had sent in [`HostMessage::CaptureData`] when
    /// it took the sample (this report follows them on the stream).
    pub sent_bytes: u64,
    /// How much audio the host holds, at `host_time_usec`, beyond
    /// `sent_bytes`: the device's latency plus what the host's recording
    /// stream has captured but not yet sent. The sample the microphone
    /// takes at `host_time_usec` is `delay_usec` of audio after `sent_bytes`.
    pub delay_usec: u32,
    /// Capture bytes the host dropped because the guest granted no room.
    pub dropped_bytes: u64,
    /// Whether the host's capture clock is advancing.
    pub running: bool,
}

/// Messages from the guest (module) to the host (host-playd).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum GuestMessage {
    /// Must be the first message, and only the first.
    Hello(Hello),
    /// Interleaved PCM in the negotiated spec; whole frames, at most
    /// [`MAX_AUDIO_CHUNK`] bytes, never beyond the credit granted.
    Audio(Vec<u8>),
    /// Pause playback; queued audio is kept.
    Cork,
    /// Resume after [`GuestMessage::Cork`].
    Uncork,
    /// Drop all audio queued on the host.
    Flush,
    /// Ask for a new target latency (dynamic latency), in microseconds.
    SetLatency {
        /// Within [`MIN_TARGET_LATENCY_USEC`]..=[`MAX_TARGET_LATENCY_USEC`].
        target_latency_usec: u32,
    },
    /// Round-trip probe; the host echoes `guest_time_usec` in a Pong.
    Ping {
        /// Guest clock when sent, in microseconds (guest epoch).
        guest_time_usec: u64,
    },
    /// The guest is leaving; free-text reason.
    Goodbye {
        /// At most [`MAX_REASON_LEN`] bytes, no control characters.
        reason: String,
    },
    /// Protocol version 2: the first message of a *capture* connection,
    /// instead of [`GuestMessage::Hello`]. Same fields; `spec` is what the
    /// guest wants to receive, `target_latency_usec` the capture latency it
    /// would like, `stream_name` its source's name. The guest then asks to
    /// record with `Uncork` and stops with `Cork`.
    CaptureHello(Hello),
    /// Protocol version 2, capture connections only: flow control in the
    /// reverse direction. The host may have sent, in total since the
    /// handshake, up to `limit_bytes` capture bytes. Cumulative.
    CaptureCredit {
        /// Cumulative byte limit since the handshake.
        limit_bytes: u64,
    },
    /// Protocol version 3 ([`crate::REWIND_PROTOCOL_VERSION`]), playback
    /// connections only: the last `bytes` of audio sent are withdrawn. The
    /// host drops them if it has not played them yet, and both sides count
    /// them as never sent: the stream's byte positions (credit, `received`
    /// and `played` in clock reports) go back by `bytes`, and the audio
    /// that follows takes their place. Whole frames, at most what was sent.
    /// What the host already played of them is not undone: the audio that
    /// replaces it is skipped, and `played_bytes` stays within `received`.
    Rewind {
        /// Bytes withdrawn from the end of what was sent.
        bytes: u64,
    },
}

/// Messages from the host (host-playd) to the guest (module).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum HostMessage {
    /// The stream is open; the only possible first message besides `Reject`.
    Accept(Accept),
    /// The stream is refused; the host closes the connection after sending it.
    Reject {
        /// Machine-readable cause.
        reason: RejectReason,
        /// Free-text detail, at most [`MAX_REASON_LEN`] bytes, no control
        /// characters.
        message: String,
    },
    /// Flow control: the guest may have sent, in total since the handshake, up
    /// to `limit_bytes` audio bytes. Cumulative, so a lost or repeated grant
    /// cannot inflate credit.
    Credit {
        /// Cumulative byte limit since the handshake.
        limit_bytes: u64,
    },
    /// Periodic playback clock sample.
    Clock(ClockReport),
    /// Answer to [`GuestMessage::Ping`]: the guest's timestamp echoed, and the
    /// host clock when the ping was handled.
    Pong {
        /// Copied from the Ping.
        guest_time_usec: u64,
        /// Host monotonic clock when the Ping was handled, in microseconds.
        host_time_usec: u64,
    },
    /// The host is closing the stream; free-text reason.
    Goodbye {
        /// At most [`MAX_REASON_LEN`] bytes, no control characters.
        reason: String,
    },
    /// Protocol version 2: captured PCM in the negotiated spec, whole
    /// frames, at most [`MAX_AUDIO_CHUNK`] bytes, never beyond the guest's
    /// [`GuestMessage::CaptureCredit`].
    CaptureData(Vec<u8>),
    /// Protocol version 2: a capture clock sample.
    CaptureClock(CaptureReport),
    /// Protocol version 2: whether the host records for this guest, and if
    /// not, why. Sent after `Accept` and on every change.
    CaptureState {
        /// The new state.
        state: CaptureState,
    },
}

fn check_text(field: &'static str, text: &str, max: usize) -> Result<(), ProtocolError> {
    if text.len() > max {
        return Err(ProtocolError::invalid(
            field,
            format!("{} bytes exceeds the maximum of {max}", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(field, "contains control characters"));
    }
    Ok(())
}

impl Hello {
    /// Checks magic and bounds (not the version: an unknown version deserves
    /// its own reject reason, so the caller compares it).
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.magic != MAGIC {
            return Err(ProtocolError::invalid(
                "magic",
                format!("{:02x?} is not {:02x?}", self.magic, MAGIC),
            ));
        }
        self.spec.validate()?;
        check_latency(self.target_latency_usec)?;
        check_text("stream_name", &self.stream_name, MAX_STREAM_NAME)
    }
}

fn check_chunk(field: &'static str, data: &[u8]) -> Result<(), ProtocolError> {
    if data.is_empty() || data.len() > MAX_AUDIO_CHUNK {
        return Err(ProtocolError::invalid(
            field,
            format!("{} bytes is outside 1..={MAX_AUDIO_CHUNK}", data.len()),
        ));
    }
    Ok(())
}

fn check_latency(usec: u32) -> Result<(), ProtocolError> {
    if !(MIN_TARGET_LATENCY_USEC..=MAX_TARGET_LATENCY_USEC).contains(&usec) {
        return Err(ProtocolError::invalid(
            "target_latency_usec",
            format!("{usec} is outside {MIN_TARGET_LATENCY_USEC}..={MAX_TARGET_LATENCY_USEC}"),
        ));
    }
    Ok(())
}

impl GuestMessage {
    /// Checks the bounds that the codec alone cannot express.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            GuestMessage::Hello(hello) | GuestMessage::CaptureHello(hello) => hello.validate(),
            GuestMessage::Audio(data) => check_chunk("audio", data),
            GuestMessage::SetLatency {
                target_latency_usec,
            } => check_latency(*target_latency_usec),
            GuestMessage::Goodbye { reason } => check_text("reason", reason, MAX_REASON_LEN),
            GuestMessage::Cork
            | GuestMessage::Uncork
            | GuestMessage::Flush
            | GuestMessage::Ping { .. }
            | GuestMessage::CaptureCredit { .. }
            | GuestMessage::Rewind { .. } => Ok(()),
        }
    }
}

impl HostMessage {
    /// Checks the bounds that the codec alone cannot express.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            HostMessage::Reject { message, .. } => check_text("message", message, MAX_REASON_LEN),
            HostMessage::Goodbye { reason } => check_text("reason", reason, MAX_REASON_LEN),
            HostMessage::CaptureData(data) => check_chunk("capture data", data),
            HostMessage::Clock(report) if report.played_bytes > report.received_bytes => {
                Err(ProtocolError::invalid(
                    "played_bytes",
                    format!(
                        "{} exceeds received_bytes {}",
                        report.played_bytes, report.received_bytes
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

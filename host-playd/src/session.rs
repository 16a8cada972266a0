//! The per-connection protocol state machine, free of I/O.
//!
//! The engine feeds a [`Session`] every decoded guest message and every
//! backend event, each with the host clock, and carries out the [`Action`]s
//! it returns. Keeping the rules here, away from sockets and PulseAudio, lets
//! the tests drive every order of events a hostile or broken guest can
//! produce.
#![forbid(unsafe_code)]

use secure_tunnel_protocol::{
    Accept, ClockReport, GuestMessage, Hello, HostMessage, RejectReason, StreamSpec,
    CAPTURE_PROTOCOL_VERSION, MAX_REASON_LEN, MAX_STREAM_NAME, PROTOCOL_VERSION,
    REWIND_PROTOCOL_VERSION,
};

use crate::backend::{CaptureParams, Captured, StreamParams, StreamStatus};
use crate::text::sanitize;

pub mod capture;
use capture::Capture;

/// Clock report interval while the stream plays.
pub const CLOCK_INTERVAL_PLAYING_USEC: u64 = 20_000;
/// Clock report interval while the stream is corked or starved.
pub const CLOCK_INTERVAL_IDLE_USEC: u64 = 200_000;
/// Reports are sent this much before their interval is up, because the
/// engine samples streams every few milliseconds (see `engine::ACTIVE_POLL`):
/// the gap between two reports then never exceeds the interval.
pub const CLOCK_SLACK_USEC: u64 = 5_000;
/// How long the backend may take to open a stream after the Hello.
pub const OPEN_TIMEOUT_USEC: u64 = 5_000_000;

/// Input to a session besides guest messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decoded, validated guest message.
    Message(GuestMessage),
    /// The guest's byte stream could not be decoded; the text says why.
    ProtocolError(String),
    /// The stream asked for by [`Action::OpenStream`] is ready.
    StreamOpened { buffer_bytes: u32 },
    /// The stream could not be opened, for `reason`.
    OpenRefused {
        reason: RejectReason,
        message: String,
    },
    /// The open stream failed.
    StreamFailed { reason: String },
    /// A fresh sample of the open stream.
    Status(StreamStatus),
    /// A capture Hello passed the policy ([`Action::AdmitCapture`]);
    /// `permitted`: it may record now (`allow`), or only once granted.
    CaptureAdmitted { permitted: bool, quantum_usec: u64 },
    /// An administrator granted (`true`) or revoked capture.
    CapturePermission(bool),
    /// Audio the recording stream delivered.
    Captured(Captured),
    /// Time passed (lets deadlines fire).
    Tick,
    /// The daemon is shutting down.
    Shutdown,
}

/// What the engine must do on the session's behalf, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue a message to the guest.
    Send(HostMessage),
    /// Open the host stream.
    OpenStream(StreamParams),
    /// Write whole frames to the host stream.
    Write(Vec<u8>),
    /// Cork (`true`) or uncork the host stream.
    Cork(bool),
    /// Flush the host stream.
    Flush,
    /// Withdraw the last `bytes` written to the host stream (protocol 3's
    /// `Rewind`): what of them is not yet played is dropped, and what is
    /// written next takes their place.
    Rewind { bytes: u64 },
    /// Change the host stream's buffer.
    SetBuffer { tlength_bytes: u32 },
    /// Judge a capture Hello by the policy: the engine answers
    /// [`Event::CaptureAdmitted`] or [`Event::OpenRefused`].
    AdmitCapture { spec: StreamSpec },
    /// Open the host's recording stream (answered like `OpenStream`).
    OpenCapture(CaptureParams),
    /// Close the host's recording stream.
    CloseCapture,
    /// Close the connection after the queued messages, and the stream if any.
    /// `peer_fault` tells whether the guest broke the protocol (log louder).
    Close { reason: String, peer_fault: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitHello {
        deadline_usec: u64,
    },
    Opening {
        deadline_usec: u64,
    },
    Streaming,
    /// A capture connection after its Accept.
    Capturing,
    Closed,
}

/// One guest connection's protocol state.
#[derive(Debug, Clone)]
pub struct Session {
    state: State,
    spec: Option<StreamSpec>,
    stream_name: String,
    tlength_bytes: u32,
    received_bytes: u64,
    granted_bytes: u64,
    played_bytes: u64,
    /// The protocol version of the Accept (1, or 3 with rewinds).
    version: u16,
    last_clock_usec: Option<u64>,
    last_playing: bool,
    /// A clock report is due at once (after a flush, cork or uncork).
    clock_dirty: bool,
    /// A capture connection's own state, from its CaptureHello on.
    capture: Option<Capture>,
    /// The capture Hello's target latency, until the Accept.
    capture_latency_usec: u64,
    /// Privacy: clock reports' times rounded to this many µs (0: exact).
    report_quantum_usec: u64,
}

impl Session {
    /// A session for a guest that connected at `now_usec`; it must say Hello
    /// within `handshake_timeout_usec`.
    pub fn new(now_usec: u64, handshake_timeout_usec: u64, peer: &str) -> Self {
        Session {
            state: State::AwaitHello {
                deadline_usec: now_usec.saturating_add(handshake_timeout_usec),
            },
            spec: None,
            stream_name: peer.to_owned(),
            tlength_bytes: 0,
            received_bytes: 0,
            granted_bytes: 0,
            played_bytes: 0,
            version: PROTOCOL_VERSION,
            last_clock_usec: None,
            last_playing: false,
            clock_dirty: false,
            capture: None,
            capture_latency_usec: 0,
            report_quantum_usec: 0,
        }
    }

    /// Whether this is a capture connection (it said CaptureHello).
    pub fn is_capture(&self) -> bool {
        self.capture.is_some() || self.capture_latency_usec > 0
    }

    /// A capture connection's state after its Accept.
    pub fn capture(&self) -> Option<&Capture> {
        self.capture.as_ref()
    }

    /// Whether the session holds (or is opening) a host stream, or is an
    /// accepted capture connection (which counts as one: it may record).
    pub fn has_stream(&self) -> bool {
        matches!(
            self.state,
            State::Opening { .. } | State::Streaming | State::Capturing
        )
    }

    /// Whether the stream is open and wants [`Event::Status`] samples.
    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    /// Whether the session has finished; the engine drops it.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Audio bytes received from the guest since the handshake.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// Rounds the times of this session's playback clock reports to
    /// `quantum_usec` (policy `report_quantum_ms`; 0: exact).
    pub fn set_report_quantum(&mut self, quantum_usec: u64) {
        self.report_quantum_usec = quantum_usec;
    }

    /// The cumulative credit granted so far.
    pub fn granted_bytes(&self) -> u64 {
        self.granted_bytes
    }

    /// Handles one event at host time `now_usec`, appending actions to `out`.
    pub fn handle(&mut self, now_usec: u64, event: Event, out: &mut Vec<Action>) {
        match (&self.state, event) {
            (State::Closed, _) => {}
            (_, Event::Shutdown) => self.shutdown(out),
            (State::AwaitHello { .. }, event) => self.await_hello(now_usec, event, out),
            (State::Opening { .. }, event) => self.opening(now_usec, event, out),
            (State::Streaming, event) => self.streaming(now_usec, event, out),
            (State::Capturing, event) => self.capturing(now_usec, event, out),
        }
    }

    fn await_hello(&mut self, now_usec: u64, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Message(GuestMessage::Hello(hello)) => {
                if hello.version != PROTOCOL_VERSION && hello.version != REWIND_PROTOCOL_VERSION {
                    let message = format!(
                        "protocol version {} is not supported for playback; this host speaks \
                         {PROTOCOL_VERSION} and {REWIND_PROTOCOL_VERSION}",
                        hello.version
                    );
                    self.reject(RejectReason::UnsupportedVersion, message, out);
                    return;
                }
                self.version = hello.version;
                let tlength = hello
                    .spec
                    .usec_to_bytes(u64::from(hello.target_latency_usec))
                    .max(u64::from(hello.spec.frame_size()));
                let Ok(tlength_bytes) = u32::try_from(tlength) else {
                    let message = format!("a buffer of {tlength} bytes is too large");
                    self.reject(RejectReason::BadRequest, message, out);
                    return;
                };
                self.tlength_bytes = tlength_bytes;
                // The name reaches the host's mixer and its log.
                let name = sanitize(&hello.stream_name, MAX_STREAM_NAME);
                self.stream_name.clone_from(&name);
                self.spec = Some(hello.spec.clone());
                self.state = State::Opening {
                    deadline_usec: now_usec.saturating_add(OPEN_TIMEOUT_USEC),
                };
                out.push(Action::OpenStream(StreamParams {
                    spec: hello.spec,
                    tlength_bytes,
                    name,
                }));
            }
            Event::Message(GuestMessage::CaptureHello(hello)) => {
                self.capture_hello(now_usec, hello, out);
            }
            Event::Message(other) => {
                let message = format!("expected Hello first, got {}", message_name(&other));
                self.reject(RejectReason::BadRequest, message, out);
            }
            Event::ProtocolError(error) => {
                self.reject(RejectReason::BadRequest, format!("bad Hello: {error}"), out);
            }
            Event::Tick => {
                if let State::AwaitHello { deadline_usec } = self.state {
                    if now_usec >= deadline_usec {
                        self.close("no Hello within the handshake timeout", true, out);
                    }
                }
            }
            // Backend events cannot concern a session without a stream.
            Event::StreamOpened { .. }
            | Event::OpenRefused { .. }
            | Event::StreamFailed { .. }
            | Event::Status(_)
            | Event::CaptureAdmitted { .. }
            | Event::CapturePermission(_)
            | Event::Captured(_)
            | Event::Shutdown => {}
        }
    }

    fn capture_hello(&mut self, now_usec: u64, hello: Hello, out: &mut Vec<Action>) {
        if hello.version != CAPTURE_PROTOCOL_VERSION {
            let message = format!(
                "capture needs protocol version {CAPTURE_PROTOCOL_VERSION}, not {}",
                hello.version
            );
            self.reject(RejectReason::UnsupportedVersion, message, out);
            return;
        }
        let name = sanitize(&hello.stream_name, MAX_STREAM_NAME);
        self.stream_name.clone_from(&name);
        self.spec = Some(hello.spec.clone());
        self.capture_latency_usec = u64::from(hello.target_latency_usec).max(1);
        self.state = State::Opening {
            deadline_usec: now_usec.saturating_add(OPEN_TIMEOUT_USEC),
        };
        out.push(Action::AdmitCapture { spec: hello.spec });
    }

    fn opening(&mut self, now_usec: u64, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::CaptureAdmitted {
                permitted,
                quantum_usec,
            } if self.capture_latency_usec > 0 && self.capture.is_none() => {
                let Some(spec) = self.spec.clone() else {
                    return;
                };
                let mut capture = Capture::new(
                    spec,
                    self.stream_name.clone(),
                    self.capture_latency_usec,
                    permitted,
                    quantum_usec,
                );
                self.state = State::Capturing;
                out.push(Action::Send(HostMessage::Accept(Accept {
                    version: CAPTURE_PROTOCOL_VERSION,
                    buffer_bytes: capture.fragment_bytes(),
                    host_time_usec: now_usec,
                })));
                capture.start(now_usec, out);
                self.capture = Some(capture);
            }
            Event::StreamOpened { .. } if self.capture_latency_usec > 0 => {}
            Event::StreamOpened { buffer_bytes } => {
                self.tlength_bytes = buffer_bytes;
                self.state = State::Streaming;
                out.push(Action::Send(HostMessage::Accept(Accept {
                    version: self.version,
                    buffer_bytes,
                    host_time_usec: now_usec,
                })));
            }
            Event::OpenRefused { reason, message } => self.reject(reason, message, out),
            Event::StreamFailed { reason } => {
                self.reject(
                    RejectReason::ServerError,
                    format!("could not open the host stream: {reason}"),
                    out,
                );
            }
            Event::Message(GuestMessage::Ping { guest_time_usec }) => {
                out.push(pong(guest_time_usec, now_usec));
            }
            Event::Message(GuestMessage::Goodbye { reason }) => {
                let reason = sanitize(&reason, MAX_REASON_LEN);
                self.close(&format!("guest said goodbye: {reason}"), false, out);
            }
            Event::Message(other) => {
                let message = format!("{} before Accept", message_name(&other));
                self.reject(RejectReason::BadRequest, message, out);
            }
            Event::ProtocolError(error) => {
                self.reject(RejectReason::BadRequest, error, out);
            }
            Event::Tick => {
                if let State::Opening { deadline_usec } = self.state {
                    if now_usec >= deadline_usec {
                        let message = "timed out opening the host stream".to_owned();
                        self.reject(RejectReason::ServerError, message, out);
                    }
                }
            }
            Event::Status(_)
            | Event::Shutdown
            | Event::CaptureAdmitted { .. }
            | Event::CapturePermission(_)
            | Event::Captured(_) => {}
        }
    }

    fn capturing(&mut self, now_usec: u64, event: Event, out: &mut Vec<Action>) {
        let Some(capture) = self.capture.as_mut() else {
            return;
        };
        let violation = match event {
            Event::Message(GuestMessage::Uncork) => {
                capture.ask(now_usec, true, out);
                None
            }
            Event::Message(GuestMessage::Cork) => {
                capture.ask(now_usec, false, out);
                None
            }
            Event::Message(GuestMessage::CaptureCredit { limit_bytes }) => {
                capture.credit(limit_bytes, out).err()
            }
            Event::Message(GuestMessage::SetLatency {
                target_latency_usec,
            }) => {
                capture.set_latency(u64::from(target_latency_usec));
                None
            }
            Event::Message(GuestMessage::Ping { guest_time_usec }) => {
                out.push(pong(guest_time_usec, now_usec));
                None
            }
            Event::Message(GuestMessage::Goodbye { reason }) => {
                capture.close(out);
                let reason = sanitize(&reason, MAX_REASON_LEN);
                self.close(&format!("guest said goodbye: {reason}"), false, out);
                return;
            }
            Event::Message(other) => {
                Some(format!("{} on a capture connection", message_name(&other)))
            }
            Event::ProtocolError(error) => Some(error),
            Event::StreamOpened { .. } => {
                capture.opened(now_usec, out);
                None
            }
            Event::StreamFailed { .. } | Event::OpenRefused { .. } => {
                capture.failed(now_usec, out);
                None
            }
            Event::CapturePermission(permitted) => {
                capture.permit(now_usec, permitted, out);
                None
            }
            Event::Captured(captured) => {
                capture.captured(captured, out);
                None
            }
            Event::Tick | Event::Status(_) => {
                capture.tick(now_usec, out);
                None
            }
            Event::CaptureAdmitted { .. } => None,
            Event::Shutdown => {
                capture.close(out);
                self.goodbye("host-playd is shutting down", false, out);
                return;
            }
        };
        if let Some(reason) = violation {
            capture.close(out);
            self.goodbye(&reason, true, out);
        }
    }

    fn streaming(&mut self, now_usec: u64, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::Message(message) => self.guest_message(now_usec, message, out),
            Event::ProtocolError(error) => self.goodbye(&error, true, out),
            Event::StreamFailed { reason } => {
                self.goodbye(&format!("host stream failed: {reason}"), false, out);
            }
            Event::Status(status) => self.status(status, out),
            Event::StreamOpened { .. } | Event::OpenRefused { .. } => {}
            Event::Tick | Event::Shutdown => {}
            Event::CaptureAdmitted { .. } | Event::CapturePermission(_) | Event::Captured(_) => {}
        }
    }

    fn guest_message(&mut self, now_usec: u64, message: GuestMessage, out: &mut Vec<Action>) {
        match message {
            GuestMessage::Hello(_) | GuestMessage::CaptureHello(_) => {
                self.goodbye("second Hello", true, out);
            }
            GuestMessage::CaptureCredit { .. } => {
                self.goodbye("CaptureCredit on a playback connection", true, out);
            }
            GuestMessage::Audio(data) => self.audio(data, out),
            GuestMessage::Cork => {
                self.clock_dirty = true;
                out.push(Action::Cork(true));
            }
            GuestMessage::Uncork => {
                self.clock_dirty = true;
                out.push(Action::Cork(false));
            }
            GuestMessage::Flush => {
                // Dropped audio counts as played: the guest's latency
                // arithmetic must not wait for bytes that will never sound.
                self.played_bytes = self.received_bytes;
                self.clock_dirty = true;
                out.push(Action::Flush);
            }
            GuestMessage::SetLatency {
                target_latency_usec,
            } => {
                let Some(spec) = &self.spec else { return };
                let tlength = spec
                    .usec_to_bytes(u64::from(target_latency_usec))
                    .max(u64::from(spec.frame_size()));
                match u32::try_from(tlength) {
                    Ok(tlength_bytes) => {
                        self.tlength_bytes = tlength_bytes;
                        out.push(Action::SetBuffer { tlength_bytes });
                    }
                    Err(_) => self.goodbye(
                        &format!("a buffer of {tlength} bytes is too large"),
                        true,
                        out,
                    ),
                }
            }
            GuestMessage::Ping { guest_time_usec } => out.push(pong(guest_time_usec, now_usec)),
            GuestMessage::Goodbye { reason } => {
                let reason = sanitize(&reason, MAX_REASON_LEN);
                self.close(&format!("guest said goodbye: {reason}"), false, out);
            }
            GuestMessage::Rewind { bytes } => self.rewind(bytes, out),
        }
    }

    /// Protocol 3's `Rewind`: the byte positions go back by `bytes` on both
    /// sides, so credit needs no message (the guest refunds its own ledger
    /// the same way). A guest may withdraw at most what it sent. Whether
    /// the host has played part of that is not a fault: the guest cannot
    /// know the host's position to the byte, so what was played is not
    /// undone (the audio that replaces it lands in the past and is
    /// skipped) and the played position does not go back beyond it.
    fn rewind(&mut self, bytes: u64, out: &mut Vec<Action>) {
        let frame = self.frame_size();
        let fault = if self.version != REWIND_PROTOCOL_VERSION {
            Some(format!(
                "Rewind needs protocol version {REWIND_PROTOCOL_VERSION}, this stream speaks {}",
                self.version
            ))
        } else if bytes % frame != 0 {
            Some(format!(
                "a rewind of {bytes} bytes is not whole {frame}-byte frames"
            ))
        } else if bytes > self.received_bytes {
            Some(format!(
                "a rewind of {bytes} bytes is more than the {} received",
                self.received_bytes
            ))
        } else {
            None
        };
        if let Some(reason) = fault {
            self.goodbye(&reason, true, out);
            return;
        }
        if bytes == 0 {
            return;
        }
        self.received_bytes -= bytes;
        self.played_bytes = self.played_bytes.min(self.received_bytes);
        self.clock_dirty = true;
        out.push(Action::Rewind { bytes });
    }

    fn audio(&mut self, data: Vec<u8>, out: &mut Vec<Action>) {
        let frame = self.frame_size();
        let len = data.len() as u64;
        if len % frame != 0 {
            let reason = format!("audio chunk of {len} bytes is not whole {frame}-byte frames");
            self.goodbye(&reason, true, out);
            return;
        }
        match self.received_bytes.checked_add(len) {
            Some(total) if total <= self.granted_bytes => {
                self.received_bytes = total;
                out.push(Action::Write(data));
            }
            _ => {
                let reason = format!(
                    "credit breach: {len} more bytes after {} exceeds the limit of {}",
                    self.received_bytes, self.granted_bytes
                );
                self.goodbye(&reason, true, out);
            }
        }
    }

    fn status(&mut self, status: StreamStatus, out: &mut Vec<Action>) {
        let frame = self.frame_size();
        // Credit: what the guest already sent plus what the stream takes now,
        // never more than one buffer ahead, never shrinking.
        let writable = status.writable_bytes.min(u64::from(self.tlength_bytes));
        let writable = writable - writable % frame;
        let limit = self.received_bytes.saturating_add(writable);
        let threshold = (u64::from(self.tlength_bytes) / 4 / frame * frame).max(frame);
        if limit >= self.granted_bytes.saturating_add(threshold) {
            self.granted_bytes = limit;
            out.push(Action::Send(HostMessage::Credit { limit_bytes: limit }));
        }

        let played = status.played_bytes.min(self.received_bytes);
        self.played_bytes = self.played_bytes.max(played);

        let interval = if status.playing {
            CLOCK_INTERVAL_PLAYING_USEC
        } else {
            CLOCK_INTERVAL_IDLE_USEC
        };
        let due = match self.last_clock_usec {
            None => true,
            Some(last) => status.host_time_usec.saturating_sub(last) + CLOCK_SLACK_USEC >= interval,
        };
        if due || self.clock_dirty || status.playing != self.last_playing {
            self.last_clock_usec = Some(status.host_time_usec);
            self.last_playing = status.playing;
            self.clock_dirty = false;
            let (host_time_usec, device_latency_usec) = round_report(
                self.report_quantum_usec,
                status.host_time_usec,
                status.device_latency_usec,
            );
            out.push(Action::Send(HostMessage::Clock(ClockReport {
                host_time_usec,
                received_bytes: self.received_bytes,
                played_bytes: self.played_bytes,
                device_latency_usec,
                underruns: status.underruns,
                playing: status.playing,
            })));
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::AwaitHello { .. } | State::Opening { .. } => self.reject(
                RejectReason::ServerError,
                "host-playd is shutting down".to_owned(),
                out,
            ),
            State::Streaming => self.goodbye("host-playd is shutting down", false, out),
            State::Capturing => self.capturing(0, Event::Shutdown, out),
            State::Closed => {}
        }
    }

    fn frame_size(&self) -> u64 {
        self.spec
            .as_ref()
            .map_or(1, |spec| u64::from(spec.frame_size()).max(1))
    }

    fn reject(&mut self, reason: RejectReason, message: String, out: &mut Vec<Action>) {
        let peer_fault = !matches!(
            reason,
            RejectReason::ServerError | RejectReason::TooManyClients
        );
        let log = format!("rejected ({reason:?}): {message}");
        out.push(Action::Send(HostMessage::Reject {
            reason,
            message: bounded_text(&message),
        }));
        self.close(&log, peer_fault, out);
    }

    fn goodbye(&mut self, reason: &str, peer_fault: bool, out: &mut Vec<Action>) {
        out.push(Action::Send(HostMessage::Goodbye {
            reason: bounded_text(reason),
        }));
        self.close(reason, peer_fault, out);
    }

    fn close(&mut self, reason: &str, peer_fault: bool, out: &mut Vec<Action>) {
        self.state = State::Closed;
        out.push(Action::Close {
            reason: reason.to_owned(),
            peer_fault,
        });
    }
}

fn pong(guest_time_usec: u64, now_usec: u64) -> Action {
    Action::Send(HostMessage::Pong {
        guest_time_usec,
        host_time_usec: now_usec,
    })
}

/// The variant name of a guest message, for log and reject texts (never the
/// payload, which the peer controls).
pub fn message_name(message: &GuestMessage) -> &'static str {
    match message {
        GuestMessage::Hello(_) => "Hello",
        GuestMessage::Audio(_) => "Audio",
        GuestMessage::Cork => "Cork",
        GuestMessage::Uncork => "Uncork",
        GuestMessage::Flush => "Flush",
        GuestMessage::SetLatency { .. } => "SetLatency",
        GuestMessage::Ping { .. } => "Ping",
        GuestMessage::Goodbye { .. } => "Goodbye",
        GuestMessage::CaptureHello(_) => "CaptureHello",
        GuestMessage::CaptureCredit { .. } => "CaptureCredit",
        GuestMessage::Rewind { .. } => "Rewind",
    }
}

/// `text` made fit for a reject or goodbye: hostile characters replaced
/// (see [`crate::text`]) and cut at a character boundary to
/// [`MAX_REASON_LEN`] bytes.
pub fn bounded_text(text: &str) -> String {
    sanitize(text, MAX_REASON_LEN)
}

/// Privacy (policy `report_quantum_ms`): a report's host time rounded down
/// to a multiple of `quantum_usec`, and its latency to the multiple that
/// puts time plus latency (when the reported byte is heard, or was
/// recorded) nearest to the truth. A guest so learns the host's sound-card
/// state (its latency, when it ran dry) only to a quantum, and what it
/// derives moves by at most half a quantum. Over many reports the guest's
/// estimator still averages out the card's long-term rate: that is not
/// hidden (docs/threat-model.md).
pub fn round_report(quantum_usec: u64, host_time_usec: u64, latency_usec: u32) -> (u64, u32) {
    let q = quantum_usec;
    if q == 0 {
        return (host_time_usec, latency_usec);
    }
    let time = host_time_usec / q * q;
    let head = host_time_usec.saturating_add(u64::from(latency_usec));
    let latency = (head - time).saturating_add(q / 2) / q * q;
    (time, u32::try_from(latency).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests;

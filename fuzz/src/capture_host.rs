//! [`capture_host_session`]: host-playd's per-connection state machine as a
//! capture connection (protocol version 2), driven by an arbitrary sequence
//! of guest messages (capture ones and every playback one, in any order),
//! policy answers, live grants and revokes, recording-stream events, audio
//! and clock steps. It checks what a hostile guest must never get: a
//! recording stream while it is not both asking and permitted, audio beyond
//! its credit, or a recording stream left open after the session ends.

use arbitrary::{Result as ArbResult, Unstructured};
use host_playd::backend::Captured;
use host_playd::session::{Action, Event, Session};
use secure_tunnel_protocol::{
    encode_frame, GuestMessage, HostMessage, CAPTURE_PROTOCOL_VERSION, MAX_AUDIO_CHUNK,
};

use super::{arb_guest_message, arb_hello, arb_reject, arb_text};

/// Drives one capture [`Session`] through an arbitrary sequence of events.
pub fn capture_host_session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = drive(&mut u);
}

fn arb_capture_hello(u: &mut Unstructured<'_>) -> ArbResult<GuestMessage> {
    Ok(GuestMessage::CaptureHello(arb_hello(
        u,
        CAPTURE_PROTOCOL_VERSION,
        2_000_000,
    )?))
}

fn arb_message(u: &mut Unstructured<'_>, frame: u64, credit: &mut u64) -> ArbResult<GuestMessage> {
    Ok(match u.int_in_range(0..=9)? {
        0..=2 => {
            // Mostly growing whole-frame credit, sometimes anything.
            let limit = if u.ratio(7, 8)? {
                *credit = credit.saturating_add(frame * u.int_in_range(0..=4096)?);
                *credit
            } else {
                u.arbitrary()?
            };
            GuestMessage::CaptureCredit { limit_bytes: limit }
        }
        3..=4 => GuestMessage::Uncork,
        5 => GuestMessage::Cork,
        6 => arb_capture_hello(u)?,
        _ => arb_guest_message(u, usize::try_from(frame).unwrap_or(1))?,
    })
}

fn arb_event(
    u: &mut Unstructured<'_>,
    frame: u64,
    credit: &mut u64,
    host_time: &mut u64,
) -> ArbResult<Event> {
    Ok(match u.int_in_range(0..=13)? {
        0..=4 => {
            let msg = arb_message(u, frame, credit)?;
            match msg.validate() {
                Ok(()) => Event::Message(msg),
                Err(e) => Event::ProtocolError(e.to_string()),
            }
        }
        5 => Event::CaptureAdmitted {
            permitted: u.arbitrary()?,
            quantum_usec: if u.arbitrary()? {
                0
            } else {
                u.int_in_range(0..=1_000_000)?
            },
        },
        6 => Event::CapturePermission(u.arbitrary()?),
        7 => Event::StreamOpened {
            buffer_bytes: u.arbitrary()?,
        },
        8 => {
            if u.arbitrary()? {
                Event::StreamFailed {
                    reason: arb_text(u)?,
                }
            } else {
                Event::OpenRefused {
                    reason: arb_reject(u)?,
                    message: arb_text(u)?,
                }
            }
        }
        9..=11 => {
            *host_time = host_time.saturating_add(u.int_in_range(0..=100_000)?);
            // The player only delivers whole frames, at most a chunk.
            let len = if u.ratio(7, 8)? {
                frame * u.int_in_range(0..=4096)?
            } else {
                u.int_in_range(0..=MAX_AUDIO_CHUNK as u64)?
            };
            let len = usize::try_from(len.min(MAX_AUDIO_CHUNK as u64)).unwrap_or(0);
            let len =
                len / usize::try_from(frame).unwrap_or(1) * usize::try_from(frame).unwrap_or(1);
            Event::Captured(Captured {
                host_time_usec: *host_time,
                delay_usec: u.arbitrary()?,
                data: vec![0x3c; len],
            })
        }
        12 => Event::Tick,
        _ => Event::Shutdown,
    })
}

/// What the guest asked, what policy said, and what the session did.
#[derive(Debug, Default)]
struct Ledger {
    accepted: bool,
    closed: bool,
    wants: bool,
    /// The latest policy word: CaptureAdmitted, then grants and revokes.
    permitted: bool,
    recording: bool,
    opens: u64,
    closes: u64,
    /// The highest whole-frame credit the guest sent.
    credit: u64,
    sent: u64,
    frame: u64,
}

impl Ledger {
    fn before(&mut self, event: &Event) {
        match event {
            Event::Message(GuestMessage::Uncork) => self.wants = true,
            Event::Message(GuestMessage::Cork) => self.wants = false,
            Event::Message(GuestMessage::CaptureCredit { limit_bytes })
                if limit_bytes % self.frame.max(1) == 0 =>
            {
                self.credit = self.credit.max(*limit_bytes);
            }
            Event::CaptureAdmitted { permitted, .. } if !self.accepted => {
                self.permitted = *permitted;
            }
            Event::CapturePermission(p) if self.accepted => self.permitted = *p,
            // A failed recording stream is gone without a CloseCapture.
            Event::StreamFailed { .. } | Event::OpenRefused { .. } if self.recording => {
                self.recording = false;
                self.closes += 1;
            }
            _ => {}
        }
    }

    fn check(&mut self, session: &Session, actions: &[Action]) {
        for (i, action) in actions.iter().enumerate() {
            assert!(!self.closed, "action {action:?} after Close");
            match action {
                Action::Send(msg) => self.sent(msg),
                Action::AdmitCapture { spec } => {
                    spec.validate().expect("AdmitCapture with a valid spec");
                    self.frame = u64::from(spec.frame_size());
                }
                Action::OpenCapture(params) => {
                    assert!(self.accepted, "recording before Accept");
                    assert!(!self.recording, "a second OpenCapture");
                    assert!(
                        self.wants && self.permitted,
                        "recording unasked or unpermitted"
                    );
                    assert!(params.fragment_bytes > 0);
                    assert_eq!(u64::from(params.fragment_bytes) % self.frame, 0);
                    self.recording = true;
                    self.opens += 1;
                }
                Action::CloseCapture => {
                    assert!(self.recording, "CloseCapture without a stream");
                    self.recording = false;
                    self.closes += 1;
                }
                Action::Close { .. } => {
                    assert_eq!(i + 1, actions.len(), "actions after Close");
                    self.closed = true;
                }
                other => panic!("{other:?} on a capture connection"),
            }
        }
        if self.accepted && !(self.wants && self.permitted) {
            assert!(!self.recording, "recording after Cork or revoke");
        }
        if self.closed {
            assert!(session.is_closed());
            assert!(!self.recording, "the recording stream outlived the session");
            assert_eq!(self.opens, self.closes);
        }
        if let Some(c) = session.capture() {
            assert_eq!(c.recording(), self.recording, "recording state disagrees");
            assert_eq!(c.sent_bytes(), self.sent);
        }
    }

    fn sent(&mut self, msg: &HostMessage) {
        msg.validate().expect("the host only sends valid messages");
        let mut frame = Vec::new();
        encode_frame(msg, &mut frame).expect("the host only sends encodable messages");
        match msg {
            HostMessage::Accept(a) => {
                assert!(!self.accepted, "a second Accept");
                assert_eq!(a.version, CAPTURE_PROTOCOL_VERSION);
                self.accepted = true;
            }
            HostMessage::Reject { .. } => assert!(!self.accepted, "Reject after Accept"),
            HostMessage::CaptureData(data) => {
                assert!(self.recording, "capture data with no recording stream");
                assert_eq!(data.len() as u64 % self.frame, 0, "partial frames sent");
                self.sent += data.len() as u64;
                assert!(
                    self.sent <= self.credit,
                    "sent {} beyond credit {}",
                    self.sent,
                    self.credit
                );
            }
            HostMessage::CaptureClock(report) => {
                assert!(self.accepted, "capture clock before Accept");
                assert_eq!(report.sent_bytes, self.sent, "sent_bytes disagrees");
            }
            HostMessage::CaptureState { .. } | HostMessage::Goodbye { .. } => {
                assert!(self.accepted, "{msg:?} before Accept");
            }
            HostMessage::Pong { .. } => {}
            HostMessage::Credit { .. } | HostMessage::Clock(_) => {
                panic!("a playback message on a capture connection")
            }
        }
    }
}

fn drive(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let mut now: u64 = u.int_in_range(0..=u64::MAX / 2)?;
    let timeout = u.int_in_range(1_000..=10_000_000)?;
    let mut session = Session::new(now, timeout, "fuzz");
    let mut ledger = Ledger {
        frame: 1,
        ..Ledger::default()
    };
    let mut host_time = now;
    let mut credit = 0;
    let mut out = Vec::new();
    // A capture connection is one whose first message is a CaptureHello
    // (valid or not); any other first message makes it a playback
    // connection, which `host_session` covers.
    {
        let hello = arb_capture_hello(u)?;
        let event = match hello.validate() {
            Ok(()) => Event::Message(hello),
            Err(e) => Event::ProtocolError(e.to_string()),
        };
        ledger.before(&event);
        session.handle(now, event, &mut out);
        ledger.check(&session, &out);
    }
    for _ in 0..u.int_in_range(1..=300)? {
        if u.is_empty() {
            break;
        }
        now = now.saturating_add(u.int_in_range(0..=500_000)?);
        let event = arb_event(u, ledger.frame.max(1), &mut credit, &mut host_time)?;
        ledger.before(&event);
        out.clear();
        session.handle(now, event, &mut out);
        ledger.check(&session, &out);
    }
    Ok(())
}

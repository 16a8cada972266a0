//! The fuzz harnesses, shared by the cargo-fuzz targets in `fuzz_targets/`
//! and by the corpus regression test (`tests/tests/fuzz_corpus.rs` includes
//! this file), so CI replays the corpus through exactly the code the fuzzer
//! ran.
//!
//! Each harness takes arbitrary bytes, drives one component, and panics only
//! when an invariant of that component is broken (a panic inside the
//! component itself is of course also a finding).
//!
//! - [`frame_reader`]: the incremental decoder fed arbitrary chunks, checked
//!   against the blocking decoder on the same stream;
//! - [`message_decode`]: both message types decoded from arbitrary payloads
//!   and frames; what decodes must validate and re-encode to the same bytes;
//! - [`host_session`]: host-playd's per-connection state machine driven by an
//!   arbitrary sequence of guest messages, backend events and clock steps;
//! - [`module_engine`]: the guest module's IO-thread engine attached to a
//!   fake host (the other end of a unix socket pair) that sends it arbitrary
//!   bytes and messages while time and rendering advance arbitrarily;
//! - [`capture_host_session`]: the same host state machine as a capture
//!   connection (protocol version 2), see `capture_host.rs`.

use std::io::{Cursor, Read, Write};

use arbitrary::{Result as ArbResult, Unstructured};
use host_playd::backend::{StreamParams, StreamStatus};
use host_playd::session::{Action, Event, Session};
use secure_tunnel_protocol::{
    encode_frame, read_frame, Accept, ClockReport, FrameReader, GuestMessage, Hello, HostMessage,
    ProtocolError, RejectReason, SampleFormat, StreamSpec, WireMessage, MAGIC, MAX_AUDIO_CHUNK,
    MAX_FRAME_LEN, PROTOCOL_VERSION, REWIND_PROTOCOL_VERSION,
};

mod capture_guest;
mod capture_host;
pub use capture_guest::capture_guest;
pub use capture_host::capture_host_session;

// ---------------------------------------------------------------------------
// frame decoder

/// Splits `data` into a chunking script (first byte: seed of chunk sizes) and
/// a byte stream, feeds the stream to a [`FrameReader`] in those chunks, and
/// checks it yields exactly what [`read_frame`] yields on the same stream.
pub fn frame_reader(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    check_reader::<GuestMessage>(seed, stream);
    check_reader::<HostMessage>(seed, stream);
}

fn check_reader<M: WireMessage + PartialEq + std::fmt::Debug>(seed: u8, stream: &[u8]) {
    // Reference: the blocking decoder.
    let mut cursor = Cursor::new(stream);
    let mut expected = Vec::new();
    let expected_end = loop {
        match read_frame::<M, _>(&mut cursor) {
            Ok(m) => expected.push(m),
            Err(e) => break e,
        }
    };

    let mut reader = FrameReader::new();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut step = 0usize;
    let mut error = None;
    'feed: while pos < stream.len() {
        // Chunk sizes 1..=256 from a tiny LCG, or "what the reader wants".
        step = step.wrapping_mul(31).wrapping_add(usize::from(seed) + 7);
        let wanted = reader.wanted();
        assert!(wanted >= 1, "FrameReader::wanted() returned 0");
        let len = if seed & 1 == 0 {
            wanted
        } else {
            step % 256 + 1
        };
        let end = (pos + len).min(stream.len());
        reader.feed(&stream[pos..end]);
        pos = end;
        loop {
            match reader.next_message::<M>() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
        // Drained: at most one incomplete frame is held.
        assert!(
            reader.pending() < 4 + MAX_FRAME_LEN as usize,
            "FrameReader holds {} bytes after draining",
            reader.pending()
        );
    }
    assert_eq!(
        got, expected,
        "FrameReader and read_frame disagree on the same stream"
    );
    match (error, expected_end) {
        // The stream ended cleanly or inside a frame: both agree on the
        // messages, and the reader holds the rest.
        (None, ProtocolError::Closed | ProtocolError::Truncated) => {}
        (Some(a), b) => assert_eq!(
            std::mem::discriminant(&a),
            std::mem::discriminant(&b),
            "different errors: FrameReader {a:?}, read_frame {b:?}"
        ),
        (None, b) => panic!("read_frame failed with {b:?} but FrameReader did not"),
    }
}

// ---------------------------------------------------------------------------
// message decoder

/// Decodes `data` three ways: as a sequence of frames, and as one payload of
/// each message type. Whatever decodes must validate, and re-encode to the
/// very bytes it came from (the encoding is canonical).
pub fn message_decode(data: &[u8]) {
    stream_roundtrip::<GuestMessage>(data);
    stream_roundtrip::<HostMessage>(data);
    if let Ok(len) = u32::try_from(data.len()) {
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(data);
        stream_roundtrip::<GuestMessage>(&frame);
        stream_roundtrip::<HostMessage>(&frame);
    }
}

fn stream_roundtrip<M: WireMessage + PartialEq + std::fmt::Debug>(stream: &[u8]) {
    let mut cursor = Cursor::new(stream);
    loop {
        let start = cursor.position() as usize;
        let Ok(msg) = read_frame::<M, _>(&mut cursor) else {
            return;
        };
        let end = cursor.position() as usize;
        msg.validate().expect("a decoded message validates");
        let mut again = Vec::new();
        encode_frame(&msg, &mut again).expect("a decoded message encodes");
        assert_eq!(
            again,
            stream[start..end],
            "{msg:?} re-encodes differently from the bytes it was decoded from"
        );
    }
}

// ---------------------------------------------------------------------------
// host session

fn arb_spec(u: &mut Unstructured<'_>) -> ArbResult<StreamSpec> {
    let format = *u.choose(&[
        SampleFormat::S16Le,
        SampleFormat::S32Le,
        SampleFormat::F32Le,
    ])?;
    let rate = if u.ratio(3, 4)? {
        *u.choose(&[8_000, 44_100, 48_000, 96_000, 192_000])?
    } else {
        u.arbitrary()?
    };
    let channels = u.int_in_range(0..=9)?;
    let channel_map = (0..channels)
        .map(|i| {
            if u.ratio(7, 8)? {
                Ok(i + 1)
            } else {
                u.arbitrary()
            }
        })
        .collect::<ArbResult<Vec<u8>>>()?;
    Ok(StreamSpec {
        format,
        rate,
        channel_map,
    })
}

fn arb_text(u: &mut Unstructured<'_>) -> ArbResult<String> {
    let len = u.int_in_range(0..=300)?;
    let bytes = u.bytes(len.min(u.len()))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// A Hello that is mostly right: `version` and a latency up to
/// `max_latency_usec` most of the time, anything sometimes. Shared by the
/// playback and the capture harnesses.
fn arb_hello(u: &mut Unstructured<'_>, version: u16, max_latency_usec: u32) -> ArbResult<Hello> {
    Ok(Hello {
        magic: if u.ratio(15, 16)? {
            MAGIC
        } else {
            u.arbitrary()?
        },
        version: if u.ratio(7, 8)? {
            version
        } else {
            u.arbitrary()?
        },
        spec: arb_spec(u)?,
        target_latency_usec: if u.ratio(3, 4)? {
            u.int_in_range(1_000..=max_latency_usec)?
        } else {
            u.arbitrary()?
        },
        stream_name: arb_text(u)?,
    })
}

fn arb_guest_message(u: &mut Unstructured<'_>, frame: usize) -> ArbResult<GuestMessage> {
    Ok(match u.int_in_range(0..=9)? {
        0 => {
            // Both playback versions (3 adds Rewind).
            let version = if u.arbitrary()? {
                REWIND_PROTOCOL_VERSION
            } else {
                PROTOCOL_VERSION
            };
            GuestMessage::Hello(arb_hello(u, version, 10_000_000)?)
        }
        9 => GuestMessage::Rewind {
            // Mostly whole frames of a plausible size, sometimes anything.
            bytes: if u.ratio(7, 8)? {
                (frame.max(1) * u.int_in_range(0..=4096)?) as u64
            } else {
                u.arbitrary()?
            },
        },
        1..=3 => {
            // Mostly whole frames of a plausible size, sometimes anything.
            let len = if u.ratio(7, 8)? {
                frame.max(1) * u.int_in_range(0..=2048)?
            } else {
                u.int_in_range(0..=MAX_AUDIO_CHUNK + 1)?
            };
            GuestMessage::Audio(vec![0x5a; len.min(MAX_AUDIO_CHUNK + 1)])
        }
        4 => GuestMessage::Cork,
        5 => GuestMessage::Uncork,
        6 => GuestMessage::Flush,
        7 => GuestMessage::SetLatency {
            target_latency_usec: u.arbitrary()?,
        },
        _ => {
            if u.arbitrary()? {
                GuestMessage::Ping {
                    guest_time_usec: u.arbitrary()?,
                }
            } else {
                GuestMessage::Goodbye {
                    reason: arb_text(u)?,
                }
            }
        }
    })
}

fn arb_reject(u: &mut Unstructured<'_>) -> ArbResult<RejectReason> {
    u.choose(&[
        RejectReason::UnsupportedVersion,
        RejectReason::UnsupportedFormat,
        RejectReason::NotAllowed,
        RejectReason::TooManyClients,
        RejectReason::BadRequest,
        RejectReason::ServerError,
    ])
    .copied()
}

/// What the engine would feed a session, plus the clock step before it.
fn arb_event(
    u: &mut Unstructured<'_>,
    frame: usize,
    host_time: &mut u64,
    played: &mut u64,
) -> ArbResult<Event> {
    Ok(match u.int_in_range(0..=11)? {
        0..=3 => {
            // The reader thread only passes on messages that validate; the
            // others become protocol errors.
            let msg = arb_guest_message(u, frame)?;
            match msg.validate() {
                Ok(()) => Event::Message(msg),
                Err(e) => Event::ProtocolError(e.to_string()),
            }
        }
        4 => Event::ProtocolError(arb_text(u)?),
        5 => Event::StreamOpened {
            buffer_bytes: if u.arbitrary()? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=1 << 20)?
            },
        },
        6 => Event::OpenRefused {
            reason: arb_reject(u)?,
            message: arb_text(u)?,
        },
        7 => Event::StreamFailed {
            reason: arb_text(u)?,
        },
        8..=9 => {
            *host_time = host_time.saturating_add(u.int_in_range(0..=100_000)?);
            *played = played.saturating_add(u.int_in_range(0..=1 << 16)?);
            Event::Status(StreamStatus {
                host_time_usec: *host_time,
                writable_bytes: if u.ratio(7, 8)? {
                    u.int_in_range(0..=1 << 20)?
                } else {
                    u.arbitrary()?
                },
                played_bytes: if u.ratio(7, 8)? {
                    *played
                } else {
                    u.arbitrary()?
                },
                device_latency_usec: u.arbitrary()?,
                underruns: u.arbitrary()?,
                playing: u.arbitrary()?,
            })
        }
        10 => Event::Tick,
        _ => Event::Shutdown,
    })
}

/// What a host session has promised so far, checked after every event.
#[derive(Debug, Default)]
struct SessionLedger {
    accepted: bool,
    opened: bool,
    closed: bool,
    sent_any: bool,
    last_credit: u64,
    last_played: u64,
    written: u64,
    /// The least `written` stood at since the last clock report (rewinds
    /// take it back): how far a report's `played_bytes` may go back.
    written_low: Option<u64>,
    frame: u64,
}

impl SessionLedger {
    fn check(&mut self, session: &Session, actions: &[Action]) {
        for (i, action) in actions.iter().enumerate() {
            assert!(!self.closed, "action {action:?} after Close");
            match action {
                Action::Send(msg) => self.sent(msg),
                Action::OpenStream(StreamParams {
                    spec,
                    tlength_bytes,
                    ..
                }) => {
                    assert!(!self.opened, "a second OpenStream");
                    spec.validate().expect("OpenStream with a valid spec");
                    assert!(*tlength_bytes > 0, "OpenStream with an empty buffer");
                    self.opened = true;
                    self.frame = u64::from(spec.frame_size());
                }
                Action::Write(data) => {
                    assert!(self.accepted, "audio written before Accept");
                    assert_eq!(data.len() as u64 % self.frame, 0, "partial frame written");
                    self.written += data.len() as u64;
                }
                Action::Cork(_) | Action::Flush | Action::SetBuffer { .. } => {
                    assert!(self.accepted, "{action:?} before Accept");
                }
                Action::Rewind { bytes } => {
                    assert!(self.accepted, "{action:?} before Accept");
                    assert_eq!(bytes % self.frame, 0, "partial frame rewound");
                    assert!(*bytes > 0, "empty rewind passed on");
                    assert!(*bytes <= self.written, "rewound more than written");
                    self.written -= bytes;
                    let low = self
                        .written_low
                        .map_or(self.written, |w| w.min(self.written));
                    self.written_low = Some(low);
                }
                Action::Close { .. } => {
                    assert_eq!(i + 1, actions.len(), "actions after Close");
                    self.closed = true;
                }
                Action::AdmitCapture { .. } | Action::OpenCapture(_) | Action::CloseCapture => {
                    panic!("{action:?} on a playback session")
                }
            }
        }
        assert_eq!(
            self.closed,
            session.is_closed(),
            "Close and is_closed disagree"
        );
        assert_eq!(
            self.written,
            session.received_bytes(),
            "written != received"
        );
        assert!(
            session.received_bytes() <= session.granted_bytes(),
            "received {} beyond the credit {}",
            session.received_bytes(),
            session.granted_bytes()
        );
    }

    fn sent(&mut self, msg: &HostMessage) {
        msg.validate().expect("the host only sends valid messages");
        let mut frame = Vec::new();
        encode_frame(msg, &mut frame).expect("the host only sends encodable messages");
        let first = !self.sent_any;
        if !matches!(msg, HostMessage::Pong { .. }) {
            self.sent_any = true;
        }
        match msg {
            HostMessage::Accept(_) => {
                assert!(first, "Accept after another non-Pong message");
                assert!(self.opened, "Accept without OpenStream");
                self.accepted = true;
            }
            HostMessage::Reject { .. } => assert!(!self.accepted, "Reject after Accept"),
            // A Ping while the stream opens is answered at once (deliberate,
            // see the session's tests), so a Pong may precede Accept.
            HostMessage::Pong { .. } => {}
            HostMessage::Credit { limit_bytes } => {
                assert!(self.accepted, "Credit before Accept");
                assert!(*limit_bytes >= self.last_credit, "credit shrank");
                assert_eq!(limit_bytes % self.frame, 0, "credit of partial frames");
                self.last_credit = *limit_bytes;
            }
            HostMessage::Clock(report) => {
                assert!(self.accepted, "Clock before Accept");
                // Only a rewind into played audio takes it back, and then
                // no further than what is left received.
                assert!(
                    report.played_bytes
                        >= self.last_played.min(self.written_low.unwrap_or(u64::MAX)),
                    "played went back"
                );
                assert!(
                    report.played_bytes <= self.written,
                    "played beyond received"
                );
                assert!(report.received_bytes == self.written, "received mismatch");
                self.last_played = report.played_bytes;
                self.written_low = None;
            }
            HostMessage::Goodbye { .. } => assert!(self.accepted, "Goodbye before Accept"),
            HostMessage::CaptureData(_)
            | HostMessage::CaptureClock(_)
            | HostMessage::CaptureState { .. } => {
                panic!("a capture message on a playback session")
            }
        }
    }
}

/// Drives one [`Session`] through an arbitrary sequence of events.
pub fn host_session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = drive_session(&mut u);
}

fn drive_session(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let mut now: u64 = u.int_in_range(0..=u64::MAX / 2)?;
    let timeout = u.int_in_range(1_000..=10_000_000)?;
    let mut session = Session::new(now, timeout, "fuzz");
    let mut ledger = SessionLedger {
        frame: 1,
        ..SessionLedger::default()
    };
    let mut host_time = now;
    let mut played = 0;
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(1..=200)? {
        if u.is_empty() {
            break;
        }
        now = now.saturating_add(u.int_in_range(0..=2_000_000)?);
        let frame = usize::try_from(ledger.frame).unwrap_or(1);
        let event = arb_event(u, frame, &mut host_time, &mut played)?;
        out.clear();
        session.handle(now, event, &mut out);
        ledger.check(&session, &out);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// module engine

mod module {
    use std::cell::RefCell;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::Once;
    use std::time::{Duration, Instant};

    use secure_tunnel_guest::config::{RawArgs, TunnelConfig};
    use secure_tunnel_guest::engine::Engine;
    use secure_tunnel_guest::session::Activity;
    use secure_tunnel_guest::transport::Connection;

    use super::*;

    fn spec() -> StreamSpec {
        StreamSpec {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channel_map: vec![1, 2],
        }
    }

    fn engine_for(server: &str) -> Engine {
        let config = TunnelConfig::from_args(RawArgs {
            server: Some(server),
            reconnect_interval_msec: Some("100"),
            ..RawArgs::default()
        })
        .expect("a valid module configuration");
        Engine::new(config, spec())
    }

    fn accept_frame(version: u16) -> Vec<u8> {
        let mut accept = Vec::new();
        encode_frame(&HostMessage::Accept(accept_version(version)), &mut accept)
            .expect("encoding Accept");
        accept
    }

    fn accept_version(version: u16) -> Accept {
        Accept {
            version,
            buffer_bytes: 11_520,
            host_time_usec: 5_000_000,
        }
    }

    /// Once per process, the real way in: a listener, the engine's own
    /// connection attempt (helper thread, blocking handshake) and its Hello,
    /// which must validate. The Hello does not depend on the input, so the
    /// inputs themselves skip this and are handed a connected socket pair.
    fn check_real_handshake() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let dir = std::env::temp_dir().join(format!("st-fuzz-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating the fake host's directory");
            let path = dir.join("host.sock");
            let listener = UnixListener::bind(&path).expect("binding the fake host");
            let mut engine = engine_for(&format!("unix:{}", path.display()));
            let now = 1_000_000;
            engine.set_activity(Activity::Running, now);
            engine.poll_io(now);
            let (mut sock, _) = listener.accept().expect("accepting the engine");
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("setting a timeout");
            match read_frame::<GuestMessage, _>(&mut sock) {
                Ok(GuestMessage::Hello(h)) => {
                    h.validate().expect("the module's Hello validates");
                    assert_eq!(
                        h.version, REWIND_PROTOCOL_VERSION,
                        "the module offers rewinds"
                    );
                }
                other => panic!("the module opened with {other:?}"),
            }
            sock.write_all(&accept_frame(REWIND_PROTOCOL_VERSION))
                .expect("sending Accept");
            let deadline = Instant::now() + Duration::from_secs(5);
            while !engine.is_connected() {
                assert!(Instant::now() < deadline, "the engine did not connect");
                engine.poll_io(now);
                std::thread::yield_now();
            }
            engine.shutdown("handshake checked");
            let _ = std::fs::remove_dir_all(&dir);
        });
    }

    /// One step of the fake host or of the clock.
    fn arb_step(u: &mut Unstructured<'_>, host_now: &mut u64) -> ArbResult<Option<Vec<u8>>> {
        let msg = match u.int_in_range(0..=9)? {
            0 => {
                // Raw bytes straight onto the socket.
                let len = u.int_in_range(0..=64)?;
                return Ok(Some(u.bytes(len.min(u.len()))?.to_vec()));
            }
            1..=2 => HostMessage::Credit {
                limit_bytes: if u.ratio(3, 4)? {
                    u.int_in_range(0..=1 << 22)?
                } else {
                    u.arbitrary()?
                },
            },
            3..=4 => {
                *host_now = host_now.saturating_add(u.int_in_range(0..=100_000)?);
                let received: u64 = u.arbitrary()?;
                HostMessage::Clock(ClockReport {
                    host_time_usec: if u.ratio(7, 8)? {
                        *host_now
                    } else {
                        u.arbitrary()?
                    },
                    received_bytes: received,
                    played_bytes: u.int_in_range(0..=received)?,
                    device_latency_usec: u.arbitrary()?,
                    underruns: u.arbitrary()?,
                    playing: u.arbitrary()?,
                })
            }
            5 => HostMessage::Pong {
                guest_time_usec: u.arbitrary()?,
                host_time_usec: u.arbitrary()?,
            },
            6 => HostMessage::Goodbye {
                reason: arb_text(u)?,
            },
            7 => HostMessage::Accept(Accept {
                version: u.arbitrary()?,
                buffer_bytes: u.arbitrary()?,
                host_time_usec: u.arbitrary()?,
            }),
            8 => HostMessage::Reject {
                reason: arb_reject(u)?,
                message: arb_text(u)?,
            },
            _ => return Ok(None),
        };
        let mut frame = Vec::new();
        // Invalid texts do not encode-validate; send them anyway, as a
        // hostile host would.
        let _ = encode_frame(&msg, &mut frame);
        Ok(Some(frame))
    }

    /// Hands a fresh [`Engine`] one end of a connected socket pair, as if
    /// its handshake had just succeeded ([`Engine::attach`]: no listener, no
    /// helper thread), then lets the fake host on the other end send
    /// arbitrary bytes and messages while the guest clock, rendering and the
    /// sink state change arbitrarily. Checks that the engine never sends a
    /// malformed frame or a second Hello, never exceeds the credit the host
    /// granted, and never reports a negative latency or a past wake-up.
    pub fn module_engine(data: &[u8]) {
        check_real_handshake();
        // Never reached: the input ends when the link drops, before the
        // engine would try to reconnect.
        let mut engine = engine_for("unix:/nonexistent/secure-tunnel-fuzz.sock");
        let mut now: u64 = 1_000_000;
        engine.set_activity(Activity::Running, now);
        let (guest, mut sock) = UnixStream::pair().expect("a socket pair");
        sock.set_nonblocking(true).expect("non-blocking fake host");
        let conn = Connection::from_unix_stream(guest).expect("a non-blocking guest end");
        let mut u = Unstructured::new(data);
        // A host that takes rewinds (protocol 3) or one that does not.
        let rewinds = u.arbitrary().unwrap_or(false);
        let version = if rewinds {
            REWIND_PROTOCOL_VERSION
        } else {
            PROTOCOL_VERSION
        };
        engine.attach(conn, accept_version(version), now);
        assert!(
            engine.is_connected(),
            "the engine dropped a fresh connection"
        );

        let mut mirror = Mirror {
            rewinds,
            ..Mirror::default()
        };
        let _ = drive_engine(&mut u, &mut engine, &mut sock, &mut now, &mut mirror);
        engine.shutdown("fuzz input done");
        mirror.drain_guest(&mut sock);
    }

    /// The fake host's view: what it granted and what the guest sent.
    #[derive(Default)]
    struct Mirror {
        host_stream: FrameReader,
        host_broken: bool,
        max_credit: u64,
        guest_stream: FrameReader,
        audio: u64,
        /// Whether the host accepted protocol 3.
        rewinds: bool,
    }

    impl Mirror {
        fn host_sent(&mut self, bytes: &[u8]) {
            if self.host_broken {
                return;
            }
            self.host_stream.feed(bytes);
            loop {
                match self.host_stream.next_message::<HostMessage>() {
                    Ok(Some(HostMessage::Credit { limit_bytes })) => {
                        self.max_credit = self.max_credit.max(limit_bytes);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        self.host_broken = true;
                        break;
                    }
                }
            }
        }

        fn drain_guest(&mut self, sock: &mut UnixStream) {
            thread_local! {
                // Allocated (and zeroed) once, not per input.
                static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
            }
            loop {
                let read = BUF.with_borrow_mut(|buf| {
                    let n = sock.read(buf).unwrap_or(0);
                    self.guest_stream.feed(&buf[..n]);
                    n
                });
                if read == 0 {
                    break;
                }
                while let Some(msg) = self
                    .guest_stream
                    .next_message::<GuestMessage>()
                    .expect("the module only sends well-formed frames")
                {
                    match msg {
                        GuestMessage::Audio(a) => {
                            assert_eq!(a.len() % 4, 0, "audio of partial frames");
                            self.audio += a.len() as u64;
                        }
                        GuestMessage::Hello(_) => panic!("a second Hello"),
                        GuestMessage::Rewind { bytes } => {
                            assert!(self.rewinds, "a Rewind to a version-1 host");
                            assert_eq!(bytes % 4, 0, "a rewind of partial frames");
                            assert!(bytes > 0, "an empty rewind sent");
                            assert!(
                                bytes <= self.audio,
                                "rewound {bytes} of {} bytes sent",
                                self.audio
                            );
                            self.audio -= bytes;
                        }
                        _ => {}
                    }
                }
            }
            assert!(
                self.audio <= self.max_credit,
                "the module sent {} audio bytes with a credit of {}",
                self.audio,
                self.max_credit
            );
        }
    }

    /// The engine renders at most this much per wake-up (its
    /// `MAX_RENDER_PER_WAKE`); a larger budget fails the input.
    const MAX_RENDER: usize = 4 * MAX_AUDIO_CHUNK;
    /// The most audio one input renders: one whole chunk and a bit, so a
    /// render can still span two chunks. Beyond it the sink renders nothing
    /// more (as when `pa_sink_render` returns no data) while the input goes
    /// on. Without the bound a hostile credit of up to 4 GiB had the engine
    /// send, and the fake host decode, up to 25 MB per input; even two whole
    /// chunks cost half as much again per input (the buffers then outgrow
    /// what the allocator keeps between inputs).
    const RENDER_PER_INPUT: usize = MAX_AUDIO_CHUNK + 4096;
    static ZEROS: [u8; RENDER_PER_INPUT] = [0; RENDER_PER_INPUT];

    fn drive_engine(
        u: &mut Unstructured<'_>,
        engine: &mut Engine,
        sock: &mut UnixStream,
        now: &mut u64,
        mirror: &mut Mirror,
    ) -> ArbResult<()> {
        let mut host_now = 5_000_000;
        let mut rendered = 0;
        for _ in 0..u.int_in_range(1..=100)? {
            if u.is_empty() || !engine.is_connected() {
                break;
            }
            match u.int_in_range(0..=6)? {
                0..=2 => {
                    if let Some(bytes) = arb_step(u, &mut host_now)? {
                        // The socket buffer takes far more than one input.
                        if sock.write_all(&bytes).is_err() {
                            break;
                        }
                        mirror.host_sent(&bytes);
                    }
                }
                3 => {
                    *now = now.saturating_add(u.int_in_range(0..=3_000_000)?);
                }
                4 => {
                    let activity =
                        *u.choose(&[Activity::Running, Activity::Idle, Activity::Suspended])?;
                    engine.set_activity(activity, *now);
                }
                5 => {
                    let usec = if u.arbitrary()? {
                        Some(u.arbitrary()?)
                    } else {
                        None
                    };
                    engine.set_requested_latency(usec);
                }
                _ => {
                    // The sound server asks a rewind, as the module's IO
                    // thread passes it on before rendering.
                    let requested: u64 = if u.arbitrary()? {
                        u.int_in_range(0..=1 << 20)?
                    } else {
                        u.arbitrary()?
                    };
                    let done = engine.rewind(requested, *now);
                    assert!(done <= requested, "rewound {done} of {requested} asked");
                    assert_eq!(done % 4, 0, "rewound partial frames");
                    assert!(mirror.rewinds || done == 0, "rewound on a version-1 host");
                }
            }
            engine.poll_io(*now);
            let budget = engine.render_budget(*now);
            assert!(
                budget <= MAX_RENDER,
                "render budget {budget} above the per-wake maximum"
            );
            let n = budget.min(RENDER_PER_INPUT - rendered);
            if n > 0 {
                engine.consume(&ZEROS[..n], *now);
                rendered += n;
            }
            engine.flush(*now);
            let latency = engine.latency_usec(*now);
            assert!(latency >= 0, "negative latency {latency}");
            assert!(engine.next_wakeup(*now) >= *now, "wake-up in the past");
            // The fake host reads when the engine has to wait for it (its
            // socket buffer is full) and once at the end: one system call
            // per step fewer than reading after every step.
            if engine.poll_interest().is_some_and(|(_, write)| write) {
                mirror.drain_guest(sock);
            }
        }
        Ok(())
    }
}

pub use module::module_engine;

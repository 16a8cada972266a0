#![allow(clippy::unwrap_used)]

use secure_tunnel_protocol::{CaptureState, Hello, SampleFormat, MAGIC};

use super::*;

const PEER: &str = "test peer";
const TIMEOUT: u64 = 5_000_000;
/// s16le stereo 48 kHz: 4-byte frames, 192 bytes per millisecond.
const FRAME: u64 = 4;
/// 100 ms at 48 kHz stereo s16.
const TLENGTH: u32 = 19_200;

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn hello() -> Hello {
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        spec: spec(),
        target_latency_usec: 100_000,
        stream_name: "guest sink".into(),
    }
}

fn run(session: &mut Session, now: u64, event: Event) -> Vec<Action> {
    let mut out = Vec::new();
    session.handle(now, event, &mut out);
    out
}

fn msg(session: &mut Session, now: u64, message: GuestMessage) -> Vec<Action> {
    run(session, now, Event::Message(message))
}

fn status(now: u64, writable: u64, played: u64, playing: bool) -> Event {
    Event::Status(StreamStatus {
        host_time_usec: now,
        writable_bytes: writable,
        played_bytes: played,
        device_latency_usec: 1234,
        underruns: 0,
        playing,
    })
}

/// A session past Accept with the first credit (one whole buffer) granted.
fn streaming() -> Session {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = msg(&mut s, 10, GuestMessage::Hello(hello()));
    assert!(matches!(out.as_slice(), [Action::OpenStream(_)]));
    let out = run(
        &mut s,
        20,
        Event::StreamOpened {
            buffer_bytes: TLENGTH,
        },
    );
    assert!(matches!(
        out.as_slice(),
        [Action::Send(HostMessage::Accept(_))]
    ));
    let out = run(&mut s, 30, status(30, u64::from(TLENGTH), 0, false));
    assert_eq!(
        out[0],
        Action::Send(HostMessage::Credit {
            limit_bytes: u64::from(TLENGTH)
        })
    );
    assert!(s.is_streaming());
    s
}

fn is_close(actions: &[Action], peer: bool) -> bool {
    matches!(actions.last(), Some(Action::Close { peer_fault, .. }) if *peer_fault == peer)
}

fn sent(actions: &[Action]) -> Vec<&HostMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn clock_of(actions: &[Action]) -> Option<ClockReport> {
    sent(actions).into_iter().find_map(|m| match m {
        HostMessage::Clock(c) => Some(c.clone()),
        _ => None,
    })
}

#[test]
fn hello_opens_a_stream_sized_from_the_target_latency() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = msg(&mut s, 10, GuestMessage::Hello(hello()));
    assert_eq!(
        out,
        vec![Action::OpenStream(StreamParams {
            spec: spec(),
            tlength_bytes: TLENGTH,
            name: "guest sink".into(),
        })]
    );
    assert!(s.has_stream());
    assert!(!s.is_streaming());
    let out = run(
        &mut s,
        99,
        Event::StreamOpened {
            buffer_bytes: 20_000,
        },
    );
    assert_eq!(
        out,
        vec![Action::Send(HostMessage::Accept(Accept {
            version: PROTOCOL_VERSION,
            buffer_bytes: 20_000,
            host_time_usec: 99,
        }))]
    );
}

#[test]
fn tiny_latency_still_buffers_one_frame() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let mut h = hello();
    h.spec.rate = 8_000;
    h.target_latency_usec = 100; // 0.8 frames
    let out = msg(&mut s, 0, GuestMessage::Hello(h));
    assert!(matches!(&out[0], Action::OpenStream(p) if p.tlength_bytes == 4));
}

#[test]
fn wrong_version_is_rejected() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let mut h = hello();
    h.version = PROTOCOL_VERSION + 1;
    let out = msg(&mut s, 0, GuestMessage::Hello(h));
    assert!(matches!(
        sent(&out)[0],
        HostMessage::Reject {
            reason: RejectReason::UnsupportedVersion,
            ..
        }
    ));
    assert!(is_close(&out, true));
    assert!(s.is_closed());
    assert!(
        run(&mut s, 1, Event::Tick).is_empty(),
        "closed sessions stay quiet"
    );
}

#[test]
fn anything_before_hello_is_rejected() {
    let firsts = [
        GuestMessage::Audio(vec![0; 4]),
        GuestMessage::Cork,
        GuestMessage::Uncork,
        GuestMessage::Flush,
        GuestMessage::SetLatency {
            target_latency_usec: 20_000,
        },
        GuestMessage::Ping { guest_time_usec: 1 },
        GuestMessage::Goodbye {
            reason: "bye".into(),
        },
    ];
    for first in firsts {
        let mut s = Session::new(0, TIMEOUT, PEER);
        let out = msg(&mut s, 0, first.clone());
        assert!(
            matches!(
                sent(&out)[..],
                [HostMessage::Reject {
                    reason: RejectReason::BadRequest,
                    ..
                }]
            ),
            "{first:?}: {out:?}"
        );
        assert!(is_close(&out, true), "{first:?}");
        assert!(!s.has_stream());
    }
}

#[test]
fn undecodable_hello_is_rejected_as_bad_request() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = run(&mut s, 0, Event::ProtocolError("invalid magic".into()));
    assert!(matches!(
        sent(&out)[0],
        HostMessage::Reject {
            reason: RejectReason::BadRequest,
            message,
        } if message.contains("invalid magic")
    ));
    assert!(is_close(&out, true));
}

#[test]
fn handshake_timeout_closes() {
    let mut s = Session::new(1_000, TIMEOUT, PEER);
    assert!(run(&mut s, 1_000 + TIMEOUT - 1, Event::Tick).is_empty());
    let out = run(&mut s, 1_000 + TIMEOUT, Event::Tick);
    assert!(is_close(&out, true));
    assert!(s.is_closed());
}

#[test]
fn open_timeout_and_refusals_reject() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    assert!(run(&mut s, OPEN_TIMEOUT_USEC - 1, Event::Tick).is_empty());
    let out = run(&mut s, OPEN_TIMEOUT_USEC, Event::Tick);
    assert!(matches!(
        sent(&out)[0],
        HostMessage::Reject {
            reason: RejectReason::ServerError,
            ..
        }
    ));
    assert!(is_close(&out, false));

    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    let out = run(
        &mut s,
        1,
        Event::OpenRefused {
            reason: RejectReason::TooManyClients,
            message: "full".into(),
        },
    );
    assert!(matches!(
        sent(&out)[0],
        HostMessage::Reject {
            reason: RejectReason::TooManyClients,
            ..
        }
    ));
    assert!(is_close(&out, false));

    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    let out = run(
        &mut s,
        1,
        Event::StreamFailed {
            reason: "no sink".into(),
        },
    );
    assert!(matches!(
        sent(&out)[0],
        HostMessage::Reject {
            reason: RejectReason::ServerError,
            message,
        } if message.contains("no sink")
    ));
}

#[test]
fn while_opening_only_ping_and_goodbye_are_fine() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    let out = msg(
        &mut s,
        7,
        GuestMessage::Ping {
            guest_time_usec: 42,
        },
    );
    assert_eq!(
        out,
        vec![Action::Send(HostMessage::Pong {
            guest_time_usec: 42,
            host_time_usec: 7
        })]
    );
    let out = msg(&mut s, 8, GuestMessage::Audio(vec![0; 4]));
    assert!(is_close(&out, true), "audio before Accept has no credit");

    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    let out = msg(&mut s, 8, GuestMessage::Hello(hello()));
    assert!(is_close(&out, true), "second Hello");

    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 0, GuestMessage::Hello(hello()));
    let out = msg(&mut s, 8, GuestMessage::Goodbye { reason: "x".into() });
    assert_eq!(out.len(), 1);
    assert!(is_close(&out, false));
}

#[test]
fn audio_within_credit_is_written() {
    let mut s = streaming();
    let out = msg(&mut s, 40, GuestMessage::Audio(vec![7; 4_800]));
    assert_eq!(out, vec![Action::Write(vec![7; 4_800])]);
    let out = msg(&mut s, 41, GuestMessage::Audio(vec![7; 14_400]));
    assert_eq!(out.len(), 1);
    assert_eq!(s.received_bytes(), u64::from(TLENGTH));
}

#[test]
fn credit_breach_closes() {
    let mut s = streaming();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 19_196]));
    let out = msg(&mut s, 41, GuestMessage::Audio(vec![0; 8]));
    assert!(matches!(
        sent(&out)[..],
        [HostMessage::Goodbye { reason }] if reason.contains("credit")
    ));
    assert!(is_close(&out, true));
    assert!(!out.iter().any(|a| matches!(a, Action::Write(_))));
}

#[test]
fn non_frame_aligned_audio_closes() {
    let mut s = streaming();
    let out = msg(&mut s, 40, GuestMessage::Audio(vec![0; 6]));
    assert!(is_close(&out, true));
    assert_eq!(s.received_bytes(), 0);
}

#[test]
fn second_hello_after_accept_closes() {
    let mut s = streaming();
    let out = msg(&mut s, 40, GuestMessage::Hello(hello()));
    assert!(matches!(sent(&out)[..], [HostMessage::Goodbye { .. }]));
    assert!(is_close(&out, true));
}

#[test]
fn protocol_error_after_accept_says_goodbye() {
    let mut s = streaming();
    let out = run(&mut s, 40, Event::ProtocolError("frame too long".into()));
    assert!(matches!(sent(&out)[..], [HostMessage::Goodbye { .. }]));
    assert!(is_close(&out, true));
}

#[test]
fn credit_is_cumulative_coalesced_and_never_shrinks() {
    let mut s = streaming();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; TLENGTH as usize]));
    // The stream took a few frames: below a quarter buffer, no new grant.
    let out = run(&mut s, 50, status(50, 400, 400, true));
    assert!(!sent(&out)
        .iter()
        .any(|m| matches!(m, HostMessage::Credit { .. })));
    // A quarter buffer free: grant up to received + writable.
    let out = run(&mut s, 60, status(60, 4_800, 4_800, true));
    assert!(sent(&out).contains(&&HostMessage::Credit {
        limit_bytes: u64::from(TLENGTH) + 4_800
    }));
    assert_eq!(s.granted_bytes(), u64::from(TLENGTH) + 4_800);
    // The stream reports less room than before: the grant stays.
    let out = run(&mut s, 70, status(70, 0, 4_800, true));
    assert!(!sent(&out)
        .iter()
        .any(|m| matches!(m, HostMessage::Credit { .. })));
    assert_eq!(s.granted_bytes(), u64::from(TLENGTH) + 4_800);
    // A backend claiming more room than the buffer is bounded by it, and a
    // ragged writable size is cut to whole frames.
    let out = run(&mut s, 80, status(80, 1 << 40, 4_800, true));
    assert!(sent(&out).contains(&&HostMessage::Credit {
        limit_bytes: 2 * u64::from(TLENGTH)
    }));
    msg(&mut s, 90, GuestMessage::Audio(vec![0; TLENGTH as usize]));
    let out = run(&mut s, 95, status(95, 4_803, 4_800, true));
    let limit = sent(&out).iter().find_map(|m| match m {
        HostMessage::Credit { limit_bytes } => Some(*limit_bytes),
        _ => None,
    });
    assert_eq!(limit, Some(2 * u64::from(TLENGTH) + 4_800));
    assert_eq!(limit.unwrap() % FRAME, 0);
}

#[test]
fn clock_reports_are_paced_clamped_and_monotonic() {
    let mut s = streaming();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 8_000]));
    // The first status after Accept already reported; 15-20 ms later another.
    assert!(clock_of(&run(&mut s, 1_000, status(1_000, 0, 100, false))).is_none());
    let report = clock_of(&run(&mut s, 20_030, status(20_030, 0, 200, true))).unwrap();
    assert_eq!(
        report,
        ClockReport {
            host_time_usec: 20_030,
            received_bytes: 8_000,
            played_bytes: 200,
            device_latency_usec: 1234,
            underruns: 0,
            playing: true,
        }
    );
    assert!(clock_of(&run(&mut s, 35_000, status(35_000, 0, 300, true))).is_none());
    // A backend position beyond what was received is clamped...
    let report = clock_of(&run(&mut s, 35_030, status(35_030, 0, 9_000, true))).unwrap();
    assert_eq!(report.played_bytes, 8_000);
    // ...and one that goes backwards does not move the report back.
    let report = clock_of(&run(&mut s, 50_030, status(50_030, 0, 5_000, true))).unwrap();
    assert_eq!(report.played_bytes, 8_000);
    assert!(report.played_bytes <= report.received_bytes);
}

#[test]
fn idle_clock_reports_are_sparse_and_state_changes_are_prompt() {
    let mut s = streaming();
    assert!(clock_of(&run(&mut s, 195_000, status(195_000, 0, 0, false))).is_none());
    assert!(clock_of(&run(&mut s, 195_030, status(195_030, 0, 0, false))).is_some());
    // Starting to play is reported at once, not 200 ms later.
    assert!(clock_of(&run(&mut s, 200_040, status(200_040, 0, 0, true))).is_some());
    // Cork is reported with the next sample.
    msg(&mut s, 200_050, GuestMessage::Cork);
    assert!(clock_of(&run(&mut s, 200_060, status(200_060, 0, 0, true))).is_some());
}

#[test]
fn cork_uncork_and_set_latency_reach_the_backend() {
    let mut s = streaming();
    assert_eq!(
        msg(&mut s, 40, GuestMessage::Cork),
        vec![Action::Cork(true)]
    );
    assert_eq!(
        msg(&mut s, 41, GuestMessage::Uncork),
        vec![Action::Cork(false)]
    );
    assert_eq!(
        msg(
            &mut s,
            42,
            GuestMessage::SetLatency {
                target_latency_usec: 20_000
            }
        ),
        vec![Action::SetBuffer {
            tlength_bytes: 3_840
        }]
    );
    // The credit threshold follows the new buffer: a quarter of 3840.
    msg(&mut s, 43, GuestMessage::Audio(vec![0; TLENGTH as usize]));
    let out = run(&mut s, 50, status(50, 960, 0, true));
    assert!(sent(&out).contains(&&HostMessage::Credit {
        limit_bytes: u64::from(TLENGTH) + 960
    }));
}

#[test]
fn flush_counts_dropped_bytes_as_played() {
    let mut s = streaming();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 8_000]));
    assert_eq!(msg(&mut s, 50, GuestMessage::Flush), vec![Action::Flush]);
    // The backend has not caught up yet; the report says all was played.
    let report = clock_of(&run(&mut s, 60, status(60, 0, 100, false))).unwrap();
    assert_eq!(report.played_bytes, 8_000);
    assert_eq!(report.received_bytes, 8_000);
}

#[test]
fn ping_is_echoed_with_the_host_time() {
    let mut s = streaming();
    let out = msg(
        &mut s,
        12_345,
        GuestMessage::Ping {
            guest_time_usec: 999,
        },
    );
    assert_eq!(
        out,
        vec![Action::Send(HostMessage::Pong {
            guest_time_usec: 999,
            host_time_usec: 12_345
        })]
    );
}

#[test]
fn goodbye_stream_failure_and_shutdown_close() {
    let mut s = streaming();
    let out = msg(
        &mut s,
        40,
        GuestMessage::Goodbye {
            reason: "done".into(),
        },
    );
    assert_eq!(out.len(), 1, "no reply to a goodbye");
    assert!(is_close(&out, false));

    let mut s = streaming();
    let out = run(
        &mut s,
        40,
        Event::StreamFailed {
            reason: "lost".into(),
        },
    );
    assert!(matches!(sent(&out)[..], [HostMessage::Goodbye { reason }] if reason.contains("lost")));
    assert!(is_close(&out, false));

    let mut s = streaming();
    let out = run(&mut s, 40, Event::Shutdown);
    assert!(matches!(sent(&out)[..], [HostMessage::Goodbye { .. }]));
    assert!(is_close(&out, false));

    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = run(&mut s, 40, Event::Shutdown);
    assert!(matches!(
        sent(&out)[..],
        [HostMessage::Reject {
            reason: RejectReason::ServerError,
            ..
        }]
    ));
}

#[test]
fn outgoing_texts_always_validate() {
    let long = "é".repeat(400) + "\n\u{7}";
    let text = bounded_text(&long);
    assert!(text.len() <= MAX_REASON_LEN);
    assert!(!text.chars().any(char::is_control));
    // A reject carrying a long peer-triggered error still validates.
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = run(&mut s, 0, Event::ProtocolError(long));
    for m in sent(&out) {
        m.validate().unwrap();
    }
}

/// Every event in every state: no panic, clock invariants hold, and nothing
/// happens after Close.
#[test]
fn exhaustive_event_orders_keep_invariants() {
    let events = || {
        vec![
            Event::Message(GuestMessage::Hello(hello())),
            Event::Message(GuestMessage::Audio(vec![0; 4_800])),
            Event::Message(GuestMessage::Audio(vec![0; 3])),
            Event::Message(GuestMessage::Cork),
            Event::Message(GuestMessage::Uncork),
            Event::Message(GuestMessage::Flush),
            Event::Message(GuestMessage::SetLatency {
                target_latency_usec: 1_000,
            }),
            Event::Message(GuestMessage::Ping { guest_time_usec: 5 }),
            Event::Message(GuestMessage::Goodbye { reason: "g".into() }),
            Event::ProtocolError("bad".into()),
            Event::StreamOpened {
                buffer_bytes: TLENGTH,
            },
            Event::OpenRefused {
                reason: RejectReason::ServerError,
                message: "m".into(),
            },
            Event::StreamFailed { reason: "f".into() },
            status(0, 4_800, 2_000, true),
            status(0, 1 << 30, u64::MAX, false),
            Event::Tick,
            Event::Shutdown,
        ]
    };
    let n = events().len();
    // All sequences of length 3 over the event alphabet, from a fresh and
    // from a streaming session.
    for start_streaming in [false, true] {
        for a in 0..n {
            for b in 0..n {
                for c in 0..n {
                    let mut s = if start_streaming {
                        streaming()
                    } else {
                        Session::new(0, TIMEOUT, PEER)
                    };
                    let mut now = 100;
                    let mut closed = false;
                    for i in [a, b, c] {
                        now += 30_000;
                        let event = events().swap_remove(i);
                        let out = run(&mut s, now, event);
                        if closed {
                            assert!(out.is_empty());
                        }
                        for action in &out {
                            if let Action::Send(m) = action {
                                m.validate().unwrap();
                                if let HostMessage::Clock(c) = m {
                                    assert!(c.played_bytes <= c.received_bytes);
                                }
                            }
                        }
                        let closes = out
                            .iter()
                            .filter(|a| matches!(a, Action::Close { .. }))
                            .count();
                        assert!(closes <= 1);
                        if closes == 1 {
                            assert!(matches!(out.last(), Some(Action::Close { .. })));
                            closed = true;
                        }
                        assert_eq!(closed, s.is_closed());
                        assert!(s.received_bytes() <= s.granted_bytes());
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// privacy rounding and capture connections

#[test]
fn report_rounding_keeps_time_plus_latency_within_half_a_quantum() {
    assert_eq!(round_report(0, 12_345, 678), (12_345, 678));
    let q = 10_000;
    for time in (0..200_000u64).step_by(1_237) {
        for latency in (0..90_000u32).step_by(3_331) {
            let (t, l) = round_report(q, time, latency);
            assert_eq!(t % q, 0);
            assert_eq!(u64::from(l) % q, 0);
            assert!(t <= time && time - t < q);
            let truth = (time + u64::from(latency)) as i64;
            let shown = (t + u64::from(l)) as i64;
            assert!((truth - shown).abs() <= (q / 2) as i64, "{time} {latency}");
        }
    }
    // Saturates instead of wrapping.
    assert_eq!(round_report(q, u64::MAX, u32::MAX).0 % q, 0);
}

#[test]
fn playback_clock_reports_are_rounded_to_the_policy_quantum() {
    let mut s = streaming();
    s.set_report_quantum(20_000);
    let out = run(&mut s, 100_000, status(123_456, 0, 0, true));
    let report = out
        .iter()
        .find_map(|a| match a {
            Action::Send(HostMessage::Clock(r)) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(report.host_time_usec, 120_000);
    // 123,456 + 1,234 = 124,690, nearest from 120,000 in 20 ms steps: 0.
    assert_eq!(report.device_latency_usec, 0);
}

fn capture_hello(version: u16) -> GuestMessage {
    GuestMessage::CaptureHello(Hello { version, ..hello() })
}

/// A capture session past its Accept, allowed to record.
fn capturing() -> Session {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = msg(&mut s, 10, capture_hello(CAPTURE_PROTOCOL_VERSION));
    assert!(matches!(out.as_slice(), [Action::AdmitCapture { .. }]));
    let out = run(
        &mut s,
        20,
        Event::CaptureAdmitted {
            permitted: true,
            quantum_usec: 0,
        },
    );
    assert!(
        matches!(
            out.as_slice(),
            [
                Action::Send(HostMessage::Accept(Accept { version: 2, .. })),
                Action::Send(HostMessage::CaptureState {
                    state: CaptureState::Idle
                })
            ]
        ),
        "{out:?}"
    );
    assert!(s.is_capture());
    s
}

#[test]
fn a_capture_hello_of_version_1_is_refused() {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let out = msg(&mut s, 10, capture_hello(PROTOCOL_VERSION));
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Send(HostMessage::Reject {
                reason: RejectReason::UnsupportedVersion,
                ..
            })
        )),
        "{out:?}"
    );
    assert!(s.is_closed());
}

#[test]
fn playback_only_messages_on_a_capture_connection_close_it_and_its_recording() {
    let violations = [
        GuestMessage::Audio(vec![0; 4]),
        GuestMessage::Flush,
        GuestMessage::Hello(hello()),
        capture_hello(CAPTURE_PROTOCOL_VERSION),
    ];
    for bad in violations {
        let mut s = capturing();
        msg(&mut s, 30, GuestMessage::Uncork);
        assert!(s.capture().unwrap().recording());
        let out = msg(&mut s, 40, bad.clone());
        let close_at = out
            .iter()
            .position(|a| matches!(a, Action::Close { .. }))
            .unwrap_or_else(|| panic!("{bad:?} did not close: {out:?}"));
        let stop_at = out
            .iter()
            .position(|a| matches!(a, Action::CloseCapture))
            .unwrap_or_else(|| panic!("{bad:?} left the recording open: {out:?}"));
        assert!(stop_at < close_at);
        assert!(is_close(&out, true), "{bad:?} is the guest's fault");
    }
}

#[test]
fn capture_credit_on_a_playback_connection_closes_it() {
    let mut s = streaming();
    let out = msg(
        &mut s,
        40,
        GuestMessage::CaptureCredit {
            limit_bytes: 1 << 20,
        },
    );
    assert!(is_close(&out, true), "{out:?}");
}

#[test]
fn closing_a_capture_connection_at_every_point_leaves_no_recording_stream() {
    // Goodbye before admission, after the Accept, while opening and while
    // recording; then shutdown in the same places.
    for end in 0..8 {
        let mut s = Session::new(0, TIMEOUT, PEER);
        let mut all = msg(&mut s, 10, capture_hello(CAPTURE_PROTOCOL_VERSION));
        let finish = |s: &mut Session, all: &mut Vec<Action>| {
            let event = if end < 4 {
                Event::Message(GuestMessage::Goodbye {
                    reason: "bye".into(),
                })
            } else {
                Event::Shutdown
            };
            all.extend(run(s, 99, event));
        };
        if end % 4 == 0 {
            finish(&mut s, &mut all);
        } else {
            all.extend(run(
                &mut s,
                20,
                Event::CaptureAdmitted {
                    permitted: true,
                    quantum_usec: 0,
                },
            ));
            if end % 4 >= 2 {
                all.extend(msg(&mut s, 30, GuestMessage::Uncork));
            }
            if end % 4 == 3 {
                all.extend(run(&mut s, 40, Event::StreamOpened { buffer_bytes: 0 }));
            }
            finish(&mut s, &mut all);
        }
        let opened = all
            .iter()
            .filter(|a| matches!(a, Action::OpenCapture(_)))
            .count();
        let closed = all
            .iter()
            .filter(|a| matches!(a, Action::CloseCapture))
            .count();
        assert_eq!(opened, closed, "case {end}: {all:?}");
        assert!(s.is_closed(), "case {end}");
    }
}

/// Like [`streaming`], after a version-3 (rewind) Hello.
fn streaming_v3() -> Session {
    let mut s = Session::new(0, TIMEOUT, PEER);
    let hello = Hello {
        version: REWIND_PROTOCOL_VERSION,
        ..hello()
    };
    msg(&mut s, 10, GuestMessage::Hello(hello));
    let out = run(
        &mut s,
        20,
        Event::StreamOpened {
            buffer_bytes: TLENGTH,
        },
    );
    match sent(&out).as_slice() {
        [HostMessage::Accept(a)] => assert_eq!(a.version, REWIND_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    run(&mut s, 30, status(30, u64::from(TLENGTH), 0, false));
    s
}

#[test]
fn a_rewind_takes_the_positions_back_and_keeps_credit_exact() {
    let mut s = streaming_v3();
    let tl = u64::from(TLENGTH);
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 9600]));
    msg(&mut s, 41, GuestMessage::Audio(vec![0; 9600]));
    // 20 ms played, reported.
    let out = run(&mut s, 20_000, status(20_000, 0, 3840, true));
    assert_eq!(clock_of(&out).unwrap().played_bytes, 3840);
    let out = msg(&mut s, 20_100, GuestMessage::Rewind { bytes: 9600 });
    assert_eq!(out, vec![Action::Rewind { bytes: 9600 }]);
    assert_eq!(s.received_bytes(), tl - 9600);
    // The withdrawn bytes may be sent again without new credit...
    let out = msg(&mut s, 20_200, GuestMessage::Audio(vec![0; 9600]));
    assert!(matches!(out.as_slice(), [Action::Write(_)]), "{out:?}");
    // ...and not one byte more.
    let out = msg(&mut s, 20_300, GuestMessage::Audio(vec![0; 4]));
    assert!(is_close(&out, true), "{out:?}");
}

#[test]
fn the_next_clock_report_is_in_rewound_positions() {
    let mut s = streaming_v3();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 19_200]));
    run(&mut s, 20_000, status(20_000, 0, 3840, true));
    msg(&mut s, 20_100, GuestMessage::Rewind { bytes: 7680 });
    let out = run(&mut s, 21_000, status(21_000, 7680, 4032, true));
    let c = clock_of(&out).expect("a report at once after a rewind");
    assert_eq!((c.received_bytes, c.played_bytes), (11_520, 4032));
}

#[test]
fn rewinds_that_break_the_rules_close_the_connection() {
    // Version 1 has no rewinds.
    let mut s = streaming();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 9600]));
    let out = msg(&mut s, 50, GuestMessage::Rewind { bytes: 4 });
    assert!(is_close(&out, true), "{out:?}");
    // Not whole frames.
    let mut s = streaming_v3();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 9600]));
    let out = msg(&mut s, 50, GuestMessage::Rewind { bytes: 6 });
    assert!(is_close(&out, true), "{out:?}");
    // More than was ever sent.
    let mut s = streaming_v3();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 9600]));
    let out = msg(&mut s, 50, GuestMessage::Rewind { bytes: 9604 });
    assert!(is_close(&out, true), "{out:?}");
    // A zero rewind is harmless and does nothing.
    let mut s = streaming_v3();
    assert!(msg(&mut s, 40, GuestMessage::Rewind { bytes: 0 }).is_empty());
    // Before Accept it is a bad request like any other message.
    let mut s = Session::new(0, TIMEOUT, PEER);
    msg(&mut s, 10, GuestMessage::Hello(hello()));
    let out = msg(&mut s, 20, GuestMessage::Rewind { bytes: 0 });
    assert!(is_close(&out, true), "{out:?}");
}

#[test]
fn hello_versions_other_than_1_and_3_are_refused() {
    for version in [0, 2, 4, u16::MAX] {
        let mut s = Session::new(0, TIMEOUT, PEER);
        let out = msg(
            &mut s,
            10,
            GuestMessage::Hello(Hello { version, ..hello() }),
        );
        assert!(
            matches!(
                sent(&out).as_slice(),
                [HostMessage::Reject {
                    reason: RejectReason::UnsupportedVersion,
                    ..
                }]
            ),
            "version {version}: {out:?}"
        );
    }
}

#[test]
fn a_rewind_into_played_audio_keeps_played_within_received() {
    let mut s = streaming_v3();
    msg(&mut s, 40, GuestMessage::Audio(vec![0; 9600]));
    run(&mut s, 20_000, status(20_000, 0, 3840, true));
    // The guest withdraws more than is unplayed: allowed, the played part
    // is not undone, and reports never say more was played than received.
    let out = msg(&mut s, 20_100, GuestMessage::Rewind { bytes: 7680 });
    assert_eq!(out, vec![Action::Rewind { bytes: 7680 }]);
    let out = run(&mut s, 21_000, status(21_000, 0, 4032, true));
    let c = clock_of(&out).unwrap();
    assert_eq!((c.received_bytes, c.played_bytes), (1920, 1920));
    assert!(HostMessage::Clock(c).validate().is_ok());
}

//! [`capture_guest`]: the guest's capture source engine
//! ([`SourceEngine`], what `module-secure-tunnel-source` runs) against a
//! hostile host on the other end of a socket pair: arbitrary bytes and host
//! messages of every kind (capture and playback ones, handshake replies at
//! any time), while the guest clock, the source's recording state and the
//! posting of blocks change arbitrarily. It checks what a hostile host must
//! never get from the guest: a malformed frame, a playback message, a second
//! handshake; and what the guest's recorders must never see: audio the host
//! did not send (posted audio is always a prefix of what arrived), partial
//! frames, a latency beyond the clamp, a wake-up in the past.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use arbitrary::{Result as ArbResult, Unstructured};
use secure_tunnel_guest::capture::MAX_CAPTURE_LATENCY_USEC;
use secure_tunnel_guest::config::{CaptureConfig, CaptureRawArgs};
use secure_tunnel_guest::source::{Block, SourceEngine};
use secure_tunnel_guest::transport::Connection;
use secure_tunnel_protocol::{
    encode_frame, Accept, CaptureReport, CaptureState, ClockReport, FrameReader, GuestMessage,
    HostMessage, SampleFormat, StreamSpec, CAPTURE_PROTOCOL_VERSION,
};

use super::{arb_reject, arb_text};

const FRAME: usize = 4;

/// Drives one [`SourceEngine`] through an arbitrary conversation.
pub fn capture_guest(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = drive(&mut u);
}

fn engine() -> SourceEngine {
    let config = CaptureConfig::from_args(CaptureRawArgs {
        // Never reached: the input ends when the link drops.
        server: Some("unix:/nonexistent/secure-tunnel-fuzz.sock"),
        ..CaptureRawArgs::default()
    })
    .expect("a valid configuration");
    let spec = StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    };
    SourceEngine::new(config, spec)
}

fn arb_message(
    u: &mut Unstructured<'_>,
    host_now: &mut u64,
    sent: &mut u64,
) -> ArbResult<HostMessage> {
    Ok(match u.int_in_range(0..=11)? {
        0..=3 => {
            let len = if u.ratio(15, 16)? {
                FRAME * u.int_in_range(0..=2_000)?
            } else {
                u.int_in_range(0..=9_000)?
            };
            let fill: u8 = u.arbitrary()?;
            *sent += len as u64;
            HostMessage::CaptureData((0..len).map(|i| fill.wrapping_add(i as u8)).collect())
        }
        4..=5 => {
            *host_now = host_now.saturating_add(u.int_in_range(0..=100_000)?);
            HostMessage::CaptureClock(CaptureReport {
                host_time_usec: if u.ratio(7, 8)? {
                    *host_now
                } else {
                    u.arbitrary()?
                },
                sent_bytes: if u.ratio(7, 8)? {
                    u.int_in_range(0..=*sent)?
                } else {
                    u.arbitrary()?
                },
                delay_usec: u.arbitrary()?,
                dropped_bytes: u.arbitrary()?,
                running: u.arbitrary()?,
            })
        }
        6 => HostMessage::CaptureState {
            state: *u.choose(&[
                CaptureState::Idle,
                CaptureState::AwaitingGrant,
                CaptureState::Attached,
                CaptureState::Unavailable,
            ])?,
        },
        7 => HostMessage::Pong {
            guest_time_usec: u.arbitrary()?,
            host_time_usec: u.arbitrary()?,
        },
        8 => HostMessage::Accept(Accept {
            version: if u.ratio(7, 8)? {
                CAPTURE_PROTOCOL_VERSION
            } else {
                u.arbitrary()?
            },
            buffer_bytes: u.arbitrary()?,
            host_time_usec: u.arbitrary()?,
        }),
        9 => HostMessage::Reject {
            reason: arb_reject(u)?,
            message: arb_text(u)?,
        },
        10 => HostMessage::Goodbye {
            reason: arb_text(u)?,
        },
        _ => {
            if u.arbitrary()? {
                HostMessage::Credit {
                    limit_bytes: u.arbitrary()?,
                }
            } else {
                HostMessage::Clock(ClockReport {
                    host_time_usec: u.arbitrary()?,
                    received_bytes: u.arbitrary()?,
                    played_bytes: 0,
                    device_latency_usec: u.arbitrary()?,
                    underruns: u.arbitrary()?,
                    playing: u.arbitrary()?,
                })
            }
        }
    })
}

/// Everything the guest has sent so far must be well-formed and in order.
fn check_guest_output(host: &mut UnixStream, reader: &mut FrameReader, hellos: &mut u32) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match host.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => reader.feed(&buf[..n]),
        }
    }
    loop {
        let msg = match reader.next_message::<GuestMessage>() {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => panic!("the guest sent a malformed frame: {e}"),
        };
        msg.validate().expect("the guest's messages validate");
        match msg {
            GuestMessage::CaptureHello(_) => {
                *hellos += 1;
                assert_eq!(*hellos, 1, "a second CaptureHello");
            }
            GuestMessage::CaptureCredit { .. }
            | GuestMessage::Uncork
            | GuestMessage::Cork
            | GuestMessage::Ping { .. }
            | GuestMessage::Goodbye { .. } => assert_eq!(*hellos, 1, "a message before the Hello"),
            other => panic!("the capture guest sent a playback message: {other:?}"),
        }
    }
}

/// Takes every block due at `now` (at most `max` bytes each), checking
/// them; how many there were.
fn drain(
    engine: &mut SourceEngine,
    now: u64,
    max: usize,
    arrived: &[u8],
    posted: &mut usize,
) -> usize {
    let mut blocks = 0;
    while let Some(block) = engine.next_block(now, max) {
        blocks += 1;
        match block {
            Block::Audio(a) => {
                assert_eq!(a.len() % FRAME, 0, "partial frames posted");
                assert!(!a.is_empty());
                if *posted != usize::MAX {
                    assert!(
                        arrived.get(*posted..*posted + a.len()) == Some(&a[..]),
                        "posted audio the host did not send"
                    );
                    *posted += a.len();
                }
            }
            Block::Silence(n) => {
                assert!(n > 0 && n % FRAME == 0, "silence of {n} bytes");
                assert!(n <= max, "a block beyond max");
            }
        }
    }
    blocks
}

fn drive(u: &mut Unstructured<'_>) -> ArbResult<()> {
    let (guest, mut host) = UnixStream::pair().expect("a socket pair");
    host.set_nonblocking(true).expect("a non-blocking host end");
    let mut engine = engine();
    let mut now: u64 = 1_000_000;
    engine.attach(
        Connection::from_unix_stream(guest).expect("a non-blocking guest end"),
        now,
    );
    let (mut reader, mut hellos) = (FrameReader::new(), 0);
    let (mut host_now, mut sent) = (5_000_000u64, 0u64);
    // What arrived as CaptureData (in order) and how much was posted.
    let mut arrived: Vec<u8> = Vec::new();
    let mut posted = 0usize;
    for _ in 0..400 {
        if u.is_empty() || !engine.stats().connected {
            break;
        }
        match u.int_in_range(0..=9)? {
            0..=3 => {
                let before = sent;
                let msg = arb_message(u, &mut host_now, &mut sent)?;
                if let HostMessage::CaptureData(d) = &msg {
                    arrived.extend_from_slice(d);
                }
                debug_assert!(sent >= before);
                let mut frame = Vec::new();
                let _ = encode_frame(&msg, &mut frame);
                let _ = host.write_all(&frame);
            }
            4 => {
                let len = u.int_in_range(0..=64)?;
                let _ = host.write_all(u.bytes(len.min(u.len()))?);
                // Raw bytes make what arrived unknowable: stop checking it.
                arrived.clear();
                posted = usize::MAX;
            }
            5 => now = now.saturating_add(u.int_in_range(0..=200_000)?),
            6 => engine.set_recording(u.arbitrary()?, now),
            _ => {}
        }
        engine.poll_io(now);
        let max = u.int_in_range(0..=70_000)?;
        drain(&mut engine, now, max, &arrived, &mut posted);
        assert!(engine.latency_usec(now) <= MAX_CAPTURE_LATENCY_USEC);
        assert!(engine.next_wakeup(now) >= now, "a wake-up in the past");
        // Progress: a wake-up due now must be work, not a spin (the IO
        // thread is real-time, and 200 ms of spinning gets the guest's
        // sound server killed by RLIMIT_RTTIME; stop 22 found one).
        if engine.next_wakeup(now) <= now {
            engine.poll_io(now);
            let blocks = drain(&mut engine, now, 1 << 20, &arrived, &mut posted);
            assert!(
                blocks > 0 || engine.next_wakeup(now) > now || !engine.stats().connected,
                "the IO thread would spin at {now}"
            );
        }
        check_guest_output(&mut host, &mut reader, &mut hellos);
    }
    engine.shutdown("fuzz input done");
    check_guest_output(&mut host, &mut reader, &mut hellos);
    Ok(())
}

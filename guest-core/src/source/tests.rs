//! The source engine against a scripted host on the other end of a socket
//! pair (a fake host: the protocol is played by hand, the time is virtual).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use secure_tunnel_protocol::{
    read_frame, write_frame, Accept, CaptureState, GuestMessage, HostMessage, SampleFormat,
    StreamSpec,
};

use super::*;
use crate::config::{CaptureConfig, CaptureRawArgs};

const FRAME: usize = 4;

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn engine() -> SourceEngine {
    let config = CaptureConfig::from_args(CaptureRawArgs {
        server: Some("unix:/nonexistent/playd.sock"),
        ..CaptureRawArgs::default()
    })
    .unwrap();
    SourceEngine::new(config, spec())
}

/// An engine attached to a fake host, past the handshake.
fn attached(now: u64) -> (SourceEngine, UnixStream) {
    let (guest, host) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut e = engine();
    e.attach(Connection::from_unix_stream(guest).unwrap(), now);
    let mut host = host;
    let hello = read_frame::<GuestMessage, _>(&mut host).unwrap();
    assert!(matches!(hello, GuestMessage::CaptureHello(ref h) if h.version == 2));
    send(
        &mut host,
        HostMessage::Accept(Accept {
            version: 2,
            buffer_bytes: 1920,
            host_time_usec: 0,
        }),
    );
    e.poll_io(now);
    assert!(matches!(
        read_frame::<GuestMessage, _>(&mut host).unwrap(),
        GuestMessage::CaptureCredit { .. }
    ));
    (e, host)
}

/// The next guest message other than pings and credit.
fn next_control(host: &mut UnixStream) -> GuestMessage {
    loop {
        match read_frame::<GuestMessage, _>(host).unwrap() {
            GuestMessage::Ping { .. } | GuestMessage::CaptureCredit { .. } => {}
            other => return other,
        }
    }
}

fn send(host: &mut UnixStream, msg: HostMessage) {
    write_frame(host, &msg).unwrap();
}

/// Everything the source posts at `now`: (audio bytes, silence bytes).
fn drain(e: &mut SourceEngine, now: u64) -> (Vec<u8>, usize) {
    let (mut audio, mut silence) = (Vec::new(), 0);
    while let Some(block) = e.next_block(now, 4096) {
        match block {
            Block::Audio(a) => audio.extend(a),
            Block::Silence(n) => silence += n,
        }
    }
    (audio, silence)
}

#[test]
fn disconnected_it_posts_silence_at_real_time_and_only_while_recorded() {
    let mut e = engine();
    assert_eq!(drain(&mut e, 0), (vec![], 0));
    e.set_recording(true, 1_000);
    assert_eq!(e.next_wakeup(1_000), 1_000);
    assert_eq!(drain(&mut e, 1_000).1, 0);
    // An hour of virtual time in uneven steps: exactly rate × time.
    let mut now = 1_000;
    let mut total = 0;
    while now < 1_000 + 3_600_000_000 {
        now = e.next_wakeup(now).max(now) + 1_733;
        total += drain(&mut e, now).1;
    }
    let expect = spec().usec_to_bytes(now - 1_000) as usize;
    assert!(expect - total < 2 * FRAME + 4096, "{expect} vs {total}");
    assert_eq!(total % FRAME, 0);
    e.set_recording(false, now);
    assert_eq!(drain(&mut e, now + 1_000_000).1, 0);
    assert_eq!(e.stats().mic, MicState::Disconnected);
    assert_eq!(e.latency_usec(now), 0);
}

#[test]
fn attached_it_posts_the_hosts_audio_bit_exact_and_no_silence() {
    let (mut e, mut host) = attached(0);
    e.set_recording(true, 0);
    assert_eq!(next_control(&mut host), GuestMessage::Uncork);
    // Not yet attached: local silence.
    assert_eq!(drain(&mut e, 0).1, 0);
    assert!(drain(&mut e, 20_000).1 > 0);
    send(
        &mut host,
        HostMessage::CaptureState {
            state: CaptureState::Attached,
        },
    );
    e.poll_io(30_000);
    assert_eq!(e.stats().mic, MicState::Host(CaptureState::Attached));
    assert_eq!(
        e.take_events().last(),
        Some(&SourceEvent::State(MicState::Host(CaptureState::Attached)))
    );
    let pcm: Vec<u8> = (0..1920u32).map(|i| (i * 7 % 251) as u8).collect();
    send(&mut host, HostMessage::CaptureData(pcm.clone()));
    e.poll_io(40_000);
    let (audio, silence) = drain(&mut e, 40_000);
    assert_eq!((audio, silence), (pcm, 0));
    // The host is the clock: no silence however long nothing arrives.
    assert_eq!(drain(&mut e, 900_000).1, 0);
    // Detached again: silence resumes from then on.
    send(
        &mut host,
        HostMessage::CaptureState {
            state: CaptureState::AwaitingGrant,
        },
    );
    e.poll_io(1_000_000);
    assert_eq!(drain(&mut e, 1_000_000).1, 0);
    assert_eq!(drain(&mut e, 1_010_000).1, 1920);
    assert_eq!(e.stats().mic.as_str(), "awaiting-grant");
    e.set_recording(false, 1_020_000);
    assert_eq!(next_control(&mut host), GuestMessage::Cork);
}

#[test]
fn hostile_data_closes_the_link_and_silence_goes_on() {
    let (mut e, mut host) = attached(0);
    e.set_recording(true, 0);
    send(
        &mut host,
        HostMessage::CaptureState {
            state: CaptureState::Attached,
        },
    );
    // Far beyond the credit window (40 ms = 7680 bytes).
    send(&mut host, HostMessage::CaptureData(vec![0; 64 * 1024]));
    e.poll_io(10_000);
    assert!(!e.stats().connected);
    assert!(e
        .take_events()
        .iter()
        .any(|ev| matches!(ev, SourceEvent::Disconnected(r) if r.contains("beyond credit"))));
    assert_eq!(e.stats().mic, MicState::Disconnected);
    assert_eq!(drain(&mut e, 10_000).1, 0);
    assert_eq!(drain(&mut e, 30_000).1, 3840);
}

/// A host that takes the connection but is slow to answer the Hello must
/// not make the IO thread spin: it runs at real-time priority, and 200 ms of
/// spinning gets the guest's sound server killed (RLIMIT_RTTIME). Each
/// wake-up posts only what is due, in blocks of at least 10 ms.
#[test]
fn waiting_for_the_hosts_answer_it_sleeps_and_posts_whole_blocks() {
    let (guest, mut host) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut e = engine();
    e.set_recording(true, 0);
    e.attach(Connection::from_unix_stream(guest).unwrap(), 0);
    assert!(matches!(
        read_frame::<GuestMessage, _>(&mut host).unwrap(),
        GuestMessage::CaptureHello(_)
    ));
    let mut now = 0;
    let mut wakeups = 0;
    let mut posted = 0;
    while now < 1_000_000 {
        e.poll_io(now);
        let (audio, silence) = drain(&mut e, now);
        assert!(audio.is_empty());
        posted += silence;
        let next = e.next_wakeup(now);
        assert!(next > now, "the IO thread would spin at {now} usec");
        now = next;
        wakeups += 1;
    }
    assert!(e.stats().connected, "dropped before the stall timeout");
    assert!(wakeups <= 110, "{wakeups} wake-ups in 1 s");
    let expect = spec().usec_to_bytes(now) as usize;
    assert!(expect - posted <= 1920, "{expect} vs {posted}");
}

#[test]
fn a_silent_host_is_dropped_and_the_next_attempt_waits_for_the_interval() {
    let (mut e, _host) = attached(0);
    e.poll_io(2_500_000);
    assert!(!e.stats().connected);
    // The configured 1 s interval: no attempt before it.
    assert!(e.next_wakeup(2_500_000) <= 3_500_000);
    e.poll_io(3_000_000);
    assert!(!e.stats().connected);
}

#[test]
fn latency_follows_the_hosts_capture_clock_while_attached() {
    let (mut e, mut host) = attached(0);
    e.set_recording(true, 0);
    send(
        &mut host,
        HostMessage::CaptureState {
            state: CaptureState::Attached,
        },
    );
    send(&mut host, HostMessage::CaptureData(vec![1; 1920]));
    send(
        &mut host,
        HostMessage::CaptureClock(secure_tunnel_protocol::CaptureReport {
            host_time_usec: 0,
            sent_bytes: 1920,
            delay_usec: 15_000,
            running: true,
            dropped_bytes: 0,
        }),
    );
    e.poll_io(0);
    // Queued 10 ms + 15 ms in the host, nothing posted yet.
    assert_eq!(e.latency_usec(0), 25_000);
    drain(&mut e, 0);
    // Posted everything: the host's 15 ms, growing in real time.
    assert_eq!(e.latency_usec(0), 15_000);
    assert_eq!(e.latency_usec(5_000), 20_000);
}

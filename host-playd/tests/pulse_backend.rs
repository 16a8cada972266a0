//! The real host-playd playing through a real (private) PulseAudio daemon:
//! what the guest sends must come out of the sink bit-exact, and the clock
//! reports must follow the sink's clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{have_pulseaudio, pulse_env, start_playd_env, ChildGuard, Flow, Guest, PrivatePulse};
use secure_tunnel_protocol::HostMessage;

/// 48 kHz stereo s16le.
const BYTES_PER_SEC: u64 = 192_000;

/// A pseudo-random s16le signal (xorshift), whole frames.
fn signal(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn plays_bit_exact_through_pulseaudio_and_reports_its_clock() {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    let socket = dir.path().join("playd.sock");
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &["--pulse-server", &pulse.server, "--sink", "hostsink"],
        pulse_env(dir.path()),
    );

    let recording = dir.path().join("rec.raw");
    let rec_file = std::fs::File::create(&recording).unwrap();
    let parec = Command::new("parec")
        .args(["--server", &pulse.server, "-d", "hostsink.monitor", "--raw"])
        .args(["--format=s16le", "--rate=48000", "--channels=2"])
        .envs(pulse_env(dir.path()))
        .stdin(Stdio::null())
        .stdout(rec_file)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut parec = ChildGuard {
        child: parec,
        name: "parec",
        stderr_path: dir.path().join("none"),
    };
    thread::sleep(Duration::from_millis(300));

    let sent = signal(3 * BYTES_PER_SEC as usize);
    let mut guest = Guest::connect(&socket);
    let buffer = guest.handshake(100_000);
    assert!(
        (4_000..=19_200).contains(&buffer),
        "at most 100 ms buffered (PulseAudio keeps part of it in the sink), got {buffer} bytes"
    );
    let mut flow = Flow::default();
    let mut offset = 0;
    let mut source = |n: usize| {
        let chunk = sent[offset..offset + n].to_vec();
        offset += n;
        chunk
    };
    let started = Instant::now();
    flow.pump(
        &mut guest,
        started + Duration::from_secs(6),
        sent.len() as u64,
        &mut source,
    );
    assert_eq!(flow.sent, sent.len() as u64, "credit let all audio through");

    // The end of the stream is heard, and reported, within a buffer or so.
    let last = flow.clocks.last().unwrap().1.clone();
    assert_eq!(last.received_bytes, flow.sent);
    assert_eq!(last.played_bytes, flow.sent, "{last:?}");
    assert!(!flow
        .others
        .iter()
        .any(|m| matches!(m, HostMessage::Goodbye { .. })));

    // Clock invariants and rate.
    let mut previous = 0;
    for (_, c) in &flow.clocks {
        assert!(c.played_bytes <= c.received_bytes);
        assert!(c.played_bytes >= previous);
        previous = c.played_bytes;
    }
    let playing: Vec<_> = flow
        .clocks
        .iter()
        .filter(|(_, c)| c.playing && c.played_bytes > 0 && c.played_bytes < flow.sent)
        .collect();
    assert!(playing.len() > 50, "{} playing reports", playing.len());
    let (_, c0) = playing[playing.len() / 10];
    let (_, c1) = playing[playing.len() * 9 / 10];
    let played_sec = (c1.played_bytes - c0.played_bytes) as f64 / BYTES_PER_SEC as f64;
    let host_sec = (c1.host_time_usec - c0.host_time_usec) as f64 / 1e6;
    let queued_ms: Vec<u64> = playing
        .iter()
        .map(|(_, c)| (c.received_bytes - c.played_bytes) * 1000 / BYTES_PER_SEC)
        .collect();
    let device_ms = playing
        .iter()
        .map(|(_, c)| c.device_latency_usec)
        .max()
        .unwrap()
        / 1000;
    eprintln!(
        "played {played_sec:.4} s in {host_sec:.4} s of host time; queued {}..{} ms; \
         device latency up to {device_ms} ms; underruns {}; {} reports, {} credits",
        queued_ms.iter().min().unwrap(),
        queued_ms.iter().max().unwrap(),
        last.underruns,
        flow.clocks.len(),
        flow.credits,
    );
    assert!(
        (played_sec / host_sec - 1.0).abs() < 0.01,
        "{played_sec} vs {host_sec}"
    );
    assert!(*queued_ms.iter().max().unwrap() < 400);

    // What the sink played is what the guest sent, sample for sample.
    thread::sleep(Duration::from_millis(300));
    let _ = parec.child.kill();
    let _ = parec.child.wait();
    let recorded = std::fs::read(&recording).unwrap();
    // The host sink is loaded with norewinds=1: a rewind when the stream
    // starts would otherwise rewrite the first milliseconds after the monitor
    // had already captured them. So every sample must arrive.
    let first = recorded
        .chunks_exact(4)
        .position(|f| f != [0, 0, 0, 0])
        .expect("the recording is all silence")
        * 4;
    let needle = recorded
        .get(first..first + 64)
        .expect("recording too short");
    let skipped = sent
        .chunks_exact(4)
        .enumerate()
        .map(|(i, _)| i * 4)
        .find(|&i| sent.get(i..i + 64) == Some(needle))
        .expect("the recorded audio is not the sent signal");
    eprintln!(
        "recording starts {} ms into the signal",
        skipped as u64 * 1000 / BYTES_PER_SEC
    );
    assert_eq!(skipped, 0, "the start of the signal never reached the sink");
    let expected = &sent[skipped..];
    let heard = recorded
        .get(first..first + expected.len())
        .unwrap_or_else(|| panic!("recording ends early: {} bytes", recorded.len()));
    let first_diff = heard.iter().zip(expected).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "recorded audio differs from the sent signal"
    );
    assert!(recorded[first + expected.len()..].iter().all(|&b| b == 0));
    drop(playd);
    drop(pulse);
}

#[test]
fn unreachable_server_rejects_guests_and_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("playd.sock");
    let server = format!("unix:{}", dir.path().join("nothing").display());
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &["--pulse-server", &server],
        pulse_env(dir.path()),
    );
    let mut guest = Guest::connect(&socket);
    guest.send(&secure_tunnel_protocol::GuestMessage::Hello(common::hello(
        50_000,
    )));
    let got = guest.wait_closed(Duration::from_secs(5)).expect("closed");
    assert!(
        matches!(
            got.as_slice(),
            [HostMessage::Reject {
                reason: secure_tunnel_protocol::RejectReason::ServerError,
                ..
            }]
        ),
        "{got:?}"
    );
    thread::sleep(Duration::from_millis(1_500));
    let log = playd.stderr();
    assert!(log.contains("unreachable"), "{log}");
    assert!(log.contains("still unreachable"), "retries: {log}");
}

#[test]
fn losing_pulseaudio_says_goodbye_and_reconnects() {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    let socket = dir.path().join("playd.sock");
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &["--pulse-server", &pulse.server, "--sink", "hostsink"],
        pulse_env(dir.path()),
    );
    let mut guest = Guest::connect(&socket);
    guest.handshake(50_000);
    drop(pulse);
    let got = guest.wait_closed(Duration::from_secs(5)).expect("closed");
    assert!(
        matches!(got.last(), Some(HostMessage::Goodbye { reason }) if reason.contains("lost")),
        "{got:?}"
    );
    // A new server on the same socket is found within a couple of seconds.
    let _pulse = PrivatePulse::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Guest::connect(&socket);
        again.send(&secure_tunnel_protocol::GuestMessage::Hello(common::hello(
            50_000,
        )));
        match again.recv(Duration::from_secs(5)) {
            Some(HostMessage::Accept(_)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}\n{}", playd.stderr()),
        }
        thread::sleep(Duration::from_millis(300));
    }
}

//! The real host-playd binary with the null test backend, driven by fake
//! guests over a unix socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{hello, start_playd, Flow, Guest};
use secure_tunnel_protocol::{encode_frame, GuestMessage, HostMessage, RejectReason};

const SECOND: Duration = Duration::from_secs(1);

fn zeros(n: usize) -> Vec<u8> {
    vec![0; n]
}

fn expect_reject(guest: &Guest, want: RejectReason) {
    let got = guest
        .wait_closed(Duration::from_secs(3))
        .expect("connection should be closed");
    assert!(
        matches!(got.as_slice(), [HostMessage::Reject { reason, .. }] if *reason == want),
        "expected only Reject {want:?}, got {got:?}"
    );
}

#[test]
fn serves_guests_and_survives_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("playd.sock");
    let mut playd = start_playd(
        dir.path(),
        &socket,
        &["--backend", "null", "--handshake-timeout-ms", "500"],
    );

    let mut a = Guest::connect(&socket);
    let buffer = a.handshake(100_000);
    assert_eq!(buffer, 19_200, "100 ms of 48 kHz stereo s16");
    let mut flow = Flow::default();
    let start = Instant::now();
    flow.pump(&mut a, start + SECOND, u64::MAX, &mut zeros);
    assert!(flow.credits > 1, "credit keeps coming while playing");
    let gaps: Vec<u64> = flow
        .clocks
        .windows(2)
        .map(|p| p[1].1.host_time_usec - p[0].1.host_time_usec)
        .collect();
    assert!(
        flow.clocks.len() >= 45,
        "clock reports at least every 20 ms {gaps:?}"
    );
    for pair in flow.clocks.windows(2) {
        let gap = pair[1].1.host_time_usec - pair[0].1.host_time_usec;
        // 20 ms by design; the margin is for a loaded test machine.
        assert!(gap <= 40_000, "{gap} us between clock reports");
    }

    // Bad guests, each on its own connection, while A keeps playing.
    let mut bad_magic = Guest::connect(&socket);
    let mut h = hello(100_000);
    h.magic = *b"XXXX";
    let mut frame = Vec::new();
    encode_frame(&GuestMessage::Hello(h), &mut frame).unwrap();
    bad_magic.send_raw(&frame);

    let mut bad_version = Guest::connect(&socket);
    let mut h = hello(100_000);
    h.version = 99;
    bad_version.send(&GuestMessage::Hello(h));

    let mut huge = Guest::connect(&socket);
    huge.send_raw(&0xFFFF_FFFFu32.to_le_bytes());

    let mut not_hello = Guest::connect(&socket);
    not_hello.send(&GuestMessage::Ping { guest_time_usec: 1 });

    let silent = Guest::connect(&socket);
    let silent_since = Instant::now();

    let mut greedy = Guest::connect(&socket);
    greedy.handshake(100_000);
    greedy.send(&GuestMessage::Audio(vec![0; 19_200]));
    greedy.send(&GuestMessage::Audio(vec![0; 19_200]));

    let mut ragged = Guest::connect(&socket);
    ragged.handshake(100_000);
    ragged.send(&GuestMessage::Audio(vec![0; 6]));

    flow.pump(&mut a, Instant::now() + SECOND / 2, u64::MAX, &mut zeros);

    expect_reject(&bad_magic, RejectReason::BadRequest);
    expect_reject(&bad_version, RejectReason::UnsupportedVersion);
    expect_reject(&huge, RejectReason::BadRequest);
    expect_reject(&not_hello, RejectReason::BadRequest);
    let got = silent
        .wait_closed(Duration::from_secs(3))
        .expect("handshake timeout");
    assert!(got.is_empty(), "{got:?}");
    assert!(silent_since.elapsed() >= Duration::from_millis(450));
    for (name, guest) in [("greedy", &greedy), ("ragged", &ragged)] {
        let got = guest.wait_closed(Duration::from_secs(3)).expect(name);
        assert!(
            matches!(got.last(), Some(HostMessage::Goodbye { .. })),
            "{name}: {got:?}"
        );
    }
    let log = playd.stderr();
    assert!(log.contains("credit breach"), "{log}");
    assert!(log.contains("not whole 4-byte frames"), "{log}");

    // A is unharmed: ping it and stream on.
    let reports_before = flow.clocks.len();
    a.send(&GuestMessage::Ping {
        guest_time_usec: 123_456_789,
    });
    flow.pump(&mut a, Instant::now() + SECOND, u64::MAX, &mut zeros);
    let reports = flow.clocks.len() - reports_before;
    let gaps: Vec<u64> = flow.clocks[reports_before..]
        .windows(2)
        .map(|p| p[1].1.host_time_usec - p[0].1.host_time_usec)
        .collect();
    assert!(
        reports >= 45,
        "{reports} clock reports in a second {gaps:?}"
    );
    assert_eq!(flow.pongs.len(), 1);
    let (echo, pong_host) = flow.pongs[0];
    assert_eq!(echo, 123_456_789);
    let first_host = flow.clocks[0].1.host_time_usec;
    let last_host = flow.clocks.last().unwrap().1.host_time_usec;
    assert!((first_host..=last_host).contains(&pong_host));

    // Clock invariants.
    let mut previous = 0;
    for (_, c) in &flow.clocks {
        assert!(c.played_bytes <= c.received_bytes, "{c:?}");
        assert!(c.received_bytes <= flow.sent);
        assert!(c.played_bytes >= previous, "played went backwards");
        previous = c.played_bytes;
        assert_eq!(c.device_latency_usec, 0);
    }
    // Played bytes advance at the nominal rate, in host time and in ours.
    let (t0, c0) = flow
        .clocks
        .iter()
        .find(|(_, c)| c.played_bytes > 0)
        .unwrap();
    let (t1, c1) = flow.clocks.last().unwrap();
    let played_sec = (c1.played_bytes - c0.played_bytes) as f64 / 192_000.0;
    let host_sec = (c1.host_time_usec - c0.host_time_usec) as f64 / 1e6;
    let wall_sec = t1.duration_since(*t0).as_secs_f64();
    eprintln!("played {played_sec:.4} s in {host_sec:.4} s host time, {wall_sec:.4} s wall");
    assert!(
        (played_sec / host_sec - 1.0).abs() < 0.005,
        "{played_sec} vs {host_sec}"
    );
    assert!(
        (played_sec / wall_sec - 1.0).abs() < 0.03,
        "{played_sec} vs {wall_sec}"
    );
    assert!(c1.playing);
    assert!(
        c1.received_bytes - c1.played_bytes <= 19_200,
        "never more than a buffer queued"
    );

    // Shutdown says goodbye and removes the socket.
    let status = playd.terminate(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}");
    let got = a.wait_closed(Duration::from_secs(2)).expect("closed");
    assert!(
        matches!(got.last(), Some(HostMessage::Goodbye { reason }) if reason.contains("shutting down")),
        "{got:?}"
    );
    // Started as root, the daemon runs sandboxed as nobody and may not
    // delete the file; it says so, and the next start replaces it.
    let log = playd.stderr();
    assert!(
        !socket.exists() || log.contains("the next start replaces it"),
        "socket file removed on exit, or left with a reason:\n{log}"
    );
    let again = start_playd(dir.path(), &socket, &["--backend", "null"]);
    let mut b = Guest::connect(&socket);
    b.handshake(20_000);
    drop(again);
}

#[test]
fn too_many_clients_and_guest_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("playd.sock");
    let _playd = start_playd(
        dir.path(),
        &socket,
        &["--backend", "null", "--max-clients", "1"],
    );
    let mut first = Guest::connect(&socket);
    first.handshake(20_000);
    let mut second = Guest::connect(&socket);
    second.send(&GuestMessage::Hello(hello(20_000)));
    expect_reject(&second, RejectReason::TooManyClients);

    // Once the first leaves, its slot is free again.
    first.send(&GuestMessage::Goodbye {
        reason: "done".into(),
    });
    first
        .wait_closed(Duration::from_secs(2))
        .expect("closed after goodbye");
    let mut third = Guest::connect(&socket);
    assert_eq!(third.handshake(20_000), 3_840);
}

#[test]
fn cork_stops_the_clock_and_flush_counts_as_played() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("playd.sock");
    let _playd = start_playd(dir.path(), &socket, &["--backend", "null"]);
    let mut g = Guest::connect(&socket);
    g.handshake(100_000);
    let mut flow = Flow::default();
    flow.pump(&mut g, Instant::now() + SECOND / 4, u64::MAX, &mut zeros);
    g.send(&GuestMessage::Cork);
    flow.pump(&mut g, Instant::now() + SECOND / 10, u64::MAX, &mut zeros);
    let corked_at = flow.clocks.last().unwrap().1.clone();
    assert!(!corked_at.playing);
    flow.pump(&mut g, Instant::now() + SECOND / 2, u64::MAX, &mut zeros);
    let later = flow.clocks.last().unwrap().1.clone();
    assert!(!later.playing);
    assert_eq!(
        later.played_bytes, corked_at.played_bytes,
        "corked clock stands"
    );
    assert!(later.received_bytes > later.played_bytes);
    g.send(&GuestMessage::Flush);
    let flushed = g
        .wait_for(SECOND, |m| match m {
            HostMessage::Clock(c) if c.played_bytes == c.received_bytes => Some(c.clone()),
            _ => None,
        })
        .expect("a clock report with everything flushed");
    assert_eq!(flushed.received_bytes, later.received_bytes);
}

//! The IO thread's engine against a fake host: a test-only peer on a real
//! unix socket that speaks the protocol by hand. PulseAudio is not involved;
//! time is injected, so pacing and latency are checked exactly.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use secure_tunnel_guest::config::{RawArgs, TunnelConfig};
use secure_tunnel_guest::engine::{Engine, Event};
use secure_tunnel_guest::session::Activity;
use secure_tunnel_protocol::{
    read_frame, write_frame, Accept, ClockReport, GuestMessage, Hello, HostMessage, RejectReason,
    SampleFormat, StreamSpec, PROTOCOL_VERSION, REWIND_PROTOCOL_VERSION,
};

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("st-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("host.sock")
}

fn engine_for(path: &std::path::Path) -> Engine {
    let server = format!("unix:{}", path.display());
    let config = TunnelConfig::from_args(RawArgs {
        server: Some(&server),
        reconnect_interval_msec: Some("100"),
        ..RawArgs::default()
    })
    .unwrap();
    Engine::new(config, spec())
}

/// The fake host's side of a handshake: accepts one guest, reads its Hello
/// and answers Accept.
fn accept_guest(listener: &UnixListener) -> (UnixStream, Hello) {
    let (mut sock, _) = listener.accept().unwrap();
    let GuestMessage::Hello(hello) = read_frame::<GuestMessage, _>(&mut sock).unwrap() else {
        panic!("first message must be Hello");
    };
    write_frame(
        &mut sock,
        &HostMessage::Accept(Accept {
            version: hello.version,
            buffer_bytes: 11_520,
            host_time_usec: 0,
        }),
    )
    .unwrap();
    (sock, hello)
}

/// Polls the engine (with the real clock for the connection helper thread)
/// until it is connected.
fn wait_connected(engine: &mut Engine, now: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !engine.is_connected() {
        assert!(Instant::now() < deadline, "engine did not connect");
        engine.poll_io(now);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn without_a_host_it_consumes_at_real_time() {
    let path = temp_socket("nohost");
    let mut engine = engine_for(&path);
    engine.set_activity(Activity::Running, 1_000_000);
    engine.poll_io(1_000_000);
    // 10 ms blocks of 48 kHz stereo s16: 1920 bytes each, one per 10 ms.
    assert_eq!(engine.render_budget(1_000_000), 1920);
    assert_eq!(engine.render_budget(1_000_000), 0);
    assert_eq!(engine.latency_usec(1_005_000), 5_000);
    assert!(engine.next_wakeup(1_000_000) <= 1_010_000);
    assert_eq!(engine.render_budget(1_010_000), 1920);
    // Over one virtual second exactly one second of audio is consumed.
    let mut total = 0;
    for t in (1_020_000..2_020_000).step_by(1_000) {
        total += engine.render_budget(t);
    }
    assert_eq!(total, 192_000);
    // A closed (suspended) sink renders nothing.
    engine.set_activity(Activity::Suspended, 2_020_000);
    assert_eq!(engine.render_budget(3_000_000), 0);
}

#[test]
fn connected_it_renders_only_granted_bytes_and_reports_host_latency() {
    let path = temp_socket("host");
    let listener = UnixListener::bind(&path).unwrap();
    let mut engine = engine_for(&path);
    engine.set_activity(Activity::Running, 0);

    let fake_host = std::thread::spawn(move || {
        let (mut sock, hello) = accept_guest(&listener);
        assert_eq!(hello.spec, spec());
        assert_eq!(hello.target_latency_usec, 60_000);
        write_frame(&mut sock, &HostMessage::Credit { limit_bytes: 9_600 }).unwrap();
        sock.flush().unwrap();
        sock
    });

    wait_connected(&mut engine, 0);
    let mut host: UnixStream = fake_host.join().unwrap();
    assert!(engine.take_events().contains(&Event::Connected {
        buffer_bytes: 11_520,
        rewinds: true,
    }));

    // Credit arrives; exactly the granted bytes are rendered, then nothing.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut budget = 0;
    while budget == 0 {
        assert!(Instant::now() < deadline, "credit never arrived");
        engine.poll_io(1_000);
        budget = engine.render_budget(1_000);
    }
    assert_eq!(budget, 9_600);
    engine.consume(&vec![7u8; budget], 1_000);
    engine.flush(1_000);
    assert_eq!(engine.render_budget(1_000), 0);

    // The host receives a Ping and the audio, bit for bit.
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut audio = Vec::new();
    while audio.len() < 9_600 {
        match read_frame::<GuestMessage, _>(&mut host).unwrap() {
            GuestMessage::Audio(data) => audio.extend(data),
            GuestMessage::Ping { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(audio.iter().all(|&b| b == 7));

    // The host says 1920 bytes (10 ms) were heard, playing. Without a round
    // trip yet, the report is placed at its arrival time.
    write_frame(
        &mut host,
        &HostMessage::Clock(ClockReport {
            host_time_usec: 500_000,
            received_bytes: 9_600,
            played_bytes: 1_920,
            device_latency_usec: 0,
            underruns: 0,
            playing: true,
        }),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // 9600 - 1920 bytes = 40 ms outstanding at the report.
    while engine.latency_usec(2_000) != 40_000 {
        assert!(Instant::now() < deadline, "clock report not applied");
        engine.poll_io(2_000);
    }
    // 10 ms later the host has played 10 ms more.
    assert_eq!(engine.latency_usec(12_000), 30_000);
}

#[test]
fn a_host_that_goes_away_puts_the_sink_back_on_its_own_clock() {
    let path = temp_socket("goes-away");
    let listener = UnixListener::bind(&path).unwrap();
    let mut engine = engine_for(&path);
    engine.set_activity(Activity::Running, 0);
    let fake_host = std::thread::spawn(move || {
        let (mut sock, _) = accept_guest(&listener);
        write_frame(
            &mut sock,
            &HostMessage::Goodbye {
                reason: "test host leaving".into(),
            },
        )
        .unwrap();
    });
    wait_connected(&mut engine, 0);
    fake_host.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.is_connected() {
        assert!(Instant::now() < deadline, "goodbye not noticed");
        engine.poll_io(1_000);
        std::thread::sleep(Duration::from_millis(2));
    }
    let events = engine.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Disconnected(reason) if reason.contains("test host leaving")
        )),
        "{events:?}"
    );
    // Null-sink pacing again, from the moment of the loss.
    assert_eq!(engine.render_budget(1_000), 1920);
    assert_eq!(engine.render_budget(1_000), 0);
}

/// A host older than rewinds refuses version 3; the engine offers version 1
/// at once (no reconnect interval), connects, and never sends a Rewind.
#[test]
fn an_old_host_is_offered_version_1_at_once() {
    let path = temp_socket("oldhost");
    let listener = UnixListener::bind(&path).unwrap();
    let mut engine = engine_for(&path);
    engine.set_activity(Activity::Running, 0);
    let old_host = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let GuestMessage::Hello(first) = read_frame::<GuestMessage, _>(&mut sock).unwrap() else {
            panic!("first message must be Hello");
        };
        write_frame(
            &mut sock,
            &HostMessage::Reject {
                reason: RejectReason::UnsupportedVersion,
                message: "protocol version 3 is not supported".into(),
            },
        )
        .unwrap();
        drop(sock);
        let (mut sock, _) = listener.accept().unwrap();
        let GuestMessage::Hello(second) = read_frame::<GuestMessage, _>(&mut sock).unwrap() else {
            panic!("first message must be Hello");
        };
        write_frame(
            &mut sock,
            &HostMessage::Accept(Accept {
                version: PROTOCOL_VERSION,
                buffer_bytes: 11_520,
                host_time_usec: 0,
            }),
        )
        .unwrap();
        write_frame(&mut sock, &HostMessage::Credit { limit_bytes: 9_600 }).unwrap();
        (first.version, second.version, sock)
    });
    // Same virtual time throughout: the retry does not wait.
    wait_connected(&mut engine, 0);
    let (first, second, _sock) = old_host.join().unwrap();
    assert_eq!((first, second), (REWIND_PROTOCOL_VERSION, PROTOCOL_VERSION));
    let events = engine.take_events();
    assert!(events.contains(&Event::NoRewinds), "{events:?}");
    assert!(events.contains(&Event::Connected {
        buffer_bytes: 11_520,
        rewinds: false,
    }));
    assert_eq!(engine.rewind(u64::MAX, 0), 0);
}

//! Capture (issue 15), host side, against a real PulseAudio and the real
//! daemon: a guest speaking protocol version 2 records from the host's
//! pinned source — a `module-pipe-source` the test feeds a known signal.
//! Default deny (no source-output at all), allow (bit-exact), grant and
//! revoke over the control socket (the source-output comes and goes), and
//! monitors refused unless allowed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    have_pulseaudio, open_to_everyone, pulse_env, start_playd_env, stereo_spec, ChildGuard, Guest,
    PrivatePulse,
};
use secure_tunnel_protocol::{
    CaptureState, GuestMessage, Hello, HostMessage, RejectReason, CAPTURE_PROTOCOL_VERSION, MAGIC,
};

/// 48 kHz stereo s16: 192 bytes per millisecond.
const BYTES_PER_MS: usize = 192;

struct Stack {
    dir: tempfile::TempDir,
    pulse: PrivatePulse,
    socket: PathBuf,
    control: PathBuf,
    playd: ChildGuard,
    fifo: PathBuf,
}

/// A private PulseAudio with a pipe source `mic`, and host-playd recording
/// from `source` under `config` (TOML).
fn stack(config: &str, source: &str, extra: &[&str]) -> Stack {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mic.fifo");
    let pipe = format!(
        "module-pipe-source source_name=mic file={} format=s16le rate=48000 channels=2",
        fifo.display()
    );
    let pulse = PrivatePulse::start_with(dir.path(), &[&pipe]);
    open_to_everyone(dir.path());
    let socket = dir.path().join("playd.sock");
    let control = dir.path().join("control");
    let config_path = dir.path().join("playd.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut args = vec![
        "--pulse-server".to_owned(),
        pulse.server.clone(),
        "--sink".to_owned(),
        "hostsink".to_owned(),
        "--capture-source".to_owned(),
        source.to_owned(),
        "--control".to_owned(),
        control.display().to_string(),
        "--config".to_owned(),
        config_path.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let playd = start_playd_env(dir.path(), &socket, &args, pulse_env(dir.path()));
    Stack {
        dir,
        pulse,
        socket,
        control,
        playd,
        fifo,
    }
}

impl Stack {
    fn pactl(&self, args: &[&str]) -> String {
        let out = Command::new("pactl")
            .args(["--server", &self.pulse.server])
            .args(args)
            .envs(pulse_env(self.dir.path()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn source_outputs(&self) -> usize {
        self.pactl(&["list", "short", "source-outputs"])
            .lines()
            .count()
    }

    /// Waits until the host has `n` source-outputs; how long it took.
    fn await_source_outputs(&self, n: usize, within: Duration) -> Duration {
        let start = Instant::now();
        while self.source_outputs() != n {
            assert!(
                start.elapsed() < within,
                "{} source-outputs, expected {n}\n{}",
                self.source_outputs(),
                self.playd.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_host-playd"))
            .arg("ctl")
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Feeds the pipe source `signal` in real time, 10 ms at a time, on a
    /// thread, until `stop`; then keeps feeding silence.
    fn feed(&self, signal: Vec<u8>, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
        let fifo = self.fifo.clone();
        thread::spawn(move || {
            // Non-blocking, as a sound card is: while nobody records, the
            // pipe source reads nothing, and what does not fit is dropped
            // (and the stop flag is still seen).
            use std::os::unix::fs::OpenOptionsExt;
            const O_NONBLOCK: i32 = 0o4000;
            let mut pipe = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(&fifo)
                .unwrap();
            let chunk = 10 * BYTES_PER_MS;
            let start = Instant::now();
            let mut fed = 0usize;
            let silence = vec![0u8; chunk];
            while !stop.load(Ordering::SeqCst) {
                let piece = if fed < signal.len() {
                    &signal[fed..(fed + chunk).min(signal.len())]
                } else {
                    &silence[..]
                };
                match pipe.write(piece) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
                fed += piece.len();
                let due = start + Duration::from_micros((fed / BYTES_PER_MS * 1000) as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
        })
    }
}

fn capture_hello() -> Hello {
    Hello {
        magic: MAGIC,
        version: CAPTURE_PROTOCOL_VERSION,
        spec: stereo_spec(),
        target_latency_usec: 40_000,
        stream_name: "guest mic".into(),
    }
}

/// Sends a CaptureHello; returns the Accept's fragment.
fn accept(guest: &mut Guest) -> u32 {
    guest.send(&GuestMessage::CaptureHello(capture_hello()));
    match guest.recv(Duration::from_secs(5)) {
        Some(HostMessage::Accept(a)) => {
            assert_eq!(a.version, CAPTURE_PROTOCOL_VERSION);
            a.buffer_bytes
        }
        other => panic!("expected Accept, got {other:?}"),
    }
}

fn state(guest: &Guest, within: Duration) -> Option<CaptureState> {
    guest.wait_for(within, |m| match m {
        HostMessage::CaptureState { state } => Some(*state),
        _ => None,
    })
}

/// Pseudo-random, so that no shifted copy of it matches by chance.
fn signal(ms: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_u32;
    (0..ms * BYTES_PER_MS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8 | 1
        })
        .collect()
}

/// Collects capture data for `within`, granting credit as it arrives.
fn record(guest: &mut Guest, within: Duration) -> (Vec<u8>, usize) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut clocks = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match guest.recv(left) {
            Some(HostMessage::CaptureData(data)) => {
                got.extend_from_slice(&data);
                guest.send(&GuestMessage::CaptureCredit {
                    limit_bytes: got.len() as u64 + 64 * 1024,
                });
            }
            Some(HostMessage::CaptureClock(report)) => {
                assert!(report.sent_bytes <= got.len() as u64 + 1);
                clocks += 1;
            }
            Some(_) => {}
            None => break,
        }
    }
    (got, clocks)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn capture_is_denied_by_default_and_no_source_output_exists() {
    let s = stack("", "mic", &[]);
    let mut guest = Guest::connect(&s.socket);
    guest.send(&GuestMessage::CaptureHello(capture_hello()));
    match guest.recv(Duration::from_secs(5)) {
        Some(HostMessage::Reject { reason, message }) => {
            assert_eq!(reason, RejectReason::NotAllowed, "{message}");
            assert!(message.contains("may not record"), "{message}");
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    assert_eq!(s.source_outputs(), 0);
    // A playback guest on the same host is not affected.
    let mut player = Guest::connect(&s.socket);
    player.handshake(50_000);
    assert_eq!(s.source_outputs(), 0);
}

#[test]
fn allowed_capture_is_bit_exact_and_the_recording_stream_lives_only_while_asked() {
    let s = stack("[defaults]\ncapture = \"allow\"\n", "mic", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let sig = signal(1500);
    let mut guest = Guest::connect(&s.socket);
    let fragment = accept(&mut guest);
    assert!(fragment > 0 && fragment % 4 == 0, "{fragment}");
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::Idle)
    );
    // Not asked yet: no recording stream on the host.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(s.source_outputs(), 0, "{}", s.playd.stderr());

    guest.send(&GuestMessage::CaptureCredit {
        limit_bytes: 64 * 1024,
    });
    guest.send(&GuestMessage::Uncork);
    assert_eq!(
        state(&guest, Duration::from_secs(3)),
        Some(CaptureState::Attached),
        "{}",
        s.playd.stderr()
    );
    s.await_source_outputs(1, Duration::from_secs(2));
    let feeder = s.feed(sig.clone(), Arc::clone(&stop));
    let (got, clocks) = record(&mut guest, Duration::from_millis(2500));
    let at = find(&got, &sig[..4 * BYTES_PER_MS]).unwrap_or_else(|| {
        panic!(
            "the signal's start never arrived ({} bytes)\n{}",
            got.len(),
            s.playd.stderr()
        )
    });
    let arrived = &got[at..(at + sig.len()).min(got.len())];
    assert_eq!(arrived.len(), sig.len(), "only part of the signal arrived");
    assert!(arrived == &sig[..], "the signal arrived changed");
    assert!(clocks >= 50, "{clocks} capture clock reports in 2.5 s");

    // Cork: the recording stream goes at once.
    guest.send(&GuestMessage::Cork);
    let gone = s.await_source_outputs(0, Duration::from_secs(1));
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::Idle)
    );
    eprintln!("source-output gone {gone:?} after Cork");
    let log = s.playd.stderr();
    assert!(log.contains("capture started"), "{log}");
    assert!(log.contains("capture stopped"), "{log}");
    stop.store(true, Ordering::SeqCst);
    let _ = feeder.join();
}

#[test]
fn granted_capture_flows_only_between_grant_and_revoke() {
    let s = stack("[defaults]\ncapture = \"grant\"\n", "mic", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = s.feed(signal(10), Arc::clone(&stop));
    let mut guest = Guest::connect(&s.socket);
    accept(&mut guest);
    guest.send(&GuestMessage::CaptureCredit {
        limit_bytes: 1 << 30,
    });
    guest.send(&GuestMessage::Uncork);
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::Idle)
    );
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::AwaitingGrant)
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(s.source_outputs(), 0, "recording before any grant");
    let (got, _) = record(&mut guest, Duration::from_millis(200));
    assert!(got.is_empty(), "{} bytes before any grant", got.len());

    let (ok, status) = s.ctl(&["status"]);
    assert!(ok, "{status}");
    let line = status
        .lines()
        .find(|l| l.contains("capture grant (not granted)"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("awaiting-grant"), "{line}");
    let id = line
        .strip_prefix("client ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();

    let (ok, text) = s.ctl(&["grant-capture", &id]);
    assert!(ok, "{text}");
    assert_eq!(
        state(&guest, Duration::from_secs(3)),
        Some(CaptureState::Attached)
    );
    s.await_source_outputs(1, Duration::from_secs(2));
    let (got, _) = record(&mut guest, Duration::from_millis(500));
    assert!(got.len() > 50 * BYTES_PER_MS, "{} bytes granted", got.len());

    let revoked = Instant::now();
    let (ok, text) = s.ctl(&["revoke-capture", &id]);
    assert!(ok, "{text}");
    let gone = s.await_source_outputs(0, Duration::from_secs(1));
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::AwaitingGrant)
    );
    eprintln!(
        "source-output gone {:?} after revoke ({gone:?} polling)",
        revoked.elapsed()
    );
    // Nothing more flows (what was in flight may still land).
    thread::sleep(Duration::from_millis(200));
    let (late, _) = record(&mut guest, Duration::from_millis(300));
    assert!(late.is_empty(), "{} bytes after the revoke", late.len());

    let (ok, text) = s.ctl(&["grant-capture", "999"]);
    assert!(!ok && text.contains("no client 999"), "{text}");
    let log = s.playd.stderr();
    assert!(
        log.contains("capture granted by the administrator"),
        "{log}"
    );
    assert!(
        log.contains("capture revoked by the administrator"),
        "{log}"
    );
    stop.store(true, Ordering::SeqCst);
    let _ = feeder.join();
}

#[test]
fn a_monitor_source_is_refused_unless_allowed() {
    let s = stack("[defaults]\ncapture = \"allow\"\n", "hostsink.monitor", &[]);
    let mut guest = Guest::connect(&s.socket);
    accept(&mut guest);
    guest.send(&GuestMessage::Uncork);
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::Idle)
    );
    assert_eq!(
        state(&guest, Duration::from_secs(3)),
        Some(CaptureState::Unavailable),
        "{}",
        s.playd.stderr()
    );
    assert_eq!(s.source_outputs(), 0);
    let log = s.playd.stderr();
    assert!(log.contains("is the monitor of"), "{log}");
    drop(guest);

    let allowed = stack(
        "[defaults]\ncapture = \"allow\"\n",
        "hostsink.monitor",
        &["--capture-allow-monitor"],
    );
    let mut guest = Guest::connect(&allowed.socket);
    accept(&mut guest);
    guest.send(&GuestMessage::Uncork);
    assert_eq!(
        state(&guest, Duration::from_secs(1)),
        Some(CaptureState::Idle)
    );
    assert_eq!(
        state(&guest, Duration::from_secs(3)),
        Some(CaptureState::Attached),
        "{}",
        allowed.playd.stderr()
    );
    allowed.await_source_outputs(1, Duration::from_secs(2));
}

#[test]
fn the_control_socket_is_private() {
    let s = stack("", "mic", &[]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, text) = s.ctl(&["status"]);
    assert!(ok, "{text}");
    assert!(text.contains("client(s) connected"), "{text}");
    let (ok, text) = s.ctl(&["grant-capture", "1"]);
    assert!(!ok, "{text}");
    let _ = Path::new(&s.control);
}

/// A second capture guest recording on a thread while another guest
/// misbehaves: how many bytes it got, in what time.
fn neighbour(socket: &Path, stop: Arc<AtomicBool>) -> thread::JoinHandle<(usize, Duration)> {
    let mut guest = Guest::connect(socket);
    accept(&mut guest);
    guest.send(&GuestMessage::CaptureCredit {
        limit_bytes: 64 * 1024,
    });
    guest.send(&GuestMessage::Uncork);
    thread::spawn(move || {
        let start = Instant::now();
        let mut got = 0usize;
        while !stop.load(Ordering::SeqCst) {
            match guest.recv(Duration::from_millis(100)) {
                Some(HostMessage::CaptureData(data)) => {
                    got += data.len();
                    guest.send(&GuestMessage::CaptureCredit {
                        limit_bytes: got as u64 + 64 * 1024,
                    });
                }
                Some(HostMessage::CaptureClock(report)) => {
                    assert!(report.sent_bytes <= got as u64 + 64 * 1024);
                }
                Some(HostMessage::Goodbye { reason }) => panic!("neighbour closed: {reason}"),
                _ => {}
            }
        }
        (got, start.elapsed())
    })
}

fn frames(messages: &[GuestMessage]) -> Vec<u8> {
    let mut buf = Vec::new();
    for m in messages {
        secure_tunnel_protocol::encode_frame(m, &mut buf).unwrap();
    }
    buf
}

/// Whether the host said goodbye (or closed) naming `why`.
fn closed_with(guest: &Guest, why: &str) -> bool {
    let got = guest
        .wait_closed(Duration::from_secs(5))
        .expect("the host kept the connection open");
    got.iter().any(|m| match m {
        HostMessage::Goodbye { reason } => reason.contains(why),
        HostMessage::Reject { message, .. } => message.contains(why),
        _ => false,
    })
}

#[test]
fn hostile_capture_guests_are_closed_alone_and_leave_no_recording_stream() {
    let s = stack("[defaults]\ncapture = \"allow\"\n", "mic", &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = s.feed(Vec::new(), Arc::clone(&stop));
    let watch = neighbour(&s.socket, Arc::clone(&stop));
    s.await_source_outputs(1, Duration::from_secs(3));
    let mut most = 1;

    // 1. Cork/Uncork at full speed: 20,000 toggles in one write.
    let mut flood = Guest::connect(&s.socket);
    accept(&mut flood);
    let toggles: Vec<GuestMessage> = (0..20_000)
        .map(|i| {
            if i % 2 == 0 {
                GuestMessage::Uncork
            } else {
                GuestMessage::Cork
            }
        })
        .collect();
    let _ = flood.stream.write_all(&frames(&toggles));
    for _ in 0..20 {
        most = most.max(s.source_outputs());
        thread::sleep(Duration::from_millis(10));
    }
    assert!(closed_with(&flood, "over budget"), "{}", s.playd.stderr());

    // 2. CaptureCredit at full speed.
    let mut flood = Guest::connect(&s.socket);
    accept(&mut flood);
    flood.send(&GuestMessage::Uncork);
    let credits: Vec<GuestMessage> = (1..=100_000u64)
        .map(|i| GuestMessage::CaptureCredit { limit_bytes: i * 4 })
        .collect();
    let _ = flood.stream.write_all(&frames(&credits));
    most = most.max(s.source_outputs());
    assert!(closed_with(&flood, "over budget"), "{}", s.playd.stderr());

    // 3. Credit far beyond anything: data still comes at the source's pace.
    let mut greedy = Guest::connect(&s.socket);
    accept(&mut greedy);
    greedy.send(&GuestMessage::CaptureCredit {
        limit_bytes: u64::MAX / 4 * 4,
    });
    greedy.send(&GuestMessage::Uncork);
    let _ = state(&greedy, Duration::from_secs(3));
    let t = Instant::now();
    let mut got = 0usize;
    while t.elapsed() < Duration::from_millis(1000) {
        if let Some(HostMessage::CaptureData(d)) = greedy.recv(Duration::from_millis(50)) {
            got += d.len();
        }
    }
    most = most.max(s.source_outputs());
    let ms = got / BYTES_PER_MS;
    assert!(ms <= 1300, "{ms} ms of audio in 1 s");
    drop(greedy);

    // 4. Wrong order: playback messages on a capture connection, credit
    //    before any Hello, a second CaptureHello.
    let wrong: [(Vec<GuestMessage>, &str); 4] = [
        (vec![GuestMessage::Audio(vec![0; 4])], "Audio"),
        (vec![GuestMessage::Flush], "Flush"),
        (
            vec![GuestMessage::CaptureHello(capture_hello())],
            "CaptureHello",
        ),
        (vec![GuestMessage::Hello(common::hello(40_000))], "Hello"),
    ];
    for (messages, name) in wrong {
        let mut bad = Guest::connect(&s.socket);
        accept(&mut bad);
        bad.send(&GuestMessage::Uncork);
        let _ = bad.stream.write_all(&frames(&messages));
        assert!(closed_with(&bad, name), "{name}: {}", s.playd.stderr());
    }
    let mut early = Guest::connect(&s.socket);
    early.send(&GuestMessage::CaptureCredit { limit_bytes: 4096 });
    assert!(closed_with(&early, "Hello"), "{}", s.playd.stderr());

    // 5. Closes at every point: right after CaptureHello (while policy and
    //    the Accept are on their way), right after Uncork (while the
    //    recording stream is being created), and after Attached.
    for i in 0..60 {
        let mut g = Guest::connect(&s.socket);
        match i % 3 {
            0 => g.send(&GuestMessage::CaptureHello(capture_hello())),
            1 => {
                let hello = frames(&[
                    GuestMessage::CaptureHello(capture_hello()),
                    GuestMessage::CaptureCredit { limit_bytes: 4096 },
                    GuestMessage::Uncork,
                ]);
                g.send_raw(&hello);
            }
            _ => {
                accept(&mut g);
                g.send(&GuestMessage::Uncork);
                let _ = g.wait_for(Duration::from_secs(2), |m| match m {
                    HostMessage::CaptureState {
                        state: CaptureState::Attached,
                    } => Some(()),
                    _ => None,
                });
            }
        }
        drop(g);
        most = most.max(s.source_outputs());
    }
    // Only the neighbour's recording stream remains.
    s.await_source_outputs(1, Duration::from_secs(3));
    assert!(most <= 3, "{most} source-outputs at once");

    stop.store(true, Ordering::SeqCst);
    let (got, took) = watch.join().unwrap();
    let heard_ms = got / BYTES_PER_MS;
    let took_ms = took.as_millis() as usize;
    eprintln!("neighbour recorded {heard_ms} ms in {took_ms} ms; most source-outputs {most}");
    assert!(
        heard_ms * 10 >= took_ms * 9,
        "the neighbour got {heard_ms} ms of audio in {took_ms} ms"
    );
    let _ = feeder.join();
    s.await_source_outputs(0, Duration::from_secs(2));
    let lines = s.playd.stderr().lines().count();
    assert!(lines < 1_000, "{lines} log lines");
}

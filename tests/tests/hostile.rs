//! Hostile clients against the real host-playd and a real host PulseAudio,
//! while one legitimate guest (the real module in a guest PulseAudio) plays.
//! The legitimate stream must reach the host bit-exact and without a gap,
//! host-playd must survive, and its memory must stay bounded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use secure_tunnel_e2e::{
    proctree, robust, signal, Player, Recorder, TunnelStack, GUEST_SINK, HOST_SINK,
};
use secure_tunnel_protocol::{
    encode_frame, read_frame, FrameReader, GuestMessage, Hello, HostMessage, ProtocolError,
    RejectReason, SampleFormat, StreamSpec, MAGIC, MAX_AUDIO_CHUNK, PROTOCOL_VERSION,
};

/// host-playd's peak resident memory must stay under this through the whole
/// attack (it is ~10 MiB when idle; see docs/robustness.md).
const RSS_BOUND_KIB: u64 = 32 * 1024;
/// How long host-playd may take to close a misbehaving connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// The handshake timeout given to host-playd, bounding slowloris clients.
const HANDSHAKE_TIMEOUT_MS: u64 = 1500;

fn spec() -> StreamSpec {
    StreamSpec {
        format: SampleFormat::S16Le,
        rate: 48_000,
        channel_map: vec![1, 2],
    }
}

fn hello(version: u16, name: &str) -> GuestMessage {
    GuestMessage::Hello(Hello {
        magic: MAGIC,
        version,
        spec: spec(),
        target_latency_usec: 60_000,
        stream_name: name.to_owned(),
    })
}

fn frame(msg: &GuestMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(msg, &mut out).expect("encoding a test frame");
    out
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connecting to host-playd");
    s.set_read_timeout(Some(CLOSE_WITHIN))
        .expect("read timeout");
    s.set_write_timeout(Some(CLOSE_WITHIN))
        .expect("write timeout");
    s
}

/// Reads host messages until host-playd closes the connection; fails if it
/// keeps it open longer than [`CLOSE_WITHIN`].
fn until_closed(s: &mut UnixStream, what: &str) -> Vec<HostMessage> {
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        match read_frame::<HostMessage, _>(s) {
            Ok(m) => got.push(m),
            Err(ProtocolError::Closed) => return got,
            Err(ProtocolError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "{what}: host-playd kept the connection open for {CLOSE_WITHIN:?}; got {got:?}"
                )
            }
            // A reset also counts as closed.
            Err(_) => return got,
        }
        assert!(
            start.elapsed() < CLOSE_WITHIN * 2,
            "{what}: endless replies"
        );
    }
}

/// Under a connection flood host-playd may refuse a connection at once
/// (closed without a word) instead of reading it; `strict` forbids that.
/// Returns whether the case got its Reject.
fn expect_reject(
    socket: &Path,
    bytes: &[u8],
    half_close: bool,
    want: RejectReason,
    what: &str,
    strict: bool,
) -> bool {
    let mut s = connect(socket);
    // host-playd may close before reading everything; a failed write is fine.
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let got = until_closed(&mut s, what);
    if !strict && (got.is_empty() || too_many(&got)) {
        return false;
    }
    assert!(
        matches!(got.as_slice(), [HostMessage::Reject { reason, .. }] if *reason == want),
        "{what}: expected exactly Reject({want:?}) then close, got {got:?}"
    );
    true
}

/// Whether host-playd refused the connection for its connection caps (it
/// may say so with a Reject instead of closing without a word).
fn too_many(got: &[HostMessage]) -> bool {
    matches!(
        got,
        [HostMessage::Reject {
            reason: RejectReason::TooManyClients,
            ..
        }]
    )
}

/// The host messages in `bytes` (a whole reply read at once).
fn decode_all(bytes: &[u8]) -> Vec<HostMessage> {
    let mut r = FrameReader::new();
    r.feed(bytes);
    let mut got = Vec::new();
    while let Ok(Some(m)) = r.next_message::<HostMessage>() {
        got.push(m);
    }
    got
}

/// One round of every malformed-input case; returns how many of the 7
/// Reject cases were answered (the others were refused at once, which only
/// a non-`strict` round allows).
fn protocol_violations(socket: &Path, seed: u32, strict: bool) -> usize {
    // Random bytes (the first 4 make some length; whatever it is, the
    // connection must end in a BadRequest and a close).
    let noise = signal::to_bytes(&signal::pseudo_random(seed, 1024));
    let mut s = connect(socket);
    let _ = s.write_all(&noise);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let got = until_closed(&mut s, "random bytes");
    assert!(
        got.iter().all(|m| matches!(m, HostMessage::Reject { .. })),
        "random bytes got {got:?}"
    );
    let mut answered = 0;

    // A length of 0xFFFFFFFF.
    answered += usize::from(expect_reject(
        socket,
        &[0xff; 4],
        false,
        RejectReason::BadRequest,
        "0xFFFFFFFF length",
        strict,
    ));
    // A length of 0.
    answered += usize::from(expect_reject(
        socket,
        &[0; 4],
        false,
        RejectReason::BadRequest,
        "0 length",
        strict,
    ));
    // A truncated Hello, then end of stream.
    let h = frame(&hello(PROTOCOL_VERSION, "truncated"));
    answered += usize::from(expect_reject(
        socket,
        &h[..h.len() - 3],
        true,
        RejectReason::BadRequest,
        "truncated Hello",
        strict,
    ));
    // A truncated length prefix.
    answered += usize::from(expect_reject(
        socket,
        &h[..2],
        true,
        RejectReason::BadRequest,
        "truncated prefix",
        strict,
    ));
    // A wrong protocol version.
    answered += usize::from(expect_reject(
        socket,
        &frame(&hello(PROTOCOL_VERSION + 41, "v42")),
        false,
        RejectReason::UnsupportedVersion,
        "wrong version",
        strict,
    ));
    // Bad magic.
    let mut bad = hello(PROTOCOL_VERSION, "magic");
    if let GuestMessage::Hello(h) = &mut bad {
        h.magic = *b"PULS";
    }
    answered += usize::from(expect_reject(
        socket,
        &frame(&bad),
        false,
        RejectReason::BadRequest,
        "bad magic",
        strict,
    ));
    // Data before the handshake.
    answered += usize::from(expect_reject(
        socket,
        &frame(&GuestMessage::Audio(vec![0; 4096])),
        false,
        RejectReason::BadRequest,
        "audio before Hello",
        strict,
    ));
    answered
}

/// Handshakes properly, then sends silence beyond the granted credit: the
/// host must say Goodbye and close. (Silence, because this stream is mixed
/// into the host sink with the legitimate one.)
fn beyond_credit(socket: &Path) {
    let mut s = connect(socket);
    s.write_all(&frame(&hello(PROTOCOL_VERSION, "hostile-credit")))
        .expect("sending Hello");
    let mut limit = None;
    let start = Instant::now();
    while limit.is_none() {
        assert!(start.elapsed() < CLOSE_WITHIN, "no Credit after Accept");
        match read_frame::<HostMessage, _>(&mut s).expect("reading the handshake") {
            HostMessage::Credit { limit_bytes } => limit = Some(limit_bytes),
            HostMessage::Reject { reason, message } => {
                panic!("beyond credit: rejected ({reason:?}): {message}")
            }
            _ => {}
        }
    }
    let limit = limit.expect("set above") as usize;
    let mut left = limit + MAX_AUDIO_CHUNK;
    while left > 0 {
        let n = left.min(MAX_AUDIO_CHUNK);
        if s.write_all(&frame(&GuestMessage::Audio(vec![0; n])))
            .is_err()
        {
            break;
        }
        left -= n;
    }
    let got = until_closed(&mut s, "beyond credit");
    assert!(
        got.iter()
            .any(|m| matches!(m, HostMessage::Goodbye { reason } if reason.contains("credit"))),
        "data beyond a credit of {limit} bytes did not end in a credit Goodbye: {got:?}"
    );
}

/// Sends a Hello one byte per second; host-playd must drop the connection
/// at its handshake timeout, or refuse it at once for its per-peer cap on
/// connections in their handshake. Returns how long it lived and whether it
/// was refused (a TooManyClients Reject).
fn slowloris(socket: &Path) -> (Duration, bool) {
    let mut s = connect(socket);
    s.set_nonblocking(true).expect("non-blocking");
    let h = frame(&hello(PROTOCOL_VERSION, "slow"));
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    let end = |got: &[u8]| (start.elapsed(), too_many(&decode_all(got)));
    for byte in h.iter().cycle() {
        if s.write_all(&[*byte]).is_err() {
            return end(&got);
        }
        let step = Instant::now();
        while step.elapsed() < Duration::from_secs(1) {
            match s.read(&mut buf) {
                Ok(0) => return end(&got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return end(&got),
                _ => {}
            }
            assert!(
                start.elapsed() < Duration::from_millis(HANDSHAKE_TIMEOUT_MS) + CLOSE_WITHIN,
                "a one-byte-per-second client outlived the handshake timeout"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
    unreachable!("cycle() never ends")
}

/// Opens `n` connections at once and holds them; returns how many
/// host-playd refused at once (closed without a word, or with a
/// TooManyClients Reject).
fn many_at_once(socket: &Path, n: usize) -> usize {
    let conns: Vec<UnixStream> = (0..n).map(|_| connect(socket)).collect();
    thread::sleep(Duration::from_millis(500));
    let refused = conns
        .iter()
        .filter(|&s| {
            s.set_nonblocking(true).expect("non-blocking");
            let mut b = [0u8; 512];
            let mut r: &UnixStream = s;
            match r.read(&mut b) {
                Ok(n) => n == 0 || too_many(&decode_all(&b[..n])),
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count();
    drop(conns);
    refused
}

/// Connects and disconnects `n` times as fast as possible.
fn churn(socket: &Path, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        match UnixStream::connect(socket) {
            Ok(s) => drop(s),
            // The backlog may be full for a moment; that is host-playd
            // refusing, not failing.
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
    start.elapsed()
}

fn run_attacks(socket: PathBuf, done: Arc<AtomicBool>) -> Vec<String> {
    let mut notes = Vec::new();
    // Strict phase: every case must get its exact answer.
    let answered = protocol_violations(&socket, 1, true);
    assert_eq!(answered, 7);
    beyond_credit(&socket);
    beyond_credit(&socket);
    notes.push("strict round: 8 malformed-input cases and 2 credit breaches answered".into());
    // Slowloris clients take their slots before the flood.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let sock = socket.clone();
            thread::spawn(move || slowloris(&sock))
        })
        .collect();
    thread::sleep(Duration::from_millis(300));

    // Flood phase: malformed input keeps coming while connections flood in.
    let flooding = Arc::new(AtomicBool::new(true));
    let violations = {
        let (sock, flooding) = (socket.clone(), Arc::clone(&flooding));
        thread::spawn(move || {
            // During the flood every slot may be taken (that is the
            // attack), so a round may get nothing but refusals; two rounds
            // after it ends must be answered again. A short flood (seen:
            // 1.6 s on an idle machine) once left no answered round at
            // all when the thread stopped with the flood.
            let (mut rounds, mut answered, mut after) = (0u32, 0usize, 0u32);
            while flooding.load(Ordering::SeqCst) || rounds < 5 || after < 2 {
                if !flooding.load(Ordering::SeqCst) {
                    after += 1;
                }
                answered += protocol_violations(&sock, rounds + 2, false);
                rounds += 1;
            }
            (rounds, answered)
        })
    };
    let (refused, took) = robust::timed(|| many_at_once(&socket, 500));
    notes.push(format!(
        "500 connections at once: {refused} refused at once, held for 0.5 s, took {:.2} s",
        took.as_secs_f64()
    ));
    assert!(
        refused >= 500 - 64,
        "only {refused} of 500 simultaneous connections were refused"
    );
    let took = churn(&socket, 10_000);
    notes.push(format!(
        "10,000 connect/disconnects in {:.2} s ({:.0}/s)",
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64()
    ));
    flooding.store(false, Ordering::SeqCst);
    let (rounds, answered) = violations.join().expect("protocol violation thread");
    notes.push(format!(
        "during the flood and two rounds after: {rounds} rounds of 8 malformed-input cases, \
         {answered} of {} Reject cases answered, the rest refused at once",
        rounds as usize * 7
    ));
    assert!(
        answered > 0,
        "no malformed input was answered during or after the flood"
    );
    let mut timed_out = 0;
    for (i, t) in slow.into_iter().enumerate() {
        let (lived, refused) = t.join().expect("slowloris thread");
        notes.push(format!(
            "slowloris {i}: {} after {:.2} s",
            if refused {
                "refused (per-peer cap)"
            } else {
                "dropped"
            },
            lived.as_secs_f64()
        ));
        if !refused {
            assert!(
                lived >= Duration::from_millis(HANDSHAKE_TIMEOUT_MS / 2),
                "slowloris {i} was dropped after {lived:?}, before its handshake timeout"
            );
            timed_out += 1;
        }
    }
    assert!(
        timed_out > 0,
        "no slowloris client reached its handshake timeout"
    );
    done.store(true, Ordering::SeqCst);
    notes
}

#[test]
fn hostile_clients_do_not_disturb_a_legit_stream() {
    let timeout = HANDSHAKE_TIMEOUT_MS.to_string();
    let mut stack = TunnelStack::start_with(
        &["--handshake-timeout-ms", &timeout, "--log-level", "info"],
        // 250 ms: the claim is that hostile clients do not disturb the
        // stream, not that 60 ms survives a loaded 2-core CI machine (at
        // 60 ms the host stream underruns under unrelated load alone).
        "rate=48000 channels=2 format=s16le latency_msec=250",
    )
    .unwrap_or_else(|e| panic!("starting the tunnel: {e}"));
    let pid = stack.playd.pid();
    let idle = robust::memory(pid).expect("host-playd memory");
    let mut rec =
        Recorder::start(&stack.host, &format!("{HOST_SINK}.monitor")).expect("parec on the host");
    rec.wait_live(Duration::from_secs(5))
        .expect("host monitor live");

    let played = signal::pseudo_random(0x005E_C04E, 20 * 48_000);
    let player = Player::start(&stack.guest, GUEST_SINK, signal::to_bytes(&played))
        .expect("pacat in the guest");
    // Attack only once the legitimate stream flows.
    rec.wait_until(Duration::from_secs(5), "the legit stream", |r| {
        signal::find_offset(&r.samples(), &played[..512]).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));

    let sampler = proctree::PeakSampler::start(move || robust::memory(pid).map(|m| m.rss_kib));
    let done = sampler.done_flag();
    let (notes, attack_time) = robust::timed(|| run_attacks(stack.socket.clone(), done));
    let peak = sampler.stop();
    assert!(
        stack.playd.is_alive(),
        "host-playd died under attack\n{}",
        stack.playd.log_tail()
    );
    let after = robust::memory(pid).expect("host-playd memory");

    player
        .wait(Duration::from_secs(40))
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let recording = rec
        .wait_until(Duration::from_secs(5), "the whole legit signal", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .unwrap_or_else(|e| {
            let why = signal::locate_bit_exact(&rec.snapshot().samples(), &played, 256);
            panic!("{e}\n{}\n{}", why.err().unwrap_or_default(), stack.logs())
        });
    let offset = signal::locate_bit_exact(&recording.samples(), &played, 256).expect("located");

    for n in &notes {
        println!("hostile: {n}");
    }
    println!(
        "hostile: attacks took {:.1} s; legit stream of {} frames bit-exact and contiguous at host frame {}",
        attack_time.as_secs_f64(),
        played.len() / 2,
        offset / 2
    );
    println!(
        "hostile: host-playd RSS idle {} KiB, sampled peak {} KiB, after {} KiB, VmHWM {} KiB (bound {RSS_BOUND_KIB} KiB)",
        idle.rss_kib,
        peak,
        after.rss_kib,
        after.hwm_kib
    );
    assert!(
        after.hwm_kib < RSS_BOUND_KIB,
        "host-playd peaked at {} KiB, above the {RSS_BOUND_KIB} KiB bound",
        after.hwm_kib
    );
    assert!(stack.playd.is_alive(), "host-playd exited");
}

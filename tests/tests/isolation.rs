//! Issue 10: one guest can never hurt another guest or the host. Each test
//! starts a real host PulseAudio and the real host-playd, keeps a
//! legitimate protocol-level guest playing (it checks its clock reports and
//! the host stream's underrun counter), attacks with valid protocol-v1
//! messages only, and checks what the neighbour and the host saw.
//!
//! The tests run one at a time (they measure timing on a shared 2-core
//! machine); each is bounded in time.

use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard, PoisonError},
    thread,
    time::{Duration, Instant},
};

use secure_tunnel_e2e::{
    find_sink, host_daemon, proctree, robust, sink_input_count,
    wire::{frames, hello, test_spec, Client, Handshake, Target},
    HostPlayd, LegitGuest, Player, PulseDaemon, TestDir, HOST_SINK,
};
use secure_tunnel_protocol::{
    GuestMessage, Hello, HostMessage, MAGIC, PROTOCOL_VERSION, REWIND_PROTOCOL_VERSION,
};

/// host-playd's total resident memory (every process) under a flood.
const RSS_BOUND_KIB: u64 = 64 * 1024;
/// The legitimate guest's target latency: what a loaded 2-core CI machine
/// sustains without underruns when nobody attacks.
const LEGIT_LATENCY_USEC: u32 = 200_000;
/// Longest silence between two clock reports the neighbour may see.
const MAX_CLOCK_GAP: Duration = Duration::from_millis(200);
/// The minimum-latency floor host-playd applies by default (issue 10: "a
/// sane default of at least 10 ms").
const LATENCY_FLOOR_USEC: u64 = 10_000;

/// One test at a time: they measure timing.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A host PulseAudio and host-playd on a unix socket and on TCP. The
/// legitimate guest connects over TCP from 127.0.0.2, the only TCP peer the
/// policy allows: its identity (an IP address) is not the attackers' (uid 0
/// on the unix socket), as a victim VM's is not an attacker VM's.
struct Host {
    // Drop order: host-playd before the host daemon.
    playd: HostPlayd,
    pulse: PulseDaemon,
    unix: Target,
    /// From 127.0.0.2: allowed.
    guest_tcp: Target,
    /// From 127.0.0.1: denied.
    denied_tcp: Target,
    socket: PathBuf,
    _config: TestDir,
}

/// Appended to every test's configuration.
const GUEST_TCP_RULE: &str =
    "\n[[rule]]\nname = \"victim-vm\"\ntcp = \"127.0.0.2/32\"\nallow = true\nmax_streams = 4\n";

impl Host {
    fn start(args: &[&str]) -> Self {
        Self::start_config(args, None)
    }

    /// With `config` (TOML, the victim's TCP rule appended) as host-playd's
    /// --config.
    fn start_config(args: &[&str], config: Option<&str>) -> Self {
        let pulse = host_daemon().expect("starting the host PulseAudio");
        let socket = pulse.dir().join("playd.sock");
        let port = free_port();
        // The victim connects from 127.0.0.2 (loopback's own source
        // address would be 127.0.0.1 whatever the destination).
        let guest_tcp = Target::TcpFrom(
            Ipv4Addr::new(127, 0, 0, 2),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        );
        let denied_tcp = Target::Tcp(format!("127.0.0.1:{port}").parse().expect("addr"));
        let dir = TestDir::new("config").expect("config dir");
        let path = dir.path().join("host-playd.toml");
        let text = format!("{}{GUEST_TCP_RULE}", config.unwrap_or(""));
        std::fs::write(&path, text).expect("writing the config");
        let mut argv: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        argv.extend([
            "--listen".to_owned(),
            denied_tcp.listen_arg(),
            "--config".to_owned(),
            path.display().to_string(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let playd =
            HostPlayd::start_with(&socket, Some(&pulse), &argv).expect("starting host-playd");
        Self {
            playd,
            pulse,
            unix: Target::Unix(socket.clone()),
            guest_tcp,
            denied_tcp,
            socket,
            _config: dir,
        }
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.playd.log_tail(), self.pulse.log_tail())
    }

    /// The victim, playing, with its first clock reports in.
    fn legit(&self) -> LegitGuest {
        let g = LegitGuest::start(&self.guest_tcp, "legit", LEGIT_LATENCY_USEC)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        g.wait_clocks(10, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        g
    }
}

/// A policy under which one uid may hold many streams (the tests' guests
/// all run as the same user), so that only the behaviour under test limits
/// them.
const ROOMY: &str = "[defaults]\nmax_streams = 64\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The ways a guest can leave right after (or during) its handshake.
#[derive(Debug, Clone, Copy)]
enum QuickClose {
    /// Hello and Goodbye in one write, then close.
    HelloGoodbye,
    /// Hello, close.
    HelloClose,
    /// Hello, then a frame that does not decode.
    HelloGarbage,
    /// Hello, half-close, close.
    HelloHalfClose,
    /// Hello, Cork, Flush, SetLatency in one write, close: while the host
    /// stream is being created.
    HelloControlsClose,
    /// Hello and audio before any Accept, close.
    HelloAudioClose,
    /// Wait for Accept, close.
    AfterAccept,
    /// Wait for Accept, send half an audio frame, close.
    MidAudio,
    /// Half a Hello, close.
    PartialHello,
    /// Protocol 3: wait for Accept, send audio and withdraw it all with a
    /// Rewind in one write, close.
    RewindClose,
}

const QUICK_CLOSES: [QuickClose; 10] = [
    QuickClose::HelloGoodbye,
    QuickClose::HelloClose,
    QuickClose::HelloGarbage,
    QuickClose::HelloHalfClose,
    QuickClose::HelloControlsClose,
    QuickClose::HelloAudioClose,
    QuickClose::AfterAccept,
    QuickClose::MidAudio,
    QuickClose::PartialHello,
    QuickClose::RewindClose,
];

/// One quick connection; false if host-playd refused it at connect.
fn quick_close(target: &Target, how: QuickClose) -> bool {
    let Ok(mut c) = Client::connect(target) else {
        return false;
    };
    let h = hello("quick", 60_000);
    let garbage = [4u8, 0, 0, 0, 99, 0, 0, 0]; // a frame with tag 99
    let _ = match how {
        QuickClose::HelloGoodbye => c.send(&[
            h,
            GuestMessage::Goodbye {
                reason: "bye".into(),
            },
        ]),
        QuickClose::HelloClose => c.send(&[h]),
        QuickClose::HelloGarbage => {
            let mut b = frames(&[h]);
            b.extend_from_slice(&garbage);
            c.send_raw(&b)
        }
        QuickClose::HelloHalfClose => c
            .send(&[h])
            .and_then(|()| c.conn().shutdown(Shutdown::Write)),
        QuickClose::HelloControlsClose => c.send(&[
            h,
            GuestMessage::Cork,
            GuestMessage::Flush,
            GuestMessage::SetLatency {
                target_latency_usec: 1_000,
            },
            GuestMessage::Uncork,
        ]),
        QuickClose::HelloAudioClose => c.send(&[h, GuestMessage::Audio(vec![0; 4096])]),
        QuickClose::AfterAccept => {
            let _ = c.handshake(&h, Duration::from_secs(2));
            Ok(())
        }
        QuickClose::RewindClose => {
            let mut h3 = h;
            if let GuestMessage::Hello(hello) = &mut h3 {
                hello.version = REWIND_PROTOCOL_VERSION;
            }
            if let Handshake::Accepted { credit, .. } = c.handshake(&h3, Duration::from_secs(2)) {
                let audio = within(credit);
                let bytes = match &audio {
                    GuestMessage::Audio(a) => a.len() as u64,
                    _ => 0,
                };
                let _ = c.send(&[audio, GuestMessage::Rewind { bytes }]);
            }
            Ok(())
        }
        QuickClose::MidAudio => {
            if let Handshake::Accepted { credit, .. } = c.handshake(&h, Duration::from_secs(2)) {
                let b = frames(&[within(credit)]);
                let _ = c.send_raw(&b[..b.len() / 2]);
            }
            Ok(())
        }
        QuickClose::PartialHello => {
            let b = frames(&[h]);
            c.send_raw(&b[..b.len() / 2])
        }
    };
    true
}

#[test]
fn quick_closes_leave_no_host_stream_behind() {
    let _serial = serial();
    let host = Host::start_config(&["--max-clients", "32"], Some(ROOMY));
    let legit = host.legit();
    let baseline = sink_input_count(&host.pulse).expect("counting sink-inputs");
    assert_eq!(
        baseline,
        1,
        "only the legitimate guest plays\n{}",
        host.logs()
    );

    const N: usize = 1_000;
    const THREADS: usize = 4;
    let ((refused, kinds), took) = robust::timed(|| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let target = host.unix.clone();
                thread::spawn(move || {
                    let mut refused = 0;
                    for i in (t..N).step_by(THREADS) {
                        if !quick_close(&target, QUICK_CLOSES[i % QUICK_CLOSES.len()]) {
                            refused += 1;
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    refused
                })
            })
            .collect();
        let refused: usize = handles
            .into_iter()
            .map(|h| h.join().expect("quick-close thread"))
            .sum();
        (refused, QUICK_CLOSES.len())
    });
    let closed_at = Instant::now();
    println!(
        "isolation: {N} quick connections ({kinds} kinds of close, {THREADS} at a time) in \
         {:.1} s, {refused} refused at connect",
        took.as_secs_f64()
    );
    let mut count = usize::MAX;
    let back = wait_for(Duration::from_secs(2), || {
        count = sink_input_count(&host.pulse).unwrap_or(usize::MAX);
        count == baseline
    });
    assert!(
        back,
        "2 s after {N} quick connections the host has {count} sink-inputs, not {baseline}\n{}",
        host.logs()
    );
    println!(
        "isolation: host sink-inputs back to {baseline} {:.2} s after the last close",
        closed_at.elapsed().as_secs_f64()
    );
    // The host's own applications can still play.
    let beep = vec![0x10u8; 48_000 * 4 / 5];
    Player::play(&host.pulse, HOST_SINK, beep, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("a host pacat cannot play: {e}\n{}", host.logs()));
    let r = legit.stop();
    assert!(r.ended.is_none(), "the legitimate guest was dropped: {r:?}");
    assert!(host.playd.log().contains("listening"), "host-playd log");
}

/// Control messages a flooder sends, one kind per flooder.
#[derive(Debug, Clone, Copy)]
enum Flood {
    Cork,
    Uncork,
    CorkUncork,
    Flush,
    SetLatency,
    Ping,
    /// Protocol 3: one frame of audio and its rewind, over and over (each
    /// costs the player a write and a seek on the sound server).
    Rewind,
}

const FLOODS: [Flood; 7] = [
    Flood::Cork,
    Flood::Uncork,
    Flood::CorkUncork,
    Flood::Flush,
    Flood::SetLatency,
    Flood::Ping,
    Flood::Rewind,
];

fn flood_batch(kind: Flood) -> Vec<u8> {
    let msgs: Vec<GuestMessage> = (0..256u32)
        .map(|i| match kind {
            Flood::Cork => GuestMessage::Cork,
            Flood::Uncork => GuestMessage::Uncork,
            Flood::CorkUncork if i % 2 == 0 => GuestMessage::Cork,
            Flood::CorkUncork => GuestMessage::Uncork,
            Flood::Flush => GuestMessage::Flush,
            Flood::SetLatency => GuestMessage::SetLatency {
                target_latency_usec: if i % 2 == 0 { 1_000 } else { 2_000_000 },
            },
            Flood::Ping => GuestMessage::Ping {
                guest_time_usec: u64::from(i),
            },
            Flood::Rewind if i % 2 == 0 => GuestMessage::Audio(vec![0x11; 4]),
            Flood::Rewind => GuestMessage::Rewind { bytes: 4 },
        })
        .collect();
    frames(&msgs)
}

#[derive(Debug, Default)]
struct FloodOutcome {
    sent: u64,
    connections: u32,
    closes: Vec<String>,
}

/// Floods `kind` at full speed until `until`; when host-playd closes the
/// flooder, it reconnects after 100 ms.
fn flood(target: &Target, kind: Flood, until: Instant) -> FloodOutcome {
    let batch = flood_batch(kind);
    let mut out = FloodOutcome::default();
    while Instant::now() < until {
        let Ok(mut c) = Client::connect(target) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        out.connections += 1;
        let mut greeting = hello("flooder", 60_000);
        if let (Flood::Rewind, GuestMessage::Hello(h)) = (kind, &mut greeting) {
            h.version = REWIND_PROTOCOL_VERSION;
        }
        match c.handshake(&greeting, Duration::from_secs(2)) {
            Handshake::Accepted { .. } => {}
            other => {
                out.closes.push(format!("handshake: {other:?}"));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let _ = c.conn().set_write_timeout(Some(Duration::from_secs(1)));
        let why = loop {
            if Instant::now() >= until {
                break None;
            }
            if let Err(e) = c.send_raw(&batch) {
                break Some(e.to_string());
            }
            out.sent += 256;
        };
        if let Some(why) = why {
            let goodbye = c
                .until_closed(Duration::from_millis(500))
                .unwrap_or_else(|got| got)
                .into_iter()
                .find_map(|m| match m {
                    HostMessage::Goodbye { reason } => Some(reason),
                    _ => None,
                });
            out.closes.push(goodbye.unwrap_or(why));
            thread::sleep(Duration::from_millis(100));
        }
    }
    out
}

#[test]
fn control_floods_do_not_disturb_a_neighbour() {
    let _serial = serial();
    let mut host = Host::start_config(&["--max-clients", "32"], Some(ROOMY));
    let pid = host.playd.pid();
    let legit = host.legit();
    let idle = proctree::tree_rss_kib(pid);

    let sampler = proctree::PeakSampler::start(move || Some(proctree::tree_rss_kib(pid)));
    legit.new_window();
    let until = Instant::now() + Duration::from_secs(15);
    let flooders: Vec<_> = FLOODS
        .iter()
        .map(|&kind| {
            let target = host.unix.clone();
            (kind, thread::spawn(move || flood(&target, kind, until)))
        })
        .collect();
    let outcomes: Vec<(Flood, FloodOutcome)> = flooders
        .into_iter()
        .map(|(k, h)| (k, h.join().expect("flooder")))
        .collect();
    let r = legit.report();
    let peak = sampler.stop();

    for (kind, o) in &outcomes {
        let mut closes = o.closes.clone();
        closes.dedup();
        println!(
            "isolation: {kind:?} flood: {} messages in 15 s over {} connection(s), {} ended \
             early (host Goodbye, or the write or handshake failing): {:?}",
            o.sent,
            o.connections,
            o.closes.len(),
            closes.iter().take(3).collect::<Vec<_>>()
        );
        // A flooder's handshake refused with ServerError would mean the
        // host (or its player process) failed an honest open while others
        // flooded.
        let refused: Vec<_> = o
            .closes
            .iter()
            .filter(|c| c.contains("handshake") && c.contains("ServerError"))
            .collect();
        assert!(
            refused.is_empty(),
            "{kind:?} flood: {refused:?}\n{}",
            host.logs()
        );
        if matches!(kind, Flood::Rewind) {
            assert!(
                o.closes.iter().any(|c| c.contains("rewinds per second")),
                "the rewind flooder was never stopped by its budget: {closes:?}"
            );
        }
    }
    println!(
        "isolation: neighbour during the floods: {} clock reports, longest gap {:.0} ms, {} \
         underruns; host-playd RSS (all processes) idle {idle} KiB, peak {peak} KiB",
        r.clocks,
        r.max_clock_gap.as_secs_f64() * 1e3,
        r.underruns
    );
    assert!(
        host.playd.is_alive(),
        "host-playd died under the floods\n{}",
        host.logs()
    );
    assert!(
        r.ended.is_none(),
        "the neighbour was dropped: {r:?}\n{}",
        host.logs()
    );
    assert_eq!(
        r.underruns,
        0,
        "the neighbour underran: {r:?}\n{}",
        host.logs()
    );
    assert!(
        r.max_clock_gap <= MAX_CLOCK_GAP,
        "the neighbour saw no clock report for {:?}: {r:?}",
        r.max_clock_gap
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "host-playd's processes peaked at {peak} KiB, above the {RSS_BOUND_KIB} KiB bound"
    );
}

/// `hold-peers` holding `n` connections to `target` for `secs`, as `uid`
/// when given (through setpriv); returns once they are open.
fn hold_peers(target: &Target, n: usize, secs: u32, uid: Option<u32>) -> Child {
    let exe = env!("CARGO_BIN_EXE_hold-peers");
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .arg(target.to_string())
        .arg(n.to_string())
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting hold-peers");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("hold-peers stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading hold-peers");
    assert!(line.starts_with("holding"), "hold-peers said {line:?}");
    child
}

#[test]
fn denied_peers_cannot_lock_out_a_guest() {
    let _serial = serial();
    if !is_root() {
        panic!("this test needs root to run a denied peer as another uid (setpriv)");
    }
    let config = "[defaults]\nunix = \"allow\"\ntcp = \"deny\"\nmax_streams = 8\n\n\
                  [[rule]]\nname = \"denied-user\"\nunix_uid = 65534\nallow = false\n";
    let host = Host::start_config(&[], Some(config));
    let (denied_tcp, allowed_tcp) = (host.denied_tcp.clone(), host.guest_tcp.clone());
    let legit = host.legit();

    const HELD: usize = 64;
    let mut holders = [
        hold_peers(&host.unix, HELD, 30, Some(65534)),
        hold_peers(&denied_tcp, HELD, 30, None),
    ];
    // Let them take whatever they can.
    thread::sleep(Duration::from_secs(1));
    let mut report = String::new();
    let mut slowest = Duration::ZERO;
    for (name, target) in [("unix", &host.unix), ("tcp", &allowed_tcp)] {
        for i in 0..10 {
            let mut c = Client::connect(target).expect("connecting the guest");
            let start = Instant::now();
            let h = c.handshake(&hello("probe", 60_000), Duration::from_secs(2));
            let took = start.elapsed();
            let _ = writeln!(report, "{name} guest {i}: {took:?} {h:?}");
            assert!(
                matches!(h, Handshake::Accepted { .. }) && took <= Duration::from_millis(500),
                "with {HELD} denied unix and {HELD} denied tcp connections held, a guest on \
                 {name} got {h:?} after {took:?}\n{report}\n{}",
                host.logs()
            );
            slowest = slowest.max(took);
            let _ = c.send(&[GuestMessage::Goodbye {
                reason: "probe done".into(),
            }]);
            let _ = c.until_closed(Duration::from_secs(2));
        }
    }
    for h in &mut holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    let r = legit.stop();
    println!(
        "isolation: with {HELD} denied unix + {HELD} denied tcp connections held, 20 guests \
         accepted, slowest in {:.1} ms; neighbour: {} underruns, longest clock gap {:.0} ms",
        slowest.as_secs_f64() * 1e3,
        r.underruns,
        r.max_clock_gap.as_secs_f64() * 1e3
    );
    assert!(r.ended.is_none(), "the neighbour was dropped: {r:?}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The floor (`min_latency_ms`, 10 ms by default) bounds the host *stream's*
/// buffer, and PulseAudio derives the sink's latency from it: with
/// ADJUST_LATENCY and its default minreq (a quarter of the buffer) the sink
/// runs at (tlength − 2·minreq)/2, a quarter of the buffer — 2.5 ms for the
/// 10 ms floor, where an unbounded 1 ms request drove it to 0.25–0.5 ms.
/// Holding the sink itself at 10 ms would need a 40 ms host buffer for every
/// guest, against the 10 ms end-to-end latency the module offers; an
/// administrator who wants that sets `min_latency_ms = 40`
/// (docs/host-design.md, "The latency floor").
const SINK_FLOOR_USEC: u64 = LATENCY_FLOOR_USEC / 4;

#[test]
fn a_tiny_latency_request_leaves_the_host_sink_at_the_floor() {
    let _serial = serial();
    let host = Host::start(&[]);
    let tiny = LegitGuest::start(&host.unix, "tiny", 1_000)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.logs()));
    // And one that asks for it later.
    let mut later = Client::connect(&host.unix).expect("connecting");
    let h = later.handshake(&hello("later", 200_000), Duration::from_secs(3));
    let Handshake::Accepted { credit, .. } = h else {
        panic!("{h:?}");
    };
    later
        .send(&[
            within(credit),
            GuestMessage::SetLatency {
                target_latency_usec: 1_000,
            },
        ])
        .expect("SetLatency");
    thread::sleep(Duration::from_secs(1));
    let mut lowest = u64::MAX;
    for _ in 0..5 {
        let sink = find_sink(&host.pulse, HOST_SINK).expect("the host sink");
        lowest = lowest.min(sink.configured_latency_usec.unwrap_or(0));
        thread::sleep(Duration::from_millis(100));
    }
    drop(tiny);
    println!("isolation: 1 ms latency requests leave the host sink at {lowest} usec");
    assert!(
        lowest >= SINK_FLOOR_USEC,
        "a guest asking 1 ms drove the host sink to {lowest} usec, below the {SINK_FLOOR_USEC} \
         usec that the {LATENCY_FLOOR_USEC} usec buffer floor gives\n{}",
        host.logs()
    );
}

/// Characters that must never reach a log or the host mixer raw: they forge
/// log lines, reorder or hide text.
fn is_hostile_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c,
            '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}' | '\u{180E}')
}

fn hostile_chars_in(text: &str) -> Vec<(usize, char)> {
    text.char_indices()
        .filter(|&(_, c)| is_hostile_char(c))
        .take(10)
        .collect()
}

const HOSTILE_TEXTS: [&str; 4] = [
    "legit\u{2028}host-playd[1]: INFO FORGED line\u{2029}para",
    "\u{202E}evil\u{202D}\u{2066}iso\u{2069}\u{200B}zw\u{200D}\u{FEFF}\u{2060}",
    "ctl\u{1b}[31mred\u{7}\u{85}\r\nFORGED",
    "\u{61C}\u{200E}\u{200F}\u{180E}mark",
];

/// Up to 25 ms of silence, within `credit`.
fn within(credit: u64) -> GuestMessage {
    let n = (credit as usize).min(4_800) / 4 * 4;
    GuestMessage::Audio(vec![0; n.max(4)])
}

#[test]
fn hostile_text_never_reaches_the_log_or_the_mixer_raw() {
    let _serial = serial();
    let host = Host::start_config(&["--log-level", "debug"], Some(ROOMY));
    let legit = host.legit();
    let mut mixer = String::new();
    let mut outcomes = Vec::new();
    for text in HOSTILE_TEXTS {
        let mut c = Client::connect(&host.unix).expect("connecting");
        let h = GuestMessage::Hello(Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            spec: test_spec(),
            target_latency_usec: 60_000,
            stream_name: text.to_owned(),
        });
        let got = c.handshake(&h, Duration::from_secs(3));
        if let Handshake::Accepted { credit, .. } = got {
            let _ = c.send(&[within(credit)]);
            thread::sleep(Duration::from_millis(300));
            mixer.push_str(
                &host
                    .pulse
                    .pactl_ok(&["list", "sink-inputs"])
                    .expect("pactl list sink-inputs"),
            );
        }
        outcomes.push(format!("{got:?}"));
        let _ = c.send(&[GuestMessage::Goodbye {
            reason: text.to_owned(),
        }]);
        let _ = c.until_closed(Duration::from_secs(3));
    }
    // Goodbye reasons from a guest that played.
    for text in HOSTILE_TEXTS {
        let mut c = Client::connect(&host.unix).expect("connecting");
        let got = c.handshake(&hello("plain", 60_000), Duration::from_secs(3));
        let Handshake::Accepted { credit, .. } = got else {
            panic!("{got:?}");
        };
        let _ = c.send(&[
            within(credit),
            GuestMessage::Goodbye {
                reason: text.to_owned(),
            },
        ]);
        let _ = c.until_closed(Duration::from_secs(3));
    }
    thread::sleep(Duration::from_millis(300));
    let _ = legit.stop();
    let log = host.playd.log();
    for o in &outcomes {
        println!("isolation: hostile stream name: {o}");
    }
    let in_log = hostile_chars_in(&log);
    let in_mixer = hostile_chars_in(&mixer);
    println!(
        "isolation: raw hostile characters in the mixer: {in_mixer:?}; in the log: {in_log:?}"
    );
    assert!(
        in_mixer.is_empty() && in_log.is_empty(),
        "raw hostile characters in `pactl list sink-inputs`: {in_mixer:?}, in host-playd's log: \
         {in_log:?}\n{mixer}\n{}",
        host.playd.log_tail()
    );
}

#[test]
fn threads_do_not_grow_with_guests() {
    let _serial = serial();
    let host = Host::start_config(&["--max-clients", "32"], Some(ROOMY));
    let pid = host.playd.pid();
    let first = host.legit();
    thread::sleep(Duration::from_millis(500));
    let one = proctree::tree_threads(pid);
    let rss_one = proctree::tree_rss_kib(pid);
    let more: Vec<LegitGuest> = (0..16)
        .map(|i| {
            LegitGuest::start(&host.unix, &format!("guest-{i}"), LEGIT_LATENCY_USEC)
                .unwrap_or_else(|e| panic!("guest {i}: {e}\n{}", host.logs()))
        })
        .collect();
    for g in &more {
        g.wait_clocks(5, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", host.logs()));
    }
    let seventeen = proctree::tree_threads(pid);
    let rss_seventeen = proctree::tree_rss_kib(pid);
    let processes = proctree::process_tree(pid).len();
    drop(more);
    drop(first);
    println!(
        "isolation: host-playd ({processes} processes) has {one} threads and {rss_one} KiB with \
         1 guest, {seventeen} threads and {rss_seventeen} KiB with 17"
    );
    assert!(
        seventeen <= one,
        "host-playd's threads grew from {one} with 1 guest to {seventeen} with 17"
    );
}

/// What a reject or host goodbye must not tell a guest.
fn host_paths(host: &Host) -> Vec<String> {
    let mut v: Vec<String> = ["/tmp/", "/run/", "/home/", "/etc/", "/var/", "unix:"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.push(host.pulse.dir().display().to_string());
    v.push(host.socket.display().to_string());
    v.push(std::env::temp_dir().display().to_string());
    v
}

fn texts_from(msgs: &[HostMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            HostMessage::Reject { reason, message } => {
                Some(format!("Reject({reason:?}): {message}"))
            }
            HostMessage::Goodbye { reason } => Some(format!("Goodbye: {reason}")),
            _ => None,
        })
        .collect()
}

fn answer_to(target: &Target, bytes: &[u8]) -> Vec<String> {
    let mut c = Client::connect(target).expect("connecting");
    let _ = c.send_raw(bytes);
    let got = c.until_closed(Duration::from_secs(5)).unwrap_or_else(|g| g);
    texts_from(&got)
}

#[test]
fn reject_texts_name_no_host_paths() {
    let _serial = serial();
    let host = Host::start_config(
        &["--max-clients", "1"],
        Some("[defaults]\nmax_streams = 4\nrate_max = 48000\n"),
    );
    let legit = host.legit();
    let mut texts = Vec::new();
    let mut v42 = hello("v42", 60_000);
    let mut magic = hello("magic", 60_000);
    let mut fast = hello("fast", 60_000);
    if let (GuestMessage::Hello(a), GuestMessage::Hello(b), GuestMessage::Hello(c)) =
        (&mut v42, &mut magic, &mut fast)
    {
        a.version = 42;
        b.magic = *b"PULS";
        c.spec.rate = 96_000;
    }
    for m in [v42, magic, fast] {
        texts.extend(answer_to(&host.unix, &frames(&[m])));
    }
    texts.extend(answer_to(&host.unix, &[0xff; 4]));
    texts.extend(answer_to(&host.unix, &frames(&[GuestMessage::Cork])));
    // One guest plays already and --max-clients is 1.
    texts.extend(answer_to(&host.unix, &frames(&[hello("second", 60_000)])));
    drop(legit);
    thread::sleep(Duration::from_millis(300));
    // Beyond its credit.
    {
        let mut c = Client::connect(&host.unix).expect("connecting");
        if let Handshake::Accepted { credit, .. } =
            c.handshake(&hello("greedy", 60_000), Duration::from_secs(3))
        {
            let mut left = credit as usize + 65_536;
            while left > 0 {
                let n = left.min(60_000);
                if c.send(&[GuestMessage::Audio(vec![0; n])]).is_err() {
                    break;
                }
                left -= n;
            }
            texts.extend(texts_from(
                &c.until_closed(Duration::from_secs(5)).unwrap_or_else(|g| g),
            ));
        }
    }
    // The host's sound server goes away.
    robust::send_signal(host.pulse.pid(), "KILL").expect("killing the host PulseAudio");
    thread::sleep(Duration::from_millis(500));
    texts.extend(answer_to(&host.unix, &frames(&[hello("orphan", 60_000)])));

    for t in &texts {
        println!("isolation: host said {t:?}");
    }
    assert!(texts.len() >= 7, "too few answers to check: {texts:?}");
    let forbidden = host_paths(&host);
    for t in &texts {
        for f in &forbidden {
            assert!(
                !t.contains(f.as_str()),
                "a text sent to a guest names a host path ({f:?}): {t:?}"
            );
        }
    }
}

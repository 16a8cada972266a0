//! The real chain: guest PulseAudio with the tunnel sink, host-playd, host
//! PulseAudio. Each test starts its own daemons. A missing module or daemon
//! binary fails the test: CI builds them before running these.

use std::time::{Duration, Instant};

use secure_tunnel_e2e::{
    find_sink, guest_daemon, host_daemon, latency::measure_sink_latency, parse_sinks, signal,
    HostPlayd, Player, Recorder, TunnelStack, GUEST_SINK, HOST_SINK, MODULE_NAME, RATE,
};

const FRAMES_PER_SEC: usize = RATE as usize;
const FORMAT: &str = "rate=48000 channels=2 format=s16le";
const LIVE: Duration = Duration::from_secs(5);

fn host_monitor() -> String {
    format!("{HOST_SINK}.monitor")
}

fn start_stack(module_args: &str) -> TunnelStack {
    TunnelStack::start(module_args).unwrap_or_else(|e| panic!("starting the tunnel: {e}"))
}

/// Every sample played into the guest sink reaches the host sink unchanged.
/// (A roomy latency: this is about integrity, and CI runs many daemons on two
/// cores at once; a late block would show up as inserted silence.)
#[test]
fn bit_exact_playback() {
    let stack = start_stack(&format!("{FORMAT} latency_msec=150"));
    let mut rec = Recorder::start(&stack.host, &host_monitor()).expect("parec on the host");
    rec.wait_live(LIVE).expect("host monitor live");
    let played = signal::pseudo_random(0xC0FFEE, 4 * FRAMES_PER_SEC);
    let took = Player::play(
        &stack.guest,
        GUEST_SINK,
        signal::to_bytes(&played),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    let recording = rec
        .wait_until(Duration::from_secs(5), "the whole played signal", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .unwrap_or_else(|e| {
            let why = signal::locate_bit_exact(&rec.snapshot().samples(), &played, 256);
            panic!("{e}\n{}\n{}", why.err().unwrap_or_default(), stack.logs())
        });
    let offset =
        signal::locate_bit_exact(&recording.samples(), &played, 256).expect("located just above");
    println!(
        "bit-exact: {} frames ({:.1} s) matched at host frame {} ({:.1} ms into the recording); pacat took {:.2} s",
        played.len() / 2,
        played.len() as f64 / 2.0 / f64::from(RATE),
        offset / 2,
        offset as f64 / 2.0 / f64::from(RATE) * 1e3,
        took.as_secs_f64()
    );
}

/// The latency the sink reports is the delay actually observed between the
/// guest sink rendering an impulse and the host sink playing it.
#[test]
fn latency_matches_observation() {
    let stack = start_stack(&format!("{FORMAT} latency_msec=60"));
    let report = measure_sink_latency(&stack.guest, GUEST_SINK, &stack.host)
        .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    println!("latency: {report:.1?}");
    assert!(
        report.flags.iter().any(|f| f == "NETWORK") && report.flags.iter().any(|f| f == "LATENCY"),
        "tunnel sink flags {:?} lack NETWORK or LATENCY",
        report.flags
    );
    assert!(
        report.observed_ms.len() >= 5,
        "only {} impulses crossed the tunnel within 450 ms ({} on the guest monitor, {} on the host)\n{}",
        report.observed_ms.len(),
        report.guest_impulses,
        report.host_impulses,
        stack.logs()
    );
    let reported = report
        .reported_median()
        .unwrap_or_else(|| panic!("the sink never showed RUNNING\n{}", stack.logs()));
    let observed = report.observed_median().expect("checked non-empty");
    println!("latency: median reported {reported:.1} ms, median observed {observed:.1} ms");
    assert!(
        report.reported_ms.iter().all(|&l| l > 0.0),
        "reported latency not positive while running: {:?}",
        report.reported_ms
    );
    assert!(
        (reported - observed).abs() < 20.0,
        "sink reports {reported:.1} ms but {observed:.1} ms is observed"
    );
}

/// Each bad argument is refused with a log line naming it, and the daemon
/// carries on.
#[test]
fn bad_argument_fails_cleanly() {
    let mut guest = guest_daemon().expect("guest PulseAudio");
    let server = format!("server=unix:{}", guest.dir().join("nobody.sock").display());
    let cases: [(String, &[&str]); 5] = [
        (format!("sink_name=x {FORMAT}"), &["server"]),
        ("server=bogus:xyz".to_owned(), &["bogus"]),
        (
            format!("{server} latency_msec=abc"),
            &["latency_msec", "abc"],
        ),
        (format!("{server} rate=1"), &["rate"]),
        (format!("{server} format=nope"), &["format", "nope"]),
    ];
    for (args, words) in cases {
        let before = guest.log().len();
        let res = guest.load_module(MODULE_NAME, &args);
        assert!(
            res.is_err(),
            "`{args}` was accepted as module #{res:?}\n{}",
            guest.log_tail()
        );
        // The core's own "Failed to load module ... (argument: ...)" line
        // echoes the arguments; the module itself must say, as an error or
        // warning, what was wrong.
        let log = guest.log();
        let new = log.get(before..).unwrap_or_default();
        let explained = new.lines().any(|l| {
            let complaint = l.contains(" E: ") || l.contains(" W: ");
            let l = l.to_lowercase();
            complaint
                && !l.contains("failed to load module")
                && !l.contains(&format!("loading \"{MODULE_NAME}\""))
                && words.iter().any(|w| l.contains(w))
        });
        assert!(
            explained,
            "no module log line mentions {words:?} after refusing `{args}`:\n{new}"
        );
        assert!(
            guest.is_alive(),
            "guest died on `{args}`\n{}",
            guest.log_tail()
        );
    }
    guest.pactl_ok(&["info"]).expect("pactl info afterwards");
    let modules = guest
        .pactl_ok(&["list", "short", "modules"])
        .expect("list modules");
    assert!(
        !modules.contains(MODULE_NAME),
        "a refused module stayed loaded:\n{modules}"
    );
    assert!(guest.is_alive(), "{}", guest.log_tail());
}

/// With nobody listening the sink still consumes audio in real time, and it
/// reconnects once host-playd appears.
#[test]
fn host_unreachable_keeps_consuming() {
    let host = host_daemon().expect("host PulseAudio");
    let socket = host.dir().join("playd.sock");
    let mut guest = guest_daemon().expect("guest PulseAudio");
    let args = format!(
        "server=unix:{} sink_name={GUEST_SINK} {FORMAT} latency_msec=60",
        socket.display()
    );
    guest
        .load_module(MODULE_NAME, &args)
        .unwrap_or_else(|e| panic!("loading with no host listening: {e}\n{}", guest.log_tail()));
    let took = Player::play(
        &guest,
        GUEST_SINK,
        signal::to_bytes(&signal::pseudo_random(3, 2 * FRAMES_PER_SEC)),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", guest.log_tail()));
    println!("2 s played with no host in {:.2} s", took.as_secs_f64());
    assert!(
        took < Duration::from_secs(4),
        "2 s of audio took {took:?} with the host unreachable\n{}",
        guest.log_tail()
    );
    assert!(guest.is_alive(), "{}", guest.log_tail());
    find_sink(&guest, GUEST_SINK).unwrap_or_else(|e| panic!("{e}"));
    guest.pactl_ok(&["info"]).expect("pactl info");

    let mut rec = Recorder::start(&host, &host_monitor()).expect("parec on the host");
    rec.wait_live(LIVE).expect("host monitor live");
    let played = signal::pseudo_random(4, 15 * FRAMES_PER_SEC);
    let _player =
        Player::start(&guest, GUEST_SINK, signal::to_bytes(&played)).expect("pacat on guest");
    let mut playd = HostPlayd::start(&socket, &host, None).expect("host-playd");
    let started = Instant::now();
    // Half a second of noise proves the stream flows, not just a click.
    let enough = FRAMES_PER_SEC;
    let recording = rec
        .wait_until(
            Duration::from_secs(5),
            "audio after host-playd started",
            |r| r.samples().iter().filter(|&&s| s != 0).count() >= enough,
        )
        .unwrap_or_else(|e| {
            panic!(
                "no reconnect: {e}\n{}\n{}\n{}",
                guest.log_tail(),
                playd.log_tail(),
                host.log_tail()
            )
        });
    println!(
        "audio reached the host {:.2} s after host-playd started",
        started.elapsed().as_secs_f64()
    );
    let samples = recording.samples();
    let first = samples.iter().position(|&s| s != 0).unwrap_or(0) & !1;
    let window = &samples[first + 2 * 4800..first + 2 * 5056];
    assert!(
        signal::find_offset(&played, window).is_some(),
        "what reached the host is not the played signal"
    );
    assert!(playd.is_alive(), "{}", playd.log_tail());
}

/// Two instances side by side, each described by its own server, both
/// unloadable.
#[test]
fn sink_properties_and_two_instances() {
    let mut guest = guest_daemon().expect("guest PulseAudio");
    let servers = [
        guest.dir().join("a.sock").display().to_string(),
        guest.dir().join("b.sock").display().to_string(),
    ];
    let names = ["tunnel_a", "tunnel_b"];
    let mut indices = Vec::new();
    for (name, server) in names.iter().zip(&servers) {
        let index = guest
            .load_module(
                MODULE_NAME,
                &format!(
                    "server=unix:{server} sink_name={name} {FORMAT} \
                     sink_properties=device.icon_name=icon-of-{name}"
                ),
            )
            .unwrap_or_else(|e| panic!("loading {name}: {e}\n{}", guest.log_tail()));
        indices.push(index);
    }
    let sinks = parse_sinks(&guest.pactl_ok(&["list", "sinks"]).expect("list sinks"));
    for ((name, server), index) in names.iter().zip(&servers).zip(&indices) {
        let sink = sinks
            .iter()
            .find(|s| s.name == *name)
            .unwrap_or_else(|| panic!("{name} not in {sinks:#?}"));
        println!("{name}: {:?}, flags {:?}", sink.description, sink.flags);
        let description = sink.property("device.description").unwrap_or_default();
        assert!(
            description.contains(server.as_str()) && sink.description.contains(server.as_str()),
            "{name}'s description {description:?} does not mention {server}"
        );
        assert!(
            sink.has_flag("NETWORK") && sink.has_flag("LATENCY"),
            "{name} flags {:?}",
            sink.flags
        );
        assert_eq!(sink.owner_module, Some(*index), "{name}'s owner module");
        assert_eq!(
            sink.property("device.icon_name"),
            Some(format!("icon-of-{name}").as_str()),
            "{name}'s sink_properties were not applied"
        );
    }
    for index in &indices {
        guest
            .pactl_ok(&["unload-module", &index.to_string()])
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let left = parse_sinks(&guest.pactl_ok(&["list", "sinks"]).expect("list sinks"));
    assert!(
        left.iter().all(|s| !names.contains(&s.name.as_str())),
        "sinks left after unloading: {left:#?}"
    );
    assert!(guest.is_alive(), "{}", guest.log_tail());
    guest.pactl_ok(&["info"]).expect("pactl info afterwards");
}

/// Whether the host's stream for the guest is corked, from the host's
/// `pactl list sink-inputs` (host-playd holds exactly one stream here).
fn host_stream_corked(stack: &TunnelStack) -> Option<bool> {
    let text = stack.host.pactl_ok(&["list", "sink-inputs"]).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Corked: "))
        .map(|v| v == "yes")
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// An idle guest sink corks the host stream after the last sound has played
/// (so no silence is streamed), and new sound uncorks it and arrives whole.
/// The sink publishes its connection state and counters as properties.
#[test]
fn idle_sink_corks_the_host_stream_and_resumes_whole() {
    let stack = start_stack(&format!("{FORMAT} latency_msec=150"));
    let took = wait_for("the host stream to exist corked", LIVE, || {
        host_stream_corked(&stack) == Some(true)
    });
    println!("corked while idle after {took:?}");
    let sink = stack.tunnel_sink().expect("tunnel sink");
    assert_eq!(sink.property("secure_tunnel.connected"), Some("yes"));
    assert_eq!(sink.property("secure_tunnel.underruns"), Some("0"));
    assert_eq!(sink.property("secure_tunnel.reconnects"), Some("0"));

    for round in 0..2 {
        let mut rec = Recorder::start(&stack.host, &host_monitor()).expect("parec on the host");
        rec.wait_live(LIVE).expect("host monitor live");
        let played = signal::pseudo_random(0xAB00 + round, FRAMES_PER_SEC);
        let player =
            Player::start(&stack.guest, GUEST_SINK, signal::to_bytes(&played)).expect("pacat");
        wait_for("the host stream to uncork", LIVE, || {
            host_stream_corked(&stack) == Some(false)
        });
        player
            .wait(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
        rec.wait_until(Duration::from_secs(5), "the whole clip", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", stack.logs()));
        // The clip's tail played out, then the stream corked again.
        let took = wait_for("the host stream to cork again", LIVE, || {
            host_stream_corked(&stack) == Some(true)
        });
        println!("round {round}: clip arrived whole, corked {took:?} after the player ended");
    }
}

/// Dynamic latency: an application asking for a larger latency makes the
/// tunnel sink configure it, but the host buffers at most `latency_msec`
/// (the rest stays in the guest, where it can be rewound; docs/design.md,
/// "Start-up"), and the latency the sink reports stays with the host buffer.
#[test]
fn application_latency_requests_leave_the_host_buffer_at_latency_msec() {
    let stack = start_stack(&format!("{FORMAT} latency_msec=40"));
    let host_buffer_usec = || -> Option<u64> {
        let text = stack.host.pactl_ok(&["list", "sink-inputs"]).ok()?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Buffer Latency: "))
            .and_then(|v| v.trim_end_matches(" usec").parse().ok())
    };
    let played = signal::pseudo_random(0x1A7E, 6 * FRAMES_PER_SEC);
    // pacat asks for 400 ms; the sink honours it within 40..2000 ms.
    let mut cmd = stack.guest.client("pacat").expect("pacat");
    cmd.args([
        &format!("--device={GUEST_SINK}"),
        "--raw",
        "--format=s16le",
        "--rate=48000",
        "--channels=2",
        "--latency-msec=400",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn pacat");
    let mut stdin = child.stdin.take().expect("pacat stdin");
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&signal::to_bytes(&played));
    });
    // pacat's 400 ms makes PulseAudio request 180 ms of the sink; the host
    // still holds at most latency_msec=40.
    let mut seen = (0u64, 0u64, 0u64);
    let took = wait_for(
        "the sink to follow the request while playing",
        Duration::from_secs(8),
        || {
            let sink = stack.tunnel_sink().ok();
            let configured = sink.as_ref().and_then(|s| s.configured_latency_usec);
            let reported = sink.as_ref().and_then(|s| s.latency_usec);
            seen = (
                configured.unwrap_or(0),
                host_buffer_usec().unwrap_or(0),
                reported.unwrap_or(0),
            );
            seen.0 >= 150_000 && seen.1 > 0 && seen.2 > 0
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let sink = stack.tunnel_sink().expect("tunnel sink");
    seen.1 = host_buffer_usec().unwrap_or(0);
    seen.2 = sink.latency_usec.unwrap_or(0);
    println!(
        "after {took:?}: sink configured {} ms, host buffer {} ms, reported {} ms",
        seen.0 / 1000,
        seen.1 / 1000,
        seen.2 / 1000
    );
    assert!(seen.1 <= 45_000, "host buffer above latency_msec: {seen:?}");
    assert!(
        seen.2 <= 60_000,
        "reported latency above latency_msec: {seen:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = feeder.join();
}

//! Self-tests of the harness against PulseAudio alone: they calibrate the
//! measuring methods the end-to-end tests rely on, without the module.

use std::{thread, time::Duration};

use secure_tunnel_e2e::{
    host_daemon,
    latency::{impulse_latencies_ms, measure_sink_latency},
    signal, Player, PulseDaemon, Recorder, HOST_SINK, RATE,
};

const FRAMES_PER_SEC: usize = RATE as usize;

/// Played straight into the host's null sink, the noise must come back
/// bit-exact from its monitor; otherwise a bit-exact failure through the
/// tunnel would say nothing about the tunnel.
#[test]
fn harness_direct_playback_is_bit_exact() {
    let host = host_daemon().expect("host PulseAudio");
    let monitor = format!("{HOST_SINK}.monitor");
    let mut rec = Recorder::start(&host, &monitor).expect("parec on the host");
    rec.wait_live(Duration::from_secs(5))
        .expect("host monitor live");
    let played = signal::pseudo_random(0x5EED, 4 * FRAMES_PER_SEC);
    Player::play(
        &host,
        HOST_SINK,
        signal::to_bytes(&played),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", host.log_tail()));
    let recording = rec
        .wait_until(Duration::from_secs(5), "the whole signal", |r| {
            signal::locate_bit_exact(&r.samples(), &played, 256).is_ok()
        })
        .map(|r| r.samples())
        .unwrap_or_else(|e| {
            let why = signal::locate_bit_exact(&rec.snapshot().samples(), &played, 256);
            panic!("{e}\n{why:?}\n{}", host.log_tail())
        });
    let offset = signal::locate_bit_exact(&recording, &played, 256).expect("located above");
    println!(
        "direct playback: {} frames bit-exact at recorded frame {}",
        played.len() / 2,
        offset / 2
    );
}

/// The impulse method measures a known stage: module-loopback from one null
/// sink's monitor into the other, configured for 100 ms.
#[test]
fn harness_latency_method_measures_loopback() {
    let host = PulseDaemon::start(
        "loopback",
        None,
        &[
            "module-null-sink sink_name=hostsink rate=48000 channels=2 format=s16le norewinds=1",
            "module-null-sink sink_name=before rate=48000 channels=2 format=s16le norewinds=1",
            "module-loopback source=before.monitor sink=hostsink latency_msec=100",
        ],
    )
    .expect("PulseAudio with a loopback");
    let before = Recorder::start(&host, "before.monitor").expect("parec before");
    let after = Recorder::start(&host, "hostsink.monitor").expect("parec after");
    // Let the loopback settle on its latency before measuring it.
    thread::sleep(Duration::from_secs(1));
    let train = signal::impulse_train(5 * FRAMES_PER_SEC, FRAMES_PER_SEC / 2, 48, 20_000);
    Player::play(
        &host,
        "before",
        signal::to_bytes(&train),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", host.log_tail()));
    // The last impulse still has to cross the loopback.
    thread::sleep(Duration::from_millis(500));
    let lat = impulse_latencies_ms(&before.snapshot(), &after.snapshot(), 20.0, 450.0);
    let median = signal::median(&lat).expect("no impulse measured");
    println!("loopback configured for 100 ms: measured median {median:.1} ms over {lat:.1?}");
    assert!(
        lat.len() >= 5,
        "only {} impulses paired: {lat:?}",
        lat.len()
    );
    assert!(
        (70.0..=130.0).contains(&median),
        "loopback configured for 100 ms measured {median:.1} ms: {lat:.1?}"
    );
}

/// A refused module leaves the daemon running; the private daemon.conf is
/// read; the daemon and its directory go away on drop.
#[test]
fn harness_daemon_survives_a_refused_module_and_dies_on_drop() {
    let mut host = host_daemon().expect("host PulseAudio");
    let err = host
        .load_module("module-null-sink", "rate=abc")
        .expect_err("rate=abc must be refused");
    assert!(!err.is_empty());
    assert!(host.is_alive(), "{}", host.log_tail());
    let info = host
        .pactl_ok(&["info"])
        .expect("pactl info after the failure");
    // daemon.conf in the private config dir took effect: nothing resamples.
    assert!(
        info.contains("Default Sample Specification: s16le 2ch 48000Hz"),
        "{info}"
    );
    let dir = host.dir().to_path_buf();
    drop(host);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// The reported-versus-observed comparison of `latency_matches_observation`,
/// run on PulseAudio's own tunnel sink: a sink known to report its latency
/// right must pass it, or the method is at fault rather than our module.
#[test]
fn harness_latency_method_agrees_with_pulse_tunnel() {
    let host = host_daemon().expect("host PulseAudio");
    let guest = PulseDaemon::start("patunnel", None, &[]).expect("guest PulseAudio");
    let args = format!(
        "server={} sink={HOST_SINK} sink_name=patunnel rate=48000 channels=2 format=s16le latency_msec=60",
        host.server()
    );
    guest
        .load_module("module-tunnel-sink", &args)
        .unwrap_or_else(|e| panic!("{e}\n{}", guest.log_tail()));
    let report = measure_sink_latency(&guest, "patunnel", &host)
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", guest.log_tail(), host.log_tail()));
    let reported = report.reported_median().expect("tunnel never RUNNING");
    let observed = report.observed_median().expect("no impulse crossed");
    println!(
        "module-tunnel-sink: reported {reported:.1} ms, observed {observed:.1} ms; {report:.1?}"
    );
    assert!(report.observed_ms.len() >= 5, "{report:?}");
    assert!(
        (reported - observed).abs() < 20.0,
        "PulseAudio's tunnel reports {reported:.1} ms, {observed:.1} ms observed"
    );
}

//! Faults around a playing guest: host-playd killed, stopped, the host
//! PulseAudio restarted, the module loaded and unloaded again and again.
//! The guest's PulseAudio must never notice more than silence.
//!
//! The tests run one at a time (they measure response times, which other
//! audio tests on a 2-core machine would disturb).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use secure_tunnel_e2e::{
    find_sink, guest_daemon, host_daemon, robust, signal, HostPlayd, Player, Recorder, TestDir,
    TunnelStack, GUEST_SINK, HOST_SINK, MODULE_NAME,
};

/// The module retries this often, so a restarted daemon is found at once.
const MODULE_ARGS: &str =
    "rate=48000 channels=2 format=s16le latency_msec=60 reconnect_interval_msec=100";
/// Sound must resume this soon after host-playd is back (issue 5).
const RESUME_BOUND: Duration = Duration::from_secs(1);
/// `pactl info` in the guest must answer this fast while host-playd is stopped.
const PACTL_BOUND: Duration = Duration::from_millis(100);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn monitor() -> String {
    format!("{HOST_SINK}.monitor")
}

/// A stack with a long non-silent signal playing and reaching the host.
fn playing_stack() -> (TunnelStack, Recorder, Player) {
    let stack = TunnelStack::start(MODULE_ARGS).unwrap_or_else(|e| panic!("starting: {e}"));
    let mut rec = Recorder::start(&stack.host, &monitor()).expect("parec on the host");
    rec.wait_live(Duration::from_secs(5))
        .expect("host monitor live");
    let played = signal::pseudo_random(0x00FA_0175, 60 * 48_000);
    let player = Player::start(&stack.guest, GUEST_SINK, signal::to_bytes(&played)).expect("pacat");
    rec.wait_until(Duration::from_secs(5), "sound at the host", |r| {
        robust::first_sound_frame(r, 0).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", stack.logs()));
    (stack, rec, player)
}

/// Checks the guest side survived: daemon, sink and player.
fn guest_intact(stack: &mut TunnelStack, player: &mut Player, when: &str) {
    assert!(stack.guest.is_alive(), "guest PulseAudio died {when}");
    find_sink(&stack.guest, GUEST_SINK).unwrap_or_else(|e| panic!("tunnel sink gone {when}: {e}"));
    assert!(player.is_running(), "the guest player stopped {when}");
}

/// Waits for sound after byte `from` and returns how long after `since`
/// it arrived.
fn resume_time(rec: &mut Recorder, from: usize, since: Instant, logs: &str) -> Duration {
    let r = rec
        .wait_until(Duration::from_secs(10), "sound again", |r| {
            robust::first_sound_frame(r, from).is_some()
        })
        .unwrap_or_else(|e| panic!("{e}\n{logs}"));
    robust::sound_resumed_after(&r, from, since).expect("sound found above")
}

#[test]
fn kill_9_host_playd_then_restart_resumes_within_1s() {
    let _serial = serial();
    let (mut stack, mut rec, mut player) = playing_stack();
    robust::send_signal(stack.playd.pid(), "KILL").expect("kill -9 host-playd");
    thread::sleep(Duration::from_millis(1000));
    guest_intact(&mut stack, &mut player, "after host-playd was killed");
    let from = rec.snapshot().bytes.len();
    // Only silence while host-playd is gone.
    thread::sleep(Duration::from_millis(200));
    assert_eq!(robust::first_sound_frame(&rec.snapshot(), from), None);

    stack.playd = HostPlayd::start_with(&stack.socket, Some(&stack.host), &[])
        .unwrap_or_else(|e| panic!("restarting host-playd: {e}"));
    let back = Instant::now();
    let took = resume_time(&mut rec, from, back, &stack.logs());
    println!(
        "kill -9: sound resumed {:.0} ms after host-playd was back",
        took.as_secs_f64() * 1e3
    );
    assert!(took < RESUME_BOUND, "sound resumed only after {took:?}");
    guest_intact(&mut stack, &mut player, "after the restart");
}

#[test]
fn sigstop_host_playd_blocks_nothing_in_the_guest() {
    let _serial = serial();
    let (mut stack, mut rec, mut player) = playing_stack();
    let time_info = |stack: &TunnelStack| {
        let (out, took) = robust::timed(|| stack.guest.pactl(&["info"]));
        assert!(
            out.expect("pactl info").status.success(),
            "pactl info failed"
        );
        took
    };
    let before: Vec<Duration> = (0..5).map(|_| time_info(&stack)).collect();
    let pid = stack.playd.pid();
    robust::send_signal(pid, "STOP").expect("SIGSTOP host-playd");
    let stopped = Instant::now();
    let mut during = Vec::new();
    while stopped.elapsed() < Duration::from_secs(5) {
        during.push(time_info(&stack));
        thread::sleep(Duration::from_millis(100));
    }
    guest_intact(&mut stack, &mut player, "while host-playd was stopped");
    let from = rec.snapshot().bytes.len();
    robust::send_signal(pid, "CONT").expect("SIGCONT host-playd");
    let resumed = Instant::now();
    let took = resume_time(&mut rec, from, resumed, &stack.logs());
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "SIGSTOP 5 s: pactl info before max {:.1} ms; during {} calls, max {:.1} ms; \
         sound {:.0} ms after SIGCONT",
        max(&before).as_secs_f64() * 1e3,
        during.len(),
        max(&during).as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e3
    );
    assert!(
        max(&during) < PACTL_BOUND,
        "pactl info took up to {:?} while host-playd was stopped: {during:?}",
        max(&during)
    );
    assert!(
        took < Duration::from_secs(5),
        "sound came back only after {took:?}"
    );
    assert!(stack.playd.is_alive(), "host-playd died after SIGCONT");
    guest_intact(&mut stack, &mut player, "after SIGCONT");
}

#[test]
fn host_pulseaudio_restart_resumes_streams() {
    let _serial = serial();
    // host-playd reaches the host daemon through a symlink, so a new daemon
    // (in a new directory) can take the old one's place.
    let link_dir = TestDir::new("pulselink").expect("link dir");
    let link = link_dir.path().join("native");
    let host = host_daemon().expect("host PulseAudio");
    let point = |target: &std::path::Path| {
        let tmp = link_dir.path().join("native.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).expect("symlink");
        std::fs::rename(&tmp, &link).expect("rename symlink");
    };
    point(&host.dir().join("native"));
    let socket = link_dir.path().join("playd.sock");
    let server = format!("unix:{}", link.display());
    let mut playd = HostPlayd::start_with(
        &socket,
        None,
        &["--pulse-server", &server, "--sink", HOST_SINK],
    )
    .unwrap_or_else(|e| panic!("host-playd: {e}"));
    let mut guest = guest_daemon().expect("guest PulseAudio");
    guest
        .load_module(
            MODULE_NAME,
            &format!(
                "server=unix:{} sink_name={GUEST_SINK} {MODULE_ARGS}",
                socket.display()
            ),
        )
        .unwrap_or_else(|e| panic!("load-module: {e}\n{}", guest.log_tail()));
    let played = signal::pseudo_random(0x8E57, 60 * 48_000);
    let mut player = Player::start(&guest, GUEST_SINK, signal::to_bytes(&played)).expect("pacat");
    let mut rec = Recorder::start(&host, &monitor()).expect("parec");
    rec.wait_until(Duration::from_secs(5), "sound at the host", |r| {
        robust::first_sound_frame(r, 0).is_some()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", playd.log_tail()));

    drop(rec);
    drop(host);
    let host = host_daemon().expect("second host PulseAudio");
    point(&host.dir().join("native"));
    let back = Instant::now();
    let mut rec = Recorder::start(&host, &monitor()).expect("parec");
    let took = resume_time(&mut rec, 0, back, &playd.log_tail());
    println!(
        "host PulseAudio restart: sound resumed {:.0} ms after the new daemon was up",
        took.as_secs_f64() * 1e3
    );
    assert!(playd.is_alive(), "host-playd died with its PulseAudio");
    assert!(guest.is_alive(), "guest PulseAudio died");
    assert!(player.is_running(), "the guest player stopped");
    // host-playd retries its server every second and the module reconnects
    // every 100 ms after the Goodbye.
    assert!(
        took < Duration::from_secs(5),
        "sound resumed only after {took:?}"
    );
}

#[test]
fn load_unload_200_times_without_crash_or_growth() {
    let _serial = serial();
    let host = host_daemon().expect("host PulseAudio");
    let socket = host.dir().join("playd.sock");
    let mut playd = HostPlayd::start(&socket, &host, None).expect("host-playd");
    let mut guest = guest_daemon().expect("guest PulseAudio");
    let args = format!(
        "server=unix:{} sink_name={GUEST_SINK} {MODULE_ARGS}",
        socket.display()
    );
    let pid = guest.pid();
    let mut after_20 = None;
    let start = Instant::now();
    for cycle in 1..=200 {
        let index = guest
            .load_module(MODULE_NAME, &args)
            .unwrap_or_else(|e| panic!("cycle {cycle}: load-module: {e}\n{}", guest.log_tail()));
        // Every few cycles let the module connect before it goes.
        if cycle % 10 == 0 {
            thread::sleep(Duration::from_millis(50));
        }
        guest
            .pactl_ok(&["unload-module", &index.to_string()])
            .unwrap_or_else(|e| panic!("cycle {cycle}: unload-module: {e}"));
        if cycle == 20 {
            after_20 = robust::memory(pid);
        }
    }
    let after_20 = after_20.expect("guest memory after 20 cycles");
    let after_200 = robust::memory(pid).expect("guest memory after 200 cycles");
    let growth = after_200.rss_kib.saturating_sub(after_20.rss_kib);
    println!(
        "load/unload x200 in {:.1} s: guest VmRSS {} KiB after 20, {} KiB after 200 (+{growth} KiB)",
        start.elapsed().as_secs_f64(),
        after_20.rss_kib,
        after_200.rss_kib
    );
    assert!(guest.is_alive(), "guest PulseAudio died");
    assert!(playd.is_alive(), "host-playd died");
    // The module still works after all that.
    let index = guest.load_module(MODULE_NAME, &args).expect("a last load");
    find_sink(&guest, GUEST_SINK).expect("the sink after 200 cycles");
    guest
        .pactl_ok(&["unload-module", &index.to_string()])
        .expect("a last unload");
    assert!(
        growth < 1024,
        "guest VmRSS grew by {growth} KiB over 180 load/unload cycles"
    );
}

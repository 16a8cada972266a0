//! Issue 14: after a host underrun the latency a guest player is told is
//! right again within 200 ms. The real chain (guest PulseAudio with the
//! module, host-playd, host PulseAudio); host-playd is stopped with SIGSTOP
//! for 100 ms while a libpulse player in the guest writes coded impulses and
//! predicts from `pa_stream_get_latency` when each will be heard, and a
//! recorder on the host sink's monitor times when each was (bench's latency
//! probe; both on one clock). Every impulse written from 200 ms after
//! SIGCONT on must be heard within `TOLERANCE_MS` of its prediction.
//!
//! History (2026-12-02). It failed at first: predictions within 0.3 ms before
//! the stop, then impulses heard 53–97 ms later than predicted for about 2 s,
//! drifting through zero to about −25 ms 7 s later. Neither a clock mapper
//! that drops delayed round trips (then 59 ms at 0.3 s, 34 ms at 1.8 s) nor
//! capping the guest's extrapolation at 50 ms (+120 ms) fixed it. The
//! diagnosis, from the player's raw timing (printed next to each error: the
//! prediction from its last timing update alone, without libpulse's
//! interpolation) and host-playd's timing updates (printed, debug): the host
//! stream was dry for 65.2 ms (PulseAudio's `since_underrun`, 12 516 bytes),
//! so everything after was really heard 65 ms later; the sink's latency and
//! the raw predictions were right (0.1 ms) from the first timing update after
//! the stop on, but libpulse's smoother, which re-anchors only when its own
//! stream underruns or corks, carried the old line across that step: +65 ms
//! at 0.3 s, +46 at 0.6–1.8 s, +16 at 2.1 s, −10..−21 ms at 4–7 s. Also,
//! host-playd's first report after the stop said "playing" at a stale
//! position 74 ms behind.
//!
//! Fixed by keeping the timeline: after a host underrun the guest skips as
//! much of its inputs' audio as the host played silence for
//! (`timing::UnderrunSlip`), and host-playd reports a stale position as not
//! playing. Three runs with the final code: dry 65.1, 65.1 and 65.1 ms;
//! every impulse written from 200 ms after SIGCONT on within −0.28..+0.59,
//! −0.32..+0.48 and −0.34..+0.71 ms. An impulse written during the stop is
//! in the skipped audio (32 of 33 heard in two runs); one written 20 ms after
//! SIGCONT, before the guest learnt of the underrun, was heard 25 ms late
//! (run 2: 33 of 33), inside the 200 ms this test allows.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{process::Command, thread, time::Duration};

use secure_tunnel_bench::{
    clock,
    impulses::Coder,
    pa::{PlayConfig, RecordProbe},
    probe::{measure, Measurement, Phases},
};
use secure_tunnel_e2e::{find_sink, TunnelStack, GUEST_SINK, HOST_SINK};

const TOLERANCE_MS: f64 = 5.0;
const STOP_AT_S: f64 = 3.5;
const STOP_FOR: Duration = Duration::from_millis(100);
const RECOVERY_S: f64 = 0.2;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// [`measure`], stopping host-playd (`pid`) for [`STOP_FOR`] at [`STOP_AT_S`].
fn measure_with_stop(
    recorder: &mut RecordProbe,
    config: PlayConfig,
    phases: Phases,
    pid: u32,
    resumed: &mut Option<f64>,
    stack: &TunnelStack,
) -> Measurement {
    measure(recorder, config, phases, |elapsed| {
        if resumed.is_none() && elapsed >= STOP_AT_S - 1.0 {
            // `measure` calls about once a second: stop at STOP_AT_S.
            thread::sleep(Duration::from_secs_f64((STOP_AT_S - elapsed).max(0.0)));
            signal(pid, "-STOP");
            thread::sleep(STOP_FOR);
            signal(pid, "-CONT");
            *resumed = Some(clock::now());
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()))
}

#[test]
fn latency_is_right_again_within_200_ms_of_a_host_underrun() {
    // Debug: host-playd logs its timing updates after an underrun.
    let stack = TunnelStack::start_with(
        &["--log-level", "debug"],
        "format=s16le rate=48000 channels=2 latency_msec=60",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    thread::sleep(Duration::from_millis(500));
    let mut recorder =
        RecordProbe::start(&stack.host.server(), &format!("{HOST_SINK}.monitor"), 10.0)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", stack.logs()));
    let coder = Coder::every_ms(300);
    let config = PlayConfig {
        server: stack.guest.server(),
        sink: GUEST_SINK.to_owned(),
        tlength_ms: 10.0,
        coder,
    };
    let phases = Phases {
        warmup: 1.0,
        measure: 10.0,
        tail: 1.0,
        settle: 1.0,
    };
    let pid = stack.playd.pid();
    let mut resumed = None;
    // The sink's own latency (what `pactl list sinks` shows) every 50 ms
    // over the run, to tell the sink's estimate from libpulse's client-side
    // interpolation when the prediction is off.
    let sampling = std::sync::atomic::AtomicBool::new(true);
    let sink_latency = thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(sink) = find_sink(&stack.guest, GUEST_SINK) {
                    if let Some(usec) = sink.latency_usec {
                        samples.push((clock::now(), usec as f64 / 1e3));
                    }
                }
                thread::sleep(Duration::from_millis(50));
            }
            samples
        });
        let m = measure_with_stop(&mut recorder, config, phases, pid, &mut resumed, &stack);
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        (m, sampler.join().unwrap_or_default())
    });
    let (m, sink_latency) = sink_latency;
    let resumed = resumed.expect("host-playd was stopped");
    println!("sink latency (ms after SIGCONT, ms) around the stop:");
    for (t, l) in sink_latency
        .iter()
        .map(|(t, l)| ((t - resumed) * 1e3, l))
        .filter(|(t, _)| *t > -600.0 && *t < 1500.0)
    {
        println!("  {t:+8.1} {l:7.2}");
    }
    let log = stack.playd.log();
    let dry = log.matches("ran dry").count();
    println!("host-playd's timing updates after the underrun (debug log):");
    for line in log.lines().filter(|l| l.contains("timing after underrun")) {
        println!("  {}", line.split("] ").nth(1).unwrap_or(line));
    }
    let rows: Vec<(f64, f64)> = m
        .pairs
        .iter()
        .map(|p| ((p.prediction.written - resumed) * 1e3, p.error_ms()))
        .collect();
    println!(
        "{} of {} impulses heard; (written ms after SIGCONT, heard - predicted ms, \
         the same from the last timing update without libpulse's interpolation):",
        m.pairs.len(),
        m.played
    );
    for (p, (t, e)) in m.pairs.iter().zip(&rows) {
        let raw = p.raw_error_ms().unwrap_or(f64::NAN);
        println!("  {t:+8.1} {e:+7.2} {raw:+7.2}");
    }
    assert!(
        dry >= 1,
        "stopping host-playd for {STOP_FOR:?} caused no host underrun\n{}",
        stack.logs()
    );
    assert!(
        m.pairs.len() * 10 >= m.played * 9 && m.played >= 25,
        "only {} of {} impulses heard\n{}",
        m.pairs.len(),
        m.played,
        stack.logs()
    );
    let before: Vec<f64> = rows
        .iter()
        .filter(|(t, _)| *t < -1000.0 * (STOP_FOR.as_secs_f64() + 0.5))
        .map(|(_, e)| *e)
        .collect();
    let after: Vec<&(f64, f64)> = rows
        .iter()
        .filter(|(t, _)| *t >= RECOVERY_S * 1e3)
        .collect();
    assert!(
        !before.is_empty() && after.len() >= 20,
        "too few impulses around the stop"
    );
    let wrong: Vec<_> = after
        .iter()
        .filter(|(_, e)| e.abs() > TOLERANCE_MS)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} impulse(s) written more than {RECOVERY_S} s after host-playd resumed were heard more \
         than {TOLERANCE_MS} ms off their prediction: {wrong:?}\n{}",
        wrong.len(),
        stack.logs()
    );
}

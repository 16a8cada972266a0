//! The tunnel sink behaves like a local sink (issue 13): a client with
//! default buffering is heard within the sink's latency, a suspend during
//! playback loses nothing, and a stream moved away and back is heard once.
//! Real guest and host PulseAudio, the real module and host-playd; what
//! arrived is checked sample by sample on the host sink's monitor.

use std::process::Stdio;
use std::time::{Duration, Instant};

use secure_tunnel_e2e::heard::{analyse, secs, segments_ms, source_positions};
use secure_tunnel_e2e::{
    patests, signal, Recorder, TunnelStack, CHANNELS, GUEST_SINK, HOST_SINK, RATE,
};

const FRAMES_PER_SEC: usize = RATE as usize;
const FORMAT: &str = "rate=48000 channels=2 format=s16le";
const LATENCY_MSEC: u64 = 60;
const LIVE: Duration = Duration::from_secs(5);

/// These tests measure timing (first sound within 110 ms, clock stalls):
/// run one at a time so they do not load each other's daemons.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_stack() -> TunnelStack {
    TunnelStack::start(&format!("{FORMAT} latency_msec={LATENCY_MSEC}"))
        .unwrap_or_else(|e| panic!("starting the tunnel: {e}"))
}

fn host_recorder(stack: &TunnelStack) -> Recorder {
    let mut rec =
        Recorder::start(&stack.host, &format!("{HOST_SINK}.monitor")).expect("parec on the host");
    rec.wait_live(LIVE).expect("host monitor live");
    rec
}

/// The index of the one stream playing in the guest.
fn sink_input(stack: &TunnelStack) -> String {
    let text = stack
        .guest
        .pactl_ok(&["list", "short", "sink-inputs"])
        .expect("sink-inputs");
    text.split_whitespace().next().unwrap_or("").to_owned()
}

/// `paplay` with default buffering playing `played` into the tunnel sink,
/// started now; killed if the test ends first.
struct Paplay(std::process::Child, Instant);

impl Paplay {
    fn start(stack: &TunnelStack, played: &[i16]) -> Self {
        let file = stack.guest.dir().join(format!("clip-{}.raw", played.len()));
        std::fs::write(&file, signal::to_bytes(played)).expect("write clip");
        let mut cmd = stack.guest.client("paplay").expect("paplay");
        cmd.arg(format!("--device={GUEST_SINK}"))
            .args(["--raw", "--format=s16le", "--rate=48000", "--channels=2"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let started = Instant::now();
        Self(cmd.spawn().expect("spawn paplay"), started)
    }

    /// Waits for paplay to finish successfully.
    fn wait(mut self, timeout: Duration, stack: &TunnelStack) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().expect("paplay status") {
                assert!(
                    status.success(),
                    "paplay failed: {status}\n{}",
                    stack.logs()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "paplay still running after {timeout:?}\n{}",
                stack.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Paplay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `paplay` with default buffering (it asks the sink for about 2 s) is heard
/// within `latency_msec` + 50 ms of its start.
#[test]
fn default_buffering_is_heard_within_the_sink_latency() {
    let _serial = serial();
    let stack = start_stack();
    let rec = host_recorder(&stack);
    let played = signal::pseudo_random(0x5747, FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    let started = player.1;
    player.wait(Duration::from_secs(10), &stack);
    std::thread::sleep(Duration::from_millis(300));
    let recording = rec.stop();
    let positions = source_positions(&played, &recording.samples());
    let &(first_rec, first_src) = positions
        .first()
        .unwrap_or_else(|| panic!("the clip never arrived\n{}", stack.logs()));
    let heard_at = recording
        .arrival_of_frame(first_rec)
        .expect("frame was recorded");
    let delay = heard_at.saturating_duration_since(started);
    println!(
        "paplay (default buffering): first heard {:.1} ms after its start (signal frame {first_src}), \
         {:.3} s of 1 s heard",
        delay.as_secs_f64() * 1e3,
        secs(analyse(&played, &recording).frames)
    );
    assert!(
        first_src < 48,
        "the clip's start was skipped: first frame heard {first_src}"
    );
    assert!(
        delay <= Duration::from_millis(LATENCY_MSEC + 50),
        "first heard {delay:?} after paplay started (limit {} ms)\n{}",
        LATENCY_MSEC + 50,
        stack.logs()
    );
}

/// Suspending the sink during playback and resuming it: the audio rendered
/// before the suspend is played out before the host corks (the chosen
/// behaviour, docs/design.md "Suspend and cork"), so the whole 3 s are heard,
/// once each.
#[test]
fn suspend_during_playback_hears_everything_once() {
    let _serial = serial();
    let stack = start_stack();
    let rec = host_recorder(&stack);
    let played = signal::pseudo_random(0x5A5B, 3 * FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    std::thread::sleep(Duration::from_millis(1000));
    stack
        .guest
        .pactl_ok(&["suspend-sink", GUEST_SINK, "1"])
        .expect("suspend");
    std::thread::sleep(Duration::from_millis(1000));
    stack
        .guest
        .pactl_ok(&["suspend-sink", GUEST_SINK, "0"])
        .expect("resume");
    player.wait(Duration::from_secs(15), &stack);
    std::thread::sleep(Duration::from_millis(300));
    let heard = analyse(&played, &rec.stop());
    println!(
        "suspend 1 s into a 3 s clip: {:.3} s heard, {} frames repeated; segments {}",
        secs(heard.frames),
        heard.repeated,
        segments_ms(&heard)
    );
    assert!(
        heard.frames >= 3 * FRAMES_PER_SEC - FRAMES_PER_SEC / 50,
        "only {:.3} s of 3 s heard ({})\n{}",
        secs(heard.frames),
        segments_ms(&heard),
        stack.logs()
    );
    assert!(heard.repeated < FRAMES_PER_SEC / 100, "{heard:?}");
}

/// A stream moved to another sink after 1.5 s and back 1.5 s later: the
/// tunnel plays 1.5 s, a gap, then the remaining 2 s (3.5 s ± 0.1 s), with
/// no segment of the signal heard twice.
#[test]
fn move_away_and_back_hears_no_repeat() {
    let _serial = serial();
    let stack = start_stack();
    stack
        .guest
        .load_module("module-null-sink", "sink_name=elsewhere")
        .unwrap_or_else(|e| panic!("null sink: {e}"));
    let rec = host_recorder(&stack);
    let played = signal::pseudo_random(0x3070, 5 * FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    std::thread::sleep(Duration::from_millis(1500));
    let id = sink_input(&stack);
    stack
        .guest
        .pactl_ok(&["move-sink-input", &id, "elsewhere"])
        .expect("move away");
    std::thread::sleep(Duration::from_millis(1500));
    stack
        .guest
        .pactl_ok(&["move-sink-input", &id, GUEST_SINK])
        .expect("move back");
    player.wait(Duration::from_secs(15), &stack);
    std::thread::sleep(Duration::from_millis(300));
    let heard = analyse(&played, &rec.stop());
    println!(
        "move away at 1.5 s and back at 3 s: {:.3} s heard, {} frames repeated; segments {}",
        secs(heard.frames),
        heard.repeated,
        segments_ms(&heard)
    );
    assert!(
        (secs(heard.frames) - 3.5).abs() <= 0.1,
        "{:.3} s heard, expected 3.5 ± 0.1 s ({})\n{}",
        secs(heard.frames),
        segments_ms(&heard),
        stack.logs()
    );
    assert!(heard.repeated < FRAMES_PER_SEC / 100, "{heard:?}");
}

/// Rewinds are seen best with a large host buffer: without them, a stream
/// leaving the tunnel is heard on it for the whole host buffer more, and a
/// stream joining waits behind it.
const REWIND_LATENCY_MSEC: u64 = 200;

fn start_rewind_stack() -> TunnelStack {
    TunnelStack::start(&format!("{FORMAT} latency_msec={REWIND_LATENCY_MSEC}"))
        .unwrap_or_else(|e| panic!("starting the tunnel: {e}"))
}

/// A stream moved from the tunnel to another sink: the tunnel withdraws
/// from the host what it has not played (a Rewind), and PulseAudio plays
/// it on the new sink. The new sink continues exactly where the tunnel
/// stopped (nothing lost, nothing twice), and the tunnel falls silent
/// within its guard of the move. Without rewinds the content is just as
/// continuous (PulseAudio then gives the moved stream nothing back), but
/// the tunnel plays on for what its host holds after the move, over the
/// new sink's sound. Measured: silent 12 ms after the move with rewinds,
/// 130 ms without.
#[test]
fn a_stream_moved_away_is_withdrawn_from_the_host() {
    let _serial = serial();
    let stack = start_rewind_stack();
    stack
        .guest
        .load_module("module-null-sink", &format!("sink_name=elsewhere {FORMAT}"))
        .unwrap_or_else(|e| panic!("null sink: {e}"));
    let rec = host_recorder(&stack);
    let mut elsewhere =
        Recorder::start(&stack.guest, "elsewhere.monitor").expect("parec on the guest");
    elsewhere.wait_live(LIVE).expect("guest monitor live");
    let played = signal::pseudo_random(0x4E57, 4 * FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    std::thread::sleep(Duration::from_millis(1500));
    let id = sink_input(&stack);
    stack
        .guest
        .pactl_ok(&["move-sink-input", &id, "elsewhere"])
        .expect("move away");
    let moved_at = Instant::now();
    player.wait(Duration::from_secs(15), &stack);
    std::thread::sleep(Duration::from_millis(300));
    let recording = rec.stop();
    let tunnel = analyse(&played, &recording);
    let there = analyse(&played, &elsewhere.stop());
    let last_rec = source_positions(&played, &recording.samples())
        .last()
        .map_or(0, |&(r, _)| r);
    let tail = recording
        .arrival_of_frame(last_rec)
        .expect("frame was recorded")
        .saturating_duration_since(moved_at);
    let tunnel_last = tunnel.segments.iter().map(|s| s.1).max().unwrap_or(0);
    let there_first = there
        .segments
        .iter()
        .map(|s| s.0)
        .min()
        .unwrap_or(usize::MAX);
    let overlap_ms = (tunnel_last as f64 - there_first as f64) * 1000.0 / FRAMES_PER_SEC as f64;
    println!(
        "moved away at 1.5 s (host buffer {REWIND_LATENCY_MSEC} ms): tunnel heard up to \
         {:.1} ms ({}), the other sink from {:.1} ms ({}): {overlap_ms:.1} ms heard on both; \
         the tunnel fell silent {:.1} ms after the move",
        tunnel_last as f64 * 1000.0 / FRAMES_PER_SEC as f64,
        segments_ms(&tunnel),
        there_first as f64 * 1000.0 / FRAMES_PER_SEC as f64,
        segments_ms(&there),
        tail.as_secs_f64() * 1e3,
    );
    assert!(
        tunnel.segments.first().is_some_and(|s| s.0 < 48) && tunnel.repeated == 0,
        "the tunnel did not play the start once: {tunnel:?}\n{}",
        stack.logs()
    );
    assert!(
        (-5.0..=5.0).contains(&overlap_ms),
        "{overlap_ms:.1} ms heard on both sinks (negative: lost)\n{}",
        stack.logs()
    );
    assert!(
        tail < Duration::from_millis(REWIND_LATENCY_MSEC / 2),
        "the tunnel played on {tail:?} after the move (its host buffer is \
         {REWIND_LATENCY_MSEC} ms)\n{}",
        stack.logs()
    );
}

/// A second stream starting while one plays is mixed in at once: the
/// tunnel rewinds what the host has not played, instead of making the new
/// stream wait behind the host buffer. Measured: 26 ms with rewinds, 130 ms
/// without (the host buffer, less what the client's own start-up hides).
#[test]
fn a_new_stream_is_heard_without_waiting_behind_the_host_buffer() {
    let _serial = serial();
    let stack = start_rewind_stack();
    let rec = host_recorder(&stack);
    // The first stream plays silence, so the recording is the new one's
    // signal bit for bit (mixed with zeros at unity volume).
    let quiet = vec![0i16; 6 * FRAMES_PER_SEC * CHANNELS];
    let first = Paplay::start(&stack, &quiet);
    std::thread::sleep(Duration::from_millis(1500));
    let played = signal::pseudo_random(0x6E77, FRAMES_PER_SEC);
    let second = Paplay::start(&stack, &played);
    let started = second.1;
    second.wait(Duration::from_secs(10), &stack);
    std::thread::sleep(Duration::from_millis(300));
    drop(first);
    let recording = rec.stop();
    let positions = source_positions(&played, &recording.samples());
    let &(first_rec, first_src) = positions
        .first()
        .unwrap_or_else(|| panic!("the second stream never arrived\n{}", stack.logs()));
    let delay = recording
        .arrival_of_frame(first_rec)
        .expect("frame was recorded")
        .saturating_duration_since(started);
    println!(
        "a second stream joining a playing one (host buffer {REWIND_LATENCY_MSEC} ms): first \
         heard {:.1} ms after its start (signal frame {first_src})",
        delay.as_secs_f64() * 1e3
    );
    assert!(
        first_src < 48,
        "its start was skipped: first frame {first_src}"
    );
    assert!(
        delay < Duration::from_millis(80),
        "first heard {delay:?} after it started: it waited behind the host buffer\n{}",
        stack.logs()
    );
}

/// A volume change of a playing stream is heard at once: PulseAudio
/// rewinds the sink to apply it to audio already rendered, and the tunnel
/// withdraws from the host what it has not played. Measured from the
/// `pactl` call to the first 5 ms window heard at the new level: 8.6 ms with
/// rewinds, 131 ms without.
#[test]
fn a_volume_change_is_heard_without_waiting_behind_the_host_buffer() {
    let _serial = serial();
    let stack = start_rewind_stack();
    let rec = host_recorder(&stack);
    let played = signal::pseudo_random(0x7011, 4 * FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    std::thread::sleep(Duration::from_millis(1500));
    let id = sink_input(&stack);
    stack
        .guest
        .pactl_ok(&["set-sink-input-volume", &id, "50%"])
        .expect("volume");
    let changed_at = Instant::now();
    player.wait(Duration::from_secs(15), &stack);
    std::thread::sleep(Duration::from_millis(300));
    let recording = rec.stop();
    let samples = recording.samples();
    // 5 ms windows: full level (the signal's RMS, about 0.58 of full
    // scale) before, 50 % (-18 dB, an eighth of the amplitude) after.
    let window = FRAMES_PER_SEC / 200 * CHANNELS;
    let rms = |w: &[i16]| -> f64 {
        (w.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / w.len() as f64).sqrt()
    };
    let loud = |w: &[i16]| rms(w) > 8_000.0;
    let windows: Vec<&[i16]> = samples.chunks_exact(window).collect();
    let first_loud = windows
        .iter()
        .position(|w| loud(w))
        .expect("the clip was heard");
    let turn = windows[first_loud..]
        .iter()
        .position(|w| !loud(w) && rms(w) > 500.0)
        .map(|i| first_loud + i)
        .unwrap_or_else(|| panic!("the volume change was never heard\n{}", stack.logs()));
    let heard_at = recording
        .arrival_of_frame(turn * window / CHANNELS)
        .expect("recorded");
    let delay = heard_at.saturating_duration_since(changed_at);
    println!(
        "volume to 50 % after 1.5 s (host buffer {REWIND_LATENCY_MSEC} ms): heard {:.1} ms after \
         the change",
        delay.as_secs_f64() * 1e3
    );
    assert!(
        delay < Duration::from_millis(80),
        "the new volume was heard {delay:?} after the change\n{}",
        stack.logs()
    );
}

/// A PulseAudio test program aimed at the guest daemon, playing into the
/// tunnel sink (`PULSE_SINK`), running in check's no-fork mode so killing it
/// ends it.
fn pa_test(stack: &TunnelStack, name: &str) -> std::process::Command {
    let program = patests::pa_test_program(name).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = stack
        .guest
        .client_by_env(&program)
        .unwrap_or_else(|e| panic!("{e}"));
    cmd.env("PULSE_SINK", GUEST_SINK).env("CK_FORK", "no");
    cmd
}

/// One line of interpol-test's log: real time and stream time (usec) and
/// whether the server said the stream was playing.
fn interpol_line(line: &str) -> Option<(u64, u64, bool)> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != 10 {
        return None;
    }
    let rtc = fields[1].trim().parse().ok()?;
    let t = fields[2].trim().parse().ok()?;
    Some((rtc, t, fields[7].trim() == "1"))
}

/// interpol-test with its default buffer (it asks ~2 s): once the stream is
/// created, its clock starts advancing within 100 ms and never stands still
/// longer than that in the first 3 s.
#[test]
fn interpol_test_clock_starts_without_a_stall() {
    let _serial = serial();
    let stack = start_stack();
    let mut cmd = pa_test(&stack, "interpol-test");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn interpol-test");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut samples = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(s) = interpol_line(&line) {
                samples.push(s);
            }
        }
        samples
    });
    std::thread::sleep(Duration::from_secs(4));
    let _ = child.kill();
    let _ = child.wait();
    let samples = reader.join().expect("reader");
    assert!(
        samples.len() > 100,
        "interpol-test printed {} timing lines",
        samples.len()
    );
    let first = samples[0].0;
    let window: Vec<_> = samples
        .iter()
        .filter(|s| s.0 <= first + 3_000_000)
        .collect();
    // From the first timing line (the stream exists) to the first advance.
    let start_stall = window
        .iter()
        .find(|s| s.1 > 0)
        .map_or(u64::MAX, |s| s.0 - first);
    // Longest stretch without an advance once it moved.
    let mut longest = 0;
    let mut since = None::<(u64, u64)>;
    for s in window.iter().skip_while(|s| s.1 == 0) {
        match since {
            Some((t, at)) if s.1 == t => longest = longest.max(s.0 - at),
            _ => since = Some((s.1, s.0)),
        }
    }
    println!(
        "interpol-test: stream clock started {:.1} ms after the stream appeared; longest stall after \
         that {:.1} ms ({} lines in 3 s)",
        start_stall as f64 / 1e3,
        longest as f64 / 1e3,
        window.len()
    );
    assert!(
        start_stall <= 100_000,
        "clock stalled {start_stall} usec at start\n{}",
        stack.logs()
    );
    assert!(
        longest <= 100_000,
        "clock stalled {longest} usec\n{}",
        stack.logs()
    );
}

/// PulseAudio's sync-playback (4 streams started corked together, which must
/// finish within check's 4.5 s timeout) passes 10 runs back to back.
#[test]
fn sync_playback_passes_ten_runs_back_to_back() {
    let _serial = serial();
    let stack = start_stack();
    for run in 1..=10 {
        let out = pa_test(&stack, "sync-playback")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run sync-playback");
        assert!(
            out.status.success(),
            "sync-playback run {run} of 10 failed: {}\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            stack.logs()
        );
    }
    println!("sync-playback: 10 of 10 runs passed back to back");
}

/// connect-stress (20 streams per connection, connecting and disconnecting
/// at random within 0.5 s) for 20 s: no "q overrun" in the guest's log.
#[test]
fn connect_stress_leaves_no_queue_overruns() {
    let _serial = serial();
    let stack = start_stack();
    let mut child = pa_test(&stack, "connect-stress")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn connect-stress");
    std::thread::sleep(Duration::from_secs(20));
    let alive = child.try_wait().expect("status").is_none();
    let _ = child.kill();
    let _ = child.wait();
    let log = stack.guest.log();
    let overruns = log.matches("q overrun").count();
    let dry = stack.playd.log().matches("ran dry").count();
    println!(
        "connect-stress 20 s: {overruns} queue overrun warnings, {dry} host dry-run log lines"
    );
    assert!(alive, "connect-stress failed early\n{}", stack.logs());
    assert_eq!(
        overruns,
        0,
        "asyncq overruns in the guest log\n{}",
        stack.logs()
    );
}

//! The tunnel sink behaves like a local sink (issue 13): a client with
//! default buffering is heard within the sink's latency, a suspend during
//! playback loses nothing, and a stream moved away and back is heard once.
//! Real guest and host PulseAudio, the real module and host-playd; what
//! arrived is checked sample by sample on the host sink's monitor.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use secure_tunnel_e2e::{
    signal, Recorder, Recording, TunnelStack, CHANNELS, GUEST_SINK, HOST_SINK, RATE,
};

const FRAMES_PER_SEC: usize = RATE as usize;
const FORMAT: &str = "rate=48000 channels=2 format=s16le";
const LATENCY_MSEC: u64 = 60;
const LIVE: Duration = Duration::from_secs(5);

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

/// Where each recorded frame came from in the played signal: for every
/// frame of `recording` whose next two frames equal two frames of `played`
/// (a pseudo-random signal, so two frames identify a position), that
/// position. Silence and partial frames map to nothing.
fn source_positions(played: &[i16], recording: &[i16]) -> Vec<(usize, usize)> {
    let key = |s: &[i16]| -> u64 {
        s.iter()
            .take(2 * CHANNELS)
            .fold(0u64, |k, &v| (k << 16) | u64::from(v as u16))
    };
    let frames = played.len() / CHANNELS;
    let mut index = HashMap::with_capacity(frames);
    for f in 0..frames.saturating_sub(1) {
        index.insert(key(&played[f * CHANNELS..]), f);
    }
    (0..(recording.len() / CHANNELS).saturating_sub(1))
        .filter_map(|r| index.get(&key(&recording[r * CHANNELS..])).map(|&p| (r, p)))
        .collect()
}

/// What a recording holds of a played signal.
#[derive(Debug)]
struct Heard {
    /// Frames of the signal heard at least once.
    frames: usize,
    /// Frames of the signal heard more than once.
    repeated: usize,
    /// Runs of consecutive signal positions, as (first, last) frames.
    segments: Vec<(usize, usize)>,
}

fn analyse(played: &[i16], recording: &Recording) -> Heard {
    let positions = source_positions(played, &recording.samples());
    let mut count: HashMap<usize, u32> = HashMap::new();
    let mut segments: Vec<(usize, usize)> = Vec::new();
    for &(_, p) in &positions {
        *count.entry(p).or_default() += 1;
        match segments.last_mut() {
            Some((_, last)) if p == *last + 1 => *last = p,
            _ => segments.push((p, p)),
        }
    }
    Heard {
        frames: count.len(),
        repeated: count.values().filter(|&&n| n > 1).count(),
        segments,
    }
}

fn secs(frames: usize) -> f64 {
    frames as f64 / FRAMES_PER_SEC as f64
}

fn segments_ms(h: &Heard) -> String {
    h.segments
        .iter()
        .filter(|(a, b)| b - a > 48)
        .map(|(a, b)| {
            format!(
                "{}..{} ms",
                a * 1000 / FRAMES_PER_SEC,
                b * 1000 / FRAMES_PER_SEC
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
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
    let stack = start_stack();
    stack
        .guest
        .load_module("module-null-sink", "sink_name=elsewhere")
        .unwrap_or_else(|e| panic!("null sink: {e}"));
    let rec = host_recorder(&stack);
    let played = signal::pseudo_random(0x3070, 5 * FRAMES_PER_SEC);
    let player = Paplay::start(&stack, &played);
    let input = || -> String {
        let text = stack
            .guest
            .pactl_ok(&["list", "short", "sink-inputs"])
            .expect("sink-inputs");
        text.split_whitespace().next().unwrap_or("").to_owned()
    };
    std::thread::sleep(Duration::from_millis(1500));
    let id = input();
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

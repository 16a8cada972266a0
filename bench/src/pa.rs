//! The two libpulse clients of the impulse probe, each on its own thread with
//! its own main loop: a player that writes coded impulses and predicts, from
//! `pa_stream_get_latency`, when each will be heard; a recorder on a sink's
//! monitor that timestamps when each really was.
//!
//! Times are seconds on one `Instant` epoch (CLOCK_MONOTONIC, the clock
//! PulseAudio's own timing uses), shared by both threads.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use libpulse_binding::{
    context::{Context, FlagSet as ContextFlags, State as ContextState},
    def::BufferAttr,
    mainloop::standard::{IterateResult, Mainloop},
    sample::{Format, Spec},
    stream::{FlagSet as StreamFlags, Latency, PeekResult, SeekMode, State as StreamState, Stream},
};

use crate::{
    clock::secs,
    impulses::{Coder, Detector, Impulse},
};

/// Frames per second of every stream (s16le stereo).
pub const RATE: u32 = 48_000;
const FRAME_BYTES: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn spec() -> Spec {
    Spec {
        format: Format::S16le,
        channels: 2,
        rate: RATE,
    }
}

fn ms_to_bytes(ms: f64) -> u32 {
    ((ms / 1e3 * f64::from(RATE)).round() as u32).max(1) * FRAME_BYTES as u32
}

/// Signed seconds of a libpulse latency.
fn latency_s(l: Latency) -> f64 {
    match l {
        Latency::None => 0.0,
        Latency::Positive(us) => us.0 as f64 / 1e6,
        Latency::Negative(us) => -(us.0 as f64 / 1e6),
    }
}

/// The flags a real video player uses (mpv's ao_pulse, for one).
fn player_flags() -> StreamFlags {
    StreamFlags::ADJUST_LATENCY | StreamFlags::INTERPOLATE_TIMING | StreamFlags::AUTO_TIMING_UPDATE
}

/// Iterates without blocking for long, so a stop request is seen promptly.
fn iterate(ml: &mut Mainloop) -> Result<()> {
    match ml.iterate(false) {
        IterateResult::Success(0) => {
            thread::sleep(Duration::from_micros(500));
            Ok(())
        }
        IterateResult::Success(_) => Ok(()),
        IterateResult::Quit(_) => bail!("libpulse main loop quit"),
        IterateResult::Err(e) => Err(anyhow!("libpulse main loop failed: {e}")),
    }
}

fn connect(server: &str, name: &str) -> Result<(Mainloop, Context)> {
    let mut ml = Mainloop::new().context("creating a libpulse main loop")?;
    let mut ctx = Context::new(&ml, name).context("creating a libpulse context")?;
    ctx.connect(Some(server), ContextFlags::NOAUTOSPAWN, None)
        .map_err(|e| anyhow!("connecting to {server}: {e}"))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        iterate(&mut ml)?;
        match ctx.get_state() {
            ContextState::Ready => return Ok((ml, ctx)),
            ContextState::Failed | ContextState::Terminated => {
                bail!("connecting to {server}: {}", ctx.errno())
            }
            _ if Instant::now() > deadline => bail!("connecting to {server}: timed out"),
            _ => {}
        }
    }
}

fn wait_stream(ml: &mut Mainloop, stream: &Stream, what: &str) -> Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        iterate(ml)?;
        match stream.get_state() {
            StreamState::Ready => return Ok(()),
            StreamState::Failed | StreamState::Terminated => bail!("{what}: stream failed"),
            _ if Instant::now() > deadline => bail!("{what}: stream not ready in time"),
            _ => {}
        }
    }
}

/// One impulse the player wrote.
#[derive(Debug, Clone, Copy)]
pub struct Prediction {
    /// Index in the impulse train (its code is `index % Coder::CODES`).
    pub index: u64,
    /// When the write holding the impulse's first frame returned.
    pub written: f64,
    /// `pa_stream_get_latency` right after that write.
    pub reported: f64,
    /// When the player expects the impulse's first frame to be heard.
    pub predicted: f64,
    /// The same prediction from the stream's last timing update alone (read
    /// index − sink latency, advanced by the update's age while playing),
    /// without libpulse's interpolation: tells the sink's report from the
    /// smoother's following of it. `None` without valid timing.
    pub raw_predicted: Option<f64>,
}

/// What the player should play.
#[derive(Debug, Clone)]
pub struct PlayConfig {
    /// `unix:...` of the PulseAudio to play on.
    pub server: String,
    /// The sink there.
    pub sink: String,
    /// The stream's `tlength`, in milliseconds.
    pub tlength_ms: f64,
    /// Impulse coding and spacing.
    pub coder: Coder,
}

/// A player thread, stopped and joined by [`PlayProbe::stop`] (or on drop).
#[derive(Debug)]
pub struct PlayProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<Vec<Prediction>>>>,
}

impl PlayProbe {
    /// Connects and starts playing; returns once the stream is ready.
    pub fn start(config: PlayConfig) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let handle = thread::Builder::new()
            .name("play-probe".into())
            .spawn(move || play(&config, &flag, &ready_tx))
            .context("spawning the player thread")?;
        let mut probe = Self {
            stop,
            handle: Some(handle),
        };
        match ready_rx.recv_timeout(CONNECT_TIMEOUT * 2) {
            Ok(()) => Ok(probe),
            Err(_) => Err(probe
                .join()
                .err()
                .unwrap_or_else(|| anyhow!("the player never became ready"))),
        }
    }

    /// Stops playing; returns every impulse written.
    pub fn stop(mut self) -> Result<Vec<Prediction>> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<Prediction>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the player thread panicked"))?,
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for PlayProbe {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn play(
    config: &PlayConfig,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
) -> Result<Vec<Prediction>> {
    let what = format!("playing into {} on {}", config.sink, config.server);
    let (mut ml, mut ctx) = connect(&config.server, "bench-player").context(what.clone())?;
    let mut stream = Stream::new(&mut ctx, "impulses", &spec(), None)
        .ok_or_else(|| anyhow!("{what}: cannot create a stream"))?;
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: ms_to_bytes(config.tlength_ms),
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: u32::MAX,
    };
    stream
        .connect_playback(Some(&config.sink), Some(&attr), player_flags(), None, None)
        .map_err(|e| anyhow!("{what}: {e}"))?;
    wait_stream(&mut ml, &stream, &what)?;
    let _ = ready.send(());

    let coder = config.coder;
    let mut frame: u64 = 0;
    let mut predictions = Vec::new();
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        iterate(&mut ml)?;
        if stream.get_state() != StreamState::Ready {
            bail!("{what}: the stream is {:?}", stream.get_state());
        }
        let Some(writable) = stream.writable_size() else {
            continue;
        };
        let frames = writable / FRAME_BYTES;
        if frames == 0 {
            continue;
        }
        buf.clear();
        let impulses = coder.render(frame, frames, &mut buf);
        stream
            .write(&buf, None, 0, SeekMode::Relative)
            .map_err(|e| anyhow!("{what}: write failed: {e}"))?;
        let now = secs(Instant::now());
        let end = frame + frames as u64;
        frame = end;
        if impulses.is_empty() {
            continue;
        }
        // No timing info yet (the very first writes): those impulses are
        // left out rather than predicted from nothing.
        let Ok(latency) = stream.get_latency() else {
            continue;
        };
        let reported = latency_s(latency);
        let heard_pos = stream.get_timing_info().and_then(|ti| {
            if ti.read_index_corrupt != 0 {
                return None;
            }
            let bytes_per_sec = f64::from(RATE) * FRAME_BYTES as f64;
            let mut pos = ti.read_index as f64 / bytes_per_sec - ti.sink_usec.0 as f64 / 1e6;
            if ti.playing != 0 {
                pos += ti.timestamp.age().0 as f64 / 1e6;
            }
            Some(pos)
        });
        for (index, start) in impulses {
            // The latency is that of the end of the write; the impulse
            // starts `end - start` frames before it.
            let predicted = now + reported - (end - start) as f64 / f64::from(RATE);
            predictions.push(Prediction {
                index,
                written: now,
                reported,
                predicted,
                raw_predicted: heard_pos.map(|pos| now + start as f64 / f64::from(RATE) - pos),
            });
        }
    }
    Ok(predictions)
}

/// Where the recording is on the timeline: the first frame of a fragment and
/// when it was heard (arrival time corrected by the record stream latency).
#[derive(Debug, Clone, Copy)]
struct Anchor {
    frame: u64,
    heard: f64,
}

#[derive(Debug, Default)]
struct Captured {
    anchors: Vec<Anchor>,
    impulses: Vec<(u64, i16)>,
}

/// A recorder thread on a monitor source, running until dropped.
#[derive(Debug)]
pub struct RecordProbe {
    stop: Arc<AtomicBool>,
    data: Arc<Mutex<Captured>>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl RecordProbe {
    /// Connects to `server` and records `source` with a `fragsize_ms`
    /// fragment size; returns once the stream delivers audio.
    pub fn start(server: &str, source: &str, fragsize_ms: f64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(Captured::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (flag, sink) = (Arc::clone(&stop), Arc::clone(&data));
        let (server, source) = (server.to_owned(), source.to_owned());
        let handle = thread::Builder::new()
            .name("record-probe".into())
            .spawn(move || record(&server, &source, fragsize_ms, &flag, &sink, &ready_tx))
            .context("spawning the recorder thread")?;
        let mut probe = Self {
            stop,
            data,
            handle: Some(handle),
        };
        match ready_rx.recv_timeout(CONNECT_TIMEOUT * 2) {
            Ok(()) => Ok(probe),
            Err(_) => Err(probe
                .join()
                .err()
                .unwrap_or_else(|| anyhow!("the recorder never delivered audio"))),
        }
    }

    /// Impulses heard so far with their heard time: the median, over the
    /// fragments within `window_s` of the impulse, of each fragment's
    /// (heard time − frame position). The monitor is clocked by the sink,
    /// so this only removes the recorder's own scheduling jitter.
    pub fn impulses(&self, window_s: f64) -> Vec<Impulse> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = f64::from(RATE);
        let half = (window_s * rate) as u64;
        let anchors = &data.anchors;
        data.impulses
            .iter()
            .filter_map(|&(frame, amplitude)| {
                let lo = anchors.partition_point(|a| a.frame + half < frame);
                let hi = anchors.partition_point(|a| a.frame <= frame + half);
                let mut offsets: Vec<f64> = anchors[lo..hi]
                    .iter()
                    .map(|a| a.heard - a.frame as f64 / rate)
                    .collect();
                offsets.sort_by(f64::total_cmp);
                let median = *offsets.get(offsets.len() / 2)?;
                Some(Impulse {
                    frame,
                    amplitude,
                    heard: median + frame as f64 / rate,
                })
            })
            .collect()
    }

    /// Whether the recorder thread is still running (an error ends it).
    pub fn check(&mut self) -> Result<()> {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            self.join()?;
            bail!("the recorder stopped");
        }
        Ok(())
    }

    fn join(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take() {
            Some(h) => h
                .join()
                .map_err(|_| anyhow!("the recorder thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for RecordProbe {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn record(
    server: &str,
    source: &str,
    fragsize_ms: f64,
    stop: &AtomicBool,
    data: &Mutex<Captured>,
    ready: &std::sync::mpsc::Sender<()>,
) -> Result<()> {
    let what = format!("recording {source} on {server}");
    let (mut ml, mut ctx) = connect(server, "bench-recorder").context(what.clone())?;
    let mut stream = Stream::new(&mut ctx, "monitor", &spec(), None)
        .ok_or_else(|| anyhow!("{what}: cannot create a stream"))?;
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: u32::MAX,
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: ms_to_bytes(fragsize_ms),
    };
    stream
        .connect_record(Some(source), Some(&attr), player_flags())
        .map_err(|e| anyhow!("{what}: {e}"))?;
    wait_stream(&mut ml, &stream, &what)?;

    let mut detector = Detector::new();
    let mut frame: u64 = 0;
    let mut announced = false;
    while !stop.load(Ordering::Relaxed) {
        iterate(&mut ml)?;
        if stream.get_state() != StreamState::Ready {
            bail!("{what}: the stream is {:?}", stream.get_state());
        }
        loop {
            let peeked = stream
                .peek()
                .map_err(|e| anyhow!("{what}: peek failed: {e}"))?;
            let bytes = match peeked {
                PeekResult::Empty => break,
                PeekResult::Hole(n) => {
                    detector.skip(n / FRAME_BYTES);
                    n
                }
                PeekResult::Data(d) => {
                    // Before the discard, the latency is that of the
                    // fragment's first frame.
                    let now = secs(Instant::now());
                    let latency = stream.get_latency().ok().map(latency_s);
                    let found = detector.feed(frame, d);
                    let mut c = data.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(l) = latency {
                        c.anchors.push(Anchor {
                            frame,
                            heard: now - l,
                        });
                    }
                    c.impulses.extend(found);
                    d.len()
                }
            };
            stream
                .discard()
                .map_err(|e| anyhow!("{what}: discard failed: {e}"))?;
            frame += (bytes / FRAME_BYTES) as u64;
            if !announced {
                announced = true;
                let _ = ready.send(());
            }
        }
    }
    Ok(())
}

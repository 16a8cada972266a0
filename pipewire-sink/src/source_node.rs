//! The microphone node (`--source-name`): an `Audio/Source` that records
//! from the host through host-playd, on guest-core's `SourceEngine` (the
//! PulseAudio source module's own engine: dialling, the capture session,
//! which audio to post, the latency).
//!
//! Unlike the sink, the source node follows the graph's driver (the
//! Dummy-Driver, or a card): each cycle takes one quantum from a local
//! queue that the engine fills at the host microphone's pace (or with
//! real-time silence while the host does not record for us). The queue is
//! primed to the latency target before audio flows, so the host's 10 ms
//! fragments and network jitter never starve a cycle; an empty queue gives
//! silence and is primed again (counted, logged), a queue beyond 500 ms
//! loses its oldest audio. Between two clocks that do not drift (this
//! machine's tests: both are the system clock) the audio is bit-exact; a
//! guest graph run by a card that drifts against the host's microphone
//! slips one quantum now and then (not rate-matched: docs/pipewire.md).
//! Why not drive the graph, as the sink does from the host's credit: tried,
//! PipeWire 0.3.65 ran an output driver's cycles out of step with the
//! triggers (quanta skipped and repeated).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use anyhow::{Context, Result};
use log::{info, warn};
use pipewire as pw;
use pipewire::{properties::properties, spa, stream::StreamFlags, stream::StreamState};
use secure_tunnel_guest::source::{Block, SourceEngine, SourceEvent};
use secure_tunnel_protocol::MAX_AUDIO_CHUNK;

use crate::pods;
use crate::service::{quantum_frames, Clock};

/// Audio kept for the graph at most: beyond it the oldest goes (a graph
/// that stopped pulling must not grow the queue).
const MAX_QUEUED_USEC: u64 = 500_000;
/// A latency change smaller than this is not worth a param update.
const LATENCY_STEP_NSEC: u64 = 500_000;
/// Most latency param updates per second.
const LATENCY_UPDATES_PER_SEC: u64 = 4;

/// The source's state, shared by the timer and the process callback.
pub struct SourceState {
    engine: SourceEngine,
    clock: Clock,
    /// Audio taken from the engine, not yet given to the graph.
    queue: VecDeque<u8>,
    quantum_bytes: usize,
    max_queued: usize,
    recording: bool,
    /// The queue reached the latency target since it last ran dry.
    primed: bool,
    prime_bytes: usize,
    underruns: u64,
    backlogs: u64,
    reported_nsec: Option<u64>,
    last_report: u64,
    dropped: u64,
}

impl SourceState {
    pub fn new(engine: SourceEngine, latency_msec: u32) -> Self {
        let spec = engine.spec().clone();
        let frame = spec.frame_size().max(1) as usize;
        let quantum = quantum_frames(latency_msec, spec.rate) as usize * frame;
        let max_queued = (spec.usec_to_bytes(MAX_QUEUED_USEC) as usize).max(2 * quantum);
        Self {
            engine,
            clock: Clock::new(),
            queue: VecDeque::new(),
            quantum_bytes: quantum,
            max_queued: max_queued - max_queued % frame,
            recording: false,
            primed: false,
            prime_bytes: (spec.usec_to_bytes(u64::from(latency_msec) * 1000) as usize)
                .max(2 * quantum)
                / frame
                * frame,
            underruns: 0,
            backlogs: 0,
            reported_nsec: None,
            last_report: 0,
            dropped: 0,
        }
    }

    /// Drives the capture connection and takes what the engine posts.
    fn tick(&mut self) {
        let now = self.clock.now();
        self.engine.set_recording(self.recording, now);
        self.engine.poll_io(now);
        while let Some(block) = self.engine.next_block(now, MAX_AUDIO_CHUNK) {
            match block {
                Block::Audio(a) => self.queue.extend(a),
                Block::Silence(n) => self.queue.extend(std::iter::repeat_n(0u8, n)),
            }
        }
        if !self.recording {
            self.queue.clear();
            self.primed = false;
        }
        let excess = self.queue.len().saturating_sub(self.max_queued);
        if excess > 0 {
            let frame = self.engine.spec().frame_size().max(1) as usize;
            let excess = excess.div_ceil(frame) * frame;
            self.queue.drain(..excess.min(self.queue.len()));
            self.dropped += excess as u64;
        }
        for event in self.engine.take_events() {
            match event {
                SourceEvent::Connected => info!("microphone: connected to host-playd"),
                SourceEvent::ConnectFailed(e) => warn!("microphone: cannot reach host-playd: {e}"),
                SourceEvent::Disconnected(e) => {
                    warn!("microphone: lost host-playd ({e}); recording silence")
                }
                SourceEvent::State(mic) => info!("microphone: {}", mic.as_str()),
            }
        }
    }

    /// The source's latency: the engine's (the host's capture clock) plus
    /// what waits here for the graph.
    fn latency_update(&mut self) -> Option<u64> {
        let now = self.clock.now();
        if now.saturating_sub(self.last_report) < 1_000_000 / LATENCY_UPDATES_PER_SEC {
            return None;
        }
        let queued = self.engine.spec().bytes_to_usec(self.queue.len() as u64);
        let nsec = (self.engine.latency_usec(now) + queued).saturating_mul(1000);
        match self.reported_nsec {
            Some(old) if old.abs_diff(nsec) < LATENCY_STEP_NSEC => None,
            _ => {
                self.reported_nsec = Some(nsec);
                self.last_report = now;
                Some(nsec)
            }
        }
    }

    /// Between PipeWire sessions: nobody records.
    pub fn idle(&mut self) {
        self.recording = false;
        self.tick();
    }

    pub fn shutdown(&mut self, why: &str) {
        self.engine.shutdown(why);
    }

    fn source_name(&self) -> String {
        self.engine.source_name().to_owned()
    }
}

/// The node of one PipeWire session; dropped with the session.
pub struct SourceNode {
    state: Rc<RefCell<SourceState>>,
    stream: pw::stream::StreamRc,
    _listener: pw::stream::StreamListener<()>,
}

impl SourceNode {
    /// Creates and connects the `Audio/Source` node on `core`.
    pub fn create(
        core: &pw::core::CoreRc,
        state: Rc<RefCell<SourceState>>,
        description: &str,
    ) -> Result<Self> {
        let (name, spec, quantum) = {
            let st = state.borrow();
            let spec = st.engine.spec().clone();
            let frames = st.quantum_bytes as u64 / u64::from(spec.frame_size().max(1));
            (st.source_name(), spec, frames)
        };
        let props = properties! {
            *pw::keys::MEDIA_CLASS => "Audio/Source",
            *pw::keys::NODE_NAME => name.as_str(),
            *pw::keys::NODE_DESCRIPTION => description,
            *pw::keys::MEDIA_TYPE => "Audio",
            *pw::keys::MEDIA_CATEGORY => "Capture",
            "priority.session" => "1000",
            "node.latency" => format!("{quantum}/{}", spec.rate).as_str(),
        };
        let stream = pw::stream::StreamRc::new(core.clone(), "secure-tunnel-mic", props)
            .context("creating the source stream")?;
        let listener = stream
            .add_local_listener::<()>()
            .state_changed({
                let st = state.clone();
                move |_, _, old, new| {
                    info!("source node: {old:?} -> {new:?}");
                    if let Ok(mut st) = st.try_borrow_mut() {
                        st.recording = matches!(new, StreamState::Streaming);
                    }
                }
            })
            .process({
                let st = state.clone();
                move |stream, _| fill_cycle(&st, stream)
            })
            .register()
            .context("registering the source's callbacks")?;
        pods::connect(
            &stream,
            &spec,
            spa::utils::Direction::Output,
            StreamFlags::MAP_BUFFERS,
        )
        .context("the source stream")?;
        info!("source {name} ({description}) created");
        Ok(Self {
            state,
            stream,
            _listener: listener,
        })
    }

    /// One timer tick: drives the engine and publishes the latency. No
    /// borrow is held across a PipeWire call.
    pub fn drive(&self) {
        match self.state.try_borrow_mut() {
            Ok(mut st) => st.tick(),
            Err(_) => return,
        }
        let update = self
            .state
            .try_borrow_mut()
            .ok()
            .and_then(|mut st| st.latency_update());
        if let Some(nsec) = update {
            pods::publish_latency(&self.stream, spa::sys::SPA_DIRECTION_OUTPUT, nsec, "source");
        }
    }

    /// Ends the session's node: nobody records any more.
    pub fn close(self) {
        if let Ok(mut st) = self.state.try_borrow_mut() {
            st.recording = false;
            st.reported_nsec = None;
        }
        let _ = self.stream.disconnect();
    }
}

/// Gives the graph what it asks for (one quantum) from the queue, once the
/// queue is primed; silence otherwise.
fn fill_cycle(st: &Rc<RefCell<SourceState>>, stream: &pw::stream::Stream) {
    let Ok(mut st) = st.try_borrow_mut() else {
        return;
    };
    let Some(mut buffer) = stream.dequeue_buffer() else {
        return;
    };
    let frame = st.engine.spec().frame_size().max(1) as usize;
    let requested = usize::try_from(buffer.requested()).unwrap_or(0) * frame;
    let Some(data) = buffer.datas_mut().first_mut() else {
        return;
    };
    let Some(bytes) = data.data() else {
        return;
    };
    let mut want = if requested > 0 {
        requested
    } else {
        st.quantum_bytes
    };
    want = want.min(bytes.len());
    want -= want % frame;
    if !st.primed && st.queue.len() >= st.prime_bytes.max(want) {
        st.primed = true;
    }
    // A backlog (the graph started pulling late, or stalled) is old audio:
    // a live microphone drops it down to the primed level rather than
    // stay that much late.
    let high_water = 2 * st.prime_bytes + want;
    if st.primed && st.queue.len() > high_water {
        let excess = st.queue.len() - st.prime_bytes;
        let excess = excess - excess % frame;
        st.queue.drain(..excess);
        st.dropped += excess as u64;
        st.backlogs += 1;
        if st.backlogs.is_power_of_two() {
            warn!(
                "microphone: {} ms of backlog dropped ({} times so far)",
                st.engine.spec().bytes_to_usec(excess as u64) / 1000,
                st.backlogs
            );
        }
    }
    let n = if st.primed {
        want.min(st.queue.len())
    } else {
        0
    };
    let n = n - n % frame;
    for (dst, src) in bytes.iter_mut().zip(st.queue.drain(..n)) {
        *dst = src;
    }
    bytes[n..want].fill(0);
    if st.primed && n < want {
        st.primed = false;
        st.underruns += 1;
        if st.underruns.is_power_of_two() {
            warn!(
                "microphone: the queue ran dry ({} times so far); priming again",
                st.underruns
            );
        }
    }
    let chunk = data.chunk_mut();
    *chunk.offset_mut() = 0;
    *chunk.stride_mut() = i32::try_from(frame).unwrap_or(0);
    *chunk.size_mut() = u32::try_from(want).unwrap_or(0);
}

//! One PipeWire session of the service: the sink node, the timer that drives
//! the engine, and the graph cycles it triggers. The engine (and with it the
//! connection to host-playd) outlives a session, so a PipeWire restart does
//! not drop the host stream's connection.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{error, info, warn};
use pipewire as pw;
use pw::properties::properties;
use pw::spa;
use pw::stream::{StreamFlags, StreamState};
use secure_tunnel_guest::engine::{Engine, Event};
use secure_tunnel_guest::session::Activity;

use crate::pacer::{Grant, Pacer};
use crate::pods;
use crate::source_node::{SourceNode, SourceState};

/// How often the engine is driven: credit from the host arrives at the
/// host's period (~10 ms), so a 4 ms tick keeps the graph within a few ms
/// of it at ~250 wake-ups per second.
const TICK: Duration = Duration::from_millis(4);
/// A latency change smaller than this is not worth a param update.
const LATENCY_STEP_NSEC: u64 = 500_000;
/// Most latency param updates per second.
const LATENCY_UPDATES_PER_SEC: u32 = 4;
/// Most graph cycles triggered per tick (catching up after a stall).
const MAX_CYCLES_PER_TICK: usize = 8;

/// The graph quantum the node asks for: an eighth of the latency target (a
/// power of two, 64..=2048 frames), so the host queue is refilled in steps
/// well below its size (a 60 ms target at 48 kHz: 256 frames, 5.3 ms).
pub fn quantum_frames(latency_msec: u32, rate: u32) -> u64 {
    let frames = u64::from(latency_msec) * u64::from(rate) / 1000 / 8;
    let mut q = 64;
    while q * 2 <= frames && q < 2048 {
        q *= 2;
    }
    q
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// SIGTERM or SIGINT: leave.
    Stop,
    /// PipeWire went away (or never came): try again later.
    Lost,
}

/// Monotonic microseconds since the service started: the engine's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

struct State {
    engine: Engine,
    pacer: Pacer,
    clock: Clock,
    reported_nsec: Option<u64>,
    last_report: u64,
    /// The engine's latency summed over the ticks since the last report
    /// (usec, count): see [`State::latency_update`].
    latency_sum: (i64, i64),
    dropped_logged: u64,
}

impl State {
    /// Drives the connection and restates the grant.
    fn tick(&mut self) {
        let now = self.clock.now();
        self.engine.poll_io(now);
        let (sum, n) = self.latency_sum;
        self.latency_sum = (
            sum.saturating_add(self.engine.latency_usec(now)),
            n.saturating_add(1),
        );
        if self.engine.is_connected() {
            let credit = self.engine.render_budget(now) as u64;
            self.pacer.grant(Grant::Credit(credit));
        } else {
            // Each call advances the null clock one block when it is due.
            for _ in 0..64 {
                let elapsed = self.engine.render_budget(now) as u64;
                if elapsed == 0 {
                    break;
                }
                self.pacer.grant(Grant::Elapsed(elapsed));
            }
        }
        for event in self.engine.take_events() {
            match event {
                Event::Connected { buffer_bytes, .. } => {
                    info!("connected to host-playd (host buffer {buffer_bytes} bytes)")
                }
                // The PipeWire graph does not rewind: nothing changes.
                Event::NoRewinds => {}
                Event::ConnectFailed(e) => warn!("cannot reach host-playd: {e}"),
                Event::Disconnected(e) => warn!("lost host-playd: {e}; playing into the void"),
                Event::Underruns { new } => warn!("host reported {new} more underruns"),
            }
        }
        if self.pacer.dropped > self.dropped_logged + 48_000 {
            warn!(
                "another driver runs the graph: {} bytes beyond the host's grant dropped so far",
                self.pacer.dropped
            );
            self.dropped_logged = self.pacer.dropped;
        }
    }

    /// The latency to publish now, if it changed enough and the rate limit
    /// allows.
    fn latency_update(&mut self) -> Option<u64> {
        let now = self.clock.now();
        if now.saturating_sub(self.last_report) < 1_000_000 / u64::from(LATENCY_UPDATES_PER_SEC) {
            return None;
        }
        // The mean over the ticks since the last report, not one reading:
        // the engine's latency is a sawtooth (the rendered position jumps
        // by a quantum at each cycle, the heard one advances smoothly), and
        // one reading at a random phase told clients anything between its
        // low and its high, a quantum apart (21 ms at 150 ms), from one
        // report to the next. The mean is what PulseAudio clients (through
        // pipewire-pulse) hear within a few ms; native clients hear about
        // half a quantum less (docs/pipewire.md, "Latency": measured, and
        // the low instead overshoots both).
        let (sum, n) = std::mem::take(&mut self.latency_sum);
        let usec = if n > 0 {
            sum / n
        } else {
            self.engine.latency_usec(now)
        };
        let nsec = u64::try_from(usec.max(0)).unwrap_or(0).saturating_mul(1000);
        match self.reported_nsec {
            Some(old) if old.abs_diff(nsec) < LATENCY_STEP_NSEC => None,
            _ => {
                self.reported_nsec = Some(nsec);
                self.last_report = now;
                Some(nsec)
            }
        }
    }
}

/// The engine between sessions.
pub struct Service {
    state: Rc<RefCell<State>>,
    description: String,
    /// The microphone (`--source-name`) and its node's description.
    microphone: Option<(Rc<RefCell<SourceState>>, String)>,
    /// Set by SIGTERM or SIGINT.
    stop: Arc<AtomicBool>,
    /// The last session error logged, so a PipeWire that stays away is
    /// logged once, not once per attempt.
    last_error: RefCell<Option<String>>,
}

impl Service {
    pub fn new(
        engine: Engine,
        microphone: Option<(SourceState, String)>,
        description: String,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let spec = engine.spec().clone();
        let frames = quantum_frames(engine.target_latency_usec() / 1000, spec.rate);
        let quantum = frames * u64::from(spec.frame_size());
        Self {
            state: Rc::new(RefCell::new(State {
                pacer: Pacer::new(spec.bytes_per_second(), quantum),
                engine,
                clock: Clock::new(),
                reported_nsec: None,
                latency_sum: (0, 0),
                last_report: 0,
                dropped_logged: 0,
            })),
            description,
            microphone: microphone.map(|(s, d)| (Rc::new(RefCell::new(s)), d)),
            stop,
            last_error: RefCell::new(None),
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Logs a session error once per distinct message.
    pub fn session_failed(&self, message: String) {
        let mut last = self.last_error.borrow_mut();
        if last.as_deref() != Some(message.as_str()) {
            error!("{message}; retrying every reconnect interval");
            *last = Some(message);
        }
    }

    /// Keeps the host connection alive while PipeWire is away.
    pub fn idle_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while Instant::now() < until && !self.stopped() {
            {
                let mut st = self.state.borrow_mut();
                let now = st.clock.now();
                st.engine.set_activity(Activity::Suspended, now);
                st.tick();
            }
            if let Some((mic, _)) = &self.microphone {
                mic.borrow_mut().idle();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn shutdown(&self, why: &str) {
        self.state.borrow_mut().engine.shutdown(why);
        if let Some((mic, _)) = &self.microphone {
            mic.borrow_mut().shutdown(why);
        }
    }

    /// Runs one PipeWire session until PipeWire goes away or a signal.
    pub fn run_session(&self) -> Result<End> {
        let mainloop = pw::main_loop::MainLoopRc::new(None).context("creating a main loop")?;
        let context = pw::context::ContextRc::new(&mainloop, None).context("creating a context")?;
        let core = context.connect_rc(None).context("connecting to PipeWire")?;
        let end = Rc::new(RefCell::new(End::Lost));

        let quit = mainloop.downgrade();
        let _core_listener = core
            .add_listener_local()
            .error(move |id, _seq, res, message| {
                if id == pw::core::PW_ID_CORE {
                    error!("PipeWire: {message} ({res})");
                    if let Some(l) = quit.upgrade() {
                        l.quit();
                    }
                }
            })
            .register();

        let (name, spec, latency_msec) = {
            let st = self.state.borrow();
            (
                st.engine.sink_name().to_owned(),
                st.engine.spec().clone(),
                st.engine.target_latency_usec() / 1000,
            )
        };
        let props = properties! {
            *pw::keys::MEDIA_CLASS => "Audio/Sink",
            *pw::keys::NODE_NAME => name.as_str(),
            *pw::keys::NODE_DESCRIPTION => self.description.as_str(),
            *pw::keys::MEDIA_TYPE => "Audio",
            *pw::keys::MEDIA_CATEGORY => "Playback",
            // Driven by the host's credit. Below the Dummy-Driver's 20000, above a card's ~1000-2000: the
            // clients linked to the sink are in its partition and follow it
            // (its clock is the host's credit), and so does a client linked
            // to it and a card; but a partition with no driver of its own
            // (a recording from our microphone node) goes to the
            // Dummy-Driver, not to this sink's credit pace (at 30000 it
            // went here, and its cycles stopped while nothing played).
            "priority.driver" => "19000",
            "priority.session" => "1000",
            "node.want-driver" => "false",
            "node.latency" => format!("{}/{}", quantum_frames(latency_msec, spec.rate), spec.rate).as_str(),
            "secure-tunnel.latency_msec" => latency_msec.to_string().as_str(),
        };
        let stream = pw::stream::StreamRc::new(core.clone(), "secure-tunnel", props)
            .context("creating the sink stream")?;

        let st = self.state.clone();
        let _listener = stream
            .add_local_listener::<()>()
            .state_changed({
                let st = st.clone();
                let quit = mainloop.downgrade();
                move |_, _, old, new| {
                    info!("sink node: {old:?} -> {new:?}");
                    let activity = match new {
                        StreamState::Streaming => Activity::Running,
                        StreamState::Paused => Activity::Idle,
                        StreamState::Error(_) | StreamState::Unconnected => Activity::Suspended,
                        StreamState::Connecting => return,
                    };
                    let Ok(mut st) = st.try_borrow_mut() else {
                        return;
                    };
                    let now = st.clock.now();
                    st.engine.set_activity(activity, now);
                    st.pacer.reset_pending();
                    if matches!(new, StreamState::Error(_) | StreamState::Unconnected) {
                        if let Some(l) = quit.upgrade() {
                            l.quit();
                        }
                    }
                }
            })
            .process({
                let st_rc = st.clone();
                move |stream, _| {
                    // The buffer goes back to PipeWire before the next cycle.
                    if take_cycle(&st_rc, stream) {
                        // The next cycle as soon as the host's credit allows.
                        drive(&st_rc, stream);
                    }
                }
            })
            .register()
            .context("registering the stream's callbacks")?;

        pods::connect(
            &stream,
            &spec,
            spa::utils::Direction::Input,
            StreamFlags::MAP_BUFFERS | StreamFlags::DRIVER,
        )
        .context("the sink stream")?;
        info!("sink {name} ({}) created", self.description);

        let source = match &self.microphone {
            Some((mic, description)) => Some(Rc::new(SourceNode::create(
                &core,
                mic.clone(),
                description,
            )?)),
            None => None,
        };

        *self.last_error.borrow_mut() = None;
        let timer = mainloop.loop_().add_timer({
            let source = source.clone();
            let st = st.clone();
            let stream = stream.clone();
            let stop = self.stop.clone();
            let end = end.clone();
            let quit = mainloop.downgrade();
            move |_| {
                if stop.load(Ordering::Relaxed) {
                    *end.borrow_mut() = End::Stop;
                    if let Some(l) = quit.upgrade() {
                        l.quit();
                    }
                    return;
                }
                drive(&st, &stream);
                if let Some(source) = &source {
                    source.drive();
                }
            }
        });
        timer.update_timer(Some(TICK), Some(TICK));

        mainloop.run();
        let how = std::mem::replace(&mut *end.borrow_mut(), End::Lost);
        {
            let mut st = self.state.borrow_mut();
            let now = st.clock.now();
            st.engine.set_activity(Activity::Suspended, now);
            st.reported_nsec = None;
        }
        drop(timer);
        if let Some(node) = source.and_then(|s| Rc::try_unwrap(s).ok()) {
            node.close();
        }
        let _ = stream.disconnect();
        Ok(how)
    }
}

/// Drives the engine, triggers graph cycles the grant allows and publishes
/// the latency. No borrow of the state is held across a PipeWire call: a
/// trigger runs the process callback synchronously.
fn drive(st: &Rc<RefCell<State>>, stream: &pw::stream::Stream) {
    match st.try_borrow_mut() {
        Ok(mut st) => st.tick(),
        Err(_) => return,
    }
    for _ in 0..MAX_CYCLES_PER_TICK {
        let trigger = st.try_borrow_mut().is_ok_and(|mut st| {
            let now = st.clock.now();
            stream.is_driving() && st.pacer.should_trigger(now)
        });
        if !trigger {
            break;
        }
        if let Err(e) = stream.trigger_process() {
            warn!("cannot trigger a graph cycle: {e}");
            if let Ok(mut st) = st.try_borrow_mut() {
                st.pacer.reset_pending();
            }
            break;
        }
    }
    let update = st
        .try_borrow_mut()
        .ok()
        .and_then(|mut st| st.latency_update());
    if let Some(nsec) = update {
        pods::publish_latency(stream, spa::sys::SPA_DIRECTION_INPUT, nsec, "sink");
    }
}

/// Hands the audio of a completed cycle to the engine; whether there was one.
/// Also called at each trigger, usually with no buffer yet: a cycle's data
/// comes when the cycle completes.
fn take_cycle(st: &Rc<RefCell<State>>, stream: &pw::stream::Stream) -> bool {
    let Ok(mut st) = st.try_borrow_mut() else {
        return false;
    };
    let Some(mut buffer) = stream.dequeue_buffer() else {
        return false;
    };
    let Some(data) = buffer.datas_mut().first_mut() else {
        st.pacer.on_cycle(0);
        return true;
    };
    let chunk = data.chunk();
    let offset = chunk.offset() as usize;
    let size = chunk.size() as usize;
    let Some(bytes) = data.data() else {
        st.pacer.on_cycle(0);
        return true;
    };
    let end = offset.saturating_add(size).min(bytes.len());
    let audio = bytes.get(offset..end).unwrap_or(&[]);
    let take = st.pacer.on_cycle(audio.len() as u64) as usize;
    let now = st.clock.now();
    let frame = st.engine.spec().frame_size().max(1) as usize;
    let take = take - take % frame;
    st.engine.consume(&audio[..take], now);
    st.engine.flush(now);
    true
}

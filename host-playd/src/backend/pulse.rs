//! The PulseAudio backend: one playback stream per guest on the host's
//! PulseAudio server, through libpulse's standard (single-threaded) main loop.
//!
//! libpulse objects are not `Send`, so the backend is created inside the
//! engine thread and never leaves it; the main loop also watches the engine's
//! wake-up socket, so a command from a connection thread interrupts its poll.
//!
//! Connection loss: when the context fails, every stream fails with it (the
//! engine sends each guest a Goodbye, and guests reconnect), and a new
//! context is tried every second. Guests arriving meanwhile are rejected with
//! `ServerError`.
#![forbid(unsafe_code)]

mod capture;

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use libpulse_binding as pulse;
use num_traits::FromPrimitive;
use pulse::channelmap::{Map, Position};
use pulse::context::{Context, FlagSet as ContextFlags, State as ContextState};
use pulse::def::BufferAttr;
use pulse::mainloop::api::Mainloop as MainloopTrait;
use pulse::mainloop::events::io::{FlagSet as IoFlags, IoEvent};
use pulse::mainloop::standard::Mainloop;
use pulse::proplist::{properties, Proplist};
use pulse::sample::{Format, Spec};
use pulse::stream::{FlagSet as StreamFlags, SeekMode, State as StreamState, Stream};
use pulse::time::MicroSeconds;
use secure_tunnel_protocol::{SampleFormat, StreamSpec};

use super::{
    AudioBackend, BackendError, CaptureParams, Captured, StreamEvent, StreamId, StreamParams,
    StreamStatus,
};
use crate::clock::HostClock;
use crate::engine::WakeReceiver;
use capture::{Progress, Recorder};

/// `PA_PROP_CONTEXT_FORCE_DISABLE_SHM`: libpulse then uses a private
/// memory pool and negotiates neither shm nor memfd with the server.
const FORCE_DISABLE_SHM: &str = "context.force.disable.shm";

/// Pause between attempts to reach a lost PulseAudio server.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Where to play.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PulseConfig {
    /// Server string (`unix:/path`, `tcp:host`); `None` uses libpulse's
    /// default (`PULSE_SERVER`, then the user's socket). Never autospawned.
    pub server: Option<String>,
    /// Sink name; `None` uses the server's default sink.
    pub sink: Option<String>,
    /// The one source capture guests record from; `None`: nobody records.
    #[serde(default)]
    pub source: Option<String>,
    /// Whether that source may be a sink's monitor (the host's own sound).
    #[serde(default)]
    pub allow_monitor: bool,
}

struct PulseStream {
    stream: Stream,
    spec: StreamSpec,
    /// Bytes written since the stream opened, in the guest's coordinates
    /// (a rewind takes its bytes back off).
    written: u64,
    /// After a rewind: bytes the server's write index stands beyond where
    /// the next guest audio belongs (the one frame of silence the rewind
    /// wrote); the next write seeks back over them.
    seek_back: u64,
    last_played: u64,
    /// The cork state the guest asked for last (latest wins).
    corked: bool,
    opened: bool,
    /// Control operations, coalesced: at most one of each kind in flight.
    ops: PendingOps,
    underruns: Rc<Cell<u32>>,
    /// Whether a timing update is in flight.
    update_pending: Rc<Cell<bool>>,
    /// Host time at which the last timing update arrived, until consumed.
    update_arrived: Rc<Cell<Option<u64>>>,
    last_request_usec: u64,
    base: Option<TimingBase>,
    /// Underruns already seen by [`PulseStream::take_timing`], and the host
    /// time from which it last logged every timing update for a while.
    underruns_logged: u32,
    timing_log_from: Option<u64>,
}

/// The stream's position as of one timing update, in host time.
#[derive(Debug, Clone, Copy)]
struct TimingBase {
    at_usec: u64,
    /// Stream time heard at `at_usec` (read index + transport − sink
    /// latency); negative while the sink still plays what it rendered ahead.
    heard_usec: i64,
    /// The read index: all the sink took is heard once it runs dry.
    read_usec: i64,
    /// Guest bytes minus the server's write index: grows by what a flush drops.
    offset_bytes: i64,
    sink_usec: u64,
    playing: bool,
}

impl TimingBase {
    /// Guest bytes heard at host time `now`.
    ///
    /// Extrapolated at most [`MAX_EXTRAPOLATION_USEC`] past the update: if
    /// the daemon itself was stalled (scheduled out, stopped), the sink did
    /// not necessarily play on, and the reported position never goes back.
    fn played_at(&self, now: u64, corked: bool, spec: &StreamSpec) -> u64 {
        let elapsed = if corked {
            0
        } else {
            let since = now.saturating_sub(self.at_usec).min(MAX_EXTRAPOLATION_USEC);
            i64::try_from(since).unwrap_or(i64::MAX)
        };
        let mut heard_usec = self.heard_usec.saturating_add(elapsed);
        if !self.playing {
            // Starved: the sink plays out what it took, and no further.
            heard_usec = heard_usec.min(self.read_usec);
        }
        let heard_bytes = match u64::try_from(heard_usec) {
            Ok(usec) => spec.usec_to_bytes(usec),
            Err(_) => 0,
        };
        let played = i64::try_from(heard_bytes)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_bytes);
        // While playing, what was written bounds it (clamped by the caller).
        u64::try_from(played).unwrap_or(0)
    }

    /// Whether the position [`TimingBase::played_at`] gives at `now` is
    /// still advancing: the server said it plays, and `now` is within the
    /// extrapolation bound. Past it the position stands still, and saying
    /// "playing" would let the guest extrapolate audio nobody played: after
    /// host-playd was stopped for 100 ms its first report (the update
    /// arrived just after it) read "playing" at a position 74 ms behind, so
    /// the guest took a dry host for one that played on (issue 14).
    fn advancing(&self, now: u64) -> bool {
        self.playing && now.saturating_sub(self.at_usec) <= MAX_EXTRAPOLATION_USEC
    }
}

/// The control operations of one stream: what the guest wants, what was
/// sent, and which kinds are in flight. A guest can make the server do at
/// most one cork, one flush, one buffer change and one timing update at a
/// time, however fast it sends: a cork state or buffer asked for while one
/// is in flight replaces any older wish (latest wins) and is sent when the
/// previous one completes; flushes asked for meanwhile become one.
#[derive(Debug, Default)]
struct PendingOps {
    /// The cork state last sent to the server.
    cork_sent: bool,
    cork_busy: Rc<Cell<bool>>,
    flush_wanted: bool,
    flush_busy: Rc<Cell<bool>>,
    buffer_wanted: Option<u32>,
    buffer_busy: Rc<Cell<bool>>,
}

/// Most server operations one stream can have in flight: cork, flush,
/// buffer change, timing update.
pub const MAX_PENDING_OPS: usize = 4;

/// How often each stream's timing is refreshed from the server.
pub const TIMING_UPDATE_USEC: u64 = 20_000;

/// How long after an underrun every timing update is logged (debug).
const TIMING_LOG_USEC: u64 = 1_000_000;
/// At most one such log window per this much host time.
const TIMING_LOG_GAP_USEC: u64 = 10_000_000;

/// How far past the last timing update the played position is extrapolated.
pub const MAX_EXTRAPOLATION_USEC: u64 = 2 * TIMING_UPDATE_USEC;

/// The PulseAudio backend. Field order is drop order: streams before the
/// context before the main loop.
pub struct PulseBackend {
    streams: HashMap<StreamId, PulseStream>,
    /// Streams the engine closed while the server was still creating them:
    /// disconnected once they are READY (or dropped once FAILED), so that
    /// no sink-input outlives its guest.
    closing: Vec<Stream>,
    pending: Vec<(StreamId, StreamParams)>,
    events: Vec<(StreamId, StreamEvent)>,
    recorders: HashMap<StreamId, Recorder>,
    capture_pending: Vec<(StreamId, CaptureParams)>,
    captured: Vec<(StreamId, Captured)>,
    _wake_event: IoEvent<<Mainloop as MainloopTrait>::MI>,
    context: Option<Context>,
    context_ready: bool,
    reconnect_at: Option<Instant>,
    /// Whether the current outage was logged at warn level already.
    outage_logged: bool,
    mainloop: Mainloop,
    config: PulseConfig,
    clock: HostClock,
    /// Volume caps (percent) for streams about to open (policy).
    volume_caps: HashMap<StreamId, u8>,
}

impl std::fmt::Debug for PulseBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulseBackend")
            .field("config", &self.config)
            .field("streams", &self.streams.len())
            .field("context_ready", &self.context_ready)
            .finish_non_exhaustive()
    }
}

impl PulseBackend {
    /// Creates the main loop and starts connecting. Failing to reach the
    /// server is not an error here: it is retried every second.
    pub fn new(
        config: PulseConfig,
        clock: HostClock,
        wake: &WakeReceiver,
    ) -> Result<Self, BackendError> {
        let drain = wake
            .try_clone()
            .map_err(|e| init_error(&format!("wake-up socket: {e}")))?;
        Self::watching(
            config,
            clock,
            std::os::fd::AsRawFd::as_raw_fd(wake),
            Box::new(move || drain.drain()),
        )
    }

    /// Like [`PulseBackend::new`], with the main loop's poll also ending
    /// when `fd` becomes readable (then `on_readable` runs, inside the
    /// dispatch). The player process watches its request socket this way
    /// and reads it after each [`AudioBackend::drive`]. `fd` must stay open
    /// as long as the backend.
    pub fn watching(
        config: PulseConfig,
        clock: HostClock,
        fd: std::os::fd::RawFd,
        mut on_readable: Box<dyn FnMut()>,
    ) -> Result<Self, BackendError> {
        let init = init_error;
        let mut mainloop = Mainloop::new().ok_or_else(|| init("cannot create a main loop"))?;
        let wake_event = mainloop
            .new_io_event(fd, IoFlags::INPUT, Box::new(move |_, _, _| on_readable()))
            .ok_or_else(|| init("cannot watch the wake-up socket"))?;
        let mut backend = PulseBackend {
            streams: HashMap::new(),
            closing: Vec::new(),
            pending: Vec::new(),
            events: Vec::new(),
            recorders: HashMap::new(),
            capture_pending: Vec::new(),
            captured: Vec::new(),
            _wake_event: wake_event,
            context: None,
            context_ready: false,
            reconnect_at: None,
            outage_logged: false,
            mainloop,
            config,
            clock,
            volume_caps: HashMap::new(),
        };
        backend.connect();
        Ok(backend)
    }

    fn server_name(&self) -> &str {
        self.config.server.as_deref().unwrap_or("(default server)")
    }

    fn connect(&mut self) {
        self.reconnect_at = None;
        let mut props = match Proplist::new() {
            Some(props) => props,
            None => return self.connection_failed("cannot create a property list".to_owned()),
        };
        let _ = props.set_str(properties::APPLICATION_NAME, "host-playd");
        let _ = props.set_str(properties::APPLICATION_ID, "secure-tunnel.host-playd");
        // No shared memory (so no memfd or shm files either): audio goes over
        // the socket, and the seccomp allowlist and Landlock rules stay small.
        let _ = props.set_str(FORCE_DISABLE_SHM, "yes");
        let Some(mut context) = Context::new_with_proplist(&self.mainloop, "host-playd", &props)
        else {
            return self.connection_failed("cannot create a context".to_owned());
        };
        let server = self.config.server.clone();
        match context.connect(server.as_deref(), ContextFlags::NOAUTOSPAWN, None) {
            Ok(()) => self.context = Some(context),
            Err(e) => self.connection_failed(pa_text(e)),
        }
    }

    /// Fails every stream and schedules a reconnection.
    fn connection_failed(&mut self, reason: String) {
        if self.outage_logged {
            log::debug!(
                "PulseAudio {} still unreachable: {reason}",
                self.server_name()
            );
        } else {
            log::warn!(
                "PulseAudio {} unreachable: {reason}; retrying every second",
                self.server_name()
            );
            self.outage_logged = true;
        }
        self.context = None;
        self.context_ready = false;
        self.reconnect_at = Some(Instant::now() + RECONNECT_DELAY);
        let reason = format!("host PulseAudio connection lost: {reason}");
        for (id, _) in self.pending.drain(..) {
            self.events.push((
                id,
                StreamEvent::Failed {
                    reason: reason.clone(),
                },
            ));
        }
        for (id, _) in self.capture_pending.drain(..) {
            self.events.push((
                id,
                StreamEvent::Failed {
                    reason: reason.clone(),
                },
            ));
        }
        for (id, _) in self.recorders.drain() {
            self.events.push((
                id,
                StreamEvent::Failed {
                    reason: reason.clone(),
                },
            ));
        }
        self.captured.clear();
        // The server forgets a dead client's streams by itself.
        self.closing.clear();
        for (id, _) in self.streams.drain() {
            self.events.push((
                id,
                StreamEvent::Failed {
                    reason: reason.clone(),
                },
            ));
        }
    }

    fn check_context(&mut self) {
        let Some(context) = &self.context else {
            if self.reconnect_at.is_some_and(|at| Instant::now() >= at) {
                self.connect();
            }
            return;
        };
        match context.get_state() {
            ContextState::Ready => {
                if !self.context_ready {
                    self.context_ready = true;
                    self.outage_logged = false;
                    let server = context.get_server().unwrap_or_default();
                    log::info!("connected to PulseAudio at {server}");
                }
                for (id, params) in std::mem::take(&mut self.pending) {
                    self.start_stream(id, params);
                }
                for (id, params) in std::mem::take(&mut self.capture_pending) {
                    self.start_capture(id, params);
                }
            }
            ContextState::Failed | ContextState::Terminated => {
                let reason = pa_text(context.errno());
                self.connection_failed(reason);
            }
            ContextState::Unconnected
            | ContextState::Connecting
            | ContextState::Authorizing
            | ContextState::SettingName => {}
        }
    }

    fn start_capture(&mut self, id: StreamId, params: CaptureParams) {
        let (Some(context), Some(source)) = (&self.context, &self.config.source) else {
            let reason = "no capture source is configured".to_owned();
            self.events.push((id, StreamEvent::Failed { reason }));
            return;
        };
        self.recorders
            .insert(id, Recorder::start(context, source, params));
    }

    /// Moves every recording stream on and collects what they read.
    fn check_recorders(&mut self) {
        let (Some(context), Some(source)) = (self.context.as_mut(), &self.config.source) else {
            return;
        };
        let now = self.clock.now_usec();
        let mut failed = Vec::new();
        for (&id, recorder) in &mut self.recorders {
            match recorder.poll(context, source, self.config.allow_monitor) {
                Progress::Nothing => {}
                Progress::Opened { fragment_bytes } => self.events.push((
                    id,
                    StreamEvent::Opened {
                        buffer_bytes: fragment_bytes,
                    },
                )),
                Progress::Failed(reason) => {
                    failed.push(id);
                    self.events.push((id, StreamEvent::Failed { reason }));
                }
            }
            if let Some(captured) = recorder.take(now) {
                self.captured.push((id, captured));
            }
        }
        for id in failed {
            self.close_recorder(id);
        }
    }

    /// Ends a recording stream (finishing one still being created, as for
    /// playback, so that no source-output outlives its guest).
    fn close_recorder(&mut self, id: StreamId) {
        self.capture_pending.retain(|(pending, _)| *pending != id);
        self.captured.retain(|(of, _)| *of != id);
        let Some(mut stream) = self.recorders.remove(&id).and_then(Recorder::into_stream) else {
            return;
        };
        match stream.get_state() {
            StreamState::Creating => self.closing.push(stream),
            _ => {
                let _ = stream.disconnect();
            }
        }
    }

    fn start_stream(&mut self, id: StreamId, params: StreamParams) {
        let volume = self.volume_caps.remove(&id);
        match self.create_stream(&params, volume) {
            Ok(stream) => {
                self.streams.insert(id, stream);
            }
            Err(reason) => self.events.push((id, StreamEvent::Failed { reason })),
        }
    }

    fn create_stream(
        &mut self,
        params: &StreamParams,
        volume_percent: Option<u8>,
    ) -> Result<PulseStream, String> {
        let context = self
            .context
            .as_mut()
            .ok_or_else(|| "not connected".to_owned())?;
        let spec = sample_spec(&params.spec)?;
        let map = channel_map(&params.spec)?;
        let mut props =
            Proplist::new().ok_or_else(|| "cannot create a property list".to_owned())?;
        let _ = props.set_str(properties::MEDIA_NAME, &params.name);
        let _ = props.set_str(properties::APPLICATION_NAME, "secure-tunnel");
        let mut stream =
            Stream::new_with_proplist(context, &params.name, &spec, Some(&map), &mut props)
                .ok_or_else(|| pa_text(context.errno()))?;
        let underruns = Rc::new(Cell::new(0u32));
        let counter = Rc::clone(&underruns);
        stream.set_underflow_callback(Some(Box::new(move || {
            counter.set(counter.get().saturating_add(1));
        })));
        let attr = buffer_attr(params.tlength_bytes);
        // No INTERPOLATE_TIMING: libpulse's smoother was seen to run seconds
        // ahead of the sink when a stream starts behind audio the sink had
        // rendered ahead (module-null-sink does not rewind), so the position
        // is interpolated here from timing updates requested every 20 ms.
        let flags = StreamFlags::ADJUST_LATENCY;
        let volume = volume_percent.map(|percent| {
            let mut volume = pulse::volume::ChannelVolumes::default();
            let level = u64::from(pulse::volume::Volume::NORMAL.0) * u64::from(percent) / 100;
            volume.set(
                spec.channels,
                pulse::volume::Volume(u32::try_from(level).unwrap_or(0)),
            );
            volume
        });
        stream
            .connect_playback(
                self.config.sink.as_deref(),
                Some(&attr),
                flags,
                volume.as_ref(),
                None,
            )
            .map_err(pa_text)?;
        Ok(PulseStream {
            stream,
            spec: params.spec.clone(),
            written: 0,
            seek_back: 0,
            last_played: 0,
            corked: false,
            opened: false,
            ops: PendingOps::default(),
            underruns,
            update_pending: Rc::new(Cell::new(false)),
            update_arrived: Rc::new(Cell::new(None)),
            last_request_usec: 0,
            base: None,
            underruns_logged: 0,
            timing_log_from: None,
        })
    }

    fn check_streams(&mut self) {
        let mut failed = Vec::new();
        for (&id, s) in &mut self.streams {
            match s.stream.get_state() {
                StreamState::Ready if !s.opened => {
                    s.opened = true;
                    let buffer_bytes = s.stream.get_buffer_attr().map_or(0, |attr| attr.tlength);
                    let device = s.stream.get_device_name().unwrap_or_default();
                    log::debug!("stream {id} playing on {device}, tlength {buffer_bytes} bytes");
                    self.events.push((id, StreamEvent::Opened { buffer_bytes }));
                }
                StreamState::Failed | StreamState::Terminated => failed.push(id),
                StreamState::Ready | StreamState::Unconnected | StreamState::Creating => {}
            }
        }
        self.closing.retain_mut(|stream| match stream.get_state() {
            StreamState::Creating => true,
            StreamState::Ready => {
                let _ = stream.disconnect();
                false
            }
            StreamState::Unconnected | StreamState::Failed | StreamState::Terminated => false,
        });
        for s in self.streams.values_mut() {
            s.issue_ops();
        }
        for id in failed {
            self.streams.remove(&id);
            let reason = self
                .context
                .as_ref()
                .map_or_else(|| "disconnected".to_owned(), |c| pa_text(c.errno()));
            self.events.push((id, StreamEvent::Failed { reason }));
        }
    }
}

/// libpulse's error text (its inherent `to_string` returns an `Option`).
fn init_error(reason: &str) -> BackendError {
    BackendError::Init {
        backend: "pulse",
        reason: reason.to_owned(),
    }
}

fn pa_text(e: pulse::error::PAErr) -> String {
    format!("{e}")
}

fn sample_spec(spec: &StreamSpec) -> Result<Spec, String> {
    let format = match spec.format {
        SampleFormat::S16Le => Format::S16le,
        SampleFormat::S32Le => Format::S32le,
        SampleFormat::F32Le => Format::F32le,
    };
    let pa = Spec {
        format,
        rate: spec.rate,
        channels: spec.channels(),
    };
    if pa.is_valid() {
        Ok(pa)
    } else {
        Err(format!("invalid sample spec {spec:?}"))
    }
}

/// The guest's position codes are `pa_channel_position_t` values.
fn channel_map(spec: &StreamSpec) -> Result<Map, String> {
    let mut map = Map::default();
    map.set_len(spec.channels());
    for (slot, &code) in map.get_mut().iter_mut().zip(&spec.channel_map) {
        *slot =
            Position::from_u8(code).ok_or_else(|| format!("unknown channel position {code}"))?;
    }
    if map.is_valid() {
        Ok(map)
    } else {
        Err(format!("invalid channel map {:?}", spec.channel_map))
    }
}

/// `tlength` as asked; room for 4 MiB (the server's maximum) so that audio
/// the guest had credit for is never dropped; server defaults otherwise.
fn buffer_attr(tlength_bytes: u32) -> BufferAttr {
    BufferAttr {
        maxlength: u32::MAX,
        tlength: tlength_bytes,
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: u32::MAX,
    }
}

impl AudioBackend for PulseBackend {
    fn open(&mut self, id: StreamId, params: StreamParams) -> Result<(), BackendError> {
        if self.context.is_none() {
            return Err(BackendError::Unavailable(format!(
                "not connected to PulseAudio {} (retrying every second)",
                self.server_name()
            )));
        }
        if self.context_ready {
            self.start_stream(id, params);
        } else {
            self.pending.push((id, params));
        }
        Ok(())
    }

    fn open_capture(&mut self, id: StreamId, params: CaptureParams) -> Result<(), BackendError> {
        if self.context.is_none() {
            return Err(BackendError::Unavailable(format!(
                "not connected to PulseAudio {} (retrying every second)",
                self.server_name()
            )));
        }
        if self.config.source.is_none() {
            return Err(BackendError::Stream {
                op: "capture",
                id,
                reason: "no capture source is configured".to_owned(),
            });
        }
        if self.context_ready {
            self.start_capture(id, params);
        } else {
            self.capture_pending.push((id, params));
        }
        Ok(())
    }

    fn take_captured(&mut self, out: &mut Vec<(StreamId, Captured)>) {
        out.append(&mut self.captured);
    }

    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), BackendError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(BackendError::UnknownStream(id))?;
        let offset = -i64::try_from(s.seek_back).unwrap_or(0);
        s.stream
            .write_copy(data, offset, SeekMode::Relative)
            .map_err(|e| BackendError::Stream {
                op: "write",
                id,
                reason: pa_text(e),
            })?;
        s.seek_back = 0;
        s.written = s.written.saturating_add(data.len() as u64);
        Ok(())
    }

    /// Moves the server's write index back by `bytes` with a relative seek.
    /// libpulse sends a seek only with data, so one frame of silence is
    /// written at the new position, and the next write seeks back over it:
    /// the server's queue holds blocks past its write index afterwards, but
    /// never plays them (its read side stops at the write index, and the
    /// next writes replace them), so a withdrawn tail is never heard even
    /// if no audio follows. `offset_bytes` (guest bytes minus the write
    /// index) stays what it was, so the played position does not jump.
    fn rewind(&mut self, id: StreamId, bytes: u64) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.opened || s.stream.get_state() != StreamState::Ready || bytes == 0 {
            return;
        }
        let bytes = bytes.min(s.written);
        let frame = u64::from(s.spec.frame_size()).max(1);
        let silence = vec![0u8; usize::try_from(frame).unwrap_or(1)];
        let back = bytes.saturating_add(s.seek_back);
        let offset = -i64::try_from(back).unwrap_or(i64::MAX);
        match s.stream.write_copy(&silence, offset, SeekMode::Relative) {
            Ok(()) => {
                s.written -= bytes;
                // The timing base needs no change: guest bytes and the
                // write index less seek_back both went back by `bytes`.
                s.seek_back = frame;
            }
            Err(e) => log::warn!(
                "stream {id}: rewind of {bytes} bytes failed: {}",
                pa_text(e)
            ),
        }
    }

    fn cork(&mut self, id: StreamId, corked: bool) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.corked = corked;
            s.issue_ops();
        }
    }

    fn flush(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.ops.flush_wanted = true;
            s.issue_ops();
        }
    }

    fn set_buffer(&mut self, id: StreamId, tlength_bytes: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.ops.buffer_wanted = Some(tlength_bytes);
            s.issue_ops();
        }
    }

    fn set_volume_cap(&mut self, id: StreamId, percent: u8) {
        self.volume_caps.insert(id, percent);
    }

    fn settle(&mut self, timeout: Duration, wake: &WakeReceiver) -> bool {
        let deadline = Instant::now() + timeout;
        while self.context.is_some() && !self.context_ready && Instant::now() < deadline {
            self.drive(Duration::from_millis(10), wake);
        }
        self.context_ready
    }

    fn close(&mut self, id: StreamId) {
        self.close_recorder(id);
        self.volume_caps.remove(&id);
        self.pending.retain(|(pending, _)| *pending != id);
        if let Some(mut s) = self.streams.remove(&id) {
            s.stream.set_underflow_callback(None);
            match s.stream.get_state() {
                // libpulse refuses to disconnect a stream it is still
                // creating (BADSTATE), and the server would create its
                // sink-input anyway: finish the job once it is READY.
                StreamState::Creating => self.closing.push(s.stream),
                _ => {
                    let _ = s.stream.disconnect();
                }
            }
        }
    }

    fn drive(&mut self, timeout: Duration, _wake: &WakeReceiver) {
        let usec = u64::try_from(timeout.as_micros())
            .unwrap_or(u64::MAX)
            .min(1_000_000);
        let iterated = self
            .mainloop
            .prepare(Some(MicroSeconds(usec)))
            .and_then(|()| self.mainloop.poll())
            .and_then(|_| self.mainloop.dispatch());
        if let Err(e) = iterated {
            log::error!("PulseAudio main loop failed: {e}");
            std::thread::sleep(timeout);
        }
        self.check_context();
        self.check_streams();
        self.check_recorders();
    }

    fn take_events(&mut self, out: &mut Vec<(StreamId, StreamEvent)>) {
        out.append(&mut self.events);
    }

    fn reachable(&self) -> bool {
        self.context.is_some()
    }

    fn status(&mut self, id: StreamId) -> Option<StreamStatus> {
        let clock = self.clock;
        let s = self.streams.get_mut(&id)?;
        if !s.opened {
            return None;
        }
        let now = clock.now_usec();
        s.request_timing(now, clock);
        s.take_timing();
        let writable_bytes = s.stream.writable_size().unwrap_or(0) as u64;
        if let Some(played) = s.played_at(now) {
            s.last_played = s.last_played.max(played.min(s.written));
        }
        let (device_latency_usec, playing) = s.base.map_or((0, false), |b| {
            (
                u32::try_from(b.sink_usec).unwrap_or(u32::MAX),
                b.advancing(now),
            )
        });
        Some(StreamStatus {
            host_time_usec: now,
            writable_bytes,
            played_bytes: s.last_played,
            device_latency_usec,
            underruns: s.underruns.get(),
            playing: playing && !s.corked,
        })
    }
}

impl PulseStream {
    /// Sends what [`PendingOps`] holds back, one operation of each kind at a
    /// time, and only to a READY stream (libpulse returns no operation, and
    /// the binding panics, for any other state).
    fn issue_ops(&mut self) {
        if !self.opened || self.stream.get_state() != StreamState::Ready {
            return;
        }
        let ops = &mut self.ops;
        if ops.flush_wanted && !ops.flush_busy.get() {
            ops.flush_wanted = false;
            ops.flush_busy.set(true);
            let busy = Rc::clone(&ops.flush_busy);
            let _ = self.stream.flush(Some(Box::new(move |_| busy.set(false))));
        }
        if ops.cork_sent != self.corked && !ops.cork_busy.get() {
            ops.cork_sent = self.corked;
            ops.cork_busy.set(true);
            let busy = Rc::clone(&ops.cork_busy);
            let _ = self
                .stream
                .set_corked_state(self.corked, Some(Box::new(move |_| busy.set(false))));
        }
        if !ops.buffer_busy.get() {
            if let Some(tlength) = ops.buffer_wanted.take() {
                ops.buffer_busy.set(true);
                let busy = Rc::clone(&ops.buffer_busy);
                let _ = self
                    .stream
                    .set_buffer_attr(&buffer_attr(tlength), move |_| busy.set(false));
            }
        }
    }

    /// Asks the server for fresh timing, one request at a time.
    fn request_timing(&mut self, now: u64, clock: HostClock) {
        if self.update_pending.get()
            || self.stream.get_state() != StreamState::Ready
            || now.saturating_sub(self.last_request_usec) < TIMING_UPDATE_USEC
        {
            return;
        }
        self.update_pending.set(true);
        self.last_request_usec = now;
        let pending = Rc::clone(&self.update_pending);
        let arrived = Rc::clone(&self.update_arrived);
        let _ = self.stream.update_timing_info(Some(Box::new(move |ok| {
            pending.set(false);
            if ok {
                arrived.set(Some(clock.now_usec()));
            }
        })));
    }

    /// Turns a timing update that arrived into a new [`TimingBase`].
    fn take_timing(&mut self) {
        let Some(at_usec) = self.update_arrived.take() else {
            return;
        };
        // The write index less the silence a rewind left to seek back over:
        // where the next guest byte goes.
        let written = i64::try_from(self.written)
            .unwrap_or(i64::MAX)
            .saturating_add(i64::try_from(self.seek_back).unwrap_or(0));
        let spec = self.spec.clone();
        let Some(info) = self.stream.get_timing_info() else {
            return;
        };
        if info.read_index_corrupt != 0 || info.write_index_corrupt != 0 {
            return;
        }
        let to_usec = |bytes: i64| -> i64 {
            let usec = spec.bytes_to_usec(bytes.unsigned_abs());
            i64::try_from(usec).unwrap_or(i64::MAX) * bytes.signum()
        };
        let signed = |usec: u64| i64::try_from(usec).unwrap_or(i64::MAX);
        let read_usec = to_usec(info.read_index);
        self.base = Some(TimingBase {
            at_usec,
            heard_usec: read_usec
                .saturating_add(signed(info.transport_usec.0))
                .saturating_sub(signed(info.sink_usec.0)),
            read_usec,
            offset_bytes: written.saturating_sub(info.write_index),
            sink_usec: info.sink_usec.0,
            playing: info.playing != 0,
        });
        // What the server says across an underrun is what the guest's
        // latency is built on: logged for a while after one, at most once
        // per TIMING_LOG_GAP_USEC (a guest can starve its stream at will).
        let underruns = self.underruns.get();
        if underruns != self.underruns_logged {
            self.underruns_logged = underruns;
            if self.timing_log_from.map_or(true, |from| {
                at_usec >= from.saturating_add(TIMING_LOG_GAP_USEC)
            }) {
                self.timing_log_from = Some(at_usec);
            }
        }
        if self
            .timing_log_from
            .is_some_and(|from| at_usec < from.saturating_add(TIMING_LOG_USEC))
        {
            log::debug!(
                "timing after underrun {underruns}: at {at_usec} written {} write_index {} \
                 read_index {} sink {} us transport {} us playing {} since_underrun {}",
                self.written,
                info.write_index,
                info.read_index,
                info.sink_usec.0,
                info.transport_usec.0,
                info.playing,
                info.since_underrun,
            );
        }
    }

    /// Guest bytes heard at host time `now`, from the last timing update.
    fn played_at(&self, now: u64) -> Option<u64> {
        Some(self.base?.played_at(now, self.corked, &self.spec))
    }
}

#[cfg(test)]
mod tests {
    use secure_tunnel_protocol::{SampleFormat, StreamSpec};

    use super::{TimingBase, MAX_EXTRAPOLATION_USEC};

    /// 48 kHz stereo s16: 192 bytes per millisecond.
    fn spec() -> StreamSpec {
        StreamSpec {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channel_map: vec![1, 2],
        }
    }

    fn base(playing: bool) -> TimingBase {
        TimingBase {
            at_usec: 1_000_000,
            heard_usec: 500_000,
            read_usec: 510_000,
            offset_bytes: 0,
            sink_usec: 10_000,
            playing,
        }
    }

    #[test]
    fn a_stale_update_stops_advancing_and_says_so() {
        let b = base(true);
        assert_eq!(b.played_at(1_020_000, false, &spec()), 520 * 192);
        assert!(b.advancing(1_020_000));
        // host-playd was stopped for 100 ms: the position stands at the
        // bound, and the report must not say it advances.
        let late = 1_000_000 + 100_000;
        let bound = 500 * 192 + MAX_EXTRAPOLATION_USEC / 1000 * 192;
        assert_eq!(b.played_at(late, false, &spec()), bound);
        assert!(!b.advancing(late));
    }

    #[test]
    fn a_starved_stream_plays_out_what_the_sink_took_and_stops() {
        let b = base(false);
        assert_eq!(b.played_at(1_005_000, false, &spec()), 505 * 192);
        assert_eq!(b.played_at(1_030_000, false, &spec()), 510 * 192);
        assert!(!b.advancing(1_005_000));
        // corked: no extrapolation at all
        assert_eq!(base(true).played_at(1_030_000, true, &spec()), 500 * 192);
    }
}

//! The player's side of the internal protocol, without I/O: it takes
//! decoded [`Request`]s, checks each one again as if the guest-facing
//! process were hostile (it may be: it parses guest bytes), applies its own
//! budgets, and drives an [`AudioBackend`]. What it answers goes into an
//! outbox of [`Report`]s that the process loop sends.
//!
//! A request that breaks a rule fails only the stream it names (the
//! backend stream is closed at once and a `Failed` report says why);
//! requests for streams it does not hold are dropped and counted.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use secure_tunnel_protocol::{StreamSpec, MAX_AUDIO_CHUNK, MAX_STREAM_NAME};

use super::wire::{Report, Request, StatusEntry, MAX_CAPTURED_CHUNK, NO_VOLUME_CAP};
use crate::backend::{AudioBackend, CaptureParams, Captured, StreamEvent, StreamId, StreamParams};
use crate::budget::Bucket;
use crate::policy::StreamLimits;
use crate::text;

/// What the player allows, whatever the guest-facing process asks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlayerLimits {
    /// Streams open at once.
    pub max_streams: usize,
    /// The lowest buffer any policy rule allows (the latency floor).
    pub min_latency_usec: u64,
    /// The largest buffer any policy rule allows.
    pub max_latency_usec: u64,
}

/// Stream opens per second, sustained, and at once. A backstop only: the
/// guest-facing side bounds what guests can open (handshake slots, stream
/// caps), and its lifecycle test legitimately opens about 500 per second
/// (quick Hello+close guests); twice that means the guest-facing process
/// itself is misbehaving.
pub const OPENS_PER_SEC: u32 = 1_000;
pub const OPENS_BURST: u32 = 1_000;
/// Cork, flush and buffer changes per stream: the guest-facing side allows
/// a guest 20/s; ten times that means a broken or hostile peer.
pub const CONTROL_PER_SEC: u32 = 200;
pub const CONTROL_BURST: u32 = 400;
/// How far past what was played a stream may be written, in buffers (plus
/// one chunk): the guest-facing side grants one buffer of credit.
pub const WRITE_AHEAD_BUFFERS: u64 = 2;

/// How often each open playback stream's status is pushed at least,
/// counted from the last status that carried it: a stream the server keeps
/// asking audio of is carried by those statuses (each one wakes the engine,
/// which sends the credit and, once 15 ms have passed, a clock report with
/// it), so while audio flows the timer
/// never fires. 20 ms is the guest's clock-report interval while playing
/// (`session::CLOCK_INTERVAL_PLAYING_USEC`): a status more often than that
/// would only wake the guest-facing process for nothing. It was 5 ms for
/// every stream at once; issue 10's cost benchmark counted those wake-ups
/// (with the credit path's) as nearly all of host-playd's CPU.
pub const STATUS_INTERVAL_USEC: u64 = 20_000;

/// The longest recording fragment the player opens, in time: the capture
/// latency a guest can ask for is cut to the policy's maximum anyway.
pub const MAX_FRAGMENT_USEC: u64 = 1_000_000;

#[derive(Debug)]
struct Held {
    /// A recording stream (only `Close` applies to it).
    capture: bool,
    spec: StreamSpec,
    tlength_bytes: u32,
    opened: bool,
    received: u64,
    played: u64,
    /// `received + writable` in the last status sent: the credit the other
    /// side could grant then.
    limit_sent: u64,
    /// When the last status carrying this stream was made.
    status_at: Option<u64>,
    control: Bucket,
}

/// Counters for the log and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayerCounters {
    pub opened: u64,
    pub refused: u64,
    pub failed_by_rule: u64,
    pub unknown_stream: u64,
}

/// The player's state: the streams it holds and its budgets.
#[derive(Debug)]
pub struct Player<B: AudioBackend> {
    backend: B,
    limits: PlayerLimits,
    streams: HashMap<StreamId, Held>,
    opens: Bucket,
    outbox: Vec<Report>,
    events: Vec<(StreamId, StreamEvent)>,
    captured: Vec<(StreamId, Captured)>,
    counters: PlayerCounters,
}

impl<B: AudioBackend> Player<B> {
    pub fn new(backend: B, limits: PlayerLimits) -> Self {
        Player {
            backend,
            limits,
            streams: HashMap::new(),
            opens: Bucket::new(OPENS_PER_SEC, OPENS_BURST),
            outbox: Vec::new(),
            events: Vec::new(),
            captured: Vec::new(),
            counters: PlayerCounters::default(),
        }
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn counters(&self) -> PlayerCounters {
        self.counters
    }

    /// Streams held (opening or open).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Reports to send, in order.
    pub fn take_outbox(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.outbox)
    }

    /// Handles one request at host time `now_usec`.
    pub fn handle(&mut self, now_usec: u64, request: Request) {
        match request {
            Request::Open {
                id,
                spec,
                tlength_bytes,
                volume_cap,
                name,
            } => self.open(now_usec, id, spec, tlength_bytes, volume_cap, &name),
            Request::OpenCapture {
                id,
                spec,
                fragment_bytes,
                name,
            } => self.open_capture(now_usec, id, spec, fragment_bytes, &name),
            Request::Write { id, data } => self.write(id, &data),
            Request::Cork { id, corked } => {
                if self.charge_control(now_usec, id, "cork") {
                    self.backend.cork(id, corked);
                }
            }
            Request::Flush { id } => {
                if self.charge_control(now_usec, id, "flush") {
                    if let Some(held) = self.streams.get_mut(&id) {
                        // What the flush drops counts as played.
                        held.played = held.received;
                    }
                    self.backend.flush(id);
                }
            }
            Request::Rewind { id, bytes } => self.rewind(now_usec, id, bytes),
            Request::SetBuffer { id, tlength_bytes } => {
                if self.charge_control(now_usec, id, "buffer change") {
                    if let Some(held) = self.streams.get_mut(&id) {
                        let tlength = clamp_buffer(&self.limits, &held.spec, tlength_bytes);
                        held.tlength_bytes = held.tlength_bytes.max(tlength);
                        self.backend.set_buffer(id, tlength);
                    }
                }
            }
            Request::Close { id } => {
                if self.streams.remove(&id).is_some() {
                    self.backend.close(id);
                } else {
                    self.counters.unknown_stream += 1;
                }
            }
        }
    }

    /// Why a stream `id` of `spec` may not open now, if it may not (the
    /// checks every open passes, playback or capture).
    fn refusal(&mut self, now_usec: u64, id: StreamId, spec: &StreamSpec) -> Option<String> {
        if self.streams.contains_key(&id) {
            Some(format!("stream id {id} is in use"))
        } else if let Err(e) = spec.validate() {
            Some(format!("invalid stream: {e}"))
        } else if self.streams.len() >= self.limits.max_streams {
            Some(format!(
                "the player holds {} streams already (its maximum)",
                self.limits.max_streams
            ))
        } else if !self.opens.take(now_usec) {
            Some(format!("more than {OPENS_PER_SEC} stream opens per second"))
        } else {
            None
        }
    }

    fn refuse(&mut self, id: StreamId, reason: String) {
        self.counters.refused += 1;
        self.outbox.push(Report::Failed { id, reason });
    }

    fn held(capture: bool, spec: StreamSpec, tlength_bytes: u32) -> Held {
        Held {
            capture,
            spec,
            tlength_bytes,
            opened: false,
            received: 0,
            played: 0,
            limit_sent: 0,
            status_at: None,
            control: Bucket::new(CONTROL_PER_SEC, CONTROL_BURST),
        }
    }

    fn open(
        &mut self,
        now_usec: u64,
        id: StreamId,
        spec: StreamSpec,
        tlength_bytes: u32,
        volume_cap: u8,
        name: &str,
    ) {
        let refusal = self.refusal(now_usec, id, &spec).or_else(|| {
            (volume_cap != NO_VOLUME_CAP && volume_cap > 100)
                .then(|| format!("volume cap {volume_cap} % is above 100 %"))
        });
        if let Some(reason) = refusal {
            self.refuse(id, reason);
            return;
        }
        let tlength_bytes = clamp_buffer(&self.limits, &spec, tlength_bytes);
        let params = StreamParams {
            spec: spec.clone(),
            tlength_bytes,
            name: text::sanitize(name, MAX_STREAM_NAME * 4),
        };
        if volume_cap != NO_VOLUME_CAP {
            self.backend.set_volume_cap(id, volume_cap);
        }
        match self.backend.open(id, params) {
            Ok(()) => {
                self.counters.opened += 1;
                self.streams
                    .insert(id, Self::held(false, spec, tlength_bytes));
            }
            Err(e) => {
                self.backend.close(id);
                self.outbox.push(Report::Failed {
                    id,
                    reason: e.to_string(),
                });
            }
        }
    }

    /// Opens a recording stream on the player's own source: the request
    /// names none. The fragment is clamped to whole frames between one
    /// frame and [`MAX_FRAGMENT_USEC`].
    fn open_capture(
        &mut self,
        now_usec: u64,
        id: StreamId,
        spec: StreamSpec,
        fragment_bytes: u32,
        name: &str,
    ) {
        if let Some(reason) = self.refusal(now_usec, id, &spec) {
            self.refuse(id, reason);
            return;
        }
        let frame = spec.frame_size().max(1);
        let most = u32::try_from(spec.usec_to_bytes(MAX_FRAGMENT_USEC)).unwrap_or(u32::MAX);
        let fragment_bytes = (fragment_bytes.min(most) / frame * frame).max(frame);
        let params = CaptureParams {
            spec: spec.clone(),
            fragment_bytes,
            name: text::sanitize(name, MAX_STREAM_NAME * 4),
        };
        match self.backend.open_capture(id, params) {
            Ok(()) => {
                self.counters.opened += 1;
                self.streams
                    .insert(id, Self::held(true, spec, fragment_bytes));
            }
            Err(e) => {
                self.backend.close(id);
                self.outbox.push(Report::Failed {
                    id,
                    reason: e.to_string(),
                });
            }
        }
    }

    fn write(&mut self, id: StreamId, data: &[u8]) {
        let Some(held) = self.streams.get_mut(&id) else {
            self.counters.unknown_stream += 1;
            return;
        };
        let frame = u64::from(held.spec.frame_size());
        let len = data.len() as u64;
        let ahead_limit =
            u64::from(held.tlength_bytes) * WRITE_AHEAD_BUFFERS + MAX_AUDIO_CHUNK as u64;
        let broken = if held.capture {
            Some("audio written to a capture stream".to_owned())
        } else if !held.opened {
            Some("audio before the stream opened".to_owned())
        } else if len == 0 || len % frame != 0 || data.len() > MAX_AUDIO_CHUNK {
            Some(format!(
                "{len} bytes of audio is not whole frames of {frame}"
            ))
        } else if held.received + len - held.played > ahead_limit {
            Some(format!(
                "audio {} bytes ahead of what was played (at most {ahead_limit})",
                held.received + len - held.played
            ))
        } else {
            None
        };
        if let Some(reason) = broken {
            self.fail(id, reason);
            return;
        }
        held.received += len;
        if let Err(e) = self.backend.write(id, data) {
            self.fail(id, e.to_string());
        }
    }

    /// Withdraws the last `bytes` of `id`: whole frames, at most what the
    /// stream received, charged as a control request. The positions go
    /// back as the backend's do ([`AudioBackend::rewind`]).
    fn rewind(&mut self, now_usec: u64, id: StreamId, bytes: u64) {
        if !self.charge_control(now_usec, id, "rewind") {
            return;
        }
        let Some(held) = self.streams.get_mut(&id) else {
            return;
        };
        let frame = u64::from(held.spec.frame_size()).max(1);
        let broken = if !held.opened {
            Some("a rewind before the stream opened".to_owned())
        } else if bytes % frame != 0 || bytes > held.received {
            Some(format!(
                "a rewind of {bytes} bytes (of {} received, frames of {frame})",
                held.received
            ))
        } else {
            None
        };
        if let Some(reason) = broken {
            self.fail(id, reason);
            return;
        }
        held.received -= bytes;
        held.played = held.played.min(held.received);
        held.limit_sent = held.limit_sent.min(held.received);
        self.backend.rewind(id, bytes);
    }

    /// Whether a control request for `id` is within its budget (and `id`
    /// is held); a stream over budget fails.
    fn charge_control(&mut self, now_usec: u64, id: StreamId, what: &str) -> bool {
        let Some(held) = self.streams.get_mut(&id) else {
            self.counters.unknown_stream += 1;
            return false;
        };
        if held.capture {
            self.fail(id, format!("a {what} request for a capture stream"));
            return false;
        }
        if held.control.take(now_usec) {
            return true;
        }
        self.fail(
            id,
            format!("more than {CONTROL_PER_SEC} control requests per second ({what})"),
        );
        false
    }

    /// Closes `id` on the backend and tells the other side why.
    fn fail(&mut self, id: StreamId, reason: String) {
        if self.streams.remove(&id).is_some() {
            self.counters.failed_by_rule += 1;
            self.backend.close(id);
            self.outbox.push(Report::Failed { id, reason });
        }
    }

    /// Moves the backend's events into the outbox.
    pub fn collect_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        self.backend.take_events(&mut events);
        for (id, event) in events.drain(..) {
            match event {
                StreamEvent::Opened { buffer_bytes } => {
                    if let Some(held) = self.streams.get_mut(&id) {
                        held.opened = true;
                        self.outbox.push(Report::Opened { id, buffer_bytes });
                    }
                }
                StreamEvent::Failed { reason } => {
                    if self.streams.remove(&id).is_some() {
                        self.backend.close(id);
                        self.outbox.push(Report::Failed { id, reason });
                    }
                }
            }
        }
        self.events = events;
        let mut captured = std::mem::take(&mut self.captured);
        self.backend.take_captured(&mut captured);
        for (id, c) in captured.drain(..) {
            let Some(held) = self.streams.get_mut(&id) else {
                continue;
            };
            if !held.capture || !held.opened {
                continue;
            }
            held.received = held.received.saturating_add(c.data.len() as u64);
            // Each packet's delay is what lies beyond its own end.
            let frame = frame_of(&held.spec);
            let mut rest = c.data.as_slice();
            while !rest.is_empty() {
                let n = rest.len().min(MAX_CAPTURED_CHUNK / frame * frame);
                let (chunk, tail) = rest.split_at(n);
                let beyond = held.spec.bytes_to_usec(tail.len() as u64);
                self.outbox.push(Report::Captured {
                    id,
                    host_time_usec: c.host_time_usec,
                    delay_usec: c
                        .delay_usec
                        .saturating_add(u32::try_from(beyond).unwrap_or(u32::MAX)),
                    data: chunk.to_vec(),
                });
                rest = tail;
            }
        }
        self.captured = captured;
    }

    /// A snapshot of the open playback streams that can take more audio than
    /// the last snapshot said (the server asked for more: the credit a guest
    /// waits for) or whose last snapshot is [`STATUS_INTERVAL_USEC`] old (for
    /// clock reports); `None` when there is nothing to say. Sending the
    /// former at once keeps the credit loop as short as when the engine read
    /// libpulse in-process: a request the server makes is passed on within
    /// one main-loop iteration, not at the next period.
    pub fn status(&mut self, now_usec: u64) -> Option<Report> {
        let mut entries = Vec::new();
        for (&id, held) in &mut self.streams {
            if !held.opened || held.capture {
                continue;
            }
            if let Some(status) = self.backend.status(id) {
                held.played = held.played.max(status.played_bytes.min(held.received));
                let limit = held.received + status.writable_bytes;
                let due = held.status_at.map_or(true, |at| {
                    now_usec >= at.saturating_add(STATUS_INTERVAL_USEC)
                });
                // Only the streams that are due or can take more (with many
                // guests, a request on one stream must not cost a snapshot
                // of all).
                if due || limit > held.limit_sent {
                    held.limit_sent = limit;
                    held.status_at = Some(now_usec);
                    entries.push(StatusEntry {
                        id,
                        received_bytes: held.received,
                        status,
                    });
                }
            }
        }
        if entries.is_empty() {
            return None;
        }
        entries.sort_by_key(|e| e.id);
        Some(Report::Status(entries))
    }

    /// When the next status falls due (host time, usec): the earliest of the
    /// open playback streams' periods; `None` when none is open.
    pub fn next_status_usec(&self) -> Option<u64> {
        self.streams
            .values()
            .filter(|h| h.opened && !h.capture)
            .map(|h| {
                h.status_at
                    .map_or(0, |at| at.saturating_add(STATUS_INTERVAL_USEC))
            })
            .min()
    }
}

fn frame_of(spec: &StreamSpec) -> usize {
    usize::try_from(spec.frame_size()).unwrap_or(1).max(1)
}

/// `tlength_bytes` raised to the floor and cut to the cap as the policy
/// does ([`StreamLimits::cap_buffer`]), in whole frames.
pub fn clamp_buffer(limits: &PlayerLimits, spec: &StreamSpec, tlength_bytes: u32) -> u32 {
    let bounds = StreamLimits {
        min_latency_usec: Some(limits.min_latency_usec),
        max_latency_usec: Some(limits.max_latency_usec.max(limits.min_latency_usec)),
        ..StreamLimits::default()
    };
    let frame = spec.frame_size().max(1);
    let capped = bounds.cap_buffer(spec, tlength_bytes);
    (capped / frame * frame).max(frame)
}

#[cfg(test)]
mod tests;

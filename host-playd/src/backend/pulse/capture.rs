//! Recording streams: one per capture guest that is allowed to record and
//! asks to, always on the one source the configuration pins.
//!
//! Opening takes two steps. The source is looked up first (it must exist,
//! and must not be a sink's monitor unless the configuration allows
//! monitors); only then is the recording stream created, with
//! `DONT_MOVE`, so it never follows a default-source change or hot-plug:
//! if the source goes away the stream fails and the guest is told its
//! source is unavailable.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use libpulse_binding as pulse;
use pulse::callbacks::ListResult;
use pulse::context::Context;
use pulse::def::BufferAttr;
use pulse::proplist::{properties, Proplist};
use pulse::stream::{FlagSet as StreamFlags, Latency, PeekResult, State as StreamState, Stream};

use super::{channel_map, pa_text, sample_spec};
use crate::backend::{CaptureParams, Captured};

/// A negative record latency beyond this is not believed (a monitor's is a
/// few milliseconds: the sink's own latency).
const MAX_NEGATIVE_LATENCY_USEC: u64 = 500_000;

/// What the lookup of the pinned source found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    Pending,
    Found { monitor_of: Option<String> },
    Missing,
}

enum Phase {
    /// Waiting for the source lookup.
    Looking(Rc<RefCell<Lookup>>),
    /// The recording stream exists (creating or ready).
    Recording { stream: Stream, opened: bool },
}

/// One capture stream.
pub(super) struct Recorder {
    params: CaptureParams,
    phase: Phase,
    /// Audio read but not yet handed out.
    pending: Vec<u8>,
}

/// What a [`Recorder`] has to say after [`Recorder::poll`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    Nothing,
    /// The stream records; the fragment the server granted.
    Opened {
        fragment_bytes: u32,
    },
    Failed(String),
}

impl Recorder {
    /// Starts looking `source` up.
    pub(super) fn start(context: &Context, source: &str, params: CaptureParams) -> Self {
        let lookup = Rc::new(RefCell::new(Lookup::Pending));
        let result = Rc::clone(&lookup);
        let _ = context
            .introspect()
            .get_source_info_by_name(source, move |item| {
                let mut result = result.borrow_mut();
                match item {
                    ListResult::Item(info) => {
                        *result = Lookup::Found {
                            monitor_of: info.monitor_of_sink.map(|_| {
                                info.monitor_of_sink_name
                                    .as_deref()
                                    .unwrap_or("a sink")
                                    .to_owned()
                            }),
                        };
                    }
                    ListResult::End | ListResult::Error => {
                        if *result == Lookup::Pending {
                            *result = Lookup::Missing;
                        }
                    }
                }
            });
        Recorder {
            params,
            phase: Phase::Looking(lookup),
            pending: Vec::new(),
        }
    }

    /// Moves the stream on: creates it once the lookup allows, notices it
    /// is ready or failed, and reads what it recorded.
    pub(super) fn poll(
        &mut self,
        context: &mut Context,
        source: &str,
        allow_monitor: bool,
    ) -> Progress {
        match &mut self.phase {
            Phase::Looking(lookup) => {
                let found = lookup.borrow().clone();
                match found {
                    Lookup::Pending => Progress::Nothing,
                    Lookup::Missing => {
                        Progress::Failed(format!("the capture source {source:?} does not exist"))
                    }
                    Lookup::Found {
                        monitor_of: Some(sink),
                    } if !allow_monitor => Progress::Failed(format!(
                        "the capture source {source:?} is the monitor of {sink:?}: refused \
                         (monitors record the host's own sound; see [capture] allow_monitor)"
                    )),
                    Lookup::Found { .. } => match self.create(context, source) {
                        Ok(stream) => {
                            self.phase = Phase::Recording {
                                stream,
                                opened: false,
                            };
                            Progress::Nothing
                        }
                        Err(reason) => Progress::Failed(reason),
                    },
                }
            }
            Phase::Recording { stream, opened } => match stream.get_state() {
                StreamState::Ready => {
                    let mut progress = Progress::Nothing;
                    if !*opened {
                        *opened = true;
                        let fragment_bytes = stream
                            .get_buffer_attr()
                            .map_or(self.params.fragment_bytes, |a| a.fragsize);
                        let device = stream.get_device_name().unwrap_or_default();
                        log::debug!("recording from {device}, fragment {fragment_bytes} bytes");
                        progress = Progress::Opened { fragment_bytes };
                    }
                    if let Err(reason) = read_into(stream, &mut self.pending) {
                        return Progress::Failed(reason);
                    }
                    progress
                }
                StreamState::Failed | StreamState::Terminated => {
                    Progress::Failed(format!("recording from {source:?} stopped"))
                }
                StreamState::Unconnected | StreamState::Creating => Progress::Nothing,
            },
        }
    }

    /// What was read since the last call, stamped `now_usec`.
    pub(super) fn take(&mut self, now_usec: u64) -> Option<Captured> {
        if self.pending.is_empty() {
            return None;
        }
        let Phase::Recording { stream, .. } = &self.phase else {
            return None;
        };
        // A monitor's record stream reports a negative latency (measured:
        // -1.7 to -6.8 ms on a null sink's monitor): its audio is dated by
        // when it will be played, and the sink renders ahead. The report
        // cannot carry a negative delay, but "-d at now" is "0 at now + d"
        // (the position advances at real time): the report is dated that
        // far ahead. Clamped to 0 instead, it made the guest's source
        // latency that much too high (the 5-6 ms bias of issue 15's
        // benchmark).
        let (host_time_usec, delay_usec) = match stream.get_latency() {
            Ok(Latency::Positive(usec)) => (now_usec, u32::try_from(usec.0).unwrap_or(u32::MAX)),
            Ok(Latency::Negative(usec)) => (
                now_usec.saturating_add(usec.0.min(MAX_NEGATIVE_LATENCY_USEC)),
                0,
            ),
            Ok(Latency::None) | Err(_) => (now_usec, 0),
        };
        Some(Captured {
            host_time_usec,
            delay_usec,
            data: std::mem::take(&mut self.pending),
        })
    }

    /// The stream, if it exists, for the caller to disconnect (or to finish
    /// once it is created).
    pub(super) fn into_stream(self) -> Option<Stream> {
        match self.phase {
            Phase::Recording { stream, .. } => Some(stream),
            Phase::Looking(_) => None,
        }
    }

    fn create(&self, context: &mut Context, source: &str) -> Result<Stream, String> {
        let spec = sample_spec(&self.params.spec)?;
        let map = channel_map(&self.params.spec)?;
        let mut props =
            Proplist::new().ok_or_else(|| "cannot create a property list".to_owned())?;
        let _ = props.set_str(properties::MEDIA_NAME, &self.params.name);
        let _ = props.set_str(properties::APPLICATION_NAME, "secure-tunnel");
        let _ = props.set_str(properties::MEDIA_ROLE, "phone");
        let mut stream =
            Stream::new_with_proplist(context, &self.params.name, &spec, Some(&map), &mut props)
                .ok_or_else(|| pa_text(context.errno()))?;
        let attr = BufferAttr {
            maxlength: u32::MAX,
            tlength: u32::MAX,
            prebuf: u32::MAX,
            minreq: u32::MAX,
            fragsize: self.params.fragment_bytes,
        };
        // DONT_MOVE: pinned to the configured source. The position comes
        // from libpulse's interpolated timing (refreshed by the server
        // every few milliseconds at first, then less often).
        let flags = StreamFlags::DONT_MOVE
            | StreamFlags::ADJUST_LATENCY
            | StreamFlags::INTERPOLATE_TIMING
            | StreamFlags::AUTO_TIMING_UPDATE;
        stream
            .connect_record(Some(source), Some(&attr), flags)
            .map_err(pa_text)?;
        Ok(stream)
    }
}

/// Reads everything the stream holds into `out` (a hole as silence, so
/// that positions stay true).
fn read_into(stream: &mut Stream, out: &mut Vec<u8>) -> Result<(), String> {
    loop {
        match stream.peek().map_err(pa_text)? {
            PeekResult::Empty => return Ok(()),
            PeekResult::Hole(n) => {
                out.resize(out.len() + n, 0);
            }
            PeekResult::Data(data) => out.extend_from_slice(data),
        }
        stream.discard().map_err(pa_text)?;
    }
}

//! Where guest audio goes: a small trait with one implementation per output.
//!
//! The engine thread owns exactly one backend and calls it from that thread
//! only, so implementations need not be `Send` (libpulse objects are not).
//! Every stream is named by the engine's [`StreamId`]; positions are counted
//! in bytes of the guest's stream since it was opened.
#![forbid(unsafe_code)]

pub mod null;
pub mod pulse;
pub mod remote;

use std::time::Duration;

use secure_tunnel_protocol::StreamSpec;
use thiserror::Error;

use crate::engine::WakeReceiver;

/// The engine's name for one guest stream (one per connection).
pub type StreamId = u64;

/// What a guest asked for, after the session turned it into host terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamParams {
    pub spec: StreamSpec,
    /// Bytes the host keeps queued ahead of the device (whole frames).
    pub tlength_bytes: u32,
    /// Human-readable stream name shown by the host's mixer.
    pub name: String,
}

/// What a capture guest asked for: the host records from its one
/// configured source (the guest cannot name one) in `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureParams {
    pub spec: StreamSpec,
    /// Bytes the recording stream gathers before it delivers (whole
    /// frames): the host's share of the capture latency.
    pub fragment_bytes: u32,
    /// Human-readable stream name shown by the host's mixer.
    pub name: String,
}

/// Audio recorded for one capture stream, with its timing: at
/// `host_time_usec` (right after `data` was read), the backend held
/// `delay_usec` of audio beyond the end of `data` (the source's latency
/// plus what the recording stream captured and did not deliver yet). A
/// negative latency (a monitor's) is given as delay 0 at a later
/// `host_time_usec`: the end of `data` is "now" that much later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub host_time_usec: u64,
    pub delay_usec: u32,
    pub data: Vec<u8>,
}

/// Something that happened to a stream between two drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The stream is ready to take audio; the host buffers `buffer_bytes`.
    Opened { buffer_bytes: u32 },
    /// The stream cannot be used any more (or could not be opened).
    Failed { reason: String },
}

/// A snapshot of one open stream, sampled at `host_time_usec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStatus {
    /// Host monotonic clock at which `played_bytes` was true.
    pub host_time_usec: u64,
    /// Bytes the stream would take now without growing past its buffer.
    pub writable_bytes: u64,
    /// Bytes written to this stream that were heard or dropped by a flush.
    pub played_bytes: u64,
    /// Latency of the device below the stream, in microseconds.
    pub device_latency_usec: u32,
    /// Underruns since the stream was opened.
    pub underruns: u32,
    /// Whether the stream's clock is advancing.
    pub playing: bool,
}

/// Failures a backend reports synchronously.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("stream {0} is not open")]
    UnknownStream(StreamId),
    #[error("host audio server unavailable: {0}")]
    Unavailable(String),
    #[error("{op} failed on stream {id}: {reason}")]
    Stream {
        op: &'static str,
        id: StreamId,
        reason: String,
    },
    #[error("could not start the {backend} backend: {reason}")]
    Init {
        backend: &'static str,
        reason: String,
    },
}

/// An audio output. Opening is asynchronous: [`AudioBackend::open`] only
/// starts it, and [`StreamEvent::Opened`] or [`StreamEvent::Failed`] follows
/// from [`AudioBackend::take_events`].
pub trait AudioBackend: std::fmt::Debug {
    /// Starts opening a stream. An `Err` means it will never open.
    fn open(&mut self, id: StreamId, params: StreamParams) -> Result<(), BackendError>;

    /// Starts opening a recording stream on the backend's configured
    /// source; [`StreamEvent::Opened`] (with the fragment size) or
    /// [`StreamEvent::Failed`] follows as for playback. Closed by
    /// [`AudioBackend::close`]. The default records nothing.
    fn open_capture(&mut self, id: StreamId, _params: CaptureParams) -> Result<(), BackendError> {
        Err(BackendError::Stream {
            op: "capture",
            id,
            reason: "this backend does not record".to_owned(),
        })
    }

    /// Moves the audio recorded since the last call into `out`.
    fn take_captured(&mut self, _out: &mut Vec<(StreamId, Captured)>) {}

    /// Queues whole frames of audio.
    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), BackendError>;

    /// Pauses (`true`) or resumes (`false`) playback, keeping queued audio.
    fn cork(&mut self, _id: StreamId, _corked: bool) {}

    /// Drops queued audio; the dropped bytes count as played.
    fn flush(&mut self, _id: StreamId) {}

    /// Withdraws the last `bytes` written (whole frames, at most what was
    /// written): what of them is not yet played is dropped, the stream's
    /// written and played positions go back by `bytes`, and the next write
    /// takes their place.
    fn rewind(&mut self, id: StreamId, bytes: u64);

    /// Changes the amount of audio queued ahead of the device.
    fn set_buffer(&mut self, _id: StreamId, _tlength_bytes: u32) {}

    /// Forgets a stream; unknown ids are ignored.
    fn close(&mut self, _id: StreamId) {}

    /// Caps the volume of the stream `id` is about to open, in percent of
    /// normal; called just before [`AudioBackend::open`]. The guest has no
    /// message to change it.
    fn set_volume_cap(&mut self, _id: StreamId, _percent: u8) {}

    /// Waits (at most `timeout`) until the backend has reached its audio
    /// server, so that the connection is made before privileges are dropped.
    /// Returns whether it is connected.
    fn settle(&mut self, _timeout: Duration, _wake: &WakeReceiver) -> bool {
        true
    }

    /// Waits for at most `timeout`, or until `wake` is signalled, and does
    /// the backend's own housekeeping. The default only waits.
    fn drive(&mut self, timeout: Duration, wake: &WakeReceiver) {
        wake.wait(timeout);
    }

    /// Moves the events gathered since the last call into `out`.
    fn take_events(&mut self, _out: &mut Vec<(StreamId, StreamEvent)>) {}

    /// Samples an open stream; `None` while it is not (yet) open.
    fn status(&mut self, id: StreamId) -> Option<StreamStatus>;

    /// Whether a stream could be opened now (the audio server is reached).
    fn reachable(&self) -> bool {
        true
    }

    /// Whether the backend wakes [`AudioBackend::drive`] itself whenever a
    /// stream's status changes (then the engine need not poll it on a
    /// short period).
    fn pushes_status(&self) -> bool {
        false
    }

    /// Why the backend can never work again (its process died), if so:
    /// the daemon then says goodbye to every guest and exits.
    fn failure(&self) -> Option<String> {
        None
    }
}

impl<B: AudioBackend + ?Sized> AudioBackend for Box<B> {
    fn open(&mut self, id: StreamId, params: StreamParams) -> Result<(), BackendError> {
        (**self).open(id, params)
    }
    fn write(&mut self, id: StreamId, data: &[u8]) -> Result<(), BackendError> {
        (**self).write(id, data)
    }
    fn open_capture(&mut self, id: StreamId, params: CaptureParams) -> Result<(), BackendError> {
        (**self).open_capture(id, params)
    }
    fn take_captured(&mut self, out: &mut Vec<(StreamId, Captured)>) {
        (**self).take_captured(out);
    }
    fn cork(&mut self, id: StreamId, corked: bool) {
        (**self).cork(id, corked);
    }
    fn flush(&mut self, id: StreamId) {
        (**self).flush(id);
    }
    fn rewind(&mut self, id: StreamId, bytes: u64) {
        (**self).rewind(id, bytes);
    }
    fn set_buffer(&mut self, id: StreamId, tlength_bytes: u32) {
        (**self).set_buffer(id, tlength_bytes);
    }
    fn close(&mut self, id: StreamId) {
        (**self).close(id);
    }
    fn set_volume_cap(&mut self, id: StreamId, percent: u8) {
        (**self).set_volume_cap(id, percent);
    }
    fn settle(&mut self, timeout: Duration, wake: &WakeReceiver) -> bool {
        (**self).settle(timeout, wake)
    }
    fn drive(&mut self, timeout: Duration, wake: &WakeReceiver) {
        (**self).drive(timeout, wake);
    }
    fn take_events(&mut self, out: &mut Vec<(StreamId, StreamEvent)>) {
        (**self).take_events(out);
    }
    fn status(&mut self, id: StreamId) -> Option<StreamStatus> {
        (**self).status(id)
    }
    fn reachable(&self) -> bool {
        (**self).reachable()
    }
    fn failure(&self) -> Option<String> {
        (**self).failure()
    }
    fn pushes_status(&self) -> bool {
        (**self).pushes_status()
    }
}

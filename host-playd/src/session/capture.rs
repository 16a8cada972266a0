//! The capture side of a session (protocol version 2, docs/protocol.md
//! §11), free of I/O: when the host's recording stream exists, what is
//! sent to the guest, and what the guest is told.
//!
//! The recording stream exists only while the guest asks (`Uncork` until
//! `Cork`) *and* it is permitted (policy `allow`, or a live grant under
//! `grant`). Audio goes out only within the guest's cumulative
//! `CaptureCredit`; what the guest has no room for waits in a queue of at
//! most one buffer (at least [`HOST_STALL_SLACK_USEC`]), and what does not
//! fit there is dropped and counted.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use secure_tunnel_protocol::{
    CaptureReport, CaptureState, HostMessage, StreamSpec, MAX_AUDIO_CHUNK,
};

use super::{round_report, Action, CLOCK_INTERVAL_PLAYING_USEC, CLOCK_SLACK_USEC};
use crate::backend::{CaptureParams, Captured};

/// After the recording stream failed, how long before it is tried again
/// (while the guest still asks and is still permitted).
pub const RETRY_USEC: u64 = 2_000_000;
/// Audio kept for a guest that has no room, at the least (beyond its own
/// buffer when that is longer): what a stall of host-playd or of the guest
/// of up to this long delivers late instead of losing. At the widest format
/// (192 kHz, 8 channels, 32 bit) 3 MiB, less than the longest buffer a
/// guest may ask anyway.
pub const HOST_STALL_SLACK_USEC: u64 = 500_000;
/// No audio from the recording stream for this long: the capture clock is
/// reported as not running.
pub const STALL_USEC: u64 = 200_000;
/// The least time between two openings of the recording stream. A guest
/// toggling Cork/Uncork at full speed (within its control budget) would
/// otherwise make the host's sound server create and destroy a
/// source-output for each toggle, and the host's recording indicator
/// flicker; with this, at most 4 opens a second per connection, the
/// latest wish winning. Closing is never delayed.
pub const MIN_REOPEN_USEC: u64 = 250_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Opening,
    Open,
}

/// One capture connection's state after its Accept.
#[derive(Debug, Clone)]
pub struct Capture {
    spec: StreamSpec,
    name: String,
    /// The host's recording fragment, from the guest's target latency.
    fragment_bytes: u32,
    /// Most unsent audio kept for the guest: one buffer.
    queue_limit: usize,
    wants: bool,
    permitted: bool,
    phase: Phase,
    /// The recording stream failed; retried at this host time.
    retry_at: Option<u64>,
    /// The recording stream is not opened again before this host time
    /// ([`MIN_REOPEN_USEC`] after the last opening).
    reopen_at: u64,
    told: Option<CaptureState>,
    credit: u64,
    sent: u64,
    dropped: u64,
    queue: VecDeque<u8>,
    /// Host time and delay of the latest recorded audio.
    last_audio: Option<(u64, u32)>,
    last_clock_usec: Option<u64>,
    last_running: bool,
    /// Privacy rounding of reported times, in µs (0: exact).
    quantum_usec: u64,
}

/// Why the guest broke the capture protocol (the caller says goodbye).
pub type Violation = String;

impl Capture {
    /// A capture connection for `spec`, whose guest wants
    /// `target_latency_usec`; `permitted` says whether policy lets it record
    /// now (without waiting for a grant).
    pub fn new(
        spec: StreamSpec,
        name: String,
        target_latency_usec: u64,
        permitted: bool,
        quantum_usec: u64,
    ) -> Self {
        let frame = u64::from(spec.frame_size().max(1));
        let buffer = spec.usec_to_bytes(target_latency_usec).max(frame);
        // A quarter of the latency per fragment, as PulseAudio's own
        // record streams ask, so the guest's queue refills in steps.
        let fragment = (buffer / 4 / frame * frame).max(frame);
        // A stall of host-playd itself (it is not real-time: a loaded host
        // delays it) delivers the recording in a burst; the guest posts what
        // arrives at once, so the backlog drains at socket speed. Dropping
        // only beyond HOST_STALL_SLACK_USEC loses nothing to such a stall.
        let slack = spec.usec_to_bytes(HOST_STALL_SLACK_USEC);
        let queue_limit =
            usize::try_from(buffer.max(fragment * 2).max(slack)).unwrap_or(usize::MAX);
        Capture {
            spec,
            name,
            fragment_bytes: u32::try_from(fragment).unwrap_or(u32::MAX),
            queue_limit,
            wants: false,
            permitted,
            phase: Phase::Closed,
            retry_at: None,
            reopen_at: 0,
            told: None,
            credit: 0,
            sent: 0,
            dropped: 0,
            queue: VecDeque::new(),
            last_audio: None,
            last_clock_usec: None,
            last_running: false,
            quantum_usec,
        }
    }

    /// The recording fragment offered in the Accept.
    pub fn fragment_bytes(&self) -> u32 {
        self.fragment_bytes
    }

    /// Whether the host's recording stream exists (opening or open).
    pub fn recording(&self) -> bool {
        self.phase != Phase::Closed
    }

    /// Whether the session may record now (allowed, or granted).
    pub fn permitted(&self) -> bool {
        self.permitted
    }

    /// What the guest was last told.
    pub fn state(&self) -> Option<CaptureState> {
        self.told
    }

    /// Capture bytes sent to the guest.
    pub fn sent_bytes(&self) -> u64 {
        self.sent
    }

    /// Capture bytes dropped because the guest had no room.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Right after the Accept: tell the guest where it stands.
    pub fn start(&mut self, now_usec: u64, out: &mut Vec<Action>) {
        self.update(now_usec, out);
    }

    /// The guest asks to record (`true`, Uncork) or stops (`false`, Cork).
    pub fn ask(&mut self, now_usec: u64, wants: bool, out: &mut Vec<Action>) {
        self.wants = wants;
        if wants {
            // Asking again is how a guest retries a failed source at once.
            self.retry_at = None;
        }
        self.update(now_usec, out);
    }

    /// A grant given (`true`) or revoked.
    pub fn permit(&mut self, now_usec: u64, permitted: bool, out: &mut Vec<Action>) {
        self.permitted = permitted;
        self.update(now_usec, out);
    }

    /// A new target latency: used the next time the stream opens.
    pub fn set_latency(&mut self, target_latency_usec: u64) {
        let fresh = Capture::new(
            self.spec.clone(),
            String::new(),
            target_latency_usec,
            false,
            0,
        );
        self.fragment_bytes = fresh.fragment_bytes;
        self.queue_limit = fresh.queue_limit;
    }

    /// The guest's cumulative credit; `Err` if it is not whole frames.
    pub fn credit(&mut self, limit_bytes: u64, out: &mut Vec<Action>) -> Result<(), Violation> {
        let frame = u64::from(self.spec.frame_size().max(1));
        if limit_bytes % frame != 0 {
            return Err(format!(
                "capture credit of {limit_bytes} bytes is not whole {frame}-byte frames"
            ));
        }
        // Cumulative: a stale or repeated grant cannot shrink or inflate it.
        self.credit = self.credit.max(limit_bytes);
        self.send_queued(out);
        Ok(())
    }

    /// The recording stream is open.
    pub fn opened(&mut self, now_usec: u64, out: &mut Vec<Action>) {
        if self.phase == Phase::Opening {
            self.phase = Phase::Open;
            self.update(now_usec, out);
        }
    }

    /// The recording stream failed (or could not open): the source is
    /// unavailable; tried again after [`RETRY_USEC`].
    pub fn failed(&mut self, now_usec: u64, out: &mut Vec<Action>) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.queue.clear();
        self.last_audio = None;
        self.retry_at = Some(now_usec.saturating_add(RETRY_USEC));
        self.update(now_usec, out);
    }

    /// Audio the recording stream delivered.
    pub fn captured(&mut self, captured: Captured, out: &mut Vec<Action>) {
        if self.phase != Phase::Open {
            return;
        }
        let frame = usize::try_from(self.spec.frame_size().max(1)).unwrap_or(1);
        self.queue.extend(captured.data.iter());
        // Never more than one buffer waits for the guest: the oldest goes.
        let excess = self.queue.len().saturating_sub(self.queue_limit);
        let excess = excess.div_ceil(frame) * frame;
        if excess > 0 {
            let excess = excess.min(self.queue.len());
            self.queue.drain(..excess);
            self.dropped = self.dropped.saturating_add(excess as u64);
        }
        self.last_audio = Some((captured.host_time_usec, captured.delay_usec));
        self.send_queued(out);
        self.report(captured.host_time_usec, false, out);
    }

    /// Time passed: retries, stall reports.
    pub fn tick(&mut self, now_usec: u64, out: &mut Vec<Action>) {
        if self.retry_at.is_some_and(|at| now_usec >= at) {
            self.retry_at = None;
            self.update(now_usec, out);
        } else if self.phase == Phase::Closed && self.wants && self.permitted {
            // An opening held back by MIN_REOPEN_USEC.
            self.update(now_usec, out);
        }
        if self.phase == Phase::Open {
            self.report(now_usec, false, out);
        }
    }

    /// The session ends: the stream goes with it.
    pub fn close(&mut self, out: &mut Vec<Action>) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            out.push(Action::CloseCapture);
        }
    }

    /// Opens or closes the recording stream as asking and permission say,
    /// and tells the guest if its state changed.
    fn update(&mut self, now_usec: u64, out: &mut Vec<Action>) {
        let wanted = self.wants && self.permitted;
        match (wanted, self.phase) {
            (true, Phase::Closed) if self.retry_at.is_none() && now_usec >= self.reopen_at => {
                self.phase = Phase::Opening;
                self.reopen_at = now_usec.saturating_add(MIN_REOPEN_USEC);
                self.last_clock_usec = None;
                out.push(Action::OpenCapture(CaptureParams {
                    spec: self.spec.clone(),
                    fragment_bytes: self.fragment_bytes,
                    name: self.name.clone(),
                }));
            }
            (false, Phase::Opening | Phase::Open) => {
                self.phase = Phase::Closed;
                self.queue.clear();
                self.last_audio = None;
                out.push(Action::CloseCapture);
                if self.last_running {
                    self.report(now_usec, true, out);
                }
            }
            _ => {}
        }
        let state = if self.phase == Phase::Open {
            CaptureState::Attached
        } else if !self.wants {
            CaptureState::Idle
        } else if !self.permitted {
            CaptureState::AwaitingGrant
        } else if self.retry_at.is_some() {
            CaptureState::Unavailable
        } else {
            // Opening: the guest hears Attached once it is.
            return;
        };
        if self.told != Some(state) {
            self.told = Some(state);
            out.push(Action::Send(HostMessage::CaptureState { state }));
        }
    }

    /// Sends queued audio within the credit, in whole frames, and in pieces
    /// of at least one fragment unless all that is queued fits: a guest
    /// raising its credit a frame at a time must not get a message per
    /// frame (its control budget bounds its own messages, this bounds the
    /// host's answers to the pace of the recording).
    fn send_queued(&mut self, out: &mut Vec<Action>) {
        let frame = self.spec.frame_size().max(1) as usize;
        let fragment = (self.fragment_bytes as usize).min(MAX_AUDIO_CHUNK);
        loop {
            let room = usize::try_from(self.credit.saturating_sub(self.sent)).unwrap_or(usize::MAX);
            let n = self.queue.len().min(room).min(MAX_AUDIO_CHUNK) / frame * frame;
            if n == 0 || (n < fragment && n < self.queue.len()) {
                return;
            }
            let chunk: Vec<u8> = self.queue.drain(..n).collect();
            self.sent += n as u64;
            out.push(Action::Send(HostMessage::CaptureData(chunk)));
        }
    }

    /// A capture clock report, when one is due at `now_usec` (or `forced`).
    fn report(&mut self, now_usec: u64, forced: bool, out: &mut Vec<Action>) {
        let (delay_usec, running) = match self.last_audio {
            Some((at, delay)) if self.phase == Phase::Open => {
                // The audio queued here is also held beyond `sent`.
                let queued = self.spec.bytes_to_usec(self.queue.len() as u64);
                let running = now_usec.saturating_sub(at) < STALL_USEC;
                let since = if running {
                    now_usec.saturating_sub(at)
                } else {
                    0
                };
                let delay = u64::from(delay)
                    .saturating_add(queued)
                    .saturating_add(since);
                (u32::try_from(delay).unwrap_or(u32::MAX), running)
            }
            _ => (0, false),
        };
        let due = match self.last_clock_usec {
            None => true,
            Some(last) => {
                now_usec.saturating_sub(last) + CLOCK_SLACK_USEC >= CLOCK_INTERVAL_PLAYING_USEC
            }
        };
        if !(forced || running != self.last_running || (running && due)) {
            return;
        }
        self.last_clock_usec = Some(now_usec);
        self.last_running = running;
        let (host_time_usec, delay_usec) = round_report(self.quantum_usec, now_usec, delay_usec);
        out.push(Action::Send(HostMessage::CaptureClock(CaptureReport {
            host_time_usec,
            sent_bytes: self.sent,
            delay_usec,
            dropped_bytes: self.dropped,
            running,
        })));
    }
}

#[cfg(test)]
mod tests;

//! One capture connection's protocol and timing state on the guest side
//! (protocol v2, docs/protocol.md §11), with no I/O and the time injected:
//! the source's IO thread feeds it host messages and the time, takes the
//! audio it queued, and sends what it queues.
//!
//! Decisions (docs/design.md, "Capture"):
//! - the local queue is bounded by the credit window, fixed before any
//!   allocation: `max(2 × host fragment, target latency)`, at most
//!   [`MAX_CAPTURE_WINDOW_USEC`] of audio and [`MAX_CAPTURE_WINDOW_BYTES`];
//!   the host may never send beyond the cumulative credit, so the queue
//!   cannot grow past the window;
//! - hostile input closes the connection (the caller reconnects): data
//!   beyond credit, partial frames, a second handshake reply, a clock report
//!   claiming more than was sent;
//! - latency = capture head (the host's report extrapolated in real time
//!   while running) minus what has been posted to the source; the local
//!   queue is in it by construction. Reports whose host time goes back are
//!   ignored; the result is clamped to [`MAX_CAPTURE_LATENCY_USEC`].

use std::collections::VecDeque;

use secure_tunnel_protocol::{
    CaptureReport, CaptureState, GuestMessage, Hello, HostMessage, StreamSpec,
    CAPTURE_PROTOCOL_VERSION, MAGIC,
};
use secure_tunnel_timing::ClockMapper;

/// Round-trip probes, for mapping host time onto guest time.
pub const CAPTURE_PING_INTERVAL_USEC: u64 = 250_000;
/// A host that says nothing (not even a Pong) for this long is gone.
pub const CAPTURE_STALL_TIMEOUT_USEC: u64 = 2_000_000;
/// The credit window never exceeds this much audio.
pub const MAX_CAPTURE_WINDOW_USEC: u64 = 1_000_000;
/// Nor this many bytes (the local queue's hard bound).
pub const MAX_CAPTURE_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// Reported latency is clamped here, whatever the host claims.
pub const MAX_CAPTURE_LATENCY_USEC: u64 = 10_000_000;
/// How far ahead of the guest's now a clock report may be dated (a host
/// dates a negative latency, a monitor's, as delay 0 that much later).
pub const REPORT_AHEAD_MAX_USEC: u64 = 500_000;

/// What the guest shows about its microphone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicState {
    /// No connection (connecting, or waiting to reconnect).
    Disconnected,
    /// Connected, host reported this state.
    Host(CaptureState),
}

impl MicState {
    /// The value of the `secure_tunnel.capture` property.
    pub fn as_str(self) -> &'static str {
        match self {
            MicState::Disconnected => "disconnected",
            MicState::Host(CaptureState::Attached) => "attached",
            MicState::Host(CaptureState::Idle) => "idle",
            MicState::Host(CaptureState::AwaitingGrant) => "awaiting-grant",
            MicState::Host(CaptureState::Unavailable) => "unavailable",
        }
    }
}

/// The guest's end of one capture connection.
#[derive(Debug)]
pub struct CaptureSession {
    spec: StreamSpec,
    target_latency_usec: u32,
    accepted: bool,
    window: u64,
    queue: VecDeque<u8>,
    /// Capture bytes received since the handshake.
    received: u64,
    /// Bytes taken from the queue by the source (posted).
    posted: u64,
    /// Cumulative credit sent.
    credit_sent: u64,
    want_record: bool,
    recording_sent: bool,
    state: CaptureState,
    clock: ClockMapper,
    /// Latest report: (guest time, head position in bytes, running, how far
    /// ahead of its arrival it was dated).
    head: Option<(u64, u64, bool, u64)>,
    last_host_time: u64,
    dropped: u64,
    last_rx: u64,
    next_ping: u64,
    outgoing: Vec<GuestMessage>,
}

impl CaptureSession {
    /// A session on a connection opened at `now`; queues the CaptureHello.
    pub fn new(spec: StreamSpec, now: u64, target_latency_usec: u32, name: &str) -> Self {
        let mut stream_name = name.to_owned();
        stream_name.truncate(secure_tunnel_protocol::MAX_STREAM_NAME);
        let hello = Hello {
            magic: MAGIC,
            version: CAPTURE_PROTOCOL_VERSION,
            spec: spec.clone(),
            target_latency_usec,
            stream_name,
        };
        CaptureSession {
            spec,
            target_latency_usec,
            accepted: false,
            window: 0,
            queue: VecDeque::new(),
            received: 0,
            posted: 0,
            credit_sent: 0,
            want_record: false,
            recording_sent: false,
            state: CaptureState::Idle,
            clock: ClockMapper::new(),
            head: None,
            last_host_time: 0,
            dropped: 0,
            last_rx: now,
            next_ping: now,
            outgoing: vec![GuestMessage::CaptureHello(hello)],
        }
    }

    fn frame(&self) -> u64 {
        u64::from(self.spec.frame_size().max(1))
    }

    /// The credit window for a host fragment of `buffer_bytes` (whole frames).
    pub fn window_for(spec: &StreamSpec, target_latency_usec: u32, buffer_bytes: u32) -> u64 {
        let frame = u64::from(spec.frame_size().max(1));
        let cap = spec
            .usec_to_bytes(MAX_CAPTURE_WINDOW_USEC)
            .min(MAX_CAPTURE_WINDOW_BYTES);
        let want = (2 * u64::from(buffer_bytes))
            .max(spec.usec_to_bytes(u64::from(target_latency_usec)))
            .clamp(frame, cap.max(frame));
        (want - want % frame).max(frame)
    }

    /// Whether the source is being recorded from (opened by a
    /// source-output): asks the host to record (Uncork) or stop (Cork).
    pub fn set_recording(&mut self, on: bool) {
        self.want_record = on;
        self.sync_recording();
    }

    fn sync_recording(&mut self) {
        if self.accepted && self.want_record != self.recording_sent {
            self.recording_sent = self.want_record;
            self.outgoing.push(if self.want_record {
                GuestMessage::Uncork
            } else {
                GuestMessage::Cork
            });
        }
    }

    fn grant(&mut self) {
        let limit = self.posted + self.window;
        if limit >= self.credit_sent + (self.window / 4).max(self.frame()) || self.credit_sent == 0
        {
            self.credit_sent = limit;
            self.outgoing
                .push(GuestMessage::CaptureCredit { limit_bytes: limit });
        }
    }

    /// Applies one host message. `Err` carries the reason to close.
    pub fn on_message(&mut self, msg: HostMessage, now: u64) -> Result<(), String> {
        self.last_rx = now;
        if !self.accepted {
            return match msg {
                HostMessage::Accept(accept) => {
                    if accept.version != CAPTURE_PROTOCOL_VERSION {
                        return Err(format!("host accepted version {}", accept.version));
                    }
                    self.accepted = true;
                    self.window =
                        Self::window_for(&self.spec, self.target_latency_usec, accept.buffer_bytes);
                    self.queue = VecDeque::with_capacity(self.window as usize);
                    self.grant();
                    self.sync_recording();
                    Ok(())
                }
                HostMessage::Reject { reason, message } => {
                    Err(format!("host refused capture: {reason:?}: {message}"))
                }
                _ => Err("host sent a message before accepting".into()),
            };
        }
        match msg {
            HostMessage::CaptureData(data) => self.on_data(&data),
            HostMessage::CaptureClock(report) => self.on_clock(&report, now),
            HostMessage::CaptureState { state } => {
                self.state = state;
                if state != CaptureState::Attached {
                    self.head = None;
                }
                Ok(())
            }
            HostMessage::Pong {
                guest_time_usec,
                host_time_usec,
            } => {
                if guest_time_usec <= now {
                    self.clock.on_pong(guest_time_usec, host_time_usec, now);
                }
                Ok(())
            }
            HostMessage::Goodbye { reason } => Err(format!("host said goodbye: {reason}")),
            HostMessage::Accept(_) | HostMessage::Reject { .. } => {
                Err("host sent a second handshake reply".into())
            }
            HostMessage::Credit { .. } | HostMessage::Clock(_) => {
                Err("host sent a playback message on a capture connection".into())
            }
        }
    }

    fn on_data(&mut self, data: &[u8]) -> Result<(), String> {
        let len = data.len() as u64;
        if !len.is_multiple_of(self.frame()) {
            return Err(format!("capture data of {len} bytes is not whole frames"));
        }
        if self.received + len > self.credit_sent {
            return Err(format!(
                "capture data beyond credit ({} + {len} > {})",
                self.received, self.credit_sent
            ));
        }
        self.received += len;
        self.queue.extend(data);
        Ok(())
    }

    fn on_clock(&mut self, r: &CaptureReport, now: u64) -> Result<(), String> {
        if r.sent_bytes > self.received {
            return Err(format!(
                "capture clock claims {} bytes sent, {} received",
                r.sent_bytes, self.received
            ));
        }
        self.dropped = r.dropped_bytes;
        if r.host_time_usec < self.last_host_time {
            return Ok(()); // the host clock went back: ignore the report
        }
        self.last_host_time = r.host_time_usec;
        // A report may be dated up to REPORT_AHEAD_MAX_USEC ahead: the
        // host dates a negative latency (a monitor's) as delay 0 later on.
        let at = self
            .clock
            .host_to_guest(r.host_time_usec)
            .unwrap_or(now)
            .min(now.saturating_add(REPORT_AHEAD_MAX_USEC));
        let delay = self
            .spec
            .usec_to_bytes(u64::from(r.delay_usec).min(MAX_CAPTURE_LATENCY_USEC));
        let head = r.sent_bytes.saturating_add(delay);
        let ahead = at.saturating_sub(now);
        self.head = Some((
            at,
            head,
            r.running && self.state == CaptureState::Attached,
            ahead,
        ));
        Ok(())
    }

    /// Timers: pings and the stall check.
    pub fn poll(&mut self, now: u64) -> Result<(), String> {
        let silent = now.saturating_sub(self.last_rx);
        if silent >= CAPTURE_STALL_TIMEOUT_USEC {
            return Err(format!("host silent for {} ms", silent / 1000));
        }
        if self.accepted && now >= self.next_ping {
            self.next_ping = now + CAPTURE_PING_INTERVAL_USEC;
            self.outgoing.push(GuestMessage::Ping {
                guest_time_usec: now,
            });
        }
        Ok(())
    }

    /// When [`CaptureSession::poll`] wants to run next.
    ///
    /// Pings start with the Accept: before it only the stall timeout is due.
    /// (A deadline in the past would have the IO thread spin until the host
    /// answers; a real-time thread spinning for 200 ms gets the guest's
    /// sound server killed by RLIMIT_RTTIME.)
    pub fn next_deadline(&self) -> u64 {
        let stall = self.last_rx.saturating_add(CAPTURE_STALL_TIMEOUT_USEC);
        if self.accepted {
            self.next_ping.min(stall)
        } else {
            stall
        }
    }

    /// Takes up to `max` bytes (whole frames) of received audio for the
    /// source, and grants the room they leave.
    pub fn take(&mut self, max: usize) -> Vec<u8> {
        let frame = self.frame() as usize;
        let n = self.queue.len().min(max);
        let n = n - n % frame;
        let out: Vec<u8> = self.queue.drain(..n).collect();
        self.posted += n as u64;
        if self.accepted && n > 0 {
            self.grant();
        }
        out
    }

    /// Bytes waiting in the local queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The credit window (0 before Accept).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// What the host last said about recording.
    pub fn state(&self) -> CaptureState {
        self.state
    }

    /// Bytes the host reported dropped for want of credit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Source latency at `now`: how long ago the microphone took the sample
    /// the source will post next, in usec; the local queue's duration when
    /// there is no clock report.
    pub fn latency_usec(&self, now: u64) -> u64 {
        let queued = self.spec.bytes_to_usec(self.queue.len() as u64);
        let Some((at, head, running, ahead)) = self.head else {
            return queued.min(MAX_CAPTURE_LATENCY_USEC);
        };
        let mut head_usec = self.spec.bytes_to_usec(head);
        if running {
            head_usec = if now >= at {
                head_usec.saturating_add(now - at)
            } else {
                head_usec.saturating_sub(at - now)
            };
        }
        head_usec
            .saturating_sub(self.spec.bytes_to_usec(self.posted))
            // The local queue is at least that old, unless the host dated
            // its audio ahead (a monitor's: see on_clock).
            .max(queued.saturating_sub(ahead))
            .min(MAX_CAPTURE_LATENCY_USEC)
    }

    /// Messages to send, in order.
    pub fn drain_outgoing(&mut self) -> std::vec::Drain<'_, GuestMessage> {
        self.outgoing.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secure_tunnel_protocol::{Accept, SampleFormat};

    fn spec() -> StreamSpec {
        StreamSpec {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channel_map: vec![1, 2],
        }
    }

    fn open(now: u64) -> CaptureSession {
        let mut s = CaptureSession::new(spec(), now, 40_000, "mic");
        let out: Vec<_> = s.drain_outgoing().collect();
        assert!(matches!(out[..], [GuestMessage::CaptureHello(ref h)] if h.version == 2));
        s.on_message(
            HostMessage::Accept(Accept {
                version: 2,
                buffer_bytes: 1920,
                host_time_usec: 5,
            }),
            now,
        )
        .unwrap();
        s
    }

    fn credit(s: &mut CaptureSession) -> Option<u64> {
        s.drain_outgoing()
            .filter_map(|m| match m {
                GuestMessage::CaptureCredit { limit_bytes } => Some(limit_bytes),
                _ => None,
            })
            .next_back()
    }

    #[test]
    fn window_is_bounded() {
        let w = CaptureSession::window_for(&spec(), 40_000, 1920);
        assert_eq!(w, 7680);
        let w = CaptureSession::window_for(&spec(), 10_000_000, u32::MAX);
        assert_eq!(w, 192_000);
    }

    #[test]
    fn credit_then_uncork_and_cork() {
        let mut s = CaptureSession::new(spec(), 0, 40_000, "mic");
        s.set_recording(true);
        s.on_message(
            HostMessage::Accept(Accept {
                version: 2,
                buffer_bytes: 1920,
                host_time_usec: 0,
            }),
            0,
        )
        .unwrap();
        let out: Vec<_> = s.drain_outgoing().collect();
        assert_eq!(out[1], GuestMessage::CaptureCredit { limit_bytes: 7680 });
        assert_eq!(out[2], GuestMessage::Uncork);
        s.set_recording(true);
        assert_eq!(s.drain_outgoing().count(), 0);
        s.set_recording(false);
        assert_eq!(s.drain_outgoing().collect::<Vec<_>>(), [GuestMessage::Cork]);
    }

    #[test]
    fn reject_closes() {
        let mut s = CaptureSession::new(spec(), 0, 40_000, "mic");
        let e = s.on_message(
            HostMessage::Reject {
                reason: secure_tunnel_protocol::RejectReason::NotAllowed,
                message: "no".into(),
            },
            0,
        );
        assert!(e.unwrap_err().contains("NotAllowed"));
    }

    #[test]
    fn data_beyond_credit_or_partial_frames_is_an_error() {
        let mut s = open(0);
        assert!(s
            .on_message(HostMessage::CaptureData(vec![0; 3]), 0)
            .is_err());
        let mut s = open(0);
        s.on_message(HostMessage::CaptureData(vec![0; 7680]), 0)
            .unwrap();
        assert!(s
            .on_message(HostMessage::CaptureData(vec![0; 4]), 0)
            .is_err());
    }

    #[test]
    fn draining_grants_cumulative_credit() {
        let mut s = open(0);
        assert_eq!(credit(&mut s), Some(7680));
        let data: Vec<u8> = (0..7680u32).map(|i| i as u8).collect();
        s.on_message(HostMessage::CaptureData(data.clone()), 0)
            .unwrap();
        assert_eq!(s.take(1922), data[..1920]);
        assert_eq!(credit(&mut s), Some(9600));
        assert_eq!(s.take(100_000), data[1920..]);
        assert_eq!(credit(&mut s), Some(15_360));
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn second_accept_or_playback_message_is_an_error() {
        let mut s = open(0);
        let accept = HostMessage::Accept(Accept {
            version: 2,
            buffer_bytes: 1,
            host_time_usec: 0,
        });
        assert!(s.on_message(accept, 0).is_err());
        let mut s = open(0);
        assert!(s
            .on_message(HostMessage::Credit { limit_bytes: 9 }, 0)
            .is_err());
    }

    fn report(host_time: u64, sent: u64, delay: u32, running: bool) -> HostMessage {
        HostMessage::CaptureClock(CaptureReport {
            host_time_usec: host_time,
            sent_bytes: sent,
            delay_usec: delay,
            dropped_bytes: 0,
            running,
        })
    }

    /// A simulated host recording in real time for hours, sending 10 ms
    /// chunks with a 10 ms device delay; the guest posts as it arrives with
    /// a 5 ms lag. Latency must stay near delay + lag.
    #[test]
    fn latency_over_hours_of_virtual_time() {
        let offset = 1_000_000_000u64; // host epoch differs
        let mut s = open(0);
        credit(&mut s);
        s.on_message(
            HostMessage::CaptureState {
                state: CaptureState::Attached,
            },
            0,
        )
        .unwrap();
        let chunk = 1920u64; // 10 ms
        let mut sent = 0;
        let mut now = 0;
        for step in 0..(3 * 3600 * 100u64) {
            now = step * 10_000 + 10_000;
            // pings answered instantly
            s.poll(now).unwrap();
            for m in s.drain_outgoing().collect::<Vec<_>>() {
                if let GuestMessage::Ping { guest_time_usec } = m {
                    s.on_message(
                        HostMessage::Pong {
                            guest_time_usec,
                            host_time_usec: guest_time_usec + offset,
                        },
                        now,
                    )
                    .unwrap();
                }
            }
            s.on_message(HostMessage::CaptureData(vec![0; chunk as usize]), now)
                .unwrap();
            sent += chunk;
            s.on_message(report(now + offset, sent, 10_000, true), now)
                .unwrap();
            let later = now + 5_000;
            let lat = s.latency_usec(later);
            assert!(
                (lat as i64 - 25_000).abs() <= 100,
                "step {step}: latency {lat}"
            );
            assert_eq!(s.take(usize::MAX).len() as u64, chunk);
            let lat = s.latency_usec(later);
            assert!((lat as i64 - 15_000).abs() <= 100, "after take {lat}");
        }
        assert!(now > 3 * 3600 * 1_000_000 - 1);
    }

    /// A monitor's negative record latency comes as delay 0 dated ahead:
    /// the latency is that much lower, and a date beyond the bound counts
    /// as the bound.
    #[test]
    fn a_report_dated_ahead_lowers_the_latency() {
        let mut s = open(0);
        credit(&mut s);
        s.on_message(
            HostMessage::CaptureState {
                state: CaptureState::Attached,
            },
            0,
        )
        .unwrap();
        // Pongs map host time = guest time.
        s.poll(1_000).unwrap();
        for m in s.drain_outgoing().collect::<Vec<_>>() {
            if let GuestMessage::Ping { guest_time_usec } = m {
                s.on_message(
                    HostMessage::Pong {
                        guest_time_usec,
                        host_time_usec: guest_time_usec,
                    },
                    1_000,
                )
                .unwrap();
            }
        }
        s.on_message(HostMessage::CaptureData(vec![0; 1920]), 100_000)
            .unwrap();
        // At 100 ms, the data's end is "now" 4 ms later: 10 ms queued, less 4.
        s.on_message(report(104_000, 1920, 0, true), 100_000)
            .unwrap();
        assert_eq!(s.latency_usec(100_000), 6_000);
        assert_eq!(s.latency_usec(103_000), 9_000);
        assert_eq!(s.latency_usec(110_000), 16_000);
        // Dated beyond the bound: the bound (500 ms ahead), and never below 0.
        s.on_message(
            report(100_000 + 10 * REPORT_AHEAD_MAX_USEC, 1920, 0, true),
            100_000,
        )
        .unwrap();
        assert_eq!(s.latency_usec(100_000), 0);
        assert_eq!(
            s.latency_usec(100_000 + REPORT_AHEAD_MAX_USEC + 7_000),
            17_000
        );
    }

    #[test]
    fn hostile_clock_reports() {
        let mut s = open(0);
        s.on_message(
            HostMessage::CaptureState {
                state: CaptureState::Attached,
            },
            0,
        )
        .unwrap();
        // claims more sent than received
        assert!(s.on_message(report(10, 1, 0, true), 0).is_err());
        let mut s = open(0);
        s.on_message(report(1_000, 0, u32::MAX, true), 0).unwrap();
        assert_eq!(s.latency_usec(u64::MAX), MAX_CAPTURE_LATENCY_USEC);
        // going back is ignored
        s.on_message(report(10, 0, 0, true), 0).unwrap();
        assert_eq!(s.latency_usec(0), MAX_CAPTURE_LATENCY_USEC);
    }

    #[test]
    fn stall_and_state_names() {
        let mut s = open(0);
        assert!(s.poll(CAPTURE_STALL_TIMEOUT_USEC - 1).is_ok());
        assert!(s.poll(CAPTURE_STALL_TIMEOUT_USEC).is_err());
        assert_eq!(
            MicState::Host(CaptureState::AwaitingGrant).as_str(),
            "awaiting-grant"
        );
        assert_eq!(MicState::Disconnected.as_str(), "disconnected");
    }
}

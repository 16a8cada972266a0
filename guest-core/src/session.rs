//! One connection's protocol and timing state on the guest side, with no I/O:
//! the engine feeds it host messages and the time, asks it how much to
//! render, and sends what it queues. Pure, so a whole tunnel can be
//! simulated against host-playd's own session logic (tests/drift_sim.rs).

use secure_tunnel_protocol::{ClockReport, GuestMessage, HostMessage, StreamSpec};
use secure_tunnel_timing::{ClockMapper, Credit, PlaybackEstimator, UnderrunSlip};

/// Round-trip probes, for mapping host time onto guest time.
pub const PING_INTERVAL_USEC: u64 = 250_000;
/// Probes while corked: the host still reports several times a second.
pub const IDLE_PING_INTERVAL_USEC: u64 = 1_000_000;
/// What a rewind leaves on the host beyond its device's own latency: the
/// guest's view of the host's position is up to one clock report old (20 ms
/// apart) and the `Rewind` takes a one-way trip, so audio this close to
/// being heard may already be playing by the time the host drops it.
/// (docs/design.md, "Rewinds".)
pub const REWIND_GUARD_USEC: u64 = 30_000;
/// Rewinds per second the guest asks at most (the host allows twice as
/// many): a sound server rewinds on every stream start, move and volume
/// step, and a volume slider dragged fast must not cost the host a write
/// per step. Rewinds beyond it are answered with 0 bytes (the change is
/// heard after the host's buffer, as without rewinds).
pub const REWINDS_PER_SEC: u64 = 25;
/// See [`REWINDS_PER_SEC`].
pub const REWIND_BURST: u64 = 25;

/// A connected host that says nothing for this long is considered gone (it
/// sends clock reports several times a second even when corked).
pub const STALL_TIMEOUT_USEC: u64 = 2_000_000;

/// What the guest sink is doing, as far as the tunnel is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Inputs are playing: stream.
    Running,
    /// Opened without playing inputs: let the host play out what it has,
    /// then cork, so no silence is streamed.
    Idle,
    /// Closed: nothing more is rendered; the host plays out what it holds,
    /// then corks.
    Suspended,
}

/// Where the host stream is, from the guest's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Streaming,
    /// Idle: streaming until the host has played `until` bytes (the last
    /// audio rendered while running), then corked.
    Draining {
        until: u64,
    },
    Corked,
}

/// Something the engine may want to log or publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The host's underrun counter grew to `total`.
    Underruns { total: u32 },
}

/// Per-connection state of the guest's end of the tunnel.
#[derive(Debug)]
pub struct TunnelSession {
    spec: StreamSpec,
    credit: Credit,
    clock: ClockMapper,
    playback: PlaybackEstimator,
    slip: UnderrunSlip,
    /// Bytes still to be skipped (rendered from the inputs, not sent) to
    /// catch up with what a host underrun set back.
    skip: u64,
    /// Bytes rendered into this connection (equals bytes sent as Audio).
    rendered: u64,
    last_rx: u64,
    next_ping: u64,
    flow: Flow,
    latency_sent: u32,
    underruns: u32,
    /// Whether the host takes `Rewind` (protocol version 3).
    rewinds: bool,
    /// Rewind tokens, in millionths, and when they were last refilled.
    rewind_tokens: u64,
    rewind_refill_at: u64,
    /// The host device's latency from the last clock report.
    device_latency_usec: u64,
    /// What was sent before the last `Flush`: the host dropped it (it
    /// counts as played), so no rewind may reach below it.
    rewind_floor: u64,
    outgoing: Vec<GuestMessage>,
    notices: Vec<Notice>,
}

impl TunnelSession {
    /// A session whose handshake completed at `now`, announcing
    /// `target_latency_usec`, with the sink doing `activity`.
    pub fn new(spec: StreamSpec, now: u64, target_latency_usec: u32, activity: Activity) -> Self {
        let (bytes_per_sec, frame_size) = (spec.bytes_per_second(), u64::from(spec.frame_size()));
        let playback = PlaybackEstimator::new(bytes_per_sec, frame_size);
        let mut session = TunnelSession {
            spec,
            credit: Credit::new(),
            clock: ClockMapper::new(),
            playback,
            slip: UnderrunSlip::new(bytes_per_sec, frame_size),
            skip: 0,
            rendered: 0,
            last_rx: now,
            next_ping: now,
            flow: Flow::Streaming,
            latency_sent: target_latency_usec,
            underruns: 0,
            rewinds: false,
            rewind_tokens: REWIND_BURST * 1_000_000,
            rewind_refill_at: now,
            device_latency_usec: 0,
            rewind_floor: 0,
            outgoing: Vec::new(),
            notices: Vec::new(),
        };
        if activity != Activity::Running {
            // Nothing was played yet: no tail to drain.
            session.cork();
        }
        session
    }

    /// The host accepted protocol version 3: it takes `Rewind`.
    pub fn enable_rewinds(&mut self) {
        self.rewinds = true;
    }

    /// How many of the last `requested` bytes rendered can be rewritten:
    /// whole frames of what the host holds beyond its device's latency and
    /// [`REWIND_GUARD_USEC`]. Those are withdrawn (a `Rewind` is queued),
    /// the credit they used is refunded, and the positions go back, so what
    /// is rendered next takes their place on the host. 0 when the host
    /// cannot rewind, while corked, while skipping after an underrun (that
    /// schedule is built on the bytes sent), or beyond [`REWINDS_PER_SEC`].
    pub fn rewind(&mut self, requested: u64, now: u64) -> u64 {
        if !self.rewinds || self.flow == Flow::Corked || self.skip > 0 {
            return 0;
        }
        let frame = u64::from(self.spec.frame_size().max(1));
        // Before the host's next report, the estimate does not know of a
        // flush just sent: what it dropped must not be withdrawn again (the
        // replacement would land in the past and be skipped).
        let played = self
            .playback
            .played_at(now, self.rendered)
            .max(self.rewind_floor);
        let keep = self
            .spec
            .usec_to_bytes(self.device_latency_usec.saturating_add(REWIND_GUARD_USEC));
        let unplayed = self.rendered.saturating_sub(played);
        let bytes = requested.min(unplayed.saturating_sub(keep));
        let bytes = bytes - bytes % frame;
        if bytes == 0 || !self.take_rewind_token(now) {
            return 0;
        }
        self.rendered -= bytes;
        self.credit.refund(bytes);
        self.rewind_floor = self.rewind_floor.min(self.rendered);
        if let Flow::Draining { until } = self.flow {
            // What was withdrawn will not be heard: the drain ends sooner.
            self.flow = Flow::Draining {
                until: until.min(self.rendered),
            };
        }
        self.outgoing.push(GuestMessage::Rewind { bytes });
        bytes
    }

    fn take_rewind_token(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.rewind_refill_at);
        self.rewind_refill_at = self.rewind_refill_at.max(now);
        self.rewind_tokens = self
            .rewind_tokens
            .saturating_add(elapsed.saturating_mul(REWINDS_PER_SEC))
            .min(REWIND_BURST * 1_000_000);
        if self.rewind_tokens >= 1_000_000 {
            self.rewind_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// Outside streaming there is no schedule to keep after an underrun.
    fn forget_schedule(&mut self) {
        self.slip.reset();
        self.skip = 0;
    }

    fn cork(&mut self) {
        self.forget_schedule();
        if self.flow != Flow::Corked {
            self.flow = Flow::Corked;
            self.outgoing.push(GuestMessage::Cork);
        }
    }

    /// The sink's activity changed (or was re-asserted: idempotent).
    pub fn set_activity(&mut self, activity: Activity, now: u64) {
        match (activity, self.flow) {
            (Activity::Running, Flow::Streaming) => {}
            (Activity::Running, Flow::Draining { .. }) => self.flow = Flow::Streaming,
            (Activity::Running, Flow::Corked) => {
                // What the host still holds is silence rendered while idle:
                // drop it so new sound starts without waiting behind it.
                self.outgoing.push(GuestMessage::Flush);
                self.outgoing.push(GuestMessage::Uncork);
                self.rewind_floor = self.rendered;
                self.forget_schedule();
                self.flow = Flow::Streaming;
                self.next_ping = now;
            }
            // Suspended mid-playback: like idle, the host plays out what
            // was rendered before it corks. The guest's sound server has
            // consumed that audio from its inputs and will not give it
            // again, so corking at once would lose up to the host's buffer
            // (docs/design.md, "Suspend and cork").
            (Activity::Idle | Activity::Suspended, Flow::Streaming) => {
                self.forget_schedule();
                self.flow = Flow::Draining {
                    until: self.rendered,
                };
                self.check_drained(now);
            }
            (Activity::Idle | Activity::Suspended, _) => {}
        }
    }

    fn check_drained(&mut self, now: u64) {
        if let Flow::Draining { until } = self.flow {
            if self.playback.played_at(now, self.rendered) >= until {
                self.cork();
            }
        }
    }

    /// Applies one message from the host. `Err` carries the reason to close.
    pub fn on_message(&mut self, msg: HostMessage, now: u64) -> Result<(), String> {
        self.last_rx = now;
        match msg {
            HostMessage::Credit { limit_bytes } => self.credit.grant(limit_bytes),
            HostMessage::Clock(report) => self.on_clock(&report, now),
            HostMessage::Pong {
                guest_time_usec,
                host_time_usec,
            } => self.clock.on_pong(guest_time_usec, host_time_usec, now),
            HostMessage::Goodbye { reason } => return Err(format!("host said goodbye: {reason}")),
            HostMessage::Accept(_) | HostMessage::Reject { .. } => {
                return Err("host sent a second handshake reply".into())
            }
            HostMessage::CaptureData(_)
            | HostMessage::CaptureClock(_)
            | HostMessage::CaptureState { .. } => {
                return Err("host sent a capture message on a playback connection".into())
            }
        }
        Ok(())
    }

    fn on_clock(&mut self, report: &ClockReport, now: u64) {
        let at = self
            .clock
            .host_to_guest(report.host_time_usec)
            .unwrap_or(now);
        let ratio = 1.0 + self.clock.skew();
        self.device_latency_usec = u64::from(report.device_latency_usec);
        self.playback.set_rate_ratio(ratio);
        self.playback
            .on_report(at, now, report.played_bytes, report.playing);
        let skip = self.slip.on_report(
            at.min(now),
            report.played_bytes,
            report.playing,
            report.underruns,
            ratio,
        );
        if self.flow == Flow::Streaming {
            self.skip = self.skip.saturating_add(skip);
        } else {
            self.forget_schedule();
        }
        if report.underruns > self.underruns {
            self.underruns = report.underruns;
            self.notices.push(Notice::Underruns {
                total: report.underruns,
            });
        }
        self.check_drained(now);
    }

    /// Timers: pings, latency changes, the stall check, the idle drain.
    pub fn poll(&mut self, now: u64, target_latency_usec: u32) -> Result<(), String> {
        let silent = now.saturating_sub(self.last_rx);
        if silent >= STALL_TIMEOUT_USEC {
            return Err(format!("host silent for {} ms", silent / 1000));
        }
        if now >= self.next_ping {
            self.next_ping = now
                + if self.flow == Flow::Corked {
                    IDLE_PING_INTERVAL_USEC
                } else {
                    PING_INTERVAL_USEC
                };
            self.outgoing.push(GuestMessage::Ping {
                guest_time_usec: now,
            });
        }
        if target_latency_usec != self.latency_sent {
            self.latency_sent = target_latency_usec;
            self.outgoing.push(GuestMessage::SetLatency {
                target_latency_usec,
            });
        }
        self.check_drained(now);
        Ok(())
    }

    /// When [`TunnelSession::poll`] wants to run next.
    pub fn next_deadline(&self) -> u64 {
        self.next_ping.min(self.last_rx + STALL_TIMEOUT_USEC)
    }

    /// Bytes that may be rendered now: what the host granted plus what is
    /// to be skipped after a host underrun ([`TunnelSession::take_skip`]),
    /// nothing while corked.
    pub fn render_budget(&self) -> u64 {
        if self.flow == Flow::Corked {
            return 0;
        }
        let bytes = self.credit.available().saturating_add(self.skip);
        bytes - bytes % u64::from(self.spec.frame_size().max(1))
    }

    /// Of `bytes` just rendered, how many (from the front, whole frames) are
    /// to be dropped instead of sent: after a host underrun the guest skips
    /// as much audio as the host played silence in its place, so its
    /// inputs' clocks stay true ([`UnderrunSlip`]). Call before
    /// [`TunnelSession::on_rendered`], which takes the rest.
    pub fn take_skip(&mut self, bytes: u64) -> u64 {
        let frame = u64::from(self.spec.frame_size().max(1));
        let n = self.skip.min(bytes);
        let n = n - n % frame;
        self.skip -= n;
        n
    }

    /// Records `bytes` rendered and queued as audio.
    pub fn on_rendered(&mut self, bytes: u64) {
        self.credit.spend(bytes);
        self.rendered += bytes;
    }

    /// Whether the host stream is corked.
    pub fn is_corked(&self) -> bool {
        self.flow == Flow::Corked
    }

    /// Time until a sample rendered now is heard on the host, in usec.
    pub fn latency_usec(&mut self, now: u64) -> u64 {
        self.playback.latency_usec(now, self.rendered)
    }

    /// Bytes rendered into this connection so far.
    pub fn rendered(&self) -> u64 {
        self.rendered
    }

    /// Messages to send, in order.
    pub fn drain_outgoing(&mut self) -> std::vec::Drain<'_, GuestMessage> {
        self.outgoing.drain(..)
    }

    /// Things worth logging or publishing since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The host clock as mapped onto the guest's, for tests and diagnostics.
    pub fn clock(&self) -> &ClockMapper {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secure_tunnel_protocol::SampleFormat;

    /// 48 kHz stereo s16: 192 bytes per millisecond.
    fn spec() -> StreamSpec {
        StreamSpec {
            format: SampleFormat::S16Le,
            rate: 48_000,
            channel_map: vec![1, 2],
        }
    }

    fn report(at: u64, played: u64, received: u64) -> HostMessage {
        HostMessage::Clock(ClockReport {
            host_time_usec: at,
            received_bytes: received,
            played_bytes: played,
            device_latency_usec: 0,
            underruns: 0,
            playing: true,
        })
    }

    fn corks(session: &mut TunnelSession) -> usize {
        session
            .drain_outgoing()
            .filter(|m| matches!(m, GuestMessage::Cork))
            .count()
    }

    fn underrun_report(played: u64, underruns: u32, playing: bool) -> HostMessage {
        HostMessage::Clock(ClockReport {
            host_time_usec: 0,
            received_bytes: played,
            played_bytes: played,
            device_latency_usec: 0,
            underruns,
            playing,
        })
    }

    #[test]
    fn after_a_host_underrun_the_slip_is_skipped_not_sent() {
        // Issue 14's shape: the host plays on schedule (no pongs yet, so a
        // report is placed at its arrival), runs dry at 1 s for 65 ms, then
        // plays again 65 ms behind.
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        for ms in (0..1000).step_by(20) {
            s.on_message(underrun_report(ms * 192, 0, true), ms * 1000)
                .unwrap();
        }
        s.on_message(underrun_report(1000 * 192, 1, false), 1_000_000)
            .unwrap();
        assert_eq!(s.render_budget(), 0, "nothing to skip while dry");
        s.on_message(underrun_report(1015 * 192, 1, true), 1_080_000)
            .unwrap();
        assert_eq!(s.render_budget(), 65 * 192);
        // The skip comes off the front of what is rendered; the rest is
        // sent against credit.
        assert_eq!(s.take_skip(40 * 192), 40 * 192);
        assert_eq!(s.take_skip(40 * 192), 25 * 192);
        assert_eq!(s.take_skip(40 * 192), 0);
        assert_eq!(s.rendered(), 0, "skipped bytes are not sent");
        // Back on schedule: no more skips.
        s.on_message(underrun_report(1035 * 192, 1, true), 1_100_000)
            .unwrap();
        assert_eq!(s.render_budget(), 0);
    }

    #[test]
    fn an_underrun_while_draining_or_corked_is_no_slip() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        s.on_message(underrun_report(0, 0, true), 0).unwrap();
        s.on_message(underrun_report(19_200, 0, true), 100_000)
            .unwrap();
        s.set_activity(Activity::Idle, 100_000);
        s.on_message(underrun_report(19_200, 1, false), 200_000)
            .unwrap();
        s.set_activity(Activity::Running, 5_000_000);
        s.on_message(underrun_report(19_200, 1, true), 5_000_000)
            .unwrap();
        assert_eq!(s.render_budget(), 0);
    }

    #[test]
    fn suspend_mid_playback_plays_out_what_was_rendered_then_corks() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        s.on_message(
            HostMessage::Credit {
                limit_bytes: 60 * 192,
            },
            0,
        )
        .unwrap();
        assert_eq!(s.render_budget(), 60 * 192);
        s.on_rendered(60 * 192);
        s.on_message(report(0, 0, 60 * 192), 0).unwrap();
        let _ = s.drain_outgoing().count();

        s.set_activity(Activity::Suspended, 1_000);
        assert_eq!(corks(&mut s), 0, "not corked while the host holds audio");
        assert_eq!(s.render_budget(), s.credit.available());
        s.poll(30_000, 60_000).unwrap();
        assert!(!s.is_corked(), "half of it still unplayed at 30 ms");
        s.poll(60_000, 60_000).unwrap();
        assert!(s.is_corked(), "corked once all 60 ms are played");
        assert_eq!(corks(&mut s), 1);
        assert_eq!(s.render_budget(), 0);
    }

    #[test]
    fn resume_while_playing_out_keeps_streaming_without_flush() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        s.on_rendered(0);
        s.on_message(report(0, 0, 0), 0).unwrap();
        s.on_rendered(1920);
        let _ = s.drain_outgoing().count();
        s.set_activity(Activity::Suspended, 0);
        s.set_activity(Activity::Running, 5_000);
        let sent: Vec<_> = s.drain_outgoing().collect();
        assert!(sent
            .iter()
            .all(|m| !matches!(m, GuestMessage::Flush | GuestMessage::Cork)));
        assert!(!s.is_corked());
    }

    /// A v3 session streaming 60 ms of audio, all unplayed at `t = 0`.
    fn rewindable() -> TunnelSession {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        s.enable_rewinds();
        s.on_message(
            HostMessage::Credit {
                limit_bytes: 60 * 192,
            },
            0,
        )
        .unwrap();
        s.on_rendered(60 * 192);
        s.on_message(report(0, 0, 60 * 192), 0).unwrap();
        let _ = s.drain_outgoing().count();
        s
    }

    #[test]
    fn a_rewind_withdraws_what_the_host_surely_has_not_played() {
        let mut s = rewindable();
        // 10 ms later 50 ms are unplayed; 30 ms of guard stay: 20 ms go.
        let bytes = s.rewind(u64::MAX, 10_000);
        assert_eq!(bytes, 20 * 192);
        assert_eq!(
            s.drain_outgoing().collect::<Vec<_>>(),
            vec![GuestMessage::Rewind { bytes: 20 * 192 }]
        );
        assert_eq!(s.rendered(), 40 * 192);
        // The credit they used may be spent again, and the latency is what
        // is left: 30 ms.
        assert_eq!(s.render_budget(), 20 * 192);
        assert_eq!(s.latency_usec(10_000), 30_000);
        // Nothing more to give back now.
        assert_eq!(s.rewind(u64::MAX, 10_000), 0);
        // A smaller request is honoured in whole frames.
        s.on_rendered(20 * 192);
        assert_eq!(s.rewind(1_001, 10_000), 1_000);
    }

    #[test]
    fn no_rewind_without_protocol_3_while_corked_or_skipping() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Running);
        s.on_message(
            HostMessage::Credit {
                limit_bytes: 60 * 192,
            },
            0,
        )
        .unwrap();
        s.on_rendered(60 * 192);
        assert_eq!(s.rewind(u64::MAX, 0), 0, "host speaks version 1");
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Suspended);
        s.enable_rewinds();
        assert_eq!(s.rewind(u64::MAX, 0), 0, "corked");
    }

    #[test]
    fn a_rewind_while_draining_ends_the_drain_sooner() {
        let mut s = rewindable();
        s.set_activity(Activity::Idle, 0);
        assert_eq!(s.rewind(u64::MAX, 0), 30 * 192);
        let _ = s.drain_outgoing().count();
        s.poll(29_000, 60_000).unwrap();
        assert!(!s.is_corked());
        s.poll(30_000, 60_000).unwrap();
        assert!(s.is_corked(), "corked once the 30 ms kept are played");
    }

    #[test]
    fn nothing_sent_before_a_flush_is_rewound() {
        // CI found it: a new stream on an idle (corked) sink uncorks with
        // Flush, and PulseAudio's rewind for the new stream followed at
        // once; the guest still believed the old tail unplayed, withdrew
        // it, and the start of the new stream landed in the past.
        let mut s = rewindable();
        // Idle: the host plays out the 60 ms of audio while the sink goes
        // on sending silence (here 40 ms), then corks with that silence
        // still queued.
        s.set_activity(Activity::Idle, 0);
        s.on_message(
            HostMessage::Credit {
                limit_bytes: 100 * 192,
            },
            0,
        )
        .unwrap();
        s.on_rendered(40 * 192);
        s.on_message(report(60_000, 60 * 192, 100 * 192), 60_000)
            .unwrap();
        assert!(s.is_corked());
        // A new stream: Flush, Uncork, and PulseAudio's rewind at once.
        s.set_activity(Activity::Running, 60_000);
        let _ = s.drain_outgoing().count();
        assert_eq!(s.rewind(u64::MAX, 60_000), 0);
        // What is sent after the flush can be rewound again.
        s.on_message(
            HostMessage::Credit {
                limit_bytes: 200 * 192,
            },
            60_000,
        )
        .unwrap();
        s.on_rendered(60 * 192);
        assert_eq!(s.rewind(u64::MAX, 60_000), 30 * 192);
    }

    #[test]
    fn rewinds_are_limited_to_their_rate() {
        let mut s = rewindable();
        let mut granted = 0;
        for _ in 0..1000 {
            s.on_rendered(0);
            if s.rewind(4, 0) > 0 {
                granted += 1;
            }
        }
        assert_eq!(u64::try_from(granted).unwrap(), REWIND_BURST);
        // A second later the bucket holds REWINDS_PER_SEC more (the host,
        // stopped, still holds everything).
        s.on_message(report(1_000_000, 0, 0), 1_000_000).unwrap();
        let mut later = 0;
        for _ in 0..1000 {
            if s.rewind(4, 1_000_000) > 0 {
                later += 1;
            }
        }
        assert_eq!(u64::try_from(later).unwrap(), REWINDS_PER_SEC);
    }

    #[test]
    fn a_session_opened_suspended_corks_at_once() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Suspended);
        assert_eq!(corks(&mut s), 1);
        assert!(s.is_corked());
    }
}

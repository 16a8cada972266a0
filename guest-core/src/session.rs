//! One connection's protocol and timing state on the guest side, with no I/O:
//! the engine feeds it host messages and the time, asks it how much to
//! render, and sends what it queues. Pure, so a whole tunnel can be
//! simulated against host-playd's own session logic (tests/drift_sim.rs).

use secure_tunnel_protocol::{ClockReport, GuestMessage, HostMessage, StreamSpec};
use secure_tunnel_timing::{ClockMapper, Credit, PlaybackEstimator};

/// Round-trip probes, for mapping host time onto guest time.
pub const PING_INTERVAL_USEC: u64 = 250_000;
/// Probes while corked: the host still reports several times a second.
pub const IDLE_PING_INTERVAL_USEC: u64 = 1_000_000;
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
    /// Bytes rendered into this connection (equals bytes sent as Audio).
    rendered: u64,
    last_rx: u64,
    next_ping: u64,
    flow: Flow,
    latency_sent: u32,
    underruns: u32,
    outgoing: Vec<GuestMessage>,
    notices: Vec<Notice>,
}

impl TunnelSession {
    /// A session whose handshake completed at `now`, announcing
    /// `target_latency_usec`, with the sink doing `activity`.
    pub fn new(spec: StreamSpec, now: u64, target_latency_usec: u32, activity: Activity) -> Self {
        let playback =
            PlaybackEstimator::new(spec.bytes_per_second(), u64::from(spec.frame_size()));
        let mut session = TunnelSession {
            spec,
            credit: Credit::new(),
            clock: ClockMapper::new(),
            playback,
            rendered: 0,
            last_rx: now,
            next_ping: now,
            flow: Flow::Streaming,
            latency_sent: target_latency_usec,
            underruns: 0,
            outgoing: Vec::new(),
            notices: Vec::new(),
        };
        if activity != Activity::Running {
            // Nothing was played yet: no tail to drain.
            session.cork();
        }
        session
    }

    fn cork(&mut self) {
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
                self.flow = Flow::Streaming;
                self.next_ping = now;
            }
            // Suspended mid-playback: like idle, the host plays out what
            // was rendered before it corks. The guest's sound server has
            // consumed that audio from its inputs and will not give it
            // again, so corking at once would lose up to the host's buffer
            // (docs/design.md, "Suspend and cork").
            (Activity::Idle | Activity::Suspended, Flow::Streaming) => {
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
        }
        Ok(())
    }

    fn on_clock(&mut self, report: &ClockReport, now: u64) {
        let at = self
            .clock
            .host_to_guest(report.host_time_usec)
            .unwrap_or(now);
        self.playback.set_rate_ratio(1.0 + self.clock.skew());
        self.playback
            .on_report(at, now, report.played_bytes, report.playing);
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

    /// Bytes that may be rendered now: what the host granted, nothing while
    /// corked.
    pub fn render_budget(&self) -> u64 {
        if self.flow == Flow::Corked {
            return 0;
        }
        let bytes = self.credit.available();
        bytes - bytes % u64::from(self.spec.frame_size().max(1))
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

    #[test]
    fn a_session_opened_suspended_corks_at_once() {
        let mut s = TunnelSession::new(spec(), 0, 60_000, Activity::Suspended);
        assert_eq!(corks(&mut s), 1);
        assert!(s.is_corked());
    }
}

//! Per-guest message budgets: how fast one guest may send each kind of
//! message before it is told why and closed.
//!
//! Every message costs the daemon work (a decode, an engine wake-up, maybe a
//! sound-server operation), so a guest sending valid messages at full speed
//! could otherwise starve its neighbours. Each kind has a token bucket sized
//! far above what the guest module sends (see the constants); the check runs
//! where the bytes are decoded, before the message reaches the engine, on
//! the host clock the caller passes (pure: no clock is read here).
#![forbid(unsafe_code)]

use secure_tunnel_protocol::GuestMessage;

/// A token bucket: `burst` messages at once, `per_sec` sustained.
#[derive(Debug, Clone)]
pub struct Bucket {
    per_sec: u32,
    burst: u32,
    /// Tokens, in millionths (so that refills are exact to the microsecond).
    micro_tokens: u64,
    last_usec: Option<u64>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Bucket {
            per_sec,
            burst,
            micro_tokens: u64::from(burst) * 1_000_000,
            last_usec: None,
        }
    }

    /// Takes one token at host time `now_usec`; `false` when empty.
    pub fn take(&mut self, now_usec: u64) -> bool {
        let elapsed = self
            .last_usec
            .map_or(0, |last| now_usec.saturating_sub(last));
        self.last_usec = Some(now_usec);
        let cap = u64::from(self.burst) * 1_000_000;
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(self.per_sec)))
            .min(cap);
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// The sustained rate, for the reason text.
    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }
}

/// Cork, Uncork, Flush, SetLatency: the module sends one to three per
/// change of its sink's state (a few per minute in practice).
pub const CONTROL_PER_SEC: u32 = 20;
/// See [`CONTROL_PER_SEC`].
pub const CONTROL_BURST: u32 = 64;
/// Rewinds (protocol 3): the sink module asks one per rewind its sound
/// server makes (a stream starting, moving, a volume change) and limits
/// itself to 25 per second (`guest-core`'s `REWINDS_PER_SEC`); each costs a
/// sound-server write.
pub const REWIND_PER_SEC: u32 = 50;
/// See [`REWIND_PER_SEC`].
pub const REWIND_BURST: u32 = 100;
/// Pings: the module sends 4 per second while playing, 1 while corked.
pub const PING_PER_SEC: u32 = 16;
/// See [`PING_PER_SEC`].
pub const PING_BURST: u32 = 32;
/// Audio frames: the module sends one per credit it is given, at most a few
/// hundred per second at a 10 ms latency. Credit bounds the bytes; this
/// bounds the count (1-frame chunks would cost a sound-server write each).
pub const AUDIO_PER_SEC: u32 = 2_000;
/// See [`AUDIO_PER_SEC`].
pub const AUDIO_BURST: u32 = 4_000;

/// One guest connection's budgets.
#[derive(Debug, Clone)]
pub struct MessageBudget {
    control: Bucket,
    rewind: Bucket,
    ping: Bucket,
    audio: Bucket,
}

impl Default for MessageBudget {
    fn default() -> Self {
        MessageBudget {
            control: Bucket::new(CONTROL_PER_SEC, CONTROL_BURST),
            rewind: Bucket::new(REWIND_PER_SEC, REWIND_BURST),
            ping: Bucket::new(PING_PER_SEC, PING_BURST),
            audio: Bucket::new(AUDIO_PER_SEC, AUDIO_BURST),
        }
    }
}

impl MessageBudget {
    /// Charges `message`, received at `now_usec`; `Err` is the reason the
    /// guest is closed with (sent to it, and logged).
    pub fn charge(&mut self, now_usec: u64, message: &GuestMessage) -> Result<(), String> {
        let (bucket, what) = match message {
            GuestMessage::Cork
            | GuestMessage::Uncork
            | GuestMessage::Flush
            | GuestMessage::SetLatency { .. } => (&mut self.control, "control messages"),
            GuestMessage::Ping { .. } => (&mut self.ping, "pings"),
            GuestMessage::Rewind { .. } => (&mut self.rewind, "rewinds"),
            // Capture credit flows at the pace audio does, the other way.
            GuestMessage::Audio(_) | GuestMessage::CaptureCredit { .. } => {
                (&mut self.audio, "audio messages")
            }
            // One each per connection: the session closes on a second one.
            GuestMessage::Hello(_)
            | GuestMessage::CaptureHello(_)
            | GuestMessage::Goodbye { .. } => return Ok(()),
        };
        if bucket.take(now_usec) {
            Ok(())
        } else {
            Err(format!(
                "over budget: more than {} {what} per second",
                bucket.per_sec()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Host times in a test are plain numbers: a fake clock.
    const SEC: u64 = 1_000_000;

    #[test]
    fn bucket_allows_its_burst_then_its_rate() {
        let mut b = Bucket::new(10, 5);
        let t0 = 7 * SEC;
        assert!((0..5).all(|_| b.take(t0)), "the burst");
        assert!(!b.take(t0));
        // 100 ms refills exactly one token.
        assert!(b.take(t0 + SEC / 10));
        assert!(!b.take(t0 + SEC / 10));
        // Long silence refills to the burst, not beyond.
        let later = t0 + 3600 * SEC;
        assert!((0..5).all(|_| b.take(later)));
        assert!(!b.take(later));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = Bucket::new(10, 1);
        assert!(b.take(5 * SEC));
        assert!(!b.take(SEC));
    }

    #[test]
    fn the_module_s_own_pattern_stays_within_budget_for_an_hour() {
        let mut budget = MessageBudget::default();
        // Every 2.5 ms an audio chunk, every 250 ms a ping, every 10 s a
        // cork + flush + uncork cycle, for a simulated hour.
        let step = 2_500;
        for i in 0..(3600 * SEC / step) {
            let now = i * step;
            budget
                .charge(now, &GuestMessage::Audio(vec![0; 480]))
                .unwrap();
            if now % (SEC / 4) == 0 {
                budget
                    .charge(now, &GuestMessage::Ping { guest_time_usec: 0 })
                    .unwrap();
            }
            // The module's own rewind limit, at its full rate.
            if now % (SEC / 25) == 0 {
                budget
                    .charge(now, &GuestMessage::Rewind { bytes: 0 })
                    .unwrap();
            }
            if now % (10 * SEC) == 0 {
                for m in [
                    GuestMessage::Cork,
                    GuestMessage::Flush,
                    GuestMessage::Uncork,
                ] {
                    budget.charge(now, &m).unwrap();
                }
            }
        }
    }

    #[test]
    fn a_flood_of_each_kind_is_stopped_with_a_reason() {
        for (message, what) in [
            (GuestMessage::Cork, "control messages"),
            (GuestMessage::Flush, "control messages"),
            (
                GuestMessage::SetLatency {
                    target_latency_usec: 1_000,
                },
                "control messages",
            ),
            (GuestMessage::Ping { guest_time_usec: 1 }, "pings"),
            (GuestMessage::Rewind { bytes: 4 }, "rewinds"),
            (GuestMessage::Audio(Vec::new()), "audio messages"),
        ] {
            let mut budget = MessageBudget::default();
            // Full speed: a message every microsecond.
            let stopped = (0..100_000u64).find_map(|t| budget.charge(SEC + t, &message).err());
            let reason = stopped.unwrap_or_else(|| panic!("{message:?} flood not stopped"));
            assert!(reason.contains(what), "{reason}");
        }
    }
}

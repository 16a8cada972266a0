//! When the node runs a graph cycle, and how much of what it was given goes
//! to the host: pure, no PipeWire, the time injected.
//!
//! The node is the driver of its graph and follows the host's clock: a cycle
//! is triggered only when the engine grants at least one quantum (the host's
//! credit while connected, real time while not), so the guest graph runs at
//! the rate of the host's sound card. When another driver runs the graph
//! (the node was made a follower), cycles come at that driver's pace and
//! whatever exceeds the grant is dropped and counted: the host queue stays
//! bounded, and the log says so.

/// The grant as the engine states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Connected: the bytes the host's credit allows now (not cumulative).
    Credit(u64),
    /// Disconnected: bytes of real time that just elapsed (cumulative).
    Elapsed(u64),
}

/// Most real time owed while disconnected, so a stall of the service never
/// turns into a burst of cycles afterwards.
const MAX_OWED_USEC: u64 = 200_000;
/// A triggered cycle that has not delivered after this long never will.
pub const STALE_CYCLE_USEC: u64 = 100_000;

#[derive(Debug)]
pub struct Pacer {
    bytes_per_sec: u64,
    /// Size of the last cycle, in bytes (what the next one will likely be).
    quantum: u64,
    /// Disconnected: real time owed to the graph, in bytes.
    owed: u64,
    /// Connected: the credit as last stated.
    credit: u64,
    connected: bool,
    /// When the cycle triggered last has not delivered yet: since when.
    pending: Option<u64>,
    /// Bytes the graph gave beyond the grant (follower mode), dropped.
    pub dropped: u64,
}

impl Pacer {
    /// `quantum` is the expected cycle size in bytes until one is seen.
    pub fn new(bytes_per_sec: u64, quantum: u64) -> Self {
        Self {
            bytes_per_sec,
            quantum: quantum.max(1),
            owed: 0,
            credit: 0,
            connected: false,
            pending: None,
            dropped: 0,
        }
    }

    pub fn grant(&mut self, grant: Grant) {
        match grant {
            Grant::Credit(bytes) => {
                self.connected = true;
                self.owed = 0;
                self.credit = bytes;
            }
            Grant::Elapsed(bytes) => {
                self.connected = false;
                self.credit = 0;
                let cap = self.bytes_per_sec * MAX_OWED_USEC / 1_000_000;
                self.owed = self.owed.saturating_add(bytes).min(cap.max(self.quantum));
            }
        }
    }

    fn available(&self) -> u64 {
        if self.connected {
            self.credit
        } else {
            self.owed
        }
    }

    /// Whether to trigger a cycle now (the node driving its graph). One
    /// cycle at a time: PipeWire hands the node a cycle's data when the
    /// cycle completes, and a new trigger before that would read nothing.
    /// A cycle that never delivers (the graph was reconfigured) is given
    /// up after [`STALE_CYCLE_USEC`].
    pub fn should_trigger(&mut self, now: u64) -> bool {
        if let Some(since) = self.pending {
            if now.saturating_sub(since) < STALE_CYCLE_USEC {
                return false;
            }
        }
        if self.available() < self.quantum {
            self.pending = None;
            return false;
        }
        self.pending = Some(now);
        true
    }

    /// A cycle delivered `len` bytes: how many of them go to the engine.
    pub fn on_cycle(&mut self, len: u64) -> u64 {
        self.pending = None;
        if len > 0 {
            self.quantum = len;
        }
        let take = len.min(self.available());
        self.dropped += len - take;
        if self.connected {
            self.credit -= take;
        } else {
            self.owed -= take;
        }
        take
    }

    /// The graph changed state: whatever was triggered will not come.
    pub fn reset_pending(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u64 = 48_000 * 4;
    const Q: u64 = 1024 * 4;

    #[test]
    fn triggers_only_on_a_whole_quantum_of_credit() {
        let mut p = Pacer::new(RATE, Q);
        p.grant(Grant::Credit(Q - 4));
        assert!(!p.should_trigger(0));
        p.grant(Grant::Credit(Q));
        assert!(p.should_trigger(0));
        assert!(!p.should_trigger(0), "one cycle at a time");
        assert!(
            p.should_trigger(STALE_CYCLE_USEC),
            "a lost cycle is given up"
        );
        assert_eq!(p.on_cycle(Q), Q);
        assert!(!p.should_trigger(0));
    }

    #[test]
    fn disconnected_it_runs_at_real_time_for_hours() {
        // Simulated: a 5 ms tick for 3 hours, 1024-frame cycles.
        let mut p = Pacer::new(RATE, Q);
        let mut consumed = 0u64;
        let ticks = 3 * 3600 * 200;
        for _ in 0..ticks {
            p.grant(Grant::Elapsed(RATE / 200));
            if p.should_trigger(0) {
                consumed += p.on_cycle(Q);
            }
        }
        let elapsed = RATE * 3 * 3600;
        assert!(elapsed - consumed <= Q, "{elapsed} vs {consumed}");
        assert_eq!(p.dropped, 0);
    }

    #[test]
    fn a_stall_is_not_paid_back_in_a_burst() {
        let mut p = Pacer::new(RATE, Q);
        p.grant(Grant::Elapsed(RATE * 10));
        let mut cycles = 0;
        while p.should_trigger(0) {
            p.on_cycle(Q);
            cycles += 1;
        }
        assert!(cycles * Q <= RATE / 5 + Q, "{cycles} cycles");
    }

    #[test]
    fn follower_cycles_beyond_the_grant_are_dropped_and_counted() {
        let mut p = Pacer::new(RATE, Q);
        p.grant(Grant::Credit(Q / 2));
        assert_eq!(p.on_cycle(Q), Q / 2);
        assert_eq!(p.dropped, Q / 2);
        assert_eq!(p.on_cycle(Q), 0);
        assert_eq!(p.dropped, Q + Q / 2);
    }
}

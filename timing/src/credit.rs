/// Flow-control ledger on the guest side. The host grants a cumulative limit;
/// the guest may send up to it and no further.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    limit: u64,
    sent: u64,
}

impl Credit {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a grant. Limits only grow: a stale or repeated grant changes
    /// nothing.
    pub fn grant(&mut self, limit_bytes: u64) {
        self.limit = self.limit.max(limit_bytes);
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.sent)
    }

    /// Records bytes sent; more than available is a caller bug, and is
    /// clamped so the ledger stays consistent.
    pub fn spend(&mut self, bytes: u64) {
        self.sent = self
            .sent
            .saturating_add(bytes)
            .min(self.limit.max(self.sent));
    }

    /// Takes back `bytes` of what was sent (a rewind withdrew them from the
    /// host, which counts them as never received): they may be sent again.
    pub fn refund(&mut self, bytes: u64) {
        self.sent = self.sent.saturating_sub(bytes);
    }

    /// Total bytes sent since the handshake.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_cumulative_and_monotonic() {
        let mut c = Credit::new();
        assert_eq!(c.available(), 0);
        c.grant(1000);
        c.spend(600);
        assert_eq!(c.available(), 400);
        c.grant(900); // stale
        assert_eq!(c.available(), 400);
        c.grant(1600);
        assert_eq!(c.available(), 1000);
        c.spend(1000);
        assert_eq!((c.available(), c.sent()), (0, 1600));
    }

    #[test]
    fn overspending_is_clamped() {
        let mut c = Credit::new();
        c.grant(100);
        c.spend(250);
        assert_eq!((c.available(), c.sent()), (0, 100));
    }
}

//! Admission at accept time: which connections may take a slot at all.
//!
//! A peer the policy denies is refused by the acceptor before a byte is read
//! from it and never holds a slot. An allowed peer's connection holds a
//! *handshake slot* from accept until its session leaves the handshake (a
//! stream is being opened, or it closed): at most
//! [`HANDSHAKE_PER_IDENTITY`] per uid, IP address or CID, and
//! [`HANDSHAKE_TOTAL`] in all, so silent connections from one identity
//! cannot keep another identity out. An identity's entry is removed with its
//! last slot: no per-identity state outlives its connections.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::policy::IdentityKey;

/// Connections of one identity that may be in their handshake at once.
pub const HANDSHAKE_PER_IDENTITY: usize = 16;
/// Connections of all identities that may be in their handshake at once.
pub const HANDSHAKE_TOTAL: usize = 32;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_identity: HashMap<IdentityKey, usize>,
}

/// The handshake slots of the whole daemon, shared by every acceptor.
#[derive(Debug, Clone)]
pub struct HandshakeSlots {
    counts: Arc<Mutex<Counts>>,
    per_identity: usize,
    total: usize,
}

impl Default for HandshakeSlots {
    fn default() -> Self {
        HandshakeSlots::new(HANDSHAKE_PER_IDENTITY, HANDSHAKE_TOTAL)
    }
}

impl HandshakeSlots {
    pub fn new(per_identity: usize, total: usize) -> Self {
        HandshakeSlots {
            counts: Arc::default(),
            per_identity,
            total,
        }
    }

    /// A slot for a connection from `key`, or why there is none.
    pub fn acquire(&self, key: IdentityKey) -> Result<HandshakeSlot, String> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.total {
            return Err(format!(
                "{} connections are in their handshake already (the maximum)",
                self.total
            ));
        }
        let mine = counts.by_identity.get(&key).copied().unwrap_or(0);
        if mine >= self.per_identity {
            return Err(format!(
                "{mine} connections from this peer are in their handshake already (the maximum)"
            ));
        }
        counts.total += 1;
        counts.by_identity.insert(key, mine + 1);
        Ok(HandshakeSlot {
            counts: Arc::clone(&self.counts),
            key,
        })
    }

    /// Slots held now: in all, and how many identities hold any.
    pub fn held(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        (counts.total, counts.by_identity.len())
    }
}

/// One connection's handshake slot; dropping it frees the slot.
#[derive(Debug)]
pub struct HandshakeSlot {
    counts: Arc<Mutex<Counts>>,
    key: IdentityKey,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_identity.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_identity.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_identity_cannot_take_every_slot() {
        let slots = HandshakeSlots::new(2, 3);
        let a = IdentityKey::Uid(1000);
        let b = IdentityKey::Uid(1001);
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).unwrap_err().contains("from this peer"));
        let b1 = slots.acquire(b).unwrap();
        assert!(slots.acquire(b).unwrap_err().contains("3 connections"));
        drop(a1);
        let _a3 = slots.acquire(a).unwrap();
        drop(b1);
        assert_eq!(slots.held(), (2, 1), "b's entry went with its last slot");
    }

    #[test]
    fn nothing_is_left_once_every_slot_is_dropped() {
        let slots = HandshakeSlots::default();
        let held: Vec<_> = (0..HANDSHAKE_TOTAL as u32)
            .map(|cid| slots.acquire(IdentityKey::Cid(cid)).unwrap())
            .collect();
        assert!(slots.acquire(IdentityKey::Cid(999)).is_err());
        drop(held);
        assert_eq!(slots.held(), (0, 0));
    }
}

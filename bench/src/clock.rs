//! One epoch for every timestamp of a run, so the player's predictions and
//! the recorder's arrivals can be subtracted.

use std::{sync::OnceLock, time::Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Seconds from the run's epoch (the first call) to `t`; negative before it.
pub fn secs(t: Instant) -> f64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    if t >= epoch {
        (t - epoch).as_secs_f64()
    } else {
        -(epoch - t).as_secs_f64()
    }
}

/// [`secs`] of now.
pub fn now() -> f64 {
    secs(Instant::now())
}

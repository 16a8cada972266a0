//! The timing core of secure-tunnel: pure arithmetic with an injected clock.
//!
//! Nothing here reads a clock, sleeps or does I/O. Every function takes the
//! current time as an argument (microseconds on the caller's monotonic clock),
//! so hours of virtual time can be simulated in a unit test.
//!
//! - [`ClockMapper`] places host timestamps on the guest's clock from ping
//!   round trips: the two clocks share no epoch.
//! - [`PlaybackEstimator`] turns the host's clock reports into "bytes heard
//!   by now", and so into the sink latency.
//! - [`Credit`] is the flow-control ledger: the guest renders only what the
//!   host has granted, so it follows the host's clock.
//! - [`UnderrunSlip`] measures how far a host underrun set playback back, so
//!   the guest can skip as much and its applications' clocks stay true.
#![forbid(unsafe_code)]

mod clock_map;
mod credit;
mod playback;
mod slip;

pub use clock_map::ClockMapper;
pub use credit::Credit;
pub use playback::PlaybackEstimator;
pub use slip::UnderrunSlip;

/// Microseconds in one second.
pub const USEC_PER_SEC: u64 = 1_000_000;

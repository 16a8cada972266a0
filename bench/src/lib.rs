//! Benchmarks of issue 3, side by side with PulseAudio's own tunnels: each
//! binary in `src/bin/` prints a table. They are not tests; see
//! `docs/benchmarks.md` for what they measure and the last results.

#![forbid(unsafe_code)]

pub mod clock;
pub mod fleet;
pub mod hog;
pub mod impulses;
pub mod logs;
pub mod opts;
pub mod pa;
pub mod probe;
pub mod procstat;
pub mod setups;
pub mod stats;

pub use setups::{Loaded, Row, World};

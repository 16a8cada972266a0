//! `module-secure-tunnel-source`: a PulseAudio source module that records
//! from the host's pinned microphone through `host-playd` (default deny:
//! only what the host's policy allows or an administrator grants), with the
//! source latency the host's capture clock implies.
//!
//! What the IO thread decides lives in `secure-tunnel-guest`
//! (`source::SourceEngine`); this crate is only the thin FFI layer in
//! `pulse`, the one place `unsafe` is allowed.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // The FFI layer; every block carries a `// SAFETY:`.
mod pulse;

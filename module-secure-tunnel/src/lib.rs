//! `module-secure-tunnel-sink`: a PulseAudio 16.1 sink module that forwards
//! what it plays to `host-playd` on the host, over the narrow secure-tunnel
//! protocol, and reports the latency the host's clock implies.
//!
//! Everything the IO thread decides (configuration, engine, session,
//! transport) lives in the `secure-tunnel-guest` crate, shared with the
//! PipeWire front end; this crate is only the thin FFI layer in `pulse`
//! (entry points, sink, IO thread), the one place `unsafe` is allowed.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // The FFI layer; every block carries a `// SAFETY:`.
mod pulse;

//! `module-secure-tunnel-sink`: a PulseAudio 16.1 sink module that forwards
//! what it plays to `host-playd` on the host, over the narrow secure-tunnel
//! protocol, and reports the latency the host's clock implies.
//!
//! - [`config`]: the module's arguments, validated (pure);
//! - [`engine`]: what the IO thread decides: rendering, flow control,
//!   latency, reconnection (safe Rust, no PulseAudio calls);
//! - [`session`]: one connection's protocol and timing state (pure);
//! - [`transport`]: sockets, connecting and the handshake;
//! - `pulse`: the one thin FFI layer (entry points, sink, IO thread).

pub mod config;
pub mod engine;
mod pulse;
pub mod session;
pub mod transport;

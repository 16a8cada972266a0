//! The guest side of secure-tunnel, free of any sound server: everything a
//! front end's IO thread decides, in safe Rust with the time injected. Both
//! front ends are thin layers over it: the PulseAudio module
//! (`module-secure-tunnel-sink`) and the PipeWire service
//! (`secure-tunnel-pipewire`).
//!
//! - [`capture`]: one capture (microphone) connection's protocol, credit
//!   and latency state (pure);
//! - [`config`]: the tunnel's settings, validated (pure);
//! - [`engine`]: rendering, flow control, latency, reconnection; a front end
//!   calls it with the current time and moves audio in and out;
//! - [`session`]: one connection's protocol and timing state (pure);
//! - [`source`]: the capture source's IO-thread logic (connection, what to
//!   post, latency);
//! - [`transport`]: sockets, connecting (on a helper thread) and the
//!   handshake.
#![forbid(unsafe_code)]

pub mod capture;
pub mod config;
pub mod engine;
pub mod session;
pub mod source;
pub mod transport;

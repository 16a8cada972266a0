//! See Cargo.toml: the module's safe modules, included from its source tree.
#![allow(dead_code)]

#[path = "../../../module-secure-tunnel/src/config.rs"]
pub mod config;
#[path = "../../../module-secure-tunnel/src/engine.rs"]
pub mod engine;
#[path = "../../../module-secure-tunnel/src/session.rs"]
pub mod session;
#[path = "../../../module-secure-tunnel/src/transport.rs"]
pub mod transport;

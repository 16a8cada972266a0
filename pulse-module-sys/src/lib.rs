//! Raw FFI bindings to PulseAudio's internal `pulsecore` API, generated at
//! build time from the headers of the installed PulseAudio version, and
//! [`glue`]: the few safe wrappers every module of this project needs
//! (argument parsing, PulseAudio's log, no unwinding across FFI, sample
//! specifications).
//!
//! Nothing in the bindings is safe to call directly; each module crate wraps
//! what it uses in one thin layer with `// SAFETY:` comments.

#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn,
    unnecessary_transmutes,
    improper_ctypes
)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}
pub use bindings::*;

pub mod glue;

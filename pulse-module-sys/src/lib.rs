//! Raw FFI bindings to PulseAudio's internal `pulsecore` API, generated at
//! build time from the headers of the installed PulseAudio version.
//!
//! Nothing here is safe to call directly; the module crate wraps what it uses
//! in one thin layer with `// SAFETY:` comments.
#![allow(
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

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

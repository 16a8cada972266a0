//! What other crates take from `secure-tunnel-pipewire`: its command line
//! (the man page generator, `man/`, renders secure-tunnel-pipewire(1) from
//! it, so a flag added here appears in the page).
#![forbid(unsafe_code)]

pub mod args;

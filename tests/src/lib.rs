//! Harness for the end-to-end tests: private PulseAudio daemons, the real
//! module and the real host-playd, audio played and recorded through them.
//!
//! Every process is owned by a guard that kills it on drop, and every wait is
//! bounded, so a broken module or daemon fails a test instead of hanging it.

#![forbid(unsafe_code)]

mod binaries;
mod error;
pub mod heard;
pub mod latency;
mod legit;
pub mod mic;
pub mod netns;
mod pactl;
pub mod patests;
mod pipewire;
mod playd;
mod process;
pub mod proctree;
mod pulse;
mod record;
pub mod robust;
pub mod signal;
mod stack;
mod tempdir;
pub mod vm;
pub mod wire;

pub use binaries::{
    host_playd, module_library, pipewire_service, pulse_module_dir, source_module_library,
    target_dir, workspace_root,
};
pub use error::HarnessError;
pub use legit::{LegitGuest, LegitReport};
pub use pactl::{parse_sinks, sink_input_count, SinkInfo};
pub use pipewire::{native_player, PipeWireStack, TunnelService};
pub use playd::HostPlayd;
pub use pulse::{
    guest_daemon, host_daemon, PulseDaemon, GUEST_SINK, HOST_SINK, MODULE_NAME, SOURCE_MODULE_NAME,
};
pub use record::{Player, Recorder, Recording};
pub use stack::{find_sink, TunnelStack};
pub use tempdir::TestDir;

/// Sample format every test uses: s16le, 2 channels, 48 kHz.
pub const RATE: u32 = 48_000;
/// Channels of [`RATE`]'s format.
pub const CHANNELS: usize = 2;
/// Bytes per frame of s16le stereo.
pub const FRAME_BYTES: usize = 2 * CHANNELS;

//! The whole chain most tests need: host PulseAudio, host-playd, guest
//! PulseAudio with the tunnel sink loaded.

use std::path::PathBuf;

use crate::{
    guest_daemon, host_daemon, pactl::parse_sinks, HarnessError, HostPlayd, PulseDaemon, SinkInfo,
    GUEST_SINK,
};

/// Host, daemon and guest, torn down guest first.
#[derive(Debug)]
pub struct TunnelStack {
    // Drop order: the guest's module disconnects before host-playd goes, and
    // host-playd's stream closes before the host daemon goes.
    /// The guest PulseAudio with [`GUEST_SINK`].
    pub guest: PulseDaemon,
    /// host-playd.
    pub playd: HostPlayd,
    /// The host PulseAudio with [`crate::HOST_SINK`].
    pub host: PulseDaemon,
    /// Index of the tunnel module in the guest.
    pub module_index: u32,
    /// host-playd's socket.
    pub socket: PathBuf,
}

impl TunnelStack {
    /// Starts everything; `module_args` are appended to the module's
    /// `server=... sink_name=secure_tunnel`.
    pub fn start(module_args: &str) -> Result<Self, HarnessError> {
        Self::start_with(&[], module_args)
    }

    /// [`TunnelStack::start`] with extra host-playd arguments.
    pub fn start_with(playd_args: &[&str], module_args: &str) -> Result<Self, HarnessError> {
        let host = host_daemon()?;
        let socket = host.dir().join("playd.sock");
        let playd = HostPlayd::start_with(&socket, Some(&host), playd_args)?;
        let guest = guest_daemon()?;
        let args = format!(
            "server=unix:{} sink_name={GUEST_SINK} {module_args}",
            socket.display()
        );
        let module_index = guest
            .load_module(crate::pulse::MODULE_NAME, &args)
            .map_err(|stderr| HarnessError::Check {
                what: format!("pactl load-module {} {args}", crate::pulse::MODULE_NAME),
                detail: format!("{stderr}\n{}\n{}", guest.log_tail(), playd.log_tail()),
            })?;
        Ok(Self {
            guest,
            playd,
            host,
            module_index,
            socket,
        })
    }

    /// The guest's tunnel sink as `pactl list sinks` shows it now.
    pub fn tunnel_sink(&self) -> Result<SinkInfo, HarnessError> {
        find_sink(&self.guest, GUEST_SINK)
    }

    /// All three logs' tails, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.guest.log_tail(),
            self.playd.log_tail(),
            self.host.log_tail()
        )
    }
}

/// The sink called `name` in `daemon`'s `pactl list sinks`.
pub fn find_sink(daemon: &PulseDaemon, name: &str) -> Result<SinkInfo, HarnessError> {
    let text = daemon.pactl_ok(&["list", "sinks"])?;
    parse_sinks(&text)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| HarnessError::Check {
            what: format!("finding sink {name} in `pactl list sinks`"),
            detail: format!("not listed:\n{text}\n{}", daemon.log_tail()),
        })
}

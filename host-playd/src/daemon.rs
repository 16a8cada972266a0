//! Wiring, in the order the sandbox needs: bind the listeners (or take
//! systemd's), connect to the audio server, enter the sandbox, then start
//! the acceptors and run the engine; when asked to stop, say goodbye and
//! clean up.
#![forbid(unsafe_code)]

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::admission::HandshakeSlots;
use crate::backend::null::NullBackend;
use crate::backend::pulse::PulseConfig;
use crate::backend::remote::RemoteBackend;
use crate::backend::{AudioBackend, BackendError};
use crate::clock::HostClock;
use crate::connection::Counters;
use crate::engine::{self, Command, Engine, EngineConfig};
use crate::io::{Acceptance, IoChannel};
use crate::listen::{BindError, ListenAddr, Listener};
use crate::player::{self, PlayerConfig, PlayerLimits};
use crate::policy::{Matcher, Policy, DEFAULT_MIN_LATENCY_USEC};
use crate::sandbox::{self, ResourceLimits, Role, SandboxConfig, SandboxError, SandboxMode};

/// Default RLIMIT_DATA in MiB.
pub use crate::sandbox::DEFAULT_MEMORY_MB;

/// Connections beyond `max_clients` that may be in their handshake at once.
pub const EXTRA_CONNECTIONS: usize = 16;
/// How long shutdown waits for goodbyes to be written.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Which audio output to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The host's PulseAudio.
    Pulse(PulseConfig),
    /// The null test backend, its clock skewed by `skew_ppm`.
    Null { skew_ppm: i32 },
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub listen: Vec<ListenAddr>,
    /// The control socket (`--control`), if any.
    pub control: Option<PathBuf>,
    pub backend: BackendChoice,
    pub max_clients: usize,
    pub handshake_timeout: Duration,
    /// A streaming guest silent for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Who may play, and how.
    pub policy: Arc<Policy>,
    pub sandbox: SandboxSettings,
}

/// The sandbox as configured; the rest is derived from the other options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    /// `None`: `nobody` when started as root.
    pub user: Option<String>,
    /// Extra read-only paths (beyond what PulseAudio needs).
    pub read_only: Vec<PathBuf>,
    pub memory_mb: u64,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            mode: SandboxMode::Require,
            user: None,
            read_only: Vec::new(),
            memory_mb: DEFAULT_MEMORY_MB,
        }
    }
}

/// Why the daemon could not start or stopped early.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("no listen address given and no socket passed by systemd")]
    NoListener,
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot start a thread or socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the engine thread stopped unexpectedly")]
    EngineDied,
    #[error("cannot enter the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("cannot start the player process: {0}")]
    PlayerStart(std::io::Error),
    #[error("the player process failed: {0}")]
    PlayerFailed(String),
}

/// A daemon with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    listeners: Vec<Listener>,
    /// The control socket, if `--control` was given.
    control: Option<Listener>,
    /// Set by a SIGUSR1 handler: log per-client statistics.
    stats_request: Option<Arc<AtomicBool>>,
    /// Niceness for the player process (the audio path).
    player_nice: Option<i32>,
    /// The binary re-run as the player.
    player_exe: PathBuf,
}

impl Daemon {
    /// Binds every listen address; nothing is accepted until [`Daemon::run`].
    pub fn bind(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        Daemon::bind_with(config, Vec::new())
    }

    /// Like [`Daemon::bind`], also serving sockets passed by systemd.
    pub fn bind_with(config: DaemonConfig, inherited: Vec<OwnedFd>) -> Result<Daemon, DaemonError> {
        let mut listeners = inherited
            .into_iter()
            .map(Listener::from_fd)
            .collect::<Result<Vec<_>, _>>()?;
        for addr in &config.listen {
            listeners.push(Listener::bind(addr)?);
        }
        if listeners.is_empty() {
            return Err(DaemonError::NoListener);
        }
        let control = match &config.control {
            Some(path) => Some(Listener::bind_private(path)?),
            None => None,
        };
        if !config.policy.defaults.tcp
            && config
                .policy
                .rules
                .iter()
                .all(|r| !matches!(r.matcher, Matcher::Tcp(_)))
            && listeners.iter().any(|l| l.name().starts_with("tcp:"))
        {
            log::warn!(
                "listening on TCP, but no rule allows any TCP peer: every TCP guest will be \
                 refused (add a [[rule]] with tcp = \"ADDR/PREFIX\" to --config)"
            );
        }
        Ok(Daemon {
            config,
            listeners,
            control,
            stats_request: None,
            player_nice: None,
            player_exe: PathBuf::from(player::spawn::SELF_EXE),
        })
    }

    /// Logs every client's statistics whenever `flag` is found set (main
    /// sets it on SIGUSR1); see [`crate::stats`].
    #[must_use]
    pub fn with_stats_request(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stats_request = Some(flag);
        self
    }

    /// Runs the player process at niceness `nice` (main passes `--nice`).
    #[must_use]
    pub fn with_player_nice(mut self, nice: Option<i32>) -> Self {
        self.player_nice = nice;
        self
    }

    /// The bound addresses, as they appear in logs.
    pub fn listen_names(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name().to_owned()).collect()
    }

    /// The guest-facing process's sandbox for this configuration.
    pub fn sandbox_config(&self) -> SandboxConfig {
        sandbox_config(&self.config, self.listeners.len())
    }

    /// What the player process is started with (`None`: no player, the
    /// null backend runs in-process).
    pub fn player_config(&self, clock: HostClock) -> Option<PlayerConfig> {
        player_config(&self.config, clock, self.player_nice)
    }

    /// Connects to the audio server, enters the sandbox, then serves guests
    /// until `stop` becomes true; then says goodbye to every guest and
    /// removes the unix socket files it may still remove.
    ///
    /// The calling thread becomes the engine thread (libpulse objects never
    /// leave the thread that made them), and every other thread is started
    /// after the sandbox, so all of them inherit it.
    pub fn run(mut self, stop: &AtomicBool) -> Result<(), DaemonError> {
        let clock = HostClock::new();
        let (handle, commands, wake) = engine::channel()?;
        let mut backend: Box<dyn AudioBackend> = match &self.config.backend {
            BackendChoice::Pulse(pulse) => {
                let config = pulse_player_config(&self.config, pulse, clock, self.player_nice);
                let spawned = player::spawn::spawn(&self.player_exe, &config, false)
                    .map_err(DaemonError::PlayerStart)?;
                log::info!("player process {} started", spawned.child.id());
                // The player inherited the starting niceness (a unit's
                // Nice=); from here on this process parses guest bytes.
                crate::sys::return_to_base_nice();
                Box::new(RemoteBackend::new(spawned.sock, clock)?)
            }
            BackendChoice::Null { skew_ppm } => Box::new(NullBackend::new(clock, *skew_ppm)),
        };
        // The player connects to the sound server before it enters its
        // own sandbox; this process only waits to hear that it did.
        if !backend.settle(SETTLE_TIMEOUT + Duration::from_secs(1), &wake) {
            match backend.failure() {
                Some(reason) => return Err(DaemonError::PlayerFailed(reason)),
                None => {
                    log::warn!("not connected to the audio server yet; the player keeps retrying")
                }
            }
        }
        // Everything the guest-facing loop needs is made before the
        // sandbox: it can make no socket afterwards.
        let io_channel = IoChannel::new()?;
        let accept_sockets = self
            .listeners
            .iter()
            .map(Listener::accept_socket)
            .collect::<Result<Vec<_>, _>>()?;
        let control = match &self.control {
            Some(listener) => Some(listener.unix_listener()?),
            None => None,
        };
        let owner = nix::unistd::getuid().as_raw();
        let sandbox = self.sandbox_config();
        let sandboxed = sandbox.mode != SandboxMode::Off;
        sandbox::apply(&sandbox)?;

        let engine_config = EngineConfig {
            max_clients: self.config.max_clients,
            handshake_timeout: self.config.handshake_timeout,
            idle_timeout: self.config.idle_timeout,
            policy: Arc::clone(&self.config.policy),
            capture_source: capture_source(&self.config),
        };
        let counters = Counters::default();
        let acceptance = Acceptance {
            engine: handle.clone(),
            clock,
            counters: counters.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            max_connections: self.config.max_clients + EXTRA_CONNECTIONS,
            policy: Arc::clone(&self.config.policy),
            slots: HandshakeSlots::default(),
        };
        crate::io::spawn(accept_sockets, io_channel, acceptance)?;
        for listener in &self.listeners {
            log::info!("listening on {}", listener.name());
        }
        if let (Some(socket), Some(listener)) = (control, &self.control) {
            crate::control::spawn(socket, handle.clone(), owner)?;
            log::info!("control socket on {} (mode 0600)", listener.name());
        }

        let engine_done = AtomicBool::new(false);
        let stats_request = self.stats_request.take();
        let failure = thread::scope(|scope| -> Result<Option<String>, DaemonError> {
            let watcher_handle = handle.clone();
            let done = &engine_done;
            thread::Builder::new()
                .name("shutdown".to_owned())
                .spawn_scoped(scope, move || {
                    while !stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(50));
                    }
                    if !done.load(Ordering::SeqCst) {
                        log::info!("shutting down");
                        let _ = watcher_handle.send(Command::Shutdown);
                    }
                })?;
            // Set even when the engine panics, so the watcher ends and the
            // scope can unwind.
            let _done = SetOnDrop(done);
            drop(handle);
            let mut engine = Engine::new(backend, clock, engine_config);
            if let Some(flag) = stats_request {
                engine = engine.with_stats_request(flag);
            }
            Ok(engine.run(commands, wake))
        })?;

        let deadline = Instant::now() + GOODBYE_GRACE;
        while counters.writers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        if sandboxed {
            for listener in self.listeners.iter_mut().chain(self.control.as_mut()) {
                if let Some(path) = listener.keep_file() {
                    log::info!(
                        "leaving {} in place: the sandbox may not remove it (the next start \
                         replaces it)",
                        path.display()
                    );
                }
            }
        }
        // Dropping the listeners removes their socket files.
        drop(self.listeners);
        drop(self.control);
        match failure {
            Some(reason) => Err(DaemonError::PlayerFailed(reason)),
            None => Ok(()),
        }
    }
}

/// The source capture guests record from, if the backend can record.
pub fn capture_source(config: &DaemonConfig) -> Option<String> {
    match &config.backend {
        BackendChoice::Pulse(pulse) => pulse.source.clone(),
        BackendChoice::Null { .. } => None,
    }
}

/// How long startup waits for the audio server before entering the sandbox.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The guest-facing process's sandbox for `config` with `listeners`
/// listening sockets: nothing to read, nothing to connect to.
pub fn sandbox_config(config: &DaemonConfig, listeners: usize) -> SandboxConfig {
    let settings = &config.sandbox;
    let max_connections = config.max_clients + EXTRA_CONNECTIONS;
    SandboxConfig {
        mode: settings.mode,
        role: Role::GuestFacing,
        user: settings.user.clone(),
        read_only: Vec::new(),
        connect_unix: Vec::new(),
        connect_tcp: Vec::new(),
        limits: ResourceLimits::for_connections(max_connections, listeners, settings.memory_mb),
    }
}

/// Descriptors the player may hold: stdio, its socket, libpulse's
/// connection, a config file or cookie being read, with room to spare.
pub const PLAYER_FILES: u64 = 32;

/// The player's configuration, when `config` plays through PulseAudio.
pub fn player_config(
    config: &DaemonConfig,
    clock: HostClock,
    nice: Option<i32>,
) -> Option<PlayerConfig> {
    match &config.backend {
        BackendChoice::Pulse(pulse) => Some(pulse_player_config(config, pulse, clock, nice)),
        BackendChoice::Null { .. } => None,
    }
}

/// The player's configuration for playing through `pulse`.
fn pulse_player_config(
    config: &DaemonConfig,
    pulse: &PulseConfig,
    clock: HostClock,
    nice: Option<i32>,
) -> PlayerConfig {
    PlayerConfig {
        pulse: pulse.clone(),
        epoch_monotonic_usec: clock.epoch_monotonic_usec().unwrap_or(0),
        nice,
        log_level: log::max_level().as_str().to_ascii_lowercase(),
        limits: player_limits(config),
        sandbox: player_sandbox_config(config, pulse),
    }
}

/// The player's own bounds: the loosest any rule of the policy allows.
pub fn player_limits(config: &DaemonConfig) -> PlayerLimits {
    let policy = &config.policy;
    let all_limits =
        std::iter::once(&policy.default_limits).chain(policy.rules.iter().map(|r| &r.limits));
    let mut min_latency_usec = u64::MAX;
    let mut max_latency_usec = 0u64;
    for limits in all_limits {
        min_latency_usec =
            min_latency_usec.min(limits.min_latency_usec.unwrap_or(DEFAULT_MIN_LATENCY_USEC));
        max_latency_usec = max_latency_usec.max(
            limits
                .max_latency_usec
                .unwrap_or(u64::from(secure_tunnel_protocol::MAX_TARGET_LATENCY_USEC)),
        );
    }
    PlayerLimits {
        // The engine's own cap, with room for streams it closed whose
        // Close the player has not read yet.
        max_streams: config.max_clients + EXTRA_CONNECTIONS,
        min_latency_usec,
        max_latency_usec,
    }
}

/// The player's sandbox: read what libpulse reads when it reconnects, and
/// connect only to the sound server.
pub fn player_sandbox_config(config: &DaemonConfig, pulse: &PulseConfig) -> SandboxConfig {
    let settings = &config.sandbox;
    let mut read_only = settings.read_only.clone();
    let mut connect_unix = Vec::new();
    let mut connect_tcp = Vec::new();
    // What libpulse reads when it reconnects: client.conf and a cookie.
    read_only.push(PathBuf::from("/etc/pulse"));
    if let Some(cookie) = std::env::var_os("PULSE_COOKIE") {
        read_only.push(PathBuf::from(cookie));
    }
    if let Some(config) = std::env::var_os("XDG_CONFIG_HOME") {
        read_only.push(PathBuf::from(config).join("pulse/cookie"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        read_only.push(PathBuf::from(&home).join(".config/pulse/cookie"));
        read_only.push(PathBuf::from(home).join(".pulse-cookie"));
    }
    let server = pulse
        .server
        .clone()
        .or_else(|| std::env::var("PULSE_SERVER").ok());
    match server {
        Some(server) => pulse_targets(&server, &mut connect_unix, &mut connect_tcp),
        None => {
            for var in ["PULSE_RUNTIME_PATH", "XDG_RUNTIME_DIR"] {
                if let Some(dir) = std::env::var_os(var) {
                    let dir = PathBuf::from(dir);
                    let native = if var == "XDG_RUNTIME_DIR" {
                        dir.join("pulse/native")
                    } else {
                        dir.join("native")
                    };
                    connect_unix.push(native);
                }
            }
            connect_unix.push(PathBuf::from("/run/pulse/native"));
        }
    }
    let role = if connect_tcp.is_empty() {
        Role::Player
    } else {
        Role::PlayerTcp
    };
    SandboxConfig {
        mode: settings.mode,
        role,
        user: settings.user.clone(),
        read_only,
        connect_unix,
        connect_tcp,
        limits: ResourceLimits {
            files: PLAYER_FILES,
            threads: 1,
            memory_bytes: settings.memory_mb.saturating_mul(1024 * 1024),
        },
    }
}

/// The unix paths and TCP ports of a PulseAudio server string
/// (`unix:/path`, `/path`, `tcp:host:port`, `host`, space-separated).
pub fn pulse_targets(server: &str, unix: &mut Vec<PathBuf>, tcp: &mut Vec<u16>) {
    for entry in server.split_whitespace() {
        // "{machine-id}unix:/path" restricts an entry to one machine.
        let entry = match entry.strip_prefix('{') {
            Some(rest) => rest.split_once('}').map_or(rest, |(_, e)| e),
            None => entry,
        };
        if let Some(path) = entry.strip_prefix("unix:") {
            unix.push(PathBuf::from(path));
        } else if entry.starts_with('/') {
            unix.push(PathBuf::from(entry));
        } else {
            let rest = ["tcp4:", "tcp6:", "tcp:"]
                .iter()
                .find_map(|p| entry.strip_prefix(p))
                .unwrap_or(entry);
            let port = rest
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(DEFAULT_PULSE_PORT);
            tcp.push(port);
        }
    }
}

/// PulseAudio's native protocol port.
pub const DEFAULT_PULSE_PORT: u16 = 4713;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_server_strings() {
        let (mut unix, mut tcp) = (Vec::new(), Vec::new());
        pulse_targets(
            "unix:/run/a {abc}unix:/run/b /run/c tcp:host:4000 tcp6:[::1] host",
            &mut unix,
            &mut tcp,
        );
        assert_eq!(
            unix,
            ["/run/a", "/run/b", "/run/c"].map(PathBuf::from).to_vec()
        );
        assert_eq!(tcp, vec![4000, 4713, 4713]);
    }
}

//! The command line, a public interface: spellings here are promised to users.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::backend::pulse::PulseConfig;
use crate::config::{self, ConfigError, FileConfig};
use crate::daemon::{BackendChoice, DaemonConfig, SandboxSettings};
use crate::listen::ListenAddr;
use crate::sandbox::{SandboxMode, DEFAULT_MEMORY_MB};

/// Default for --max-clients.
pub const DEFAULT_MAX_CLIENTS: u32 = 16;
/// Default for --handshake-timeout-ms.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5000;

/// Plays secure-tunnel guest audio through the host's PulseAudio.
///
/// Guests (the module-secure-tunnel sink in a VM) connect to one of the
/// --listen addresses; each gets its own playback stream on the host and a
/// clock report of what the host has played.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "host-playd",
    version,
    about,
    long_about,
    after_help = "Ask a running host-playd: host-playd ctl [--control PATH] \
                  status | grant-capture ID | revoke-capture ID (host-playd ctl --help)."
)]
pub struct Args {
    /// Where guests connect (repeatable, at least one): unix:PATH (the
    /// socket file is created mode 0666, a stale one is replaced, and it is
    /// removed on exit; guard it with its directory's permissions),
    /// tcp:HOST:PORT (IPv6 as tcp:[::1]:PORT), vsock:CID:PORT (CID a number
    /// or "any"). Sockets passed by systemd (LISTEN_FDS) are served too.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,

    /// PulseAudio server to play on, e.g. unix:/run/user/1000/pulse/native
    /// [default: $PULSE_SERVER, then the user's default server; never
    /// autospawned].
    #[arg(long, value_name = "SERVER")]
    pub pulse_server: Option<String>,

    /// Sink to play on [default: the server's default sink].
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,

    /// Audio output: pulse (the host's PulseAudio) or null (a TEST backend
    /// that discards audio at the nominal rate).
    #[arg(long, value_enum, default_value_t = BackendKind::Pulse)]
    pub backend: BackendKind,

    /// Null backend only: make its clock run N parts per million fast
    /// (negative: slow) [default: 0].
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-500_000..=500_000)
    )]
    pub null_skew_ppm: Option<i32>,

    /// Most guests playing at once; more are rejected with TooManyClients
    /// [default: 16, or the config file's limits.max_clients].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_clients: Option<u32>,

    /// Time a guest has to send its Hello before it is dropped
    /// [default: 5000].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub handshake_timeout_ms: Option<u64>,

    /// A playing guest that sends nothing (no audio, no ping) for this long
    /// is closed [default: never].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub idle_timeout_ms: Option<u64>,

    /// Configuration file (TOML): limits, sandbox, and which guests may
    /// play with what limits. Command-line options win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// User to run as once the sockets are open and PulseAudio is connected
    /// [default: nobody when started as root].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// require: refuse to start if a sandbox step is unavailable on this
    /// kernel; best-effort: log and go on without it; off: no sandbox at
    /// all, not even the user change (debugging only) [default: require].
    #[arg(long, value_enum, value_name = "MODE")]
    pub sandbox: Option<SandboxMode>,

    /// Enter each process's sandbox (the player's, then the guest-facing
    /// one's), try what it must forbid (read /etc/passwd, write a file, run
    /// /bin/true, open netlink, packet, unix or IP sockets, send UDP, stat
    /// /etc/shadow, connect elsewhere, become root), report each, and exit
    /// non-zero if any succeeded; what the kernel cannot deny is reported as
    /// LIMIT.
    #[arg(long)]
    pub check_sandbox: bool,

    /// Check the options and the --config file without starting: print a
    /// summary and exit 0, or print the error (naming the file, the line and
    /// the field) and exit 1. Nothing is bound or connected.
    #[arg(long)]
    pub check_config: bool,

    /// Niceness of the player process, which plays the audio (PulseAudio's
    /// own daemon runs at -11); the process reading guest input stays at the
    /// niceness host-playd started with, never below 0. Raising it above the
    /// inherited value needs CAP_SYS_NICE (root) or RLIMIT_NICE; when
    /// refused, host-playd logs it and runs as it is. No real-time class
    /// [default: -11].
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-20..=19)
    )]
    pub nice: Option<i32>,

    /// The one host source capture guests record from (a microphone), as
    /// PulseAudio names it (`pactl list short sources`). Guests record only
    /// if their rule's `capture` is "allow", or "grant" and granted with
    /// `host-playd ctl grant-capture ID` [default: the config file's
    /// [capture] source; none: no guest records].
    #[arg(long, value_name = "NAME")]
    pub capture_source: Option<String>,

    /// Let the capture source be a sink's monitor (it then records the
    /// host's own sound output, which is refused otherwise) [default: the
    /// config file's [capture] allow_monitor, else no].
    #[arg(long)]
    pub capture_allow_monitor: bool,

    /// Control socket for `host-playd ctl` (status, grant-capture,
    /// revoke-capture): created mode 0600, answering only root and the
    /// user host-playd started as [default: none].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Log verbosity (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

/// Where `host-playd ctl` looks when given no `--control`: the packaged
/// service's control socket.
pub const DEFAULT_CONTROL: &str = "/run/host-playd/control";

/// `host-playd ctl`: asks a running host-playd over its control socket.
///
/// The answer is printed; the exit status is 0 if the request succeeded,
/// 1 if host-playd refused it or could not be reached.
#[derive(Debug, Clone, Parser)]
#[command(name = "host-playd ctl", version, about, long_about)]
pub struct CtlArgs {
    /// The control socket (host-playd's --control) [default:
    /// /run/host-playd/control].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    #[command(subcommand)]
    pub request: CtlRequest,
}

/// What `host-playd ctl` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum CtlRequest {
    /// One line per connected client: id, peer, state, bytes, underruns,
    /// latency, rule and capture state.
    Status,
    /// Let capture client ID record now (its rule says capture = "grant");
    /// lasts until revoked or the client disconnects.
    GrantCapture {
        /// The client's number, as `status` and the log show it.
        id: u64,
    },
    /// Stop capture client ID recording: its recording stream is closed at
    /// once.
    RevokeCapture {
        /// The client's number, as `status` and the log show it.
        id: u64,
    },
}

impl CtlArgs {
    /// The control socket to ask.
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL))
    }

    /// The request to send.
    pub fn request(&self) -> crate::control::ControlRequest {
        use crate::control::ControlRequest;
        match self.request {
            CtlRequest::Status => ControlRequest::Status,
            CtlRequest::GrantCapture { id } => ControlRequest::GrantCapture(id),
            CtlRequest::RevokeCapture { id } => ControlRequest::RevokeCapture(id),
        }
    }
}

/// Choices for `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Pulse,
    Null,
}

/// Choices for `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Options that contradict each other, or a bad configuration file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("--null-skew-ppm only applies to --backend null")]
    SkewWithoutNull,
    #[error("--{0} only applies to --backend pulse")]
    PulseOptionWithNull(&'static str),
    #[error("{0}")]
    User(String),
}

impl Args {
    /// The daemon configuration these arguments ask for, reading the
    /// `--config` file if there is one.
    pub fn to_config(&self) -> Result<DaemonConfig, ArgsError> {
        let file = match &self.config {
            Some(path) => config::load(path)?,
            None => FileConfig::default(),
        };
        self.to_config_with(file)
    }

    /// The daemon configuration from these arguments over `file`'s.
    pub fn to_config_with(&self, file: FileConfig) -> Result<DaemonConfig, ArgsError> {
        let backend = match self.backend {
            BackendKind::Pulse => {
                if self.null_skew_ppm.is_some() {
                    return Err(ArgsError::SkewWithoutNull);
                }
                BackendChoice::Pulse(PulseConfig {
                    server: self.pulse_server.clone(),
                    sink: self.sink.clone(),
                    source: self
                        .capture_source
                        .clone()
                        .or_else(|| file.capture_source.clone()),
                    allow_monitor: self.capture_allow_monitor
                        || file.capture_allow_monitor.unwrap_or(false),
                })
            }
            BackendKind::Null => {
                if self.pulse_server.is_some() {
                    return Err(ArgsError::PulseOptionWithNull("pulse-server"));
                }
                if self.sink.is_some() {
                    return Err(ArgsError::PulseOptionWithNull("sink"));
                }
                if self.capture_source.is_some() {
                    return Err(ArgsError::PulseOptionWithNull("capture-source"));
                }
                BackendChoice::Null {
                    skew_ppm: self.null_skew_ppm.unwrap_or(0),
                }
            }
        };
        let max_clients = self
            .max_clients
            .map(|n| n as usize)
            .or(file.max_clients)
            .unwrap_or(DEFAULT_MAX_CLIENTS as usize);
        let handshake_timeout = self
            .handshake_timeout_ms
            .map(Duration::from_millis)
            .or(file.handshake_timeout)
            .unwrap_or(Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS));
        let idle_timeout = self
            .idle_timeout_ms
            .map(Duration::from_millis)
            .or(file.idle_timeout);
        Ok(DaemonConfig {
            control: self.control.clone(),
            listen: self.listen.clone(),
            backend,
            max_clients,
            handshake_timeout,
            idle_timeout,
            policy: Arc::new(file.policy),
            sandbox: SandboxSettings {
                mode: self
                    .sandbox
                    .or(file.sandbox_mode)
                    .unwrap_or(SandboxMode::Require),
                user: self.user.clone().or(file.user),
                read_only: file.read_only,
                memory_mb: file.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
            },
        })
    }
}

impl Args {
    /// `--check-config`: everything [`Args::to_config`] checks, plus that the
    /// sandbox's user exists; on success a summary of what would run.
    pub fn check_config(&self) -> Result<String, ArgsError> {
        let config = self.to_config()?;
        let source = match &self.config {
            Some(path) => path.display().to_string(),
            None => "(no --config file)".to_owned(),
        };
        let user = match (&config.sandbox.user, config.sandbox.mode) {
            (_, SandboxMode::Off) => "unchanged (--sandbox off)".to_owned(),
            (Some(name), _) => {
                let found = match name.parse::<u32>() {
                    Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
                    Err(_) => nix::unistd::User::from_name(name),
                };
                let from = if self.user.is_some() {
                    "--user".to_owned()
                } else {
                    format!("{source}: field `user` in [sandbox]")
                };
                match found {
                    Ok(Some(u)) if u.uid.is_root() => {
                        return Err(ArgsError::User(format!(
                            "{from}: user {name:?} is root; pick an unprivileged user"
                        )))
                    }
                    Ok(Some(u)) => format!("{} (uid {})", u.name, u.uid),
                    Ok(None) => {
                        return Err(ArgsError::User(format!("{from}: no such user {name:?}")))
                    }
                    Err(e) => {
                        return Err(ArgsError::User(format!(
                            "{from}: cannot look up user {name:?}: {e}"
                        )))
                    }
                }
            }
            (None, _) => format!(
                "{} if started as root, else unchanged",
                crate::sandbox::DEFAULT_USER
            ),
        };
        let listen = if config.listen.is_empty() {
            "sockets passed by systemd (no --listen)".to_owned()
        } else {
            config
                .listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let backend = match &config.backend {
            BackendChoice::Pulse(p) => format!(
                "pulse (server {}, sink {}, capture source {}{})",
                p.server.as_deref().unwrap_or("default"),
                p.sink.as_deref().unwrap_or("default"),
                p.source.as_deref().unwrap_or("none"),
                if p.allow_monitor {
                    ", monitors allowed"
                } else {
                    ""
                }
            ),
            BackendChoice::Null { skew_ppm } => format!("null (TEST ONLY, skew {skew_ppm} ppm)"),
        };
        let verdict = |allowed: bool| if allowed { "allow" } else { "deny" };
        let policy = &config.policy;
        let rules = policy
            .rules
            .iter()
            .map(|r| {
                format!(
                    "{:?} ({}: {}, capture {})",
                    r.name,
                    r.matcher,
                    verdict(r.allow),
                    r.limits.capture.name()
                )
            })
            .collect::<Vec<_>>();
        let control = config
            .control
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string());
        let idle = config
            .idle_timeout
            .map_or_else(|| "never".to_owned(), |d| format!("{} ms", d.as_millis()));
        Ok(format!(
            "{source}: OK\n\
             listen: {listen}\n\
             backend: {backend}\n\
             limits: max_clients {}, handshake_timeout_ms {}, idle_timeout {idle}, memory_mb {}\n\
             sandbox: {}, user {user}\n\
             defaults: unix {}, vsock {}, tcp {}, capture {}\n\
             rules: {}\n\
             control: {control}",
            config.max_clients,
            config.handshake_timeout.as_millis(),
            config.sandbox.memory_mb,
            config.sandbox.mode,
            verdict(policy.defaults.unix),
            verdict(policy.defaults.vsock),
            verdict(policy.defaults.tcp),
            policy.default_limits.capture.name(),
            if rules.is_empty() {
                "none".to_owned()
            } else {
                rules.join(", ")
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("host-playd").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let args = parse(&["--listen", "unix:/tmp/s"]).unwrap();
        let config = args.to_config().unwrap();
        assert_eq!(config.listen, vec![ListenAddr::Unix("/tmp/s".into())]);
        assert_eq!(config.backend, BackendChoice::Pulse(PulseConfig::default()));
        assert_eq!(config.max_clients, 16);
        assert_eq!(config.handshake_timeout, Duration::from_secs(5));
        assert_eq!(args.log_level, LogLevel::Info);
        assert_eq!(config.idle_timeout, None);
        assert_eq!(config.sandbox, SandboxSettings::default());
        assert!(!args.check_sandbox);
    }

    #[test]
    fn hardening_options_and_config_precedence() {
        let file = crate::config::parse(
            "[limits]\nmax_clients = 4\nhandshake_timeout_ms = 900\nidle_timeout_ms = 7000\n\
             [sandbox]\nmode = \"best-effort\"\nuser = \"daemon\"\n",
            "t.toml",
        )
        .unwrap();
        let from_file = parse(&["--listen", "unix:/a"])
            .unwrap()
            .to_config_with(file.clone())
            .unwrap();
        assert_eq!(from_file.max_clients, 4);
        assert_eq!(from_file.handshake_timeout, Duration::from_millis(900));
        assert_eq!(from_file.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(from_file.sandbox.mode, SandboxMode::BestEffort);
        assert_eq!(from_file.sandbox.user.as_deref(), Some("daemon"));
        let args = parse(&[
            "--listen",
            "unix:/a",
            "--max-clients",
            "2",
            "--handshake-timeout-ms",
            "100",
            "--idle-timeout-ms",
            "300",
            "--user",
            "nobody",
            "--sandbox",
            "off",
            "--check-sandbox",
        ])
        .unwrap();
        assert!(args.check_sandbox);
        let cli = args.to_config_with(file).unwrap();
        assert_eq!(cli.max_clients, 2, "the command line wins");
        assert_eq!(cli.handshake_timeout, Duration::from_millis(100));
        assert_eq!(cli.idle_timeout, Some(Duration::from_millis(300)));
        assert_eq!(cli.sandbox.mode, SandboxMode::Off);
        assert_eq!(cli.sandbox.user.as_deref(), Some("nobody"));
        assert!(parse(&["--sandbox", "lax"]).is_err());
        let missing = parse(&["--config", "/nonexistent.toml"]).unwrap();
        assert!(matches!(missing.to_config(), Err(ArgsError::Config(_))));
    }

    #[test]
    fn every_option() {
        let args = parse(&[
            "--listen",
            "unix:/a",
            "--listen",
            "tcp:127.0.0.1:9",
            "--listen=vsock:any:5",
            "--backend",
            "null",
            "--null-skew-ppm",
            "-250",
            "--max-clients",
            "3",
            "--handshake-timeout-ms",
            "700",
            "--log-level",
            "debug",
            "--nice",
            "-5",
        ])
        .unwrap();
        assert_eq!(args.nice, Some(-5));
        let config = args.to_config().unwrap();
        assert_eq!(config.listen.len(), 3);
        assert_eq!(config.backend, BackendChoice::Null { skew_ppm: -250 });
        assert_eq!(config.max_clients, 3);
        assert_eq!(config.handshake_timeout, Duration::from_millis(700));
        assert_eq!(args.log_level, LogLevel::Debug);

        let pulse = parse(&[
            "--listen",
            "unix:/a",
            "--pulse-server",
            "unix:/p",
            "--sink",
            "s",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(
            pulse.backend,
            BackendChoice::Pulse(PulseConfig {
                server: Some("unix:/p".into()),
                sink: Some("s".into()),
                ..PulseConfig::default()
            })
        );
    }

    #[test]
    fn check_config_summarises_or_names_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[limits]\nmax_clients = 4\n[[rule]]\nname = \"vm3\"\nvsock_cid = 3\n",
        )
        .unwrap();
        let args = parse(&["--check-config", "--config", good.to_str().unwrap()]).unwrap();
        assert!(args.check_config);
        let summary = args.check_config().unwrap();
        assert!(
            summary.starts_with(&format!("{}: OK\n", good.display())),
            "{summary}"
        );
        assert!(summary.contains("max_clients 4"), "{summary}");
        assert!(summary.contains("\"vm3\""), "{summary}");
        assert!(summary.contains("sockets passed by systemd"), "{summary}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[limits]\n\nmax_clients = 0\n").unwrap();
        let e = parse(&["--check-config", "--config", bad.to_str().unwrap()])
            .unwrap()
            .check_config()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}:3:", bad.display())) && e.contains("`max_clients`"),
            "{e}"
        );

        let ghost = dir.path().join("ghost.toml");
        std::fs::write(&ghost, "[sandbox]\nuser = \"no-such-user-st\"\n").unwrap();
        let e = parse(&["--config", ghost.to_str().unwrap()])
            .unwrap()
            .check_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such user \"no-such-user-st\""), "{e}");
        assert!(e.contains("field `user`"), "{e}");
        let root = parse(&["--user", "root"])
            .unwrap()
            .check_config()
            .unwrap_err();
        assert!(root.to_string().contains("is root"), "{root}");
    }

    #[test]
    fn ctl_command_lines() {
        let ctl = |args: &[&str]| {
            CtlArgs::try_parse_from(std::iter::once("host-playd ctl").chain(args.iter().copied()))
        };
        let status = ctl(&["status"]).unwrap();
        assert_eq!(status.path(), PathBuf::from(DEFAULT_CONTROL));
        assert_eq!(status.request(), crate::control::ControlRequest::Status);
        let grant = ctl(&["--control", "/tmp/c", "grant-capture", "7"]).unwrap();
        assert_eq!(grant.path(), PathBuf::from("/tmp/c"));
        assert_eq!(
            grant.request(),
            crate::control::ControlRequest::GrantCapture(7)
        );
        assert_eq!(
            ctl(&["revoke-capture", "3"]).unwrap().request(),
            crate::control::ControlRequest::RevokeCapture(3)
        );
        assert!(ctl(&["grant-capture"]).is_err());
        assert!(ctl(&["grant-capture", "x"]).is_err());
        assert!(ctl(&["load-module"]).is_err());
        let capture = parse(&[
            "--listen",
            "unix:/a",
            "--capture-source",
            "mic",
            "--capture-allow-monitor",
            "--control",
            "/run/c",
        ])
        .unwrap()
        .to_config()
        .unwrap();
        assert_eq!(capture.control, Some(PathBuf::from("/run/c")));
        match capture.backend {
            BackendChoice::Pulse(p) => {
                assert_eq!(p.source.as_deref(), Some("mic"));
                assert!(p.allow_monitor);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&["--listen", "udp:x:1"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--max-clients", "0"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--backend", "alsa"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--log-level", "loud"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--nice", "20"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--nice", "-21"]).is_err());
        let skew = parse(&["--listen", "unix:/a", "--null-skew-ppm", "5"]).unwrap();
        assert_eq!(skew.to_config().err(), Some(ArgsError::SkewWithoutNull));
        let sink = parse(&["--listen", "unix:/a", "--backend", "null", "--sink", "x"]).unwrap();
        assert_eq!(
            sink.to_config().err(),
            Some(ArgsError::PulseOptionWithNull("sink"))
        );
    }
}

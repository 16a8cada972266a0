//! The command line, a public interface: spellings here are promised to users.

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::backend::pulse::PulseConfig;
use crate::daemon::{BackendChoice, DaemonConfig};
use crate::listen::ListenAddr;

/// Plays secure-tunnel guest audio through the host's PulseAudio.
///
/// Guests (the module-secure-tunnel sink in a VM) connect to one of the
/// --listen addresses; each gets its own playback stream on the host and a
/// clock report of what the host has played.
#[derive(Debug, Clone, Parser)]
#[command(name = "host-playd", version, about, long_about)]
pub struct Args {
    /// Where guests connect (repeatable, at least one): unix:PATH (the
    /// socket file is created mode 0666, a stale one is replaced, and it is
    /// removed on exit; guard it with its directory's permissions),
    /// tcp:HOST:PORT (IPv6 as tcp:[::1]:PORT), vsock:CID:PORT (CID a number
    /// or "any").
    #[arg(long = "listen", value_name = "ADDR", required = true)]
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

    /// Most guests playing at once; more are rejected with TooManyClients.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_clients: u32,

    /// Time a guest has to send its Hello before it is dropped.
    #[arg(long, value_name = "N", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub handshake_timeout_ms: u64,

    /// Log verbosity (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
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

/// Options that contradict each other.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--null-skew-ppm only applies to --backend null")]
    SkewWithoutNull,
    #[error("--{0} only applies to --backend pulse")]
    PulseOptionWithNull(&'static str),
}

impl Args {
    /// The daemon configuration these arguments ask for.
    pub fn to_config(&self) -> Result<DaemonConfig, ArgsError> {
        let backend = match self.backend {
            BackendKind::Pulse => {
                if self.null_skew_ppm.is_some() {
                    return Err(ArgsError::SkewWithoutNull);
                }
                BackendChoice::Pulse(PulseConfig {
                    server: self.pulse_server.clone(),
                    sink: self.sink.clone(),
                })
            }
            BackendKind::Null => {
                if self.pulse_server.is_some() {
                    return Err(ArgsError::PulseOptionWithNull("pulse-server"));
                }
                if self.sink.is_some() {
                    return Err(ArgsError::PulseOptionWithNull("sink"));
                }
                BackendChoice::Null {
                    skew_ppm: self.null_skew_ppm.unwrap_or(0),
                }
            }
        };
        Ok(DaemonConfig {
            listen: self.listen.clone(),
            backend,
            max_clients: self.max_clients as usize,
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
        })
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
        ])
        .unwrap();
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
                sink: Some("s".into())
            })
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&[]).is_err(), "--listen is required");
        assert!(parse(&["--listen", "udp:x:1"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--max-clients", "0"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--backend", "alsa"]).is_err());
        assert!(parse(&["--listen", "unix:/a", "--log-level", "loud"]).is_err());
        let skew = parse(&["--listen", "unix:/a", "--null-skew-ppm", "5"]).unwrap();
        assert_eq!(skew.to_config().err(), Some(ArgsError::SkewWithoutNull));
        let sink = parse(&["--listen", "unix:/a", "--backend", "null", "--sink", "x"]).unwrap();
        assert_eq!(
            sink.to_config().err(),
            Some(ArgsError::PulseOptionWithNull("sink"))
        );
    }
}

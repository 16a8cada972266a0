//! The command line (a promise, like the module's arguments): parsed by clap,
//! then validated by the same rules as the PulseAudio module's arguments
//! (`secure_tunnel_guest::config`), so both front ends accept the same values.

use anyhow::{bail, Context, Result};
use clap::Parser;
use secure_tunnel_guest::config::{CaptureConfig, CaptureRawArgs, RawArgs, TunnelConfig};
use secure_tunnel_protocol::{SampleFormat, StreamSpec, MAX_CHANNELS, MAX_RATE, MIN_RATE};

/// A PipeWire Audio/Sink that plays on the host through host-playd.
#[derive(Debug, Parser)]
#[command(name = "secure-tunnel-pipewire", version, about)]
pub struct Args {
    /// Where host-playd listens: unix:PATH, tcp:HOST:PORT or vsock:CID:PORT.
    #[arg(long, value_name = "ADDRESS")]
    pub server: String,
    /// The sink's node.name.
    #[arg(long, value_name = "NAME", default_value = "secure_tunnel")]
    pub sink_name: String,
    /// End-to-end latency target in milliseconds (10..=5000).
    #[arg(long, value_name = "MSEC")]
    pub latency_msec: Option<String>,
    /// Sample format of the sink and of the host stream.
    #[arg(long, value_name = "FORMAT", default_value = "s16le")]
    pub format: String,
    /// Sample rate in Hz.
    #[arg(long, value_name = "HZ", default_value_t = 48_000)]
    pub rate: u32,
    /// Number of channels (1..=8, in the usual layouts: mono, stereo, 2.1, 4.0, 5.0, 5.1, 6.1, 7.1).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub channels: u8,
    /// Pause between connection attempts in milliseconds (100..=60000).
    #[arg(long, value_name = "MSEC")]
    pub reconnect_interval_msec: Option<String>,
    /// Also create a microphone: an Audio/Source node of this node.name that
    /// records from the host (only as far as host-playd's capture policy
    /// allows; silence otherwise). Same format, rate and channels.
    #[arg(long, value_name = "NAME")]
    pub source_name: Option<String>,
    /// The microphone's latency target in milliseconds (10..=5000,
    /// default 40), announced to the host.
    #[arg(long, value_name = "MSEC", requires = "source_name")]
    pub source_latency_msec: Option<String>,
}

/// What the service runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tunnel: TunnelConfig,
    pub spec: StreamSpec,
    /// The microphone, when `--source-name` asks for one.
    pub capture: Option<CaptureConfig>,
}

/// PulseAudio's channel positions (the protocol's numbering,
/// `pa_channel_position_t`) for the usual layouts.
pub mod pos {
    pub const MONO: u8 = 0;
    pub const FL: u8 = 1;
    pub const FR: u8 = 2;
    pub const FC: u8 = 3;
    pub const RC: u8 = 4;
    pub const RL: u8 = 5;
    pub const RR: u8 = 6;
    pub const LFE: u8 = 7;
    pub const SL: u8 = 10;
    pub const SR: u8 = 11;
}

fn default_positions(channels: u8) -> Vec<u8> {
    use pos::*;
    match channels {
        1 => vec![MONO],
        2 => vec![FL, FR],
        3 => vec![FL, FR, LFE],
        4 => vec![FL, FR, RL, RR],
        5 => vec![FL, FR, FC, RL, RR],
        6 => vec![FL, FR, FC, LFE, RL, RR],
        7 => vec![FL, FR, FC, LFE, RL, RR, RC],
        _ => vec![FL, FR, FC, LFE, RL, RR, SL, SR],
    }
}

impl Args {
    pub fn settings(&self) -> Result<Settings> {
        let tunnel = TunnelConfig::from_args(RawArgs {
            server: Some(&self.server),
            sink_name: Some(&self.sink_name),
            latency_msec: self.latency_msec.as_deref(),
            reconnect_interval_msec: self.reconnect_interval_msec.as_deref(),
            min_latency_msec: None,
            max_latency_msec: None,
        })
        .context("invalid arguments")?;
        let capture = self
            .source_name
            .as_deref()
            .map(|name| {
                CaptureConfig::from_args(CaptureRawArgs {
                    server: Some(&self.server),
                    source_name: Some(name),
                    latency_msec: self.source_latency_msec.as_deref(),
                    reconnect_interval_msec: self.reconnect_interval_msec.as_deref(),
                })
            })
            .transpose()
            .context("invalid microphone arguments")?;
        let format = match self.format.as_str() {
            "s16le" => SampleFormat::S16Le,
            "s32le" => SampleFormat::S32Le,
            "float32le" => SampleFormat::F32Le,
            other => bail!("invalid --format {other:?} (use s16le, s32le or float32le)"),
        };
        if !(MIN_RATE..=MAX_RATE).contains(&self.rate) {
            bail!("invalid --rate {} (use {MIN_RATE}..={MAX_RATE})", self.rate);
        }
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            bail!(
                "invalid --channels {} (use 1..={MAX_CHANNELS})",
                self.channels
            );
        }
        let channel_map = default_positions(self.channels);
        let spec = StreamSpec {
            format,
            rate: self.rate,
            channel_map,
        };
        spec.validate()
            .map_err(|e| anyhow::anyhow!("invalid stream: {e}"))?;
        Ok(Settings {
            tunnel,
            spec,
            capture,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings> {
        let mut argv = vec!["secure-tunnel-pipewire", "--server", "unix:/run/s"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv)?.settings()
    }

    #[test]
    fn defaults_match_the_module() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.tunnel.sink_name, "secure_tunnel");
        assert_eq!(s.tunnel.latency_msec, 60);
        assert_eq!(s.spec.rate, 48_000);
        assert_eq!(s.spec.channel_map, vec![1, 2]);
        assert_eq!(s.spec.format, SampleFormat::S16Le);
    }

    #[test]
    fn bad_values_are_refused_with_the_value() {
        for (args, needle) in [
            (&["--format", "u8"][..], "u8"),
            (&["--rate", "1"][..], "--rate 1"),
            (&["--channels", "0"][..], "--channels 0"),
            (&["--latency-msec", "3"][..], "latency_msec=3"),
            (&["--sink-name", "a b"][..], "sink_name=a b"),
        ] {
            let err = format!("{:#}", parse(args).unwrap_err());
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        assert!(Args::try_parse_from(["secure-tunnel-pipewire"]).is_err());
        let err = format!(
            "{:#}",
            Args::try_parse_from(["x", "--server", "vsock:any:1"])
                .unwrap()
                .settings()
                .unwrap_err()
        );
        assert!(err.contains("vsock:any:1"), "{err}");
    }

    #[test]
    fn the_microphone_is_asked_for_by_its_name() {
        assert!(parse(&[]).unwrap().capture.is_none());
        let s = parse(&["--source-name", "mic", "--source-latency-msec", "80"]).unwrap();
        let c = s.capture.expect("a microphone");
        assert_eq!((c.source_name.as_str(), c.latency_msec), ("mic", 80));
        let err = format!("{:#}", parse(&["--source-name", "a b"]).unwrap_err());
        assert!(err.contains("source_name=a b"), "{err}");
        assert!(
            Args::try_parse_from(["x", "--server", "unix:/s", "--source-latency-msec", "80"])
                .is_err()
        );
    }

    #[test]
    fn every_channel_count_gives_a_valid_map() {
        for n in 1..=MAX_CHANNELS {
            let n = n.to_string();
            let s = parse(&["--channels", &n]).unwrap();
            assert_eq!(s.spec.channel_map.len().to_string(), n);
        }
    }
}

//! The module's arguments once PulseAudio's modargs parser has split them:
//! validated here in plain Rust so every rule is unit-tested.

use secure_tunnel_protocol::Address;
use thiserror::Error;

/// Default end-to-end latency target.
pub const DEFAULT_LATENCY_MSEC: u32 = 60;
/// Accepted range of `latency_msec`.
pub const LATENCY_MSEC_RANGE: std::ops::RangeInclusive<u32> = 10..=5_000;
/// Default pause between connection attempts.
pub const DEFAULT_RECONNECT_MSEC: u32 = 1_000;
/// Accepted range of `reconnect_interval_msec`.
pub const RECONNECT_MSEC_RANGE: std::ops::RangeInclusive<u32> = 100..=60_000;
/// Default highest latency an application may ask the sink for.
pub const DEFAULT_MAX_LATENCY_MSEC: u32 = 2_000;
/// Default `sink_name`.
pub const DEFAULT_SINK_NAME: &str = "secure_tunnel";
/// Default `source_name` of the capture (microphone) module.
pub const DEFAULT_SOURCE_NAME: &str = "secure_tunnel_mic";
/// Default capture latency target: what a call needs, a few host fragments.
pub const DEFAULT_CAPTURE_LATENCY_MSEC: u32 = 40;

/// A configuration error, phrased for the log line that makes `load-module`
/// fail.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing required argument `server` (server=unix:PATH|tcp:HOST:PORT|vsock:CID:PORT)")]
    MissingServer,
    #[error("invalid server={value}: {reason}")]
    BadServer { value: String, reason: String },
    #[error("invalid {key}={value}: {reason}")]
    BadValue {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// Where host-playd listens: the shared grammar of
/// [`secure_tunnel_protocol::addr`], restricted to addresses a guest can
/// connect to.
pub type ServerAddr = Address;

/// Parses a `server=` value with the shared grammar and the connect-only
/// rules, phrasing any error for the log line that fails the load.
pub fn parse_server(value: &str) -> Result<ServerAddr, ConfigError> {
    value
        .parse::<Address>()
        .and_then(Address::connect_target)
        .map_err(|e| ConfigError::BadServer {
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

/// The required `server=` argument, parsed.
fn required_server(value: Option<&str>) -> Result<ServerAddr, ConfigError> {
    value
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::MissingServer)
        .and_then(parse_server)
}

/// The raw text of the arguments this module reads itself (PulseAudio's own
/// helpers handle format, rate, channels, channel_map and sink_properties).
#[derive(Debug, Default, Clone, Copy)]
pub struct RawArgs<'a> {
    pub server: Option<&'a str>,
    pub sink_name: Option<&'a str>,
    pub latency_msec: Option<&'a str>,
    pub reconnect_interval_msec: Option<&'a str>,
    pub min_latency_msec: Option<&'a str>,
    pub max_latency_msec: Option<&'a str>,
}

/// The validated tunnel settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    pub server: ServerAddr,
    pub sink_name: String,
    pub latency_msec: u32,
    pub reconnect_interval_msec: u32,
    /// Lowest latency applications may ask for (default: `latency_msec`).
    pub min_latency_msec: u32,
    /// Highest latency applications may ask for (default: 2000 ms, and at
    /// least `latency_msec`).
    pub max_latency_msec: u32,
}

fn parse_msec(
    key: &'static str,
    value: Option<&str>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let bad = |reason: String| ConfigError::BadValue {
        key,
        value: value.to_owned(),
        reason,
    };
    let n = value
        .trim()
        .parse::<u32>()
        .map_err(|_| bad("not a whole number of milliseconds".to_owned()))?;
    if !range.contains(&n) {
        return Err(bad(format!(
            "must be within {}..={} ms",
            range.start(),
            range.end()
        )));
    }
    Ok(n)
}

fn check_name(key: &'static str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::BadValue {
            key,
            value: name.to_owned(),
            reason: "use 1 to 128 characters from A-Z a-z 0-9 _ - .".to_owned(),
        })
    }
}

impl TunnelConfig {
    /// Validates the arguments, applying the documented defaults.
    pub fn from_args(args: RawArgs<'_>) -> Result<Self, ConfigError> {
        let server = required_server(args.server)?;
        let sink_name = args.sink_name.unwrap_or(DEFAULT_SINK_NAME);
        check_name("sink_name", sink_name)?;
        let latency_msec = parse_msec(
            "latency_msec",
            args.latency_msec,
            DEFAULT_LATENCY_MSEC,
            LATENCY_MSEC_RANGE,
        )?;
        let min_latency_msec = parse_msec(
            "min_latency_msec",
            args.min_latency_msec,
            latency_msec,
            LATENCY_MSEC_RANGE,
        )?;
        let max_latency_msec = parse_msec(
            "max_latency_msec",
            args.max_latency_msec,
            DEFAULT_MAX_LATENCY_MSEC.max(latency_msec),
            LATENCY_MSEC_RANGE,
        )?;
        if !(min_latency_msec..=max_latency_msec).contains(&latency_msec) {
            return Err(ConfigError::BadValue {
                key: "latency_msec",
                value: latency_msec.to_string(),
                reason: format!(
                    "must lie within min_latency_msec..=max_latency_msec \
                     ({min_latency_msec}..={max_latency_msec})"
                ),
            });
        }
        Ok(TunnelConfig {
            server,
            sink_name: sink_name.to_owned(),
            latency_msec,
            reconnect_interval_msec: parse_msec(
                "reconnect_interval_msec",
                args.reconnect_interval_msec,
                DEFAULT_RECONNECT_MSEC,
                RECONNECT_MSEC_RANGE,
            )?,
            min_latency_msec,
            max_latency_msec,
        })
    }
}

/// The raw text of the capture module's own arguments.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptureRawArgs<'a> {
    pub server: Option<&'a str>,
    pub source_name: Option<&'a str>,
    pub latency_msec: Option<&'a str>,
    pub reconnect_interval_msec: Option<&'a str>,
}

/// The validated settings of a capture tunnel (`module-secure-tunnel-source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub server: ServerAddr,
    pub source_name: String,
    /// The capture latency target announced to the host; it sizes the
    /// host's recording fragments and the guest's credit window.
    pub latency_msec: u32,
    pub reconnect_interval_msec: u32,
}

impl CaptureConfig {
    /// Validates the arguments, applying the documented defaults (the same
    /// grammar and ranges as the sink's).
    pub fn from_args(args: CaptureRawArgs<'_>) -> Result<Self, ConfigError> {
        let server = required_server(args.server)?;
        let source_name = args.source_name.unwrap_or(DEFAULT_SOURCE_NAME);
        check_name("source_name", source_name)?;
        Ok(CaptureConfig {
            server,
            source_name: source_name.to_owned(),
            latency_msec: parse_msec(
                "latency_msec",
                args.latency_msec,
                DEFAULT_CAPTURE_LATENCY_MSEC,
                LATENCY_MSEC_RANGE,
            )?,
            reconnect_interval_msec: parse_msec(
                "reconnect_interval_msec",
                args.reconnect_interval_msec,
                DEFAULT_RECONNECT_MSEC,
                RECONNECT_MSEC_RANGE,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(server: &str) -> RawArgs<'_> {
        RawArgs {
            server: Some(server),
            ..RawArgs::default()
        }
    }

    #[test]
    fn parses_every_transport() {
        assert_eq!(
            parse_server("unix:/run/playd.sock"),
            Ok(ServerAddr::Unix("/run/playd.sock".into()))
        );
        assert_eq!(
            parse_server("tcp:10.0.0.1:4713"),
            Ok(ServerAddr::Tcp {
                host: "10.0.0.1".into(),
                port: 4713
            })
        );
        assert_eq!(
            parse_server("tcp:[::1]:4713").map(|a| a.to_string()),
            Ok("tcp:[::1]:4713".to_owned())
        );
        assert_eq!(
            parse_server("vsock:2:5000"),
            Ok(ServerAddr::Vsock { cid: 2, port: 5000 })
        );
    }

    #[test]
    fn rejects_bad_servers_with_a_reason() {
        for bad in [
            "bogus:xyz",
            "unix:",
            "tcp:host",
            "tcp:host:0",
            "tcp::80",
            "tcp:host:99999",
            "vsock:x:1",
            "vsock:2",
            "noscheme",
            "vsock:any:5000",
        ] {
            let err = parse_server(bad).unwrap_err();
            assert!(
                matches!(&err, ConfigError::BadServer { value, .. } if value == bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn defaults_and_bounds() {
        let cfg = TunnelConfig::from_args(args("unix:/s")).unwrap();
        assert_eq!(cfg.sink_name, DEFAULT_SINK_NAME);
        assert_eq!(cfg.latency_msec, DEFAULT_LATENCY_MSEC);
        assert_eq!(cfg.reconnect_interval_msec, DEFAULT_RECONNECT_MSEC);

        for (lat, ok) in [
            ("10", true),
            ("5000", true),
            ("9", false),
            ("5001", false),
            ("abc", false),
            ("-1", false),
        ] {
            let r = TunnelConfig::from_args(RawArgs {
                latency_msec: Some(lat),
                ..args("unix:/s")
            });
            assert_eq!(r.is_ok(), ok, "latency_msec={lat}: {r:?}");
        }
        let err = TunnelConfig::from_args(RawArgs {
            reconnect_interval_msec: Some("50"),
            ..args("unix:/s")
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("reconnect_interval_msec=50"),
            "{err}"
        );
    }

    #[test]
    fn latency_range_defaults_to_the_target_and_must_contain_it() {
        let cfg = TunnelConfig::from_args(RawArgs {
            latency_msec: Some("40"),
            ..args("unix:/s")
        })
        .unwrap();
        assert_eq!((cfg.min_latency_msec, cfg.max_latency_msec), (40, 2000));
        let cfg = TunnelConfig::from_args(RawArgs {
            latency_msec: Some("3000"),
            min_latency_msec: Some("20"),
            ..args("unix:/s")
        })
        .unwrap();
        assert_eq!((cfg.min_latency_msec, cfg.max_latency_msec), (20, 3000));
        let err = TunnelConfig::from_args(RawArgs {
            latency_msec: Some("30"),
            min_latency_msec: Some("50"),
            ..args("unix:/s")
        })
        .unwrap_err();
        assert!(err.to_string().contains("latency_msec=30"), "{err}");
    }

    #[test]
    fn server_is_required_and_sink_name_checked() {
        assert_eq!(
            TunnelConfig::from_args(RawArgs::default()),
            Err(ConfigError::MissingServer)
        );
        assert_eq!(
            TunnelConfig::from_args(args("")),
            Err(ConfigError::MissingServer)
        );
        let err = TunnelConfig::from_args(RawArgs {
            sink_name: Some("bad name"),
            ..args("unix:/s")
        })
        .unwrap_err();
        assert!(err.to_string().contains("sink_name=bad name"));
    }

    #[test]
    fn capture_defaults_and_errors_name_the_source() {
        let cfg = CaptureConfig::from_args(CaptureRawArgs {
            server: Some("vsock:2:5000"),
            ..CaptureRawArgs::default()
        })
        .unwrap();
        assert_eq!(cfg.source_name, DEFAULT_SOURCE_NAME);
        assert_eq!(cfg.latency_msec, DEFAULT_CAPTURE_LATENCY_MSEC);
        assert_eq!(cfg.reconnect_interval_msec, DEFAULT_RECONNECT_MSEC);
        assert_eq!(
            CaptureConfig::from_args(CaptureRawArgs::default()),
            Err(ConfigError::MissingServer)
        );
        let err = CaptureConfig::from_args(CaptureRawArgs {
            server: Some("unix:/s"),
            source_name: Some("mic 1"),
            ..CaptureRawArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("source_name=mic 1"), "{err}");
        let err = CaptureConfig::from_args(CaptureRawArgs {
            server: Some("unix:/s"),
            latency_msec: Some("5"),
            ..CaptureRawArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("latency_msec=5"), "{err}");
    }
}

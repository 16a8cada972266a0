//! The configuration file (`--config FILE`, TOML): limits, sandbox and the
//! per-guest policy. Every error names the file, the line and the field.
//!
//! ```toml
//! [limits]
//! max_clients = 8            # streams at once, all guests together
//! handshake_timeout_ms = 3000
//! idle_timeout_ms = 10000    # no message for this long: goodbye
//! memory_mb = 512            # RLIMIT_DATA
//!
//! [sandbox]
//! mode = "require"           # or "best-effort", "off"
//! user = "nobody"
//! read_only = ["/etc/pulse"] # what reconnecting to PulseAudio reads
//!
//! [defaults]                 # peers no rule matches
//! unix = "allow"
//! vsock = "allow"
//! tcp = "deny"
//! max_streams = 2            # per uid / IP address / CID
//!
//! [[rule]]                   # the first matching rule decides
//! name = "music-vm"
//! vsock_cid = 3              # or unix_uid, unix_gid, tcp = "10.0.0.0/24",
//!                            # listen = "unix:/run/host-playd/vm1.vsock_5000"
//! allow = true
//! max_streams = 1
//! formats = ["s16le"]
//! rate_min = 44100
//! rate_max = 48000
//! max_channels = 2
//! max_latency_ms = 500
//! min_latency_ms = 20        # default 10: smaller requests are raised
//! volume_percent = 80
//! stream_name = "Music VM"
//! capture = "grant"          # default "deny"; "allow": whenever it asks,
//!                            # "grant": only while `host-playd ctl
//!                            # grant-capture ID` stands
//! report_quantum_ms = 10     # privacy: clock reports rounded (default exact)
//!
//! [capture]
//! source = "alsa_input.usb-mic"  # the one source guests record from
//! allow_monitor = false      # a sink's monitor is refused unless true
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secure_tunnel_protocol::SampleFormat;
use serde::Deserialize;
use toml::Spanned;

use crate::policy::{CaptureMode, Cidr, Defaults, Matcher, Policy, Rule, StreamLimits};
use crate::sandbox::SandboxMode;

/// What a configuration file says; `None` leaves the command line's value
/// (or the built-in default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub policy: Policy,
    pub max_clients: Option<usize>,
    pub handshake_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub memory_mb: Option<u64>,
    pub sandbox_mode: Option<SandboxMode>,
    pub user: Option<String>,
    pub read_only: Vec<PathBuf>,
    /// `[capture] source`: the one host source guests may record from.
    pub capture_source: Option<String>,
    /// `[capture] allow_monitor`: whether that source may be a monitor of
    /// a sink (the host's own output). Refused unless set.
    pub capture_allow_monitor: Option<bool>,
}

/// A configuration error: where, which field, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the file could not be read at all.
    pub line: usize,
    pub column: usize,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    sandbox: RawSandbox,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    capture: RawCapture,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    source: Option<Spanned<String>>,
    allow_monitor: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawCaptureMode {
    Deny,
    Allow,
    Grant,
}

impl From<RawCaptureMode> for CaptureMode {
    fn from(m: RawCaptureMode) -> Self {
        match m {
            RawCaptureMode::Deny => CaptureMode::Deny,
            RawCaptureMode::Allow => CaptureMode::Allow,
            RawCaptureMode::Grant => CaptureMode::Grant,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_clients: Option<Spanned<u32>>,
    handshake_timeout_ms: Option<Spanned<u64>>,
    idle_timeout_ms: Option<Spanned<u64>>,
    memory_mb: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    mode: Option<SandboxMode>,
    user: Option<String>,
    #[serde(default)]
    read_only: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[allow(clippy::enum_variant_names)] // named like SampleFormat
enum FormatName {
    #[serde(rename = "s16le")]
    S16Le,
    #[serde(rename = "s32le")]
    S32Le,
    #[serde(rename = "float32le", alias = "f32le")]
    F32Le,
}

impl From<FormatName> for SampleFormat {
    fn from(f: FormatName) -> Self {
        match f {
            FormatName::S16Le => SampleFormat::S16Le,
            FormatName::S32Le => SampleFormat::S32Le,
            FormatName::F32Le => SampleFormat::F32Le,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
struct RawCidr(Cidr);

impl TryFrom<String> for RawCidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(RawCidr)
    }
}

/// Stream limit fields shared by `[defaults]` and `[[rule]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    unix: Option<Verdict>,
    vsock: Option<Verdict>,
    tcp: Option<Verdict>,
    max_streams: Option<Spanned<u32>>,
    formats: Option<Vec<FormatName>>,
    rate_min: Option<Spanned<u32>>,
    rate_max: Option<Spanned<u32>>,
    max_channels: Option<Spanned<u8>>,
    max_latency_ms: Option<Spanned<u32>>,
    min_latency_ms: Option<Spanned<u32>>,
    volume_percent: Option<Spanned<u8>>,
    stream_name: Option<Spanned<String>>,
    capture: Option<RawCaptureMode>,
    report_quantum_ms: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    unix_uid: Option<u32>,
    unix_gid: Option<u32>,
    tcp: Option<RawCidr>,
    vsock_cid: Option<u32>,
    listen: Option<String>,
    allow: Option<bool>,
    max_streams: Option<Spanned<u32>>,
    formats: Option<Vec<FormatName>>,
    rate_min: Option<Spanned<u32>>,
    rate_max: Option<Spanned<u32>>,
    max_channels: Option<Spanned<u8>>,
    max_latency_ms: Option<Spanned<u32>>,
    min_latency_ms: Option<Spanned<u32>>,
    volume_percent: Option<Spanned<u8>>,
    stream_name: Option<Spanned<String>>,
    capture: Option<RawCaptureMode>,
    report_quantum_ms: Option<Spanned<u32>>,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        line: 0,
        column: 0,
        field: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &file)
}

/// Parses a configuration; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<FileConfig, ConfigError> {
    let at = Locator { text, file };
    let raw: RawFile = toml::from_str(text).map_err(|e| at.toml_error(&e))?;
    let limits = &raw.limits;
    let positive = |v: &Option<Spanned<u64>>, field: &str| -> Result<Option<u64>, ConfigError> {
        match v {
            Some(s) if *s.get_ref() == 0 => Err(at.error(s.span(), field, "must be at least 1")),
            Some(s) => Ok(Some(*s.get_ref())),
            None => Ok(None),
        }
    };
    let max_clients = match &limits.max_clients {
        Some(s) if !(1..=1024).contains(s.get_ref()) => {
            return Err(at.error(s.span(), "max_clients", "must be 1..=1024"))
        }
        Some(s) => Some(*s.get_ref() as usize),
        None => None,
    };
    let handshake = positive(&limits.handshake_timeout_ms, "handshake_timeout_ms")?;
    let idle = positive(&limits.idle_timeout_ms, "idle_timeout_ms")?;
    let memory_mb = positive(&limits.memory_mb, "memory_mb")?;

    let d = &raw.defaults;
    let builtin = Defaults::default();
    let verdict =
        |v: Option<Verdict>, default: bool| v.map_or(default, |v| matches!(v, Verdict::Allow));
    let defaults = Defaults {
        unix: verdict(d.unix, builtin.unix),
        vsock: verdict(d.vsock, builtin.vsock),
        tcp: verdict(d.tcp, builtin.tcp),
    };
    let default_limits = stream_limits(
        &at,
        LimitFields {
            max_streams: &d.max_streams,
            formats: &d.formats,
            rate_min: &d.rate_min,
            rate_max: &d.rate_max,
            max_channels: &d.max_channels,
            max_latency_ms: &d.max_latency_ms,
            min_latency_ms: &d.min_latency_ms,
            volume_percent: &d.volume_percent,
            stream_name: &d.stream_name,
            capture: d.capture,
            report_quantum_ms: &d.report_quantum_ms,
        },
    )?;

    let mut rules = Vec::new();
    for spanned in &raw.rule {
        let r = spanned.get_ref();
        let mut matchers = Vec::new();
        if let Some(uid) = r.unix_uid {
            matchers.push(Matcher::UnixUid(uid));
        }
        if let Some(gid) = r.unix_gid {
            matchers.push(Matcher::UnixGid(gid));
        }
        if let Some(RawCidr(net)) = r.tcp {
            matchers.push(Matcher::Tcp(net));
        }
        if let Some(cid) = r.vsock_cid {
            matchers.push(Matcher::VsockCid(cid));
        }
        if let Some(name) = &r.listen {
            matchers.push(Matcher::Listen(name.clone()));
        }
        if matchers.len() != 1 {
            return Err(at.error(
                spanned.span(),
                "unix_uid",
                &format!(
                    "rule {:?} needs exactly one of unix_uid, unix_gid, tcp, vsock_cid, listen (has {})",
                    r.name,
                    matchers.len()
                ),
            ));
        }
        if rules.iter().any(|other: &Rule| other.name == r.name) {
            return Err(at.error(
                spanned.span(),
                "name",
                &format!("two rules are named {:?}", r.name),
            ));
        }
        let limits = stream_limits(
            &at,
            LimitFields {
                max_streams: &r.max_streams,
                formats: &r.formats,
                rate_min: &r.rate_min,
                rate_max: &r.rate_max,
                max_channels: &r.max_channels,
                max_latency_ms: &r.max_latency_ms,
                min_latency_ms: &r.min_latency_ms,
                volume_percent: &r.volume_percent,
                stream_name: &r.stream_name,
                capture: r.capture,
                report_quantum_ms: &r.report_quantum_ms,
            },
        )?;
        rules.push(Rule {
            name: r.name.clone(),
            matcher: matchers.remove(0),
            allow: r.allow.unwrap_or(true),
            limits,
        });
    }

    Ok(FileConfig {
        policy: Policy {
            rules,
            defaults,
            default_limits,
        },
        max_clients,
        handshake_timeout: handshake.map(Duration::from_millis),
        idle_timeout: idle.map(Duration::from_millis),
        memory_mb,
        sandbox_mode: raw.sandbox.mode,
        user: raw.sandbox.user,
        read_only: raw.sandbox.read_only,
        capture_source: match raw.capture.source {
            Some(s) => {
                let name = s.get_ref();
                if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
                    return Err(at.error(
                        s.span(),
                        "source",
                        "must be 1..=256 bytes without control characters",
                    ));
                }
                Some(name.clone())
            }
            None => None,
        },
        capture_allow_monitor: raw.capture.allow_monitor,
    })
}

struct LimitFields<'a> {
    max_streams: &'a Option<Spanned<u32>>,
    formats: &'a Option<Vec<FormatName>>,
    rate_min: &'a Option<Spanned<u32>>,
    rate_max: &'a Option<Spanned<u32>>,
    max_channels: &'a Option<Spanned<u8>>,
    max_latency_ms: &'a Option<Spanned<u32>>,
    min_latency_ms: &'a Option<Spanned<u32>>,
    volume_percent: &'a Option<Spanned<u8>>,
    stream_name: &'a Option<Spanned<String>>,
    capture: Option<RawCaptureMode>,
    report_quantum_ms: &'a Option<Spanned<u32>>,
}

fn stream_limits(at: &Locator<'_>, f: LimitFields<'_>) -> Result<StreamLimits, ConfigError> {
    let value = |s: &Option<Spanned<u32>>| s.as_ref().map(|s| *s.get_ref());
    if let Some(s) = f.max_streams {
        if *s.get_ref() == 0 {
            return Err(at.error(s.span(), "max_streams", "must be at least 1"));
        }
    }
    for (s, field) in [(f.rate_min, "rate_min"), (f.rate_max, "rate_max")] {
        if let Some(s) = s {
            if !(8_000..=192_000).contains(s.get_ref()) {
                return Err(at.error(s.span(), field, "must be 8000..=192000 Hz"));
            }
        }
    }
    if let (Some(min), Some(max)) = (f.rate_min, f.rate_max) {
        if min.get_ref() > max.get_ref() {
            return Err(at.error(max.span(), "rate_max", "is below rate_min"));
        }
    }
    if let Some(s) = f.max_channels {
        if !(1..=8).contains(s.get_ref()) {
            return Err(at.error(s.span(), "max_channels", "must be 1..=8"));
        }
    }
    if let Some(s) = f.max_latency_ms {
        if !(1..=10_000).contains(s.get_ref()) {
            return Err(at.error(s.span(), "max_latency_ms", "must be 1..=10000"));
        }
    }
    if let Some(s) = f.min_latency_ms {
        if !(1..=10_000).contains(s.get_ref()) {
            return Err(at.error(s.span(), "min_latency_ms", "must be 1..=10000"));
        }
        if let Some(max) = f.max_latency_ms {
            if s.get_ref() > max.get_ref() {
                return Err(at.error(s.span(), "min_latency_ms", "is above max_latency_ms"));
            }
        }
    }
    if let Some(s) = f.volume_percent {
        if *s.get_ref() > 100 {
            return Err(at.error(
                s.span(),
                "volume_percent",
                "must be 0..=100 (a cap, never an amplification)",
            ));
        }
    }
    if let Some(s) = f.report_quantum_ms {
        if !(1..=1000).contains(s.get_ref()) {
            return Err(at.error(s.span(), "report_quantum_ms", "must be 1..=1000"));
        }
    }
    if let Some(s) = f.stream_name {
        let name = s.get_ref();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(at.error(
                s.span(),
                "stream_name",
                "must be 1..=128 bytes without control characters",
            ));
        }
    }
    Ok(StreamLimits {
        max_streams: value(f.max_streams).map(|n| n as usize),
        formats: f
            .formats
            .as_ref()
            .map(|v| v.iter().map(|&f| f.into()).collect()),
        rate_min: value(f.rate_min),
        rate_max: value(f.rate_max),
        max_channels: f.max_channels.as_ref().map(|s| *s.get_ref()),
        max_latency_usec: value(f.max_latency_ms).map(|ms| u64::from(ms) * 1000),
        min_latency_usec: value(f.min_latency_ms).map(|ms| u64::from(ms) * 1000),
        volume_percent: f.volume_percent.as_ref().map(|s| *s.get_ref()),
        stream_name: f.stream_name.as_ref().map(|s| s.get_ref().clone()),
        capture: f.capture.map_or(CaptureMode::Deny, CaptureMode::from),
        report_quantum_usec: value(f.report_quantum_ms).map(|ms| u64::from(ms) * 1000),
    })
}

struct Locator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Locator<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn error(&self, span: Range<usize>, field: &str, message: &str) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: Some(field.to_owned()),
            message: message.to_owned(),
        }
    }

    /// toml's own errors: the field is the one the message quotes, else the
    /// key on the line the span starts on.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_owned();
        let (line, column) = e.span().map_or((0, 0), |s| self.position(s.start));
        let quoted = message
            .split('`')
            .nth(1)
            .filter(|_| message.contains("field `"))
            .map(str::to_owned);
        let on_line = || {
            let text = self.text.lines().nth(line.checked_sub(1)?)?;
            let (key, _) = text.split_once('=')?;
            let key = key.trim().trim_matches('"');
            (!key.is_empty()).then(|| key.to_owned())
        };
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            field: quoted.or_else(on_line),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const FULL: &str = r#"
[limits]
max_clients = 8
handshake_timeout_ms = 3000
idle_timeout_ms = 10000
memory_mb = 256

[sandbox]
mode = "best-effort"
user = "pulse"
read_only = ["/etc/pulse"]

[capture]
source = "alsa_input.mic"
allow_monitor = false

[defaults]
unix = "deny"
vsock = "allow"
max_streams = 2

[[rule]]
name = "music-vm"
vsock_cid = 3
max_streams = 1
formats = ["s16le", "float32le"]
rate_min = 44100
rate_max = 48000
max_channels = 2
max_latency_ms = 500
min_latency_ms = 20
volume_percent = 80
stream_name = "Music VM"
capture = "grant"
report_quantum_ms = 10

[[rule]]
name = "lan"
tcp = "192.168.0.0/24"

[[rule]]
name = "banned"
unix_uid = 1001
allow = false
"#;

    #[test]
    fn parses_every_field() {
        let c = parse(FULL, "host-playd.toml").unwrap();
        assert_eq!(c.max_clients, Some(8));
        assert_eq!(c.handshake_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.memory_mb, Some(256));
        assert_eq!(c.sandbox_mode, Some(SandboxMode::BestEffort));
        assert_eq!(c.user.as_deref(), Some("pulse"));
        assert_eq!(c.read_only, vec![PathBuf::from("/etc/pulse")]);
        let p = &c.policy;
        assert_eq!(
            p.defaults,
            Defaults {
                unix: false,
                vsock: true,
                tcp: false
            }
        );
        assert_eq!(p.default_limits.max_streams, Some(2));
        assert_eq!(p.rules.len(), 3);
        let music = &p.rules[0];
        assert_eq!(music.matcher, Matcher::VsockCid(3));
        assert!(music.allow);
        assert_eq!(
            music.limits,
            StreamLimits {
                max_streams: Some(1),
                formats: Some(vec![SampleFormat::S16Le, SampleFormat::F32Le]),
                rate_min: Some(44_100),
                rate_max: Some(48_000),
                max_channels: Some(2),
                max_latency_usec: Some(500_000),
                min_latency_usec: Some(20_000),
                volume_percent: Some(80),
                stream_name: Some("Music VM".into()),
                capture: CaptureMode::Grant,
                report_quantum_usec: Some(10_000),
            }
        );
        assert_eq!(
            p.default_limits.capture,
            CaptureMode::Deny,
            "deny by default"
        );
        assert_eq!(c.capture_source.as_deref(), Some("alsa_input.mic"));
        assert_eq!(c.capture_allow_monitor, Some(false));
        assert_eq!(
            p.rules[1].matcher,
            Matcher::Tcp("192.168.0.0/24".parse().unwrap())
        );
        assert!(!p.rules[2].allow);
    }

    #[test]
    fn a_rule_matches_the_listener_that_accepted() {
        let c = parse(
            "[[rule]]\nname = \"vm1\"\nlisten = \"unix:/run/host-playd/vm1.vsock_5000\"\nmax_streams = 1\n",
            "vms.toml",
        )
        .unwrap();
        assert_eq!(
            c.policy.rules[0].matcher,
            Matcher::Listen("unix:/run/host-playd/vm1.vsock_5000".into())
        );
        let e = error("[[rule]]\nname = \"two\"\nlisten = \"unix:/a\"\nunix_uid = 0\n");
        assert!(e.to_string().contains("listen (has 2)"), "{e}");
    }

    #[test]
    fn empty_file_is_the_built_in_policy() {
        let c = parse("", "empty.toml").unwrap();
        assert_eq!(c, FileConfig::default());
    }

    fn error(text: &str) -> ConfigError {
        parse(text, "bad.toml").unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = error("[limits]\nmax_clients = \"many\"\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (2, Some("max_clients")),
            "{e}"
        );
        assert!(e.to_string().starts_with("bad.toml:2:"), "{e}");

        let e = error("[limits]\nmax_clients = 0\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (2, Some("max_clients")),
            "{e}"
        );

        let e = error("[limits]\nmax_clinets = 3\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (2, Some("max_clinets")),
            "{e}"
        );
        assert!(e.message.contains("unknown field"), "{e}");

        let e = error("\n\n[[rule]]\nname = \"x\"\ntcp = \"10.0.0.0/40\"\n");
        assert_eq!((e.line, e.field.as_deref()), (5, Some("tcp")), "{e}");
        assert!(e.message.contains("prefix"), "{e}");

        let e = error("[[rule]]\nname = \"x\"\nvsock_cid = 3\nvolume_percent = 150\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (4, Some("volume_percent")),
            "{e}"
        );

        let e = error("[[rule]]\nname = \"x\"\nvsock_cid = 3\nformats = [\"s16le\", \"u8\"]\n");
        assert_eq!((e.line, e.field.as_deref()), (4, Some("formats")), "{e}");

        let e =
            error("[[rule]]\nname = \"x\"\nvsock_cid = 3\nrate_min = 48000\nrate_max = 44100\n");
        assert_eq!((e.line, e.field.as_deref()), (5, Some("rate_max")), "{e}");

        let e = error("[defaults]\ntcp = \"maybe\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("tcp")), "{e}");

        let e = error("[sandbox]\nmode = \"lax\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("mode")), "{e}");

        let e = error("[limits]\n\n[[rule]]\nname = \"two\"\nunix_uid = 1\nvsock_cid = 2\n");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("exactly one"), "{e}");

        let e = error("[[rule]]\nunix_uid = 1\n");
        assert_eq!(e.field.as_deref(), Some("name"), "{e}");
        assert!(e.message.contains("missing"), "{e}");

        let e = error("[defaults]\ncapture = \"always\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("capture")), "{e}");
        let e = error("[[rule]]\nname = \"x\"\nvsock_cid = 3\nreport_quantum_ms = 0\n");
        assert_eq!(
            (e.line, e.field.as_deref()),
            (4, Some("report_quantum_ms")),
            "{e}"
        );
        let e = error("[capture]\nsource = \"\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("source")), "{e}");
        let e = error("[capture]\nsorce = \"mic\"\n");
        assert_eq!((e.line, e.field.as_deref()), (2, Some("sorce")), "{e}");
    }

    #[test]
    fn unreadable_file_is_named() {
        let e = load(Path::new("/nonexistent/host-playd.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/host-playd.toml: cannot read"),
            "{e}"
        );
    }
}

//! Who a guest is and what it may do: identities from the kernel (never from
//! the guest's own words), rules matched in order, and the limits a matching
//! rule puts on the stream.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use secure_tunnel_protocol::{SampleFormat, StreamSpec};

use crate::backend::StreamParams;

/// A guest's identity as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// A unix socket peer (SO_PEERCRED). `gid` is the primary group only:
    /// supplementary groups are not visible.
    Unix { uid: u32, gid: u32, pid: i32 },
    /// A TCP peer's address.
    Tcp(SocketAddr),
    /// A vsock peer; the CID is assigned by the VMM, not chosen by the guest.
    Vsock { cid: u32, port: u32 },
    /// Credentials could not be read; matches no rule.
    Unknown(String),
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdentity::Unix { uid, gid, pid } => write!(f, "uid {uid} gid {gid} pid {pid}"),
            PeerIdentity::Tcp(addr) => write!(f, "tcp {addr}"),
            PeerIdentity::Vsock { cid, port } => write!(f, "vsock cid {cid} port {port}"),
            PeerIdentity::Unknown(why) => write!(f, "unknown peer ({why})"),
        }
    }
}

impl PeerIdentity {
    /// What per-guest limits count: a uid, an IP address or a CID.
    pub fn key(&self) -> IdentityKey {
        match self {
            PeerIdentity::Unix { uid, .. } => IdentityKey::Uid(*uid),
            PeerIdentity::Tcp(addr) => IdentityKey::Ip(addr.ip()),
            PeerIdentity::Vsock { cid, .. } => IdentityKey::Cid(*cid),
            PeerIdentity::Unknown(_) => IdentityKey::Unknown,
        }
    }

    fn transport(&self) -> Transport {
        match self {
            PeerIdentity::Unix { .. } | PeerIdentity::Unknown(_) => Transport::Unix,
            PeerIdentity::Tcp(_) => Transport::Tcp,
            PeerIdentity::Vsock { .. } => Transport::Vsock,
        }
    }
}

/// The unit per-guest limits count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    Uid(u32),
    Ip(IpAddr),
    Cid(u32),
    Unknown,
}

/// A listener kind, for the per-transport defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
    Vsock,
}

/// An IPv4 or IPv6 network, `ADDR/PREFIX` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or ADDR/PREFIX network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?} (0..={max})"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 peers count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let mut bits = usize::from(prefix);
    for (x, y) in a.iter().zip(b) {
        if bits == 0 {
            return true;
        }
        let take = bits.min(8);
        let mask = 0xffu8 << (8 - take);
        if x & mask != y & mask {
            return false;
        }
        bits -= take;
    }
    true
}

/// Which peers a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    UnixUid(u32),
    UnixGid(u32),
    Tcp(Cidr),
    VsockCid(u32),
    /// The listener that accepted the connection, by its name as host-playd
    /// logs it (`unix:/run/host-playd/vm1.vsock_5000`, `tcp:0.0.0.0:4713`,
    /// `vsock:4294967295:5000`). What tells VMs apart behind a vhost-user
    /// vsock backend, which connects every guest of one VM through its own
    /// unix socket `<uds-path>_<port>`: host-playd sees the backend, not a CID.
    Listen(String),
}

impl Matcher {
    /// Whether `peer`, accepted on `listener` (`None`: not known), matches.
    pub fn matches_on(&self, listener: Option<&str>, peer: &PeerIdentity) -> bool {
        match self {
            Matcher::Listen(want) => listener == Some(want.as_str()),
            _ => self.matches(peer),
        }
    }

    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        match (self, peer) {
            (Matcher::UnixUid(want), PeerIdentity::Unix { uid, .. }) => want == uid,
            (Matcher::UnixGid(want), PeerIdentity::Unix { gid, .. }) => want == gid,
            (Matcher::Tcp(net), PeerIdentity::Tcp(addr)) => net.contains(addr.ip()),
            (Matcher::VsockCid(want), PeerIdentity::Vsock { cid, .. }) => want == cid,
            _ => false,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::UnixUid(uid) => write!(f, "unix uid {uid}"),
            Matcher::UnixGid(gid) => write!(f, "unix gid {gid}"),
            Matcher::Tcp(net) => write!(f, "tcp {net}"),
            Matcher::VsockCid(cid) => write!(f, "vsock cid {cid}"),
            Matcher::Listen(name) => write!(f, "listener {name}"),
        }
    }
}

/// What a guest's stream may be. `None` fields do not limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams at once from one identity (uid, IP address or CID).
    pub max_streams: Option<usize>,
    pub formats: Option<Vec<SampleFormat>>,
    pub rate_min: Option<u32>,
    pub rate_max: Option<u32>,
    pub max_channels: Option<u8>,
    /// Larger buffers asked for are cut to this.
    pub max_latency_usec: Option<u64>,
    /// Smaller buffers asked for are raised to this; `None`:
    /// [`DEFAULT_MIN_LATENCY_USEC`]. (A tiny buffer makes the host's sink
    /// run at a tiny latency for every stream on it, at many times the CPU.)
    pub min_latency_usec: Option<u64>,
    /// Host stream volume at creation, percent of normal (the guest has no
    /// way to change it).
    pub volume_percent: Option<u8>,
    /// The name the host's mixer shows, instead of the guest's.
    pub stream_name: Option<String>,
    /// Whether the peer may record from the host's capture source.
    pub capture: CaptureMode,
    /// Privacy: host times and latencies in the clock reports sent to the
    /// guest are rounded to multiples of this (`None`: exact). Precise host
    /// latency tells an anonymity guest about the host's sound card.
    pub report_quantum_usec: Option<u64>,
}

/// Whether a peer may record (`capture` in `[defaults]` and `[[rule]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureMode {
    /// Never: a capture Hello is refused with `NotAllowed`.
    #[default]
    Deny,
    /// Whenever the guest asks.
    Allow,
    /// Only while an administrator has granted it live
    /// (`host-playd ctl grant-capture ID`), until revoked or disconnected.
    Grant,
}

impl CaptureMode {
    /// The configuration file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            CaptureMode::Deny => "deny",
            CaptureMode::Allow => "allow",
            CaptureMode::Grant => "grant",
        }
    }
}

/// The latency floor when a policy sets none: 10 ms, the smallest
/// `latency_msec` the guest module is measured at.
pub const DEFAULT_MIN_LATENCY_USEC: u64 = 10_000;

/// One rule of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    /// `false`: peers matching are refused.
    pub allow: bool,
    pub limits: StreamLimits,
}

/// Whether a transport's peers that no rule matches are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    pub unix: bool,
    pub vsock: bool,
    pub tcp: bool,
}

impl Default for Defaults {
    /// Unix: allowed, the socket file's permissions already decide who can
    /// connect. Vsock: allowed, only VMs the VMM gave a vsock device reach
    /// it. TCP: denied, anyone on the network could otherwise play.
    fn default() -> Self {
        Defaults {
            unix: true,
            vsock: true,
            tcp: false,
        }
    }
}

/// The whole policy: rules in order (the first match decides), defaults
/// for the rest, and the limits those default-allowed peers get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub defaults: Defaults,
    pub default_limits: StreamLimits,
}

/// The verdict on a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Allowed, with the rule that allowed it (`None`: a default).
    Allowed {
        rule: Option<String>,
        limits: StreamLimits,
    },
    /// Refused, with the reason sent to the guest and logged.
    Denied { reason: String },
}

impl Policy {
    /// [`Policy::admit_on`] without knowing the listener: `listen` rules
    /// match nothing.
    pub fn admit(&self, peer: &PeerIdentity) -> Admission {
        self.admit_on(None, peer)
    }

    /// The verdict on `peer`, accepted on the listener named `listener`.
    pub fn admit_on(&self, listener: Option<&str>, peer: &PeerIdentity) -> Admission {
        if let PeerIdentity::Unknown(why) = peer {
            return Admission::Denied {
                reason: format!("the peer's identity is unknown: {why}"),
            };
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|r| r.matcher.matches_on(listener, peer))
        {
            return if rule.allow {
                Admission::Allowed {
                    rule: Some(rule.name.clone()),
                    limits: rule.limits.clone(),
                }
            } else {
                Admission::Denied {
                    reason: format!("rule {:?} refuses {peer}", rule.name),
                }
            };
        }
        let (allowed, what) = match peer.transport() {
            Transport::Unix => (self.defaults.unix, "unix"),
            Transport::Tcp => (self.defaults.tcp, "tcp"),
            Transport::Vsock => (self.defaults.vsock, "vsock"),
        };
        if allowed {
            Admission::Allowed {
                rule: None,
                limits: self.default_limits.clone(),
            }
        } else {
            Admission::Denied {
                reason: format!("no rule allows {peer} ({what} peers are denied by default)"),
            }
        }
    }
}

impl StreamLimits {
    /// Checks a requested stream against the limits; the error is the
    /// reason sent to the guest.
    pub fn check(&self, spec: &StreamSpec) -> Result<(), String> {
        if let Some(formats) = &self.formats {
            if !formats.contains(&spec.format) {
                return Err(format!(
                    "format {:?} is not allowed (allowed: {formats:?})",
                    spec.format
                ));
            }
        }
        let min = self.rate_min.unwrap_or(0);
        let max = self.rate_max.unwrap_or(u32::MAX);
        if !(min..=max).contains(&spec.rate) {
            return Err(format!(
                "rate {} Hz is not allowed (allowed: {min}..={max} Hz)",
                spec.rate
            ));
        }
        if let Some(max) = self.max_channels {
            if spec.channels() > max {
                return Err(format!(
                    "{} channels are not allowed (at most {max})",
                    spec.channels()
                ));
            }
        }
        Ok(())
    }

    /// The buffer `tlength_bytes` raised to the latency floor, then cut to
    /// the latency limit (whole frames; the limit wins if they disagree).
    pub fn cap_buffer(&self, spec: &StreamSpec, tlength_bytes: u32) -> u32 {
        let frames = |usec: u64| {
            let bytes = spec.usec_to_bytes(usec).max(u64::from(spec.frame_size()));
            u32::try_from(bytes).unwrap_or(u32::MAX)
        };
        let floor = frames(self.min_latency_usec.unwrap_or(DEFAULT_MIN_LATENCY_USEC));
        let raised = tlength_bytes.max(floor);
        match self.max_latency_usec {
            Some(max_usec) => raised.min(frames(max_usec)),
            None => raised,
        }
    }

    /// Rewrites what the host will open: the name and the buffer.
    pub fn apply(&self, params: &mut StreamParams) {
        params.tlength_bytes = self.cap_buffer(&params.spec, params.tlength_bytes);
        if let Some(name) = &self.stream_name {
            params.name.clone_from(name);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn unix(uid: u32, gid: u32) -> PeerIdentity {
        PeerIdentity::Unix { uid, gid, pid: 1 }
    }
    fn tcp(s: &str) -> PeerIdentity {
        PeerIdentity::Tcp(s.parse().unwrap())
    }
    fn rule(name: &str, matcher: Matcher, allow: bool) -> Rule {
        Rule {
            name: name.into(),
            matcher,
            allow,
            limits: StreamLimits::default(),
        }
    }

    /// Two VMs behind vhost-user vsock backends: both connect as the same
    /// uid through unix sockets, one per VM; only the listener tells them
    /// apart.
    #[test]
    fn listen_rules_tell_vms_apart_by_the_socket_that_accepted_them() {
        let policy = Policy {
            rules: vec![
                rule(
                    "vm1",
                    Matcher::Listen("unix:/run/host-playd/vm1.vsock_5000".into()),
                    true,
                ),
                rule(
                    "vm2",
                    Matcher::Listen("unix:/run/host-playd/vm2.vsock_5000".into()),
                    false,
                ),
            ],
            defaults: Defaults {
                unix: false,
                ..Defaults::default()
            },
            ..Policy::default()
        };
        let backend = unix(0, 0);
        let on = |l: &str| policy.admit_on(Some(l), &backend);
        assert!(matches!(
            on("unix:/run/host-playd/vm1.vsock_5000"),
            Admission::Allowed { rule: Some(r), .. } if r == "vm1"
        ));
        assert!(matches!(
            on("unix:/run/host-playd/vm2.vsock_5000"),
            Admission::Denied { reason } if reason.contains("\"vm2\"")
        ));
        // Another listener, or none known: no listen rule matches, the
        // defaults decide (unix denied here).
        assert!(matches!(
            on("unix:/run/host-playd/vm1.vsock_50001"),
            Admission::Denied { .. }
        ));
        assert!(matches!(policy.admit(&backend), Admission::Denied { .. }));
        // A listen rule matches any transport's peer on that listener, and
        // never an unknown peer.
        assert!(matches!(
            policy.admit_on(
                Some("unix:/run/host-playd/vm1.vsock_5000"),
                &tcp("10.0.0.1:9")
            ),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            policy.admit_on(
                Some("unix:/run/host-playd/vm1.vsock_5000"),
                &PeerIdentity::Unknown("x".into())
            ),
            Admission::Denied { .. }
        ));
        assert_eq!(
            Matcher::Listen("tcp:0.0.0.0:1".into()).to_string(),
            "listener tcp:0.0.0.0:1"
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.255.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.2.3".parse().unwrap()),
            "v4-mapped"
        );
        let host: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let odd: Cidr = "192.168.1.128/25".parse().unwrap();
        assert!(odd.contains("192.168.1.200".parse().unwrap()));
        assert!(!odd.contains("192.168.1.100".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("host.example/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn first_matching_rule_decides_then_defaults() {
        let policy = Policy {
            rules: vec![
                rule("banned", Matcher::UnixUid(1001), false),
                rule("audio", Matcher::UnixGid(29), true),
                rule("lan", Matcher::Tcp("192.168.0.0/24".parse().unwrap()), true),
                rule("vm3", Matcher::VsockCid(3), true),
            ],
            defaults: Defaults {
                unix: true,
                vsock: false,
                tcp: false,
            },
            default_limits: StreamLimits::default(),
        };
        assert!(matches!(
            policy.admit(&unix(1001, 29)),
            Admission::Denied { reason } if reason.contains("banned")
        ));
        assert!(matches!(
            policy.admit(&unix(1000, 29)),
            Admission::Allowed { rule: Some(r), .. } if r == "audio"
        ));
        assert!(matches!(
            policy.admit(&unix(1000, 1000)),
            Admission::Allowed { rule: None, .. }
        ));
        assert!(matches!(
            policy.admit(&tcp("192.168.0.7:40000")),
            Admission::Allowed { rule: Some(r), .. } if r == "lan"
        ));
        match policy.admit(&tcp("192.168.1.7:40000")) {
            Admission::Denied { reason } => {
                assert!(
                    reason.contains("no rule allows tcp 192.168.1.7:40000"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            policy.admit(&PeerIdentity::Vsock { cid: 3, port: 9 }),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            policy.admit(&PeerIdentity::Vsock { cid: 4, port: 9 }),
            Admission::Denied { .. }
        ));
        assert!(matches!(
            policy.admit(&PeerIdentity::Unknown("x".into())),
            Admission::Denied { .. }
        ));
    }

    #[test]
    fn built_in_defaults_deny_tcp_only() {
        let policy = Policy::default();
        assert!(matches!(
            policy.admit(&unix(0, 0)),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            policy.admit(&PeerIdentity::Vsock { cid: 3, port: 1 }),
            Admission::Allowed { .. }
        ));
        assert!(matches!(
            policy.admit(&tcp("127.0.0.1:1")),
            Admission::Denied { .. }
        ));
    }

    #[test]
    fn limits_check_and_apply() {
        let limits = StreamLimits {
            formats: Some(vec![SampleFormat::S16Le]),
            rate_min: Some(44_100),
            rate_max: Some(48_000),
            max_channels: Some(2),
            max_latency_usec: Some(50_000),
            stream_name: Some("vm music".into()),
            ..StreamLimits::default()
        };
        let spec = |format, rate, channels: u8| StreamSpec {
            format,
            rate,
            channel_map: (1..=channels).collect(),
        };
        assert_eq!(limits.check(&spec(SampleFormat::S16Le, 48_000, 2)), Ok(()));
        assert!(limits
            .check(&spec(SampleFormat::F32Le, 48_000, 2))
            .unwrap_err()
            .contains("format F32Le"));
        assert!(limits
            .check(&spec(SampleFormat::S16Le, 96_000, 2))
            .unwrap_err()
            .contains("rate 96000"));
        assert!(limits
            .check(&spec(SampleFormat::S16Le, 48_000, 6))
            .unwrap_err()
            .contains("6 channels"));
        let mut params = StreamParams {
            spec: spec(SampleFormat::S16Le, 48_000, 2),
            tlength_bytes: 192_000,
            name: "guest's own".into(),
        };
        limits.apply(&mut params);
        assert_eq!(params.tlength_bytes, 9_600, "50 ms of 48 kHz stereo s16");
        assert_eq!(params.name, "vm music");
        let mut small = params.clone();
        small.tlength_bytes = 2_880;
        limits.apply(&mut small);
        assert_eq!(small.tlength_bytes, 2_880, "15 ms is kept");
        small.tlength_bytes = 192;
        limits.apply(&mut small);
        assert_eq!(
            small.tlength_bytes, 1_920,
            "1 ms is raised to the 10 ms floor"
        );
        let floor = StreamLimits {
            min_latency_usec: Some(40_000),
            max_latency_usec: Some(30_000),
            ..StreamLimits::default()
        };
        assert_eq!(
            floor.cap_buffer(&small.spec, 192),
            5_760,
            "the limit wins over the floor"
        );
        let spec = &small.spec;
        assert_eq!(StreamLimits::default().cap_buffer(spec, 0), 1_920);
        assert_eq!(
            StreamLimits::default().cap_buffer(spec, 1_000_000),
            1_000_000
        );
    }
}

//! The one grammar of secure-tunnel endpoint addresses, used by every guest
//! front end (`server=` of the PulseAudio module, `--server` of the PipeWire
//! service) and meant for host-playd's `--listen`:
//!
//! - `unix:PATH` — a unix socket file;
//! - `tcp:HOST:PORT` — a name or an IP; IPv6 in brackets (`tcp:[::1]:4713`).
//!   The port is what follows the last colon, so an unbracketed IPv6 host
//!   (`tcp:::1:4713`) still parses as `::1`, port 4713 (the guest module
//!   always accepted it);
//! - `vsock:CID:PORT` — `CID` a number, or `any` / `-1` for
//!   [`VSOCK_CID_ANY`] (only meaningful to listen on).
//!
//! The grammar accepts everything either side can mean; [`Address::connect_target`]
//! adds what only makes sense for a peer to connect to (no port 0, no
//! `VSOCK_CID_ANY`), so that a listener may still ask for port 0.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// `VMADDR_CID_ANY`: every context id of this machine (listening only).
pub const VSOCK_CID_ANY: u32 = u32::MAX;

/// Where host-playd listens, or where a guest connects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix socket file.
    Unix(PathBuf),
    /// A TCP address; `host` is a name or an IP, without brackets.
    Tcp { host: String, port: u16 },
    /// A vsock address; `cid` may be [`VSOCK_CID_ANY`] (written `any`).
    Vsock { cid: u32, port: u32 },
}

/// Why an address did not parse (or cannot be connected to).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AddrError {
    #[error("{0:?} has no scheme; expected unix:PATH, tcp:HOST:PORT or vsock:CID:PORT")]
    NoScheme(String),
    #[error("unknown transport {0:?} (use unix, tcp or vsock)")]
    UnknownScheme(String),
    #[error("unix: needs a socket path")]
    EmptyPath,
    #[error("{0:?} is not HOST:PORT (or CID:PORT)")]
    NoPort(String),
    #[error("empty host in {0:?}")]
    EmptyHost(String),
    #[error("bad port {0:?} (tcp: 1..=65535, vsock: a number)")]
    BadPort(String),
    #[error("bad vsock context id {0:?} (a number or \"any\")")]
    BadCid(String),
    #[error("{0} can be listened on but not connected to")]
    NotConnectable(String),
}

impl FromStr for Address {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| AddrError::NoScheme(s.to_owned()))?;
        match scheme {
            "unix" if rest.is_empty() => Err(AddrError::EmptyPath),
            "unix" => Ok(Address::Unix(PathBuf::from(rest))),
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| AddrError::NoPort(rest.to_owned()))?;
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                if host.is_empty() {
                    return Err(AddrError::EmptyHost(rest.to_owned()));
                }
                let port = port
                    .parse()
                    .map_err(|_| AddrError::BadPort(port.to_owned()))?;
                Ok(Address::Tcp {
                    host: host.to_owned(),
                    port,
                })
            }
            "vsock" => {
                let (cid, port) = rest
                    .split_once(':')
                    .ok_or_else(|| AddrError::NoPort(rest.to_owned()))?;
                let cid = match cid {
                    "any" | "-1" => VSOCK_CID_ANY,
                    _ => cid.parse().map_err(|_| AddrError::BadCid(cid.to_owned()))?,
                };
                let port = port
                    .parse()
                    .map_err(|_| AddrError::BadPort(port.to_owned()))?;
                Ok(Address::Vsock { cid, port })
            }
            other => Err(AddrError::UnknownScheme(other.to_owned())),
        }
    }
}

impl Address {
    /// Checks that a peer can connect here: TCP port 0 and
    /// [`VSOCK_CID_ANY`] only make sense to listen on.
    pub fn connect_target(self) -> Result<Self, AddrError> {
        match &self {
            Address::Tcp { port: 0, .. } => Err(AddrError::BadPort("0".to_owned())),
            Address::Vsock {
                cid: VSOCK_CID_ANY, ..
            } => Err(AddrError::NotConnectable(self.to_string())),
            _ => Ok(self),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            Address::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Address::Vsock {
                cid: VSOCK_CID_ANY,
                port,
            } => write!(f, "vsock:any:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Address, AddrError> {
        s.parse()
    }

    #[test]
    fn parses_every_transport_and_round_trips() {
        assert_eq!(
            parse("unix:/run/playd.sock"),
            Ok(Address::Unix("/run/playd.sock".into()))
        );
        assert_eq!(
            parse("tcp:10.0.0.1:4713"),
            Ok(Address::Tcp {
                host: "10.0.0.1".into(),
                port: 4713
            })
        );
        assert_eq!(
            parse("vsock:2:5000"),
            Ok(Address::Vsock { cid: 2, port: 5000 })
        );
        for s in [
            "unix:/a b",
            "tcp:[::1]:4713",
            "tcp:host:1",
            "vsock:any:5000",
            "vsock:3:1",
        ] {
            assert_eq!(parse(s).map(|a| a.to_string()), Ok(s.to_owned()), "{s}");
        }
        // The last colon separates the port, brackets or not.
        assert_eq!(
            parse("tcp:::1:80").map(|a| a.to_string()),
            Ok("tcp:[::1]:80".to_owned())
        );
        assert_eq!(
            parse("vsock:-1:7"),
            Ok(Address::Vsock {
                cid: VSOCK_CID_ANY,
                port: 7
            })
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(
            parse("noscheme"),
            Err(AddrError::NoScheme("noscheme".into()))
        );
        assert_eq!(
            parse("bogus:x"),
            Err(AddrError::UnknownScheme("bogus".into()))
        );
        assert_eq!(parse("unix:"), Err(AddrError::EmptyPath));
        assert_eq!(parse("tcp:host"), Err(AddrError::NoPort("host".into())));
        assert_eq!(parse("tcp::80"), Err(AddrError::EmptyHost(":80".into())));
        assert_eq!(
            parse("tcp:[]:80"),
            Err(AddrError::EmptyHost("[]:80".into()))
        );
        assert_eq!(
            parse("tcp:h:99999"),
            Err(AddrError::BadPort("99999".into()))
        );
        assert_eq!(parse("vsock:x:1"), Err(AddrError::BadCid("x".into())));
        assert_eq!(parse("vsock:2"), Err(AddrError::NoPort("2".into())));
        assert_eq!(parse("vsock:2:x"), Err(AddrError::BadPort("x".into())));
    }

    #[test]
    fn connect_targets_exclude_listen_only_addresses() {
        assert!(parse("tcp:h:0").is_ok());
        assert!(parse("tcp:h:0").unwrap().connect_target().is_err());
        assert!(parse("vsock:any:1").unwrap().connect_target().is_err());
        assert!(parse("vsock:2:1").unwrap().connect_target().is_ok());
        assert!(parse("unix:/s").unwrap().connect_target().is_ok());
    }
}

//! Reading `pactl list sinks` (run with `LC_ALL=C`).

use crate::{HarnessError, PulseDaemon};

/// How many sink-inputs (playback streams) `daemon` has now.
pub fn sink_input_count(daemon: &PulseDaemon) -> Result<usize, HarnessError> {
    let text = daemon.pactl_ok(&["list", "short", "sink-inputs"])?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

/// The fields of one sink block the tests look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkInfo {
    /// `Name:`
    pub name: String,
    /// `Description:`
    pub description: String,
    /// `State:`
    pub state: String,
    /// `Driver:`
    pub driver: String,
    /// `Owner Module:`
    pub owner_module: Option<u32>,
    /// `Flags:`, split on spaces.
    pub flags: Vec<String>,
    /// `Latency: X usec, configured Y usec` — X.
    pub latency_usec: Option<u64>,
    /// — Y.
    pub configured_latency_usec: Option<u64>,
    /// The `Properties:` section as (key, unquoted value).
    pub properties: Vec<(String, String)>,
}

impl SinkInfo {
    /// Whether `Flags:` lists `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A property's value.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every sink block in `pactl list sinks` output.
pub fn parse_sinks(text: &str) -> Vec<SinkInfo> {
    let mut sinks = Vec::new();
    let mut cur: Option<SinkInfo> = None;
    let mut in_properties = false;
    for line in text.lines() {
        if line.starts_with("Sink #") {
            sinks.extend(cur.take());
            cur = Some(SinkInfo::default());
            in_properties = false;
            continue;
        }
        let Some(sink) = cur.as_mut() else { continue };
        let depth = line.len() - line.trim_start_matches('\t').len();
        let line = line.trim();
        if depth >= 2 && in_properties {
            if let Some((k, v)) = line.split_once(" = ") {
                sink.properties
                    .push((k.to_owned(), v.trim_matches('"').to_owned()));
            }
            continue;
        }
        in_properties = false;
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => sink.name = value.to_owned(),
            "Description" => sink.description = value.to_owned(),
            "State" => sink.state = value.to_owned(),
            "Driver" => sink.driver = value.to_owned(),
            "Owner Module" => sink.owner_module = value.parse().ok(),
            "Flags" => sink.flags = value.split_whitespace().map(str::to_owned).collect(),
            "Latency" => {
                let (x, y) = parse_latency(value);
                sink.latency_usec = x;
                sink.configured_latency_usec = y;
            }
            "Properties" => in_properties = true,
            _ => {}
        }
    }
    sinks.extend(cur);
    sinks
}

/// `"1234 usec, configured 5678 usec"` → `(Some(1234), Some(5678))`.
fn parse_latency(value: &str) -> (Option<u64>, Option<u64>) {
    let (x, y) = value.split_once(',').unwrap_or((value, ""));
    let num = |s: &str| {
        s.trim()
            .trim_start_matches("configured")
            .trim()
            .trim_end_matches("usec")
            .trim()
            .parse()
            .ok()
    };
    (num(x), num(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Sink #0\n\tState: SUSPENDED\n\tName: hostsink\n\tDescription: Null Output\n\
\tDriver: module-null-sink.c\n\tOwner Module: 1\n\tLatency: 0 usec, configured 0 usec\n\
\tFlags: DECIBEL_VOLUME LATENCY SET_FORMATS\n\tProperties:\n\t\tdevice.description = \"Null Output\"\n\
\t\tdevice.class = \"abstract\"\n\tFormats:\n\t\tpcm\n\n\
Sink #3\n\tState: RUNNING\n\tName: secure_tunnel\n\tDescription: Secure tunnel to unix:/run/x.sock\n\
\tDriver: module-secure-tunnel-sink.c\n\tOwner Module: 7\n\
\tLatency: 61234 usec, configured 60000 usec\n\tFlags: HARDWARE NETWORK LATENCY\n\
\tProperties:\n\t\tdevice.description = \"Secure tunnel to unix:/run/x.sock\"\n";

    #[test]
    fn parses_both_blocks() {
        let sinks = parse_sinks(SAMPLE);
        assert_eq!(sinks.len(), 2);
        assert_eq!(sinks[0].name, "hostsink");
        assert_eq!(sinks[0].property("device.class"), Some("abstract"));
        let t = &sinks[1];
        assert_eq!(t.name, "secure_tunnel");
        assert_eq!(t.state, "RUNNING");
        assert_eq!(t.owner_module, Some(7));
        assert_eq!(t.latency_usec, Some(61_234));
        assert_eq!(t.configured_latency_usec, Some(60_000));
        assert!(t.has_flag("NETWORK") && t.has_flag("LATENCY") && !t.has_flag("DECIBEL_VOLUME"));
        assert_eq!(
            t.property("device.description"),
            Some("Secure tunnel to unix:/run/x.sock")
        );
    }
}

//! Per-client statistics an administrator can read without a debugger:
//! `kill -USR1 <pid>` (or `systemctl kill -s USR1 host-playd`) makes the
//! engine log one line per connected guest.
//!
//! The signal handler only sets a flag (`signal_hook::flag`); the engine
//! thread notices it within one poll period and formats the table, so no
//! syscall beyond what the engine already makes is needed under seccomp.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

/// What one guest connection has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// The engine's number for the connection (as in every log line).
    pub id: u64,
    /// The listener and the peer's identity, as in the connect log line.
    pub peer: String,
    /// `handshake`, `opening`, `playing` or `idle` (corked or starved);
    /// for a capture connection `recording`, `capture-idle` (not asking),
    /// `awaiting-grant` or `unavailable` (the source failed).
    pub state: &'static str,
    /// The policy rule that admitted it (`default`, or `denied`).
    pub rule: String,
    /// `-` for playback; else the rule's capture mode, and under `grant`
    /// whether it is granted now.
    pub capture: String,
    /// Time since the guest connected.
    pub connected_for: Duration,
    /// Audio bytes received from the guest (sent to it, for capture).
    pub bytes: u64,
    /// Host stream underruns since the stream opened.
    pub underruns: u32,
    /// Audio queued on the host plus the device's latency, when streaming.
    pub latency: Option<Duration>,
    /// Connections from the same uid, IP address or CID since the daemon
    /// started, this one included; more than one means it reconnected.
    pub connections: u64,
}

impl ClientStats {
    /// Connections from this peer before the current one.
    pub fn reconnects(&self) -> u64 {
        self.connections.saturating_sub(1)
    }
}

impl fmt::Display for ClientStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let latency = self.latency.map_or_else(
            || "-".to_owned(),
            |l| format!("{:.1} ms", l.as_secs_f64() * 1e3),
        );
        write!(
            f,
            "client {} ({}): state {}, up {:.1} s, {} bytes, {} underruns, latency {}, \
             {} reconnects, rule {}, capture {}",
            self.id,
            self.peer,
            self.state,
            self.connected_for.as_secs_f64(),
            self.bytes,
            self.underruns,
            latency,
            self.reconnects(),
            self.rule,
            self.capture,
        )
    }
}

/// The log lines for a statistics request: a header, then one line per
/// client in id order.
pub fn table(clients: &[ClientStats]) -> Vec<String> {
    let mut sorted: Vec<&ClientStats> = clients.iter().collect();
    sorted.sort_by_key(|c| c.id);
    let playing = sorted.iter().filter(|c| c.state == "playing").count();
    let mut lines = Vec::with_capacity(sorted.len() + 1);
    lines.push(format!(
        "stats: {} client(s) connected, {playing} playing",
        sorted.len()
    ));
    lines.extend(sorted.iter().map(|c| format!("stats: {c}")));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: u64, state: &'static str) -> ClientStats {
        ClientStats {
            id,
            peer: "unix:/run/host-playd/guest.sock (uid 1000 gid 1000 pid 42)".to_owned(),
            state,
            rule: "default".to_owned(),
            capture: "-".to_owned(),
            connected_for: Duration::from_millis(2500),
            bytes: 192_000,
            underruns: 1,
            latency: Some(Duration::from_micros(61_240)),
            connections: 3,
        }
    }

    #[test]
    fn one_line_per_client_in_id_order() {
        let lines = table(&[client(7, "idle"), client(2, "playing")]);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "stats: 2 client(s) connected, 1 playing");
        assert_eq!(
            lines[1],
            "stats: client 2 (unix:/run/host-playd/guest.sock (uid 1000 gid 1000 pid 42)): \
             state playing, up 2.5 s, 192000 bytes, 1 underruns, latency 61.2 ms, 2 reconnects, \
             rule default, capture -"
        );
        assert!(lines[2].starts_with("stats: client 7 "), "{}", lines[2]);
    }

    #[test]
    fn no_latency_before_the_stream_opens() {
        let mut c = client(1, "handshake");
        c.latency = None;
        c.connections = 1;
        let line = c.to_string();
        assert!(line.contains("latency -, 0 reconnects, rule"), "{line}");
        assert_eq!(table(&[])[0], "stats: 0 client(s) connected, 0 playing");
    }
}

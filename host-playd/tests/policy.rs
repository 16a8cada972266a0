//! Per-guest policy and limits with the real daemon (null backend): who may
//! play is decided on kernel-given identities, refusals say why and are
//! logged with the identity, and limits never disturb the guests that play.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{hello, logged_tcp_addr, start_playd, Flow, Guest};
use secure_tunnel_protocol::{GuestMessage, HostMessage, RejectReason};

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("host-playd.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Sends Hello and expects a Reject with `want`, returning its message.
fn refused(guest: &mut Guest, want: RejectReason) -> String {
    guest.send(&GuestMessage::Hello(hello(50_000)));
    let got = guest
        .wait_closed(Duration::from_secs(3))
        .expect("connection should be closed");
    match got.as_slice() {
        [HostMessage::Reject { reason, message }] if *reason == want => message.clone(),
        other => panic!("expected only Reject {want:?}, got {other:?}"),
    }
}

/// Streams for `for_` and checks that credit and clock reports came.
fn plays(guest: &mut Guest, flow: &mut Flow, for_: Duration) {
    let (credits, clocks) = (flow.credits, flow.clocks.len());
    flow.pump(guest, Instant::now() + for_, u64::MAX, &mut |n| vec![0; n]);
    assert!(flow.credits > credits + 1, "credit keeps coming: {flow:?}");
    assert!(flow.clocks.len() > clocks, "clock reports keep coming");
    assert!(
        flow.clocks.last().is_some_and(|(_, c)| c.played_bytes > 0),
        "it plays"
    );
}

#[test]
fn rules_decide_who_plays_and_refusals_are_explained_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[defaults]
unix = "deny"

[[rule]]
name = "loopback"
tcp = "127.0.0.1/32"
max_streams = 1
max_channels = 2
volume_percent = 40
stream_name = "loopback guest"
"#,
    );
    let socket = dir.path().join("playd.sock");
    let playd = start_playd(
        dir.path(),
        &socket,
        &[
            "--backend",
            "null",
            "--listen",
            "tcp:127.0.0.1:0",
            "--config",
            &config,
        ],
    );
    let tcp = logged_tcp_addr(&playd).expect("tcp address in the log");

    // Over unix, where this config allows no one.
    let mut local = Guest::connect(&socket);
    let message = refused(&mut local, RejectReason::NotAllowed);
    assert!(message.contains("no rule allows uid"), "{message}");

    // Over TCP from 127.0.0.1: the rule allows it, with its limits.
    let mut allowed = Guest::connect_tcp(&tcp);
    allowed.handshake(50_000);
    let mut flow = Flow::default();
    plays(&mut allowed, &mut flow, Duration::from_millis(500));

    // The rule's per-guest limit: one stream per address.
    let mut second = Guest::connect_tcp(&tcp);
    let message = refused(&mut second, RejectReason::TooManyClients);
    assert!(message.contains("tcp 127.0.0.1"), "{message}");

    // A stream outside the rule's limits.
    let mut wide = Guest::connect_tcp(&tcp);
    let mut h = hello(50_000);
    h.spec.channel_map = vec![1, 2, 3, 4, 5, 6];
    wide.send(&GuestMessage::Hello(h));
    let got = wide.wait_closed(Duration::from_secs(3)).expect("closed");
    assert!(
        matches!(got.as_slice(), [HostMessage::Reject { reason: RejectReason::NotAllowed, message }]
            if message.contains("6 channels")),
        "{got:?}"
    );

    // The allowed guest played on, under the rule's name and volume cap.
    plays(&mut allowed, &mut flow, Duration::from_millis(300));
    let log = playd.stderr();
    let refusal = log
        .lines()
        .find(|l| l.contains("NotAllowed") && l.contains("no rule allows"))
        .unwrap_or_else(|| panic!("refusal not logged:\n{log}"));
    assert!(
        refusal.contains("uid 0 gid 0 pid") || refusal.contains("uid "),
        "{refusal}"
    );
    assert!(
        log.contains("name \"loopback guest\"") && log.contains("volume 40%"),
        "{log}"
    );
    assert!(log.contains("allowed by rule \"loopback\""), "{log}");
}

#[test]
fn tcp_is_denied_without_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("playd.sock");
    let playd = start_playd(
        dir.path(),
        &socket,
        &["--backend", "null", "--listen", "tcp:127.0.0.1:0"],
    );
    let tcp = logged_tcp_addr(&playd).unwrap();
    let log = playd.stderr();
    assert!(log.contains("no rule allows any TCP peer"), "{log}");
    let mut guest = Guest::connect_tcp(&tcp);
    let message = refused(&mut guest, RejectReason::NotAllowed);
    assert!(
        message.contains("tcp peers are denied by default"),
        "{message}"
    );
    // Unix stays allowed by default.
    let mut local = Guest::connect(&socket);
    local.handshake(20_000);
}

#[test]
fn limits_refuse_the_extra_client_drop_silent_and_idle_ones_and_spare_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[limits]\nmax_clients = 2\nhandshake_timeout_ms = 400\nidle_timeout_ms = 700\n",
    );
    let socket = dir.path().join("playd.sock");
    let playd = start_playd(
        dir.path(),
        &socket,
        &["--backend", "null", "--config", &config],
    );

    let mut a = Guest::connect(&socket);
    a.handshake(50_000);
    let mut b = Guest::connect(&socket);
    b.handshake(50_000);
    let mut flow_a = Flow::default();
    plays(&mut a, &mut flow_a, Duration::from_millis(200));

    // The N+1th is refused.
    let mut c = Guest::connect(&socket);
    let message = refused(&mut c, RejectReason::TooManyClients);
    assert!(message.contains("2 guests"), "{message}");

    // B leaves; a silent connection is dropped after the handshake timeout,
    // and a guest that goes quiet after its handshake after the idle one.
    b.send(&GuestMessage::Goodbye {
        reason: "done".into(),
    });
    b.wait_closed(Duration::from_secs(2)).expect("b closed");
    let silent = Guest::connect(&socket);
    let silent_since = Instant::now();
    let mut quiet = Guest::connect(&socket);
    quiet.handshake(50_000);
    let quiet_since = Instant::now();

    // A keeps playing meanwhile.
    let before = flow_a.clocks.len();
    flow_a.pump(
        &mut a,
        Instant::now() + Duration::from_millis(1_200),
        u64::MAX,
        &mut |n| vec![0; n],
    );
    assert!(
        flow_a.clocks.len() - before > 40,
        "A's clock reports continue"
    );

    let got = silent
        .wait_closed(Duration::from_secs(2))
        .expect("silent one dropped");
    assert!(got.is_empty(), "{got:?}");
    assert!(silent_since.elapsed() >= Duration::from_millis(350));
    let got = quiet
        .wait_closed(Duration::from_secs(2))
        .expect("idle one closed");
    assert!(
        matches!(got.last(), Some(HostMessage::Goodbye { reason }) if reason.contains("idle")),
        "{got:?}"
    );
    assert!(quiet_since.elapsed() >= Duration::from_millis(650));
    assert!(!flow_a
        .others
        .iter()
        .any(|m| matches!(m, HostMessage::Goodbye { .. })));
    plays(&mut a, &mut flow_a, Duration::from_millis(200));
    let log = playd.stderr();
    assert!(
        log.contains("no Hello within the handshake timeout"),
        "{log}"
    );
    assert!(log.contains("idle: no message for 700 ms"), "{log}");
}

#[test]
fn a_bad_config_file_stops_startup_naming_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[limits]\nmax_clients = 2\nidle_timeout_ms = \"soon\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_host-playd"))
        .args(["--backend", "null", "--listen"])
        .arg(format!("unix:{}", dir.path().join("s").display()))
        .args(["--config", &config])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{config}:3:")) && stderr.contains("idle_timeout_ms"),
        "{stderr}"
    );
}

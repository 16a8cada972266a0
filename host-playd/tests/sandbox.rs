//! The sandbox, observed from outside: the real binary's self-check, and a
//! daemon started as root that must run confined while it plays through a
//! real PulseAudio, and reconnect to it from inside the sandbox.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    have_pulseaudio, is_root, open_to_everyone, pulse_env, start_playd_env, thread_status, Flow,
    Guest, PrivatePulse,
};
use secure_tunnel_protocol::{GuestMessage, HostMessage};

fn check_sandbox(extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_host-playd"))
        .args(["--check-sandbox", "--backend", "null"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.success(),
        format!("{stdout}\n--- stderr ---\n{stderr}"),
    )
}

#[test]
fn check_sandbox_denies_every_probe() {
    let (ok, report) = check_sandbox(&[]);
    assert!(ok, "{report}");
    for probe in [
        "open /etc/passwd",
        "write ",
        "exec /bin/true",
        "AF_NETLINK",
        "AF_PACKET",
        "setuid 0",
    ] {
        let line = report
            .lines()
            .find(|l| l.contains(probe))
            .unwrap_or_else(|| panic!("no probe {probe:?}:\n{report}"));
        assert!(line.starts_with("denied"), "{line}\n{report}");
    }
    assert!(!report.contains("ALLOWED"), "{report}");
    assert!(report.contains("NoNewPrivs: 1"), "{report}");
    assert!(report.contains("Seccomp: 2"), "{report}");
    assert!(report.contains("CapEff: 0000000000000000"), "{report}");
    if is_root() {
        assert!(
            report.contains("Uid: 65534"),
            "root becomes nobody: {report}"
        );
    }
}

/// The same probes without the sandbox succeed, so the test above would
/// fail if the sandbox did nothing.
#[test]
fn without_the_sandbox_the_same_probes_succeed() {
    let (ok, report) = check_sandbox(&["--sandbox", "off"]);
    assert!(!ok, "exit status must be non-zero:\n{report}");
    for probe in ["open /etc/passwd", "write ", "exec /bin/true", "AF_NETLINK"] {
        let line = report
            .lines()
            .find(|l| l.contains(probe))
            .unwrap_or_else(|| panic!("no probe {probe:?}:\n{report}"));
        assert!(line.starts_with("ALLOWED"), "{line}\n{report}");
    }
    assert!(report.contains("NOT denied"), "{report}");
}

#[test]
fn an_unknown_user_or_root_is_refused() {
    let (ok, report) = check_sandbox(&["--user", "no-such-user-here"]);
    assert!(!ok);
    assert!(report.contains("no such user"), "{report}");
    let (ok, report) = check_sandbox(&["--user", "root"]);
    assert!(!ok);
    assert!(report.contains("refusing to run as"), "{report}");
}

#[test]
fn runs_as_nobody_confined_while_playing_through_pulseaudio() {
    if !is_root() {
        eprintln!("SKIPPED: changing to --user nobody needs root");
        return;
    }
    if !have_pulseaudio() {
        eprintln!("SKIPPED: the pulseaudio binary is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    // nobody must be able to reach the socket to reconnect later.
    open_to_everyone(dir.path());
    let config = dir.path().join("host-playd.toml");
    std::fs::write(
        &config,
        "[defaults]\nvolume_percent = 50\nstream_name = \"sandboxed guest\"\n",
    )
    .unwrap();
    let socket = dir.path().join("playd.sock");
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &[
            "--pulse-server",
            &pulse.server,
            "--sink",
            "hostsink",
            "--user",
            "nobody",
            "--config",
            config.to_str().unwrap(),
        ],
        pulse_env(dir.path()),
    );

    let mut guest = Guest::connect(&socket);
    guest.handshake(50_000);
    let mut flow = Flow::default();
    flow.pump(
        &mut guest,
        Instant::now() + Duration::from_secs(2),
        u64::MAX,
        &mut |n| vec![0x11; n],
    );
    let last = flow.clocks.last().unwrap().1.clone();
    assert!(last.playing, "{last:?}\n{}", playd.stderr());
    assert!(
        last.played_bytes > 192_000,
        "over a second played through PulseAudio: {last:?}"
    );

    // Every thread, read by the kernel, while it plays.
    let threads = thread_status(playd.child.id());
    // main (the engine), the shutdown watcher, the guest event loop: no
    // thread per connection.
    assert_eq!(threads.len(), 3, "{threads:?}");
    for t in &threads {
        let ids = |k: &str| -> Vec<u32> {
            t[k].split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect()
        };
        assert!(ids("Uid").iter().all(|&u| u == 65534), "{t:?}");
        assert!(ids("Gid").iter().all(|&g| g != 0), "{t:?}");
        assert_eq!(t["Groups"], "", "{t:?}");
        for cap in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
            assert_eq!(t[cap], "0000000000000000", "{cap} {t:?}");
        }
        assert_eq!(t["NoNewPrivs"], "1", "{t:?}");
        assert_eq!(t["Seccomp"], "2", "{t:?}");
    }

    // The policy's name and volume cap reached the host stream.
    let inputs = Command::new("pactl")
        .args(["--server", &pulse.server, "list", "sink-inputs"])
        .envs(pulse_env(dir.path()))
        .output()
        .unwrap();
    let inputs = String::from_utf8_lossy(&inputs.stdout);
    assert!(inputs.contains("\"sandboxed guest\""), "{inputs}");
    assert!(inputs.contains("50%"), "{inputs}");

    // PulseAudio goes away and comes back: the sandboxed daemon reconnects.
    drop(pulse);
    let got = guest.wait_closed(Duration::from_secs(5)).expect("closed");
    assert!(
        matches!(got.last(), Some(HostMessage::Goodbye { .. })),
        "{got:?}"
    );
    let _pulse = PrivatePulse::start(dir.path());
    open_to_everyone(dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Guest::connect(&socket);
        again.send(&GuestMessage::Hello(common::hello(50_000)));
        match again.recv(Duration::from_secs(5)) {
            Some(HostMessage::Accept(_)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}\n{}", playd.stderr()),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = playd.stderr();
    assert!(log.contains("sandbox: seccomp:"), "{log}");
    assert!(log.contains("now nobody"), "{log}");
}

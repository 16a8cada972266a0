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
    assert!(
        is_root(),
        "changing to --user nobody needs root (CI runs as root)"
    );
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
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
    let mut threads = thread_status(playd.child.id());
    // main (the engine), the shutdown watcher, the guest event loop: no
    // thread per connection.
    assert_eq!(threads.len(), 3, "{threads:?}");
    // And the player process's one thread.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", playd.child.id())).unwrap();
    let player: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let player_threads = thread_status(player);
    assert_eq!(player_threads.len(), 1, "{player_threads:?}");
    threads.extend(player_threads);
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

/// Both processes probed: the guest-facing one can make no socket, use
/// none it had, send no UDP, stat nothing; the player reaches its sound
/// server and is denied the rest, except what the kernel cannot deny
/// (reported as LIMIT).
#[test]
fn check_sandbox_probes_the_guest_facing_process_and_the_player() {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let _pulse = PrivatePulse::start(dir.path());
    open_to_everyone(dir.path());
    let server = format!("unix:{}", dir.path().join("native").display());
    let out = Command::new(env!("CARGO_BIN_EXE_host-playd"))
        .args(["--check-sandbox", "--pulse-server", &server])
        .envs(pulse_env(dir.path()))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    let (player, guest_facing) = report
        .split_once("guest-facing process")
        .unwrap_or_else(|| panic!("{report}"));
    assert!(player.contains("player process"), "{report}");
    for line in [
        "allowed  connect to the sound server's socket",
        "denied   socket(AF_INET)",
        "denied   send a UDP datagram",
        "denied   connect to 127.0.0.1:4713",
        "denied   open /etc/passwd",
        "denied   exec /bin/true",
    ] {
        assert!(player.contains(line), "player: {line:?}\n{report}");
    }
    for line in [
        "denied   socket(AF_UNIX)",
        "denied   socket(AF_INET)",
        "denied   send a UDP datagram",
        "denied   connect to the sound server's socket",
        "denied   connect to 127.0.0.1:4713",
        "denied   stat /etc/shadow",
        "denied   open /etc/passwd",
    ] {
        assert!(
            guest_facing.contains(line),
            "guest-facing: {line:?}\n{report}"
        );
    }
    assert!(!guest_facing.contains("LIMIT"), "{report}");
    assert!(
        !report.contains("ALLOWED") && !report.contains("FAILED"),
        "{report}"
    );
    assert_eq!(report.matches("probes as expected").count(), 2, "{report}");
}

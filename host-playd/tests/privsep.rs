//! Privilege separation, observed from outside against a real PulseAudio:
//! only the player process holds a connection to the sound server; killing
//! it ends the daemon cleanly; and a compromised guest-facing process —
//! played here by the test itself, speaking the internal protocol to a real
//! player — can ask for nothing a guest could not.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    have_pulseaudio, is_root, open_to_everyone, pulse_env, start_playd_env, thread_status, Flow,
    Guest, PrivatePulse,
};
use host_playd::player::wire::{Report, Request, MAX_PACKET, NO_VOLUME_CAP};
use host_playd::player::{PlayerConfig, PlayerLimits, PLAYER_FLAG};
use host_playd::sandbox::{ResourceLimits, Role, SandboxConfig, SandboxMode};
use nix::sys::socket::{self, recv, send, AddressFamily, MsgFlags, SockFlag, SockType};
use secure_tunnel_protocol::HostMessage;

fn pactl(dir: &std::path::Path, server: &str, args: &[&str]) -> String {
    let out = Command::new("pactl")
        .args(["--server", server])
        .args(args)
        .envs(pulse_env(dir))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sink_inputs(dir: &std::path::Path, server: &str) -> usize {
    pactl(dir, server, &["list", "short", "sink-inputs"])
        .lines()
        .count()
}

/// The children of `pid` (waits up to 5 s for one).
fn children(pid: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let kids: Vec<u32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if !kids.is_empty() || Instant::now() > deadline {
            return kids;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Field 19 of /proc/PID/stat.
fn nice_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(") ").unwrap().1;
    after.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// A private PulseAudio and host-playd playing on it, in a temp dir.
fn stack() -> (
    tempfile::TempDir,
    PrivatePulse,
    std::path::PathBuf,
    common::ChildGuard,
) {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    open_to_everyone(dir.path());
    let socket = dir.path().join("playd.sock");
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &["--pulse-server", &pulse.server, "--sink", "hostsink"],
        pulse_env(dir.path()),
    );
    (dir, pulse, socket, playd)
}

#[test]
fn only_the_player_holds_the_sound_server_connection() {
    let (dir, pulse, socket, playd) = stack();
    let mut guest = Guest::connect(&socket);
    guest.handshake(50_000);
    let mut flow = Flow::default();
    flow.pump(
        &mut guest,
        Instant::now() + Duration::from_millis(800),
        u64::MAX,
        &mut |n| vec![0x22; n],
    );
    assert!(
        flow.clocks.last().is_some_and(|c| c.1.playing),
        "{}",
        playd.stderr()
    );

    let daemon = playd.child.id();
    let kids = children(daemon);
    assert_eq!(kids.len(), 1, "one player process: {kids:?}");
    let player = kids[0];
    // PulseAudio's own view: its only client from host-playd is the player.
    let clients = pactl(dir.path(), &pulse.server, &["list", "clients"]);
    let pids: Vec<&str> = clients
        .lines()
        .filter_map(|l| l.trim().strip_prefix("application.process.id = "))
        .map(|v| v.trim_matches('"'))
        .collect();
    assert!(pids.contains(&player.to_string().as_str()), "{clients}");
    assert!(!pids.contains(&daemon.to_string().as_str()), "{clients}");

    // One thread in the player, confined; the guest-facing process keeps
    // its three.
    let threads = thread_status(player);
    assert_eq!(threads.len(), 1, "{threads:?}");
    let t = &threads[0];
    assert_eq!(t["Seccomp"], "2", "{t:?}");
    assert_eq!(t["NoNewPrivs"], "1", "{t:?}");
    assert_eq!(t["CapEff"], "0000000000000000", "{t:?}");
    if is_root() {
        assert!(t["Uid"].split_whitespace().all(|u| u == "65534"), "{t:?}");
        // The player (the audio path) runs raised, the process parsing
        // guest bytes does not.
        assert_eq!(nice_of(player), -11);
        assert_eq!(nice_of(daemon), nice_of(std::process::id()));
    }
    assert_eq!(thread_status(daemon).len(), 3);
    let log = playd.stderr();
    assert!(log.contains("guest_facing allowlist"), "{log}");
    assert!(log.contains("player allowlist"), "{log}");
}

#[test]
fn a_killed_player_ends_the_daemon_with_a_goodbye_to_every_guest() {
    let (dir, pulse, socket, mut playd) = stack();
    let baseline = 0;
    let mut guests: Vec<Guest> = (0..2)
        .map(|_| {
            let mut g = Guest::connect(&socket);
            g.handshake(50_000);
            g
        })
        .collect();
    assert_eq!(sink_inputs(dir.path(), &pulse.server), 2);
    let player = children(playd.child.id())[0];
    let killed = Instant::now();
    Command::new("kill")
        .args(["-KILL", &player.to_string()])
        .status()
        .unwrap();
    for guest in &mut guests {
        let got = guest.wait_closed(Duration::from_secs(2)).expect("closed");
        assert!(
            matches!(got.last(), Some(HostMessage::Goodbye { .. })),
            "{got:?}\n{}",
            playd.stderr()
        );
    }
    let status = loop {
        if let Ok(Some(status)) = playd.child.try_wait() {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "{}",
            playd.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "a dead player is a failure: {status}");
    let log = playd.stderr();
    assert!(log.contains("player process"), "{log}");
    // The server dropped the dead player's streams.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink_inputs(dir.path(), &pulse.server) != baseline {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(50));
    }
}

/// A player started by the test, which plays the guest-facing process.
struct RawPlayer {
    child: Child,
    sock: OwnedFd,
    buf: Vec<u8>,
}

impl Drop for RawPlayer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RawPlayer {
    fn start(dir: &std::path::Path, server: &str, max_streams: usize) -> RawPlayer {
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        nix::fcntl::fcntl(
            theirs.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let config = PlayerConfig {
            pulse: host_playd::backend::pulse::PulseConfig {
                server: Some(server.to_owned()),
                sink: Some("hostsink".to_owned()),
                source: None,
                allow_monitor: false,
            },
            epoch_monotonic_usec: 0,
            nice: None,
            log_level: "debug".to_owned(),
            limits: PlayerLimits {
                max_streams,
                min_latency_usec: 10_000,
                max_latency_usec: 2_000_000,
            },
            sandbox: SandboxConfig {
                mode: SandboxMode::BestEffort,
                role: Role::Player,
                user: None,
                read_only: vec!["/etc/pulse".into()],
                connect_unix: vec![server.trim_start_matches("unix:").into()],
                connect_tcp: Vec::new(),
                limits: ResourceLimits {
                    files: 32,
                    threads: 1,
                    memory_bytes: 1 << 30,
                },
            },
        };
        let log = std::fs::File::create(dir.join("player.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_host-playd"))
            .arg(PLAYER_FLAG)
            .arg(theirs.as_raw_fd().to_string())
            .arg(serde_json::to_string(&config).unwrap())
            .envs(pulse_env(dir))
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        drop(theirs);
        RawPlayer {
            child,
            sock: ours,
            buf: vec![0; MAX_PACKET + 1],
        }
    }

    fn send(&self, request: &Request) {
        let mut packet = Vec::new();
        request.encode(&mut packet);
        self.send_raw(&packet);
    }

    fn send_raw(&self, packet: &[u8]) {
        send(self.sock.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL).unwrap();
    }

    /// Reports until `until` says stop or 5 s pass (status reports skipped).
    fn reports(&mut self, mut until: impl FnMut(&[Report]) -> bool) -> Vec<Report> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while Instant::now() < deadline && !until(&got) {
            match recv(self.sock.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(n) => {
                    let report = Report::decode(&self.buf[..n]).unwrap();
                    if !matches!(report, Report::Status(_)) {
                        got.push(report);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
        }
        got
    }

    fn open(&self, id: u64, name: &str) {
        self.send(&Request::Open {
            id,
            spec: common::stereo_spec(),
            tlength_bytes: 19_200,
            volume_cap: NO_VOLUME_CAP,
            name: name.to_owned(),
        });
    }
}

fn count(reports: &[Report], f: impl Fn(&Report) -> bool) -> usize {
    reports.iter().filter(|r| f(r)).count()
}

#[test]
fn a_compromised_guest_facing_process_can_ask_only_what_a_guest_could() {
    assert!(
        have_pulseaudio(),
        "pulseaudio is not installed (scripts/setup.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    let mut player = RawPlayer::start(dir.path(), &pulse.server, 4);
    let got = player.reports(|r| !r.is_empty());
    assert_eq!(got, vec![Report::Server { connected: true }]);

    // More streams than the player's own limit: 4 open, the rest refused,
    // and the host never holds more than 4 sink-inputs.
    for id in 1..=40 {
        player.open(id, "guest\u{2028}FORGED LOG LINE\u{202E}");
    }
    let got = player.reports(|r| r.len() >= 40);
    assert_eq!(
        count(&got, |r| matches!(r, Report::Opened { .. })),
        4,
        "{got:?}"
    );
    assert_eq!(
        count(&got, |r| matches!(r, Report::Failed { .. })),
        36,
        "{got:?}"
    );
    assert_eq!(sink_inputs(dir.path(), &pulse.server), 4);
    // The name reached the mixer sanitised.
    let inputs = pactl(dir.path(), &pulse.server, &["list", "sink-inputs"]);
    assert!(inputs.contains("guest?FORGED LOG LINE?"), "{inputs}");
    assert!(!inputs.contains('\u{2028}') && !inputs.contains('\u{202E}'));

    // An id in use, audio not in whole frames, audio far past the
    // credit, a control flood: each fails the stream it names, only it.
    player.open(2, "again");
    player.send(&Request::Write {
        id: 1,
        data: vec![0; 3],
    });
    for _ in 0..40 {
        player.send(&Request::Write {
            id: 2,
            data: vec![0; 4_800],
        });
    }
    for i in 0..1_000 {
        player.send(&Request::Cork {
            id: 3,
            corked: i % 2 == 0,
        });
    }
    let got = player.reports(|r| r.len() >= 4);
    let failed: Vec<u64> = got
        .iter()
        .filter_map(|r| match r {
            Report::Failed { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 4, "{got:?}");
    for id in [1, 2, 3] {
        assert!(failed.contains(&id), "{got:?}");
    }
    // Stream 4 still plays.
    player.send(&Request::Write {
        id: 4,
        data: vec![0x11; 4_800],
    });
    thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink_inputs(dir.path(), &pulse.server) != 1 {
        assert!(Instant::now() < deadline, "only stream 4 is left");
        thread::sleep(Duration::from_millis(50));
    }

    // A malformed packet: the player stops, and the server drops its
    // streams with it.
    player.send_raw(&[0xEE, 1, 2, 3]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(status) = player.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the player did not stop");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("player.log")).unwrap();
    assert!(log.contains("malformed request"), "{log}");
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink_inputs(dir.path(), &pulse.server) != 0 {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(50));
    }
}

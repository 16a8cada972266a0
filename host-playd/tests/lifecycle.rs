//! Every host stream host-playd opens is closed, whatever the guest does and
//! whenever: closes at every point of the lifecycle, against a real private
//! PulseAudio, end with the host's sink-input count back at its baseline.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{have_pulseaudio, hello, pulse_env, start_playd_env, Guest, PrivatePulse};
use secure_tunnel_protocol::{encode_frame, GuestMessage, HostMessage};

fn frame(message: &GuestMessage) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame(message, &mut buf).unwrap();
    buf
}

fn hello_frame() -> Vec<u8> {
    frame(&GuestMessage::Hello(hello(20_000)))
}

/// Sink-inputs on the private server, by `pactl list short sink-inputs`.
fn sink_inputs(dir: &Path, server: &str) -> usize {
    let out = Command::new("pactl")
        .args(["--server", server, "list", "short", "sink-inputs"])
        .envs(pulse_env(dir))
        .output()
        .unwrap();
    assert!(out.status.success(), "pactl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits until the count is `want`, for at most `within`; the last count.
fn settle(dir: &Path, server: &str, want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let n = sink_inputs(dir, server);
        if n == want || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One way for a guest to end its connection.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Hello and Goodbye in one write.
    HelloGoodbye,
    /// Hello, then close at once.
    HelloClose,
    /// Hello, then a frame that does not decode.
    HelloGarbage,
    /// Hello, then Cork while the stream is being created.
    HelloCork,
    /// Hello, then half of a second Hello, then close.
    HelloHalf,
    /// Accepted, then close.
    AcceptedClose,
    /// Accepted, then Goodbye.
    AcceptedGoodbye,
    /// Accepted, then a flood of Cork/Uncork (over budget), then close.
    AcceptedFlood,
}

fn run(socket: &Path, ending: Ending) {
    let mut s = UnixStream::connect(socket).unwrap();
    let goodbye = frame(&GuestMessage::Goodbye {
        reason: "bye".into(),
    });
    let garbage = [8u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
    let mut bytes = hello_frame();
    match ending {
        Ending::HelloGoodbye => bytes.extend(&goodbye),
        Ending::HelloClose => {}
        Ending::HelloGarbage => bytes.extend(garbage),
        Ending::HelloCork => bytes.extend(frame(&GuestMessage::Cork)),
        Ending::HelloHalf => {
            let h = hello_frame();
            bytes.extend(&h[..h.len() / 2]);
        }
        Ending::AcceptedClose | Ending::AcceptedGoodbye | Ending::AcceptedFlood => {
            let reader = s.try_clone().unwrap();
            let mut guest = Guest::over(Box::new(s.try_clone().unwrap()), reader);
            guest.handshake(20_000);
            match ending {
                Ending::AcceptedGoodbye => guest.send(&GuestMessage::Goodbye {
                    reason: "done".into(),
                }),
                Ending::AcceptedFlood => {
                    let mut flood = Vec::new();
                    for _ in 0..200 {
                        flood.extend(frame(&GuestMessage::Cork));
                        flood.extend(frame(&GuestMessage::Uncork));
                    }
                    let _ = s.write_all(&flood);
                    let said = guest.wait_for(Duration::from_secs(3), |m| match m {
                        HostMessage::Goodbye { reason } => Some(reason.clone()),
                        _ => None,
                    });
                    let reason = said.expect("a Goodbye for the flood");
                    assert!(reason.contains("over budget"), "{reason}");
                }
                _ => {}
            }
            // The reader thread holds a second descriptor: end the socket
            // itself, as a guest's exit would.
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
    let _ = s.write_all(&bytes);
    // Half-close is what most of these guests do; read nothing.
    if matches!(ending, Ending::HelloHalf) {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
}

#[test]
fn every_close_at_every_point_leaves_no_sink_input_behind() {
    assert!(have_pulseaudio(), "the pulseaudio binary is not installed");
    let dir = tempfile::tempdir().unwrap();
    let pulse = PrivatePulse::start(dir.path());
    let socket = dir.path().join("playd.sock");
    let playd = start_playd_env(
        dir.path(),
        &socket,
        &["--pulse-server", &pulse.server, "--sink", "hostsink"],
        pulse_env(dir.path()),
    );
    let baseline = sink_inputs(dir.path(), &pulse.server);
    let endings = [
        Ending::HelloGoodbye,
        Ending::HelloClose,
        Ending::HelloGarbage,
        Ending::HelloCork,
        Ending::HelloHalf,
        Ending::AcceptedClose,
        Ending::AcceptedGoodbye,
        Ending::AcceptedFlood,
    ];
    for ending in endings {
        let rounds = match ending {
            Ending::AcceptedClose | Ending::AcceptedGoodbye | Ending::AcceptedFlood => 10,
            _ => 100,
        };
        for _ in 0..rounds {
            run(&socket, ending);
        }
        let left = settle(dir.path(), &pulse.server, baseline, Duration::from_secs(2));
        assert_eq!(
            left,
            baseline,
            "{rounds} x {ending:?}: {left} sink-inputs 2 s later, baseline {baseline}\n{}",
            playd.stderr()
        );
    }
    // And it still plays: a new guest is accepted.
    let mut guest = Guest::connect(&socket);
    guest.handshake(20_000);
    assert_eq!(sink_inputs(dir.path(), &pulse.server), baseline + 1);
    drop(guest);
    let left = settle(dir.path(), &pulse.server, baseline, Duration::from_secs(2));
    assert_eq!(left, baseline);
}

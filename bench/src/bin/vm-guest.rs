//! The guest half of `scripts/vm-test.sh`, run inside the VM from the host's
//! read-only root: starts a guest PulseAudio, connects to the host's control
//! port and does what it is told there, one line per command:
//!
//! - `ping H` → `pong H G`, G this side's clock (ms on the bench epoch);
//! - `run NAME SERVER` → loads the tunnel sink with `server=SERVER`, plays
//!   [`vm::signal`] (the bit-exact check) and then the latency probe's coded
//!   impulses (a libpulse player that predicts from `pa_stream_get_latency`
//!   when each will be heard), unloads the sink, and answers one
//!   `prediction INDEX WRITTEN_MS REPORTED_MS PREDICTED_MS` per counted
//!   impulse, `flags ...`, then `done` (or `error TEXT`);
//! - `quit` → exits.
//!
//! Usage: `vm-guest --control HOST:PORT`

#![forbid(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use secure_tunnel_bench::{
    clock,
    impulses::Coder,
    pa::{PlayConfig, PlayProbe},
};
use secure_tunnel_e2e::{
    find_sink, guest_daemon, signal::to_bytes, vm, Player, PulseDaemon, GUEST_SINK, MODULE_NAME,
};

fn main() -> ExitCode {
    clock::now(); // the epoch
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let control = match (args.next().as_deref(), args.next()) {
        (Some("--control"), Some(addr)) => addr,
        _ => return Err("usage: vm-guest --control HOST:PORT".to_owned()),
    };
    let stream = connect(&control, Duration::from_secs(30))?;
    let mut out = stream.try_clone().map_err(|e| e.to_string())?;
    let mut send = |line: &str| -> Result<(), String> {
        out.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("writing to the host: {e}"))
    };
    let guest = match guest_daemon() {
        Ok(g) => g,
        Err(e) => {
            send(&format!("error starting the guest PulseAudio: {e}"))?;
            return Err(e.to_string());
        }
    };
    send("hello")?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| format!("reading from the host: {e}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ping", h] => send(&format!("pong {h} {:.4}", clock::now() * 1e3))?,
            ["run", name, server] => {
                eprintln!("vm-guest: playing over {name} ({server})");
                match play(&guest, server) {
                    Ok(lines) => {
                        for l in lines {
                            send(&l)?;
                        }
                        send("done")?;
                    }
                    Err(e) => send(&format!(
                        "error {}",
                        format!("{e}\n{}", guest.log_tail()).replace('\n', " | ")
                    ))?,
                }
            }
            ["quit"] => return Ok(()),
            _ => send(&format!("error unknown command {line:?}"))?,
        }
    }
    Err("the host closed the control connection".to_owned())
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let start = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if start.elapsed() > timeout => {
                return Err(format!("connecting to {addr}: {e}"));
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// One playback over `server`; the answer lines.
fn play(guest: &PulseDaemon, server: &str) -> Result<Vec<String>, String> {
    let args = format!("server={server} sink_name={GUEST_SINK} {}", vm::MODULE_ARGS);
    let index = guest.load_module(MODULE_NAME, &args)?;
    let result = play_loaded(guest);
    let unloaded = guest.pactl_ok(&["unload-module", &index.to_string()]);
    let lines = result?;
    unloaded.map_err(|e| e.to_string())?;
    Ok(lines)
}

fn play_loaded(guest: &PulseDaemon) -> Result<Vec<String>, String> {
    // Let the module connect and handshake before anything is played: audio
    // rendered while the host is unreachable is consumed, not kept.
    thread::sleep(Duration::from_secs(1));
    Player::play(
        guest,
        GUEST_SINK,
        to_bytes(&vm::signal()),
        // 1.5 s of audio; an emulated guest on a loaded machine is slow.
        Duration::from_secs(120),
    )
    .map_err(|e| format!("playing the noise: {e}"))?;
    let probe = PlayProbe::start(PlayConfig {
        server: guest.server(),
        sink: GUEST_SINK.to_owned(),
        tlength_ms: 10.0,
        coder: Coder::every_ms(vm::IMPULSE_PERIOD_MS),
    })
    .map_err(|e| format!("starting the latency probe: {e:#}"))?;
    let start = clock::now();
    thread::sleep(Duration::from_secs_f64(vm::PROBE_SECONDS / 2.0));
    let flags = find_sink(guest, GUEST_SINK)
        .map_err(|e| e.to_string())?
        .flags
        .join(" ");
    thread::sleep(Duration::from_secs_f64(vm::PROBE_SECONDS / 2.0));
    let predictions = probe
        .stop()
        .map_err(|e| format!("the latency probe: {e:#}"))?;
    let mut lines: Vec<String> = predictions
        .iter()
        .filter(|p| {
            p.written >= start + vm::PROBE_WARMUP_S && p.written < start + vm::PROBE_SECONDS - 1.0
        })
        .map(|p| {
            format!(
                "prediction {} {:.4} {:.4} {:.4}",
                p.index,
                p.written * 1e3,
                p.reported * 1e3,
                p.predicted * 1e3
            )
        })
        .collect();
    lines.push(format!("flags {flags}"));
    Ok(lines)
}

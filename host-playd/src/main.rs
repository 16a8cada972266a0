//! host-playd's entry point: take systemd's sockets, parse arguments, set up
//! logging and signals, run the daemon (or the sandbox self-check).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use host_playd::clock::HostClock;
use host_playd::daemon::{player_config, sandbox_config, BackendChoice};
use host_playd::player;
use host_playd::sandbox::{self, check};
use host_playd::{Args, Daemon};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

fn main() -> ExitCode {
    // The player process (started by the daemon itself, never by hand).
    let argv: Vec<String> = std::env::args().collect();
    if let Some(flag) = argv.get(1) {
        if flag == player::PLAYER_FLAG || flag == player::PLAYER_CHECK_FLAG {
            return player_main(flag == player::PLAYER_CHECK_FLAG, &argv[2..]);
        }
        if flag == "ctl" {
            return ctl_main(&argv[2..]);
        }
    }
    // Before anything else opens a descriptor: the sockets systemd passed.
    let inherited = host_playd::sys::take_listen_fds();
    let args = Args::parse();
    if args.check_config {
        return match args.check_config() {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("host-playd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    env_logger::Builder::new()
        .filter_level(args.log_level.into())
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    let result = if args.check_sandbox {
        check_sandbox(&args)
    } else {
        inherited
            .map_err(|e| anyhow::anyhow!("systemd socket activation: {e}"))
            .and_then(|inherited| run(&args, inherited).map(|()| ExitCode::SUCCESS))
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `host-playd ctl ...`: one request to a running daemon's control socket.
fn ctl_main(rest: &[String]) -> ExitCode {
    let args = host_playd::cli::CtlArgs::parse_from(
        std::iter::once("host-playd ctl".to_owned()).chain(rest.iter().cloned()),
    );
    match host_playd::control::request(&args.path(), args.request()) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("host-playd ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--nice` when not given: PulseAudio's own daemon runs at -11, and the
/// guest's audio must be scheduled ahead of ordinary host work. It applies to
/// the player process (the audio path) only, never to the process that
/// reads guest input.
const DEFAULT_NICE: i32 = -11;

fn run(args: &Args, inherited: Vec<std::os::fd::OwnedFd>) -> anyhow::Result<()> {
    let config = args.to_config().context("invalid options")?;
    let nice = args.nice.unwrap_or(DEFAULT_NICE);
    // Before any thread exists. With PulseAudio, the player process gets
    // the raised priority and this one keeps the starting niceness; with
    // the in-process null backend only the engine thread (this one) is
    // raised, and the event loop returns to the starting niceness before it
    // reads guest bytes (host_playd::sys::return_to_base_nice).
    host_playd::sys::remember_base_nice();
    let pulse = matches!(config.backend, BackendChoice::Pulse(_));
    if !pulse {
        set_priority(nice);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .with_context(|| format!("cannot handle signal {signal}"))?;
    }
    // SIGUSR1 logs every client's statistics (see host_playd::stats).
    let stats = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGUSR1, Arc::clone(&stats))
        .with_context(|| format!("cannot handle signal {SIGUSR1}"))?;
    let daemon = Daemon::bind_with(config, inherited)
        .context("cannot start host-playd")?
        .with_stats_request(stats)
        .with_player_nice(pulse.then_some(nice));
    log::info!(
        "host-playd {} starting on {}",
        env!("CARGO_PKG_VERSION"),
        daemon.listen_names().join(", ")
    );
    daemon.run(&stop).context("host-playd failed")
}

/// `--check-sandbox`: each process's sandbox, probed from inside it. The
/// player's half runs first, in a player process of its own (it prints its
/// report); then this process enters the guest-facing sandbox and probes
/// it. Exit 0 only if every probe of both had the expected result.
fn check_sandbox(args: &Args) -> anyhow::Result<ExitCode> {
    let config = args.to_config().context("invalid options")?;
    let mut player_ok = true;
    let player = player_config(&config, HostClock::new(), None);
    if let Some(player) = &player {
        let exe = std::path::Path::new(player::spawn::SELF_EXE);
        let mut spawned =
            player::spawn::spawn(exe, player, true).context("cannot start the player check")?;
        let status = spawned
            .child
            .wait()
            .context("waiting for the player check")?;
        player_ok = status.success();
    }
    let sandbox = sandbox_config(&config, 1);
    let scratch = std::env::temp_dir();
    // The guest-facing process must not reach the player's server.
    let server_sockets = player.map(|p| p.sandbox.connect_unix).unwrap_or_default();
    let prepared = check::Prepared::make();
    let mut status = check::SelfStatus::open().context("cannot open /proc/self/status")?;
    sandbox::apply(&sandbox).context("cannot enter the sandbox")?;
    println!(
        "host-playd sandbox check (--sandbox {}), guest-facing process",
        sandbox.mode
    );
    print_status(&mut status);
    let mut probes = sandbox::run_probes(&scratch);
    probes.extend(check::guest_facing_probes(&prepared, &server_sockets));
    let ok = print_probes(&probes);
    Ok(if ok && player_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_status(status: &mut check::SelfStatus) {
    for field in [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
        "Seccomp_filters",
    ] {
        let value = status.field(field).unwrap_or_else(|e| format!("? ({e})"));
        println!("  {field}: {value}");
    }
}

/// Prints each probe and a result line; whether all went as expected.
fn print_probes(probes: &[check::ProbeOutcome]) -> bool {
    for probe in probes {
        println!("{}", probe.line());
    }
    let bad = probes.iter().filter(|p| !p.as_expected()).count();
    if bad == 0 {
        let limits = probes.iter().filter(|p| p.is_kernel_limit()).count();
        println!(
            "result: all {} probes as expected ({limits} beyond what this kernel can deny)",
            probes.len()
        );
        true
    } else {
        println!("result: {bad} of {} probes NOT denied", probes.len());
        false
    }
}

/// The player process: `--internal-player FD JSON` serves the daemon;
/// `--internal-player-check FD JSON` enters the player's sandbox, probes
/// it, prints the report and exits.
fn player_main(check_only: bool, rest: &[String]) -> ExitCode {
    let (Some(fd), Some(json)) = (rest.first(), rest.get(1)) else {
        eprintln!(
            "host-playd: {} is internal to host-playd",
            player::PLAYER_FLAG
        );
        return ExitCode::FAILURE;
    };
    let parsed = player::process::parse_args(fd, json).and_then(|(fd, config)| {
        host_playd::sys::adopt_player_socket(fd)
            .map(|sock| (sock, config))
            .map_err(player::process::PlayerError::Start)
    });
    let (sock, config) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("host-playd player: {e}");
            return ExitCode::FAILURE;
        }
    };
    env_logger::Builder::new()
        .parse_filters(&config.log_level)
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    if check_only {
        return player_check(&config);
    }
    match player::process::run(sock, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("player: {e}");
            ExitCode::FAILURE
        }
    }
}

fn player_check(config: &player::PlayerConfig) -> ExitCode {
    let scratch = std::env::temp_dir();
    let prepared = check::Prepared::make();
    let Ok(mut status) = check::SelfStatus::open() else {
        println!("player: cannot open /proc/self/status");
        return ExitCode::FAILURE;
    };
    if let Err(e) = sandbox::apply(&config.sandbox) {
        println!("player: cannot enter the sandbox: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "host-playd sandbox check (--sandbox {}), player process",
        config.sandbox.mode
    );
    print_status(&mut status);
    let mut probes = sandbox::run_probes(&scratch);
    probes.extend(check::player_probes(&prepared, &config.sandbox));
    if print_probes(&probes) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Applies `--nice`; a refusal (no CAP_SYS_NICE, e.g. a user service) is
/// logged and the daemon runs at the niceness it inherited.
fn set_priority(nice: i32) {
    let current = host_playd::sys::nice().unwrap_or(0);
    if current == nice {
        return;
    }
    match host_playd::sys::set_nice(nice) {
        Ok(()) => log::debug!("running at nice {nice}"),
        Err(e) => log::info!(
            "running at nice {current}: nice {nice} was refused ({e}); it needs \
             CAP_SYS_NICE or a higher RLIMIT_NICE (systemd: LimitNICE=)"
        ),
    }
}

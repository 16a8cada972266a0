//! host-playd's entry point: take systemd's sockets, parse arguments, set up
//! logging and signals, run the daemon (or the sandbox self-check).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use host_playd::daemon::sandbox_config;
use host_playd::sandbox::{self, check};
use host_playd::{Args, Daemon};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

fn main() -> ExitCode {
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

/// `--nice` when not given: PulseAudio's own daemon runs at -11, and the
/// guest's audio must be scheduled ahead of ordinary host work. It applies to
/// the engine thread only, never to the threads reading guest input.
const DEFAULT_NICE: i32 = -11;

fn run(args: &Args, inherited: Vec<std::os::fd::OwnedFd>) -> anyhow::Result<()> {
    let config = args.to_config().context("invalid options")?;
    // Before any thread exists. Only the engine thread (this one: it
    // drives the sound-server connection) keeps the raised priority: the
    // acceptors return to the starting niceness before they start the
    // threads that parse guest bytes (host_playd::sys::return_to_base_nice).
    host_playd::sys::remember_base_nice();
    set_priority(args.nice.unwrap_or(DEFAULT_NICE));
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
        .with_stats_request(stats);
    log::info!(
        "host-playd {} starting on {}",
        env!("CARGO_PKG_VERSION"),
        daemon.listen_names().join(", ")
    );
    daemon.run(&stop).context("host-playd failed")
}

/// `--check-sandbox`: exit 0 only if every probe was denied.
fn check_sandbox(args: &Args) -> anyhow::Result<ExitCode> {
    let config = args.to_config().context("invalid options")?;
    let sandbox = sandbox_config(&config, 1);
    let scratch = std::env::temp_dir();
    let mut status = check::SelfStatus::open().context("cannot open /proc/self/status")?;
    sandbox::apply(&sandbox).context("cannot enter the sandbox")?;
    println!("host-playd sandbox check (--sandbox {})", sandbox.mode);
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
    let probes = sandbox::run_probes(&scratch);
    for probe in &probes {
        match &probe.result {
            Err(reason) => println!("denied   {}: {reason}", probe.what),
            Ok(()) => println!("ALLOWED  {}", probe.what),
        }
    }
    let allowed = probes.iter().filter(|p| !p.denied()).count();
    if allowed == 0 {
        println!("result: all {} probes denied", probes.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("result: {allowed} of {} probes NOT denied", probes.len());
        Ok(ExitCode::FAILURE)
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

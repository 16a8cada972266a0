//! host-playd's entry point: parse arguments, set up logging and signals,
//! run the daemon.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use host_playd::{Args, Daemon};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::new()
        .filter_level(args.log_level.into())
        .format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = args.to_config().context("invalid options")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .with_context(|| format!("cannot handle signal {signal}"))?;
    }
    let daemon = Daemon::bind(config).context("cannot start host-playd")?;
    log::info!(
        "host-playd {} starting on {}",
        env!("CARGO_PKG_VERSION"),
        daemon.listen_names().join(", ")
    );
    daemon.run(&stop).context("host-playd failed")
}

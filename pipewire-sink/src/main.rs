//! `secure-tunnel-pipewire`: the PipeWire guest front end. A thin binary:
//! the arguments (`secure_tunnel_pipewire::args`, in the library so that
//! the man page is generated from them), the pacing of graph cycles ([`pacer`], pure),
//! the SPA pods ([`pods`]) and the PipeWire session ([`service`]) over the
//! shared guest core (`secure-tunnel-guest`).
#![forbid(unsafe_code)]

mod pacer;
mod pods;
mod service;
mod source_node;

use std::time::Duration;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use log::{error, info};
use secure_tunnel_guest::engine::Engine;
use secure_tunnel_guest::source::SourceEngine;
use secure_tunnel_pipewire::args;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::service::{End, Service};
use crate::source_node::SourceState;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = args::Args::parse();
    if let Err(e) = run(&args) {
        error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(args: &args::Args) -> Result<()> {
    let settings = args.settings()?;
    pipewire::init();
    let description = format!("Secure tunnel to {}", settings.tunnel.server);
    let retry = Duration::from_millis(u64::from(settings.tunnel.reconnect_interval_msec));
    let microphone = settings.capture.map(|c| {
        let latency_msec = c.latency_msec;
        let description = format!("Secure tunnel microphone from {}", c.server);
        (
            SourceState::new(SourceEngine::new(c, settings.spec.clone()), latency_msec),
            description,
        )
    });
    let engine = Engine::new(settings.tunnel, settings.spec);
    // SIGTERM and SIGINT only set a flag; the loops check it every few ms.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing a signal handler")?;
    }
    let service = Service::new(engine, microphone, description, stop);
    while !service.stopped() {
        match service.run_session() {
            Ok(End::Stop) => break,
            Ok(End::Lost) => info!("PipeWire session ended; reconnecting"),
            Err(e) => service.session_failed(format!("{e:#}")),
        }
        service.idle_for(retry);
    }
    service.shutdown("service stopped");
    info!("stopped");
    Ok(())
}

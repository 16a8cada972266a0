//! The ways a guest's sound reaches the host, all on one host PulseAudio
//! (null sink `hostsink`, norewinds=1, 48 kHz s16 stereo): four from a
//! PulseAudio guest and two from a PipeWire guest. Each is loaded for its
//! turn and unloaded after it, so only one plays at a time.

use std::{
    fs::File,
    io,
    net::{TcpListener, TcpStream},
    path::PathBuf,
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use secure_tunnel_e2e::{
    guest_daemon, host_daemon, HostPlayd, PipeWireStack, PulseDaemon, TunnelService, HOST_SINK,
    MODULE_NAME,
};

const FORMAT: &str = "rate=48000 channels=2 format=s16le";

/// Host PulseAudio, host-playd on it, and a guest PulseAudio that can load
/// our module and PulseAudio's own.
#[derive(Debug)]
pub struct World {
    /// The guest PulseAudio (dropped first).
    pub guest: PulseDaemon,
    /// host-playd, playing into the host's `hostsink`.
    pub playd: HostPlayd,
    /// The host PulseAudio.
    pub host: PulseDaemon,
    /// host-playd's socket.
    pub socket: PathBuf,
    /// A private PipeWire guest (PipeWire + WirePlumber + pipewire-pulse)
    /// for the PipeWire rows, when asked for.
    pub pipewire: Option<PipeWireStack>,
}

impl World {
    /// Starts the three processes.
    pub fn start() -> Result<Self> {
        Self::start_playd(&[])
    }

    /// Starts them, host-playd with `playd_args` added.
    pub fn start_playd(playd_args: &[&str]) -> Result<Self> {
        let host = host_daemon().context("starting the host PulseAudio")?;
        let socket = host.dir().join("playd.sock");
        let playd = HostPlayd::start_with(&socket, Some(&host), playd_args)
            .context("starting host-playd")?;
        let guest = guest_daemon().context("starting the guest PulseAudio")?;
        Ok(Self {
            guest,
            playd,
            host,
            socket,
            pipewire: None,
        })
    }

    /// Adds the PipeWire guest the PipeWire rows play through.
    pub fn with_pipewire(mut self) -> Result<Self> {
        self.pipewire = Some(PipeWireStack::start().context("starting a private PipeWire")?);
        Ok(self)
    }

    fn pipewire(&self) -> Result<&PipeWireStack> {
        self.pipewire
            .as_ref()
            .context("a PipeWire row needs World::with_pipewire")
    }

    /// `module-secure-tunnel-sink` args for a `latency_msec` target.
    pub fn ours_args(&self, latency_ms: u32) -> String {
        format!(
            "server=unix:{} sink_name=secure_tunnel {FORMAT} latency_msec={latency_ms}",
            self.socket.display()
        )
    }
}

/// Which path a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// The player on the host PulseAudio itself: the method's calibration.
    Direct,
    /// module-secure-tunnel-sink + host-playd.
    Ours,
    /// PulseAudio's module-tunnel-sink-new (native protocol).
    TunnelNew,
    /// module-pipe-sink, a FIFO copied to module-simple-protocol-tcp.
    Pipe,
    /// A PipeWire guest: secure-tunnel-pipewire + host-playd, the player
    /// on pipewire-pulse.
    PwOurs,
    /// A PipeWire guest: PipeWire's module-pulse-tunnel (pipewire-pulse's
    /// `module-tunnel-sink`) into the host PulseAudio.
    PwTunnel,
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 6] = [
        Row::Direct,
        Row::Ours,
        Row::TunnelNew,
        Row::Pipe,
        Row::PwOurs,
        Row::PwTunnel,
    ];

    /// The row's short name, for `--rows`.
    pub fn key(self) -> &'static str {
        match self {
            Row::Direct => "direct",
            Row::Ours => "ours",
            Row::TunnelNew => "tunnel-new",
            Row::Pipe => "pipe",
            Row::PwOurs => "pw-ours",
            Row::PwTunnel => "pw-tunnel",
        }
    }

    /// The row's label.
    pub fn name(self) -> &'static str {
        match self {
            Row::Direct => "direct on host (calibration)",
            Row::Ours => "module-secure-tunnel-sink",
            Row::TunnelNew => "module-tunnel-sink-new",
            Row::Pipe => "pipe-sink + simple-protocol-tcp",
            Row::PwOurs => "PipeWire: secure-tunnel-pipewire",
            Row::PwTunnel => "PipeWire: module-pulse-tunnel",
        }
    }

    /// Whether the row plays through the PipeWire guest.
    pub fn is_pipewire(self) -> bool {
        matches!(self, Row::PwOurs | Row::PwTunnel)
    }

    /// Loads what the row needs; `latency_ms` is our module's
    /// `latency_msec` (the other rows have no such setting in 16.1).
    pub fn load(self, world: &World, latency_ms: u32) -> Result<Loaded> {
        let mut loaded = Loaded {
            server: world.guest.server(),
            sink: String::new(),
            guest_modules: Vec::new(),
            host_modules: Vec::new(),
            forwarder: None,
            pipewire_modules: Vec::new(),
            service: None,
        };
        match self {
            Row::Direct => {
                loaded.server = world.host.server();
                loaded.sink = HOST_SINK.to_owned();
            }
            Row::Ours => {
                let args = world.ours_args(latency_ms);
                loaded
                    .guest_modules
                    .push(load(&world.guest, MODULE_NAME, &args)?);
                loaded.sink = "secure_tunnel".to_owned();
            }
            Row::TunnelNew => {
                let args = format!(
                    "server={} sink={HOST_SINK} sink_name=patnew {FORMAT}",
                    world.host.server()
                );
                loaded
                    .guest_modules
                    .push(load(&world.guest, "module-tunnel-sink-new", &args)?);
                loaded.sink = "patnew".to_owned();
            }
            Row::Pipe => {
                let port = free_port()?;
                let args = format!(
                    "port={port} listen=127.0.0.1 playback=true record=false sink={HOST_SINK} {FORMAT}"
                );
                loaded
                    .host_modules
                    .push(load(&world.host, "module-simple-protocol-tcp", &args)?);
                let fifo = world.guest.dir().join("pipe.fifo");
                // Without pacing, pipe-sink writes as fast as the FIFO takes
                // it and the loopback TCP buffers swallow tens of seconds of
                // audio within a second: the set-up is unusable, let alone
                // measurable. Paced by the system clock it is what a simple
                // Qubes-like deployment gets.
                let args = format!(
                    "file={} sink_name=pipe use_system_clock_for_timing=yes {FORMAT}",
                    fifo.display()
                );
                loaded
                    .guest_modules
                    .push(load(&world.guest, "module-pipe-sink", &args)?);
                loaded.sink = "pipe".to_owned();
                loaded.forwarder = Some(forward(fifo, port)?);
            }
            Row::PwOurs => {
                let pw = world.pipewire()?;
                let server = format!("unix:{}", world.socket.display());
                let latency = latency_ms.to_string();
                let service =
                    TunnelService::start(pw, &["--server", &server, "--latency-msec", &latency])
                        .context("starting secure-tunnel-pipewire")?;
                loaded.service = Some(service);
                pw.wait_sink("secure_tunnel", Duration::from_secs(10))
                    .context("secure-tunnel-pipewire's sink")?;
                loaded.server = pw.pulse_server();
                loaded.sink = "secure_tunnel".to_owned();
            }
            Row::PwTunnel => {
                let pw = world.pipewire()?;
                let args = format!(
                    "server={} sink={HOST_SINK} sink_name=pwtunnel {FORMAT}",
                    world.host.server()
                );
                loaded
                    .pipewire_modules
                    .push(pw.load_module("module-tunnel-sink", &args)?);
                pw.wait_sink("pwtunnel", Duration::from_secs(10))
                    .context("module-pulse-tunnel's sink")?;
                loaded.server = pw.pulse_server();
                loaded.sink = "pwtunnel".to_owned();
            }
        }
        Ok(loaded)
    }
}

/// What a row loaded, to unload after its turn.
#[derive(Debug)]
pub struct Loaded {
    /// Server the player connects to.
    pub server: String,
    /// Sink the player plays into.
    pub sink: String,
    guest_modules: Vec<u32>,
    host_modules: Vec<u32>,
    forwarder: Option<JoinHandle<io::Result<u64>>>,
    /// Modules loaded through pipewire-pulse.
    pipewire_modules: Vec<u32>,
    /// secure-tunnel-pipewire, stopped on unload.
    service: Option<TunnelService>,
}

impl Loaded {
    /// The pid of secure-tunnel-pipewire, on its row.
    pub fn service_pid(&self) -> Option<u32> {
        self.service.as_ref().map(TunnelService::pid)
    }

    /// Unloads the guest's modules, then the host's, then waits for the
    /// forwarder: with the host end gone it cannot stay blocked on a full
    /// socket. Every step is tried; the first error is returned.
    pub fn unload(mut self, world: &World) -> Result<()> {
        let mut result = Ok(());
        for m in self.guest_modules.drain(..).rev() {
            result = result.and(unload(&world.guest, m));
        }
        for m in self.host_modules.drain(..).rev() {
            result = result.and(unload(&world.host, m));
        }
        if let Some(pw) = &world.pipewire {
            for m in self.pipewire_modules.drain(..).rev() {
                let done = pw
                    .pactl(&["unload-module", &m.to_string()])
                    .map_err(anyhow::Error::from)
                    .and_then(|o| {
                        o.status
                            .success()
                            .then_some(())
                            .with_context(|| format!("unloading pipewire-pulse module {m}"))
                    });
                result = result.and(done);
            }
        }
        // Dropping the service stops it (SIGTERM, then SIGKILL).
        drop(self.service.take());
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
        result
    }
}

/// Loads `name args` on `daemon`, with the daemon's log on failure.
pub fn load(daemon: &PulseDaemon, name: &str, args: &str) -> Result<u32> {
    daemon
        .load_module(name, args)
        .map_err(|e| anyhow!("load-module {name} {args}: {e}\n{}", daemon.log_tail()))
}

/// Unloads module `index` of `daemon`.
pub fn unload(daemon: &PulseDaemon, index: u32) -> Result<()> {
    daemon
        .pactl_ok(&["unload-module", &index.to_string()])
        .map(drop)
        .with_context(|| format!("unloading module {index}"))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(l.local_addr().context("reading a bound port")?.port())
}

/// Copies the FIFO into the TCP socket until pipe-sink closes it: the
/// "forwarder" a Qubes-like set-up puts between the guest and the host.
fn forward(fifo: PathBuf, port: u16) -> Result<JoinHandle<io::Result<u64>>> {
    // pipe-sink holds the FIFO open read-write, so this open does not block.
    let mut from = File::open(&fifo).with_context(|| format!("opening {}", fifo.display()))?;
    let mut to = connect_retry(port)?;
    thread::Builder::new()
        .name("pipe-forwarder".into())
        .spawn(move || io::copy(&mut from, &mut to))
        .context("spawning the pipe forwarder")
}

fn connect_retry(port: u16) -> Result<TcpStream> {
    let mut last = None;
    for _ in 0..50 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "connecting to module-simple-protocol-tcp on 127.0.0.1:{port}: {last:?}"
    ))
}

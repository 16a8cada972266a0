//! Wiring: bind the listeners, start the engine thread with its backend, run
//! until asked to stop, then say goodbye and clean up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::backend::null::NullBackend;
use crate::backend::pulse::{PulseBackend, PulseConfig};
use crate::backend::{AudioBackend, BackendError};
use crate::clock::HostClock;
use crate::connection::Counters;
use crate::engine::{self, Command, Engine, EngineConfig, WakeReceiver};
use crate::listen::{BindError, ListenAddr, Listener};

/// Connections beyond `max_clients` that may be in their handshake at once.
pub const EXTRA_CONNECTIONS: usize = 16;
/// How long shutdown waits for goodbyes to be written.
pub const GOODBYE_GRACE: Duration = Duration::from_secs(1);

/// Which audio output to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// The host's PulseAudio.
    Pulse(PulseConfig),
    /// The null test backend, its clock skewed by `skew_ppm`.
    Null { skew_ppm: i32 },
}

/// Everything the daemon needs to run.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub listen: Vec<ListenAddr>,
    pub backend: BackendChoice,
    pub max_clients: usize,
    pub handshake_timeout: Duration,
}

/// Why the daemon could not start or stopped early.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("no listen address given")]
    NoListener,
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot start a thread or socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the engine thread stopped unexpectedly")]
    EngineDied,
}

/// A daemon with its listeners bound, ready to run.
#[derive(Debug)]
pub struct Daemon {
    config: DaemonConfig,
    listeners: Vec<Listener>,
}

impl Daemon {
    /// Binds every listen address; nothing is accepted until [`Daemon::run`].
    pub fn bind(config: DaemonConfig) -> Result<Daemon, DaemonError> {
        if config.listen.is_empty() {
            return Err(DaemonError::NoListener);
        }
        let listeners = config
            .listen
            .iter()
            .map(Listener::bind)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Daemon { config, listeners })
    }

    /// The bound addresses, as they appear in logs.
    pub fn listen_names(&self) -> Vec<String> {
        self.listeners.iter().map(|l| l.name().to_owned()).collect()
    }

    /// Serves guests until `stop` becomes true, then says goodbye to every
    /// guest and removes the unix socket files.
    pub fn run(self, stop: &AtomicBool) -> Result<(), DaemonError> {
        let clock = HostClock::new();
        let (handle, commands, wake) = engine::channel()?;
        let engine_config = EngineConfig {
            max_clients: self.config.max_clients,
            handshake_timeout: self.config.handshake_timeout,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let choice = self.config.backend.clone();
        let engine_thread = thread::Builder::new()
            .name("engine".to_owned())
            .spawn(move || {
                // libpulse objects are not Send: the backend is born here.
                match build_backend(&choice, clock, &wake) {
                    Ok(backend) => {
                        let _ = ready_tx.send(Ok(()));
                        run_engine(backend, clock, engine_config, commands, wake);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(DaemonError::EngineDied),
        }

        let counters = Counters::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let max_connections = self.config.max_clients + EXTRA_CONNECTIONS;
        for listener in &self.listeners {
            listener.spawn_acceptor(
                handle.clone(),
                clock,
                counters.clone(),
                Arc::clone(&next_id),
                max_connections,
            )?;
            log::info!("listening on {}", listener.name());
        }

        while !stop.load(Ordering::SeqCst) {
            if engine_thread.is_finished() {
                return Err(DaemonError::EngineDied);
            }
            thread::sleep(Duration::from_millis(50));
        }
        log::info!("shutting down");
        let _ = handle.send(Command::Shutdown);
        if engine_thread.join().is_err() {
            log::error!("the engine thread panicked");
        }
        let deadline = Instant::now() + GOODBYE_GRACE;
        while counters.writers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        // Dropping the listeners removes their socket files.
        drop(self.listeners);
        Ok(())
    }
}

fn build_backend(
    choice: &BackendChoice,
    clock: HostClock,
    wake: &WakeReceiver,
) -> Result<Box<dyn AudioBackend>, BackendError> {
    Ok(match choice {
        BackendChoice::Pulse(config) => Box::new(PulseBackend::new(config.clone(), clock, wake)?),
        BackendChoice::Null { skew_ppm } => Box::new(NullBackend::new(clock, *skew_ppm)),
    })
}

fn run_engine(
    backend: Box<dyn AudioBackend>,
    clock: HostClock,
    config: EngineConfig,
    commands: mpsc::Receiver<Command>,
    wake: WakeReceiver,
) {
    Engine::new(backend, clock, config).run(commands, wake);
}

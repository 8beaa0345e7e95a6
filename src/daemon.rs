//! `aa-policyd run`: wires the reconcile loop, the watcher, the probe event
//! reader, the control socket and the signals together, and shuts them down
//! in order.
//!
//! Why this exists apart from `reconcile`: the loop is the policy logic;
//! this file is only plumbing — which thread runs what, and what happens on
//! SIGHUP, SIGTERM and SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::server::{self, BindError, ServerContext, SocketClaim};
use crate::control::wire::WireEvent;
use crate::dns::resolver::ResolverSockets;
use crate::dns::{DnsDenial, DnsEgress, DnsOptions};
use crate::events::{self, DenialCounter, EventKind, RateLimitedLog};
use crate::lifecycle;
use crate::loader::LoaderError;
use crate::loader::kernel::{self, KernelLoader, MarkReader};
use crate::reconcile::{Command, Reconciler, StartError, Trigger};
use crate::watch::{self, WatchError};

/// How `run` was asked to behave.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub policy: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    /// Watch the policy file (off for a daemon driven by `aa-policyd watch`).
    pub watch: bool,
    /// The slow periodic hash check.
    pub periodic_check: Duration,
    /// DNS-aware egress: upstream servers and TTL floor.
    pub dns: DnsOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("control socket: {0}")]
    Bind(#[from] BindError),
    #[error("{0}")]
    Watch(#[from] WatchError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Events kept for slow subscribers before they start missing some.
const SUBSCRIBER_BACKLOG: usize = 4096;
/// Deny events logged per second before the rest are counted instead.
const EVENTS_LOGGED_PER_SECOND: u32 = 200;

pub fn run(options: &RunOptions) -> Result<(), DaemonError> {
    lifecycle::raise_open_file_limit();
    // Before anything is created: a daemon refused here leaves nothing.
    let claim = SocketClaim::take(&options.socket)?;
    let mut loader = KernelLoader::open(&options.pin_dir)?;
    let ring = loader.take_events();
    let (events, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
    let denials = Arc::new(DenialCounter::default());
    let dns = Arc::new(DnsEgress::open(
        &options.pin_dir,
        options.dns.clone(),
        denial_reporter(events.clone(), Arc::clone(&denials)),
    )?);
    // Bound before the first generation can redirect DNS to it. Without
    // it the probes redirect nothing, and confined DNS under host rules is
    // refused: enforcement does not depend on it.
    let resolver = match ResolverSockets::bind(&dns) {
        Ok(sockets) => Some(sockets),
        Err(error) => {
            tracing::error!(
                "cannot listen for confined processes' DNS on loopback ({error}): under host names in network.allowlist their DNS is refused"
            );
            None
        }
    };
    let mut reconciler = Reconciler::new(loader, &options.policy, options.watch, Arc::clone(&dns))?;
    // The watch exists before the startup read: a save made while the
    // daemon starts queues a reload instead of waiting for the periodic check.
    let (commands, queue) = mpsc::unbounded_channel();
    let _watch = if options.watch {
        let commands = commands.clone();
        Some(watch::spawn(
            &options.policy,
            options.periodic_check,
            move |trigger| {
                let _ = commands.send(Command::Reload(trigger));
            },
        )?)
    } else {
        None
    };
    reconciler.retry_with(commands.clone());
    reconciler.start()?;
    let status = reconciler.status_handle();
    let _pin_watch = {
        let commands = commands.clone();
        crate::pin_watch::spawn(&options.pin_dir, move || {
            let _ = commands.send(Command::RepairPins);
        })
        .map_err(|source| DaemonError::Io {
            context: "starting the pin watcher",
            source,
        })?
    };

    let loop_thread = std::thread::Builder::new()
        .name("reconcile".into())
        .spawn(move || reconciler.run(queue))
        .map_err(|source| DaemonError::Io {
            context: "starting the reconcile thread",
            source,
        })?;
    if let Some(ring) = ring {
        let (events, commands) = (events.clone(), commands.clone());
        let drops = kernel::pinned_counters(&options.pin_dir);
        let denials = Arc::clone(&denials);
        std::thread::Builder::new()
            .name("probe-events".into())
            .spawn(move || read_events(ring, drops, &events, &commands, &denials))
            .map_err(|source| DaemonError::Io {
                context: "starting the event reader",
                source,
            })?;
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io {
            context: "starting the async runtime",
            source,
        })?;
    let result = runtime.block_on(serve_until_signalled(
        options,
        claim,
        commands.clone(),
        status,
        events,
        denials,
        (resolver, dns),
    ));
    lifecycle::stopping();
    let (reply, done) = oneshot::channel();
    if commands.send(Command::Shutdown { reply }).is_ok() {
        // The loop finishes the reload in flight before it answers.
        let _ = done.blocking_recv();
    }
    let _ = loop_thread.join();
    result
}

async fn serve_until_signalled(
    options: &RunOptions,
    mut claim: SocketClaim,
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<arc_swap::ArcSwap<crate::control::wire::StatusReport>>,
    events: broadcast::Sender<WireEvent>,
    denials: Arc<DenialCounter>,
    (resolver, dns): (Option<ResolverSockets>, Arc<DnsEgress>),
) -> Result<(), DaemonError> {
    let signal_err = |source| DaemonError::Io {
        context: "installing signal handlers",
        source,
    };
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_err)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let (listener, group) = claim.bind()?;
    let context = Arc::new(ServerContext {
        commands: commands.clone(),
        status: Arc::clone(&status),
        events,
        group,
        marks: MarkReader::open(&options.pin_dir)?,
        connections: std::sync::atomic::AtomicUsize::new(0),
        denials,
        dns: Arc::clone(&dns),
    });
    let summary = {
        let status = status.load();
        format!(
            "generation {}, enforcing {}",
            status.generation,
            options.policy.display()
        )
    };
    tracing::info!(
        generation = status.load().generation,
        policy_path = %options.policy.display(),
        "ready: {summary}; control socket {}",
        options.socket.display()
    );
    lifecycle::ready(&summary);
    let server = tokio::spawn(server::serve(listener, context));
    let resolver = resolver.map(|sockets| tokio::spawn(sockets.serve(Arc::clone(&dns))));
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading {}", options.policy.display());
                let _ = commands.send(Command::Reload(Trigger::Signal));
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    server.abort();
    if let Some(resolver) = resolver {
        resolver.abort();
    }
    // Confined DNS under host rules is then refused at once instead of
    // sent to a port nobody answers on.
    if let Err(error) = dns.set_resolver(0, 0, 0) {
        tracing::warn!("could not withdraw the DNS resolver: {error}");
    }
    drop(claim); // removes the socket, if it is still ours
    Ok(())
}

/// Reads probe events until the process ends: logs them (rate-limited),
/// passes them to subscribers, and tells the loop when a confined process
/// exits so idle hooks can be detached.
fn read_events(
    mut ring: RingBuf<MapData>,
    drops: Option<kernel::PinnedCounters>,
    events: &broadcast::Sender<WireEvent>,
    commands: &mpsc::UnboundedSender<Command>,
    denials: &DenialCounter,
) {
    let dropped_before = drops
        .as_ref()
        .and_then(kernel::PinnedCounters::event_drops)
        .unwrap_or(0);
    let mut log = RateLimitedLog::new(EVENTS_LOGGED_PER_SECOND, dropped_before);
    let exit_queued = Arc::new(AtomicBool::new(false));
    loop {
        let mut exited = false;
        events::drain(&mut ring, |event| {
            log.log(&event);
            denials.count(&event);
            exited |= event.kind == EventKind::Exit;
            let _ = events.send(WireEvent {
                kind: event.kind_name().to_owned(),
                pid: event.pid,
                comm: event.comm.clone(),
                mode: event.mode,
                message: event.to_string(),
            });
        });
        if exited
            && !exit_queued.swap(true, Ordering::SeqCst)
            && commands
                .send(Command::ProcessExited(Arc::clone(&exit_queued)))
                .is_err()
        {
            return;
        }
        log.roll_window(drops.as_ref().and_then(kernel::PinnedCounters::event_drops));
        // The timeout lets suppressed counts flush during a quiet spell.
        events::wait_readable(&ring, 500);
    }
}

/// Logs a denied DNS query and passes it on like a probe event.
fn denial_reporter(
    events: broadcast::Sender<WireEvent>,
    denials: Arc<DenialCounter>,
) -> Box<dyn Fn(&DnsDenial) + Send + Sync> {
    Box::new(move |denial| {
        denial.log();
        denials.count_dns();
        let _ = events.send(WireEvent {
            kind: "denied_dns".to_owned(),
            pid: 0,
            comm: String::new(),
            mode: denial.mode,
            message: denial.to_string(),
        });
    })
}

/// Whether a daemon answers on `socket`.
pub fn is_running(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

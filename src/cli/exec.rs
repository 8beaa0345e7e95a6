//! `aa-policyd exec --policy POLICY -- CMD [ARGS...]`: run one command
//! confined, standalone (no daemon), and exit with its status; when the
//! policy names hosts, this process also runs the resolver for CMD's DNS.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aa_policyd::delta::diff;
use aa_policyd::dns::resolver::ResolverSockets;
use aa_policyd::dns::{DnsEgress, DnsOptions};
use aa_policyd::events;
use aa_policyd::loader::Loader;
use aa_policyd::loader::kernel::KernelLoader;
use aa_policyd::loader::process::spawn_confined;
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{Arch, HostRule, Mode};
use anyhow::Context;
use sha2::Digest;

use super::EXIT_INVALID;

pub fn run(
    policy_path: &Path,
    pin_dir: &Path,
    dns_options: &DnsOptions,
    argv: &[OsString],
) -> anyhow::Result<ExitCode> {
    let loaded = aa_policyd::policy::read_policy_file(policy_path)
        .and_then(|bytes| Ok((Policy::parse_bytes(&bytes, policy_path)?, bytes)));
    let (policy, bytes) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let lowered = lower(&policy, Arch::native());
    let desired = lowered.rules;
    let mut loader = KernelLoader::open(pin_dir).context("loading the probes")?;
    let _resolver = start_resolver(pin_dir, dns_options, &lowered.hosts, desired.mode)?;
    let applied = loader.applied()?;
    let delta = diff(&applied.rules, &desired);
    let digest: aa_policyd::loader::PolicyDigest = sha2::Sha256::digest(&bytes).into();
    let report = loader
        .apply(&delta, Some(digest))
        .context("applying the policy")?;
    tracing::info!(
        generation = report.generation,
        ops = delta.len(),
        map_ops = report.map_ops,
        "policy {} in force",
        policy_path.display()
    );

    let events = loader.take_events();
    let child = spawn_confined(&mut loader, argv)?;
    let done = Arc::new(AtomicBool::new(false));
    let reader = events.map(|ring| {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream_events(ring, &done))
    });
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    if let Err(error) = loader.sync_hooks() {
        tracing::warn!("could not detach idle hooks: {error}");
    }
    let code = status.code();
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// Runs the resolver of DNS-aware egress on a thread of its own for as long
/// as this process lives (only when the policy names hosts).
fn start_resolver(
    pin_dir: &Path,
    options: &DnsOptions,
    hosts: &BTreeSet<HostRule>,
    mode: Mode,
) -> anyhow::Result<Option<std::thread::JoinHandle<()>>> {
    let dns = Arc::new(DnsEgress::open(
        pin_dir,
        options.clone(),
        Box::new(|denial| denial.log()),
    )?);
    if hosts.is_empty() {
        return Ok(None);
    }
    dns.commit(hosts.clone(), mode);
    let sockets = ResolverSockets::bind(&dns).context("binding the DNS resolver on loopback")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the resolver's runtime")?;
    let thread = std::thread::Builder::new()
        .name("dns-resolver".into())
        .spawn(move || {
            if let Err(error) = runtime.block_on(sockets.serve(dns)) {
                tracing::error!("DNS resolver: {error}");
            }
        })
        .context("starting the resolver thread")?;
    Ok(Some(thread))
}

/// `exec` without --policy: the daemon confines, we fork and wait, so the
/// command inherits this shell's environment, not the daemon's sandbox.
pub fn through_daemon(socket: &Path, argv: &[OsString]) -> anyhow::Result<ExitCode> {
    let mut client = aa_policyd::control::client::Client::connect(socket)
        .context("exec without --policy goes through the daemon")?;
    let child = aa_policyd::loader::process::spawn_stopped(argv)?;
    client.request(&aa_policyd::control::wire::Request::Confine { pid: child.pid() })?;
    let status = child.resume().wait()?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(255)))
}

/// Logs each event until `done`, then drains what is left.
fn stream_events(mut ring: aya::maps::RingBuf<aya::maps::MapData>, done: &AtomicBool) {
    loop {
        let finishing = done.load(Ordering::Relaxed);
        events::drain(&mut ring, |event| event.log());
        if finishing {
            return;
        }
        // A short timeout re-checks `done`.
        events::wait_readable(&ring, 50);
    }
}

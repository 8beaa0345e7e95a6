//! The reconcile loop: read → parse → lower → diff against the kernel →
//! guard → apply → publish.
//!
//! Why this exists: reloads, confine requests and remote deltas all change
//! what the kernel enforces, so one thread owns the loader and runs them one
//! at a time, in arrival order. Everyone else talks to it through
//! `Command`s and reads the published `StatusReport` (an `ArcSwap`, so a
//! `status` request never waits behind a reload).
//!
//! # Safety
//! - The delta is computed against the rules read back from the kernel, not
//!   against what this loop remembers (invariant 3).
//! - Invalid, refused or failed reloads change nothing: the previous
//!   generation stays in force, and status and the log say why (invariant 2).
//! - An empty allowlist under a confined process is refused here and again
//!   in the loader (invariant 1).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::control::wire::{
    DeltaSource, DenialCounts, HookStatus, Outcome, ProbeFaults, ReloadRecord, StatusReport,
};
use crate::delta::{Delta, Op, diff};
use crate::dns::DnsEgress;
use crate::guard;
use crate::lifecycle;
use crate::loader::kernel::KernelLoader;
use crate::loader::{Loader, LoaderError, PolicyDigest};
use crate::lower::{RuleCounts, lower};
use crate::policy::Policy;
use crate::ruleset::{Arch, EgressMode, HostRule, RuleSet};

/// Why a reload was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    /// The watcher saw the file (or its directory) change.
    FileChange,
    /// The watcher lost events (inotify overflow): reload unconditionally.
    Rescan,
    /// SIGHUP (`systemctl reload`): reload unconditionally.
    Signal,
    /// The slow periodic hash check.
    Periodic,
    /// A reload that failed for want of resources (descriptors, memory) or
    /// in the kernel, tried again after a pause.
    Retry,
    /// A delta sent by a remote watcher (`aa-policyd watch`).
    Remote,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::FileChange => "file-change",
            Trigger::Rescan => "rescan",
            Trigger::Signal => "sighup",
            Trigger::Periodic => "periodic-check",
            Trigger::Retry => "retry",
            Trigger::Remote => "remote-watcher",
        }
    }

    /// Whether to re-apply even when the file's hash did not change.
    fn forced(self) -> bool {
        matches!(self, Trigger::Rescan | Trigger::Signal)
    }
}

type Reply<T> = oneshot::Sender<T>;

/// What the loop can be asked to do.
pub enum Command {
    Reload(Trigger),
    Confine {
        pid: u32,
        reply: Reply<Result<(), String>>,
    },
    Release {
        pid: u32,
        reply: Reply<Result<(), String>>,
    },
    Applied {
        reply: Reply<Result<(u64, RuleSet), String>>,
    },
    ApplyRemote {
        delta: Delta,
        source: DeltaSource,
        base_generation: u64,
        reply: Reply<Result<ReloadRecord, String>>,
    },
    /// Confined processes exited: refresh status, detach idle hooks. The
    /// flag is set while one is queued, so a burst of exits is one command.
    ProcessExited(Arc<AtomicBool>),
    /// Something changed under the pin dir: put back removed pins.
    RepairPins,
    Shutdown {
        reply: Reply<()>,
    },
}

/// The first pause before a failed reload is tried again; it doubles up to
/// `LAST_RETRY`.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const LAST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The last policy text that was applied.
struct GoodPolicy {
    sha256: String,
    text: String,
}

/// Owns the loader; see the module doc.
pub struct Reconciler {
    loader: KernelLoader,
    policy_path: PathBuf,
    good: Option<GoodPolicy>,
    /// The policy digest the kernel recorded with the generation in force
    /// when this daemon started.
    kernel_policy: Option<PolicyDigest>,
    /// Where retries of failed reloads are sent (the loop's own queue).
    retry: Option<mpsc::UnboundedSender<Command>>,
    retry_delay: std::time::Duration,
    retry_queued: Arc<AtomicBool>,
    rules: RuleSet,
    generation: u64,
    last_reload: Option<ReloadRecord>,
    status: Arc<ArcSwap<StatusReport>>,
    watching: bool,
    dns: Arc<DnsEgress>,
    /// The host rules of the policy this daemon applied (`None` before the
    /// first apply: the kernel does not record them).
    hosts: Option<BTreeSet<HostRule>>,
}

/// What a reload asks for: the kernel rules, and the host names the
/// resolver allows (which the kernel does not hold).
struct Desired {
    rules: RuleSet,
    hosts: BTreeSet<HostRule>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Loader(#[from] LoaderError),
    #[error("the policy cannot be enforced and nothing is pinned to fall back on: {0}")]
    NoPolicy(String),
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes).into())
}

fn hex(digest: &PolicyDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest a sha256 written in hex stands for.
fn digest_of_hex(text: &str) -> Option<PolicyDigest> {
    let mut digest = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (index, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * index..2 * index + 2)?, 16).ok()?;
    }
    Some(digest)
}

impl Reconciler {
    pub fn new(
        loader: KernelLoader,
        policy_path: &Path,
        watching: bool,
        dns: Arc<DnsEgress>,
    ) -> Result<Self, LoaderError> {
        let mut loader = loader;
        let applied = loader.applied()?;
        let status = Arc::new(ArcSwap::from_pointee(StatusReport {
            generation: applied.generation,
            policy_path: policy_path.display().to_string(),
            policy_sha256: applied.policy.as_ref().map(hex),
            mode: applied.rules.mode,
            counts: RuleCounts::of(&applied.rules),
            confined: Vec::new(),
            hooks_attached: loader.hooks_attached(),
            hooks: Vec::new(),
            last_reload: None,
            total_map_ops: loader.map_ops(),
            event_drops: 0,
            // Counted by the event reader; the control socket fills it in.
            denials: DenialCounts::default(),
            probe_faults: ProbeFaults::default(),
            watching,
            learned_addresses: 0,
            dns_answers: 0,
            dns_map_writes: 0,
        }));
        Ok(Reconciler {
            loader,
            policy_path: policy_path.to_owned(),
            good: None,
            kernel_policy: applied.policy,
            retry: None,
            retry_delay: FIRST_RETRY,
            retry_queued: Arc::new(AtomicBool::new(false)),
            rules: applied.rules,
            generation: applied.generation,
            last_reload: None,
            status,
            watching,
            dns,
            hosts: None,
        })
    }

    /// The published status, for readers outside the loop.
    pub fn status_handle(&self) -> Arc<ArcSwap<StatusReport>> {
        Arc::clone(&self.status)
    }

    /// The first reload. A policy that cannot be enforced is fatal, unless a
    /// previous generation is pinned: then that stays in force, and the
    /// daemon keeps watching for a fixed policy.
    pub fn start(&mut self) -> Result<ReloadRecord, StartError> {
        let record = self.reload(Trigger::Startup);
        if record.outcome == Outcome::Applied || record.outcome == Outcome::Unchanged {
            return Ok(record);
        }
        let error = record.error.clone().unwrap_or_default();
        if self.generation > 0 {
            tracing::error!(
                generation = self.generation,
                outcome = record.outcome.as_str(),
                "cannot enforce {} at start ({error}); keeping the pinned generation {} in force",
                self.policy_path.display(),
                self.generation
            );
            return Ok(record);
        }
        Err(StartError::NoPolicy(error))
    }

    /// Serves commands until `Shutdown` or until every sender is gone.
    pub fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = commands.blocking_recv() {
            match command {
                Command::Reload(trigger) => {
                    self.reload(trigger);
                }
                // A client that gave up waiting was told the request failed:
                // it must not be carried out later.
                Command::Confine { reply, .. } | Command::Release { reply, .. }
                    if reply.is_closed() =>
                {
                    tracing::warn!("dropped a confine or release whose client gave up waiting");
                }
                Command::ApplyRemote { reply, .. } if reply.is_closed() => {
                    tracing::warn!("dropped a remote delta whose client gave up waiting");
                }
                Command::Confine { pid, reply } => {
                    let result = self.loader.confine(pid).map_err(|e| e.to_string());
                    match &result {
                        Ok(()) => tracing::info!(pid, "confined pid {pid}"),
                        Err(error) => tracing::error!(pid, "refused to confine pid {pid}: {error}"),
                    }
                    self.publish();
                    let _ = reply.send(result);
                }
                Command::Release { pid, reply } => {
                    let result = self.loader.release(pid).map_err(|e| e.to_string());
                    if result.is_ok() {
                        tracing::info!(pid, "released pid {pid}");
                    }
                    self.publish();
                    let _ = reply.send(result);
                }
                Command::Applied { reply } => {
                    let result = self
                        .loader
                        .applied()
                        .map(|a| (a.generation, a.rules))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(result);
                }
                Command::ApplyRemote {
                    delta,
                    source,
                    base_generation,
                    reply,
                } => {
                    let record = self.apply_remote(delta, source, base_generation);
                    let _ = reply.send(record);
                }
                Command::RepairPins => self.repair_pins(),
                Command::ProcessExited(queued) => {
                    queued.store(false, Ordering::SeqCst);
                    if let Err(error) = self.loader.sync_hooks() {
                        tracing::warn!("could not detach idle hooks: {error}");
                    }
                    self.publish();
                }
                Command::Shutdown { reply } => {
                    self.shut_down();
                    let _ = reply.send(());
                    return;
                }
            }
        }
        self.shut_down();
    }

    /// Asks for the reload again after a pause that doubles up to
    /// `LAST_RETRY`, unless a retry is already on its way.
    fn schedule_retry(&mut self) {
        let Some(commands) = self.retry.clone() else {
            return;
        };
        if self.retry_queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let (delay, queued) = (self.retry_delay, Arc::clone(&self.retry_queued));
        self.retry_delay = (self.retry_delay * 2).min(LAST_RETRY);
        tracing::info!("trying the reload again in {} s", delay.as_secs());
        let spawned = std::thread::Builder::new()
            .name("reload-retry".into())
            .spawn(move || {
                std::thread::sleep(delay);
                queued.store(false, Ordering::SeqCst);
                let _ = commands.send(Command::Reload(Trigger::Retry));
            });
        if spawned.is_err() {
            self.retry_queued.store(false, Ordering::SeqCst);
        }
    }

    /// Lets the loop ask itself for a reload again (failed reloads).
    pub fn retry_with(&mut self, commands: mpsc::UnboundedSender<Command>) {
        self.retry = Some(commands);
    }

    /// Puts back hooks someone detached and pins someone removed (a
    /// removed pin stopped nothing: the loader holds every map and link).
    fn repair_pins(&mut self) {
        match self.loader.repair() {
            Ok(repaired) if repaired.is_empty() => {}
            Ok(repaired) => {
                tracing::warn!(
                    repaired = repaired.join(","),
                    "hooks detached or pins removed under {} were put back ({})",
                    self.loader.pin_dir().display(),
                    repaired.join(", ")
                );
                self.publish();
            }
            Err(error) => tracing::error!("could not put back the pins: {error}"),
        }
    }

    fn shut_down(&mut self) {
        let confined = self.loader.confined().map(|c| c.len()).unwrap_or(0);
        if confined > 0 {
            tracing::info!(
                generation = self.generation,
                "stopping; enforcement stays pinned for the {confined} confined process(es) (`aa-policyd unload` removes it)"
            );
        } else {
            if let Err(error) = self.loader.sync_hooks() {
                tracing::warn!("could not detach idle hooks: {error}");
            }
            tracing::info!(
                generation = self.generation,
                "stopping; nothing is confined"
            );
        }
    }

    /// Reads, checks and applies the policy file.
    pub fn reload(&mut self, trigger: Trigger) -> ReloadRecord {
        let started = Instant::now();
        let bytes = match crate::policy::read_policy_file(&self.policy_path) {
            Ok(bytes) => bytes,
            // Out of descriptors or memory says nothing about the file: the
            // reload failed, and is tried again.
            Err(error @ crate::policy::PolicyError::Resource { .. }) => {
                return self.fail(trigger, started, Outcome::Failed, error.to_string(), 0);
            }
            Err(error) => {
                return self.fail(trigger, started, Outcome::Invalid, error.to_string(), 0);
            }
        };
        let sha256 = sha256_hex(&bytes);
        let unchanged_file = self.good.as_ref().is_some_and(|g| g.sha256 == sha256);
        if unchanged_file && !trigger.forced() {
            return self.finish(trigger, started, Outcome::Unchanged, None, 0, 0, None);
        }
        if trigger != Trigger::Startup {
            lifecycle::reloading();
        }
        let record = match Policy::parse_bytes(&bytes, &self.policy_path) {
            Ok(policy) => {
                // Accepted as upstream accepts them, but said at every
                // change: an operator reading the journal learns that a key
                // in the file does nothing.
                for warning in &policy.warnings {
                    tracing::warn!(policy_path = %self.policy_path.display(), "policy: {warning}");
                }
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lowered = lower(&policy, Arch::native());
                let desired = Desired {
                    rules: lowered.rules,
                    hosts: lowered.hosts,
                };
                self.apply_desired(trigger, started, desired, GoodPolicy { sha256, text })
            }
            // The error already reads `file:line:col: key.path: message`.
            Err(error) => self.fail(trigger, started, Outcome::Invalid, error.to_string(), 0),
        };
        if trigger != Trigger::Startup {
            lifecycle::reloaded(&self.status_line());
        }
        record
    }

    /// Applies a remote watcher's delta, only on top of the generation it
    /// was computed against: applied to anything else it would produce a
    /// rule set that is neither policy.
    fn apply_remote(
        &mut self,
        delta: Delta,
        source: DeltaSource,
        base_generation: u64,
    ) -> Result<ReloadRecord, String> {
        let started = Instant::now();
        let applied = self.loader.applied().map_err(|e| e.to_string())?;
        if applied.generation != base_generation {
            return Err(format!(
                "stale delta: computed against generation {base_generation}, but generation {} is in force; fetch the applied rules again",
                applied.generation
            ));
        }
        lifecycle::reloading();
        let good = GoodPolicy {
            sha256: source.sha256,
            text: source.text,
        };
        // The host names travel as policy text: the kernel holds only
        // whether there are any. Text that does not parse names none.
        let hosts = Policy::parse_bytes(good.text.as_bytes(), &self.policy_path)
            .map(|policy| lower(&policy, Arch::native()).hosts)
            .unwrap_or_default();
        let desired = Desired {
            rules: crate::delta::apply(&applied.rules, &delta),
            hosts,
        };
        let record = self.apply_desired_on(
            Trigger::Remote,
            started,
            &applied.rules,
            applied.generation,
            desired,
            good,
        );
        lifecycle::reloaded(&self.status_line());
        Ok(record)
    }

    fn apply_desired(
        &mut self,
        trigger: Trigger,
        started: Instant,
        desired: Desired,
        good: GoodPolicy,
    ) -> ReloadRecord {
        match self.loader.applied() {
            Ok(applied) => self.apply_desired_on(
                trigger,
                started,
                &applied.rules,
                applied.generation,
                desired,
                good,
            ),
            Err(error) => self.fail(trigger, started, Outcome::Failed, error.to_string(), 0),
        }
    }

    fn apply_desired_on(
        &mut self,
        trigger: Trigger,
        started: Instant,
        applied: &RuleSet,
        generation: u64,
        desired: Desired,
        good: GoodPolicy,
    ) -> ReloadRecord {
        self.rules = applied.clone();
        self.generation = generation;
        let Desired {
            rules: desired,
            hosts,
        } = desired;
        let hosts = if desired.egress.mode == EgressMode::AllowlistAndHosts {
            hosts
        } else {
            BTreeSet::new()
        };
        let mut delta = diff(applied, &desired);
        if delta.is_empty() && self.hosts.as_ref().is_some_and(|old| *old != hosts) {
            // Only host names changed: still a new generation, recorded
            // with the new policy's digest, so `applied` means it is in force.
            delta.ops.push(Op::SetEgressMode(desired.egress.mode));
        }
        let confined = match self.loader.confined() {
            Ok(confined) => confined,
            Err(error) => {
                return self.fail(
                    trigger,
                    started,
                    Outcome::Failed,
                    error.to_string(),
                    delta.len(),
                );
            }
        };
        if let Err(refusal) = guard::check_delta(applied, &delta, &confined, Arch::native()) {
            return self.fail(
                trigger,
                started,
                Outcome::Refused,
                refusal.to_string(),
                delta.len(),
            );
        }
        if delta.is_empty() {
            let text_diff = self.text_diff(&good.text);
            self.good = Some(good);
            self.dns.commit(hosts.clone(), desired.mode);
            self.hosts = Some(hosts);
            return self.finish(trigger, started, Outcome::Unchanged, None, 0, 0, text_diff);
        }
        // Addresses of host names the new policy drops go before it is in
        // force, so none is reachable under it even for a moment.
        if let Err(error) = self.dns.prepare(&hosts) {
            return self.fail(
                trigger,
                started,
                Outcome::Failed,
                format!("removing learned egress addresses: {error}"),
                delta.len(),
            );
        }
        let result = self.loader.apply(&delta, digest_of_hex(&good.sha256));
        match &result {
            Ok(_) => {
                self.dns.commit(hosts.clone(), desired.mode);
                self.hosts = Some(hosts);
            }
            // The previous generation stays: so do its host names (the
            // addresses `prepare` removed are learned again when asked).
            Err(_) => self
                .dns
                .commit(self.hosts.clone().unwrap_or_default(), self.rules.mode),
        }
        match result {
            Ok(report) => {
                let text_diff = self.text_diff(&good.text);
                self.good = Some(good);
                self.rules = desired;
                self.generation = report.generation;
                self.finish(
                    trigger,
                    started,
                    Outcome::Applied,
                    None,
                    delta.len(),
                    report.map_ops,
                    text_diff,
                )
            }
            Err(LoaderError::Refused(refusal)) => self.fail(
                trigger,
                started,
                Outcome::Refused,
                refusal.to_string(),
                delta.len(),
            ),
            Err(error) => self.fail(
                trigger,
                started,
                Outcome::Failed,
                error.to_string(),
                delta.len(),
            ),
        }
    }

    /// Records a reload that changed nothing in the kernel.
    fn fail(
        &mut self,
        trigger: Trigger,
        started: Instant,
        outcome: Outcome,
        error: String,
        ops: usize,
    ) -> ReloadRecord {
        self.finish(trigger, started, outcome, Some(error), ops, 0, None)
    }

    fn text_diff(&self, new_text: &str) -> Option<String> {
        let old = self.good.as_ref().map_or("", |g| g.text.as_str());
        (old != new_text).then(|| {
            similar::TextDiff::from_lines(old, new_text)
                .unified_diff()
                .header("in force", "new")
                .to_string()
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        trigger: Trigger,
        started: Instant,
        outcome: Outcome,
        error: Option<String>,
        ops: usize,
        map_ops: u64,
        text_diff: Option<String>,
    ) -> ReloadRecord {
        let record = ReloadRecord {
            outcome,
            trigger: trigger.as_str().to_owned(),
            error,
            generation: self.generation,
            ops,
            map_ops,
            at_unix_ms: now_unix_ms(),
            duration_ms: started.elapsed().as_secs_f64() * 1e3,
        };
        self.log(&record, text_diff.as_deref());
        match record.outcome {
            Outcome::Failed => self.schedule_retry(),
            Outcome::Applied | Outcome::Unchanged => self.retry_delay = FIRST_RETRY,
            Outcome::Invalid | Outcome::Refused => {}
        }
        // A quiet periodic check is not news; anything else is, including a
        // save that restores the policy in force after an invalid one.
        if !(trigger == Trigger::Periodic && outcome == Outcome::Unchanged) {
            self.last_reload = Some(record.clone());
        }
        self.publish();
        record
    }

    fn log(&self, record: &ReloadRecord, text_diff: Option<&str>) {
        let sha = self.good.as_ref().map_or("", |g| g.sha256.as_str());
        let path = self.policy_path.display().to_string();
        let fields = (
            record.generation,
            sha,
            path.as_str(),
            record.outcome.as_str(),
            record.ops,
        );
        let (generation, policy_sha256, policy_path, outcome, ops) = fields;
        match record.outcome {
            Outcome::Applied => tracing::info!(
                generation, policy_sha256, policy_path, outcome, ops, map_ops = record.map_ops, trigger = %record.trigger,
                "applied generation {generation}: {ops} ops, {} map ops in {:.1} ms\n{}",
                record.map_ops, record.duration_ms, text_diff.unwrap_or("")
            ),
            Outcome::Unchanged if text_diff.is_some() => tracing::info!(
                generation, policy_sha256, policy_path, outcome, ops, trigger = %record.trigger,
                "policy text changed but its rules did not; generation {generation} stays\n{}",
                text_diff.unwrap_or("")
            ),
            Outcome::Unchanged => {
                tracing::debug!(generation, policy_path, outcome, trigger = %record.trigger, "policy unchanged")
            }
            Outcome::Invalid | Outcome::Refused | Outcome::Failed => tracing::error!(
                generation, policy_sha256, policy_path, outcome, ops, trigger = %record.trigger,
                error = record.error.as_deref().unwrap_or(""),
                "reload {outcome}: {}; generation {generation} stays in force",
                record.error.as_deref().unwrap_or("")
            ),
        }
    }

    fn status_line(&self) -> String {
        let outcome = self
            .last_reload
            .as_ref()
            .map_or("none", |r| r.outcome.as_str());
        format!("generation {}, last reload {outcome}", self.generation)
    }

    fn publish(&mut self) {
        let confined = self
            .loader
            .confined()
            .map(|c| c.pids().collect())
            .unwrap_or_default();
        let counters = self.loader.counters().unwrap_or_default();
        let hooks = match self.loader.hook_states() {
            Ok(states) => states
                .into_iter()
                .map(|state| HookStatus {
                    program: state.program.to_owned(),
                    link_id: state.link_id,
                    program_id: state.program_id,
                    attached: state.attached,
                    pinned: state.pinned,
                })
                .collect(),
            Err(error) => {
                tracing::warn!("could not read the attached hooks: {error}");
                Vec::new()
            }
        };
        self.status.store(Arc::new(StatusReport {
            generation: self.generation,
            policy_path: self.policy_path.display().to_string(),
            // The file this daemon applied, else what the kernel recorded
            // with the generation in force (after a restart).
            policy_sha256: self
                .good
                .as_ref()
                .map(|g| g.sha256.clone())
                .or_else(|| self.kernel_policy.as_ref().map(hex)),
            mode: self.rules.mode,
            counts: RuleCounts::of(&self.rules),
            confined,
            hooks_attached: self.loader.hooks_attached(),
            hooks,
            last_reload: self.last_reload.clone(),
            total_map_ops: self.loader.map_ops(),
            event_drops: counters.event_drops,
            denials: DenialCounts::default(),
            probe_faults: ProbeFaults {
                registry_full: counters.registry_full,
                mark_failed: counters.mark_failed,
                untraced: counters.untraced,
                unguarded_exit: counters.unguarded_exit,
            },
            watching: self.watching,
            learned_addresses: 0,
            dns_answers: 0,
            dns_map_writes: 0,
        }));
    }
}

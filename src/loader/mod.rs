//! The `Loader`: the only part of aa-policyd that touches the kernel.
//!
//! Why a trait: the daemon plans (read back → diff → guard) and the loader
//! executes. Behind the trait sit the in-process aya loader (`kernel`) and,
//! later, a client that sends the same calls over the control socket.
//!
//! # Safety
//! Every implementation re-checks the guard (`guard::check_delta`,
//! `guard::check_confine`) itself: a caller that forgot it, or a remote
//! watcher, still cannot empty the allowlist under a confined process.

pub mod abi;
mod confinement;
mod generations;
mod hooks;
pub mod io_uring_ops;
pub mod kernel;
pub mod learned;
mod maps;
mod pins;
pub mod process;
mod rule_keys;
mod sys;

use std::io;

use crate::delta::Delta;
use crate::guard::{ConfinedSet, Refusal};
use crate::ruleset::RuleSet;

/// The rules the kernel holds, read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub rules: RuleSet,
    /// The sha256 of the policy text the generation came from, as recorded
    /// in the kernel with it (`None` when not recorded).
    pub policy: Option<PolicyDigest>,
}

/// The sha256 of a policy file's bytes.
pub type PolicyDigest = [u8; 32];

/// What one `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// The generation in force afterwards (unchanged for an empty delta).
    pub generation: u64,
    /// Map reads, writes and deletes this apply performed.
    pub map_ops: u64,
}

/// Counters the probes keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Events lost because the ring buffer was full.
    pub event_drops: u64,
    /// Confined forks the registry could not record.
    pub registry_full: u64,
    /// Confined children whose mark could not be allocated.
    pub mark_failed: u64,
    /// Confined tasks created without syscall tracing (killed; must stay 0).
    pub untraced: u64,
    /// Confined tasks that called exit without the guard ever judging one
    /// of their syscalls: a hole in the guard's hot path (must stay 0).
    pub unguarded_exit: u64,
}

pub trait Loader {
    /// The rule set in force and its generation, read from the kernel.
    fn applied(&mut self) -> Result<Applied, LoaderError>;

    /// Applies `delta` incrementally and atomically: probes see either the
    /// previous generation or the new one, never a mix. On any error the
    /// previous generation stays in force. `policy` is recorded with the new
    /// generation, so what the kernel holds can be named after a restart.
    fn apply(
        &mut self,
        delta: &Delta,
        policy: Option<PolicyDigest>,
    ) -> Result<ApplyReport, LoaderError>;

    /// The processes confined right now.
    fn confined(&mut self) -> Result<ConfinedSet, LoaderError>;

    /// Confines process `pid` (every thread) and its future children.
    fn confine(&mut self, pid: u32) -> Result<(), LoaderError>;

    /// Releases process `pid`; children it already has stay confined.
    fn release(&mut self, pid: u32) -> Result<(), LoaderError>;

    /// Total map operations performed by this loader.
    fn map_ops(&self) -> u64;
}

/// Why a loader operation failed. Messages name the map, key, program or pid
/// and the system call.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{what} needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN); running as uid {uid}")]
    NotPrivileged { what: &'static str, uid: u32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("loading probe object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map}{key}: {source}")]
    Map {
        map: &'static str,
        /// ` key …` or empty.
        key: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "map {map} would need {needed} entries but holds at most {capacity}; nothing was written"
    )]
    Capacity {
        map: &'static str,
        needed: usize,
        capacity: usize,
    },
    #[error(
        "another aa-policyd process is using the pin dir {} (stop it, go through it with `aa-policyd exec` without --policy, or pass another --pin-dir)",
        pin_dir.display()
    )]
    Busy { pin_dir: std::path::PathBuf },
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("pid {pid}: {reason}")]
    Process { pid: u32, reason: String },
}

impl LoaderError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        LoaderError::Io {
            context: context.into(),
            source,
        }
    }
}

//! The safety invariants, as code: a typed `Refusal` instead of a dead agent.
//!
//! Why this exists: the one edit that must never reach the kernel is the one
//! that empties the syscall allowlist while something is confined — every
//! confined process would be SIGKILLed at its next syscall, and the operator
//! would learn it from a page, not from the daemon. The daemon checks this
//! before `apply`, and the loader checks it again (defence in depth), both
//! with these functions.
//!
//! # Invariants
//! 1. A non-empty confined set and an empty syscall allowlist never coexist:
//!    a reload that would produce it is refused, and so is confining a process
//!    while the allowlist in force is empty.
//! 2. A syscall bitmap lowered for another architecture is never applied: its
//!    numbers would name different syscalls here.

use std::collections::BTreeSet;
use std::fmt;

use crate::delta::Delta;
use crate::ruleset::{Arch, RuleSet, SyscallRule};

/// Who is confined right now: PIDs when the caller knows them (the loader's
/// registry), or only a count (`aa-policyd diff --confined N`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfinedSet {
    pids: BTreeSet<u32>,
    unnamed: usize,
}

impl ConfinedSet {
    pub fn none() -> Self {
        ConfinedSet::default()
    }

    pub fn from_pids(pids: impl IntoIterator<Item = u32>) -> Self {
        ConfinedSet {
            pids: pids.into_iter().collect(),
            unnamed: 0,
        }
    }

    /// `count` confined processes whose PIDs are not known here.
    pub fn counted(count: usize) -> Self {
        ConfinedSet {
            pids: BTreeSet::new(),
            unnamed: count,
        }
    }

    pub fn len(&self) -> usize {
        self.pids.len() + self.unnamed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.pids.iter().copied()
    }
}

impl fmt::Display for ConfinedSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.len();
        write!(
            f,
            "{n} {}",
            if n == 1 {
                "process is"
            } else {
                "processes are"
            }
        )?;
        f.write_str(" confined")?;
        if !self.pids.is_empty() {
            let pids: Vec<String> = self.pids.iter().map(u32::to_string).collect();
            let label = if self.pids.len() == 1 { "pid" } else { "pids" };
            write!(f, " ({label} {})", pids.join(", "))?;
        }
        Ok(())
    }
}

/// Why a change was refused. `Display` is the sentence for logs and status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "refused: the new policy has an empty syscall allowlist while {confined}; every one of them would be killed at its next syscall"
    )]
    EmptyAllowlistWhileConfined { confined: ConfinedSet },
    #[error(
        "refused: cannot confine pid {pid}: the syscall allowlist in force is empty, so it would be killed at its next syscall"
    )]
    ConfineUnderEmptyAllowlist { pid: u32 },
    #[error(
        "refused: the syscall allowlist was lowered for {lowered_for}, but this kernel runs {native}"
    )]
    ArchMismatch { lowered_for: Arch, native: Arch },
}

/// Checks a planned reload: `delta` applied on top of `applied`, with
/// `confined` processes under it, on a kernel of architecture `native`.
pub fn check_delta(
    applied: &RuleSet,
    delta: &Delta,
    confined: &ConfinedSet,
    native: Arch,
) -> Result<(), Refusal> {
    let resulting = delta.new_syscall_rule().unwrap_or(&applied.syscalls);
    if let SyscallRule::Allow(set) = resulting
        && set.arch() != native
    {
        return Err(Refusal::ArchMismatch {
            lowered_for: set.arch(),
            native,
        });
    }
    if resulting.is_empty_allowlist() && !confined.is_empty() {
        return Err(Refusal::EmptyAllowlistWhileConfined {
            confined: confined.clone(),
        });
    }
    Ok(())
}

/// Checks a request to confine `pid` under the rules in force.
pub fn check_confine(applied: &RuleSet, pid: u32) -> Result<(), Refusal> {
    if applied.syscalls.is_empty_allowlist() {
        return Err(Refusal::ConfineUnderEmptyAllowlist { pid });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Op;
    use crate::ruleset::SyscallSet;

    fn allow(numbers: &[u32]) -> SyscallRule {
        let mut set = SyscallSet::empty(Arch::X86_64);
        numbers.iter().for_each(|&n| set.insert(n));
        SyscallRule::Allow(set)
    }

    fn emptying_delta() -> Delta {
        Delta {
            ops: vec![Op::SetSyscalls(allow(&[]))],
        }
    }

    #[test]
    fn empty_allowlist_is_refused_while_confined_and_names_the_pids() {
        let refusal = check_delta(
            &RuleSet::unrestricted(),
            &emptying_delta(),
            &ConfinedSet::from_pids([4390, 4312]),
            Arch::X86_64,
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "refused: the new policy has an empty syscall allowlist while 2 processes are confined (pids 4312, 4390); every one of them would be killed at its next syscall"
        );
    }

    #[test]
    fn empty_allowlist_is_allowed_when_nothing_is_confined() {
        let result = check_delta(
            &RuleSet::unrestricted(),
            &emptying_delta(),
            &ConfinedSet::none(),
            Arch::X86_64,
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn an_unrelated_delta_still_refuses_when_the_applied_allowlist_is_empty() {
        let mut applied = RuleSet::unrestricted();
        applied.syscalls = allow(&[]);
        let delta = Delta {
            ops: vec![Op::SetMode(crate::ruleset::Mode::Audit)],
        };
        assert!(check_delta(&applied, &delta, &ConfinedSet::counted(1), Arch::X86_64).is_err());
    }

    #[test]
    fn confine_is_refused_under_an_empty_allowlist_only() {
        let mut applied = RuleSet::unrestricted();
        assert_eq!(check_confine(&applied, 7), Ok(()));
        applied.syscalls = allow(&[]);
        assert_eq!(
            check_confine(&applied, 7),
            Err(Refusal::ConfineUnderEmptyAllowlist { pid: 7 })
        );
    }

    #[test]
    fn a_foreign_arch_bitmap_is_refused() {
        let mut set = SyscallSet::empty(Arch::Aarch64);
        set.insert(56);
        let delta = Delta {
            ops: vec![Op::SetSyscalls(SyscallRule::Allow(set))],
        };
        assert!(matches!(
            check_delta(
                &RuleSet::unrestricted(),
                &delta,
                &ConfinedSet::none(),
                Arch::X86_64
            ),
            Err(Refusal::ArchMismatch { .. })
        ));
    }
}

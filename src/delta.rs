//! `diff(applied, desired) → Delta`: the ordered, incremental ops that turn
//! the rule set the kernel holds into the one the policy asks for.
//!
//! Why this exists: rewriting 10k map entries to change one costs ~12 ms and
//! ~10k syscalls; one op costs ~3 µs. The daemon therefore never "replaces"
//! rules: it sends only the ops this module plans. Planning is pure (values in,
//! values out) and property-tested; the loader only executes the plan.
//!
//! Invariants (property-tested in `tests/delta_properties.rs`):
//! `apply(a, &diff(a, b)) == b`; `diff(a, a)` is empty; the op count never
//! exceeds the number of changed entries (the whole syscall bitmap is one op,
//! since the probe reads it as one fixed-size value).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::ruleset::{
    Access, EgressMode, EgressRule, Mode, PathRuleKey, Restriction, RuleSet, SyscallRule, Verdict,
};

/// One incremental change. The order of `Op` variants is the order ops are
/// planned in: mode and syscalls first, then paths, then egress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetMode(Mode),
    /// Replaces the whole syscall rule: one fixed-size bitmap write.
    SetSyscalls(SyscallRule),
    SetPathRestriction {
        access: Access,
        restriction: Restriction,
    },
    RemovePathRule(PathRuleKey),
    UpsertPathRule {
        key: PathRuleKey,
        verdict: Verdict,
    },
    SetEgressMode(EgressMode),
    RemoveEgressRule(EgressRule),
    UpsertEgressRule(EgressRule),
}

/// An ordered list of ops; empty means "nothing to do".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub ops: Vec<Op>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The syscall rule this delta would leave in force, if it changes it.
    pub fn new_syscall_rule(&self) -> Option<&SyscallRule> {
        self.ops.iter().rev().find_map(|op| match op {
            Op::SetSyscalls(rule) => Some(rule),
            _ => None,
        })
    }
}

/// Plans the ops that turn `applied` into `desired`. Linear in the size of
/// both rule sets: ordered maps are merged in one walk.
pub fn diff(applied: &RuleSet, desired: &RuleSet) -> Delta {
    let mut ops = Vec::new();
    if applied.mode != desired.mode {
        ops.push(Op::SetMode(desired.mode));
    }
    if applied.syscalls != desired.syscalls {
        ops.push(Op::SetSyscalls(desired.syscalls));
    }
    for access in Access::ALL {
        let restriction = desired.paths.restriction(access);
        if applied.paths.restriction(access) != restriction {
            ops.push(Op::SetPathRestriction {
                access,
                restriction,
            });
        }
    }
    diff_maps(&applied.paths.rules, &desired.paths.rules, &mut ops);
    if applied.egress.mode != desired.egress.mode {
        ops.push(Op::SetEgressMode(desired.egress.mode));
    }
    diff_sets(&applied.egress.rules, &desired.egress.rules, &mut ops);
    Delta { ops }
}

fn diff_maps(
    old: &BTreeMap<PathRuleKey, Verdict>,
    new: &BTreeMap<PathRuleKey, Verdict>,
    ops: &mut Vec<Op>,
) {
    let mut removals = Vec::new();
    let mut upserts = Vec::new();
    merge_walk(
        old.iter(),
        new.iter(),
        |a, b| a.0.cmp(b.0),
        |step| match step {
            Step::OnlyOld((key, _)) => removals.push(Op::RemovePathRule(key.clone())),
            Step::OnlyNew((key, verdict)) | Step::Both(_, (key, verdict)) => {
                if old.get(key) != Some(verdict) {
                    upserts.push(Op::UpsertPathRule {
                        key: key.clone(),
                        verdict: *verdict,
                    });
                }
            }
        },
    );
    ops.extend(removals);
    ops.extend(upserts);
}

fn diff_sets(old: &BTreeSet<EgressRule>, new: &BTreeSet<EgressRule>, ops: &mut Vec<Op>) {
    let mut removals = Vec::new();
    let mut upserts = Vec::new();
    merge_walk(
        old.iter(),
        new.iter(),
        |a, b| a.cmp(b),
        |step| match step {
            Step::OnlyOld(rule) => removals.push(Op::RemoveEgressRule(*rule)),
            Step::OnlyNew(rule) => upserts.push(Op::UpsertEgressRule(*rule)),
            Step::Both(..) => {}
        },
    );
    ops.extend(removals);
    ops.extend(upserts);
}

enum Step<T> {
    OnlyOld(T),
    OnlyNew(T),
    Both(T, T),
}

/// Walks two sorted sequences once, reporting each element's side.
fn merge_walk<T>(
    old: impl Iterator<Item = T>,
    new: impl Iterator<Item = T>,
    cmp: impl Fn(&T, &T) -> Ordering,
    mut visit: impl FnMut(Step<T>),
) {
    let mut old = old.peekable();
    let mut new = new.peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => cmp(a, b),
        };
        match order {
            Ordering::Less => visit(Step::OnlyOld(old.next().expect("peeked"))),
            Ordering::Greater => visit(Step::OnlyNew(new.next().expect("peeked"))),
            Ordering::Equal => {
                let a = old.next().expect("peeked");
                let b = new.next().expect("peeked");
                visit(Step::Both(a, b));
            }
        }
    }
}

/// Applies `delta` to a copy of `rules`: the model the loader's kernel
/// writes must match, and what the property tests check `diff` against.
pub fn apply(rules: &RuleSet, delta: &Delta) -> RuleSet {
    let mut next = rules.clone();
    for op in &delta.ops {
        apply_op(&mut next, op);
    }
    next
}

pub fn apply_op(rules: &mut RuleSet, op: &Op) {
    match op {
        Op::SetMode(mode) => rules.mode = *mode,
        Op::SetSyscalls(rule) => rules.syscalls = *rule,
        Op::SetPathRestriction {
            access,
            restriction,
        } => rules.paths.set_restriction(*access, *restriction),
        Op::RemovePathRule(key) => {
            rules.paths.rules.remove(key);
        }
        Op::UpsertPathRule { key, verdict } => {
            rules.paths.rules.insert(key.clone(), *verdict);
        }
        Op::SetEgressMode(mode) => rules.egress.mode = *mode,
        Op::RemoveEgressRule(rule) => {
            rules.egress.rules.remove(rule);
        }
        Op::UpsertEgressRule(rule) => {
            rules.egress.rules.insert(*rule);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Arch, PathPrefix, SyscallSet};

    #[test]
    fn one_syscall_added_is_one_op() {
        let mut set = SyscallSet::empty(Arch::X86_64);
        set.insert(0);
        let mut a = RuleSet::unrestricted();
        a.syscalls = SyscallRule::Allow(set);
        let mut b = a.clone();
        set.insert(1);
        b.syscalls = SyscallRule::Allow(set);
        let delta = diff(&a, &b);
        assert_eq!(delta.ops, [Op::SetSyscalls(SyscallRule::Allow(set))]);
        assert_eq!(apply(&a, &delta), b);
    }

    #[test]
    fn verdict_change_is_one_upsert_not_remove_and_add() {
        let key = PathRuleKey {
            access: Access::Read,
            prefix: PathPrefix::parse("/srv").unwrap(),
        };
        let mut a = RuleSet::unrestricted();
        a.paths.rules.insert(key.clone(), Verdict::Allow);
        let mut b = RuleSet::unrestricted();
        b.paths.rules.insert(key.clone(), Verdict::Deny);
        assert_eq!(
            diff(&a, &b).ops,
            [Op::UpsertPathRule {
                key,
                verdict: Verdict::Deny
            }]
        );
    }
}

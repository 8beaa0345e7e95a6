//! The generation protocol: how `apply` changes the rules the probes see
//! without ever showing them a mix of two policies.
//!
//! 1. write the inactive slot: the fixed-size `GENERATIONS[next]` whole, and
//!    the slot bit / access masks of each changed LPM entry (ops ∝ change);
//! 2. flip `ACTIVE` (one write): from now on probes read `next`;
//! 3. wait an RCU grace period (`sys::GracePeriod`), so no probe still
//!    reads the old slot;
//! 4. bring the old slot in line: its generation record, and the bits of
//!    the changed entries (or delete entries that no slot holds). Between
//!    applies the two slots are identical, so slots that differ mean an
//!    apply was cut short (what the crash tests look for).
//!
//! A failure before the flip leaves the previous generation in force and
//! the touched entries are rolled back; a failure after it leaves the new
//! generation in force. Either way an entry that could not be repaired marks
//! the loader dirty, and the next apply first resynchronises the inactive
//! slot from the active one (O(n), only after a failure).

use std::collections::BTreeSet;
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;

use super::abi::{self, Egress4Data, Egress6Data, Generation, PathData, RuleValue};
use super::kernel::KernelLoader;
use super::maps::map_err;
use super::rule_keys::{
    access_mask, align_entry, egress_key, egress_rule, exact, exact_path, path_keys,
    remove_ignoring_missing, set_slot_bit,
};
use super::{Applied, ApplyReport, LoaderError, PolicyDigest};
use crate::delta::{self, Delta, Op};
use crate::ruleset::{
    Access, EgressMode, EgressRule, Mode, PathPrefix, PathRuleKey, Restriction, RuleSet,
    SyscallRule, Verdict,
};

impl KernelLoader {
    pub(super) fn read_back(&mut self) -> Result<Applied, LoaderError> {
        let (applied, slot) = self.maps.read_back(&mut self.map_ops)?;
        self.active_slot = slot;
        Ok(applied)
    }

    pub(super) fn check_capacity(&self, delta: &Delta) -> Result<(), LoaderError> {
        let current = &self.mirror.rules;
        let mut new_v4 = 0;
        let mut new_v6 = 0;
        let mut new_prefixes = BTreeSet::new();
        for op in &delta.ops {
            match op {
                Op::UpsertEgressRule(rule) if !current.egress.rules.contains(rule) => {
                    if rule.net.addr().is_ipv4() {
                        new_v4 += 1;
                    } else {
                        new_v6 += 1;
                    }
                }
                Op::UpsertPathRule { key, .. } => {
                    let known = Access::ALL.iter().any(|&access| {
                        current.paths.rules.contains_key(&PathRuleKey {
                            access,
                            prefix: key.prefix.clone(),
                        })
                    });
                    if !known {
                        new_prefixes.insert(key.prefix.clone());
                    }
                }
                _ => {}
            }
        }
        let prefixes_now: BTreeSet<&PathPrefix> =
            current.paths.rules.keys().map(|k| &k.prefix).collect();
        let v4_now = current
            .egress
            .rules
            .iter()
            .filter(|r| r.net.addr().is_ipv4())
            .count();
        let v6_now = current.egress.rules.len() - v4_now;
        for (map, needed) in [
            ("EGRESS4", v4_now + new_v4),
            ("EGRESS6", v6_now + new_v6),
            ("PATHS", 2 * (prefixes_now.len() + new_prefixes.len())),
        ] {
            let capacity = self.maps.capacity.get(map).copied().unwrap_or(0);
            if needed > capacity {
                return Err(LoaderError::Capacity {
                    map,
                    needed,
                    capacity,
                });
            }
        }
        Ok(())
    }

    fn write_slot_entries(
        &mut self,
        delta: &Delta,
        desired: &RuleSet,
        next: u32,
        touched: &mut Touched,
    ) -> Result<(), LoaderError> {
        for op in &delta.ops {
            crate::fault::point("apply.entry");
            match op {
                Op::UpsertEgressRule(rule) => {
                    touched.egress.insert(*rule);
                    self.set_egress_slot(rule, next, true)?;
                }
                Op::RemoveEgressRule(rule) => {
                    touched.egress.insert(*rule);
                    self.set_egress_slot(rule, next, false)?;
                }
                Op::UpsertPathRule { key, .. } | Op::RemovePathRule(key) => {
                    if touched.paths.insert(key.prefix.clone()) {
                        self.set_path_slot(&key.prefix, desired, next)?;
                    }
                }
                Op::SetMode(_)
                | Op::SetSyscalls(_)
                | Op::SetPathRestriction { .. }
                | Op::SetEgressMode(_) => {}
            }
        }
        Ok(())
    }

    /// Sets (`present`) or clears `slot`'s bit on `rule`'s entry.
    fn set_egress_slot(
        &mut self,
        rule: &EgressRule,
        slot: u32,
        present: bool,
    ) -> Result<(), LoaderError> {
        let ops = &mut self.map_ops;
        match rule.net.addr() {
            IpAddr::V4(_) => set_slot_bit(
                &mut self.maps.egress4,
                &egress_key::<Egress4Data>(rule),
                slot,
                present,
                ops,
            )
            .map_err(map_err("EGRESS4", rule.to_string())),
            IpAddr::V6(_) => set_slot_bit(
                &mut self.maps.egress6,
                &egress_key::<Egress6Data>(rule),
                slot,
                present,
                ops,
            )
            .map_err(map_err("EGRESS6", rule.to_string())),
        }
    }

    /// Writes slot `slot` of `prefix` as `rules` has it, in both keys.
    fn set_path_slot(
        &mut self,
        prefix: &PathPrefix,
        rules: &RuleSet,
        slot: u32,
    ) -> Result<(), LoaderError> {
        let (exact_key, subtree_key) = path_keys(prefix);
        self.map_ops += 1;
        let mut value = exact(self.maps.paths.get(&exact_key, 0), exact_key.prefix_len())
            .map_err(map_err("PATHS", prefix.as_str()))?
            .unwrap_or_default();
        let index = slot as usize;
        value.allow[index] = 0;
        value.deny[index] = 0;
        for access in Access::ALL {
            let key = PathRuleKey {
                access,
                prefix: prefix.clone(),
            };
            match rules.paths.rules.get(&key) {
                Some(Verdict::Allow) => value.allow[index] |= access_mask(access),
                Some(Verdict::Deny) => value.deny[index] |= access_mask(access),
                None => {}
            }
        }
        let bit = 1u8 << slot;
        if value.allow[index] | value.deny[index] != 0 {
            value.slots |= bit;
        } else {
            value.slots &= !bit;
        }
        self.write_path_value(prefix, &exact_key, &subtree_key, value)
    }

    fn write_path_value(
        &mut self,
        prefix: &PathPrefix,
        exact_key: &Key<PathData>,
        subtree_key: &Key<PathData>,
        value: RuleValue,
    ) -> Result<(), LoaderError> {
        for key in [exact_key, subtree_key] {
            let value = RuleValue {
                prefixlen: key.prefix_len(),
                ..value
            };
            self.map_ops += 1;
            if value.slots == 0 {
                remove_ignoring_missing(self.maps.paths.remove(key))
                    .map_err(map_err("PATHS", prefix.as_str()))?;
            } else {
                self.maps
                    .paths
                    .insert(key, value, 0)
                    .map_err(map_err("PATHS", prefix.as_str()))?;
            }
        }
        Ok(())
    }

    /// Makes slot `to` of the touched entries equal to slot `from`; visits
    /// `fault_point` (if any) before each entry.
    fn align_slots(
        &mut self,
        touched: &Touched,
        from: u32,
        to: u32,
        fault_point: Option<&str>,
    ) -> Result<(), LoaderError> {
        let (from_bit, to_bit) = (1u8 << from, 1u8 << to);
        for rule in &touched.egress {
            if let Some(point) = fault_point {
                crate::fault::point(point);
            }
            let ops = &mut self.map_ops;
            match rule.net.addr() {
                IpAddr::V4(_) => align_entry(
                    &mut self.maps.egress4,
                    &egress_key::<Egress4Data>(rule),
                    from,
                    to,
                    ops,
                )
                .map_err(map_err("EGRESS4", rule.to_string()))?,
                IpAddr::V6(_) => align_entry(
                    &mut self.maps.egress6,
                    &egress_key::<Egress6Data>(rule),
                    from,
                    to,
                    ops,
                )
                .map_err(map_err("EGRESS6", rule.to_string()))?,
            }
        }
        for prefix in &touched.paths {
            let (exact_key, subtree_key) = path_keys(prefix);
            self.map_ops += 1;
            let Some(mut value) = exact(self.maps.paths.get(&exact_key, 0), exact_key.prefix_len())
                .map_err(map_err("PATHS", prefix.as_str()))?
            else {
                continue;
            };
            value.allow[to as usize] = value.allow[from as usize];
            value.deny[to as usize] = value.deny[from as usize];
            value.slots = if value.slots & from_bit != 0 {
                from_bit | to_bit
            } else {
                0
            };
            self.write_path_value(prefix, &exact_key, &subtree_key, value)?;
        }
        Ok(())
    }

    /// After a failure: makes every entry's inactive slot equal its active one.
    pub(super) fn resync_inactive(&mut self) -> Result<(), LoaderError> {
        // The inactive slot may have been active a moment ago: wait for
        // probes still reading it before rewriting it (see `sys`).
        self.grace.wait().map_err(|e| {
            LoaderError::io("waiting for an RCU grace period (bpf_map_update_elem)", e)
        })?;
        let active = self.active_slot;
        let mut touched = Touched {
            egress: self.all_egress_keys()?,
            ..Touched::default()
        };
        for item in self.maps.paths.iter() {
            self.map_ops += 1;
            let (key, _) = item.map_err(map_err("PATHS", ""))?;
            if let Some(prefix) = exact_path(&key) {
                touched.paths.insert(prefix);
            }
        }
        self.align_slots(&touched, active, 1 - active, None)?;
        self.copy_generation(active, 1 - active)?;
        self.dirty = false;
        Ok(())
    }

    fn all_egress_keys(&mut self) -> Result<BTreeSet<EgressRule>, LoaderError> {
        let mut rules = BTreeSet::new();
        for item in self.maps.egress4.keys() {
            self.map_ops += 1;
            rules.insert(egress_rule::<Egress4Data>(
                &item.map_err(map_err("EGRESS4", ""))?,
            ));
        }
        for item in self.maps.egress6.keys() {
            self.map_ops += 1;
            rules.insert(egress_rule::<Egress6Data>(
                &item.map_err(map_err("EGRESS6", ""))?,
            ));
        }
        Ok(rules)
    }

    pub(super) fn apply_inner(
        &mut self,
        delta: &Delta,
        policy: Option<PolicyDigest>,
    ) -> Result<ApplyReport, LoaderError> {
        let ops_before = self.map_ops;
        let desired = delta::apply(&self.mirror.rules, delta);
        let current = self.active_slot;
        let next = 1 - current;
        let generation = self.mirror.generation + 1;

        let mut touched = Touched::default();
        let prepared = self
            .write_generation(&desired, generation, policy, next)
            .and_then(|()| self.write_slot_entries(delta, &desired, next, &mut touched));
        if let Err(error) = prepared {
            if self.align_slots(&touched, current, next, None).is_err()
                || self.copy_generation(current, next).is_err()
            {
                self.dirty = true;
            }
            return Err(error);
        }

        crate::fault::point("apply.before-flip");
        self.map_ops += 1;
        if let Err(error) = self.maps.active.set(0, next, 0) {
            // Not flipped: the previous generation is in force; undo the
            // inactive slot so a later apply cannot publish these entries.
            if self.align_slots(&touched, current, next, None).is_err()
                || self.copy_generation(current, next).is_err()
            {
                self.dirty = true;
            }
            return Err(map_err("ACTIVE", "0")(error));
        }
        self.active_slot = next;
        self.mirror = Applied {
            generation,
            rules: desired,
            policy,
        };
        crate::fault::point("apply.flipped");
        if self.grace.wait().is_err()
            || self
                .align_slots(&touched, next, current, Some("apply.align"))
                .is_err()
            || self.copy_generation(next, current).is_err()
        {
            self.dirty = true;
        }
        Ok(ApplyReport {
            generation,
            map_ops: self.map_ops - ops_before,
        })
    }

    /// Makes generation record `to` a copy of record `from`.
    fn copy_generation(&mut self, from: u32, to: u32) -> Result<(), LoaderError> {
        self.map_ops += 2;
        let record = self
            .maps
            .generations
            .get(&from, 0)
            .map_err(map_err("GENERATIONS", from.to_string()))?;
        self.maps
            .generations
            .set(to, record, 0)
            .map_err(map_err("GENERATIONS", to.to_string()))
    }

    fn write_generation(
        &mut self,
        rules: &RuleSet,
        generation: u64,
        policy: Option<PolicyDigest>,
        slot: u32,
    ) -> Result<(), LoaderError> {
        let value = Generation {
            generation,
            mode: match rules.mode {
                Mode::Enforce => abi::MODE_ENFORCE,
                Mode::Audit => abi::MODE_AUDIT,
            },
            syscalls_restricted: u32::from(matches!(rules.syscalls, SyscallRule::Allow(_))),
            egress_restricted: match rules.egress.mode {
                EgressMode::Unrestricted => abi::EGRESS_UNRESTRICTED,
                EgressMode::Allowlist => abi::EGRESS_ALLOWLIST,
                EgressMode::AllowlistAndHosts => abi::EGRESS_HOSTS,
            },
            read_restricted: u32::from(rules.paths.read == Restriction::Allowlist),
            write_restricted: u32::from(rules.paths.write == Restriction::Allowlist),
            path_denies: rules
                .paths
                .rules
                .iter()
                .filter(|(_, verdict)| **verdict == Verdict::Deny)
                .fold(0, |bits, (key, _)| {
                    bits | u32::from(access_mask(key.access))
                }),
            syscall_allow: match &rules.syscalls {
                SyscallRule::Allow(set) => *set.words(),
                SyscallRule::Unrestricted => [0; abi::SYSCALL_WORDS],
            },
            policy_sha256: policy.unwrap_or([0; 32]),
        };
        self.map_ops += 1;
        self.maps
            .generations
            .set(slot, value, 0)
            .map_err(map_err("GENERATIONS", slot.to_string()))
    }
}

/// Entries changed by one apply.
#[derive(Default)]
struct Touched {
    egress: BTreeSet<EgressRule>,
    paths: BTreeSet<PathPrefix>,
}

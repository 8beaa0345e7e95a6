//! `LearnedTable`: which addresses the resolver has allowed, for which host
//! rules, until when — the userspace record of `LEARNED4`/`LEARNED6`.
//!
//! Why this exists: the kernel maps hold only an address and an expiry; to
//! remove exactly the addresses a reload no longer justifies (and nothing
//! else), and to expire them without scanning, the daemon keeps who owns
//! each one and an expiry index. Pure data: it plans kernel writes, the
//! caller makes them, so it is tested without a kernel.

use std::collections::{BTreeMap, BTreeSet};

use crate::loader::learned::LearnedDest;
use crate::ruleset::HostRule;

/// A kernel write the table asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Insert or update `dest` with this expiry (`CLOCK_BOOTTIME` ns).
    Write(LearnedDest, u64),
    Remove(LearnedDest),
}

#[derive(Clone, Debug)]
struct Entry {
    expires_ns: u64,
    owners: BTreeSet<HostRule>,
}

#[derive(Clone, Debug, Default)]
pub struct LearnedTable {
    entries: BTreeMap<LearnedDest, Entry>,
    by_owner: BTreeMap<HostRule, BTreeSet<LearnedDest>>,
    by_expiry: BTreeSet<(u64, LearnedDest)>,
    /// Entries with an IPv4 address.
    ipv4: usize,
}

impl LearnedTable {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries of one address family (each has a map of its own).
    pub fn len_of_family(&self, ipv4: bool) -> usize {
        if ipv4 {
            self.ipv4
        } else {
            self.entries.len() - self.ipv4
        }
    }

    /// How many destinations `owner` justifies.
    pub fn owned_by(&self, owner: &HostRule) -> usize {
        self.by_owner.get(owner).map_or(0, BTreeSet::len)
    }

    /// Whether `owner` already justifies `dest`.
    pub fn owns(&self, owner: &HostRule, dest: &LearnedDest) -> bool {
        self.by_owner
            .get(owner)
            .is_some_and(|dests| dests.contains(dest))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `dest` is allowed now, in this record.
    pub fn contains(&self, dest: &LearnedDest) -> bool {
        self.entries.contains_key(dest)
    }

    /// The kernel write that allows `dest` for `owner` until `expires_ns`;
    /// `None` when the kernel already allows it at least that long. Call
    /// `record` once the write is made.
    pub fn plan_learn(&self, dest: &LearnedDest, expires_ns: u64) -> Option<Change> {
        match self.entries.get(dest) {
            Some(entry) if entry.expires_ns >= expires_ns => None,
            _ => Some(Change::Write(*dest, expires_ns)),
        }
    }

    /// Records that `owner` justifies `dest` until at least `expires_ns`.
    pub fn record(&mut self, owner: &HostRule, dest: &LearnedDest, expires_ns: u64) {
        if !self.entries.contains_key(dest) && dest.addr.is_ipv4() {
            self.ipv4 += 1;
        }
        let entry = self.entries.entry(*dest).or_insert_with(|| Entry {
            expires_ns: 0,
            owners: BTreeSet::new(),
        });
        if expires_ns > entry.expires_ns {
            self.by_expiry.remove(&(entry.expires_ns, *dest));
            entry.expires_ns = expires_ns;
            self.by_expiry.insert((expires_ns, *dest));
        }
        if entry.owners.insert(owner.clone()) {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(*dest);
        }
    }

    /// Drops every entry expired at `now_ns`; returns the kernel removals.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Change> {
        let mut removed = Vec::new();
        while let Some(&(expires_ns, dest)) = self.by_expiry.first() {
            if expires_ns > now_ns {
                break;
            }
            self.forget(&dest);
            removed.push(Change::Remove(dest));
        }
        removed
    }

    /// Keeps only what the host rules in `kept` justify: every other owner
    /// is dropped, and an entry left without owners is removed. Costs in
    /// proportion to the entries of the dropped owners.
    pub fn retain_owners(&mut self, kept: &BTreeSet<HostRule>) -> Vec<Change> {
        let dropped: Vec<HostRule> = self
            .by_owner
            .keys()
            .filter(|owner| !kept.contains(*owner))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for owner in dropped {
            let dests = self.by_owner.remove(&owner).unwrap_or_default();
            for dest in dests {
                let orphaned = match self.entries.get_mut(&dest) {
                    Some(entry) => {
                        entry.owners.remove(&owner);
                        entry.owners.is_empty()
                    }
                    None => false,
                };
                if orphaned {
                    self.forget(&dest);
                    removed.push(Change::Remove(dest));
                }
            }
        }
        removed
    }

    fn forget(&mut self, dest: &LearnedDest) {
        if let Some(entry) = self.entries.remove(dest) {
            if dest.addr.is_ipv4() {
                self.ipv4 -= 1;
            }
            self.by_expiry.remove(&(entry.expires_ns, *dest));
            for owner in entry.owners {
                if let Some(dests) = self.by_owner.get_mut(&owner) {
                    dests.remove(dest);
                    if dests.is_empty() {
                        self.by_owner.remove(&owner);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(pattern: &str) -> HostRule {
        HostRule {
            pattern: pattern.into(),
            port: None,
        }
    }

    fn dest(text: &str) -> LearnedDest {
        LearnedDest::new(text.parse().unwrap(), None)
    }

    #[test]
    fn a_longer_answer_extends_and_a_shorter_one_writes_nothing() {
        let mut table = LearnedTable::default();
        let a = dest("198.18.0.1");
        assert_eq!(table.plan_learn(&a, 10), Some(Change::Write(a, 10)));
        table.record(&rule("api.test"), &a, 10);
        assert_eq!(table.plan_learn(&a, 5), None);
        assert_eq!(table.plan_learn(&a, 20), Some(Change::Write(a, 20)));
        table.record(&rule("api.test"), &a, 20);
        assert!(table.expire(10).is_empty(), "the later expiry counts");
        assert_eq!(table.expire(20), vec![Change::Remove(a)]);
        assert!(table.is_empty());
    }

    #[test]
    fn removing_one_owner_keeps_addresses_another_still_justifies() {
        let mut table = LearnedTable::default();
        let (shared, own) = (dest("198.18.0.1"), dest("2001:db8::2"));
        table.record(&rule("a.test"), &shared, 100);
        table.record(&rule("b.test"), &shared, 100);
        table.record(&rule("a.test"), &own, 100);
        assert_eq!(
            (table.len_of_family(true), table.len_of_family(false)),
            (1, 1)
        );
        assert_eq!(table.owned_by(&rule("a.test")), 2);
        let kept = BTreeSet::from([rule("b.test")]);
        assert_eq!(table.retain_owners(&kept), vec![Change::Remove(own)]);
        assert!(table.contains(&shared));
        assert!(
            table.retain_owners(&kept).is_empty(),
            "nothing left to drop"
        );
        assert_eq!(
            table.retain_owners(&BTreeSet::new()),
            vec![Change::Remove(shared)]
        );
        assert!(table.is_empty());
        assert!(table.by_owner.is_empty() && table.by_expiry.is_empty());
        assert_eq!(table.len_of_family(true), 0);
    }

    #[test]
    fn v4_mapped_answers_are_kept_as_ipv4() {
        let mapped = dest("::ffff:198.18.0.7");
        assert_eq!(mapped, dest("198.18.0.7"));
    }
}

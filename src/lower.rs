//! Lowering: `Policy` → `RuleSet`, plus an honest list of what the kernel
//! will not enforce and why.
//!
//! Why this exists: the policy says what an operator means; the kernel can
//! only match syscall numbers, path prefixes and IP networks. This module is
//! the one place that decides how the first maps onto the second, so that
//! `check`, `diff`, the daemon and the loader all agree on it.
//!
//! Invariants:
//! - Canonical output: reordering, reformatting or repeating entries yields
//!   an identical `RuleSet`; a prefix or network already covered by a wider
//!   rule of the same kind is pruned, and an allow shadowed by a deny is
//!   dropped (deny wins) and reported.
//! - Absent stays absent: a missing section lowers to "unrestricted", a
//!   present-but-empty one to "deny all".

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::policy::{Capability, NetworkEntry, Policy, SyscallToken};
use crate::ruleset::{
    Access, Arch, EgressMode, EgressRule, EgressRules, HostRule, PathPrefix, PathRuleKey,
    PathRules, Restriction, RuleSet, SyscallRule, SyscallSet, Verdict,
};

/// Paths nobody confined should write to when the policy denies
/// `file_write` or `file_delete`.
pub const WRITE_DENY_FLOOR: [&str; 3] = ["/etc", "/root/.ssh", "/var/run/secrets"];

/// Syscalls that step around path or syscall rules; `check` warns when a
/// policy allows one (see the design note, "File paths").
pub const BYPASS_SYSCALLS: [&str; 6] = [
    "io_uring_setup",
    "open_by_handle_at",
    "mount",
    "unshare",
    "setns",
    "pivot_root",
];

/// One thing in the policy that the kernel does not enforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotLowered {
    /// Key path and, for list items, the item: `network.allowlist: api.example.com`.
    pub what: String,
    pub why: String,
}

/// The result of lowering: the kernel rules and everything else worth saying.
#[derive(Clone, Debug)]
pub struct Lowered {
    pub arch: Arch,
    pub rules: RuleSet,
    /// The allowlist's host names, enforced by DNS-aware egress (`dns`):
    /// non-empty exactly when `rules.egress.mode` is `AllowlistAndHosts`.
    pub hosts: BTreeSet<HostRule>,
    pub not_lowered: Vec<NotLowered>,
    pub warnings: Vec<String>,
    /// What the file uses that upstream Agent Assembly does not define.
    pub extensions: Vec<String>,
    /// What the probes enforce on confined processes beyond the rules
    /// written here, because the rules could not be checked otherwise.
    pub enforced_defaults: Vec<String>,
}

/// Lowers `policy` for the syscall table of `arch`.
pub fn lower(policy: &Policy, arch: Arch) -> Lowered {
    let mut not_lowered = Vec::new();
    let spec = &policy.spec;

    let syscalls = match &spec.syscalls {
        None => SyscallRule::Unrestricted,
        Some(section) => SyscallRule::Allow(lower_syscalls(&section.allow, arch, &mut not_lowered)),
    };

    let write_floor = spec
        .capabilities
        .as_ref()
        .and_then(|c| c.deny.as_ref())
        .is_some_and(|deny| deny.iter().any(Capability::implies_write_floor));
    let paths = lower_paths(policy, write_floor, &mut not_lowered);

    let (egress, hosts) = match &spec.network {
        None => (EgressRules::default(), BTreeSet::new()),
        Some(section) => lower_egress(&section.allowlist, &mut not_lowered),
    };

    report_gateway_sections(policy, &mut not_lowered);
    let rules = RuleSet {
        mode: policy.mode(),
        syscalls,
        paths,
        egress,
    };
    let mut warnings = policy.warnings.clone();
    warnings.extend(warnings_for(&rules, arch));
    let enforced_defaults = enforced_defaults(&rules, arch);
    Lowered {
        arch,
        rules,
        hosts,
        not_lowered,
        warnings,
        extensions: policy.extensions(),
        enforced_defaults,
    }
}

/// What the probes enforce beyond the written rules (see the probes'
/// headers): the things that would otherwise undo the confinement or reach
/// a destination the egress allowlist never sees.
pub fn enforced_defaults(rules: &RuleSet, arch: Arch) -> Vec<String> {
    let mut defaults = vec![
        "bpf is never allowed to a confined process (it could detach the hooks or edit the rules)".to_owned(),
        "syscalls entered through the ia32 (int 0x80) or x32 tables are never allowed".to_owned(),
        "ptrace-class access (ptrace attach, process_vm_readv/writev, pidfd_getfd, process_madvise, kcmp, prlimit64 of another process, opening /proc/PID/mem, environ, auxv or pagemap) only to processes that are confined too".to_owned(),
        "io_uring requests are judged as the syscall each stands for, and only when io_uring_enter is allowed; opens into direct descriptors are refused".to_owned(),
        "no new process may share its creator's descriptors (CLONE_FILES) or memory (CLONE_VM without vfork's wait): a process killed for a denied call would leave the call's result to the other".to_owned(),
        "no signal to the daemon (or exec) holding the pins, nor to every process (kill -1); no unlink or rename of a pin (aa-policyd-*)".to_owned(),
    ];
    let unshare_allowed = match &rules.syscalls {
        SyscallRule::Unrestricted => true,
        SyscallRule::Allow(set) => arch
            .syscall_number("unshare")
            .is_some_and(|n| set.contains(n)),
    };
    if !unshare_allowed {
        defaults.push(
            "clone and clone3 that create namespaces are judged as unshare, which is not allowed"
                .to_owned(),
        );
    }
    if rules.egress.mode == EgressMode::AllowlistAndHosts {
        defaults.push("DNS of confined processes (port 53, UDP and TCP, to any server) is answered by the daemon's resolver, which refuses names the allowlist does not name".to_owned());
    }
    if rules.egress.mode.restricts() {
        defaults.push("under the egress allowlist, also refused because the allowlist cannot judge them: socket families other than unix, inet, inet6 and netlink (packet, vsock, ...); raw and ICMP (ping) sockets; transport protocols other than TCP, UDP and UDP-Lite (MPTCP too: the kernel opens its further subflows to addresses the peer announces, unchecked); IPv4 options (source routing) and IPv6 routing headers, by setsockopt or ancillary data".to_owned());
    }
    defaults
}

fn lower_syscalls(
    tokens: &[SyscallToken],
    arch: Arch,
    not_lowered: &mut Vec<NotLowered>,
) -> SyscallSet {
    let mut set = SyscallSet::empty(arch);
    let mut missing = BTreeSet::new();
    for token in tokens {
        for name in token.names() {
            match arch.syscall_number(name) {
                Some(number) => set.insert(number),
                // A group spans both architectures; only a name the author
                // wrote out is worth reporting.
                None if matches!(token, SyscallToken::Name(_)) => {
                    missing.insert(name.to_owned());
                }
                None => {}
            }
        }
    }
    not_lowered.extend(missing.into_iter().map(|name| NotLowered {
        what: format!("syscalls.allow: {name}"),
        why: format!("no such syscall on {arch}"),
    }));
    set
}

fn lower_paths(policy: &Policy, write_floor: bool, not_lowered: &mut Vec<NotLowered>) -> PathRules {
    let fs = policy.spec.filesystem.as_ref();
    let deny: BTreeSet<PathPrefix> = fs
        .and_then(|f| f.deny.as_ref())
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let floor: BTreeSet<PathPrefix> = if write_floor {
        WRITE_DENY_FLOOR
            .iter()
            .filter_map(|p| PathPrefix::parse(p).ok())
            .collect()
    } else {
        BTreeSet::new()
    };

    let mut paths = PathRules::default();
    for access in Access::ALL {
        let section = fs.and_then(|f| match access {
            Access::Read => f.read.as_ref(),
            Access::Write => f.write.as_ref(),
        });
        let restriction = if section.is_some() {
            Restriction::Allowlist
        } else {
            Restriction::Unrestricted
        };
        paths.set_restriction(access, restriction);

        let mut denied = deny.clone();
        if access == Access::Write {
            denied.extend(floor.iter().cloned());
        }
        let denied = outermost(&denied);
        let allowed: BTreeSet<PathPrefix> = section
            .map(|s| s.allow.iter().cloned().collect())
            .unwrap_or_default();
        for prefix in outermost(&allowed) {
            match covering(&prefix, &denied) {
                Some(by) => not_lowered.push(NotLowered {
                    what: format!("filesystem.{access}.allow: {prefix}"),
                    why: format!("shadowed by the deny rule {by} (deny wins)"),
                }),
                None => {
                    paths
                        .rules
                        .insert(PathRuleKey { access, prefix }, Verdict::Allow);
                }
            }
        }
        for prefix in denied {
            paths
                .rules
                .insert(PathRuleKey { access, prefix }, Verdict::Deny);
        }
    }
    paths
}

/// The prefixes of `set` that no other member covers.
fn outermost(set: &BTreeSet<PathPrefix>) -> BTreeSet<PathPrefix> {
    set.iter()
        .filter(|p| !p.ancestors().any(|a| set.contains(a)))
        .cloned()
        .collect()
}

/// The member of `set` equal to or above `prefix`, if any.
fn covering<'a>(prefix: &PathPrefix, set: &'a BTreeSet<PathPrefix>) -> Option<&'a PathPrefix> {
    std::iter::once(prefix.as_str())
        .chain(prefix.ancestors())
        .find_map(|candidate| set.get(candidate))
}

fn lower_egress(
    entries: &[NetworkEntry],
    not_lowered: &mut Vec<NotLowered>,
) -> (EgressRules, BTreeSet<HostRule>) {
    if entries.contains(&NetworkEntry::AnyHost) {
        // `*` allows every host, as upstream's gateway reads it: nothing
        // is left for the kernel to restrict, and every other entry is moot.
        not_lowered.extend(
            entries
                .iter()
                .filter(|entry| **entry != NetworkEntry::AnyHost)
                .map(|entry| NotLowered {
                    what: format!("network.allowlist: {entry}"),
                    why: "covered by `*`, which allows every destination".into(),
                }),
        );
        return (EgressRules::default(), BTreeSet::new());
    }
    let mut rules = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for entry in entries {
        match entry {
            NetworkEntry::Address(rule) => {
                rules.insert(*rule);
            }
            NetworkEntry::Host { pattern, port } => {
                hosts.insert(HostRule {
                    pattern: pattern.clone(),
                    port: *port,
                });
            }
            NetworkEntry::AnyHost => {}
        }
    }
    let mode = if hosts.is_empty() {
        EgressMode::Allowlist
    } else {
        EgressMode::AllowlistAndHosts
    };
    let rules = EgressRules {
        mode,
        rules: prune_covered_egress(rules),
    };
    (rules, hosts)
}

/// Drops rules another rule already covers. Checks only the prefix lengths
/// that occur, so the cost is O(n · distinct lengths · log n), not O(n²).
fn prune_covered_egress(rules: BTreeSet<EgressRule>) -> BTreeSet<EgressRule> {
    let lengths: BTreeSet<(bool, u8)> = rules
        .iter()
        .map(|r| (r.net.addr().is_ipv4(), r.net.prefix_len()))
        .collect();
    rules
        .iter()
        .filter(|rule| {
            let v4 = rule.net.addr().is_ipv4();
            !lengths
                .iter()
                .filter(|(family, len)| *family == v4 && *len <= rule.net.prefix_len())
                .filter_map(|(_, len)| rule.net.supernet(*len))
                .flat_map(|net| [EgressRule { net, port: None }, EgressRule { net, ..**rule }])
                .any(|wider| wider != **rule && rules.contains(&wider))
        })
        .copied()
        .collect()
}

fn report_gateway_sections(policy: &Policy, not_lowered: &mut Vec<NotLowered>) {
    let spec = &policy.spec;
    let gateway = "enforced by the Agent Assembly gateway, not the kernel";
    let present = [
        ("scope", spec.scope.is_some()),
        ("capabilities", spec.capabilities.is_some()),
        ("tools", spec.tools.is_some()),
        ("budget", spec.budget.is_some()),
        ("schedule", spec.schedule.is_some()),
        ("data", spec.data.is_some()),
        (
            "approval_timeout_secs",
            spec.approval_timeout_secs.is_some(),
        ),
        ("approval", spec.approval.is_some()),
    ];
    for (section, _) in present.iter().filter(|(_, is_present)| *is_present) {
        let why = if *section == "capabilities" {
            format!("{gateway} (a denied file_write/file_delete adds the write-deny floor)")
        } else {
            gateway.to_owned()
        };
        not_lowered.push(NotLowered {
            what: (*section).to_owned(),
            why,
        });
    }
    let conditions = spec.tools.iter().flat_map(|tools| &tools.0);
    for (tool, rule) in conditions {
        if let Some(condition) = &rule.requires_approval_if {
            not_lowered.push(NotLowered {
                what: format!("tools.{tool}.requires_approval_if: {}", condition.0),
                why: "an approval needs a person to decide while the call waits; the kernel can only allow or deny, so the gateway asks (a `path starts_with` condition is not turned into a kernel path rule: here that rule would deny, not ask)".into(),
            });
        }
    }
}

fn warnings_for(rules: &RuleSet, arch: Arch) -> Vec<String> {
    let mut warnings = Vec::new();
    match &rules.syscalls {
        SyscallRule::Unrestricted => warnings.push(
            "syscalls: no allowlist, so confined processes may use every syscall, including ones that bypass path rules".to_owned(),
        ),
        SyscallRule::Allow(set) => {
            if set.is_empty() {
                warnings.push("syscalls.allow is empty: any confined process is killed at its first syscall, and the daemon refuses to load it while a process is confined".to_owned());
            }
            let bypasses: Vec<&str> = BYPASS_SYSCALLS
                .iter()
                .copied()
                .filter(|name| arch.syscall_number(name).is_some_and(|n| set.contains(n)))
                .collect();
            if !bypasses.is_empty() {
                warnings.push(format!(
                    "syscalls.allow permits {}: these let a confined process step around path rules or syscall hooks",
                    bypasses.join(", ")
                ));
            }
        }
    }
    warnings.extend(movable_denies(&rules.paths));
    if rules.egress.mode == EgressMode::Allowlist && rules.egress.rules.is_empty() {
        warnings
            .push("network.allowlist is empty: confined processes can connect nowhere".to_owned());
    }
    warnings
}

/// Deny rules a confined process may move out from under themselves: rules
/// are paths, so renaming a writable parent directory takes what is below
/// it to a name no rule covers.
fn movable_denies(paths: &PathRules) -> Vec<String> {
    let write_allowed: BTreeSet<PathPrefix> = paths
        .rules
        .iter()
        .filter(|(key, verdict)| key.access == Access::Write && **verdict == Verdict::Allow)
        .map(|(key, _)| key.prefix.clone())
        .collect();
    let denied: BTreeSet<&PathPrefix> = paths
        .rules
        .iter()
        .filter(|(_, verdict)| **verdict == Verdict::Deny)
        .map(|(key, _)| &key.prefix)
        .collect();
    denied
        .into_iter()
        .filter_map(|prefix| {
            let parent = prefix.ancestors().next().filter(|p| *p != "/")?;
            let writable = match paths.write {
                Restriction::Unrestricted => Some("write is unrestricted".to_owned()),
                Restriction::Allowlist => covering(&PathPrefix::parse(parent).ok()?, &write_allowed)
                    .map(|by| format!("it lies inside the write-allowed {by}")),
            }?;
            Some(format!(
                "filesystem.deny {prefix}: {writable}, so renaming a parent directory moves it out from under the rule (rules are paths); deny writes to its parent too"
            ))
        })
        .collect()
}

/// Counts for the human summary and `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RuleCounts {
    pub syscalls: Option<usize>,
    pub path_rules: BTreeMap<String, usize>,
    pub egress_rules: usize,
}

impl RuleCounts {
    pub fn of(rules: &RuleSet) -> Self {
        let mut path_rules = BTreeMap::new();
        for (key, verdict) in &rules.paths.rules {
            *path_rules
                .entry(format!("{}_{}", key.access, verdict))
                .or_insert(0) += 1;
        }
        RuleCounts {
            syscalls: match &rules.syscalls {
                SyscallRule::Unrestricted => None,
                SyscallRule::Allow(set) => Some(set.len()),
            },
            path_rules,
            egress_rules: rules.egress.rules.len(),
        }
    }
}

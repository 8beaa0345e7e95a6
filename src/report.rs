//! Rendering rule sets and deltas for people (one line per fact) and for
//! scripts (JSON, schema documented in the README).
//!
//! Why this exists: `check`, `diff`, the daemon's logs and `status` all show
//! the same things; one renderer keeps their wording and JSON identical, and
//! keeps formatting out of the pure engine.

use serde_json::{Value, json};

use crate::delta::{Delta, Op};
use crate::lower::{Lowered, RuleCounts};
use crate::ruleset::{EgressMode, Restriction, RuleSet, SyscallRule, SyscallSet};

/// The lowered rule set as JSON (`check --json`).
pub fn lowered_json(lowered: &Lowered) -> Value {
    let mut value = ruleset_json(&lowered.rules);
    value["arch"] = json!(lowered.arch);
    value["not_lowered"] = json!(lowered.not_lowered);
    value["warnings"] = json!(lowered.warnings);
    value["extensions"] = json!(lowered.extensions);
    value["enforced_defaults"] = json!(lowered.enforced_defaults);
    value["dns_hosts"] = json!(
        lowered
            .hosts
            .iter()
            .map(|host| json!({ "pattern": host.pattern, "port": host.port }))
            .collect::<Vec<_>>()
    );
    value
}

/// A rule set as JSON.
pub fn ruleset_json(rules: &RuleSet) -> Value {
    let syscalls = syscalls_json(&rules.syscalls);
    let path_rules: Vec<Value> = rules
        .paths
        .rules
        .iter()
        .map(|(key, verdict)| json!({ "access": key.access, "prefix": key.prefix, "verdict": verdict }))
        .collect();
    let egress_rules: Vec<Value> = rules
        .egress
        .rules
        .iter()
        .map(|rule| json!({ "net": rule.net.to_string(), "port": rule.port }))
        .collect();
    json!({
        "mode": rules.mode,
        "syscalls": syscalls,
        "paths": { "read": rules.paths.read, "write": rules.paths.write, "rules": path_rules },
        "egress": { "mode": rules.egress.mode, "rules": egress_rules },
        "counts": RuleCounts::of(rules),
    })
}

/// A syscall rule as JSON: `{"kind": "unrestricted"}` or the allowlist.
fn syscalls_json(rule: &SyscallRule) -> Value {
    match rule {
        SyscallRule::Unrestricted => json!({ "kind": "unrestricted" }),
        SyscallRule::Allow(set) => json!({
            "kind": "allowlist",
            "arch": set.arch(),
            "count": set.len(),
            "allow": set.numbers().map(|n| json!({ "nr": n, "name": set.name_of(n) })).collect::<Vec<_>>(),
        }),
    }
}

/// The human summary printed by `check`.
pub fn summary_lines(lowered: &Lowered) -> Vec<String> {
    let rules = &lowered.rules;
    let mut lines = vec![format!(
        "mode {}, syscalls lowered for {}",
        rules.mode, lowered.arch
    )];
    lines.push(match &rules.syscalls {
        SyscallRule::Unrestricted => "syscalls:   unrestricted (no syscalls section)".to_owned(),
        SyscallRule::Allow(set) => format!("syscalls:   allowlist of {} syscalls", set.len()),
    });
    let counts = RuleCounts::of(rules);
    let count = |key: &str| counts.path_rules.get(key).copied().unwrap_or(0);
    let restriction = |r: Restriction, allowed: usize| match r {
        Restriction::Unrestricted => "unrestricted".to_owned(),
        Restriction::Allowlist => format!("allowlist of {}", plural(allowed, "prefix", "prefixes")),
    };
    lines.push(format!(
        "filesystem: read {}, write {}; deny {} for read, {} for write",
        restriction(rules.paths.read, count("read_allow")),
        restriction(rules.paths.write, count("write_allow")),
        plural(count("read_deny"), "prefix", "prefixes"),
        plural(count("write_deny"), "prefix", "prefixes"),
    ));
    lines.push(match rules.egress.mode {
        EgressMode::Unrestricted => {
            "network:    egress unrestricted (no network section, or `*` in its allowlist)"
                .to_owned()
        }
        EgressMode::Allowlist => format!(
            "network:    egress allowlist of {}",
            plural(rules.egress.rules.len(), "kernel rule", "kernel rules")
        ),
        EgressMode::AllowlistAndHosts => format!(
            "network:    egress allowlist of {} and {} (DNS-aware egress)",
            plural(rules.egress.rules.len(), "kernel rule", "kernel rules"),
            plural(lowered.hosts.len(), "host name", "host names")
        ),
    });
    for host in &lowered.hosts {
        lines.push(format!(
            "enforced by DNS-aware egress: network.allowlist: {host} (confined DNS is answered by the daemon's resolver; the addresses it answers for this name are allowed until their TTL runs out)"
        ));
    }
    for item in &lowered.not_lowered {
        lines.push(format!("not lowered: {}: {}", item.what, item.why));
    }
    for default in &lowered.enforced_defaults {
        lines.push(format!("also enforced: {default}"));
    }
    for warning in &lowered.warnings {
        lines.push(format!("warning: {warning}"));
    }
    for extension in &lowered.extensions {
        lines.push(format!("aa-policyd extension: {extension}"));
    }
    lines
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line per op, `kind sign details`, with sign `+` add, `-` remove,
/// `~` change. `applied` is the rule set the delta starts from.
pub fn op_line(op: &Op, applied: &RuleSet) -> String {
    match op {
        Op::SetMode(mode) => format!("mode ~ {} -> {mode}", applied.mode),
        Op::SetSyscalls(rule) => format!("syscalls ~ {}", syscall_change(&applied.syscalls, rule)),
        Op::SetPathRestriction {
            access,
            restriction,
        } => format!(
            "path-restriction ~ {access} {}",
            match restriction {
                Restriction::Unrestricted => "unrestricted",
                Restriction::Allowlist => "allowlist",
            }
        ),
        Op::RemovePathRule(key) => {
            let verdict = applied
                .paths
                .rules
                .get(key)
                .map_or(String::new(), |v| format!("{v} "));
            format!("path - {} {verdict}{}", key.access, key.prefix)
        }
        Op::UpsertPathRule { key, verdict } => {
            let sign = if applied.paths.rules.contains_key(key) {
                '~'
            } else {
                '+'
            };
            format!("path {sign} {} {verdict} {}", key.access, key.prefix)
        }
        Op::SetEgressMode(mode) => format!(
            "egress-mode ~ {}",
            match mode {
                EgressMode::Unrestricted => "unrestricted",
                EgressMode::Allowlist => "allowlist",
                EgressMode::AllowlistAndHosts => "allowlist+hosts",
            }
        ),
        Op::RemoveEgressRule(rule) => format!("egress - {rule}"),
        Op::UpsertEgressRule(rule) => format!("egress + {rule}"),
    }
}

fn syscall_change(from: &SyscallRule, to: &SyscallRule) -> String {
    match (from, to) {
        (SyscallRule::Allow(old), SyscallRule::Allow(new)) => {
            let (added, removed) = syscall_names_changed(old, new);
            let mut parts: Vec<String> = added.iter().map(|n| format!("+{n}")).collect();
            parts.extend(removed.iter().map(|n| format!("-{n}")));
            format!("{} ({} allowed)", parts.join(" "), new.len())
        }
        (SyscallRule::Unrestricted, SyscallRule::Allow(new)) => {
            format!("allowlist of {} (was unrestricted)", new.len())
        }
        (SyscallRule::Allow(old), SyscallRule::Unrestricted) => {
            format!("unrestricted (was an allowlist of {})", old.len())
        }
        (SyscallRule::Unrestricted, SyscallRule::Unrestricted) => "unrestricted".to_owned(),
    }
}

/// Names added to and removed from a syscall set.
pub fn syscall_names_changed(old: &SyscallSet, new: &SyscallSet) -> (Vec<String>, Vec<String>) {
    let added = new
        .numbers()
        .filter(|&n| !old.contains(n))
        .map(|n| new.name_of(n))
        .collect();
    let removed = old
        .numbers()
        .filter(|&n| !new.contains(n))
        .map(|n| old.name_of(n))
        .collect();
    (added, removed)
}

/// A delta as JSON: one object per op.
pub fn delta_json(delta: &Delta, applied: &RuleSet) -> Value {
    let ops: Vec<Value> = delta
        .ops
        .iter()
        .map(|op| match op {
            Op::SetMode(mode) => json!({ "op": "set_mode", "mode": mode }),
            Op::SetSyscalls(rule) => {
                let (added, removed) = match (&applied.syscalls, rule) {
                    (SyscallRule::Allow(old), SyscallRule::Allow(new)) => syscall_names_changed(old, new),
                    _ => (Vec::new(), Vec::new()),
                };
                json!({ "op": "set_syscalls", "to": syscalls_json(rule), "added": added, "removed": removed })
            }
            Op::SetPathRestriction { access, restriction } => {
                json!({ "op": "set_path_restriction", "access": access, "restriction": restriction })
            }
            Op::RemovePathRule(key) => json!({ "op": "remove_path_rule", "access": key.access, "prefix": key.prefix }),
            Op::UpsertPathRule { key, verdict } => {
                json!({ "op": "upsert_path_rule", "access": key.access, "prefix": key.prefix, "verdict": verdict })
            }
            Op::SetEgressMode(mode) => json!({ "op": "set_egress_mode", "mode": mode }),
            Op::RemoveEgressRule(rule) => json!({ "op": "remove_egress_rule", "net": rule.net.to_string(), "port": rule.port }),
            Op::UpsertEgressRule(rule) => json!({ "op": "upsert_egress_rule", "net": rule.net.to_string(), "port": rule.port }),
        })
        .collect();
    Value::Array(ops)
}

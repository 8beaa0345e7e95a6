//! Parse + lower + diff for policies of 1k, 10k and 100k kernel rules with
//! one rule changed: the work the daemon does on every save.
//!
//! Run: `cargo bench --bench engine`. The generated policies go through the
//! same size-capped `Policy::parse_bytes` as a real file (the 100k one is
//! ~0.7 MiB, under the 1 MiB cap). Rules are split between deny paths (each
//! lowers to a read and a write rule) and IPv4 egress hosts.

use std::hint::black_box;
use std::path::Path;

use aa_policyd::delta::diff;
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{Arch, RuleSet};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A policy with `rules` kernel rules, plus one more egress host when
/// `one_more` is set: the one-rule change.
fn policy_text(rules: usize, one_more: bool) -> String {
    let deny_paths = rules * 3 / 10; // x2 rules each (read + write)
    let egress = rules - 2 * deny_paths;
    let paths: Vec<String> = (0..deny_paths).map(|i| format!("/{i:x}")).collect();
    let mut hosts: Vec<String> = (0..egress as u32)
        .map(|i| std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
        .collect();
    if one_more {
        hosts.push("11.0.0.1".to_owned());
    }
    format!(
        "apiVersion: agent-assembly.dev/v1\nkind: Policy\nmetadata: {{name: bench}}\nspec:\n  syscalls: {{allow: ['@system-service']}}\n  filesystem:\n    deny: [{}]\n  network:\n    allowlist: [{}]\n",
        paths.join(","),
        hosts.join(",")
    )
}

fn pipeline(applied: &RuleSet, text: &[u8]) -> usize {
    let policy = Policy::parse_bytes(text, Path::new("bench.yaml")).expect("bench policy is valid");
    let desired = lower(&policy, Arch::X86_64).rules;
    diff(applied, &desired).len()
}

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_lower_diff");
    group.sample_size(10);
    for rules in [1_000, 10_000, 100_000] {
        let old = policy_text(rules, false);
        let new = policy_text(rules, true);
        let old_policy = Policy::parse_bytes(old.as_bytes(), Path::new("old.yaml")).expect("valid");
        let applied = lower(&old_policy, Arch::X86_64).rules;
        let kernel_rules = applied.paths.rules.len() + applied.egress.rules.len();
        let ops = pipeline(&applied, new.as_bytes());
        println!(
            "{rules} rules: policy {} bytes, {kernel_rules} kernel rules, one-rule change = {ops} ops",
            new.len()
        );
        assert_eq!(ops, 1, "one rule added must be exactly one op");
        group.bench_with_input(BenchmarkId::new("all", rules), &new, |b, text| {
            b.iter(|| pipeline(black_box(&applied), black_box(text.as_bytes())))
        });
        group.bench_with_input(BenchmarkId::new("parse", rules), &new, |b, text| {
            b.iter(|| {
                Policy::parse_bytes(black_box(text.as_bytes()), Path::new("b")).map(|p| p.form)
            })
        });
        let new_rules = lower(
            &Policy::parse_bytes(new.as_bytes(), Path::new("b")).expect("valid"),
            Arch::X86_64,
        )
        .rules;
        group.bench_with_input(BenchmarkId::new("diff", rules), &new_rules, |b, desired| {
            b.iter(|| diff(black_box(&applied), black_box(desired)).len())
        });
    }
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);

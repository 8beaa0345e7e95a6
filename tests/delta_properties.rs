//! Property tests of the pure engine: `diff` is exact, minimal and stable
//! under reformatting. 1,000 cases each.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aa_policyd::delta::{apply, diff};
use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{
    Access, Arch, EgressMode, EgressRule, EgressRules, IpCidr, Mode, PathPrefix, PathRuleKey,
    PathRules, Restriction, RuleSet, SyscallRule, SyscallSet, Verdict,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: 1000,
        ..Config::default()
    }
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Enforce), Just(Mode::Audit)]
}

fn syscall_rule() -> impl Strategy<Value = SyscallRule> {
    prop_oneof![
        1 => Just(SyscallRule::Unrestricted),
        4 => prop::collection::btree_set(0u32..470, 0..40).prop_map(|numbers| {
            let mut set = SyscallSet::empty(Arch::X86_64);
            numbers.into_iter().for_each(|n| set.insert(n));
            SyscallRule::Allow(set)
        }),
    ]
}

fn restriction() -> impl Strategy<Value = Restriction> {
    prop_oneof![
        Just(Restriction::Unrestricted),
        Just(Restriction::Allowlist)
    ]
}

/// Paths from a small alphabet so two rule sets share many keys.
fn path_prefix() -> impl Strategy<Value = PathPrefix> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "srv", "etc", "x-y"]),
        0..4,
    )
    .prop_map(|parts| {
        PathPrefix::parse(&format!("/{}", parts.join("/"))).expect("generated path is valid")
    })
}

fn path_rules() -> impl Strategy<Value = PathRules> {
    let key = (
        prop_oneof![Just(Access::Read), Just(Access::Write)],
        path_prefix(),
    )
        .prop_map(|(access, prefix)| PathRuleKey { access, prefix });
    let verdict = prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny)];
    (
        restriction(),
        restriction(),
        prop::collection::btree_map(key, verdict, 0..20),
    )
        .prop_map(|(read, write, rules)| PathRules { read, write, rules })
}

fn egress_rule() -> impl Strategy<Value = EgressRule> {
    let v4 = (0u32..8, prop::sample::select(vec![8u8, 16, 24, 32]))
        .prop_map(|(n, len)| IpCidr::host(std::net::Ipv4Addr::from(n << 24).into()).supernet(len))
        .prop_filter_map("supernet", |net| net);
    let v6 = (0u128..8, prop::sample::select(vec![32u8, 48, 128]))
        .prop_map(|(n, len)| IpCidr::host(std::net::Ipv6Addr::from(n << 96).into()).supernet(len))
        .prop_filter_map("supernet", |net| net);
    let port = prop_oneof![Just(None), Just(Some(443u16)), Just(Some(80u16))];
    (prop_oneof![v4, v6], port).prop_map(|(net, port)| EgressRule { net, port })
}

fn egress_rules() -> impl Strategy<Value = EgressRules> {
    prop_oneof![
        1 => Just(EgressRules::default()),
        3 => prop::collection::btree_set(egress_rule(), 0..15).prop_map(|rules| EgressRules {
            mode: EgressMode::Allowlist,
            rules,
        }),
    ]
}

fn rule_set() -> impl Strategy<Value = RuleSet> {
    (mode(), syscall_rule(), path_rules(), egress_rules()).prop_map(
        |(mode, syscalls, paths, egress)| RuleSet {
            mode,
            syscalls,
            paths,
            egress,
        },
    )
}

/// The number of entries that differ between two rule sets: the bound the
/// op count must respect.
fn changed_entries(a: &RuleSet, b: &RuleSet) -> usize {
    let syscalls = match (&a.syscalls, &b.syscalls) {
        (x, y) if x == y => 0,
        (SyscallRule::Allow(x), SyscallRule::Allow(y)) => {
            x.numbers().filter(|&n| !y.contains(n)).count()
                + y.numbers().filter(|&n| !x.contains(n)).count()
        }
        (SyscallRule::Allow(set), _) | (_, SyscallRule::Allow(set)) => set.len().max(1),
        _ => 1,
    };
    let restrictions = Access::ALL
        .iter()
        .filter(|&&access| a.paths.restriction(access) != b.paths.restriction(access))
        .count();
    let keys: BTreeSet<&PathRuleKey> = a.paths.rules.keys().chain(b.paths.rules.keys()).collect();
    let paths = keys
        .into_iter()
        .filter(|k| a.paths.rules.get(*k) != b.paths.rules.get(*k))
        .count();
    let egress = a.egress.rules.symmetric_difference(&b.egress.rules).count();
    usize::from(a.mode != b.mode)
        + syscalls
        + restrictions
        + paths
        + usize::from(a.egress.mode != b.egress.mode)
        + egress
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn applying_the_diff_yields_the_desired_rule_set(a in rule_set(), b in rule_set()) {
        prop_assert_eq!(apply(&a, &diff(&a, &b)), b);
    }

    #[test]
    fn diff_of_a_rule_set_with_itself_is_empty(a in rule_set()) {
        prop_assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn op_count_never_exceeds_the_changed_entries(a in rule_set(), b in rule_set()) {
        let delta = diff(&a, &b);
        prop_assert!(delta.len() <= changed_entries(&a, &b), "{} ops for {} changes", delta.len(), changed_entries(&a, &b));
    }

    #[test]
    fn a_reformatted_policy_yields_an_empty_delta(policy in policy_content(), seed in any::<u64>()) {
        let block = render_block(&policy);
        let reformatted = render_reformatted(&policy, seed);
        let a = Policy::parse_str(&block, Path::new("block.yaml")).map_err(|e| TestCaseError::fail(format!("{e}\n{block}")))?;
        let b = Policy::parse_str(&reformatted, Path::new("flow.yaml")).map_err(|e| TestCaseError::fail(format!("{e}\n{reformatted}")))?;
        let delta = diff(&lower(&a, Arch::X86_64).rules, &lower(&b, Arch::X86_64).rules);
        prop_assert!(delta.is_empty(), "{:?}\n--- block\n{}\n--- reformatted\n{}", delta, block, reformatted);
    }
}

/// The content of a policy, independent of how it is written.
#[derive(Clone, Debug)]
struct PolicyContent {
    audit: bool,
    syscalls: Option<Vec<&'static str>>,
    read_allow: Option<Vec<String>>,
    deny: Vec<String>,
    network: Option<Vec<&'static str>>,
}

fn policy_content() -> impl Strategy<Value = PolicyContent> {
    let names = prop::sample::subsequence(
        vec![
            "read",
            "write",
            "openat",
            "close",
            "@basic-io",
            "@file-system",
            "@network-io",
            "mmap",
            "exit_group",
            "open",
        ],
        0..8,
    );
    let paths = || prop::collection::vec(path_prefix().prop_map(|p| p.as_str().to_owned()), 0..6);
    let nets = prop::sample::subsequence(
        vec![
            "10.0.0.0/8",
            "10.1.0.0/16:443",
            "127.0.0.1",
            "[::1]",
            "[2001:db8::]/32:443",
            "api.example.com:443",
            "*.example.org",
        ],
        0..5,
    );
    (
        any::<bool>(),
        prop::option::of(names),
        prop::option::of(paths()),
        paths(),
        prop::option::of(nets),
    )
        .prop_map(
            |(audit, syscalls, read_allow, deny, network)| PolicyContent {
                audit,
                syscalls,
                read_allow,
                deny,
                network,
            },
        )
}

fn render_block(p: &PolicyContent) -> String {
    let mut out = String::from(
        "apiVersion: agent-assembly.dev/v1\nkind: Policy\nmetadata:\n  name: block\nspec:\n",
    );
    out.push_str(&format!(
        "  mode: {}\n",
        if p.audit { "audit" } else { "enforce" }
    ));
    let list = |items: &[String], indent: &str| -> String {
        if items.is_empty() {
            " []\n".to_owned()
        } else {
            items
                .iter()
                .map(|i| format!("\n{indent}- \"{i}\""))
                .collect::<String>()
                + "\n"
        }
    };
    if let Some(names) = &p.syscalls {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        out.push_str(&format!(
            "  syscalls:\n    allow:{}",
            list(&names, "      ")
        ));
    }
    out.push_str("  filesystem:\n");
    if let Some(read) = &p.read_allow {
        out.push_str(&format!(
            "    read:\n      allow:{}",
            list(read, "        ")
        ));
    }
    out.push_str(&format!("    deny:{}", list(&p.deny, "      ")));
    if let Some(nets) = &p.network {
        let nets: Vec<String> = nets.iter().map(|s| s.to_string()).collect();
        out.push_str(&format!(
            "  network:\n    allowlist:{}",
            list(&nets, "      ")
        ));
    }
    out
}

/// The same content in the flat form, flow style, keys in another order,
/// entries shuffled and repeated, paths written with redundant `/` and `.`.
fn render_reformatted(p: &PolicyContent, seed: u64) -> String {
    let shuffle = |items: Vec<String>, salt: u64| -> Vec<String> {
        let mut keyed: BTreeMap<(u64, usize), String> = BTreeMap::new();
        for (i, item) in items.iter().chain(items.iter().take(2)).enumerate() {
            let key = (seed ^ salt)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64 * 1442695040888963407);
            keyed.insert((key.rotate_left(i as u32 % 64), i), item.clone());
        }
        keyed.into_values().collect()
    };
    let messy_path = |p: &String| {
        if p == "/" {
            "//./".to_owned()
        } else {
            format!("/.{}//", p.replace('/', "//"))
        }
    };
    let flow = |items: Vec<String>| {
        format!(
            "[{}]",
            items
                .iter()
                .map(|i| format!("'{i}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = String::from("# reformatted\n");
    if let Some(nets) = &p.network {
        out.push_str(&format!(
            "network: {{allowlist: {}}}\n",
            flow(shuffle(nets.iter().map(|s| s.to_string()).collect(), 1))
        ));
    }
    let deny = flow(shuffle(p.deny.iter().map(messy_path).collect(), 2));
    match &p.read_allow {
        Some(read) => out.push_str(&format!(
            "filesystem: {{deny: {deny}, read: {{allow: {}}}}}\n",
            flow(shuffle(read.iter().map(messy_path).collect(), 3))
        )),
        None => out.push_str(&format!("filesystem: {{deny: {deny}}}\n")),
    }
    if let Some(names) = &p.syscalls {
        out.push_str(&format!(
            "syscalls: {{allow: {}}}\n",
            flow(shuffle(names.iter().map(|s| s.to_string()).collect(), 4))
        ));
    }
    out.push_str(&format!(
        "version: flow\nmode: {}\n",
        if p.audit { "audit" } else { "enforce" }
    ));
    out
}

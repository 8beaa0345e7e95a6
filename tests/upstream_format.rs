//! The policy format as upstream Agent Assembly's validator reads it.
//!
//! Why this exists: the format's authority is upstream's gateway validator
//! (`aa-policy/src/validator.rs` of ai-agent-assembly/agent-assembly, read
//! at commit 19fa34470a7da33e1bdd9a562d9549e5d16455a6). A file it accepts
//! must load here with the same meaning, a file it refuses must be refused
//! here with an error naming the key path, and every place where we are
//! deliberately stricter must be listed in the README. Two parts:
//!
//! - one table case per rule of upstream's validator (and per quirk where
//!   we chose to differ), with upstream's verdict next to ours;
//! - our own fixtures (`tests/fixtures/upstream-shapes/`), which use every
//!   key, value and shape of upstream's 44 published policy files, run
//!   through the real `aa-policyd check`.

use std::path::{Path, PathBuf};
use std::process::Command;

use aa_policyd::lower::lower;
use aa_policyd::policy::Policy;
use aa_policyd::ruleset::{Arch, EgressMode, SyscallRule};

/// Upstream's verdict on a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    Accepts,
    Rejects,
}

/// Ours.
#[derive(Clone, Copy, Debug)]
enum Ours {
    /// Valid; the warning, if any, must be among `check`'s warnings.
    Valid(Option<&'static str>),
    /// Refused with a message containing this (key path and reason).
    Refused(&'static str),
    /// Refused where upstream accepts: a deliberate strictness. The second
    /// text must appear in the README's list of them.
    Stricter(&'static str, &'static str),
    /// Valid where upstream refuses: an aa-policyd extension, which `check`
    /// must name as one.
    Extension(&'static str),
}

use Ours::*;
use Upstream::*;

/// (what, document, upstream's verdict, ours)
const CASES: &[(&str, &str, Upstream, Ours)] = &[
    // Structure (upstream's phase A: the document does not decode).
    (
        "A1 YAML syntax error",
        "network:\n\tallowlist: []\n",
        Rejects,
        Refused(":2:1: "),
    ),
    (
        "A2 two documents",
        "tools: {}\n---\ntools: {}\n",
        Rejects,
        Refused("more than one document"),
    ),
    (
        "A3 root is a scalar",
        "hello\n",
        Rejects,
        Refused("invalid type: string"),
    ),
    (
        "A4 spec is not a mapping",
        "apiVersion: v1\nkind: Policy\nspec: not-a-mapping\n",
        Rejects,
        Refused("spec: invalid type: string \"not-a-mapping\""),
    ),
    (
        "A5 section is not a mapping",
        "network: []\n",
        Rejects,
        Refused("network: invalid type: sequence"),
    ),
    (
        "A6 tool entry is null",
        "tools:\n  bash: ~\n",
        Rejects,
        Refused("tools.bash: is empty"),
    ),
    (
        "A6 tool entry is empty",
        "tools:\n  bash:\n",
        Rejects,
        Refused("tools.bash: is empty"),
    ),
    (
        "A7 list field holds a scalar",
        "network: {allowlist: a.example}\n",
        Rejects,
        Refused("network.allowlist: invalid type: string"),
    ),
    (
        "A8 string field holds a mapping",
        "version: {a: 1}\n",
        Rejects,
        Refused("version: invalid type: map"),
    ),
    (
        "A9 allow is a quoted bool",
        "tools:\n  bash: {allow: \"true\"}\n",
        Rejects,
        Refused("tools.bash.allow: invalid type: string"),
    ),
    (
        "A10 negative approval timeout",
        "approval_timeout_secs: -1\n",
        Rejects,
        Refused("approval_timeout_secs: -1 is not a timeout"),
    ),
    (
        "A10 approval timeout beyond u32",
        "approval_timeout_secs: 4294967296\n",
        Rejects,
        Refused("approval_timeout_secs: 4294967296 is not a timeout"),
    ),
    (
        "A11 quoted limit",
        "budget: {daily_limit_usd: \"5\"}\n",
        Rejects,
        Refused("budget.daily_limit_usd: invalid type: string"),
    ),
    (
        "A12 duplicate key",
        "network: {allowlist: [], allowlist: []}\n",
        Rejects,
        Refused("duplicate field `allowlist`"),
    ),
    (
        "A13 scope capitalised",
        "scope: Global\n",
        Rejects,
        Refused("scope: scope `Global` is not `global`"),
    ),
    (
        "A14 scope without an id",
        "scope: \"team:\"\n",
        Rejects,
        Refused("scope: scope `team:` has nothing after `:`"),
    ),
    (
        "A15 scope of an unknown kind",
        "scope: project:x\n",
        Rejects,
        Refused("scope: scope `project:x`: unknown kind `project`"),
    ),
    (
        "A16 agent scope without a UUID",
        "scope: agent:1234\n",
        Rejects,
        Refused("scope: scope `agent:1234`: `1234` is not a UUID"),
    ),
    // Semantic rules (upstream's phase B).
    (
        "B1 rule-list schema",
        "rules: []\n",
        Rejects,
        Refused("rules: the rule-list schema (`rules:`) is not supported"),
    ),
    (
        "B2 unknown top-level key",
        "risk_tier: high\n",
        Rejects,
        Refused("risk_tier: unknown key"),
    ),
    (
        "B3 unknown section key",
        "capabilities: {dney: [file_read]}\n",
        Rejects,
        Refused("capabilities.dney: unknown key"),
    ),
    (
        "B3 unknown tool key",
        "tools:\n  bash: {allow: true, deny: true}\n",
        Rejects,
        Refused("tools.bash.deny: unknown key"),
    ),
    (
        "B4 blank allowlist entry",
        "network: {allowlist: [\"  \"]}\n",
        Rejects,
        Refused("network.allowlist[0]: network entry is empty"),
    ),
    (
        "B5 active hours without start",
        "schedule: {active_hours: {end: \"18:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours: missing field `start`"),
    ),
    (
        "B5 active hours empty",
        "schedule: {active_hours: {}}\n",
        Rejects,
        Refused("schedule.active_hours: missing field `start`"),
    ),
    (
        "B6 start not HH:MM",
        "schedule: {active_hours: {start: \"9:00\", end: \"18:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours.start: `9:00` is not a time of day"),
    ),
    (
        "B7 active hours without end",
        "schedule: {active_hours: {start: \"09:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours: missing field `end`"),
    ),
    (
        "B8 end not HH:MM",
        "schedule: {active_hours: {start: \"09:00\", end: \"24:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours.end: `24:00` is not a time of day"),
    ),
    (
        "B9 start after end",
        "schedule: {active_hours: {start: \"18:00\", end: \"09:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours.start: 18:00 is not earlier than end 09:00"),
    ),
    (
        "B9 start equal to end",
        "schedule: {active_hours: {start: \"09:00\", end: \"09:00\", timezone: UTC}}\n",
        Rejects,
        Refused("schedule.active_hours.start: 09:00 is not earlier than end 09:00"),
    ),
    (
        "B10 active hours without zone",
        "schedule: {active_hours: {start: \"09:00\", end: \"18:00\"}}\n",
        Rejects,
        Refused("schedule.active_hours: missing field `timezone`"),
    ),
    (
        "B11 unknown schedule zone",
        "schedule: {active_hours: {start: \"09:00\", end: \"18:00\", timezone: Mars/Phobos}}\n",
        Rejects,
        Refused("schedule.active_hours.timezone: `Mars/Phobos` is not an IANA time zone name"),
    ),
    (
        "B12 daily limit zero",
        "budget: {daily_limit_usd: 0}\n",
        Rejects,
        Refused("budget.daily_limit_usd: 0 is not a limit"),
    ),
    (
        "B13 monthly limit negative",
        "budget: {monthly_limit_usd: -1}\n",
        Rejects,
        Refused("budget.monthly_limit_usd: -1 is not a limit"),
    ),
    (
        "B14 team daily limit zero",
        "budget: {team_daily_limit_usd: 0.0}\n",
        Rejects,
        Refused("budget.team_daily_limit_usd: 0 is not a limit"),
    ),
    (
        "B15 team monthly limit zero",
        "budget: {team_monthly_limit_usd: 0}\n",
        Rejects,
        Refused("budget.team_monthly_limit_usd: 0 is not a limit"),
    ),
    (
        "B16 org daily limit negative",
        "budget: {org_daily_limit_usd: -0.5}\n",
        Rejects,
        Refused("budget.org_daily_limit_usd: -0.5 is not a limit"),
    ),
    (
        "B17 org monthly limit zero",
        "budget: {org_monthly_limit_usd: 0}\n",
        Rejects,
        Refused("budget.org_monthly_limit_usd: 0 is not a limit"),
    ),
    (
        "B18 monthly below daily",
        "budget: {daily_limit_usd: 100, monthly_limit_usd: 50}\n",
        Rejects,
        Refused("budget.monthly_limit_usd: 50 is below daily_limit_usd 100"),
    ),
    (
        "B19 team monthly below team daily",
        "budget: {team_daily_limit_usd: 10, team_monthly_limit_usd: 5}\n",
        Rejects,
        Refused("budget.team_monthly_limit_usd: 5 is below team_daily_limit_usd 10"),
    ),
    (
        "B20 org monthly below org daily",
        "budget: {org_daily_limit_usd: 10, org_monthly_limit_usd: 9.5}\n",
        Rejects,
        Refused("budget.org_monthly_limit_usd: 9.5 is below org_daily_limit_usd 10"),
    ),
    (
        "B21 budget zone in the wrong case",
        "budget: {timezone: utc}\n",
        Rejects,
        Refused("budget.timezone: `utc` is not an IANA time zone name"),
    ),
    (
        "B22 unknown budget action",
        "budget: {action_on_exceed: quarantine}\n",
        Rejects,
        Refused(
            "budget.action_on_exceed: unknown variant `quarantine`, expected `deny` or `suspend`",
        ),
    ),
    (
        "B23 window not a duration",
        "budget: {window: not-a-duration}\n",
        Rejects,
        Refused("budget.window: `not-a-duration` is not a duration"),
    ),
    (
        "B23 window without a unit",
        "budget: {window: \"30\"}\n",
        Rejects,
        Refused("budget.window: `30` is not a duration"),
    ),
    (
        "B24 window of zero",
        "budget: {window: 0s}\n",
        Rejects,
        Refused("budget.window: `0s` is zero"),
    ),
    (
        "B25 pattern that does not compile",
        "data: {sensitive_patterns: [\"[unclosed\"]}\n",
        Rejects,
        Refused("data.sensitive_patterns[0]: not a valid regular expression"),
    ),
    (
        "B25 pattern beyond the compiled-size limit",
        "data: {sensitive_patterns: [\"\\\\w{1000}\"]}\n",
        Rejects,
        Refused("data.sensitive_patterns: the patterns do not compile within 10 MiB together"),
    ),
    (
        "B25 look-around pattern",
        "data: {sensitive_patterns: [ok, \"foo(?=bar)\"]}\n",
        Rejects,
        Refused("data.sensitive_patterns[1]: not a valid regular expression"),
    ),
    (
        "B26 credential action in the wrong case",
        "data: {credential_action: Block}\n",
        Rejects,
        Refused("data.credential_action: unknown variant `Block`"),
    ),
    (
        "B27 blank approval condition",
        "tools:\n  bash: {allow: true, requires_approval_if: \"  \"}\n",
        Rejects,
        Refused("tools.bash.requires_approval_if: an approval condition must not be empty"),
    ),
    (
        "B28 unknown governance level",
        "tools:\n  bash: {requires_approval_if: \"governance_level >= L4\"}\n",
        Rejects,
        Refused("tools.bash.requires_approval_if: unknown governance level `L4`"),
    ),
    (
        "B29 unknown variable, with a hint",
        "tools:\n  bash: {requires_approval_if: \"agent.depht > 1\"}\n",
        Rejects,
        Refused(
            "tools.bash.requires_approval_if: unknown variable `agent.depht` in the approval condition; did you mean `agent.depth`?",
        ),
    ),
    (
        "B29 single-quoted literal reads as a variable",
        "tools:\n  bash: {requires_approval_if: \"path starts_with '/etc'\"}\n",
        Rejects,
        Refused("unknown variable `etc`"),
    ),
    (
        "B30 unknown capability",
        "capabilities: {allow: [unknown_thing]}\n",
        Rejects,
        Refused("capabilities.allow[0]: unknown capability `unknown_thing`"),
    ),
    (
        "B31 mcp_tool without a name",
        "capabilities: {allow: [\"mcp_tool:\"]}\n",
        Rejects,
        Refused("capabilities.allow[0]: `mcp_tool:` needs a name"),
    ),
    (
        "B32 model without a name",
        "capabilities: {deny: [\"model:\"]}\n",
        Rejects,
        Refused("capabilities.deny[0]: `model:` needs a name"),
    ),
    (
        "B33 blank path",
        "filesystem: {read: {allow: [\"\"]}}\n",
        Rejects,
        Refused("filesystem.read.allow[0]: path is empty"),
    ),
    (
        "B34 relative path",
        "filesystem: {read: {allow: [workspace]}}\n",
        Rejects,
        Refused("filesystem.read.allow[0]: path `workspace` is relative"),
    ),
    (
        "B35 traversing path",
        "filesystem: {write: {allow: [/a/../b]}}\n",
        Rejects,
        Refused("filesystem.write.allow[0]: path `/a/../b` contains `..`"),
    ),
    (
        "B36 NUL in a path",
        "filesystem: {read: {allow: [\"/a\\0b\"]}}\n",
        Rejects,
        Refused("filesystem.read.allow[0]: path \"/a\\0b\" contains a NUL byte"),
    ),
    (
        "B37 unknown syscall",
        "syscalls: {allow: [read, opnat]}\n",
        Rejects,
        Refused("syscalls.allow[1]: unknown syscall `opnat`"),
    ),
    (
        "B37 a real syscall outside upstream's 15",
        "syscalls: {allow: [read, ptrace]}\n",
        Rejects,
        Extension("syscall names and groups beyond upstream's 15 names: ptrace"),
    ),
    (
        "B38 approval timeout of zero",
        "approval_timeout_secs: 0\n",
        Rejects,
        Refused("approval_timeout_secs: 0 is not a timeout"),
    ),
    (
        "W1 inert capability",
        "capabilities: {deny: [network_inbound]}\n",
        Accepts,
        Valid(Some(
            "capabilities.deny[0]: `network_inbound` has no effect",
        )),
    ),
    // What upstream accepts, and so do we.
    (
        "any apiVersion, kind Policy",
        "apiVersion: whatever/v9\nkind: Policy\nspec: {}\n",
        Accepts,
        Valid(None),
    ),
    (
        "kind GovernancePolicy",
        "apiVersion: agent-assembly.dev/v1alpha1\nkind: GovernancePolicy\nspec: {}\n",
        Accepts,
        Valid(None),
    ),
    ("spec alone", "spec:\n  tools: {}\n", Accepts, Valid(None)),
    (
        "metadata keys nobody reads",
        "apiVersion: v1\nkind: Policy\nmetadata: {name: x, labels: {team: a}}\nspec: {}\n",
        Accepts,
        Valid(Some("metadata.labels is not read")),
    ),
    (
        "metadata version as a number",
        "apiVersion: v1\nkind: Policy\nmetadata: {name: x, version: 99}\nspec: {}\n",
        Accepts,
        Valid(None),
    ),
    (
        "a key beside spec",
        "apiVersion: v1\nkind: Policy\nscope: org:a\nspec: {}\n",
        Accepts,
        Valid(Some("`scope` beside spec: has no effect")),
    ),
    (
        "top-level version",
        "version: \"2\"\ntools: {}\n",
        Accepts,
        Valid(None),
    ),
    (
        "scope ids are free text",
        "scope: \"team:a:b c\"\n",
        Accepts,
        Valid(None),
    ),
    (
        "agent scope, braced UUID",
        "scope: \"agent:{01234567-89ab-cdef-0123-456789abcdef}\"\n",
        Accepts,
        Valid(None),
    ),
    (
        "approval section",
        "approval: {timeout_seconds: 0, escalation_role: \"\"}\n",
        Accepts,
        Valid(None),
    ),
    (
        "limit_per_hour of zero",
        "tools:\n  bash: {allow: true, limit_per_hour: 0}\n",
        Accepts,
        Valid(None),
    ),
    (
        "tool without allow",
        "tools:\n  bash: {}\n",
        Accepts,
        Valid(None),
    ),
    (
        "window with a fraction and two parts",
        "budget: {window: 1.5h}\n",
        Accepts,
        Valid(None),
    ),
    (
        "window in two parts",
        "budget: {window: 1h 30m}\n",
        Accepts,
        Valid(None),
    ),
    (
        "monthly without daily",
        "budget: {monthly_limit_usd: 5}\n",
        Accepts,
        Valid(None),
    ),
    (
        "tiers are not compared",
        "budget: {daily_limit_usd: 100, team_daily_limit_usd: 10}\n",
        Accepts,
        Valid(None),
    ),
    (
        "empty pattern",
        "data: {sensitive_patterns: [\"\"]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "every credential action",
        "data: {credential_action: alert_and_redact, locale_packs: [ja-JP, xx]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "mcp_tool name with a space",
        "capabilities: {allow: [\"mcp_tool: x\"]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "the same capability allowed and denied",
        "capabilities: {allow: [file_read], deny: [file_read]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "host wildcards",
        "network: {allowlist: [\"*.example.com\", api.example.net]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "bare words inside a list",
        "tools:\n  t: {requires_approval_if: \"tool in [a, b]\"}\n",
        Accepts,
        Valid(None),
    ),
    (
        "flat duplicate key in a tool",
        "tools:\n  bash: {allow: true, allow: false}\n",
        Rejects,
        Refused("tools.bash: duplicate field `allow`"),
    ),
    // Where we are deliberately stricter than upstream.
    (
        "empty document",
        "# nothing\n",
        Accepts,
        Stricter("1:1: policy is empty", "an empty file"),
    ),
    (
        "null section",
        "network: ~\n",
        Accepts,
        Stricter("network: is null", "`key: null`"),
    ),
    (
        "null spec",
        "apiVersion: v1\nkind: Policy\nspec:\n",
        Rejects,
        Refused("spec: is empty; write the policy under spec:"),
    ),
    (
        "null allow of a tool",
        "tools:\n  bash: {allow: ~}\n",
        Accepts,
        Stricter("tools.bash.allow: is null", "`key: null`"),
    ),
    (
        "null apiVersion",
        "apiVersion: ~\nkind: Policy\nspec: {}\n",
        Accepts,
        Stricter("apiVersion: is null", "`key: null`"),
    ),
    (
        "kind of another kind",
        "apiVersion: v1\nkind: Banana\nspec: {}\n",
        Accepts,
        Stricter("kind: unknown variant `Banana`", "`kind` other than"),
    ),
    (
        "NaN limit",
        "budget: {daily_limit_usd: .nan}\n",
        Accepts,
        Stricter(
            "budget.daily_limit_usd: NaN is not a limit",
            "NaN or infinite",
        ),
    ),
    (
        "infinite limit",
        "budget: {monthly_limit_usd: .inf}\n",
        Accepts,
        Stricter(
            "budget.monthly_limit_usd: inf is not a limit",
            "NaN or infinite",
        ),
    ),
    (
        "signed hour",
        "schedule: {active_hours: {start: \"+9:00\", end: \"18:00\", timezone: UTC}}\n",
        Accepts,
        Stricter(
            "schedule.active_hours.start: `+9:00` is not a time of day",
            "`+9:00`",
        ),
    ),
    (
        "URL in the allowlist",
        "network: {allowlist: [\"https://api.example.com/v1\"]}\n",
        Accepts,
        Stricter("network.allowlist[0]:", "matches no host at its gateway"),
    ),
    (
        "glob inside a label",
        "network: {allowlist: [\"api*.example.com\"]}\n",
        Accepts,
        Stricter(
            "network.allowlist[0]: `api*.example.com` is not",
            "matches no host at its gateway",
        ),
    ),
    (
        "patterns too big together",
        "data:\n  sensitive_patterns:\n    - '\\w{60}\\w{20}'\n    - '\\w{60}\\w{21}'\n    - '\\w{60}\\w{22}'\n    - '\\w{60}\\w{23}'\n    - '\\w{60}\\w{24}'\n    - '\\w{60}\\w{25}'\n    - '\\w{60}\\w{26}'\n    - '\\w{60}\\w{27}'\n    - '\\w{60}\\w{28}'\n    - '\\w{60}\\w{29}'\n    - '\\w{60}\\w{30}'\n    - '\\w{60}\\w{31}'\n",
        Accepts,
        Stricter(
            "data.sensitive_patterns: the patterns do not compile within 10 MiB together",
            "10 MiB together",
        ),
    ),
    (
        "a number where text is expected (envelope)",
        "apiVersion: v1\nkind: Policy\nspec:\n  version: 1\n",
        Rejects,
        Refused("spec.version: invalid type: integer `1`, expected a string"),
    ),
    (
        "a boolean host name (envelope)",
        "spec:\n  network: {allowlist: [true]}\n",
        Rejects,
        Refused("spec.network.allowlist[0]: invalid type: boolean `true`"),
    ),
    (
        "a number where text is expected (flat)",
        "approval: {escalation_role: 5}\n",
        Accepts,
        Stricter(
            "approval.escalation_role: invalid type: integer `5`, expected a string",
            "number, boolean or null where text is expected",
        ),
    ),
    (
        "a hex limit (flat)",
        "budget: {daily_limit_usd: 0x10}\n",
        Rejects,
        Refused("budget.daily_limit_usd: invalid type: integer `16`"),
    ),
    (
        "a hex limit (envelope)",
        "spec:\n  budget: {daily_limit_usd: 0x10}\n",
        Accepts,
        Valid(None),
    ),
    (
        "a limit longer than 64 bits (flat)",
        "budget: {daily_limit_usd: 99999999999999999999999}\n",
        Accepts,
        Valid(None),
    ),
    (
        "a limit longer than 64 bits (envelope)",
        "spec:\n  budget: {daily_limit_usd: 18446744073709551616}\n",
        Rejects,
        Refused(
            "spec.budget.daily_limit_usd: invalid type: integer `18446744073709551616` as u128",
        ),
    ),
    (
        "a limit with a leading zero (flat)",
        "budget: {daily_limit_usd: 01}\n",
        Accepts,
        Valid(None),
    ),
    (
        "a limit with a leading zero (envelope)",
        "spec:\n  budget: {daily_limit_usd: 01}\n",
        Rejects,
        Refused("spec.budget.daily_limit_usd: invalid type: string \"01\""),
    ),
    (
        "a pattern at the regex crate's limit only in reverse",
        "data: {sensitive_patterns: [\"\\\\w{250}\"]}\n",
        Rejects,
        Refused("data.sensitive_patterns[0]: compiles to more than the regex crate's 10 MiB"),
    ),
    (
        "a pattern just under the gateway's limit",
        "data: {sensitive_patterns: [\"\\\\w{230}\"]}\n",
        Accepts,
        Stricter(
            "data.sensitive_patterns[0]: compiles to more than the regex crate's 10 MiB",
            "little earlier than the gateway",
        ),
    ),
    (
        "a traversal hidden by a trailing space",
        "filesystem: {write: {allow: [\"/etc/.. \"]}}\n",
        Rejects,
        Refused("filesystem.write.allow[0]: path `/etc/..` contains `..`"),
    ),
    (
        "a path with a leading space",
        "filesystem: {read: {allow: [\" /workspace\"]}}\n",
        Accepts,
        Valid(None),
    ),
    (
        "a string tag on a boolean (envelope)",
        "spec:\n  tools: {bash: {allow: !!str true}}\n",
        Rejects,
        Refused("2:25: explicit YAML tags"),
    ),
    (
        "a custom tag",
        "budget: {daily_limit_usd: !custom 5}\n",
        Accepts,
        Stricter("1:27: explicit YAML tags", "explicit YAML tags"),
    ),
    (
        "an underscore in a host name",
        "network: {allowlist: [_acme.example.com, a_b.example.com]}\n",
        Accepts,
        Valid(None),
    ),
    (
        "an empty apiVersion",
        "apiVersion: \"\"\nkind: Policy\nspec: {}\n",
        Accepts,
        Stricter("apiVersion: must not be empty", "empty `apiVersion`"),
    ),
    (
        "a tool listed twice",
        "tools:\n  bash: {allow: true}\n  bash: {allow: false}\n",
        Accepts,
        Stricter("tools: tool `bash` is listed twice", "listed twice"),
    ),
    (
        "metadata in the flat form",
        "metadata: {name: x}\ntools: {}\n",
        Rejects,
        Refused("metadata: unknown key here; metadata belongs to the envelope form"),
    ),
];

#[test]
fn every_rule_of_upstreams_validator_gives_its_verdict_here() {
    assert!(CASES.len() >= 30);
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let mut failures = Vec::new();
    for (what, text, upstream, ours) in CASES {
        let parsed = Policy::parse_str(text, Path::new("case.yaml"));
        let problem = match (ours, parsed) {
            (Valid(warning), Ok(policy)) => {
                let lowered = lower(&policy, Arch::X86_64);
                assert_eq!(
                    *upstream, Accepts,
                    "{what}: a Valid case must be one upstream accepts"
                );
                match warning {
                    Some(w) if !lowered.warnings.iter().any(|l| l.contains(w)) => Some(format!(
                        "no warning containing {w:?} in {:?}",
                        lowered.warnings
                    )),
                    _ => None,
                }
            }
            (Extension(named), Ok(policy)) => {
                assert_eq!(
                    *upstream, Rejects,
                    "{what}: an extension is what upstream refuses"
                );
                let extensions = policy.extensions();
                (!extensions.iter().any(|e| e.contains(named)))
                    .then(|| format!("extension {named:?} not named in {extensions:?}"))
            }
            (Refused(expected), Err(error)) => {
                assert_eq!(
                    *upstream, Rejects,
                    "{what}: refusing what upstream accepts must be marked Stricter"
                );
                located(&error.to_string(), expected)
            }
            (Stricter(expected, documented), Err(error)) => {
                assert_eq!(
                    *upstream, Accepts,
                    "{what}: Stricter marks a refusal upstream would not make"
                );
                let strictness_list = readme
                    .split("### Deliberately stricter than upstream")
                    .nth(1)
                    .and_then(|rest| rest.split("\n## ").next())
                    .unwrap_or("");
                located(&error.to_string(), expected).or_else(|| {
                    (!strictness_list.contains(documented)).then(|| {
                        format!("README's strictness list does not mention {documented:?}")
                    })
                })
            }
            (_, Ok(_)) => Some("accepted".to_owned()),
            (_, Err(error)) => Some(format!("refused: {error}")),
        };
        if let Some(problem) = problem {
            failures.push(format!("{what}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `None` if `error` is one located line (`case.yaml:L:C: ...`) containing
/// `expected`; otherwise what is wrong with it.
fn located(error: &str, expected: &str) -> Option<String> {
    let after_file = error.strip_prefix("case.yaml:")?;
    let mut parts = after_file.splitn(3, ':');
    let line_col_ok = parts.next().is_some_and(|l| l.parse::<u32>().is_ok())
        && parts.next().is_some_and(|c| c.parse::<u32>().is_ok());
    if !line_col_ok || error.contains('\n') {
        return Some(format!("not one located line: {error}"));
    }
    (!error.contains(expected)).then(|| format!("{error:?} lacks {expected:?}"))
}

#[test]
fn what_upstream_means_by_empty_and_star() {
    let rules = |text: &str| {
        lower(
            &Policy::parse_str(text, Path::new("p.yaml")).expect("valid"),
            Arch::X86_64,
        )
        .rules
    };
    // `network: {}` reaches nothing; `*` reaches everything.
    let none = rules("network: {}\n");
    assert_eq!(none.egress.mode, EgressMode::Allowlist);
    assert!(none.egress.rules.is_empty());
    let all = rules("network: {allowlist: [api.example.com, \"*\", 10.0.0.0/8]}\n");
    assert_eq!(all.egress.mode, EgressMode::Unrestricted);
    // `syscalls: {}` permits no syscall; no section restricts none.
    assert!(matches!(rules("syscalls: {}\n").syscalls, SyscallRule::Allow(set) if set.is_empty()));
    assert!(matches!(
        rules("tools: {}\n").syscalls,
        SyscallRule::Unrestricted
    ));
    // `filesystem: {read: {}}` allows no read; `filesystem: {}` restricts nothing.
    let read_nothing = rules("filesystem: {read: {}}\n");
    assert_ne!(
        read_nothing.paths.read,
        rules("filesystem: {}\n").paths.read
    );
}

fn fixtures(verdict: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/upstream-shapes")
        .join(verdict);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixture dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// The first `# KEY: value` comment of a fixture.
fn directive(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .map(str::to_owned)
}

fn check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .arg("check")
        .arg(path)
        .output()
        .expect("run aa-policyd check")
}

#[test]
fn fixtures_in_every_upstream_shape_get_upstreams_verdict() {
    let accepted = fixtures("accept");
    let refused = fixtures("reject");
    assert!(accepted.len() >= 15 && refused.len() >= 2);
    for path in accepted {
        let out = check(&path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).expect("fixture");
        if let Some(warning) = directive(&text, "expect-warning") {
            assert!(stdout.contains(&warning), "{}: {stdout}", path.display());
        }
        assert!(
            !stdout.contains("aa-policyd extension"),
            "{}: an upstream-shaped file uses no extension: {stdout}",
            path.display()
        );
    }
    for path in refused {
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let text = std::fs::read_to_string(&path).expect("fixture");
        let expected = directive(&text, "expect").expect("# expect: in a reject fixture");
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        assert!(stderr.contains(&expected), "{}: {stderr}", path.display());
    }
}

#[test]
fn check_json_shows_a_star_allowlist_as_unrestricted_egress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("star.yaml");
    std::fs::write(&path, "network:\n  allowlist: [\"*\"]\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_aa-policyd"))
        .args(["check", "--json"])
        .arg(&path)
        .output()
        .expect("run check --json");
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["egress"]["mode"], "unrestricted", "{json:#}");
    assert_eq!(json["egress"]["rules"], serde_json::json!([]));
}

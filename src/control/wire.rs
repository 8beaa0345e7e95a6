//! The control protocol's messages, as JSON.
//!
//! Why this exists: the daemon, the CLI client and the remote watcher speak
//! this over the socket. Rule sets and deltas cross it as plain JSON mirrors
//! of the engine's types; converting back validates every field (syscall
//! numbers, paths, networks), so a malicious client cannot smuggle a value
//! the parser would have refused.

use serde::{Deserialize, Serialize};

use crate::delta::{Delta, Op};
use crate::lower::RuleCounts;
use crate::ruleset::{
    Access, Arch, EgressMode, EgressRule, EgressRules, IpCidr, Mode, PathPrefix, PathRuleKey,
    PathRules, Restriction, RuleSet, SyscallRule, SyscallSet, Verdict,
};

/// Bumped on any incompatible change; checked in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Must be the first frame of every connection.
    Hello {
        version: u32,
    },
    Status,
    Confine {
        pid: u32,
    },
    Release {
        pid: u32,
    },
    /// The rule set the kernel holds (for a remote watcher).
    Applied,
    /// Apply a delta computed by a remote watcher; the daemon guards it again.
    ApplyDelta {
        ops: Vec<WireOp>,
        source: DeltaSource,
        /// The generation the delta was computed against; the daemon
        /// refuses it if the kernel has moved on (compare-and-swap).
        base_generation: u64,
    },
    /// Stream probe events until the connection closes.
    Subscribe,
}

/// Where a remote delta came from, for the daemon's log and status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSource {
    pub policy_path: String,
    pub sha256: String,
    /// The policy text, so the daemon can log the unified diff.
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Hello { version: u32, daemon: String },
    Status(Box<StatusReport>),
    Done,
    Applied { generation: u64, rules: WireRuleSet },
    Reload(ReloadRecord),
    Event(WireEvent),
    Error { message: String },
}

/// How a reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    Unchanged,
    Invalid,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One reload, as status reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub outcome: Outcome,
    pub trigger: String,
    pub error: Option<String>,
    pub generation: u64,
    pub ops: usize,
    pub map_ops: u64,
    pub at_unix_ms: u64,
    pub duration_ms: f64,
}

/// `aa-policyd status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub generation: u64,
    pub policy_path: String,
    pub policy_sha256: Option<String>,
    pub mode: Mode,
    pub counts: RuleCounts,
    pub confined: Vec<u32>,
    pub hooks_attached: bool,
    /// Each hook the kernel has attached, read from the link the daemon
    /// holds (not from its pin, which a root process can remove).
    pub hooks: Vec<HookStatus>,
    pub last_reload: Option<ReloadRecord>,
    pub total_map_ops: u64,
    pub event_drops: u64,
    /// Denials the probes reported since the daemon started.
    #[serde(default)]
    pub denials: DenialCounts,
    /// Failures of the confinement mechanism itself; all must stay 0.
    pub probe_faults: ProbeFaults,
    pub watching: bool,
    /// DNS-aware egress: addresses allowed now because the resolver
    /// answered them for an allowed host name.
    #[serde(default)]
    pub learned_addresses: u64,
    /// Answers the resolver passed on for allowed names, and the map
    /// writes made for learned addresses (inserts, extensions, removals).
    #[serde(default)]
    pub dns_answers: u64,
    #[serde(default)]
    pub dns_map_writes: u64,
}

/// Denials by what was denied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialCounts {
    /// Syscalls (and io_uring requests) not allowed.
    pub syscall: u64,
    /// Connects and sends to destinations not allowed, and sockets,
    /// options or packets the egress allowlist cannot judge.
    pub egress: u64,
    /// File accesses the path rules do not allow.
    pub file: u64,
    /// DNS queries for names the egress allowlist does not name.
    #[serde(default)]
    pub dns: u64,
}

/// One attached hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    pub program: String,
    pub link_id: u32,
    pub program_id: u32,
    /// Whether the link still runs its program (a detached one is attached
    /// anew).
    pub attached: bool,
    /// Whether its pin is in place (a removed pin is put back).
    pub pinned: bool,
}

/// The probes' failure counters (see `probes/aa_policy.h`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeFaults {
    pub registry_full: u64,
    pub mark_failed: u64,
    pub untraced: u64,
    pub unguarded_exit: u64,
}

/// A probe event for subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub kind: String,
    pub pid: u32,
    pub comm: String,
    pub mode: Mode,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSyscalls {
    pub arch: Arch,
    pub numbers: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WirePathRule {
    pub access: Access,
    pub prefix: String,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireEgressRule {
    pub net: String,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRuleSet {
    pub mode: Mode,
    /// `None`: unrestricted.
    pub syscalls: Option<WireSyscalls>,
    pub read: Restriction,
    pub write: Restriction,
    pub paths: Vec<WirePathRule>,
    pub egress_mode: EgressMode,
    pub egress: Vec<WireEgressRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum WireOp {
    SetMode {
        mode: Mode,
    },
    SetSyscalls {
        syscalls: Option<WireSyscalls>,
    },
    SetPathRestriction {
        access: Access,
        restriction: Restriction,
    },
    RemovePathRule {
        access: Access,
        prefix: String,
    },
    UpsertPathRule {
        access: Access,
        prefix: String,
        verdict: Verdict,
    },
    SetEgressMode {
        mode: EgressMode,
    },
    RemoveEgressRule {
        net: String,
        port: Option<u16>,
    },
    UpsertEgressRule {
        net: String,
        port: Option<u16>,
    },
}

fn wire_syscalls(rule: &SyscallRule) -> Option<WireSyscalls> {
    match rule {
        SyscallRule::Unrestricted => None,
        SyscallRule::Allow(set) => Some(WireSyscalls {
            arch: set.arch(),
            numbers: set.numbers().collect(),
        }),
    }
}

fn syscalls_from_wire(wire: &Option<WireSyscalls>) -> Result<SyscallRule, String> {
    let Some(wire) = wire else {
        return Ok(SyscallRule::Unrestricted);
    };
    let mut set = SyscallSet::empty(wire.arch);
    for &number in &wire.numbers {
        if wire.arch.syscall_name(number).is_none() {
            return Err(format!(
                "syscall number {number} does not exist on {}",
                wire.arch
            ));
        }
        set.insert(number);
    }
    Ok(SyscallRule::Allow(set))
}

fn egress_from_wire(net: &str, port: Option<u16>) -> Result<EgressRule, String> {
    if port == Some(0) {
        return Err("port 0 is not a port".into());
    }
    Ok(EgressRule {
        net: net.parse::<IpCidr>()?,
        port,
    })
}

impl From<&RuleSet> for WireRuleSet {
    fn from(rules: &RuleSet) -> Self {
        WireRuleSet {
            mode: rules.mode,
            syscalls: wire_syscalls(&rules.syscalls),
            read: rules.paths.read,
            write: rules.paths.write,
            paths: rules
                .paths
                .rules
                .iter()
                .map(|(key, verdict)| WirePathRule {
                    access: key.access,
                    prefix: key.prefix.as_str().to_owned(),
                    verdict: *verdict,
                })
                .collect(),
            egress_mode: rules.egress.mode,
            egress: rules
                .egress
                .rules
                .iter()
                .map(|rule| WireEgressRule {
                    net: rule.net.to_string(),
                    port: rule.port,
                })
                .collect(),
        }
    }
}

impl TryFrom<&WireRuleSet> for RuleSet {
    type Error = String;
    fn try_from(wire: &WireRuleSet) -> Result<Self, String> {
        let mut paths = PathRules {
            read: wire.read,
            write: wire.write,
            ..PathRules::default()
        };
        for rule in &wire.paths {
            let key = PathRuleKey {
                access: rule.access,
                prefix: PathPrefix::parse(&rule.prefix)?,
            };
            paths.rules.insert(key, rule.verdict);
        }
        let rules = wire
            .egress
            .iter()
            .map(|r| egress_from_wire(&r.net, r.port))
            .collect::<Result<_, _>>()?;
        Ok(RuleSet {
            mode: wire.mode,
            syscalls: syscalls_from_wire(&wire.syscalls)?,
            paths,
            egress: EgressRules {
                mode: wire.egress_mode,
                rules,
            },
        })
    }
}

impl From<&Op> for WireOp {
    fn from(op: &Op) -> Self {
        match op {
            Op::SetMode(mode) => WireOp::SetMode { mode: *mode },
            Op::SetSyscalls(rule) => WireOp::SetSyscalls {
                syscalls: wire_syscalls(rule),
            },
            Op::SetPathRestriction {
                access,
                restriction,
            } => WireOp::SetPathRestriction {
                access: *access,
                restriction: *restriction,
            },
            Op::RemovePathRule(key) => WireOp::RemovePathRule {
                access: key.access,
                prefix: key.prefix.as_str().to_owned(),
            },
            Op::UpsertPathRule { key, verdict } => WireOp::UpsertPathRule {
                access: key.access,
                prefix: key.prefix.as_str().to_owned(),
                verdict: *verdict,
            },
            Op::SetEgressMode(mode) => WireOp::SetEgressMode { mode: *mode },
            Op::RemoveEgressRule(rule) => WireOp::RemoveEgressRule {
                net: rule.net.to_string(),
                port: rule.port,
            },
            Op::UpsertEgressRule(rule) => WireOp::UpsertEgressRule {
                net: rule.net.to_string(),
                port: rule.port,
            },
        }
    }
}

impl TryFrom<&WireOp> for Op {
    type Error = String;
    fn try_from(wire: &WireOp) -> Result<Self, String> {
        Ok(match wire {
            WireOp::SetMode { mode } => Op::SetMode(*mode),
            WireOp::SetSyscalls { syscalls } => Op::SetSyscalls(syscalls_from_wire(syscalls)?),
            WireOp::SetPathRestriction {
                access,
                restriction,
            } => Op::SetPathRestriction {
                access: *access,
                restriction: *restriction,
            },
            WireOp::RemovePathRule { access, prefix } => Op::RemovePathRule(PathRuleKey {
                access: *access,
                prefix: PathPrefix::parse(prefix)?,
            }),
            WireOp::UpsertPathRule {
                access,
                prefix,
                verdict,
            } => Op::UpsertPathRule {
                key: PathRuleKey {
                    access: *access,
                    prefix: PathPrefix::parse(prefix)?,
                },
                verdict: *verdict,
            },
            WireOp::SetEgressMode { mode } => Op::SetEgressMode(*mode),
            WireOp::RemoveEgressRule { net, port } => {
                Op::RemoveEgressRule(egress_from_wire(net, *port)?)
            }
            WireOp::UpsertEgressRule { net, port } => {
                Op::UpsertEgressRule(egress_from_wire(net, *port)?)
            }
        })
    }
}

pub fn delta_to_wire(delta: &Delta) -> Vec<WireOp> {
    delta.ops.iter().map(WireOp::from).collect()
}

pub fn delta_from_wire(ops: &[WireOp]) -> Result<Delta, String> {
    Ok(Delta {
        ops: ops.iter().map(Op::try_from).collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::diff;
    use crate::lower::lower;
    use crate::policy::Policy;

    #[test]
    fn rule_sets_and_deltas_round_trip_through_json() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/default.yaml"
        ))
        .expect("default policy");
        let policy = Policy::parse_str(&text, std::path::Path::new("d.yaml")).expect("valid");
        let rules = lower(&policy, Arch::X86_64).rules;
        let json = serde_json::to_string(&WireRuleSet::from(&rules)).expect("serialize");
        let back: WireRuleSet = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(RuleSet::try_from(&back), Ok(rules.clone()));

        let delta = diff(&RuleSet::unrestricted(), &rules);
        let json = serde_json::to_string(&delta_to_wire(&delta)).expect("serialize");
        let ops: Vec<WireOp> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(delta_from_wire(&ops), Ok(delta));
    }

    #[test]
    fn invalid_wire_values_are_refused() {
        let bad = [
            WireOp::UpsertPathRule {
                access: Access::Read,
                prefix: "relative".into(),
                verdict: Verdict::Allow,
            },
            WireOp::UpsertEgressRule {
                net: "10.0.0.1/8".into(),
                port: None,
            },
            WireOp::UpsertEgressRule {
                net: "10.0.0.0/8".into(),
                port: Some(0),
            },
            WireOp::SetSyscalls {
                syscalls: Some(WireSyscalls {
                    arch: Arch::X86_64,
                    numbers: vec![600],
                }),
            },
        ];
        for op in &bad {
            assert!(Op::try_from(op).is_err(), "{op:?}");
        }
    }
}

//! The policy sections the Agent Assembly gateway enforces and the kernel
//! cannot: `capabilities`, `tools`, `budget`, `schedule`, `data`, `approval`,
//! with the keys and value sets of upstream's own validator.
//!
//! Why this exists: these sections share the file with the kernel rules, so
//! a mistake in them must fail `check` just as the gateway would refuse the
//! file — otherwise an operator believes a budget or an approval rule is in
//! force when the gateway never loaded it. Every rule here is upstream's
//! (`aa-policy/src/validator.rs`), except where the README lists a
//! deliberate strictness. Only `capabilities.deny` reaches the kernel, as the
//! write-deny floor.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::document::{NotNull, present};
use super::leaf::{Number, Text, at_key};

/// `capabilities.{allow, deny}` tokens (`aa-core/src/capability.rs`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    FileRead,
    FileWrite,
    FileDelete,
    NetworkOutbound,
    NetworkInbound,
    TerminalExec,
    AgentSpawn,
    McpTool(String),
    Model(String),
}

impl Capability {
    const SIMPLE: [(&'static str, Capability); 7] = [
        ("file_read", Capability::FileRead),
        ("file_write", Capability::FileWrite),
        ("file_delete", Capability::FileDelete),
        ("network_outbound", Capability::NetworkOutbound),
        ("network_inbound", Capability::NetworkInbound),
        ("terminal_exec", Capability::TerminalExec),
        ("agent_spawn", Capability::AgentSpawn),
    ];

    /// Exact and case-sensitive; a qualified name may hold any characters
    /// but must not be empty.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some((_, cap)) = Self::SIMPLE.iter().find(|(name, _)| *name == raw) {
            return Ok(cap.clone());
        }
        let qualified = [
            ("mcp_tool:", Capability::McpTool as fn(String) -> Capability),
            ("model:", Capability::Model),
        ];
        for (prefix, make) in qualified {
            if let Some(name) = raw.strip_prefix(prefix) {
                if name.is_empty() {
                    return Err(format!("`{prefix}` needs a name after the colon"));
                }
                return Ok(make(name.to_owned()));
            }
        }
        let known = Self::SIMPLE
            .iter()
            .map(|(n, _)| *n)
            .chain(["mcp_tool:<name>", "model:<name>"]);
        Err(format!(
            "unknown capability `{raw}`{}",
            super::syscall_names::suggestion(raw, known)
        ))
    }

    /// Capabilities whose denial puts the write-deny floor on the kernel.
    pub fn implies_write_floor(&self) -> bool {
        matches!(self, Capability::FileWrite | Capability::FileDelete)
    }

    /// Upstream's gateway maps no action to these yet: allowing or denying
    /// them changes nothing, and upstream warns about it.
    pub fn is_inert(&self) -> bool {
        matches!(
            self,
            Capability::NetworkInbound | Capability::AgentSpawn | Capability::Model(_)
        )
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::McpTool(name) => write!(f, "mcp_tool:{name}"),
            Capability::Model(name) => write!(f, "model:{name}"),
            simple => {
                let name = Self::SIMPLE
                    .iter()
                    .find(|(_, cap)| cap == simple)
                    .map_or("?", |(name, _)| name);
                f.write_str(name)
            }
        }
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a capability name", Capability::parse)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, deserialize_with = "present")]
    pub allow: Option<Vec<Capability>>,
    #[serde(default, deserialize_with = "present")]
    pub deny: Option<Vec<Capability>>,
}

/// A `requires_approval_if` condition that passed upstream's load-time check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalCondition(pub String);

impl<'de> Deserialize<'de> for ApprovalCondition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "an approval condition", |raw| {
            super::approval_condition::check(raw).map(|()| ApprovalCondition(raw.to_owned()))
        })
    }
}

/// `tools.<name or "*">`. A tool without `allow: true` is denied.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    #[serde(default, deserialize_with = "present")]
    pub allow: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub requires_approval_if: Option<ApprovalCondition>,
    #[serde(default, deserialize_with = "present")]
    pub limit_per_hour: Option<u32>,
}

/// `tools:` by tool name (any string; `*` is the gateway's fallback entry).
/// A name listed twice is refused: which entry wins would be a guess.
#[derive(Clone, Debug, Default)]
pub struct Tools(pub BTreeMap<String, ToolRule>);

impl<'de> Deserialize<'de> for Tools {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ToolsVisitor;
        impl<'de> Visitor<'de> for ToolsVisitor {
            type Value = Tools;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of tool names to rules")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tools, A::Error> {
                let mut tools = BTreeMap::new();
                while let Some(Text(name)) = map.next_key::<Text>()? {
                    let rule = map.next_value::<NotNull<ToolRule>>()?.0;
                    if tools.insert(name.clone(), rule).is_some() {
                        return Err(de::Error::custom(format!("tool `{name}` is listed twice")));
                    }
                }
                Ok(Tools(tools))
            }
        }
        deserializer.deserialize_map(ToolsVisitor)
    }
}

/// An IANA time zone name, exactly as the tz database spells it (`UTC`,
/// `America/New_York`; `utc` is not one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeZone(pub String);

impl TimeZone {
    pub fn parse(raw: &str) -> Result<TimeZone, String> {
        match raw.parse::<chrono_tz::Tz>() {
            Ok(_) => Ok(TimeZone(raw.to_owned())),
            Err(_) => Err(format!(
                "`{raw}` is not an IANA time zone name (e.g. UTC, America/New_York; names are case-sensitive)"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a time zone name", TimeZone::parse)
    }
}

/// `HH:MM`, 24-hour, two digits each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    pub fn parse(raw: &str) -> Result<TimeOfDay, String> {
        let two_digits = |part: &str| {
            (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u8>().ok())
                .flatten()
        };
        raw.split_once(':')
            .and_then(|(h, m)| Some((two_digits(h)?, two_digits(m)?)))
            .filter(|&(hour, minute)| hour < 24 && minute < 60)
            .map(|(hour, minute)| TimeOfDay { hour, minute })
            .ok_or_else(|| format!("`{raw}` is not a time of day HH:MM (00:00-23:59)"))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a time of day HH:MM", TimeOfDay::parse)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActiveHours {
    start: TimeOfDay,
    end: TimeOfDay,
    timezone: TimeZone,
}

/// A daily window; it cannot cross midnight (upstream compares the times).
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawActiveHours")]
pub struct ActiveHours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
    pub timezone: TimeZone,
}

impl TryFrom<RawActiveHours> for ActiveHours {
    type Error = String;
    fn try_from(raw: RawActiveHours) -> Result<Self, String> {
        if raw.start >= raw.end {
            return Err(at_key(
                "start",
                format!(
                    "{} is not earlier than end {} (a window cannot cross midnight)",
                    raw.start, raw.end
                ),
            ));
        }
        Ok(ActiveHours {
            start: raw.start,
            end: raw.end,
            timezone: raw.timezone,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, deserialize_with = "present")]
    pub active_hours: Option<ActiveHours>,
}

/// A positive, finite amount of US dollars.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Usd(pub f64);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_f64(deserializer, "an amount in USD", |n| {
            let amount = match n {
                Number::Unsigned(v) => v as f64,
                Number::Signed(v) => v as f64,
                Number::Float(v) => v,
            };
            if !amount.is_finite() || amount <= 0.0 {
                return Err(format!(
                    "{n} is not a limit (a finite number of dollars > 0)"
                ));
            }
            Ok(Usd(amount))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    Deny,
    Suspend,
}

/// A budget window such as `30m` or `1h 30m` (humantime), above zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(pub std::time::Duration);

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a duration such as 30m", |raw| {
            match humantime::parse_duration(raw) {
                Ok(duration) if duration.is_zero() => Err(format!(
                    "`{raw}` is zero; a window must be positive (e.g. 5s, 30m, 1h)"
                )),
                Ok(duration) => Ok(Window(duration)),
                Err(e) => Err(format!(
                    "`{raw}` is not a duration ({e}); write e.g. 30m, 1h, 7days"
                )),
            }
        })
    }
}

/// The three tiers of limits, each a (daily, monthly) pair.
const LIMIT_TIERS: [(&str, &str); 3] = [
    ("daily_limit_usd", "monthly_limit_usd"),
    ("team_daily_limit_usd", "team_monthly_limit_usd"),
    ("org_daily_limit_usd", "org_monthly_limit_usd"),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default, deserialize_with = "present")]
    daily_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    monthly_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    team_daily_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    team_monthly_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    org_daily_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    org_monthly_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "present")]
    timezone: Option<TimeZone>,
    #[serde(default, deserialize_with = "present")]
    action_on_exceed: Option<BudgetAction>,
    #[serde(default, deserialize_with = "present")]
    window: Option<Window>,
}

/// Spending limits per agent, team and organisation; within a tier the
/// monthly limit may not be below the daily one.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawBudget")]
pub struct Budget {
    /// `(daily, monthly)` for the agent, team and org tiers, in that order.
    pub limits: [(Option<Usd>, Option<Usd>); 3],
    pub timezone: Option<TimeZone>,
    pub action_on_exceed: Option<BudgetAction>,
    pub window: Option<Window>,
}

impl TryFrom<RawBudget> for Budget {
    type Error = String;
    fn try_from(raw: RawBudget) -> Result<Self, String> {
        let limits = [
            (raw.daily_limit_usd, raw.monthly_limit_usd),
            (raw.team_daily_limit_usd, raw.team_monthly_limit_usd),
            (raw.org_daily_limit_usd, raw.org_monthly_limit_usd),
        ];
        for ((daily, monthly), (daily_key, monthly_key)) in limits.iter().zip(LIMIT_TIERS) {
            if let (Some(daily), Some(monthly)) = (daily, monthly)
                && monthly < daily
            {
                return Err(at_key(
                    monthly_key,
                    format!("{} is below {daily_key} {}", monthly.0, daily.0),
                ));
            }
        }
        Ok(Budget {
            limits,
            timezone: raw.timezone,
            action_on_exceed: raw.action_on_exceed,
            window: raw.window,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialAction {
    Block,
    RedactOnly,
    AlertOnly,
    AlertAndRedact,
}

/// A `data.sensitive_patterns` entry: a regular expression in the syntax
/// of Rust's `regex` crate, which the gateway compiles (no look-around, no
/// backreferences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensitivePattern(pub String);

impl<'de> Deserialize<'de> for SensitivePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a regular expression", |raw| {
            regex_automata::util::syntax::parse(raw)
                .map(|_| SensitivePattern(raw.to_owned()))
                .map_err(|e| format!("not a valid regular expression: {}", one_line(&e)))
        })
    }
}

/// The compiled-size limit the `regex` crate (and so the gateway) applies
/// to a pattern. Here it applies to all of a policy's patterns together:
/// compiling costs time in proportion to size, and a few thousand patterns
/// each just under the limit would hold a reload for an hour.
pub const PATTERNS_SIZE_LIMIT: usize = 10 * (1 << 20);

/// Compiles `patterns` together (their syntax is already checked) within
/// `PATTERNS_SIZE_LIMIT`.
fn check_pattern_size(patterns: &[SensitivePattern]) -> Result<(), String> {
    use regex_automata::nfa::thompson::{Compiler, Config, WhichCaptures};
    let limit = Config::new().nfa_size_limit(Some(PATTERNS_SIZE_LIMIT));
    let texts: Vec<&str> = patterns.iter().map(|p| p.0.as_str()).collect();
    Compiler::new()
        .configure(limit.clone())
        .build_many(&texts)
        .map_err(|e| {
            at_key(
                "sensitive_patterns",
                format!(
                    "the patterns do not compile within {} MiB together ({}); the gateway's limit is per pattern, aa-policyd's is for all of them",
                    PATTERNS_SIZE_LIMIT >> 20,
                    one_line(&e)
                ),
            )
        })?;
    // The regex crate also builds each pattern's reverse automaton under
    // the same limit, and it is the larger one for Unicode classes (`\w`
    // reaches it first); within the limit together, their sizes are
    // bounded too. This one trips a little earlier than the gateway's.
    let reverse = limit.reverse(true).which_captures(WhichCaptures::None);
    for (index, text) in texts.iter().enumerate() {
        Compiler::new()
            .configure(reverse.clone())
            .build(text)
            .map_err(|e| {
                at_key(
                    &format!("sensitive_patterns[{index}]"),
                    format!(
                        "compiles to more than the regex crate's {} MiB ({})",
                        PATTERNS_SIZE_LIMIT >> 20,
                        one_line(&e)
                    ),
                )
            })?;
    }
    Ok(())
}

fn one_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataRules {
    #[serde(default, deserialize_with = "present")]
    credential_action: Option<CredentialAction>,
    #[serde(default, deserialize_with = "present")]
    sensitive_patterns: Option<Vec<SensitivePattern>>,
    #[serde(default, deserialize_with = "present")]
    locale_packs: Option<Vec<Text>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawDataRules")]
pub struct DataRules {
    pub credential_action: Option<CredentialAction>,
    pub sensitive_patterns: Option<Vec<SensitivePattern>>,
    /// Locale tags of extra detectors (e.g. `zh-TW`); the gateway checks them.
    pub locale_packs: Option<Vec<Text>>,
}

impl TryFrom<RawDataRules> for DataRules {
    type Error = String;
    fn try_from(raw: RawDataRules) -> Result<Self, String> {
        check_pattern_size(raw.sensitive_patterns.as_deref().unwrap_or_default())?;
        Ok(DataRules {
            credential_action: raw.credential_action,
            sensitive_patterns: raw.sensitive_patterns,
            locale_packs: raw.locale_packs,
        })
    }
}

/// `approval:` — how a human approval request is handled.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    #[serde(default, deserialize_with = "present")]
    pub timeout_seconds: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    pub escalation_role: Option<Text>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_tokens_parse_and_typos_are_named() {
        assert_eq!(
            Capability::parse("mcp_tool:github").unwrap(),
            Capability::McpTool("github".into())
        );
        assert_eq!(
            Capability::parse("mcp_tool: x").unwrap(),
            Capability::McpTool(" x".into())
        );
        assert!(Capability::parse("model:").is_err());
        assert!(Capability::parse("File_Read").is_err());
        let err = Capability::parse("file_wrte").unwrap_err();
        assert!(err.contains("did you mean `file_write`"), "{err}");
        assert_eq!(Capability::parse("model:x").unwrap().to_string(), "model:x");
        assert_eq!(Capability::FileDelete.to_string(), "file_delete");
    }

    #[test]
    fn times_of_day_need_two_digits_each() {
        assert!(TimeOfDay::parse("00:00").is_ok());
        assert!(TimeOfDay::parse("23:59").is_ok());
        for bad in [
            "9:00", "24:00", "0900", "09:00:00", "+9:00", "ab:cd", "12:60",
        ] {
            assert!(TimeOfDay::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_are_exact_database_names() {
        for ok in [
            "UTC",
            "Asia/Taipei",
            "America/New_York",
            "Etc/GMT+5",
            "US/Pacific",
        ] {
            assert!(TimeZone::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["utc", "asia/taipei", "", "+08:00", "Mars/Phobos"] {
            assert!(TimeZone::parse(bad).is_err(), "{bad}");
        }
    }
}

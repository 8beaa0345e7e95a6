//! The policy sections the Agent Assembly gateway enforces and the kernel
//! cannot: `capabilities`, `tools`, `budget`, `schedule`, `data`.
//!
//! Why this exists: these sections share the file with the kernel rules, so a
//! typo in them must fail `check` just as loudly — otherwise an operator
//! believes a budget or an approval rule is in force when the gateway ignores
//! it. They are validated here and reported as not lowered; only
//! `capabilities.deny` reaches the kernel, as the write-deny floor.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::leaf::Number;

/// `capabilities.{allow, deny}` tokens.
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
                if name.is_empty() || name.chars().any(char::is_whitespace) {
                    return Err(format!("`{prefix}` needs a name without spaces"));
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
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a capability name", Capability::parse)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default, deserialize_with = "super::document::present")]
    pub allow: Option<Vec<Capability>>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub deny: Option<Vec<Capability>>,
}

/// `tools.<name or "*">`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRule {
    #[serde(default, deserialize_with = "super::document::present")]
    pub allow: Option<bool>,
    #[serde(default, deserialize_with = "one_or_many")]
    pub requires_approval_if: Option<Vec<NonEmptyString>>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub limit_per_hour: Option<u32>,
}

pub type Tools = BTreeMap<NonEmptyString, ToolRule>;

/// A string that must say something.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NonEmptyString(pub String);

impl<'de> Deserialize<'de> for NonEmptyString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a non-empty string", |raw| {
            if raw.trim().is_empty() {
                return Err("must not be empty".to_owned());
            }
            Ok(NonEmptyString(raw.to_owned()))
        })
    }
}

/// Accepts `x` or `[x, y]`.
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<NonEmptyString>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a condition string or a list of them")]
    enum OneOrMany {
        One(NonEmptyString),
        Many(Vec<NonEmptyString>),
    }
    Ok(Some(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    }))
}

/// An IANA zone name such as `UTC` or `Europe/Berlin`: checked for shape,
/// since the zone database is the gateway's business, not ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeZone(pub String);

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a time zone name", |raw| {
            let shaped = !raw.is_empty()
                && raw.len() <= 64
                && raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c))
                && !raw.starts_with('/');
            if !shaped {
                return Err(format!(
                    "`{raw}` is not a time zone name (e.g. UTC, Europe/Berlin)"
                ));
            }
            Ok(TimeZone(raw.to_owned()))
        })
    }
}

/// `HH:MM`, 24-hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a time of day HH:MM", |raw| {
            let parsed = raw.split_once(':').and_then(|(h, m)| {
                let (h, m): (u8, u8) = (h.parse().ok()?, m.parse().ok()?);
                (h < 24 && m < 60 && raw.len() == 5).then_some(TimeOfDay { hour: h, minute: m })
            });
            parsed.ok_or_else(|| format!("`{raw}` is not a time of day HH:MM (00:00-23:59)"))
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveHours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
    #[serde(default, deserialize_with = "super::document::present")]
    pub timezone: Option<TimeZone>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub active_hours: ActiveHours,
}

/// A non-negative, finite amount of US dollars.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usd(pub f64);

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_number(deserializer, "an amount in USD", |n| {
            let amount = match n {
                Number::Unsigned(v) => v as f64,
                Number::Signed(v) => v as f64,
                Number::Float(v) => v,
            };
            if !amount.is_finite() || amount < 0.0 {
                return Err(format!("{n} is not a valid amount (a number >= 0)"));
            }
            Ok(Usd(amount))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetAction {
    Block,
    Warn,
    Notify,
    RequireApproval,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, deserialize_with = "super::document::present")]
    pub daily_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub monthly_limit_usd: Option<Usd>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub timezone: Option<TimeZone>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub action_on_exceed: Option<BudgetAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialAction {
    Redact,
    Block,
    Warn,
    Allow,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataRules {
    #[serde(default, deserialize_with = "super::document::present")]
    pub credential_action: Option<CredentialAction>,
    #[serde(default, deserialize_with = "super::document::present")]
    pub sensitive_patterns: Option<Vec<NonEmptyString>>,
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
        assert!(Capability::parse("model:").is_err());
        let err = Capability::parse("file_wrte").unwrap_err();
        assert!(err.contains("did you mean `file_write`"), "{err}");
    }
}

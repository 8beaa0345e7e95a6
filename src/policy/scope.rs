//! `scope:` — which agents a policy governs: `global`, `org:ID`, `team:ID`,
//! `agent:UUID` or `tool:NAME`, with upstream's grammar.
//!
//! Why this exists: the gateway picks policies by scope, and it refuses a
//! file whose scope it cannot read. The kernel confines whatever process it
//! is given, so the scope is validated here and reported as not lowered.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A validated scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Global,
    Org(String),
    Team(String),
    /// Lowercase, hyphenated.
    Agent(String),
    Tool(String),
}

impl Scope {
    /// Upstream's rules: exactly `global`, or `KIND:ID` split at the first
    /// `:`, the ID non-empty and otherwise free, except that an agent's ID
    /// must be a UUID.
    pub fn parse(raw: &str) -> Result<Scope, String> {
        if raw == "global" {
            return Ok(Scope::Global);
        }
        let Some((kind, id)) = raw.split_once(':') else {
            return Err(format!(
                "scope `{raw}` is not `global` or `KIND:ID` (KIND is org, team, agent or tool)"
            ));
        };
        if id.is_empty() {
            return Err(format!("scope `{raw}` has nothing after `:`"));
        }
        match kind {
            "org" => Ok(Scope::Org(id.to_owned())),
            "team" => Ok(Scope::Team(id.to_owned())),
            "tool" => Ok(Scope::Tool(id.to_owned())),
            "agent" => parse_uuid(id).map(Scope::Agent).ok_or_else(|| {
                format!("scope `{raw}`: `{id}` is not a UUID (e.g. agent:01234567-89ab-cdef-0123-456789abcdef)")
            }),
            other => Err(format!(
                "scope `{raw}`: unknown kind `{other}` (org, team, agent or tool)"
            )),
        }
    }
}

/// The UUID forms upstream accepts: 32 hex digits, hyphenated 8-4-4-4-12,
/// and the hyphenated form in braces or after `urn:uuid:`. Returns
/// the lowercase hyphenated form.
fn parse_uuid(text: &str) -> Option<String> {
    let (inner, wrapped) = if let Some(braced) = text.strip_prefix('{') {
        (braced.strip_suffix('}')?, true)
    } else if let Some(urn) = text.strip_prefix("urn:uuid:") {
        (urn, true)
    } else {
        (text, false)
    };
    let hex: String = match inner.len() {
        32 if !wrapped => inner.to_owned(),
        36 => {
            let groups: Vec<&str> = inner.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            if lengths != [8, 4, 4, 4, 12] {
                return None;
            }
            groups.concat()
        }
        _ => return None,
    };
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Org(id) => write!(f, "org:{id}"),
            Scope::Team(id) => write!(f, "team:{id}"),
            Scope::Agent(id) => write!(f, "agent:{id}"),
            Scope::Tool(name) => write!(f, "tool:{name}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(deserializer, "a scope", Scope::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn scopes_parse_as_upstream_reads_them() {
        assert_eq!(Scope::parse("global"), Ok(Scope::Global));
        assert_eq!(Scope::parse("team:a:b"), Ok(Scope::Team("a:b".into())));
        assert_eq!(Scope::parse("tool:*"), Ok(Scope::Tool("*".into())));
        let agent = Scope::Agent("01234567-89ab-cdef-0123-456789abcdef".into());
        for form in [
            "agent:01234567-89AB-cdef-0123-456789abcdef",
            "agent:0123456789abcdef0123456789abcdef",
            "agent:{01234567-89ab-cdef-0123-456789abcdef}",
            "agent:urn:uuid:01234567-89ab-cdef-0123-456789abcdef",
        ] {
            assert_eq!(Scope::parse(form).as_ref(), Ok(&agent), "{form}");
        }
        for bad in [
            "Global",
            " global",
            "team:",
            "project:x",
            "agent:1234",
            "agent:01234567-89ab-cdef-0123-456789abcdeg",
            "agent:0123456789-ab-cdef-0123-456789abcdef",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }
}

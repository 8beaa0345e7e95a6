//! `tools.<name>.requires_approval_if`: the load-time check upstream's
//! gateway validator applies to an approval condition, rule for rule.
//!
//! Why this exists: the gateway, not the kernel, evaluates these conditions,
//! and it refuses a file whose condition names an unknown variable or an
//! unknown governance level. A file `check` calls valid must load in the
//! gateway too, so the same three rules run here: not blank; every `L<digits>`
//! word is `L0`–`L3` (looked for everywhere, even inside quotes, as upstream
//! does); every bare word is an operator, a literal, a dynamic reference
//! (`args.x`, `tool_result`, `tool_result.x`) or one of the known variables.
//! Like upstream, this is a lexical check, not a parse: the gateway's
//! evaluator treats a malformed condition as "approval required".

/// The variables the gateway's evaluator knows, in upstream's order (the
/// error message lists them in this order).
pub const KNOWN_VARIABLES: [&str; 23] = [
    "tool",
    "path",
    "url",
    "method",
    "command",
    "governance_level",
    "agent.depth",
    "agent.risk_tier",
    "team.active_agents",
    "team.budget_remaining",
    "child.tool",
    "child.risk_tier",
    "parent.risk_tier",
    "source.team_id",
    "target.team_id",
    "target.channel_id",
    "agent.age",
    "team.parallel_agents",
    "agent.parent_agent_id",
    "agent.team_id",
    "agent.children_count",
    "agent.is_root",
    "agent.is_leaf",
];

/// Words that are operators, combinators or literals, never variables.
const RESERVED_WORDS: [&str; 16] = [
    "AND",
    "OR",
    "true",
    "false",
    "contains",
    "starts_with",
    "in",
    "not_in",
    "L0",
    "L1",
    "L2",
    "L3",
    "Low",
    "Medium",
    "High",
    "Critical",
];

/// Checks one condition; the error is the first rule it breaks.
pub fn check(condition: &str) -> Result<(), String> {
    if condition.trim().is_empty() {
        return Err("an approval condition must not be empty".to_owned());
    }
    check_governance_levels(condition)?;
    check_variables(condition)
}

/// Every `L` followed by digits only (the whole identifier run) must be a
/// level that exists.
fn check_governance_levels(condition: &str) -> Result<(), String> {
    let chars: Vec<char> = condition.chars().collect();
    let mut at = 0;
    while at < chars.len() {
        if chars[at] != 'L' {
            at += 1;
            continue;
        }
        let end = chars[at..]
            .iter()
            .position(|c| !(c.is_alphanumeric() || *c == '_'))
            .map_or(chars.len(), |n| at + n);
        let word: String = chars[at..end].iter().collect();
        let digits = &word[1..];
        if !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && !matches!(word.as_str(), "L0" | "L1" | "L2" | "L3")
        {
            return Err(format!(
                "unknown governance level `{word}`; the levels are L0, L1, L2, L3"
            ));
        }
        at = end;
    }
    Ok(())
}

fn check_variables(condition: &str) -> Result<(), String> {
    for word in bare_words(condition) {
        let dynamic = word.strip_prefix("args.").is_some_and(|k| !k.is_empty())
            || word == "tool_result"
            || word
                .strip_prefix("tool_result.")
                .is_some_and(|k| !k.is_empty());
        if RESERVED_WORDS.contains(&word.as_str())
            || word.parse::<f64>().is_ok()
            || dynamic
            || KNOWN_VARIABLES.contains(&word.as_str())
        {
            continue;
        }
        let closest = KNOWN_VARIABLES
            .iter()
            .map(|known| (strsim::levenshtein(&word, known), *known))
            .filter(|(distance, _)| *distance <= 2)
            .min_by_key(|(distance, _)| *distance);
        let hint = closest.map_or(String::new(), |(_, known)| {
            format!("; did you mean `{known}`?")
        });
        return Err(format!(
            "unknown variable `{word}` in the approval condition{hint} (known: {}; and args.KEY, tool_result, tool_result.KEY)",
            KNOWN_VARIABLES.join(", ")
        ));
    }
    Ok(())
}

/// The words outside string literals and `[...]` lists: runs of letters,
/// digits, `_`, `-` and `.`. Everything else separates words.
fn bare_words(condition: &str) -> Vec<String> {
    let is_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut words = Vec::new();
    let mut chars = condition.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '[' => {
                // A list's items are values; the list ends at the first `]`.
                for skipped in chars.by_ref() {
                    if skipped == ']' {
                        break;
                    }
                }
            }
            '"' => {
                chars.next();
                while let Some(inside) = chars.next() {
                    match inside {
                        '"' => break,
                        '\\' => {
                            chars.next();
                        }
                        _ => {}
                    }
                }
            }
            c if is_word(c) => {
                let mut word = String::new();
                while let Some(&w) = chars.peek().filter(|w| is_word(**w)) {
                    word.push(w);
                    chars.next();
                }
                words.push(word);
            }
            _ => {
                chars.next();
            }
        }
    }
    words
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn conditions_upstream_accepts_pass() {
        for ok in [
            "path starts_with \"/etc\" OR path contains \"..\"",
            "agent.depth >= 2",
            "target.channel_id not_in [\"ops\", \"general\"]",
            "governance_level >= L2",
            "agent.risk_tier >= High AND parent.risk_tier == Low",
            "args.path starts_with \"/etc\" OR tool_result contains \"sk-\" OR tool_result.a.b == 1",
            "tool in [a, b]",
            "path == \"abc",
            "path starts_with '/'",
            "true",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn conditions_upstream_refuses_fail_with_the_reason() {
        for (bad, reason) in [
            ("   ", "must not be empty"),
            ("governance_level >= L4", "unknown governance level `L4`"),
            ("path starts_with \"/L9\"", "unknown governance level `L9`"),
            ("x_L03 == 1", "unknown governance level `L03`"),
            ("agent.depht > 1", "did you mean `agent.depth`?"),
            ("amount > 100", "unknown variable `amount`"),
            ("path starts_with '/etc'", "unknown variable `etc`"),
            ("path starts_with /etc", "unknown variable `etc`"),
            ("path == \"a\" and url == \"b\"", "unknown variable `and`"),
            ("agent.risk_tier >= high", "unknown variable `high`"),
            ("agent.age > 24h", "unknown variable `24h`"),
            ("args. == 1", "unknown variable `args.`"),
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains(reason), "{bad}: {err}");
        }
    }
}

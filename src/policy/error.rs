//! `PolicyError`: every way a policy file can be refused, each naming the place.
//!
//! Why this exists: an operator fixing a policy at 3 a.m. needs
//! `file:line:col: key.path: what is wrong` on one line, the form editors and
//! CI annotators jump to. serde_yaml already knows the line, column and key
//! path of a failure; this module turns its message into that one line and
//! keeps I/O and size refusals in the same shape.

use std::path::{Path, PathBuf};

use super::leaf::KEY_MARKER;

/// A policy that could not be read or is not valid. `Display` is exactly one
/// line: `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: cannot read the policy: {reason}", file.display())]
    Unreadable { file: PathBuf, reason: String },
    /// The machine, not the file, is the problem (out of descriptors or
    /// memory): worth trying again, and never a verdict on the file.
    #[error("{}: cannot read the policy now: {reason}", file.display())]
    Resource { file: PathBuf, reason: String },
}

impl PolicyError {
    /// An error reading `file`: a shortage of descriptors or memory is
    /// `Resource`, anything else `Unreadable`.
    pub fn reading(file: &Path, error: &std::io::Error) -> Self {
        let shortage = matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
        );
        let (file, reason) = (file.to_owned(), error.to_string());
        if shortage {
            PolicyError::Resource { file, reason }
        } else {
            PolicyError::Unreadable { file, reason }
        }
    }

    pub fn invalid(file: &Path, line: usize, column: usize, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message: one_line(&message.into()),
        }
    }

    /// Converts a serde_yaml error, tracked by serde_path_to_error, into our
    /// one-line form. serde_yaml knows the position but attributes custom
    /// errors to the enclosing mapping; the tracker knows the exact key path
    /// (`spec.syscalls.allow[3]`). An unknown key's path is completed with
    /// the key itself (`spec.filesystem` + `raed` → `spec.filesystem.raed`).
    pub fn from_yaml(file: &Path, error: &serde_path_to_error::Error<serde_yaml::Error>) -> Self {
        let inner = error.inner();
        let (line, column) = inner.location().map_or((1, 1), |l| (l.line(), l.column()));
        let rendered = strip_locations(&inner.to_string());
        let (yaml_path, message) = split_key_path(&rendered);
        let tracked = error.path().to_string();
        let path = match tracked.as_str() {
            "." | "" => yaml_path.map(str::to_owned),
            tracked => Some(tracked.to_owned()),
        };
        let keyed = message
            .strip_prefix(KEY_MARKER)
            .and_then(|rest| rest.split_once(": "));
        let message = match (message.strip_prefix("unknown field `"), keyed) {
            (Some(rest), _) => {
                let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
                let full = match path {
                    Some(path) if !path.ends_with(key) => format!("{path}.{key}"),
                    Some(path) => path,
                    None => key.to_owned(),
                };
                format!("{full}: {}", unknown_key_reason(&full, key, expected))
            }
            (None, Some((leaf, reason))) => match path {
                Some(path) => format!("{path}.{leaf}: {reason}"),
                None => format!("{leaf}: {reason}"),
            },
            (None, None) => match path {
                Some(path) => format!("{path}: {message}"),
                None => message.to_owned(),
            },
        };
        PolicyError::invalid(file, line, column, message)
    }
}

/// Why an unknown key is refused. Two keys get their own reason: `rules`
/// (upstream's abandoned rule-list schema, refused rather than read as an
/// empty, allow-everything policy) and `metadata` outside an envelope.
fn unknown_key_reason(full_path: &str, key: &str, expected: &str) -> String {
    let at_root = matches!(full_path, "rules" | "spec.rules" | "metadata");
    match key {
        "rules" if at_root => "the rule-list schema (`rules:`) is not supported; this is a section-based policy (syscalls, filesystem, network, tools, capabilities, ...), and loading it without its rules would allow everything".to_owned(),
        "metadata" if at_root => "unknown key here; metadata belongs to the envelope form (apiVersion, kind, metadata, and the policy under spec:)".to_owned(),
        _ => format!("unknown key{}", expected.replace(", expected", "; expected")),
    }
}

/// Splits `a.b[2].c: message` into the key path and the message. A key path
/// has no spaces, which tells it apart from a message that contains `: `.
fn split_key_path(text: &str) -> (Option<&str>, &str) {
    match text.split_once(": ") {
        Some((path, message))
            if !path.is_empty()
                && !path.contains(' ')
                && path != "."
                && !path.starts_with(KEY_MARKER) =>
        {
            (Some(path), message)
        }
        _ => (None, text),
    }
}

/// Removes every ` at line N column M`: the position is already in front.
fn strip_locations(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" at line ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + " at line ".len()..];
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let line_digits = digits(after);
        let tail = &after[line_digits..];
        match tail.strip_prefix(" column ") {
            Some(col) if line_digits > 0 && digits(col) > 0 => rest = &col[digits(col)..],
            _ => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_is_split_only_when_it_has_no_spaces() {
        assert_eq!(split_key_path("a.b: bad"), (Some("a.b"), "bad"));
        assert_eq!(
            split_key_path("invalid type: map"),
            (None, "invalid type: map")
        );
    }

    #[test]
    fn every_embedded_location_is_stripped() {
        assert_eq!(
            strip_locations(
                "did not find ',' at line 2 column 1, while parsing at line 1 column 11"
            ),
            "did not find ',', while parsing"
        );
        assert_eq!(strip_locations("at line x"), "at line x");
    }

    #[test]
    fn messages_are_folded_onto_one_line() {
        let e = PolicyError::invalid(Path::new("p.yaml"), 2, 3, "a\nb   c");
        assert_eq!(e.to_string(), "p.yaml:2:3: a b c");
    }
}

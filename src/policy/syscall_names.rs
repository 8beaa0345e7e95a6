//! Syscall names and `@groups` as they may appear in `syscalls.allow`.
//!
//! Why this exists: a typo in an allowlist is not harmless — `opnat` instead
//! of `openat` kills every confined process on its first file open. So a name
//! is accepted only if the kernel's table knows it on a supported architecture
//! (x86_64 or aarch64, via the `syscalls` crate, not a hand-kept list), and a
//! near miss gets a "did you mean". Groups come from the one data file
//! `syscall_groups.yaml` so that the README and the code cannot disagree.
//!
//! A name that exists on only one architecture (`open` is x86_64-only) is
//! valid; lowering for the other architecture skips it and reports it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer};

use crate::ruleset::Arch;

/// One entry of `syscalls.allow`: a syscall name or a group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyscallToken {
    Name(String),
    Group(String),
}

impl SyscallToken {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some(group) = raw.strip_prefix('@') {
            if groups().contains_key(group) {
                return Ok(SyscallToken::Group(group.to_owned()));
            }
            let known: Vec<String> = groups().keys().map(|g| format!("@{g}")).collect();
            return Err(format!(
                "unknown syscall group `{raw}`{}",
                suggestion(raw, known.iter().map(String::as_str))
            ));
        }
        if Arch::ALL
            .iter()
            .any(|arch| arch.syscall_number(raw).is_some())
        {
            return Ok(SyscallToken::Name(raw.to_owned()));
        }
        let known = all_syscall_names();
        Err(format!(
            "unknown syscall `{raw}` (not in the x86_64 or aarch64 table){}",
            suggestion(raw, known.iter().copied())
        ))
    }

    /// The syscall names this token stands for, before any arch filtering.
    pub fn names(&self) -> Vec<&str> {
        match self {
            SyscallToken::Name(name) => vec![name.as_str()],
            SyscallToken::Group(group) => groups()
                .get(group.as_str())
                .map(|members| members.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        }
    }

    /// Whether upstream's closed vocabulary (`aa-security`'s 15 names) has
    /// this token; groups and every other name are our extension.
    pub fn is_upstream_name(&self) -> bool {
        matches!(self, SyscallToken::Name(name) if UPSTREAM_SYSCALL_NAMES.contains(&name.as_str()))
    }
}

/// The syscall names upstream's validator accepts, and no others.
pub const UPSTREAM_SYSCALL_NAMES: [&str; 15] = [
    "read",
    "write",
    "close",
    "fstat",
    "lseek",
    "mmap",
    "munmap",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "exit",
    "clock_gettime",
    "exit_group",
    "openat",
    "getrandom",
];

impl fmt::Display for SyscallToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyscallToken::Name(name) => f.write_str(name),
            SyscallToken::Group(group) => write!(f, "@{group}"),
        }
    }
}

impl<'de> Deserialize<'de> for SyscallToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_str(
            deserializer,
            "a syscall name or @group",
            SyscallToken::parse,
        )
    }
}

/// Group name (without `@`) → the sorted syscall names it expands to, with
/// nested groups already flattened.
pub fn groups() -> &'static BTreeMap<String, BTreeSet<String>> {
    static GROUPS: OnceLock<BTreeMap<String, BTreeSet<String>>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        // The file is compiled in and checked by the tests below, so a failure
        // here is a build defect, not something a user can cause.
        let raw: BTreeMap<String, Vec<String>> =
            serde_yaml::from_str(include_str!("syscall_groups.yaml"))
                .expect("syscall_groups.yaml is valid (checked by tests)");
        flatten_groups(&raw).expect("syscall_groups.yaml has no cycles (checked by tests)")
    })
}

fn flatten_groups(
    raw: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    /// Adds the members of `group` (a key with its `@`) to `out`.
    fn expand(
        group: &str,
        raw: &BTreeMap<String, Vec<String>>,
        visiting: &mut Vec<String>,
        out: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        if visiting.iter().any(|g| g == group) {
            return Err(format!("group cycle through {group}"));
        }
        let members = raw
            .get(group)
            .ok_or_else(|| format!("unknown group {group}"))?;
        visiting.push(group.to_owned());
        for member in members {
            if member.starts_with('@') {
                expand(member, raw, visiting, out)?;
            } else {
                out.insert(member.clone());
            }
        }
        visiting.pop();
        Ok(())
    }

    raw.keys()
        .map(|key| {
            let mut members = BTreeSet::new();
            expand(key, raw, &mut Vec::new(), &mut members)?;
            let name = key.strip_prefix('@').unwrap_or(key);
            Ok((name.to_owned(), members))
        })
        .collect()
}

fn all_syscall_names() -> BTreeSet<&'static str> {
    Arch::ALL
        .iter()
        .flat_map(|arch| arch.syscall_names())
        .collect()
}

/// `; did you mean `x`?` for the closest known name, or nothing when no name
/// is close enough to be a plausible typo.
pub fn suggestion<'a>(wanted: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|candidate| (strsim::jaro_winkler(wanted, candidate), candidate))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, best)| format!("; did you mean `{best}`?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_member_exists_on_some_supported_arch() {
        for (group, members) in groups() {
            assert!(!members.is_empty(), "@{group} is empty");
            for name in members {
                assert!(
                    Arch::ALL.iter().any(|a| a.syscall_number(name).is_some()),
                    "@{group} lists unknown syscall {name}"
                );
            }
        }
    }

    #[test]
    fn nested_groups_are_flattened() {
        let service = &groups()["system-service"];
        assert!(service.contains("openat") && service.contains("connect"));
        assert!(!service.contains("io_uring_setup"));
    }

    #[test]
    fn group_cycles_are_refused() {
        let mut raw = BTreeMap::new();
        raw.insert("@a".to_owned(), vec!["@b".to_owned()]);
        raw.insert("@b".to_owned(), vec!["@a".to_owned()]);
        assert!(flatten_groups(&raw).unwrap_err().contains("cycle"));
    }

    #[test]
    fn typos_get_a_suggestion() {
        let err = SyscallToken::parse("opnat").unwrap_err();
        assert!(err.contains("did you mean `openat`"), "{err}");
        let err = SyscallToken::parse("@fle-system").unwrap_err();
        assert!(err.contains("did you mean `@file-system`"), "{err}");
        assert!(
            SyscallToken::parse("zzzzqqq")
                .unwrap_err()
                .ends_with("table)")
        );
    }

    #[test]
    fn arch_specific_names_are_accepted() {
        assert_eq!(
            SyscallToken::parse("open").unwrap(),
            SyscallToken::Name("open".into())
        );
    }
}

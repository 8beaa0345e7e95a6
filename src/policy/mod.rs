//! Policy YAML → validated `Policy`, or one `PolicyError` that names the place.
//!
//! Why this exists: the daemon re-reads this file whenever an operator saves
//! it, and a bad save must never reach the kernel. Everything that can be
//! wrong with the bytes is found here — size, encoding, YAML syntax, alias
//! bombs, unknown keys, wrong types, unknown syscalls, malformed paths and
//! addresses — before lowering sees a value.
//!
//! Hostile input is refused by rule, not survived by luck: files over
//! `MAX_POLICY_BYTES` are not parsed, serde_yaml's recursion and alias
//! repetition limits stop nesting and expansion bombs, and a document that
//! expands far beyond its size is refused.

mod approval_condition;
mod document;
mod error;
mod gateway_sections;
mod leaf;
mod network_entry;
mod scope;
mod syscall_names;
mod yaml_tags;

use std::path::Path;

pub use document::{DocumentForm, Metadata, Spec};
pub use error::PolicyError;
pub use gateway_sections::Capability;
pub use network_entry::NetworkEntry;
pub use scope::Scope;
pub use syscall_names::{SyscallToken, groups as syscall_groups};

use crate::ruleset::Mode;

/// Largest policy file accepted. A hand-written policy is a few KiB; a
/// generated one with 100k compact rules still fits (the benchmark checks it).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// Most `[` and `{` characters a policy may contain. libyaml's scanner costs
/// O(depth²) in flow-collection nesting (a 1 MiB `[[[[…` file takes ~30 min),
/// and nesting depth can never exceed the number of openers, so bounding them
/// bounds the worst case (~0.1 s here) without mimicking YAML's quoting rules.
/// Real policies use a few dozen; long lists belong in block style.
pub const MAX_FLOW_OPENERS: usize = 4096;

/// A policy that passed every check. Only lowering consumes it.
#[derive(Clone, Debug)]
pub struct Policy {
    pub form: DocumentForm,
    /// `apiVersion` of an envelope document.
    pub api_version: Option<String>,
    pub metadata: Metadata,
    pub spec: Spec,
    /// Things in the file that have no effect, said once per load.
    pub warnings: Vec<String>,
}

impl Policy {
    /// The policy's `metadata.name`, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.metadata.name.as_ref().map(|n| n.0.as_str())
    }

    /// What this file uses that upstream Agent Assembly does not define, so
    /// that an operator knows its tools will refuse (or read differently)
    /// this file. Empty for a file upstream's validator reads as we do.
    pub fn extensions(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut used = Vec::new();
        if spec.mode.is_some() {
            used.push("mode (upstream refuses the key)".to_owned());
        }
        if spec.filesystem.as_ref().is_some_and(|fs| fs.deny.is_some()) {
            used.push("filesystem.deny (upstream refuses the key)".to_owned());
        }
        let beyond: Vec<String> = spec
            .syscalls
            .iter()
            .flat_map(|s| &s.allow)
            .filter(|token| !token.is_upstream_name())
            .map(ToString::to_string)
            .collect();
        if !beyond.is_empty() {
            let shown = beyond
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            let more = beyond.len().saturating_sub(6);
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            used.push(format!(
                "syscall names and groups beyond upstream's 15 names: {shown}{more} (upstream refuses them)"
            ));
        }
        let addresses: Vec<String> = spec
            .network
            .iter()
            .flat_map(|n| &n.allowlist)
            .filter(|entry| {
                matches!(
                    entry,
                    NetworkEntry::Address(_) | NetworkEntry::Host { port: Some(_), .. }
                )
            })
            .map(ToString::to_string)
            .collect();
        if !addresses.is_empty() {
            used.push(format!(
                "network.allowlist addresses, networks and ports: {} (upstream's gateway matches host names only, so these match nothing there)",
                addresses.join(", ")
            ));
        }
        used
    }

    pub fn mode(&self) -> Mode {
        self.spec.mode.unwrap_or_default()
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = read_bounded(path)?;
        Policy::parse_bytes(&bytes, path)
    }

    /// Parses policy bytes; `file` only names the source in errors.
    pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Policy, PolicyError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::invalid(
                file,
                1,
                1,
                format!(
                    "policy is {} bytes; the limit is {MAX_POLICY_BYTES} bytes",
                    bytes.len()
                ),
            ));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let (line, column) = line_col(bytes, e.valid_up_to());
            PolicyError::invalid(file, line, column, "policy is not valid UTF-8")
        })?;
        Policy::parse_str(text, file)
    }

    /// Parses policy text; `file` only names the source in errors.
    pub fn parse_str(text: &str, file: &Path) -> Result<Policy, PolicyError> {
        if let Some(offset) = text.find('\0') {
            let (line, column) = line_col(text.as_bytes(), offset);
            return Err(PolicyError::invalid(
                file,
                line,
                column,
                "policy contains a NUL byte",
            ));
        }
        if let Some((offset, _)) = text
            .bytes()
            .enumerate()
            .filter(|(_, b)| matches!(b, b'[' | b'{'))
            .nth(MAX_FLOW_OPENERS)
        {
            let (line, column) = line_col(text.as_bytes(), offset);
            return Err(PolicyError::invalid(
                file,
                line,
                column,
                format!(
                    "policy has more than {MAX_FLOW_OPENERS} `[`/`{{` characters; deep flow nesting makes YAML parsing quadratic, so write long lists in block style"
                ),
            ));
        }
        if let Some(offset) = yaml_tags::first_tag(text) {
            let (line, column) = line_col(text.as_bytes(), offset);
            return Err(PolicyError::invalid(
                file,
                line,
                column,
                "explicit YAML tags (`!!str`, `!name`) are not accepted: write the value plainly (upstream reads tags one way in the flat form and another in the envelope form)",
            ));
        }
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
        }) {
            return Err(PolicyError::invalid(
                file,
                1,
                1,
                "policy is empty (only blank lines or comments); an empty file is never applied",
            ));
        }
        let yaml_error = |e| PolicyError::from_yaml(file, &e);
        let root = DocumentForm::detect(text).map_err(yaml_error)?;
        let (api_version, metadata, spec) = match root.form {
            DocumentForm::Envelope => {
                let envelope: document::Envelope =
                    leaf::decoding_form(true, || from_yaml(text)).map_err(yaml_error)?;
                (
                    envelope.api_version.map(|v| v.0),
                    envelope.metadata,
                    envelope.spec,
                )
            }
            DocumentForm::Flat => {
                let flat: document::FlatDocument =
                    leaf::decoding_form(false, || from_yaml(text)).map_err(yaml_error)?;
                (None, None, flat.into_spec())
            }
        };
        let mut policy = Policy {
            form: root.form,
            api_version,
            metadata: metadata.unwrap_or_default(),
            spec,
            warnings: Vec::new(),
        };
        policy.warnings = policy.ineffective_keys(&root.keys);
        Ok(policy)
    }

    /// Keys that are read by nobody (beside an envelope's four, metadata
    /// other than name, version and description) and capabilities no
    /// gateway action maps to: accepted as upstream accepts them, never
    /// dropped silently.
    fn ineffective_keys(&self, root_keys: &[String]) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.form == DocumentForm::Envelope {
            for key in root_keys
                .iter()
                .filter(|k| !document::ENVELOPE_KEYS.contains(&k.as_str()))
            {
                warnings.push(format!(
                    "`{key}` beside spec: has no effect (only apiVersion, kind, metadata and spec are read there; upstream ignores it too); move it under spec: if it is meant"
                ));
            }
        }
        for key in self.metadata.unread.keys() {
            warnings.push(format!(
                "metadata.{key} is not read (only name, version and description are)"
            ));
        }
        if let Some(capabilities) = &self.spec.capabilities {
            let lists = [("allow", &capabilities.allow), ("deny", &capabilities.deny)];
            for (list, entries) in lists {
                for (index, capability) in entries.iter().flatten().enumerate() {
                    if capability.is_inert() {
                        warnings.push(format!(
                            "capabilities.{list}[{index}]: `{capability}` has no effect: no gateway action maps to it yet, and the kernel cannot enforce it"
                        ));
                    }
                }
            }
        }
        warnings
    }
}

fn from_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_path_to_error::Error<serde_yaml::Error>> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Reads a policy file's bytes, refusing (without reading further) a file
/// over the size limit. `Policy::parse_bytes` then validates them.
pub fn read_policy_file(path: &Path) -> Result<Vec<u8>, PolicyError> {
    read_bounded(path)
}

/// Reads a regular file, at most one byte past the limit, so a huge file
/// costs nothing before it is refused. Anything else (a FIFO, a device such
/// as `/dev/zero`, a socket, a directory) is refused before a byte is read:
/// it is opened without blocking (a FIFO with no writer would otherwise
/// hang the open, and with it every reload behind it).
fn read_bounded(path: &Path) -> Result<Vec<u8>, PolicyError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let unreadable = |e: std::io::Error| PolicyError::reading(path, &e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(unreadable)?;
    let kind = file.metadata().map_err(unreadable)?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(PolicyError::Unreadable {
            file: path.to_owned(),
            reason: format!("is {what}, not a regular file; a policy must be a regular file"),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(bytes)
}

/// 1-based line and column of a byte offset.
fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse_str(text, Path::new("p.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn envelope_and_flat_forms_parse_to_the_same_spec() {
        let envelope = parse(
            "apiVersion: agent-assembly.dev/v1\nkind: Policy\nmetadata: {name: a}\nspec:\n  syscalls: {allow: [read]}\n",
        )
        .unwrap();
        let flat = parse("syscalls: {allow: [read]}\n").unwrap();
        assert_eq!(envelope.form, DocumentForm::Envelope);
        assert_eq!(flat.form, DocumentForm::Flat);
        assert_eq!(envelope.name(), Some("a"));
        assert_eq!(
            format!("{:?}", envelope.spec),
            format!("{:?}", flat.spec),
            "both forms must yield one spec"
        );
    }

    #[test]
    fn unknown_key_error_names_the_full_key_path_and_place() {
        let err =
            parse("spec:\n  filesystem:\n    raed: {allow: []}\nkind: Policy\napiVersion: v1\n")
                .unwrap_err();
        assert!(
            err.starts_with("p.yaml:3:5: spec.filesystem.raed: unknown key"),
            "{err}"
        );
    }

    #[test]
    fn null_list_is_refused_but_empty_list_is_kept() {
        let err = parse("syscalls:\n  allow:\n").unwrap_err();
        assert!(err.contains("syscalls.allow: is null"), "{err}");
        let policy = parse("syscalls:\n  allow: []\n").unwrap();
        assert_eq!(policy.spec.syscalls.unwrap().allow.len(), 0);
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col(b"ab\ncd", 4), (2, 2));
        assert_eq!(line_col(b"", 0), (1, 1));
    }
}

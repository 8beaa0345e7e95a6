//! The shape of a policy document: which keys exist, where, and of what type.
//!
//! Why this exists: strictness lives here. Every struct denies unknown keys,
//! every leaf is a validating type, and every error raised while reading a
//! leaf carries serde_yaml's line, column and key path. The two accepted forms
//! (envelope with `spec:`, and flat) share one list of spec fields, written
//! once in `spec_structs!`, so they cannot drift apart.
//!
//! Absent and empty differ: a missing key is `None` (no restriction), `[]` is
//! `Some(vec![])` (deny all), and an explicit `null` is refused because it is
//! impossible to tell which of the two the author meant.

use std::collections::BTreeMap;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::gateway_sections::{Approval, Budget, Capabilities, DataRules, Schedule, Tools};
use super::leaf::{Number, Text};
use super::network_entry::NetworkEntry;
use super::scope::Scope;
use super::syscall_names::SyscallToken;
use crate::ruleset::{Mode, PathPrefix};

/// For `Option<T>` fields with `#[serde(default)]`: a present key must have
/// a value. `null` (including `key:` with nothing after it) is refused.
///
/// The refusal is raised inside `deserialize_option`, while serde_yaml still
/// knows the value's key path and position; raised afterwards, it would name
/// the parent mapping instead.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    not_null(
        deserializer,
        "is null; remove the key for no restriction, or write [] to deny all",
    )
}

/// `spec:` must hold the policy. Upstream refuses an envelope whose `spec`
/// is null; read as an empty body it would be a policy without a single
/// restriction, written by someone who meant one.
fn spec_body<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Spec, D::Error> {
    not_null(
        deserializer,
        "is empty; write the policy under spec: (or `spec: {}` for a policy that restricts nothing)",
    )
    .map(Option::unwrap_or_default)
}

/// A value that must be written out: `null` (or nothing after the key) is
/// refused where serde_yaml would read it as an empty mapping.
#[derive(Clone, Debug)]
pub struct NotNull<T>(pub T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for NotNull<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        not_null(
            deserializer,
            "is empty; write the entry out (e.g. `{allow: true}`)",
        )
        .map(|value| NotNull(value.unwrap_or_default()))
    }
}

/// Deserializes a `T`, refusing `null` with `refusal`.
fn not_null<'de, D, T>(deserializer: D, refusal: &'static str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct NotNull<T>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for NotNull<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a value")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Err(E::custom(self.0))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            self.visit_none()
        }
        fn visit_some<D2: Deserializer<'de>>(self, inner: D2) -> Result<Option<T>, D2::Error> {
            T::deserialize(inner).map(Some)
        }
    }
    deserializer.deserialize_option(NotNull(refusal, std::marker::PhantomData))
}

/// For required list fields: the key must hold a list, not `null`.
fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    present(deserializer).map(Option::unwrap_or_default)
}

/// An absolute path prefix as written in `filesystem.*`.
impl<'de> Deserialize<'de> for PathPrefix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Trimmed first, as upstream does: `/etc/.. ` must be seen as the
        // `..` it is, and ` /workspace` as the absolute path it means.
        super::leaf::parse_str(deserializer, "an absolute path", |raw| {
            PathPrefix::parse(raw.trim())
        })
    }
}

/// A string, or a number or boolean read as its text (`version: 1.0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = ScalarText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        // Asked for a string, serde_yaml hands over a plain scalar's source
        // text, so `version: 1.0` stays "1.0" (read as a float it is "1").
        deserializer.deserialize_str(ScalarVisitor)
    }
}

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

/// `metadata:` as upstream reads it: `name`, `version` and `description`;
/// other keys (labels, annotations, ...) are read by nobody, so they are
/// kept only to be named in a warning.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<ScalarText>,
    #[serde(default, deserialize_with = "present")]
    pub version: Option<ScalarText>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<ScalarText>,
    #[serde(flatten)]
    pub unread: BTreeMap<String, IgnoredAny>,
}

/// `syscalls:`; `{}` is an allowlist that permits nothing, as upstream reads it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallsSection {
    #[serde(default, deserialize_with = "list")]
    pub allow: Vec<SyscallToken>,
}

/// `filesystem.read` / `filesystem.write`; `{}` allows nothing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathAllowSection {
    #[serde(default, deserialize_with = "list")]
    pub allow: Vec<PathPrefix>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemSection {
    #[serde(default, deserialize_with = "present")]
    pub read: Option<PathAllowSection>,
    #[serde(default, deserialize_with = "present")]
    pub write: Option<PathAllowSection>,
    #[serde(default, deserialize_with = "present")]
    pub deny: Option<Vec<PathPrefix>>,
}

/// `network:`; `{}` is an allowlist that reaches nothing, as upstream reads it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    #[serde(default, deserialize_with = "list")]
    pub allowlist: Vec<NetworkEntry>,
}

/// Declares `Spec` (the body under `spec:`) and `FlatDocument` (the same keys
/// at the root, plus `metadata`) from one field list.
macro_rules! spec_structs {
    ($($field:ident : $ty:ty),* $(,)?) => {
        /// The policy body: every section is optional, absent = unrestricted.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Spec {
            $(
                #[serde(default, deserialize_with = "present")]
                pub $field: Option<$ty>,
            )*
        }

        /// The same keys at the root. Upstream has no metadata here.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FlatDocument {
            $(
                #[serde(default, deserialize_with = "present")]
                pub $field: Option<$ty>,
            )*
        }

        impl FlatDocument {
            pub fn into_spec(self) -> Spec {
                Spec { $($field: self.$field,)* }
            }
        }
    };
}

spec_structs! {
    version: Text,
    scope: Scope,
    mode: Mode,
    syscalls: SyscallsSection,
    filesystem: FilesystemSection,
    network: NetworkSection,
    capabilities: Capabilities,
    tools: Tools,
    budget: Budget,
    schedule: Schedule,
    data: DataRules,
    approval_timeout_secs: ApprovalTimeout,
    approval: Approval,
}

/// Seconds to wait for a human approval: 1 to 2^32-1, as upstream stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalTimeout(pub u32);

impl<'de> Deserialize<'de> for ApprovalTimeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_number(deserializer, "a whole number of seconds", |n| match n {
            Number::Unsigned(secs @ 1..=0xffff_ffff) => Ok(ApprovalTimeout(secs as u32)),
            other => Err(format!(
                "{other} is not a timeout (a whole number of seconds, 1 to 4294967295)"
            )),
        })
    }
}

/// `kind:` names one of the two kinds upstream's files use.
#[derive(Clone, Copy, Debug, Deserialize)]
pub enum PolicyKind {
    Policy,
    GovernancePolicy,
}

/// The envelope form. Keys beside these four are read by nobody (upstream
/// ignores them too); `DocumentForm::detect` names them in a warning.
#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "apiVersion", default, deserialize_with = "present")]
    pub api_version: Option<NonEmptyString>,
    /// Only checked.
    #[serde(rename = "kind", default, deserialize_with = "present")]
    pub _kind: Option<PolicyKind>,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Metadata>,
    #[serde(deserialize_with = "spec_body")]
    pub spec: Spec,
}

/// The keys an envelope reads.
pub const ENVELOPE_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Which of the two forms a document uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentForm {
    Envelope,
    Flat,
}

/// The root of a document: its form and the keys it has, in order.
pub struct Root {
    pub form: DocumentForm,
    pub keys: Vec<String>,
}

impl DocumentForm {
    /// Decides the form from the root keys alone: any of `apiVersion`, `kind`
    /// or `spec` means envelope. Values are skipped, not built, so this costs
    /// one scan of the events and never fails on their content.
    pub fn detect(text: &str) -> Result<Root, serde_path_to_error::Error<serde_yaml::Error>> {
        struct RootKeys;
        impl<'de> Visitor<'de> for RootKeys {
            type Value = Root;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of policy keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Root, A::Error> {
                let mut root = Root {
                    form: DocumentForm::Flat,
                    keys: Vec::new(),
                };
                while let Some(key) = map.next_key::<ScalarText>()? {
                    if matches!(key.0.as_str(), "apiVersion" | "kind" | "spec") {
                        root.form = DocumentForm::Envelope;
                    }
                    root.keys.push(key.0);
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(root)
            }
        }
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(
            serde_yaml::Deserializer::from_str(text),
            &mut track,
        );
        tracked
            .deserialize_map(RootKeys)
            .map_err(|e| serde_path_to_error::Error::new(track.path(), e))
    }
}

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

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::gateway_sections::{Budget, Capabilities, DataRules, NonEmptyString, Schedule, Tools};
use super::leaf::Number;
use super::network_entry::NetworkEntry;
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
    struct NotNull<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for NotNull<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a value")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Err(E::custom(
                "is null; remove the key for no restriction, or write [] to deny all",
            ))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            self.visit_none()
        }
        fn visit_some<D2: Deserializer<'de>>(self, inner: D2) -> Result<Option<T>, D2::Error> {
            T::deserialize(inner).map(Some)
        }
    }
    deserializer.deserialize_option(NotNull(std::marker::PhantomData))
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
        super::leaf::parse_str(deserializer, "an absolute path", PathPrefix::parse)
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
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<NonEmptyString>,
    #[serde(default, deserialize_with = "present")]
    pub version: Option<ScalarText>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyscallsSection {
    #[serde(deserialize_with = "list")]
    pub allow: Vec<SyscallToken>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathAllowSection {
    #[serde(deserialize_with = "list")]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    #[serde(deserialize_with = "list")]
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

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FlatDocument {
            #[serde(default, deserialize_with = "present")]
            pub metadata: Option<Metadata>,
            $(
                #[serde(default, deserialize_with = "present")]
                pub $field: Option<$ty>,
            )*
        }

        impl FlatDocument {
            pub fn into_parts(self) -> (Option<Metadata>, Spec) {
                (self.metadata, Spec { $($field: self.$field,)* })
            }
        }
    };
}

spec_structs! {
    scope: NonEmptyString,
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
}

/// Seconds to wait for a human approval: at least one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalTimeout(pub u64);

impl<'de> Deserialize<'de> for ApprovalTimeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::leaf::parse_number(deserializer, "a whole number of seconds", |n| match n {
            Number::Unsigned(secs @ 1..) => Ok(ApprovalTimeout(secs)),
            other => Err(format!(
                "{other} is not a timeout (a whole number of seconds >= 1)"
            )),
        })
    }
}

/// `kind:` must say `Policy`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub enum PolicyKind {
    Policy,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "apiVersion")]
    pub api_version: NonEmptyString,
    /// Only checked: `Policy` is the one kind there is.
    #[serde(rename = "kind")]
    pub _kind: PolicyKind,
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Metadata>,
    pub spec: Spec,
}

/// Which of the two forms a document uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentForm {
    Envelope,
    Flat,
}

impl DocumentForm {
    /// Decides the form from the root keys alone: any of `apiVersion`, `kind`
    /// or `spec` means envelope. Values are skipped, not built, so this costs
    /// one scan of the events and never fails on their content.
    pub fn detect(
        text: &str,
    ) -> Result<DocumentForm, serde_path_to_error::Error<serde_yaml::Error>> {
        struct RootKeys;
        impl<'de> Visitor<'de> for RootKeys {
            type Value = DocumentForm;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping of policy keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DocumentForm, A::Error> {
                let mut form = DocumentForm::Flat;
                while let Some(key) = map.next_key::<ScalarText>()? {
                    if matches!(key.0.as_str(), "apiVersion" | "kind" | "spec") {
                        form = DocumentForm::Envelope;
                    }
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(form)
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

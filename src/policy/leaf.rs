//! Validating leaf values from inside the deserializer.
//!
//! Why this exists: a validation error raised *after* `String::deserialize`
//! returns has left the tracked deserializer, so its message loses the exact
//! key path (`spec.syscalls.allow[3]`). Raising it from the visitor keeps
//! path and position together. Every validated scalar goes through here.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Deserializes a string and validates it with `parse` inside the visitor.
/// Only a YAML string will do: a number, boolean or null where text is
/// expected is refused, as upstream's envelope form refuses it (its flat
/// form would read `true` as the text "true", and a host named `true` or a
/// version `1.0` turned into "1" is a mistake, not a value).
pub fn parse_str<'de, D, T, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct StrVisitor<F, T>(&'static str, F, PhantomData<T>);
    impl<F, T> Visitor<'_> for StrVisitor<F, T>
    where
        F: FnOnce(&str) -> Result<T, String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(StrVisitor(expecting, parse, PhantomData))
}

/// Any YAML string, as text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(pub String);

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_str(deserializer, "a string", |raw| Ok(Text(raw.to_owned())))
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

thread_local! {
    /// The form of the document being decoded. Upstream decodes the two
    /// forms differently (the flat one streams, the envelope one goes
    /// through a `serde_yaml::Value`), and for numbers the difference is a
    /// verdict: the flat form refuses hex (`0x10`) and reads `01` and
    /// 23-digit integers as floats, the envelope form the other way round.
    /// `parse_f64` reads this to decide as upstream would for that form.
    static DECODING_ENVELOPE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `decode` with `parse_f64` reading numbers as upstream's decoder for
/// that form does.
pub fn decoding_form<T>(envelope: bool, decode: impl FnOnce() -> T) -> T {
    let before = DECODING_ENVELOPE.with(|form| form.replace(envelope));
    let decoded = decode();
    DECODING_ENVELOPE.with(|form| form.set(before));
    decoded
}

/// Deserializes a floating-point amount as upstream reads one in the form
/// being decoded (see `DECODING_ENVELOPE`): flat, as serde_yaml reads an
/// `f64` (decimal forms, `01`, `1e23` for a long integer; no hex); envelope,
/// as a YAML number (hex too; `01` is a string there, and an integer
/// beyond 64 bits is refused).
pub fn parse_f64<'de, D, T, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Number) -> Result<T, String>,
{
    let visitor = NumberVisitor(expecting, parse, PhantomData);
    if DECODING_ENVELOPE.with(std::cell::Cell::get) {
        deserializer.deserialize_any(visitor)
    } else {
        deserializer.deserialize_f64(visitor)
    }
}

/// Deserializes a number (integer or float) and validates it with `parse`.
pub fn parse_number<'de, D, T, F>(
    deserializer: D,
    expecting: &'static str,
    parse: F,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Number) -> Result<T, String>,
{
    deserializer.deserialize_any(NumberVisitor(expecting, parse, PhantomData))
}

/// Hands a YAML number of any kind to `parse`, inside the visitor.
struct NumberVisitor<F, T>(&'static str, F, PhantomData<T>);

impl<F, T> Visitor<'_> for NumberVisitor<F, T>
where
    F: FnOnce(Number) -> Result<T, String>,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.1)(Number::Unsigned(v)).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.1)(Number::Signed(v)).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.1)(Number::Float(v)).map_err(E::custom)
    }
}

/// A YAML number as the parser saw it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Unsigned(v) => v.fmt(f),
            Number::Signed(v) => v.fmt(f),
            Number::Float(v) => v.fmt(f),
        }
    }
}

/// A message about `leaf`, a key inside the value being deserialized: a
/// check across several keys runs after they are read, when the tracked
/// path stops at their parent, so the leaf rides in the message and
/// `PolicyError::from_yaml` appends it to the path.
pub fn at_key(leaf: &str, message: impl fmt::Display) -> String {
    format!("{KEY_MARKER}{leaf}: {message}")
}

/// Marks a message that starts with a key (see `at_key`).
pub const KEY_MARKER: char = '@';

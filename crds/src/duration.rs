//! Kubernetes-style duration strings (`250ms`, `2s`, `1m30s`).
//!
//! A [`Duration`] keeps the text exactly as the user wrote it, so a policy round-trips through
//! the API server unchanged, and parses it on demand with [`kube::core::Duration`] — the port of
//! Go's `time.ParseDuration` that kube-rs maintains — because the API server's CEL `duration()`
//! uses the same grammar. Parsing is lazy on purpose: [`crate::validate`] must report *every*
//! problem in a policy, and a deserializer that failed on the first bad duration could not.
//!
//! The schema narrows Go's grammar to what makes sense for a network timeout: decimal numbers
//! with the units `ms`, `s`, `m` and `h`, no sign, at most [`MAX`].

use std::{borrow::Cow, fmt, sync::LazyLock, time};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern every duration in the API must match (also enforced by the CRD schema).
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration any field accepts.
pub const MAX: time::Duration = time::Duration::from_secs(24 * 60 * 60);

/// The CEL rule attached to every duration in the generated schema.
pub const CEL_RULE: &str = "duration(self) > duration('0s') && duration(self) <= duration('24h')";

/// What a user reads when a duration is wrong, at the API server and in [`crate::validate`].
pub const EXPECTED: &str = "must be a positive duration of at most 24h, such as 250ms, 2s or 1m30s";

/// A duration as written in a policy, e.g. `250ms` or `1m30s`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(String);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{EXPECTED}, got {0:?}")]
pub struct InvalidDuration(pub String);

impl Duration {
    /// Wraps a string without checking it; [`Duration::parse`] checks.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Formats a [`std::time::Duration`] the way Go (and the API server) would print it.
    pub fn from_std(d: time::Duration) -> Self {
        Self(format_go(d))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text: it must match [`PATTERN`], be positive, and be at most [`MAX`].
    pub fn parse(&self) -> Result<time::Duration, InvalidDuration> {
        let invalid = || InvalidDuration(self.0.clone());
        if self.0.len() > MAX_LENGTH || !matches_pattern(&self.0) {
            return Err(invalid());
        }
        let parsed = parse_go(&self.0).ok_or_else(invalid)?;
        let d = time::Duration::from(parsed);
        if d.is_zero() || d > MAX {
            return Err(invalid());
        }
        Ok(d)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": MAX_LENGTH,
            "x-kubernetes-validations": [{ "rule": CEL_RULE, "message": EXPECTED }],
        })
    }
}

/// The longest duration text accepted (also the schema's `maxLength`).
const MAX_LENGTH: usize = 32;

/// Go's grammar, by kube's parser, for a number of at most 12 digits before each unit's point:
/// kube's parser panics on a number whose seconds overflow a `Duration` (found by fuzzing), and
/// twelve digits of hours are still far inside it. `None` when it does not parse.
fn parse_go(text: &str) -> Option<kube::core::Duration> {
    let longest_integer = text.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or_default();
    if longest_integer > 12 {
        return None;
    }
    text.parse().ok()
}

fn matches_pattern(s: &str) -> bool {
    static RE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(PATTERN).expect("PATTERN is a valid regex"));
    RE.is_match(s)
}

/// Serde helpers for a [`std::time::Duration`] written as a Go duration string, for the
/// resolved (effective) policy, where every duration is known to be valid.
pub mod go {
    use std::time;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Serializes as e.g. `1m30s`.
    pub fn serialize<S: Serializer>(d: &time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_go(*d))
    }

    /// Parses Go's grammar (numbers of at most 12 digits, see `parse_go`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<time::Duration, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = super::parse_go(&text).ok_or_else(|| {
            D::Error::custom(format!("not a duration of at most 12 digits per unit: {text:?}"))
        })?;
        Ok(parsed.into())
    }

    /// The same for an optional duration.
    pub mod option {
        use std::time;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes `None` as null (callers skip it with `skip_serializing_if`).
        pub fn serialize<S: Serializer>(d: &Option<time::Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Parses Go's grammar, or null.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<time::Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] time::Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Prints a duration in Go's `time.Duration.String()` style, e.g. `1m30s`, `250ms`, `1h0m0s`.
pub(crate) fn format_go(d: time::Duration) -> String {
    let total_ms = d.as_millis();
    if d < time::Duration::from_secs(1) {
        if d.subsec_nanos().is_multiple_of(1_000_000) {
            return format!("{total_ms}ms");
        }
        return format!("{}us", d.as_micros());
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_millis();
    let sec_part = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{sec_part}")
    } else if m > 0 {
        format!("{m}m{sec_part}")
    } else {
        sec_part
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kubernetes_forms() {
        for (text, ms) in [("250ms", 250), ("2s", 2000), ("1m30s", 90_000), ("1.5s", 1500), ("1h", 3_600_000)]
        {
            assert_eq!(Duration::new(text).parse(), Ok(time::Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        for text in ["", "0s", "0", "-1s", "1", "1d", "1w", "s", "1.s", "25 ms", "25h1m", "1us"] {
            assert!(Duration::new(text).parse().is_err(), "{text:?} should be rejected");
        }
    }

    /// Found by fuzzing the local file: kube's parser panicked on a number this big.
    #[test]
    fn a_number_too_big_for_any_duration_is_refused_not_a_panic() {
        let huge = format!("{}s", "1".repeat(40));
        assert!(Duration::new(&huge).parse().is_err());
        assert!(Duration::new("9999999999999999999h").parse().is_err(), "short enough, still too big");
        let json = serde_json::json!(huge);
        let read: Result<time::Duration, _> = go::deserialize(&json);
        assert!(read.is_err(), "a snapshot's duration too");
    }

    #[test]
    fn formats_like_go() {
        for (ms, text) in
            [(250, "250ms"), (2000, "2s"), (90_000, "1m30s"), (1500, "1.5s"), (3_600_000, "1h0m0s")]
        {
            let d = time::Duration::from_millis(ms);
            assert_eq!(format_go(d), text);
            let back: kube::core::Duration = text.parse().expect("Go form parses");
            assert_eq!(time::Duration::from(back), d);
        }
    }
}

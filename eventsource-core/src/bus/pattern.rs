//! Topics and subscription patterns.
//!
//! See [`Pattern`] for the matching rule.

use std::fmt;
use std::str::FromStr;

/// Why a topic or a pattern is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The topic is empty, has an empty segment or a character outside `[A-Za-z0-9_-]`.
    #[error("invalid topic `{0}`: expected dot-separated segments of [A-Za-z0-9_-]")]
    InvalidTopic(String),
    /// The pattern has an empty segment, a bad character, or a `*` that is not a whole segment.
    #[error("invalid pattern `{0}`: expected dot-separated segments of [A-Za-z0-9_-] or `*`")]
    InvalidPattern(String),
}

fn is_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks that `topic` is a well-formed topic (see [`Pattern`]).
///
/// ```
/// # use eventsource_core::bus::validate_topic;
/// assert!(validate_topic("analysis.completed").is_ok());
/// assert!(validate_topic("analysis..completed").is_err());
/// assert!(validate_topic("analysis.*").is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<(), PatternError> {
    if topic.split('.').all(is_segment) {
        Ok(())
    } else {
        Err(PatternError::InvalidTopic(topic.to_owned()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Wildcard,
}

/// A parsed subscription pattern such as `analysis.*`, `*.completed` or `*`.
///
/// # The matching rule
///
/// A **topic** is one or more non-empty segments joined by `.`; a segment holds ASCII letters,
/// digits, `_` and `-` (`analysis.completed`, `orders.eu-west.created`).
///
/// A **pattern** is one or more segments joined by `.`, each either a literal segment or a
/// lone `*`. A literal segment matches the same segment of the topic; a `*` matches **one or
/// more** whole segments. So:
///
/// | pattern | matches | does not match |
/// |---|---|---|
/// | `analysis.completed` | `analysis.completed` | `analysis.completed.late` |
/// | `analysis.*` | `analysis.started`, `analysis.step.done` | `analysis`, `analyses.started` |
/// | `*.completed` | `analysis.completed`, `job.x.completed` | `completed`, `analysis.completed.x` |
/// | `*` | every topic | — |
///
/// A `*` inside a segment (`analy*`) or an empty segment is rejected when the pattern is
/// parsed, so a typo fails loudly instead of silently matching nothing.
///
/// # Examples
///
/// ```
/// # use eventsource_core::bus::Pattern;
/// let pattern: Pattern = "analysis.*".parse()?;
/// assert!(pattern.matches("analysis.started"));
/// assert!(pattern.matches("analysis.step.done"));
/// assert!(!pattern.matches("analysis"));
/// assert!(Pattern::parse("*.completed")?.matches("job.completed"));
/// assert!(Pattern::parse("*")?.matches("anything.at.all"));
/// # Ok::<(), eventsource_core::bus::PatternError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses `pattern`.
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        let segments = pattern
            .split('.')
            .map(|s| match s {
                "*" => Ok(Segment::Wildcard),
                s if is_segment(s) => Ok(Segment::Literal(s.to_owned())),
                _ => Err(PatternError::InvalidPattern(pattern.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: pattern.to_owned(),
            segments,
        })
    }

    /// The pattern that matches every topic, `*`.
    #[must_use]
    pub fn all() -> Self {
        Self {
            text: "*".to_owned(),
            segments: vec![Segment::Wildcard],
        }
    }

    /// The pattern as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches; a malformed topic matches nothing.
    #[must_use]
    pub fn matches(&self, topic: &str) -> bool {
        let topic: Vec<&str> = topic.split('.').collect();
        if !topic.iter().all(|s| is_segment(s)) {
            return false;
        }
        matches_from(&self.segments, &topic)
    }
}

/// Backtracking match of pattern segments against topic segments. Patterns are short, so the
/// worst case (several `*`) stays small.
fn matches_from(pattern: &[Segment], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((Segment::Literal(lit), rest)) => {
            topic.first().is_some_and(|t| t == lit) && matches_from(rest, &topic[1..])
        }
        Some((Segment::Wildcard, rest)) => {
            (1..=topic.len()).any(|taken| matches_from(rest, &topic[taken..]))
        }
    }
}

impl FromStr for Pattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(pattern: &str, topic: &str) -> bool {
        Pattern::parse(pattern).unwrap().matches(topic)
    }

    #[test]
    fn the_documented_table_holds() {
        assert!(m("analysis.completed", "analysis.completed"));
        assert!(!m("analysis.completed", "analysis.completed.late"));
        assert!(m("analysis.*", "analysis.started"));
        assert!(m("analysis.*", "analysis.step.done"));
        assert!(!m("analysis.*", "analysis"));
        assert!(!m("analysis.*", "analyses.started"));
        assert!(m("*.completed", "analysis.completed"));
        assert!(m("*.completed", "job.x.completed"));
        assert!(!m("*.completed", "completed"));
        assert!(!m("*.completed", "analysis.completed.x"));
        assert!(m("*", "a"));
        assert!(m("*", "a.b.c"));
        assert!(m("a.*.c", "a.b.c"));
        assert!(m("a.*.c", "a.b.b.c"));
        assert!(!m("a.*.c", "a.c"));
    }

    #[test]
    fn malformed_patterns_and_topics_are_rejected() {
        for bad in ["", "a..b", ".a", "a.", "analy*", "a.**", "a b", "a.#"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} parsed");
        }
        for bad in ["", "a..b", "a.*", "a b", "é"] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted");
            assert!(!Pattern::all().matches(bad), "{bad:?} matched");
        }
    }

    /// The reference model: `*` is the regex `[^.]+(\.[^.]+)*`, literals match themselves.
    fn model(pattern: &[Option<String>], topic: &[String]) -> bool {
        // Dynamic programming over (pattern index, topic index).
        let (p, t) = (pattern.len(), topic.len());
        let mut reach = vec![vec![false; t + 1]; p + 1];
        reach[0][0] = true;
        for i in 0..p {
            for j in 0..=t {
                if !reach[i][j] {
                    continue;
                }
                match &pattern[i] {
                    Some(lit) => {
                        if j < t && &topic[j] == lit {
                            reach[i + 1][j + 1] = true;
                        }
                    }
                    None => {
                        for cell in &mut reach[i + 1][j + 1..=t] {
                            *cell = true;
                        }
                    }
                }
            }
        }
        reach[p][t]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            "[a-z0-9_-]{1,3}"
        ]
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_model(
            pattern in proptest::collection::vec(proptest::option::weighted(0.6, segment()), 1..5),
            topic in proptest::collection::vec(segment(), 1..6),
        ) {
            let text: Vec<String> = pattern
                .iter()
                .map(|s| s.clone().unwrap_or_else(|| "*".to_owned()))
                .collect();
            let parsed = Pattern::parse(&text.join(".")).unwrap();
            prop_assert_eq!(parsed.matches(&topic.join(".")), model(&pattern, &topic));
        }

        #[test]
        fn star_matches_every_topic_and_literals_only_themselves(
            topic in proptest::collection::vec(segment(), 1..6),
            other in proptest::collection::vec(segment(), 1..6),
        ) {
            let topic = topic.join(".");
            let other = other.join(".");
            prop_assert!(Pattern::all().matches(&topic));
            let literal = Pattern::parse(&topic).unwrap();
            prop_assert!(literal.matches(&topic));
            prop_assert_eq!(literal.matches(&other), topic == other);
            let prefixed = Pattern::parse(&format!("{topic}.*")).unwrap();
            prop_assert_eq!(
                prefixed.matches(&other),
                other.starts_with(&format!("{topic}.")),
            );
        }
    }
}

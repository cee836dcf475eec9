//! `wildcard` patterns: `*` matches any run of characters (including none), `\*` is a
//! literal asterisk and `\\` a literal backslash.
//!
//! A wildcard is stored as the literal pieces between its stars, so matching is a
//! prefix check, a suffix check and a left-most search for each middle piece — no
//! regular expressions and no backtracking (a greedy left-most search is exact for
//! patterns whose only metacharacter is `*`).

/// A validated wildcard pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wildcard {
    /// The literal text between stars; `pieces.len() - 1` is the number of stars.
    pieces: Vec<String>,
}

impl Wildcard {
    /// Parses wildcard syntax; the error is the reason text.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = vec![String::new()];
        let mut chars = text.chars();
        let mut last_was_star = false;
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if last_was_star {
                        return Err("consecutive wildcard characters are not allowed".into());
                    }
                    pieces.push(String::new());
                    last_was_star = true;
                    continue;
                }
                '\\' => match chars.next() {
                    Some(escaped @ ('*' | '\\')) => push(&mut pieces, escaped),
                    Some(other) => {
                        return Err(format!(
                            "invalid escape \"\\{other}\" in wildcard: only \\* and \\\\ are allowed"
                        ));
                    }
                    None => return Err("wildcard ends with an unfinished escape \"\\\"".into()),
                },
                other => push(&mut pieces, other),
            }
            last_was_star = false;
        }
        Ok(Self { pieces })
    }

    /// Number of `*` wildcards (the pattern's contribution to the complexity score).
    pub(crate) fn stars(&self) -> usize {
        self.pieces.len() - 1
    }

    /// The literal text every matching value starts with and the text it ends with
    /// (empty where the pattern starts or ends with a star; without stars, both are
    /// the whole literal) — what an index can look a wildcard up by.
    pub(crate) fn literal_ends(&self) -> (&str, &str) {
        let first = self.pieces.first().map_or("", String::as_str);
        let last = self.pieces.last().map_or("", String::as_str);
        (first, last)
    }

    /// Whether `value` matches the whole pattern.
    pub(crate) fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return value.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            return value == first;
        };
        if value.len() < first.len() + last.len()
            || !value.starts_with(first.as_str())
            || !value.ends_with(last.as_str())
        {
            return false;
        }
        let mut window = &value[first.len()..value.len() - last.len()];
        for piece in middle {
            match window.find(piece.as_str()) {
                Some(at) => window = &window[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

fn push(pieces: &mut [String], c: char) {
    if let Some(piece) = pieces.last_mut() {
        piece.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, value: &str) -> bool {
        Wildcard::parse(pattern).unwrap().matches(value)
    }

    #[test]
    fn stars_match_any_run() {
        assert!(m("Simple*Service", "SimpleQueueService"));
        assert!(m("Simple*Service", "SimpleService"));
        assert!(!m("Simple*Service", "SimpleServic"));
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("*.jar", "x/bin/y.jar"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
    }

    #[test]
    fn no_star_is_exact() {
        assert!(m("abc", "abc"));
        assert!(!m("abc", "abcd"));
        assert!(m("", ""));
    }

    #[test]
    fn escapes() {
        assert!(m(r"a\*b", "a*b"));
        assert!(!m(r"a\*b", "axb"));
        assert!(m(r"a\\b", r"a\b"));
        assert!(m(r"\**", "*xyz"));
        assert_eq!(Wildcard::parse(r"\**").unwrap().stars(), 1);
    }

    #[test]
    fn misuse_is_rejected() {
        assert!(Wildcard::parse("a**b").unwrap_err().contains("consecutive"));
        assert!(
            Wildcard::parse(r"a\b")
                .unwrap_err()
                .contains("invalid escape")
        );
        assert!(Wildcard::parse("a\\").unwrap_err().contains("unfinished"));
    }

    #[test]
    fn literal_ends() {
        let ends = |p: &str| {
            let w = Wildcard::parse(p).unwrap();
            let (a, b) = w.literal_ends();
            (a.to_owned(), b.to_owned())
        };
        assert_eq!(ends("ab*c*d"), ("ab".into(), "d".into()));
        assert_eq!(ends("*x"), (String::new(), "x".into()));
        assert_eq!(ends(r"a\**"), ("a*".into(), String::new()));
        assert_eq!(ends("abc"), ("abc".into(), "abc".into()));
        assert_eq!(ends("*"), (String::new(), String::new()));
    }

    #[test]
    fn star_count() {
        assert_eq!(Wildcard::parse("ab*c*d").unwrap().stars(), 2);
        assert_eq!(Wildcard::parse("abc").unwrap().stars(), 0);
    }
}

//! `equals-ignore-case` (alone, under `prefix`/`suffix`, and under `anything-but`) the
//! way event-ruler compares.
//!
//! event-ruler does not case-fold the event value. It expands the *pattern*, one Java
//! `char` at a time (`input/EqualsIgnoreCaseParser.parse`): a character whose
//! `toLowerCase(Locale.ROOT)` and `toUpperCase(Locale.ROOT)` differ becomes "either of
//! those two strings", any other character stands for itself; the byte automaton then
//! accepts exactly the event strings that are one such spelling (`ByteMachine`, match
//! type `EQUALS_IGNORE_CASE`). So `"ß"` matches `"ß"` and `"SS"`, `"k"` matches `"k"` and
//! `"K"` but not the Kelvin sign, and a title-case `"ǅ"` matches `"ǆ"` and `"Ǆ"` only —
//! no Unicode case folding, no compatibility forms. Rust's `char::to_lowercase` /
//! `to_uppercase` are the same full (SpecialCasing) mappings as Java's one-character
//! `String` conversions, up to the Unicode version.
//!
//! One Java quirk is not reproduced: Java walks UTF-16 units, so a character outside
//! the Basic Multilingual Plane reaches the automaton as two lone surrogates, which
//! become `?` bytes and match nothing the user wrote; here such a character simply
//! stands for itself.

/// The spellings one pattern character allows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Spelling {
    /// Only this text.
    One(Box<str>),
    /// The lower-case or the upper-case text.
    Two(Box<str>, Box<str>),
}

impl Spelling {
    fn of(c: char) -> Self {
        if u32::from(c) > 0xFFFF {
            return Self::One(c.to_string().into());
        }
        let lower: String = c.to_lowercase().collect();
        let upper: String = c.to_uppercase().collect();
        if lower == upper {
            Self::One(lower.into())
        } else {
            Self::Two(lower.into(), upper.into())
        }
    }

    fn options(&self) -> impl Iterator<Item = &str> {
        let (a, b) = match self {
            Self::One(a) => (a.as_ref(), None),
            Self::Two(a, b) => (a.as_ref(), Some(b.as_ref())),
        };
        std::iter::once(a).chain(b)
    }
}

/// A compiled `equals-ignore-case` text: its spellings, and its [`key`] for the rule-set
/// index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IgnoreCase {
    spellings: Vec<Spelling>,
    /// The [`key`] of every string this text matches, when there is one (see
    /// [`IgnoreCase::key`]).
    key: Option<Box<str>>,
}

impl IgnoreCase {
    /// Compiles pattern text.
    pub(crate) fn new(text: &str) -> Self {
        let spellings: Vec<Spelling> = text.chars().map(Spelling::of).collect();
        let mut key_text = String::with_capacity(text.len());
        let mut keyed = true;
        for spelling in &spellings {
            let mut keys = spelling.options().map(key);
            let first = keys.next().unwrap_or_default();
            keyed &= keys.all(|k| k == first);
            key_text.push_str(&first);
        }
        Self {
            spellings,
            key: keyed.then(|| key_text.into()),
        }
    }

    /// The index key shared by every string this text matches (`key(s) == this` for each
    /// matching `s`), or `None` if some character's spellings have different keys, in
    /// which case the text cannot be looked up by key.
    pub(crate) fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether `value` is one of the spellings.
    pub(crate) fn equals(&self, value: &str) -> bool {
        self.ends(value).contains(&value.len())
    }

    /// Whether `value` starts with one of the spellings.
    pub(crate) fn is_prefix_of(&self, value: &str) -> bool {
        !self.ends(value).is_empty()
    }

    /// Whether `value` ends with one of the spellings.
    pub(crate) fn is_suffix_of(&self, value: &str) -> bool {
        // Positions (from the start) where a spelling of the remaining suffix can begin.
        let mut starts = vec![value.len()];
        for spelling in self.spellings.iter().rev() {
            let mut next = Vec::with_capacity(starts.len());
            for &end in &starts {
                let head = value.get(..end).unwrap_or_default();
                for option in spelling.options() {
                    if head.ends_with(option) {
                        next.push(end - option.len());
                    }
                }
            }
            next.sort_unstable();
            next.dedup();
            if next.is_empty() {
                return false;
            }
            starts = next;
        }
        true
    }

    /// The byte positions in `value` at which a spelling of the whole text can end when
    /// it starts at 0 (usually zero or one position; options of different lengths, like
    /// `ß` and `SS`, can make more).
    fn ends(&self, value: &str) -> Vec<usize> {
        let mut ends = vec![0];
        for spelling in &self.spellings {
            let mut next = Vec::with_capacity(ends.len());
            for &start in &ends {
                let rest = value.get(start..).unwrap_or_default();
                for option in spelling.options() {
                    if rest.starts_with(option) {
                        next.push(start + option.len());
                    }
                }
            }
            next.sort_unstable();
            next.dedup();
            if next.is_empty() {
                return next;
            }
            ends = next;
        }
        ends
    }
}

/// The index key of an event string: every character upper-cased, then lower-cased
/// (characters outside the Basic Multilingual Plane as they are). A string that
/// matches an [`IgnoreCase`] text with a key has that key, because a character's
/// lower- and upper-case spellings map to the same key (checked per pattern in
/// [`IgnoreCase::new`]); the converse need not hold — the index only finds candidates.
pub(crate) fn key(value: &str) -> String {
    if value.is_ascii() {
        return value.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if u32::from(c) > 0xFFFF {
            out.push(c);
        } else {
            out.extend(c.to_uppercase().flat_map(char::to_lowercase));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(pattern: &str, value: &str) -> bool {
        IgnoreCase::new(pattern).equals(value)
    }

    #[test]
    fn ascii_letters_either_case() {
        assert!(eq("Hello", "hELLO"));
        assert!(eq("", ""));
        assert!(!eq("Hello", "Hell"));
        assert!(!eq("Hello", "Helloo"));
        assert!(eq("a-1", "A-1"));
    }

    #[test]
    fn per_character_java_mappings_only() {
        // Multi-character upper case: ß ↔ SS, but "ss" does not match "ß".
        assert!(eq("ß", "SS"));
        assert!(eq("ß", "ß"));
        assert!(!eq("ss", "ß"));
        assert!(eq("straße", "STRASSE"));
        // The Kelvin sign lower-cases to k, but "k" only allows k and K.
        assert!(!eq("k", "\u{212A}"));
        assert!(eq("\u{212A}", "k"));
        assert!(!eq("\u{212A}", "K"));
        // Title case: ǅ allows ǆ and Ǆ, not itself.
        assert!(eq("\u{1C5}", "\u{1C6}"));
        assert!(eq("\u{1C5}", "\u{1C4}"));
        assert!(!eq("\u{1C5}", "\u{1C5}"));
        // Final sigma is not special for one character.
        assert!(eq("ΣΑΣ", "σασ"));
        assert!(!eq("ΣΑΣ", "σας"));
        assert!(eq("σας", "ΣΑΣ"));
        // İ lower-cases to i + combining dot.
        assert!(eq("\u{130}", "i\u{307}"));
        assert!(!eq("\u{130}", "i"));
        // Mathematical alphanumerics have no case.
        assert!(!eq("\u{1D400}", "A"));
        assert!(eq("\u{1D400}", "\u{1D400}"));
    }

    #[test]
    fn prefix_and_suffix() {
        let p = IgnoreCase::new("ab");
        assert!(p.is_prefix_of("ABc"));
        assert!(!p.is_prefix_of("cAB"));
        assert!(p.is_suffix_of("cAB"));
        assert!(!p.is_suffix_of("ABc"));
        assert!(IgnoreCase::new("").is_prefix_of("x"));
        assert!(IgnoreCase::new("").is_suffix_of(""));
        let sharp = IgnoreCase::new("ß");
        assert!(sharp.is_prefix_of("SSx"));
        assert!(sharp.is_suffix_of("xSS"));
        assert!(sharp.is_suffix_of("xß"));
        assert!(!sharp.is_suffix_of("xS"));
    }

    #[test]
    fn matching_strings_share_the_key() {
        for pattern in [
            "Hello", "straße", "\u{212A}", "\u{1C5}x", "ΣΑΣ", "\u{130}", "ﬀ",
        ] {
            let p = IgnoreCase::new(pattern);
            let k = p.key().expect(pattern).to_owned();
            let spellings: Vec<String> = p
                .spellings
                .iter()
                .map(|s| s.options().last().unwrap_or_default().to_owned())
                .collect();
            assert_eq!(key(&spellings.concat()), k, "{pattern}");
            let lower: Vec<String> = p
                .spellings
                .iter()
                .map(|s| s.options().next().unwrap_or_default().to_owned())
                .collect();
            assert_eq!(key(&lower.concat()), k, "{pattern}");
        }
    }

    #[test]
    fn almost_every_bmp_character_has_one_key() {
        // Characters whose spellings have different keys make a pattern unindexable
        // (it is then checked one by one); they must stay rare.
        let odd: Vec<char> = (0..=0xFFFFu32)
            .filter_map(char::from_u32)
            .filter(|&c| IgnoreCase::new(&c.to_string()).key().is_none())
            .collect();
        assert!(odd.len() < 16, "{odd:?}");
    }
}

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
        spell_forward(&self.spellings, value, 0, &mut |end| end == value.len())
    }

    /// Whether `value` starts with one of the spellings.
    pub(crate) fn is_prefix_of(&self, value: &str) -> bool {
        spell_forward(&self.spellings, value, 0, &mut |_| true)
    }

    /// Whether `value` ends with one of the spellings.
    pub(crate) fn is_suffix_of(&self, value: &str) -> bool {
        spell_backward(&self.spellings, value, value.len())
    }
}

/// Whether `value[from..]` starts with a spelling of `spellings` whose end `done`
/// accepts. Without allocating: a character's two spellings practically never both
/// fit at one place (that needs one to be a prefix of the other), so the walk is
/// linear and branches only where they do.
fn spell_forward(
    spellings: &[Spelling],
    value: &str,
    from: usize,
    done: &mut impl FnMut(usize) -> bool,
) -> bool {
    let mut at = from;
    for (i, spelling) in spellings.iter().enumerate() {
        let rest = value.get(at..).unwrap_or_default();
        match spelling {
            Spelling::One(text) if rest.starts_with(text.as_ref()) => at += text.len(),
            Spelling::One(_) => return false,
            Spelling::Two(lower, upper) => {
                match (
                    rest.starts_with(lower.as_ref()),
                    rest.starts_with(upper.as_ref()),
                ) {
                    (true, false) => at += lower.len(),
                    (false, true) => at += upper.len(),
                    (false, false) => return false,
                    (true, true) => {
                        let tail = spellings.get(i + 1..).unwrap_or_default();
                        return spell_forward(tail, value, at + lower.len(), done)
                            || spell_forward(tail, value, at + upper.len(), done);
                    }
                }
            }
        }
    }
    done(at)
}

/// Whether `value[..to]` ends with a spelling of `spellings` (any start).
fn spell_backward(spellings: &[Spelling], value: &str, to: usize) -> bool {
    let mut at = to;
    for (i, spelling) in spellings.iter().enumerate().rev() {
        let head = value.get(..at).unwrap_or_default();
        match spelling {
            Spelling::One(text) if head.ends_with(text.as_ref()) => at -= text.len(),
            Spelling::One(_) => return false,
            Spelling::Two(lower, upper) => {
                match (
                    head.ends_with(lower.as_ref()),
                    head.ends_with(upper.as_ref()),
                ) {
                    (true, false) => at -= lower.len(),
                    (false, true) => at -= upper.len(),
                    (false, false) => return false,
                    (true, true) => {
                        let before = spellings.get(..i).unwrap_or_default();
                        return spell_backward(before, value, at - lower.len())
                            || spell_backward(before, value, at - upper.len());
                    }
                }
            }
        }
    }
    true
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
    fn branches_when_both_spellings_fit() {
        // No Unicode character is known to need it, but the walk must not depend on that.
        let p = IgnoreCase {
            spellings: vec![
                Spelling::Two("a".into(), "ab".into()),
                Spelling::One("b".into()),
            ],
            key: None,
        };
        assert!(p.equals("ab"));
        assert!(p.equals("abb"));
        assert!(!p.equals("abbb"));
        assert!(p.is_prefix_of("abx"));
        assert!(p.is_suffix_of("xab"));
        assert!(p.is_suffix_of("xabb"));
        assert!(!p.is_suffix_of("xb"));
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

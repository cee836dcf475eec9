//! Whether JSON text is already in the form the bus stores.
//!
//! The bus stores an event as `serde_json` writes its parsed value: compact,
//! members in their order, numbers and string escapes as `serde_json` prints
//! them, a repeated member name kept once. Most producers send exactly that
//! for an event's `data` (they serialise with a JSON library, compactly), so
//! ingest checks the text with [`is_canonical`] and, when it holds, copies the
//! bytes into the stored event instead of building a map of every object in
//! the payload and printing it again (the largest part of ingest's own CPU per
//! event, with the allocations it makes). Anything this check is unsure of
//! takes the old path: parse, then print.
//!
//! The property, checked by a property test against `serde_json` itself: when
//! `is_canonical(t)` holds, printing the value `t` parses to gives back `t`,
//! byte for byte.

/// Objects nested deeper than this are left to the parser, which refuses
/// JSON nested deeper than 128 (counting the event's own object).
const MAX_DEPTH: usize = 100;

/// Objects with more members than this are left to the parser: the repeat
/// check here compares names pairwise, which is the fastest way for the
/// handful of members payload objects have and must stay bounded for others.
const MAX_MEMBERS: usize = 64;

/// Whether `text`, which must be valid JSON (a `RawValue` the parser has
/// read), is exactly what `serde_json` prints for the value it parses to.
///
/// False means "not known to be": whitespace between tokens, an escape
/// `serde_json` would not write (`\/`, `\u0041`, uppercase hex), a number it
/// would print otherwise (`1.50`, `1e3`, `-0`, an integer beyond 64 bits), a
/// member name repeated in an object, or an object too deep or too wide for
/// this check.
pub(crate) fn is_canonical(text: &str) -> bool {
    let bytes = text.as_bytes();
    // The names of the members read so far in each open object, innermost
    // last; `open` holds, for each open object or array, where its names
    // start in `names` (arrays have none).
    let mut names: Vec<&[u8]> = Vec::new();
    let mut open: Vec<(bool, usize)> = Vec::new();
    let mut expect_name = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'{' | b'[' => {
                if open.len() >= MAX_DEPTH {
                    return false;
                }
                let object = byte == b'{';
                open.push((object, names.len()));
                expect_name = object;
                i += 1;
            }
            b'}' | b']' => {
                let Some((_, start)) = open.pop() else {
                    return false;
                };
                names.truncate(start);
                expect_name = false;
                i += 1;
            }
            b',' => {
                expect_name = matches!(open.last(), Some((true, _)));
                i += 1;
            }
            b':' => {
                expect_name = false;
                i += 1;
            }
            b'"' => {
                let Some(end) = string_end(bytes, i + 1) else {
                    return false;
                };
                if expect_name {
                    let start = open.last().map_or(0, |(_, start)| *start);
                    let name = &bytes[i + 1..end];
                    let members = &names[start..];
                    if members.len() >= MAX_MEMBERS || members.contains(&name) {
                        return false;
                    }
                    names.push(name);
                }
                i = end + 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |n| i + n);
                if !canonical_number(&text[i..end]) {
                    return false;
                }
                i = end;
            }
            b't' | b'n' => i += 4,
            b'f' => i += 5,
            // Whitespace, or anything else.
            _ => return false,
        }
    }
    open.is_empty()
}

/// The index of the quote that closes the string whose contents start at
/// `from`, if every escape in it is one `serde_json` writes: the two-letter
/// ones, and `\u00xx` (lowercase) only for the control characters that have
/// no two-letter form.
///
/// Raw control characters are not looked for: the parser refused them
/// already (a test below holds it to that).
fn string_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut j = from;
    loop {
        // Payload strings are long runs of plain text: skip them in one go.
        j += memchr::memchr2(b'"', b'\\', bytes.get(j..)?)?;
        match *bytes.get(j)? {
            b'"' => return Some(j),
            b'\\' => match *bytes.get(j + 1)? {
                b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => j += 2,
                b'u' => {
                    let hex = bytes.get(j + 2..j + 6)?;
                    let digit = |b: u8| match b {
                        b'0'..=b'9' => Some(b - b'0'),
                        b'a'..=b'f' => Some(b - b'a' + 10),
                        _ => None,
                    };
                    if hex[0] != b'0' || hex[1] != b'0' {
                        return None;
                    }
                    let code = digit(hex[2])? * 16 + digit(hex[3])?;
                    if code >= 0x20 || matches!(code, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                        return None;
                    }
                    j += 6;
                }
                _ => return None,
            },
            _ => j += 1,
        }
    }
}

/// Whether `serde_json` prints the number it parses `token` to as `token`.
fn canonical_number(token: &str) -> bool {
    if token.contains(['.', 'e', 'E']) {
        // A float: parsed as the parser parses it (which is not always
        // correctly rounded), printed as the printer prints it.
        let Ok(value) = serde_json::from_str::<f64>(token) else {
            return false;
        };
        let mut buf = [0u8; 32];
        let mut out = &mut buf[..];
        if serde_json::to_writer(&mut out, &value).is_err() {
            return false;
        }
        let written = 32 - out.len();
        buf[..written] == *token.as_bytes()
    } else if token.starts_with('-') {
        // `-0` parses as the float -0.0; below i64::MIN as a float.
        token.parse::<i64>().is_ok_and(|n| n != 0)
    } else {
        // Above u64::MAX parses as a float.
        token.parse::<u64>().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::value::RawValue;

    fn reprinted(text: &str) -> Option<String> {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|v| v.to_string())
    }

    #[test]
    fn compact_output_of_serde_json_is_canonical() {
        for text in [
            r#"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#,
            r#"{"sku":"sku-1","qty":1,"price":9.99}"#,
            r#""tab\there, quote\", backslash\\, bell\u0007""#,
            r#"[-1,0,18446744073709551615,-9223372036854775808,1.5,0.1,9.99]"#,
            r#"{"":{"":[]}}"#,
            r#""é ü 日本 \u001f""#,
            "\"\u{7f}\"",
            "null",
            "[]",
            "{}",
        ] {
            assert!(is_canonical(text), "{text}");
            assert_eq!(reprinted(text).as_deref(), Some(text));
        }
        for float in [
            1e21,
            1e-7,
            1e300,
            -2.5e-300,
            123456789.125,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            let printed = serde_json::to_string(&float).unwrap_or_default();
            assert!(is_canonical(&printed), "{printed}");
        }
    }

    #[test]
    fn text_serde_json_would_print_otherwise_is_not() {
        for text in [
            r#"{"a": 1}"#,
            " 1",
            "[1 ]",
            r#"{"a":1,"a":2}"#,
            r#"[{"a":1},{"b":{"a":1,"a":1}}]"#,
            r#""\/""#,
            r#""\u0041""#,
            r#""\u000A""#,
            r#""\u000a""#,
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
            "1.50",
            "1e3",
            "1E21",
            "-0",
            "-0.0e0",
            "18446744073709551616",
            "-9223372036854775809",
            "1e400",
            "100000000000000000000000.0",
        ] {
            assert!(!is_canonical(text), "{text}");
        }
    }

    #[test]
    fn the_parser_refuses_raw_control_characters_before_the_check_sees_them() {
        for text in ["\"a\u{1}b\"", "\"\n\"", "{\"k\u{1f}\":1}"] {
            assert!(serde_json::from_str::<&RawValue>(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn deep_and_wide_objects_are_left_to_the_parser() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(!is_canonical(&deep));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(is_canonical(&ok));
        let wide = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", members.join(","))
        };
        assert!(is_canonical(&wide(MAX_MEMBERS)));
        assert!(!is_canonical(&wide(MAX_MEMBERS + 1)));
        // Names are per object: the same name in sibling and nested objects is fine.
        assert!(is_canonical(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#));
    }

    /// JSON text in many spellings: values serde_json prints, and the same
    /// values written with whitespace, other escapes, other number forms and
    /// repeated names.
    fn spelled() -> impl Strategy<Value = String> {
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::to_string(&f).unwrap_or_default()),
            "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?",
        ];
        let string = prop_oneof![
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
            "\"([a-z]|\\\\[\"\\\\/bfnrt]|\\\\u00[0-9a-fA-F]{2}|\\\\u[0-9a-fA-F]{4}|é)*\""
                .prop_filter("no lone surrogates", |s| reprinted(s).is_some()),
        ];
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            number,
            string.clone(),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            let space = prop_oneof![Just(""), Just(""), Just(""), Just(" "), Just("\n")];
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..6), space.clone())
                    .prop_map(|(items, s)| format!("[{s}{}]", items.join(","))),
                (
                    prop::collection::vec(
                        (prop_oneof![Just("\"a\"".to_owned()), string.clone()], inner),
                        0..6
                    ),
                    space
                )
                    .prop_map(|(members, s)| {
                        let members: Vec<String> =
                            members.iter().map(|(k, v)| format!("{k}:{s}{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The property ingest relies on: canonical text reprints as itself.
        #[test]
        fn canonical_text_reprints_as_itself(text in spelled()) {
            if is_canonical(&text) {
                prop_assert_eq!(reprinted(&text), Some(text.clone()));
            }
        }

        /// And the check is not vacuous: what serde_json prints is canonical
        /// (a repeated name aside, which the printer never writes).
        #[test]
        fn printed_values_are_canonical(text in spelled()) {
            if let Some(printed) = reprinted(&text) {
                prop_assert!(is_canonical(&printed), "{}", printed);
            }
        }
    }
}

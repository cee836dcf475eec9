//! Lexical rules of CloudEvents attribute values: the String character set,
//! attribute names, RFC 3986 URI references, RFC 9110 media types and
//! RFC 3339 timestamps.
//!
//! Each check walks the bytes once and allocates nothing; they answer with the
//! reason a value is refused, which becomes the error's message.

/// Why a value breaks a rule (a fixed sentence; the caller names the field).
pub(crate) type Reason = &'static str;

/// A CloudEvents attribute name: one or more of `a-z0-9`.
///
/// The spec's "SHOULD NOT exceed 20 characters" is advice to producers; a
/// receiver refusing longer names would only break interoperability (the
/// event size limit bounds them anyway), so longer names are accepted.
pub(crate) fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The CloudEvents `String` type: no control characters (U+0000-U+001F,
/// U+007F-U+009F) and no Unicode noncharacters. (Unpaired surrogates cannot
/// occur in a Rust string; the JSON parser refuses them.)
pub(crate) fn check_string(s: &str) -> Result<(), Reason> {
    // Fast path: printable ASCII is the overwhelmingly common case.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    for c in s.chars() {
        let u = u32::from(c);
        if u < 0x20 || (0x7f..=0x9f).contains(&u) {
            return Err("contains a control character");
        }
        if (0xfdd0..=0xfdef).contains(&u) || (u & 0xfffe) == 0xfffe {
            return Err("contains a Unicode noncharacter");
        }
    }
    Ok(())
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Checks that `s` is made of the bytes `allowed` accepts and of well-formed
/// `%XX` escapes.
fn check_chars(s: &[u8], allowed: impl Fn(u8) -> bool, what: Reason) -> Result<(), Reason> {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let hex = |j: usize| s.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Err("contains a % not followed by two hex digits");
            }
            i += 3;
        } else if allowed(b) {
            i += 1;
        } else {
            return Err(what);
        }
    }
    Ok(())
}

fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
}

/// Parses an RFC 3986 URI-reference; answers whether it has a scheme
/// (is a URI rather than a relative reference).
fn parse_uri_reference(s: &str) -> Result<bool, Reason> {
    let bytes = s.as_bytes();
    let (rest, fragment) = match s.find('#') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    };
    let (rest, query) = match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let query_char = |b: u8| is_pchar(b) || b == b'/' || b == b'?';
    if let Some(fragment) = fragment {
        check_chars(
            fragment,
            query_char,
            "contains a character not allowed in a URI fragment",
        )?;
    }
    if let Some(query) = query {
        check_chars(
            query,
            query_char,
            "contains a character not allowed in a URI query",
        )?;
    }

    // A colon before the first slash ends a scheme; a relative reference's
    // first segment cannot hold one.
    let mut hier = rest;
    let mut has_scheme = false;
    if let Some(colon) = rest.iter().position(|&b| b == b':')
        && !rest[..colon].contains(&b'/')
    {
        let scheme = &rest[..colon];
        let valid = scheme.first().is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid {
            return Err("has an invalid scheme (or a colon in its first path segment)");
        }
        has_scheme = true;
        hier = &rest[colon + 1..];
    }

    let path = match hier.strip_prefix(b"//") {
        Some(after) => {
            let end = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
            check_authority(&after[..end])?;
            &after[end..]
        }
        None => hier,
    };
    check_chars(
        path,
        |b| is_pchar(b) || b == b'/',
        "contains a character not allowed in a URI path",
    )?;
    Ok(has_scheme)
}

/// `[ userinfo "@" ] host [ ":" port ]`.
fn check_authority(authority: &[u8]) -> Result<(), Reason> {
    let host_port = match authority.iter().position(|&b| b == b'@') {
        Some(at) => {
            check_chars(
                &authority[..at],
                |b| is_unreserved(b) || is_sub_delim(b) || b == b':',
                "contains a character not allowed in URI user information",
            )?;
            &authority[at + 1..]
        }
        None => authority,
    };
    let port = if host_port.first() == Some(&b'[') {
        let close = host_port
            .iter()
            .position(|&b| b == b']')
            .ok_or("has an unterminated IP literal")?;
        let literal = &host_port[1..close];
        let literal_ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
        if !literal_ok {
            return Err("has an invalid IP literal");
        }
        match &host_port[close + 1..] {
            [] => &[][..],
            [b':', port @ ..] => port,
            _ => return Err("has characters after its IP literal"),
        }
    } else {
        let (host, port) = match host_port.iter().rposition(|&b| b == b':') {
            Some(colon) => (&host_port[..colon], &host_port[colon + 1..]),
            None => (host_port, &[][..]),
        };
        check_chars(
            host,
            |b| is_unreserved(b) || is_sub_delim(b),
            "contains a character not allowed in a URI host",
        )?;
        port
    };
    if port.iter().all(u8::is_ascii_digit) {
        Ok(())
    } else {
        Err("has a non-numeric port")
    }
}

/// The `URI-reference` type (e.g. `source`): non-empty, RFC 3986 section 4.1.
pub(crate) fn check_uri_reference(s: &str) -> Result<(), Reason> {
    if s.is_empty() {
        return Err("must be a non-empty URI-reference");
    }
    parse_uri_reference(s).map(drop)
}

/// The `URI` type (e.g. `dataschema`): an RFC 3986 URI with a scheme.
///
/// A fragment is accepted (RFC 3986 `URI`, as JSON Schema's `uri` format that
/// the CloudEvents schema uses), since schema references often point into a
/// document.
pub(crate) fn check_absolute_uri(s: &str) -> Result<(), Reason> {
    if s.is_empty() {
        return Err("must be a non-empty absolute URI");
    }
    match parse_uri_reference(s)? {
        true => Ok(()),
        false => Err("must be an absolute URI (with a scheme)"),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

fn token_len(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

fn skip_ows(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// A media type (RFC 2046 as written in HTTP, RFC 9110 section 8.3.1):
/// `type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] )`.
/// Surrounding whitespace is tolerated.
pub(crate) fn check_media_type(s: &str) -> Result<(), Reason> {
    const BAD: Reason = "must be a media type such as application/json; charset=utf-8";
    let s = s.trim_matches([' ', '\t']).as_bytes();
    let t = token_len(s);
    if t == 0 || s.get(t) != Some(&b'/') {
        return Err(BAD);
    }
    let s = &s[t + 1..];
    let st = token_len(s);
    if st == 0 {
        return Err(BAD);
    }
    let mut rest = skip_ows(&s[st..]);
    while let Some((&b';', after)) = rest.split_first() {
        rest = skip_ows(after);
        let name = token_len(rest);
        if name == 0 {
            continue; // RFC 9110 allows empty parameters ("text/plain;")
        }
        rest = match rest.get(name) {
            Some(b'=') => &rest[name + 1..],
            _ => return Err("has a parameter without a value"),
        };
        rest = if rest.first() == Some(&b'"') {
            skip_quoted_string(rest).ok_or("has an unterminated quoted parameter value")?
        } else {
            let value = token_len(rest);
            if value == 0 {
                return Err("has a parameter without a value");
            }
            &rest[value..]
        };
        rest = skip_ows(rest);
    }
    if rest.is_empty() { Ok(()) } else { Err(BAD) }
}

/// Skips a quoted-string that starts at `s[0] == '"'`; `None` if unterminated.
fn skip_quoted_string(s: &[u8]) -> Option<&[u8]> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(&s[i + 1..]),
            b'\\' => i += 2,
            b if b == b'\t' || b >= 0x20 && b != 0x7f => i += 1,
            _ => return None,
        }
    }
    None
}

/// The `Timestamp` type: RFC 3339 (section 5.6 `date-time`).
pub(crate) fn check_timestamp(s: &str) -> Result<(), Reason> {
    // chrono checks the calendar too (month lengths, leap years, hour 23 max,
    // leap second 60), which a grammar alone would not.
    chrono::DateTime::parse_from_rfc3339(s)
        .map(drop)
        .map_err(|_| "must be an RFC 3339 timestamp such as 2018-04-05T17:31:00Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_names() {
        for ok in [
            "id",
            "a",
            "comexampleextension1",
            "x1",
            "1x",
            "averyveryverylongextensionname",
        ] {
            assert!(is_attribute_name(ok), "{ok}");
        }
        for bad in ["", "Id", "my-ext", "my_ext", "é", "a b", "ext."] {
            assert!(!is_attribute_name(bad), "{bad}");
        }
    }

    #[test]
    fn strings() {
        assert!(check_string("plain ascii ~!").is_ok());
        assert!(check_string("Euro € 😀").is_ok());
        assert!(check_string("tab\there").is_err());
        assert!(check_string("nl\n").is_err());
        assert!(check_string("del\u{7f}").is_err());
        assert!(check_string("c1\u{85}").is_err());
        assert!(check_string("non\u{fdd0}").is_err());
        assert!(check_string("non\u{fffe}").is_err());
        assert!(check_string("non\u{1ffff}").is_err());
    }

    #[test]
    fn uri_references() {
        for ok in [
            "https://github.com/cloudevents",
            "mailto:cncf-wg-serverless@lists.cncf.io",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "/cloudevents/spec/pull/123",
            "/sensors/tn-1234567/alerts",
            "1-555-123-4567",
            "com.example.shop",
            "shop.orders",
            "//host:8080/p?q=1#frag",
            "http://user:pw@[::1]:80/a%20b",
            "http://[v1.x]/",
            "./a:b",
            "?q",
            "#f",
            "a/b:c",
        ] {
            assert_eq!(check_uri_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "a\"b",
            "1:x",
            ":x",
            "http://host:port/",
            "http://[::1/",
            "http://[::1]x/",
            "http://a b/",
            "/a%zz",
            "/a%2",
            "/é",
            "/a#b#c",
            "/a?b{}",
            "http://a@b@c/",
        ] {
            assert!(check_uri_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absolute_uris() {
        assert!(check_absolute_uri("https://example.com/schema.json#/defs/a").is_ok());
        assert!(check_absolute_uri("urn:example:schema").is_ok());
        assert!(check_absolute_uri("/relative/schema").is_err());
        assert!(check_absolute_uri("").is_err());
        assert!(check_absolute_uri("1http://x").is_err());
    }

    #[test]
    fn media_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "TEXT/Plain; CharSet=utf-8",
            "application/vnd.apache.thrift.binary",
            "text/plain;",
            "multipart/mixed; boundary=\"a b;c\\\"d\"",
            " application/xml ",
            "application/cloudevents+json;charset=UTF-8;x=y",
        ] {
            assert_eq!(check_media_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "json",
            "application/",
            "/json",
            "application/json;charset",
            "application/json; charset=",
            "application/json; a=\"unterminated",
            "application/json x",
            "appli cation/json",
            "application/json; a=b c",
        ] {
            assert!(check_media_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        for ok in [
            "2018-04-05T17:31:00Z",
            "2018-04-05T17:31:00.123456789+02:00",
            "2016-12-31T23:59:60Z",
            "2020-02-29t00:00:00z",
        ] {
            assert_eq!(check_timestamp(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "2018-04-05",
            "2018-04-05T17:31:00",
            "2018-04-05T17:31:00+0200",
            "2019-02-29T00:00:00Z",
            "2018-13-05T17:31:00Z",
            "2018-04-05T24:00:00Z",
            "yesterday",
        ] {
            assert!(check_timestamp(bad).is_err(), "{bad}");
        }
    }
}

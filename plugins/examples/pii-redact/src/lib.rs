//! Redacts personal data in event data.
//!
//! - Every string in JSON data (and text data as a whole) has e-mail
//!   addresses replaced by `[EMAIL]` and phone numbers by `[PHONE]`.
//! - Config `fields`: comma-separated object keys whose values are replaced
//!   wholesale by `replacement` (default `[REDACTED]`) wherever they occur,
//!   compared case-insensitively, e.g. `fields = "ssn, card_number"`.
//!
//! Detection is heuristic and deliberately dependency-free: an e-mail is
//! `local@domain.tld`; a phone number is a run of 9 to 15 digits, optionally
//! led by `+` and separated by single spaces, dots, hyphens or parentheses,
//! that is not part of a word and not a date or time.

use busbar_sdk::prelude::*;

/// The PII redaction transformer.
pub struct PiiRedact;

impl Transformer for PiiRedact {
    fn transform(mut event: Event, cx: &Context) -> Result<Vec<Event>, PluginError> {
        let fields: Vec<String> = cx
            .config()
            .get("fields")
            .unwrap_or_default()
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .filter(|f| !f.is_empty())
            .collect();
        let replacement = cx.config().get("replacement").unwrap_or("[REDACTED]");
        let Some(data) = &event.data else {
            return Ok(vec![event]);
        };
        if event.is_json() {
            let mut value = event.json_value()?;
            redact_value(&mut value, &fields, replacement);
            event.set_json(&value)?;
        } else if let Ok(text) = std::str::from_utf8(data) {
            event.data = Some(redact_text(text).into_bytes());
        }
        Ok(vec![event])
    }
}

busbar_sdk::transformer!(PiiRedact);

/// Redacts `value` in place: configured keys wholesale, strings by pattern.
pub fn redact_value(value: &mut Value, fields: &[String], replacement: &str) {
    match value {
        Value::String(s) => *s = redact_text(s),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| redact_value(item, fields, replacement)),
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if fields.contains(&key.to_ascii_lowercase()) {
                    *item = Value::from(replacement);
                } else {
                    redact_value(item, fields, replacement);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Replaces e-mail addresses and phone numbers in `text`.
pub fn redact_text(text: &str) -> String {
    redact_phones(&redact_emails(text))
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

fn redact_emails(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            let mut start = i;
            while start > copied && is_local_char(chars[start - 1]) {
                start -= 1;
            }
            let mut end = i + 1;
            while end < chars.len() && is_domain_char(chars[end]) {
                end += 1;
            }
            // A trailing dot ends the sentence, not the domain.
            while end > i + 1 && chars[end - 1] == '.' {
                end -= 1;
            }
            let domain: String = chars[i + 1..end].iter().collect();
            let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
                !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
            });
            if start < i && tld_ok {
                out.extend(&chars[copied..start]);
                out.push_str("[EMAIL]");
                copied = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out.extend(&chars[copied..]);
    out
}

fn redact_phones(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i] == '+' || chars[i] == '(' || chars[i].is_ascii_digit())
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        if starts {
            if let Some(end) = phone_end(&chars, i) {
                out.extend(&chars[copied..i]);
                out.push_str("[PHONE]");
                copied = end;
                i = end;
                continue;
            }
            // Skip the rest of this number so its tail is not tried again.
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '+') {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    out.extend(&chars[copied..]);
    out
}

/// The end of a phone number starting at `start`, if one does.
fn phone_end(chars: &[char], start: usize) -> Option<usize> {
    let mut digits = 0;
    let mut end = start;
    let mut i = start;
    let mut last_was_separator = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() {
            digits += 1;
            end = i + 1;
            last_was_separator = false;
        } else if (c == '+' && i == start) || (c == '(' || c == ')') {
            last_was_separator = false;
            if c == ')' {
                end = i + 1;
            }
        } else if " .-".contains(c) && !last_was_separator {
            last_was_separator = true;
        } else {
            break;
        }
        i += 1;
    }
    let next = chars.get(end).copied();
    let glued = next.is_some_and(|c| c.is_alphanumeric() || c == ':');
    let span: String = chars[start..end].iter().collect();
    let looks_like_date = span.len() >= 10
        && span.as_bytes().get(4) == Some(&b'-')
        && span.as_bytes().get(7) == Some(&b'-');
    ((9..=15).contains(&digits) && !glued && !looks_like_date).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(data: Value, config: &[(&str, &str)]) -> Value {
        let cx = Context::new(Config::from_pairs(config.iter().copied()));
        let event = Event::json("1", "crm", "contact.updated", &data).unwrap();
        let out = PiiRedact::transform(event, &cx).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "1");
        out[0].json_value().unwrap()
    }

    #[test]
    fn redacts_emails_and_phones_in_nested_strings() {
        let out = run(
            json!({
                "note": "Mail ann.lee+x@example.co.uk or call +44 20 7946 0958.",
                "contacts": [{"phone": "(555) 123-4567"}, {"email": "bob@mail.example.com"}],
            }),
            &[],
        );
        assert_eq!(out["note"], "Mail [EMAIL] or call [PHONE].");
        assert_eq!(out["contacts"][0]["phone"], "[PHONE]");
        assert_eq!(out["contacts"][1]["email"], "[EMAIL]");
    }

    #[test]
    fn keeps_non_pii_text_numbers_and_dates() {
        let data = json!({
            "text": "order 12345 at 2026-01-01 10:00:00, ref A1234567890, user@localhost",
            "amount": 1234567890,
        });
        assert_eq!(run(data.clone(), &[]), data);
    }

    #[test]
    fn redacts_configured_fields_case_insensitively() {
        let out = run(
            json!({"SSN": "123-45-6789", "profile": {"card_number": 4111}, "name": "Ann"}),
            &[("fields", "ssn, card_number"), ("replacement", "***")],
        );
        assert_eq!(
            out,
            json!({"SSN": "***", "profile": {"card_number": "***"}, "name": "Ann"})
        );
    }

    #[test]
    fn redacts_plain_text_data_and_passes_empty_events() {
        let cx = Context::default();
        let event = Event::builder("1", "s", "t")
            .data("text/plain", b"write to a@b.io".to_vec())
            .build();
        let out = PiiRedact::transform(event, &cx).unwrap();
        assert_eq!(out[0].data.as_deref(), Some(&b"write to [EMAIL]"[..]));
        let empty = Event::new("2", "s", "t");
        assert_eq!(
            PiiRedact::transform(empty.clone(), &cx).unwrap(),
            vec![empty]
        );
    }

    #[test]
    fn malformed_json_is_invalid_event() {
        let event = Event::builder("1", "s", "t")
            .data("application/json", b"{".to_vec())
            .build();
        assert!(matches!(
            PiiRedact::transform(event, &Context::default()),
            Err(PluginError::InvalidEvent(_))
        ));
    }
}

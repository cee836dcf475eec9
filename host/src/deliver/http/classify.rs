//! What an attempt's result means for the delivery: an HTTP answer or a
//! transport error becomes an [`Outcome`] (see the table in [`super`]), and
//! `Retry-After` becomes a delay.

use std::time::{Duration, SystemTime};

use super::super::{Failure, FailureCode, Outcome};
use crate::net::Forbidden;

/// The failure code of a destination egress refuses.
pub(super) const FORBIDDEN_DESTINATION: FailureCode = FailureCode::ForbiddenDestination;

/// The permanent failure of a refused destination.
pub(super) fn forbidden(refused: &Forbidden) -> Failure {
    Failure::new(FORBIDDEN_DESTINATION, refused.to_string())
}

/// Classifies an HTTP answer (see the module docs' table).
pub(super) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    location: Option<&str>,
    oauth: bool,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Delivered {
            status: Some(status),
        };
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut message = format!("HTTP {status} {reason}").trim_end().to_owned();
    if let Some(location) = location.filter(|_| (300..400).contains(&status)) {
        message.push_str(&format!(" (redirect to {location} not followed)"));
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(text);
    }
    let failure = |code: FailureCode| Failure {
        code,
        message: message.clone(),
        status: Some(status),
        retry_after,
    };
    match status {
        429 => Outcome::Retry(failure(FailureCode::RateLimited)),
        408 | 500..=599 => Outcome::Retry(failure(FailureCode::HttpStatus)),
        401 if oauth => Outcome::Retry(failure(FailureCode::HttpStatus)),
        _ => Outcome::Permanent(failure(FailureCode::HttpStatus)),
    }
}

/// Classifies a request that got no HTTP answer.
pub(super) fn classify_error(error: reqwest::Error) -> Outcome {
    if let Some(forbidden) = find_forbidden(&error) {
        return Outcome::Permanent(forbidden);
    }
    let code = if error.is_timeout() {
        FailureCode::Timeout
    } else if error.is_connect() {
        FailureCode::ConnectError
    } else if error.is_builder() {
        return Outcome::Permanent(Failure::new(FailureCode::RequestError, error_chain(error)));
    } else {
        FailureCode::RequestError
    };
    Outcome::Retry(Failure::new(code, error_chain(error)))
}

/// The egress refusal behind a failed request (the resolver refused every
/// address of the host), if that was why.
pub(super) fn find_forbidden(error: &reqwest::Error) -> Option<Failure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        // `io::Error` hides its payload from `source()`; look inside it.
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in std::iter::once(current).chain(inner) {
            if let Some(refused) = candidate.downcast_ref::<Forbidden>() {
                return Some(forbidden(refused));
            }
        }
        cause = current.source();
    }
    None
}

/// The error and its causes on one line, without the URL (it may carry
/// secrets in its query string).
pub(super) fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (a date in the
/// past means "now").
pub(super) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn classification_table() {
        let cases: &[(u16, &str, Option<&str>)] = &[
            (200, "delivered", None),
            (201, "delivered", None),
            (204, "delivered", None),
            (299, "delivered", None),
            (301, "permanent", Some("http_status")),
            (302, "permanent", Some("http_status")),
            (304, "permanent", Some("http_status")),
            (400, "permanent", Some("http_status")),
            (401, "permanent", Some("http_status")),
            (403, "permanent", Some("http_status")),
            (404, "permanent", Some("http_status")),
            (408, "retry", Some("http_status")),
            (409, "permanent", Some("http_status")),
            (413, "permanent", Some("http_status")),
            (422, "permanent", Some("http_status")),
            (429, "retry", Some("rate_limited")),
            (500, "retry", Some("http_status")),
            (502, "retry", Some("http_status")),
            (503, "retry", Some("http_status")),
            (504, "retry", Some("http_status")),
            (599, "retry", Some("http_status")),
        ];
        for &(status, kind, code) in cases {
            let outcome = classify(status, None, b"", None, false);
            let got = match &outcome {
                Outcome::Delivered { status: s } => {
                    assert_eq!(*s, Some(status));
                    "delivered"
                }
                Outcome::Retry(_) => "retry",
                Outcome::Permanent(_) => "permanent",
            };
            assert_eq!(got, kind, "status {status}");
            assert_eq!(outcome.failure().map(|f| f.code.as_str()), code);
            if let Some(f) = outcome.failure() {
                assert_eq!(f.status, Some(status));
            }
        }
        // With OAuth2 a 401 means "token refused": retry with a new one.
        assert!(matches!(
            classify(401, None, b"", None, true),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn failure_message_carries_status_body_and_redirect() {
        let retry_after = Some(Duration::from_secs(3));
        let Outcome::Retry(f) =
            classify(503, retry_after, b"  down for maintenance\n", None, false)
        else {
            panic!("503 must retry")
        };
        assert_eq!(
            f.message,
            "HTTP 503 Service Unavailable: down for maintenance"
        );
        assert_eq!(f.retry_after, retry_after);
        let Outcome::Permanent(f) = classify(301, None, b"", Some("https://new.example/"), false)
        else {
            panic!("301 must be permanent")
        };
        assert!(
            f.message
                .contains("redirect to https://new.example/ not followed")
        );
    }

    #[test]
    fn retry_after_parsing() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        let cases: &[(&str, Option<u64>)] = &[
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("Wed, 21 Oct 2015 07:28:30 GMT", Some(30)),
            ("Wednesday, 21-Oct-15 07:29:00 GMT", Some(60)), // RFC 850
            ("Wed Oct 21 07:28:10 2015", Some(10)),          // asctime
            ("Wed, 21 Oct 2015 07:00:00 GMT", Some(0)),      // in the past
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
            ("99999999999999999999999", None),
        ];
        for &(value, expected) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                expected.map(Duration::from_secs),
                "{value:?}"
            );
        }
    }
}

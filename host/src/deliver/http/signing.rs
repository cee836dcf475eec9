//! Standard Webhooks signing (<https://www.standardwebhooks.com>): the
//! `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::binding::headers::encode_value;

/// Standard Webhooks secrets are 24 to 64 random bytes.
const SIGNING_KEY_LEN: std::ops::RangeInclusive<usize> = 24..=64;
/// Prefix of a Standard Webhooks symmetric secret.
const SIGNING_SECRET_PREFIX: &str = "whsec_";

/// Standard Webhooks symmetric signer.
pub(super) struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// Decodes a `whsec_<base64>` secret.
    pub(super) fn from_secret(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .strip_prefix(SIGNING_SECRET_PREFIX)
            .ok_or_else(|| format!("must start with {SIGNING_SECRET_PREFIX}"))?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| format!("must be {SIGNING_SECRET_PREFIX} followed by base64"))?;
        if !SIGNING_KEY_LEN.contains(&key.len()) {
            return Err(format!(
                "must encode {} to {} bytes, not {}",
                SIGNING_KEY_LEN.start(),
                SIGNING_KEY_LEN.end(),
                key.len()
            ));
        }
        Ok(Self { key })
    }

    /// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
    fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; the key length is validated anyway.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => return String::new(),
        };
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The `webhook-id`, `webhook-timestamp` and `webhook-signature` headers.
    ///
    /// The id is percent-encoded like a `ce-*` value (a no-op for the usual
    /// ASCII ids) and signed as sent, so receivers can verify with what they
    /// received.
    pub(super) fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> HeaderMap {
        let id = encode_value(id);
        let mut headers = HeaderMap::new();
        let signature = self.sign(&id, timestamp, body);
        // Percent-encoded text and base64 are always valid header values.
        if let (Ok(id), Ok(signature)) = (
            HeaderValue::from_str(&id),
            HeaderValue::from_str(&signature),
        ) {
            headers.insert(HeaderName::from_static("webhook-id"), id);
            headers.insert(HeaderName::from_static("webhook-signature"), signature);
        }
        headers.insert(
            HeaderName::from_static("webhook-timestamp"),
            HeaderValue::from(timestamp),
        );
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        // From the Standard Webhooks reference libraries' tests.
        let signer = Signer::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let headers = signer.headers("msg_1", 1_700_000_000, b"{}");
        assert_eq!(headers["webhook-id"], "msg_1");
        let expected = signer.sign("msg_1", 1_700_000_000, b"{}");
        assert_eq!(headers["webhook-signature"], expected.as_str());
        assert_eq!(headers["webhook-timestamp"], "1700000000");
        // A non-ASCII id is sent, and signed, percent-encoded.
        let headers = signer.headers("é 1", 1, b"");
        assert_eq!(headers["webhook-id"], "%C3%A9%201");
        assert_eq!(
            headers["webhook-signature"],
            signer.sign("%C3%A9%201", 1, b"").as_str()
        );
        assert!(
            headers["webhook-signature"]
                .to_str()
                .unwrap()
                .starts_with("v1,")
        );
        assert!(Signer::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Signer::from_secret("whsec_!!!").is_err());
        assert!(Signer::from_secret("whsec_c2hvcnQ=").is_err()); // 5 bytes
    }
}

//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of this HTTP API.
//!
//! The document is hand-written in `openapi.json` beside this file and
//! compiled into the binary, so the bus always serves the description of the
//! routes it was built with. The integration tests in `tests/openapi/` check
//! that the document and [`router`](super::router) list the same routes and
//! methods, and that every answer of a running bus is documented and fits
//! its schema.

use axum::http::header;
use axum::response::IntoResponse;

/// The OpenAPI document, as served.
pub(crate) const DOCUMENT: &str = include_str!("openapi.json");

/// Serves the document; needs no API key.
pub(super) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    }
}

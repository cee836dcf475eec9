//! `POST /v1/patterns/test` and `POST /v1/transforms/test`: the testers over HTTP.

use super::{ApiError, ApiState, Body, Tenant, parse_json};
use crate::pattern::{Pattern, RuleSet};
use crate::resource::Problems;
use crate::route::pattern_for_sample;
use crate::transform::{RenderError, SampleContext, TransformSpec};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// `{"pattern", "event"}` → `{"match"}`, or `{"patterns": {name: pattern}, "event"}`
/// → `{"matched": [names]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatternTest {
    #[serde(default)]
    pattern: Option<Value>,
    #[serde(default)]
    patterns: Option<Map<String, Value>>,
    event: Value,
}

pub(super) async fn test_pattern(
    axum::extract::State(state): ApiState,
    _: Tenant,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: PatternTest = parse_json(&body)?;
    let invalid = |field: String, reason: String| {
        ApiError::invalid("invalid_pattern", Problems::one(field, reason))
    };
    match (req.pattern, req.patterns) {
        (Some(pattern), None) => {
            let pattern = Pattern::from_value(
                &pattern_for_sample(&pattern, &req.event),
                &state.pattern_limits,
            )
            .map_err(|e| {
                let field = if e.path.is_empty() {
                    "pattern".to_owned()
                } else {
                    format!("pattern.{}", e.path)
                };
                invalid(field, e.reason)
            })?;
            Ok(Json(json!({"match": pattern.matches(&req.event)})))
        }
        (None, Some(patterns)) => {
            if patterns.is_empty() {
                return Err(ApiError::bad_request(
                    "invalid_field",
                    "patterns must name at least one pattern",
                    "patterns",
                ));
            }
            let aliased = patterns
                .into_iter()
                .map(|(name, p)| (name, pattern_for_sample(&p, &req.event)));
            let set = RuleSet::compile_named(aliased, &state.pattern_limits)
                .map_err(|e| invalid(e.field(), e.error.reason))?;
            let mut matched = set.matches(&req.event);
            matched.sort();
            Ok(Json(json!({"matched": matched})))
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_field",
            "give either pattern (one pattern) or patterns (named patterns), not both",
            "patterns",
        )),
        (None, None) => Err(ApiError::bad_request(
            "missing_field",
            "pattern (or patterns, several named patterns) is required",
            "pattern",
        )),
    }
}

/// `{"event", "rule_name"?, "rule_arn"?, "ingestion_time"?, ...transform}`.
#[derive(Deserialize)]
pub(super) struct TransformTest {
    event: Value,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

pub(super) async fn test_transform(_: Tenant, Body(body): Body) -> Result<Json<Value>, ApiError> {
    let TransformTest { event, mut rest } = parse_json(&body)?;
    let invalid = |e: crate::transform::TransformError| {
        ApiError::invalid("invalid_transform", Problems::one(e.field, e.reason))
    };
    let context =
        SampleContext::take_from(&mut rest, || crate::clock::rfc3339(crate::clock::now_ms()))
            .map_err(invalid)?;
    let spec: TransformSpec = serde_json::from_value(Value::Object(rest))
        .map_err(|e| ApiError::bad_request("invalid_transform", e.to_string(), "body"))?;
    let transform = spec.compile().map_err(invalid)?;
    let output = transform
        .render(&event, &context.render_context())
        .map_err(|e| {
            let field = match e {
                RenderError::NoMatch => "input_path",
                _ => "input_template",
            };
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                e.code(),
                e.to_string(),
            )
            .with_field(field)
        })?;
    Ok(Json(json!({"output": output})))
}

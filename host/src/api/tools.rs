//! `POST /v1/patterns/test` and `POST /v1/transforms/test`: the testers over HTTP.

use super::{ApiError, Body, State, Tenant, parse_json};
use crate::pattern::Pattern;
use crate::resource::Problems;
use crate::route::pattern_for_sample;
use crate::transform::{RenderContext, TransformSpec};
use axum::Json;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatternTest {
    pattern: Value,
    event: Value,
}

pub(super) async fn test_pattern(
    axum::extract::State(state): State,
    _: Tenant,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: PatternTest = parse_json(&body)?;
    let pattern = Pattern::from_value(
        &pattern_for_sample(&req.pattern, &req.event),
        &state.pattern_limits,
    )
    .map_err(|e| {
        let field = if e.path.is_empty() {
            "pattern".to_owned()
        } else {
            format!("pattern.{}", e.path)
        };
        ApiError::invalid("invalid_pattern", Problems::one(field, e.reason))
    })?;
    Ok(Json(json!({"match": pattern.matches(&req.event)})))
}

#[derive(Deserialize)]
pub(super) struct TransformTest {
    event: Value,
    #[serde(flatten)]
    spec: serde_json::Map<String, Value>,
}

pub(super) async fn test_transform(_: Tenant, Body(body): Body) -> Result<Json<Value>, ApiError> {
    let req: TransformTest = parse_json(&body)?;
    let spec: TransformSpec = serde_json::from_value(Value::Object(req.spec))
        .map_err(|e| ApiError::bad_request("invalid_transform", e.to_string(), "body"))?;
    let transform = spec
        .compile()
        .map_err(|e| ApiError::invalid("invalid_transform", Problems::one(e.field, e.reason)))?;
    let now = crate::clock::rfc3339(crate::clock::now_ms());
    let ctx = RenderContext {
        rule_name: "test-rule",
        rule_arn: "busbar:rule/test/default/test-rule",
        ingestion_time: &now,
    };
    let output = transform.render(&req.event, &ctx).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "render_error",
            e.to_string(),
        )
        .with_field("input_template")
    })?;
    Ok(Json(json!({"output": output})))
}

//! Buses and rules: `/v1/buses/*`.

use super::{ApiError, ApiState, Body, Tenant, check_name, list, optional_json, parse_json};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{Value, json};

fn created(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

pub(super) async fn list_buses(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
) -> Json<Value> {
    let items: Vec<Value> = state
        .catalog
        .buses(&tenant)
        .into_iter()
        .map(|(name, spec)| json!({"name": name, "settings": spec}))
        .collect();
    list(items, None)
}

pub(super) async fn put_bus(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("bus", &bus)?;
    let settings = optional_json(&body)?;
    let was_created = state.control.put_bus(&tenant, &bus, &settings).await?;
    Ok((
        created(was_created),
        Json(json!({"name": bus, "settings": settings})),
    ))
}

pub(super) async fn get_bus(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    Ok(Json(
        json!({"name": bus, "settings": view.settings, "rules": view.routes.rules.keys().collect::<Vec<_>>()}),
    ))
}

pub(super) async fn delete_bus(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_bus(&tenant, &bus).await?;
    state.door.forget_bus(&tenant, &bus).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What stands in for a secret in answers.
const REDACTED: &str = "********";

/// A rule as answered: its body with credentials replaced, so reading a rule
/// never reveals a target's API key, password, client secret or signing secret.
fn rule_json(name: &str, spec: &Value) -> Value {
    let mut out = json!({"name": name});
    if let (Value::Object(o), Value::Object(s)) = (&mut out, spec) {
        for (k, v) in s {
            o.insert(k.clone(), v.clone());
        }
    }
    if let Some(Value::Array(targets)) = out.get_mut("targets") {
        for target in targets {
            for (section, key) in [
                ("auth", "value"),
                ("auth", "password"),
                ("auth", "client_secret"),
                ("signing", "secret"),
            ] {
                if let Some(secret) = target.get_mut(section).and_then(|s| s.get_mut(key)) {
                    *secret = Value::String(REDACTED.to_owned());
                }
            }
        }
    }
    out
}

pub(super) async fn list_rules(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let items: Vec<Value> = view
        .routes
        .rules
        .iter()
        .map(|(name, r)| rule_json(name, &r.spec.to_value()))
        .collect();
    Ok(list(items, None))
}

pub(super) async fn put_rule(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("rule", &name)?;
    let spec: Value = parse_json(&body)?;
    let (_, was_created) = state.control.put_rule(&tenant, &bus, &name, &spec).await?;
    Ok((created(was_created), Json(rule_json(&name, &spec))))
}

pub(super) async fn get_rule(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let view = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let rule = view
        .routes
        .rules
        .get(&name)
        .ok_or_else(|| ApiError::not_found("rule", &name))?;
    Ok(Json(rule_json(&name, &rule.spec.to_value())))
}

pub(super) async fn delete_rule(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state.control.delete_rule(&tenant, &bus, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

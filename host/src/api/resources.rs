//! Buses and rules: `/v1/buses/*`.

use super::{ApiError, Body, State, Tenant, check_name, list, parse_json, settings_body};
use crate::clock::now_ms;
use crate::route::{CompileContext, FieldError, TargetKind, compile_rule};
use crate::store::{Resource, ResourceKind};
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{Value, json};

/// Persisted name of a rule resource.
fn rule_key(bus: &str, rule: &str) -> String {
    format!("{bus}/{rule}")
}

pub(super) async fn list_buses(
    axum::extract::State(state): State,
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
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("bus", &bus)?;
    let spec = settings_body("bus", &body)?;
    let existed = state.catalog.bus(&tenant, &bus).is_some();
    let resource = Resource {
        tenant: tenant.clone(),
        kind: ResourceKind::Bus,
        name: bus.clone(),
        spec: spec.clone(),
        updated_ms: now_ms(),
    };
    state.store.put_resource(resource).await?;
    state.catalog.put_bus(&tenant, &bus, spec.clone());
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(json!({"name": bus, "settings": spec}))))
}

pub(super) async fn get_bus(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let routes = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    Ok(Json(
        json!({"name": bus, "settings": routes.spec, "rules": routes.rules.keys().collect::<Vec<_>>()}),
    ))
}

pub(super) async fn delete_bus(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<StatusCode, ApiError> {
    let routes = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    if bus == "default" {
        return Err(ApiError::conflict("the default bus cannot be deleted").with_field("bus"));
    }
    let users = state.catalog.referencing_rules(&tenant, None, Some(&bus));
    if !users.is_empty() {
        return Err(ApiError::conflict(format!(
            "bus is the target of rules {users:?}; change them first"
        )));
    }
    for rule in routes.rules.keys() {
        state
            .store
            .delete_resource(&tenant, ResourceKind::Rule, &rule_key(&bus, rule))
            .await?;
    }
    state
        .store
        .delete_resource(&tenant, ResourceKind::Bus, &bus)
        .await?;
    state.catalog.delete_bus(&tenant, &bus);
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
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let routes = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let items: Vec<Value> = routes
        .rules
        .iter()
        .map(|(name, r)| rule_json(name, &r.spec))
        .collect();
    Ok(list(items, None))
}

pub(super) async fn put_rule(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("rule", &name)?;
    let existing = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let spec: Value = parse_json(&body)?;
    let lookup = |plugin: &str| state.catalog.plugin(&tenant, plugin);
    let http = state.http.for_tenant(&tenant);
    let ctx = CompileContext {
        http: &http,
        pattern_limits: &state.pattern_limits,
        plugins: &lookup,
    };
    let rule = compile_rule(&bus, &name, &spec, &ctx)
        .map_err(|errors| ApiError::invalid("invalid_rule", errors))?;
    // Targets must name resources the tenant has.
    let mut missing = Vec::new();
    for (i, target) in rule.targets.iter().enumerate() {
        match &target.kind {
            TargetKind::Bus { bus: b } if state.catalog.bus(&tenant, b).is_none() => {
                missing.push(FieldError::new(
                    format!("targets[{i}].bus"),
                    format!("bus {b:?} does not exist"),
                ))
            }
            TargetKind::Queue { queue } if !state.catalog.has_queue(&tenant, queue) => missing
                .push(FieldError::new(
                    format!("targets[{i}].queue"),
                    format!("queue {queue:?} does not exist"),
                )),
            // Connectors check their configuration at deploy time.
            TargetKind::Wasm(wasm) => {
                if let Err(e) = state
                    .plugins
                    .validate_connector(&tenant, &wasm.binding, &wasm.allowed_hosts)
                    .await
                {
                    missing.push(FieldError::new(
                        format!("targets[{i}].config"),
                        format!("{}: {}", e.code, e.message),
                    ));
                }
            }
            _ => {}
        }
    }
    if !missing.is_empty() {
        let mut err = ApiError::invalid("invalid_rule", missing);
        err.status = StatusCode::UNPROCESSABLE_ENTITY;
        return Err(err);
    }
    let existed = existing.rules.contains_key(&name);
    let resource = Resource {
        tenant: tenant.clone(),
        kind: ResourceKind::Rule,
        name: rule_key(&bus, &name),
        spec: spec.clone(),
        updated_ms: now_ms(),
    };
    state.store.put_resource(resource).await?;
    if !state.catalog.put_rule(&tenant, rule) {
        return Err(ApiError::not_found("bus", &bus));
    }
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(rule_json(&name, &spec))))
}

pub(super) async fn get_rule(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let routes = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    let rule = routes
        .rules
        .get(&name)
        .ok_or_else(|| ApiError::not_found("rule", &name))?;
    Ok(Json(rule_json(&name, &rule.spec)))
}

pub(super) async fn delete_rule(
    axum::extract::State(state): State,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let routes = state
        .catalog
        .bus(&tenant, &bus)
        .ok_or_else(|| ApiError::not_found("bus", &bus))?;
    if !routes.rules.contains_key(&name) {
        return Err(ApiError::not_found("rule", &name));
    }
    state
        .store
        .delete_resource(&tenant, ResourceKind::Rule, &rule_key(&bus, &name))
        .await?;
    state.catalog.delete_rule(&tenant, &bus, &name);
    Ok(StatusCode::NO_CONTENT)
}

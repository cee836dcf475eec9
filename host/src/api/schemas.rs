//! Schemas: `/v1/buses/{bus}/schemas/*` (the registry) and
//! `/v1/buses/{bus}/discovered-schemas` (what discovery inferred).

use super::{ApiError, ApiState, Body, Tenant, check_name, list, parse_json};
use crate::clock::rfc3339;
use crate::door::DoorError;
use crate::door::discovery::Discovered;
use crate::door::registry::Registered;
use crate::door::schema::{Mode, SchemaSpec, Selector};
use crate::store::SchemaVersion;
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use serde_json::{Value, json};

impl From<DoorError> for ApiError {
    fn from(e: DoorError) -> Self {
        match e {
            DoorError::NotFound { what, name } => Self::not_found(what, &name),
            DoorError::Invalid { code, problems } => Self::invalid(code, problems),
            DoorError::Conflict { message, field } => {
                let err = Self::conflict(message);
                match field {
                    Some(f) => err.with_field(f),
                    None => err,
                }
            }
            DoorError::Incompatible { previous, problems } => {
                let mut err = Self::invalid("incompatible_schema", problems);
                err.status = StatusCode::CONFLICT;
                err.message = format!("not compatible with version {previous}: {}", err.message);
                err.with_member("previous_version", json!(previous))
            }
            DoorError::Store(e) => e.into(),
        }
    }
}

fn require_bus(state: &super::AppState, tenant: &str, bus: &str) -> Result<(), ApiError> {
    if state.catalog.has_bus(tenant, bus) {
        Ok(())
    } else {
        Err(ApiError::not_found("bus", bus))
    }
}

/// A schema's newest version as answered.
fn schema_json(bus: &str, r: &Registered) -> Value {
    let mut out = json!({"name": r.name, "bus": bus, "version": r.version,
                         "created": rfc3339(r.created_ms)});
    if let (Value::Object(o), Value::Object(spec)) = (&mut out, r.spec.to_json()) {
        o.extend(spec);
    }
    out
}

/// One stored version as answered.
fn version_json(v: &SchemaVersion) -> Value {
    let mut out = json!({"version": v.version, "created": rfc3339(v.created_ms)});
    if let (Value::Object(o), Value::Object(spec)) = (&mut out, v.spec.clone()) {
        o.extend(spec);
    }
    out
}

pub(super) async fn put_schema(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_name("schema", &name)?;
    require_bus(&state, &tenant, &bus)?;
    let value: Value = parse_json(&body)?;
    let spec = SchemaSpec::parse(&value).map_err(|p| ApiError::invalid("invalid_schema", p))?;
    let (registered, created) = state.door.registry.put(&tenant, &bus, &name, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(schema_json(&bus, &registered))))
}

pub(super) async fn list_schemas(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_bus(&state, &tenant, &bus)?;
    let items: Vec<Value> = state
        .door
        .registry
        .list(&tenant, &bus)
        .iter()
        .map(|r| schema_json(&bus, r))
        .collect();
    Ok(list(items, None))
}

pub(super) async fn get_schema(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_bus(&state, &tenant, &bus)?;
    let registered = state
        .door
        .registry
        .get(&tenant, &bus, &name)
        .ok_or_else(|| ApiError::not_found("schema", &name))?;
    let versions = state.door.registry.versions(&tenant, &bus, &name).await?;
    let mut out = schema_json(&bus, &registered);
    out["versions"] = json!(versions.iter().map(version_json).collect::<Vec<_>>());
    Ok(Json(out))
}

pub(super) async fn get_schema_version(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name, version)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    require_bus(&state, &tenant, &bus)?;
    let number: u32 = version.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            format!("version {version:?} is not a version number"),
            "version",
        )
    })?;
    let versions = state.door.registry.versions(&tenant, &bus, &name).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found("schema", &name));
    }
    let v = versions
        .iter()
        .find(|v| v.version == number)
        .ok_or_else(|| ApiError::not_found("schema version", &version))?;
    let mut out = version_json(v);
    out["name"] = json!(name);
    out["bus"] = json!(bus);
    Ok(Json(out))
}

pub(super) async fn delete_schema(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path((bus, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_bus(&state, &tenant, &bus)?;
    if state.door.registry.delete(&tenant, &bus, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("schema", &name))
    }
}

fn discovered_json(d: &Discovered) -> Value {
    json!({
        "source": d.source,
        "type": d.event_type,
        "events": d.summary.events,
        "first_seen": rfc3339(d.summary.first_seen_ms),
        "last_seen": rfc3339(d.summary.last_seen_ms),
        "schema": d.summary.schema(&d.source, &d.event_type),
    })
}

pub(super) async fn list_discovered(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_bus(&state, &tenant, &bus)?;
    let found = state.door.discovery.list(&tenant, &bus).await?;
    Ok(list(found.iter().map(discovered_json).collect(), None))
}

/// `POST /v1/buses/{bus}/discovered-schemas/promote` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    /// The registered schema's name.
    name: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    description: Option<String>,
}

pub(super) async fn promote_discovered(
    axum::extract::State(state): ApiState,
    Tenant(tenant): Tenant,
    Path(bus): Path<String>,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    require_bus(&state, &tenant, &bus)?;
    let promote: Promote = parse_json(&body)?;
    check_name("name", &promote.name).map_err(|e| e.with_field("name"))?;
    let found = state.door.discovery.list(&tenant, &bus).await?;
    let discovered = found
        .iter()
        .find(|d| d.source == promote.source && d.event_type == promote.event_type)
        .ok_or_else(|| {
            ApiError::not_found(
                "discovered schema",
                &format!("{}/{}", promote.source, promote.event_type),
            )
        })?;
    let spec = SchemaSpec {
        selector: Selector::SourceType {
            source: promote.source.clone(),
            event_type: promote.event_type.clone(),
        },
        schema: discovered
            .summary
            .schema(&discovered.source, &discovered.event_type),
        mode: promote.mode,
        compatibility: None,
        description: promote.description,
    };
    let (registered, created) = state
        .door
        .registry
        .put(&tenant, &bus, &promote.name, spec)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(schema_json(&bus, &registered))))
}

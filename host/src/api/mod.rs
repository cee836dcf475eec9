//! The HTTP edge: routes, authentication and the JSON error shape.
//!
//! Handlers are thin: they authenticate, parse, call the module that owns the
//! concept (ingest, route, store, catalog) and shape the answer. One handler
//! file per resource family.

mod admin;
mod error;
mod events;
mod history;
mod openapi;
mod ops;
mod plugins;
mod queues;
mod resources;
mod schemas;
mod tools;

pub use error::ApiError;

use crate::clock::SharedClock;
use crate::control::{Catalog, ControlPlane, hash_key};
use crate::deliver::queue::QueueSignals;
use crate::door::Door;
use crate::ingest::IngestLimits;
use crate::pattern::PatternLimits;
use crate::plugin::registry::PluginHost;
use crate::store::{DeadLetters, EventLog, Health, LogConsumer, Queues};
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::routing::{delete, get, post, put};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Everything handlers share.
pub struct AppState {
    /// Every configuration change goes through here.
    pub control: Arc<ControlPlane>,
    /// What handlers read: tenants, keys, buses, rules, queues, plugins.
    pub catalog: Arc<Catalog>,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// The ingest door: schemas, discovery, deduplicated appends (ingest
    /// appends through here).
    pub door: Arc<Door>,
    /// Archives, traces and replays.
    pub history: crate::history::HistoryServices,
    /// The routing consumer (for the backlog gauge).
    pub routing: Arc<dyn LogConsumer>,
    /// Dead letters.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Pull queues.
    pub queues: Arc<dyn Queues>,
    /// Long-poll wake-ups for queues.
    pub queue_signals: Arc<QueueSignals>,
    /// The Wasm plugin host.
    pub plugins: Arc<PluginHost>,
    /// Time (ingest timestamps).
    pub clock: SharedClock,
    /// Largest plugin upload.
    pub max_plugin_bytes: usize,
    /// Hex SHA-256 of the admin key.
    pub admin_key_hash: String,
    /// Ingestion limits.
    pub ingest_limits: IngestLimits,
    /// Pattern limits.
    pub pattern_limits: PatternLimits,
    /// Largest request body accepted on event endpoints.
    pub max_request_bytes: usize,
    /// Prometheus renderer.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// False until start-up recovery is done, and again while shutting down.
    pub ready: AtomicBool,
    /// Whether the store can take writes (readiness fails while it cannot).
    pub store_health: Arc<dyn Health>,
}

/// Shared state type for handlers.
pub type ApiState = axum::extract::State<Arc<AppState>>;

/// Builds the complete router.
pub fn router(state: Arc<AppState>) -> Router {
    let events_limit = state.max_request_bytes;
    let v1 = Router::new()
        .route(
            "/admin/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route("/admin/tenants/{tenant}/keys", post(admin::create_key))
        .route(
            "/admin/tenants/{tenant}/keys/{key_id}",
            delete(admin::revoke_key),
        )
        .route(
            "/admin/tenants/{tenant}/plugin-limits",
            put(admin::put_plugin_limits)
                .get(admin::get_plugin_limits)
                .delete(admin::delete_plugin_limits),
        )
        .route("/plugin-limits", get(admin::own_plugin_limits))
        .route(
            "/buses/{bus}/events",
            post(events::post_cloudevents).layer(DefaultBodyLimit::max(events_limit)),
        )
        .route(
            "/events",
            post(events::put_events)
                .layer(DefaultBodyLimit::max(events_limit))
                .get(history::search_events),
        )
        .route("/events/{id}", get(history::get_event))
        .route("/buses", get(resources::list_buses))
        .route(
            "/buses/{bus}",
            put(resources::put_bus)
                .get(resources::get_bus)
                .delete(resources::delete_bus),
        )
        .route("/buses/{bus}/rules", get(resources::list_rules))
        .route(
            "/buses/{bus}/rules/{rule}",
            put(resources::put_rule)
                .get(resources::get_rule)
                .delete(resources::delete_rule),
        )
        .route("/buses/{bus}/schemas", get(schemas::list_schemas))
        .route(
            "/buses/{bus}/schemas/{schema}",
            put(schemas::put_schema)
                .get(schemas::get_schema)
                .delete(schemas::delete_schema),
        )
        .route(
            "/buses/{bus}/schemas/{schema}/versions/{version}",
            get(schemas::get_schema_version),
        )
        .route(
            "/buses/{bus}/discovered-schemas",
            get(schemas::list_discovered),
        )
        .route(
            "/buses/{bus}/discovered-schemas/promote",
            post(schemas::promote_discovered),
        )
        .route(
            "/buses/{bus}/rules/{rule}/explain",
            post(history::explain_rule),
        )
        .route("/buses/{bus}/archives", get(history::list_archives))
        .route(
            "/buses/{bus}/archives/{archive}",
            put(history::put_archive)
                .get(history::get_archive)
                .delete(history::delete_archive),
        )
        .route(
            "/replays",
            post(history::start_replay).get(history::list_replays),
        )
        .route(
            "/replays/{id}",
            get(history::get_replay).delete(history::cancel_replay),
        )
        .route("/queues", get(queues::list_queues))
        .route(
            "/queues/{queue}",
            put(queues::put_queue)
                .get(queues::get_queue)
                .delete(queues::delete_queue),
        )
        .route("/queues/{queue}/receive", post(queues::receive))
        .route("/queues/{queue}/ack", post(queues::ack))
        .route("/dlq", get(queues::list_dead_letters))
        .route("/dlq/redrive", post(queues::redrive))
        .route(
            "/dlq/{id}",
            get(queues::get_dead_letter).delete(queues::delete_dead_letter),
        )
        .route(
            "/plugins/{name}",
            put(plugins::upload)
                .layer(DefaultBodyLimit::max(state.max_plugin_bytes))
                .get(plugins::get_plugin)
                .delete(plugins::delete_plugin),
        )
        .route("/plugins", get(plugins::list_plugins))
        .route("/plugins/{name}/rollback", post(plugins::rollback))
        .route("/patterns/test", post(tools::test_pattern))
        .route("/patterns/explain", post(history::explain_pattern))
        .route("/transforms/test", post(tools::test_transform))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

/// The key of an `Authorization: Bearer <key>` header. The scheme name is
/// case-insensitive (RFC 7235 §2.1: `bearer`, `BEARER` work too) and may be
/// followed by more than one space.
fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key> header"))?;
    let value = header
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <key>\""))
}

/// Constant-time comparison, so response timing reveals nothing about the admin key.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The tenant a request acts for (from its API key).
pub struct Tenant(pub String);

impl FromRequestParts<Arc<AppState>> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let hash = hash_key(bearer(parts)?);
        if let Some(tenant) = state.catalog.authenticate(&hash) {
            return Ok(Tenant(tenant));
        }
        if same(&hash, &state.admin_key_hash) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "the admin key manages tenants; use a tenant API key here",
            ));
        }
        Err(ApiError::unauthorized("unknown or revoked API key"))
    }
}

/// Proof that the request carries the admin key.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let hash = hash_key(bearer(parts)?);
        if same(&hash, &state.admin_key_hash) {
            return Ok(Admin);
        }
        if state.catalog.authenticate(&hash).is_some() {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint needs the admin key",
            ));
        }
        Err(ApiError::unauthorized("unknown admin key"))
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the route's limit (`DefaultBodyLimit`): by `Content-Length`,
    /// or by the bytes received.
    TooLarge,
    /// The body could not be received; the reason.
    Unreadable(String),
}

impl BodyError {
    /// The API error for this failure, with `too_large` (413) answered as
    /// `code` and `message`.
    pub fn into_api_error(self, code: &'static str, message: &str) -> ApiError {
        match self {
            Self::TooLarge => {
                ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, code, message)
                    .with_field("body")
            }
            Self::Unreadable(reason) => ApiError::bad_request("unreadable_body", reason, "body"),
        }
    }
}

/// Reads a request body within the route's size limit (`DefaultBodyLimit`).
///
/// axum counts the bytes only as they arrive, so a request whose `Content-Length`
/// announces more than the limit would be held open until its body (which may
/// never come) is sent; it is refused here at once, before any of it is read. The
/// limit is not repeated here: it is what axum's limiting wrapper reports as its
/// upper size bound.
pub async fn read_body(request: axum::extract::Request) -> Result<Bytes, BodyError> {
    use axum::RequestExt;
    use axum::body::HttpBody as _;
    let declared = request.body().size_hint().lower();
    let request = request.with_limited_body();
    if request
        .body()
        .size_hint()
        .upper()
        .is_some_and(|limit| declared > limit)
    {
        return Err(BodyError::TooLarge);
    }
    <Bytes as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                BodyError::TooLarge
            } else {
                BodyError::Unreadable(rejection.body_text())
            }
        })
}

/// A request body, read with the API's error shape for "too large" and I/O failures.
pub struct Body(pub Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        read_body(request)
            .await
            .map(Body)
            .map_err(|e| e.into_api_error("too_large", "the request body exceeds the size limit"))
    }
}

/// Parses a JSON body into `T`, naming the exact path of any problem.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; expected JSON",
            "body",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let code = if inner.is_syntax() || inner.is_eof() {
            "invalid_json"
        } else {
            "invalid_field"
        };
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::bad_request(code, inner.to_string(), field)
    })
}

/// Reads an optional JSON body: `{}` when empty.
pub fn optional_json(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        Ok(serde_json::json!({}))
    } else {
        parse_json(body)
    }
}

/// Checks a name from the URL.
pub fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if crate::resource::valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            format!("{kind} name {name:?} {}", crate::resource::NAME_RULE),
            kind,
        ))
    }
}

/// A `{"items": [...], "next": null}` list.
pub fn list<T: serde::Serialize>(
    items: Vec<T>,
    next: Option<String>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"items": items, "next": next}))
}

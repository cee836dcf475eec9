//! Health, readiness and metrics.

use super::{ApiError, ApiState};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::sync::atomic::Ordering;

pub(super) async fn healthz() -> &'static str {
    "ok"
}

pub(super) async fn readyz(
    axum::extract::State(state): ApiState,
) -> Result<&'static str, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting up or shutting down",
        ));
    }
    // A node that cannot reach its store would answer every write with 503.
    state.store_health.check().map_err(|reason| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the store cannot be reached: {reason}"),
        )
    })?;
    Ok("ready")
}

pub(super) async fn metrics(axum::extract::State(state): ApiState) -> impl IntoResponse {
    // Gauges that are cheaper to read at scrape time than to maintain on every change.
    crate::telemetry::routing_backlog(state.routing.in_flight() as i64);
    let stats = state.plugins.runtime.stats();
    crate::telemetry::plugin_runtime(stats.invocations, stats.compiles, stats.artifact_loads);
    if let Ok(depths) = state.queues.queue_depths().await {
        let depths: std::collections::HashMap<(String, String), u64> = depths
            .into_iter()
            .map(|d| ((d.tenant, d.queue), d.messages))
            .collect();
        // Every known queue gets a value, empty ones included.
        for tenant in state.catalog.tenants() {
            for (queue, _) in state.catalog.queues(&tenant.name) {
                let depth = depths
                    .get(&(tenant.name.clone(), queue.clone()))
                    .copied()
                    .unwrap_or(0);
                crate::telemetry::queue_depth(&tenant.name, &queue, depth);
            }
        }
    }
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {}", uri.path()),
    )
}

pub(super) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

//! Logs and metrics.
//!
//! Metric names are part of the operational interface (dashboards depend on
//! them), so every name is written once, here.

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide metrics recorder (once) and returns its handle.
/// Every series carries the label `node` (the first caller's `node`: one
/// node per process), so the series of several nodes stay apart when one
/// Prometheus scrapes them all.
pub fn metrics_handle(node: &str) -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .add_global_label("node", node)
                .set_buckets(&[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Starts `tracing` output; safe to call more than once (later calls are ignored).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BUSBAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Events accepted into the log.
pub fn accepted(tenant: &str, n: u64) {
    counter!("busbar_events_accepted_total", "tenant" => tenant.to_owned()).increment(n);
}

/// Events refused at ingestion, by reason code.
pub fn rejected(reason: &'static str, n: u64) {
    counter!("busbar_events_rejected_total", "reason" => reason).increment(n);
}

/// Rule matches.
pub fn matched(tenant: &str, n: u64) {
    counter!("busbar_events_matched_total", "tenant" => tenant.to_owned()).increment(n);
}

/// A successful delivery, with the time since ingestion.
pub fn delivered(labels: &[(&'static str, String)], latency_ms: i64) {
    counter!("busbar_deliveries_total", labels).increment(1);
    histogram!("busbar_ingest_to_delivery_seconds").record(latency_ms.max(0) as f64 / 1000.0);
}

/// A failed attempt that will be retried.
pub fn retried(labels: &[(&'static str, String)]) {
    counter!("busbar_delivery_retries_total", labels).increment(1);
}

/// First attempts stored as jobs due now because their target (or the
/// engine) stayed at its in-flight cap: each costs a job write, a lease and
/// a trace fact more than one attempted at once.
pub fn parked(tenant: &str, n: u64) {
    counter!("busbar_deliveries_parked_total", "tenant" => tenant.to_owned()).increment(n);
}

/// Trace facts offered to the trace writer (later facts: retries, dead
/// letters, redrives, replays, and attempts of parked deliveries) — those
/// dropped because it was behind included, and also counted in
/// `busbar_trace_facts_dropped_total`.
pub fn trace_fact() {
    counter!("busbar_trace_facts_total").increment(1);
}

/// A delivery given up on.
pub fn dead_lettered(tenant: &str, exhausted: &str) {
    counter!("busbar_dead_letters_total", "tenant" => tenant.to_owned(), "exhausted" => exhausted.to_owned())
        .increment(1);
}

/// Events committed but not yet fully routed (delivered or persisted).
pub fn routing_backlog(n: i64) {
    gauge!("busbar_routing_backlog_events").set(n as f64);
}

/// Messages waiting on a pull queue (visible or in flight).
pub fn queue_depth(tenant: &str, queue: &str, depth: u64) {
    gauge!("busbar_queue_depth", "tenant" => tenant.to_owned(), "queue" => queue.to_owned())
        .set(depth as f64);
}

/// The plugin runtime's own counters (absolute values, read at scrape time).
pub fn plugin_runtime(invocations: u64, compiles: u64, artifact_loads: u64) {
    counter!("busbar_plugin_invocations_total").absolute(invocations);
    counter!("busbar_plugin_compiles_total").absolute(compiles);
    counter!("busbar_plugin_artifact_loads_total").absolute(artifact_loads);
}

/// An event that did not conform to its bus's schema (refused in `enforce`
/// mode, tagged in `warn` mode), per schema.
pub fn schema_violation(tenant: &str, bus: &str, schema: &str, mode: &'static str) {
    counter!("busbar_schema_violations_total", "tenant" => tenant.to_owned(), "bus" => bus.to_owned(),
             "schema" => schema.to_owned(), "mode" => mode)
    .increment(1);
}

/// Events acknowledged as duplicates (inside their bus's window) and not stored again.
pub fn duplicates(tenant: &str, n: u64) {
    counter!("busbar_events_duplicate_total", "tenant" => tenant.to_owned()).increment(n);
}

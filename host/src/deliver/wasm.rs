//! The `wasm` target: a tenant's connector plugin delivers the events.
//!
//! Connectors take batches: when several deliveries to one connector are due
//! together they go in one invocation (up to the target's `max_batch`), and
//! the connector answers per event, so one event's failure retries or
//! dead-letters only that event.

use super::target::{BuildContext, Item, Reference, Target};
use super::{Failure, FailureCode, Outcome};
use crate::event::Event;
use crate::plugin::DeliveryResult;
use crate::plugin::registry::{PluginCallError, PluginHost};
use crate::resource::{Fields, PluginBinding, PluginKind, Problems};
use async_trait::async_trait;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Default and largest `max_batch` of a connector target.
const DEFAULT_BATCH: usize = 16;
const MAX_BATCH: usize = 100;

/// Delivers through a connector plugin of the rule's tenant.
#[derive(Debug)]
pub struct WasmTarget {
    tenant: String,
    binding: PluginBinding,
    allowed_hosts: Vec<String>,
    max_batch: usize,
    plugins: Arc<PluginHost>,
}

/// Builds a `wasm` target: `{"plugin", "config", "allowed_hosts", "max_batch"}`.
pub(super) fn build(
    members: &Map<String, Value>,
    cx: &BuildContext<'_>,
) -> Result<Arc<dyn Target>, Problems> {
    let value = Value::Object(members.clone());
    let mut problems = Problems::new();
    let mut allowed_hosts = Vec::new();
    let mut max_batch = DEFAULT_BATCH;
    if let Some(mut f) = Fields::of(&value, "", "a target", &mut problems) {
        if let Some(hosts) = f.raw("allowed_hosts") {
            match hosts {
                Value::Array(hosts) => {
                    for (i, h) in hosts.iter().enumerate() {
                        match h.as_str() {
                            Some(h) if valid_host_pattern(h) => {
                                allowed_hosts.push(h.to_ascii_lowercase())
                            }
                            _ => f.problem(
                                &format!("allowed_hosts[{i}]"),
                                "must be a host name, host:port, an IP address, or *.suffix",
                            ),
                        }
                    }
                }
                _ => f.problem("allowed_hosts", "must be an array of host names"),
            }
        }
        if let Some(n) = f.optional::<usize>("max_batch") {
            if (1..=MAX_BATCH).contains(&n) {
                max_batch = n;
            } else {
                f.problem("max_batch", format!("must be between 1 and {MAX_BATCH}"));
            }
        }
    }
    let binding = match PluginBinding::from_json(&value, &["allowed_hosts", "max_batch"]) {
        Ok(binding) => {
            match (cx.plugin)(&binding.name) {
                None => problems.add(
                    "plugin",
                    format!("plugin {:?} does not exist", binding.name),
                ),
                Some(record) => {
                    if let Err(reason) = record.check_binding(&binding, PluginKind::Connector) {
                        problems.add("plugin", reason);
                    }
                }
            }
            Some(binding)
        }
        Err((field, message)) => {
            problems.add(field, message);
            None
        }
    };
    problems.finish()?;
    let binding = binding.ok_or_else(|| Problems::one("plugin", "missing"))?;
    Ok(Arc::new(WasmTarget {
        tenant: cx.tenant.to_owned(),
        binding,
        allowed_hosts,
        max_batch,
        plugins: cx.services.plugins.clone(),
    }))
}

/// Whether `h` is an allowed-host entry: a host name, an IP literal, or `*.suffix`.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The outcome a failed invocation means for every event of its batch.
fn failed(e: PluginCallError) -> Outcome {
    let permanent = matches!(
        e.code,
        FailureCode::PluginMissing
            | FailureCode::PluginKind
            | FailureCode::PluginInvalidEvent
            | FailureCode::PluginInvalidConfig
    );
    let failure = Failure::new(e.code, e.message);
    if permanent {
        Outcome::Permanent(failure)
    } else {
        // Paused or unloadable plugins may be fixed by the tenant, and
        // crashes may be transient: retry until the policy's limits run out.
        Outcome::Retry(failure)
    }
}

#[async_trait]
impl Target for WasmTarget {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    async fn send(&self, batch: &[Item]) -> Vec<Outcome> {
        let events: Vec<Event> = batch.iter().map(|i| i.event.event().clone()).collect();
        match self
            .plugins
            .deliver(&self.tenant, &self.binding, &self.allowed_hosts, &events)
            .await
        {
            Ok(results) => results
                .into_iter()
                .map(|r| match r {
                    DeliveryResult::Delivered => Outcome::Delivered { status: None },
                    DeliveryResult::Retryable {
                        message,
                        retry_after,
                    } => Outcome::Retry(Failure {
                        code: FailureCode::ConnectorRetryable,
                        message,
                        status: None,
                        retry_after,
                    }),
                    DeliveryResult::Permanent(message) => {
                        Outcome::Permanent(Failure::new(FailureCode::ConnectorPermanent, message))
                    }
                })
                .collect(),
            Err(e) => vec![failed(e); batch.len()],
        }
    }

    fn references(&self) -> Vec<(&'static str, Reference)> {
        vec![("plugin", Reference::Plugin(self.binding.name.clone()))]
    }

    async fn check(&self) -> Result<(), Problems> {
        self.plugins
            .validate_connector(&self.tenant, &self.binding, &self.allowed_hosts)
            .await
            .map_err(|e| Problems::one("config", format!("{}: {}", e.code, e.message)))
    }
}

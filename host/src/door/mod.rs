//! The ingest door: what happens to a parsed event between "it is a valid
//! CloudEvent" and "it is in the log".
//!
//! - **Schemas** ([`registry`], [`schema`], [`compat`]): each bus may
//!   register JSON Schemas of its events' payloads, selected by `source` and
//!   `type` or by the event's `dataschema`. In `enforce` mode an event that
//!   does not conform is refused with every violation and its path; in
//!   `warn` mode it is accepted, tagged with the `schemaviolation`
//!   extension and counted; `off` only registers.
//! - **Discovery** ([`discovery`]): buses with `schema_discovery` learn a
//!   schema per (`source`, `type`) from what they accept.
//! - **Deduplication** ([`dedup`]): buses with a `dedup_window_s` accept an
//!   event whose (`source`, `id`) they accepted within the window as a
//!   success, without storing or routing it again. The check and the append
//!   are one store step ([`DedupLog`]); a bounded in-memory cache in front
//!   answers repeated duplicates without asking the store.
//!
//! Only the HTTP ingest endpoints pass through here: events a `bus` target
//! forwards and events a replay appends go to the log directly, keep their
//! ids, and are never dropped as duplicates.
//!
//! The door reads each bus's settings through [`BusDirectory`] (the
//! catalog implements it), so it needs nothing from the control plane.

pub mod compat;
pub mod dedup;
pub mod discovery;
pub mod registry;
pub mod schema;

use self::dedup::FrontCache;
use self::discovery::Discovery;
use self::registry::{Registered, Registry};
use self::schema::{Mode, Violation};
use crate::clock::{Millis, SharedClock};
use crate::event::StoredEvent;
use crate::resource::Problems;
use crate::store::{
    AdmittedEvent, Appended, Dedup, DedupLog, EventLog, HeadHint, NewEvent, SchemaStore,
    StoreError, StoreResult,
};
use crate::telemetry;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The largest deduplication window (one day).
pub const MAX_DEDUP_WINDOW_S: u32 = 86_400;

/// The extension a `warn`-mode schema adds to a non-conforming event.
pub const VIOLATION_EXTENSION: &str = "schemaviolation";

/// What the door needs to know about a bus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorSettings {
    /// Deduplication window in seconds (0: off).
    pub dedup_window_s: u32,
    /// Whether schemas are inferred from accepted events.
    pub schema_discovery: bool,
}

/// Where the door finds a bus's settings.
pub trait BusDirectory: Send + Sync + 'static {
    /// The bus's settings, if the tenant has it.
    fn door_settings(&self, tenant: &str, bus: &str) -> Option<DoorSettings>;
}

/// Why a door call did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    /// Something named does not exist (for this tenant).
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The input is malformed; every problem is listed.
    #[error("{problems}")]
    Invalid {
        /// The error code.
        code: &'static str,
        /// What is wrong where.
        problems: Problems,
    },
    /// The change conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// What is in the way.
        message: String,
        /// The input at fault.
        field: Option<String>,
    },
    /// A new version fails the compatibility check against the previous one.
    #[error("not compatible with version {previous}: {problems}")]
    Incompatible {
        /// The version it was checked against.
        previous: u32,
        /// Every incompatible change, at its place in the new schema.
        problems: Problems,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event refused by an `enforce`-mode schema.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaRejection {
    /// The schema, as `name@version`.
    pub schema: String,
    /// Every violation.
    pub violations: Vec<Violation>,
}

impl SchemaRejection {
    /// The human sentence of the error answer.
    pub fn message(&self) -> String {
        let first = &self.violations[0];
        let more = match self.violations.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        format!(
            "the event does not conform to schema {}: {}: {}{more}",
            self.schema, first.path, first.message
        )
    }

    /// The path of the first violation (the answer's `field`).
    pub fn field(&self) -> &str {
        &self.violations[0].path
    }
}

/// The ingest door. Shared as `Arc<Door>`.
pub struct Door {
    /// Registered schemas.
    pub registry: Registry,
    /// Inferred schemas.
    pub discovery: Discovery,
    buses: Arc<dyn BusDirectory>,
    log: Arc<dyn EventLog>,
    dedup: Arc<dyn DedupLog>,
    front: FrontCache,
    clock: SharedClock,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door").finish_non_exhaustive()
    }
}

impl Door {
    /// A door over the stores, reading bus settings from `buses`.
    pub fn new(
        buses: Arc<dyn BusDirectory>,
        log: Arc<dyn EventLog>,
        dedup: Arc<dyn DedupLog>,
        schemas: Arc<dyn SchemaStore>,
        clock: SharedClock,
    ) -> Self {
        Self {
            registry: Registry::new(schemas.clone(), clock.clone()),
            discovery: Discovery::new(schemas, clock.clone()),
            buses,
            log,
            dedup,
            front: FrontCache::new(dedup::FRONT_CACHE_ENTRIES),
            clock,
        }
    }

    /// Checks an event against its bus's schemas: `Err` when an
    /// `enforce`-mode schema refuses it; a `warn`-mode violation tags it
    /// (`schemaviolation`) and counts it.
    pub fn check(
        &self,
        tenant: &str,
        bus: &str,
        event: &mut StoredEvent,
    ) -> Result<(), SchemaRejection> {
        // Most buses have no schema: their events' objects are never built.
        if !self.registry.has_schemas(tenant, bus) {
            return Ok(());
        }
        let Some(verdict) = self.registry.check(tenant, bus, event.event()) else {
            return Ok(());
        };
        if verdict.violations.is_empty() {
            return Ok(());
        }
        let schema = &verdict.schema;
        telemetry::schema_violation(tenant, bus, &schema.name, schema.spec.mode.as_str());
        match schema.spec.mode {
            Mode::Enforce => Err(SchemaRejection {
                schema: schema.label(),
                violations: verdict.violations,
            }),
            Mode::Warn | Mode::Off => {
                let mut tagged = event.clone().into_event();
                tagged.as_map_mut().insert(
                    VIOLATION_EXTENSION.into(),
                    Value::String(tag(schema, &verdict.violations)),
                );
                *event = StoredEvent::of(tagged);
                Ok(())
            }
        }
    }

    /// Appends accepted events (each with the bus it was sent to), dropping
    /// those a bus's window says it already has, and learns from the
    /// appended ones on buses with discovery. Returns, per event, whether
    /// it was a duplicate. `Ok` means committed.
    pub async fn admit(
        &self,
        tenant: &str,
        events: &[(&str, &StoredEvent)],
        now: Millis,
    ) -> StoreResult<Vec<bool>> {
        let settings: Vec<DoorSettings> = events
            .iter()
            .map(|(bus, _)| self.buses.door_settings(tenant, bus).unwrap_or_default())
            .collect();
        let new_event = |bus: &str, event: &StoredEvent| NewEvent {
            tenant: tenant.to_owned(),
            bus: bus.to_owned(),
            event_id: event.id().to_owned(),
            body: event.json().clone(),
            ingested_ms: now,
            head: HeadHint(event.head()),
            ..Default::default()
        };
        let duplicates = if settings.iter().all(|s| s.dedup_window_s == 0) {
            let batch = events.iter().map(|(bus, e)| new_event(bus, e)).collect();
            self.log.append(batch).await?;
            vec![false; events.len()]
        } else {
            self.append_deduplicated(tenant, events, &settings, now, new_event)
                .await?
        };
        let n = duplicates.iter().filter(|d| **d).count();
        if n > 0 {
            telemetry::duplicates(tenant, n as u64);
        }
        for (((bus, event), s), duplicate) in events.iter().zip(&settings).zip(&duplicates) {
            if s.schema_discovery && !*duplicate {
                let event = event.event();
                if let Some(data) = schema::subject(event) {
                    self.discovery
                        .observe(tenant, bus, event.source(), event.event_type(), data);
                }
            }
        }
        Ok(duplicates)
    }

    async fn append_deduplicated(
        &self,
        tenant: &str,
        events: &[(&str, &StoredEvent)],
        settings: &[DoorSettings],
        now: Millis,
        new_event: impl Fn(&str, &StoredEvent) -> NewEvent,
    ) -> StoreResult<Vec<bool>> {
        let mut duplicates = vec![false; events.len()];
        let mut batch = Vec::with_capacity(events.len());
        let mut sent = Vec::with_capacity(events.len());
        for (i, ((bus, event), s)) in events.iter().zip(settings).enumerate() {
            let dedup = (s.dedup_window_s > 0).then(|| {
                // An event without a head (a `replayname` that is not a
                // string) still has a source: its object says.
                let head = event.head();
                let source = match &head {
                    Some(head) => head.source.as_str(),
                    None => event.event().source(),
                };
                Dedup {
                    key: dedup::key(tenant, bus, source, event.id()),
                    window_ms: i64::from(s.dedup_window_s) * 1000,
                }
            });
            // The front cache answers repeated duplicates without the store.
            if let Some(d) = &dedup
                && self.front.seen_within(&d.key, now, d.window_ms)
            {
                duplicates[i] = true;
                continue;
            }
            batch.push(AdmittedEvent {
                event: new_event(bus, event),
                dedup,
            });
            sent.push(i);
        }
        if batch.is_empty() {
            return Ok(duplicates);
        }
        let keys: Vec<Option<Dedup>> = batch.iter().map(|a| a.dedup).collect();
        let answers = self.dedup.append_deduplicated(batch).await?;
        for ((i, answer), key) in sent.into_iter().zip(answers).zip(keys) {
            match answer {
                Appended::New => {
                    if let Some(d) = key {
                        self.front.accepted(d.key, now);
                    }
                }
                Appended::Duplicate => duplicates[i] = true,
            }
        }
        Ok(duplicates)
    }

    /// A deleted bus: its schemas (registered and discovered) go.
    pub async fn forget_bus(&self, tenant: &str, bus: &str) -> Result<(), StoreError> {
        self.discovery.forget_bus(tenant, bus);
        self.registry.forget_bus(tenant, bus).await
    }

    /// Background upkeep until shutdown: writes discovered schemas every
    /// few seconds (and once more at shutdown) and prunes expired
    /// deduplication keys every minute.
    pub async fn run_upkeep(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut rounds: u32 = 0;
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                _ = shutdown.changed() => true,
            };
            if let Err(e) = self.discovery.flush(None).await {
                tracing::warn!(error = %e, "cannot write discovered schemas; will retry");
            }
            if stop {
                return;
            }
            rounds = rounds.wrapping_add(1);
            if rounds.is_multiple_of(30) {
                match self.dedup.prune_dedup_keys(self.clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(pruned = n, "pruned expired deduplication keys"),
                    Err(e) => tracing::warn!(error = %e, "cannot prune deduplication keys"),
                }
            }
        }
    }
}

/// The `schemaviolation` value: the schema and the first violation, short.
fn tag(schema: &Registered, violations: &[Violation]) -> String {
    let first = &violations[0];
    let more = match violations.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    let mut text = format!(
        "{}: {}: {}{more}",
        schema.label(),
        first.path,
        first.message
    );
    if text.len() > 256 {
        let mut cut = 255;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

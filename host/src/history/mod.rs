//! History: what the bus remembers after an event is delivered.
//!
//! - [`table`]: per bus, whether it traces events and which archives take
//!   them (the control plane's catalog answers [`HistoryTable`]);
//! - [`stamp`]: the event log as ingest and `bus` targets see it — each
//!   appended event is stamped with the archives that take it, so the store
//!   writes the copies in the same commit;
//! - [`trace`]: the per-event trace as the router and the delivery engine
//!   build it ([`EventTrace`], recorded when the event is routed) and the
//!   batched writer of later facts ([`TraceSink`]);
//! - [`replay`]: the replayer — archived windows sent again in their
//!   original order, in the background, under per-tenant limits, resuming
//!   after a restart;
//! - [`retention`]: the background sweep that expires archive contents and
//!   traces in bounded chunks, and removes deleted archives' contents.
//!
//! The module sits above the store and the pattern matcher and below the
//! delivery engine and the router, which record into it.

pub mod lag;
pub mod replay;
pub mod retention;
pub mod stamp;
pub mod table;
pub mod trace;

pub use self::lag::RoutingLag;
pub use self::replay::{ReplayError, ReplayLimits, Replayer};
pub use self::retention::RetentionSettings;
pub use self::table::{ArchiveEntry, BusHistory, HistoryTable};
pub use self::trace::{EventTrace, TargetSlot, TraceSink};

use crate::store::{Archives, Replays, Traces};
use std::sync::Arc;

/// What the history API works with.
#[derive(Clone)]
pub struct HistoryServices {
    /// Archive contents.
    pub archives: Arc<dyn Archives>,
    /// Traces.
    pub traces: Arc<dyn Traces>,
    /// Replay records.
    pub replays: Arc<dyn Replays>,
    /// Runs replays.
    pub replayer: Arc<Replayer>,
    /// Trace facts (redrives).
    pub sink: TraceSink,
}

impl std::fmt::Debug for HistoryServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryServices").finish_non_exhaustive()
    }
}

/// History settings, from `[history]`.
#[derive(Clone, Debug)]
pub struct HistorySettings {
    /// Trace retention and the sweep.
    pub retention: RetentionSettings,
    /// Replay limits per tenant.
    pub replays: ReplayLimits,
}

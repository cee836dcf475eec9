//! NATS JetStream backend: every store interface on streams of a NATS
//! cluster, so that several bus nodes share one deployment.
//!
//! (The design is described in full below, after the code map.)
//!
//! | file                 | interface        | JetStream objects                               |
//! |----------------------|------------------|-------------------------------------------------|
//! | [`config`]           | `ConfigStore`    | stream `P_CONFIG` (a key/value table, watched)  |
//! | [`log`]              | `EventLog`       | stream `P_LOG`, durable pull consumer `router`  |
//! | [`jobs`]             | `DeliveryJobs`   | stream `P_JOBS` (work queue), consumer `workers`|
//! | [`dead_letters`]     | `DeadLetters`    | stream `P_DLQ`                                  |
//! | [`queues`]           | `Queues`         | streams `P_QUEUES` + `P_QSTATE` (receipts)      |
//! | [`blobs`]            | `Blobs`          | object store `P_PLUGINS` (plugin components)    |
//! | [`dedup`]            | `DedupLog`       | table `P_DEDUP` (keys, compare-and-set)         |
//! | [`jobs`] (chains)    | `DeliveryJobs`   | a subject per chain in `P_JOBS`, table `P_CHAINS`|
//! | [`schemas`]          | `SchemaStore`    | table `P_SCHEMAS`                               |
//! | [`archives`]         | `Archives`       | stream `P_ARCHIVE`, a subject per archive       |
//! | [`traces`]           | `Traces`         | table `P_TRACES`                                |
//! | [`replays`]          | `Replays`        | table `P_REPLAYS`                               |
//! | `table`              | (helper)         | a key/value table with compare-and-set          |
//!
//! `P` is the deployment's prefix (default `BUSBAR`; the subjects use it in
//! lower case): several deployments — or every test — share one cluster
//! under different prefixes.
//!
//! # Subjects: per tenant and bus
//!
//! Every subject carries the tenant (and, where there is one, the bus):
//! `busbar.log.<tenant>.<bus>`, `busbar.jobs.<tenant>.<bus>`,
//! `busbar.dlq.<tenant>.<bus>.<rule>.<target>`, `busbar.queue.<tenant>.<queue>`,
//! `busbar.cfg.r.<tenant>.<kind>.<name>`. Names are escaped into one subject
//! token each (`token`), so a name with a dot stays one token. This is
//! what makes a tenant's data addressable: listing and filtering are
//! subject filters the server answers from its subject index, and deleting
//! a tenant is one purge per stream with the filter `*.*.<tenant>.>`.
//!
//! Streams are per *kind*, not per tenant: a stream is a Raft group on a
//! cluster, and thousands of tenants must not mean thousands of Raft
//! groups. Isolation between tenants is where the bus does its work:
//! routing is fast and shared (one consumer, see below), deliveries have
//! per-target in-flight caps in the engine, and retries are scheduled by
//! due time, not by arrival, so one tenant's failing target does not hold
//! back another tenant's retries.
//!
//! # Durability: what an acknowledgement means
//!
//! Every write awaits the stream's PubAck before it returns `Ok`, so a 2xx
//! from the bus means the JetStream publish was acknowledged:
//!
//! - **R1** (`replicas = 1`): the one server has the message. A crash of
//!   that server loses nothing once its file is synced; until it is, a
//!   power loss can.
//! - **R3** (`replicas = 3`, the production setting): the PubAck comes after
//!   a quorum (2 of 3) has the message in its Raft log. One server can die
//!   (process or machine) without losing an acknowledged write.
//! - **`sync_interval`**: by default nats-server fsyncs its files every 2
//!   minutes. An acknowledged message is then in the page cache of a
//!   quorum, which survives process crashes but not a simultaneous power
//!   loss of the quorum (Jepsen, Dec 2025, lost acknowledged writes exactly
//!   so). With `sync_interval: always` every write is fsynced before the
//!   PubAck: slower, but an acknowledgement survives power loss too. The
//!   backend's tests run with `always`; a deployment chooses per its risk.
//!
//! Publishes carry `Nats-Msg-Id`: a retry of the same write within the
//! stream's duplicate window (2 minutes) is stored once. Acks that matter
//! — the routing consumer's, a job's end — are double acks (the server
//! confirms them), so `Ok` means the server has them.
//!
//! # Time: server ownership, application clock
//!
//! Due times, leases and queue visibility follow the bus's
//! [`Clock`](crate::clock::Clock), not the server's timers, because they
//! are the retry policy's decisions (and tests run them on virtual time).
//! JetStream's own timers are only the backstop that hands work of a dead
//! node to another: `AckWait` (30 s) on the routing and job consumers,
//! kept from firing for a live node by in-progress acks (`+WPI`) every
//! `AckWait/3` for everything the node holds. JetStream's consumer
//! `BackOff` is not used: it silently replaces `AckWait`.
//!
//! # Consumers, in-flight caps, acks
//!
//! Pull consumers with explicit acks throughout; each shared one (`router`
//! on the log, `workers` on the jobs) is durable and shared by every node,
//! so the server spreads the work and remembers progress. The routing
//! consumer's `max_ack_pending` (`log_max_in_flight`) caps what all nodes
//! hold unrouted. Per-target in-flight caps stay in the delivery engine,
//! which sees every attempt; a consumer per target would mean a consumer
//! per rule target (thousands), each polled. A clean shutdown naks what
//! the node holds, in sequence order, so it is redelivered at once.
//!
//! # Retention and deleting a tenant
//!
//! `log_max_age` / `log_max_bytes` bound the log (besides `prune`), and
//! `dead_letter_max_age` the dead letters; jobs leave their work-queue
//! stream when acked, queue messages when acked. A tenant's data is every
//! message under `*.*.<tenant>.>` (config: `cfg.*.<tenant>.>` for
//! resources): one filtered purge per stream deletes it.
//!
//! # Sample server settings
//!
//! Every node of a 3-node cluster, `replicas = 3`:
//!
//! ```text
//! server_name: n1                     # n2, n3
//! listen: 0.0.0.0:4222
//! jetstream { store_dir: /var/lib/nats, sync_interval: always }   # or omit: 2 min
//! cluster { name: busbar, listen: 0.0.0.0:6222,
//!           routes: [nats-route://n1:6222, nats-route://n2:6222, nats-route://n3:6222] }
//! ```
//!
//! `sync_interval: always` + R3: an acknowledged event survives the loss of
//! one server, including power loss. Default interval + R3: it survives
//! any one server's crash, not a power loss of two at once. R1 with
//! `always`: it survives a restart of the server, not the loss of its disk.
//!
//! # Where the interfaces do not fit JetStream well
//!
//! - `DeadLetters::list_dead_letters` is newest first with `before`
//!   paging; JetStream reads forward only, so a page walks the tenant's
//!   matching letters (see [`dead_letters`]). Paging oldest-first with an
//!   `after` cursor would be one request per page.
//! - `LogConsumer::ack` tokens and `JobLease` are node-local here (a lease
//!   is a token in the holding node's pool): an ack or retry must come from
//!   the node that leased, which the engine does. `ack_job` with a lease
//!   from before a restart does nothing (the job comes back after
//!   `AckWait`, so it may be attempted once more).
//! - `LogConsumer` ("one consumer per process") is a share of a cluster-wide
//!   consumer; `in_flight` counts this node's share only.
//!
//! - History reads (archive stats and windows, trace search and expiry)
//!   walk the matching messages with one leader read each and order them
//!   in the node, because they follow the bus's clock (ingest time), not
//!   the server's: exact, and fine up to thousands of messages per call.
//! - Deduplication, chains and replays combine a table write with a stream
//!   publish, which JetStream cannot commit together; each is ordered so
//!   that a crash in between is repaired by a repeated publish with the
//!   same `Nats-Msg-Id` (see [`dedup`], [`jobs`], [`replays`]), which
//!   holds within the streams' 2-minute duplicate window.
//!
//! Details per interface are in each file's documentation.

pub mod archives;
pub mod blobs;
pub mod config;
pub mod dead_letters;
pub mod dedup;
pub mod jobs;
pub mod log;
pub mod queues;
pub mod replays;
pub mod schemas;
mod table;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub mod traces;

use super::{Health, StoreError, StoreResult};
use crate::clock::SharedClock;
use async_nats::jetstream::{self, stream};
use bytes::{Bytes, BytesMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A stream handle (without cached info: every read asks the server).
pub(crate) type JsStream = stream::Stream<()>;

/// How to reach the cluster and how to lay out the bus's data on it.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:port`); any reachable one will do.
    pub urls: Vec<String>,
    /// Names this deployment's streams (`BUSBAR_LOG`, ...) and subjects
    /// (`busbar.log...`). Letters, digits, `_` and `-`.
    pub prefix: String,
    /// Replicas of every stream: 1 on a single server, 3 on a cluster.
    pub replicas: usize,
    /// How long the log keeps events at most (`None`: until pruned).
    pub log_max_age: Option<Duration>,
    /// How many bytes the log keeps at most (`None`: no limit). The oldest
    /// go first; routing that falls that far behind loses events, so size it
    /// generously.
    pub log_max_bytes: Option<i64>,
    /// How long dead letters are kept at most (`None`: until deleted).
    pub dead_letter_max_age: Option<Duration>,
    /// How long connecting may take before start-up fails.
    pub connect_timeout: Duration,
    /// How long start-up waits, once connected, for JetStream to accept
    /// the deployment's streams (a cluster that is starting has no meta
    /// leader for a few seconds).
    pub setup_timeout: Duration,
    /// How long one request (a publish's ack, an API call) may take before
    /// the operation fails as unavailable.
    pub request_timeout: Duration,
    /// The server-side backstop for work a node holds (routing entries,
    /// jobs): a node that stops sending in-progress acks for this long is
    /// presumed dead and its work goes to another node.
    pub ack_wait: Duration,
    /// Routing entries handed out and not yet acknowledged, across all
    /// nodes (the routing consumer's `max_ack_pending`).
    pub log_max_in_flight: i64,
    /// Jobs due further ahead than this are handed back to the server with
    /// a delay instead of waiting in a node's memory.
    pub hold_horizon: Duration,
    /// Tracks the clean-shutdown work of dropped handles (naks of held
    /// messages), so a restart in the same process can wait for it.
    pub drains: Arc<Drains>,
    /// How this node names its connection (server monitoring shows it).
    pub client_name: String,
    /// How to authenticate, if the servers require it.
    pub credentials: Option<NatsCredentials>,
    /// A PEM file of CA certificates to trust for `tls://` servers (besides
    /// the system's).
    pub tls_ca_file: Option<PathBuf>,
}

/// How a node authenticates to the NATS servers. (`Debug` hides the secrets.)
#[derive(Clone)]
pub enum NatsCredentials {
    /// A user name and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
        }
    }
}

impl NatsOptions {
    /// Defaults for the given server URLs (comma-separated allowed).
    pub fn new(urls: &str) -> Self {
        Self {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            prefix: "BUSBAR".into(),
            replicas: 1,
            log_max_age: None,
            log_max_bytes: None,
            dead_letter_max_age: None,
            connect_timeout: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            log_max_in_flight: 20_000,
            hold_horizon: Duration::from_secs(10),
            drains: Arc::default(),
            client_name: "busbar".into(),
            credentials: None,
            tls_ca_file: None,
        }
    }
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The options are unusable.
    #[error("invalid NATS store options: {0}")]
    Invalid(String),
    /// No server answered in time.
    #[error("cannot connect to NATS at {urls} within {timeout:?}: {reason}")]
    Unreachable {
        /// The URLs tried.
        urls: String,
        /// The connect timeout.
        timeout: Duration,
        /// What failed.
        reason: String,
    },
    /// The servers answered but JetStream refused the setup.
    #[error("cannot set up JetStream streams: {0}")]
    Setup(String),
}

/// Background work started by dropped handles (naks that hand held work
/// back), which a clean restart in the same process waits for.
#[derive(Debug, Default)]
pub struct Drains(Mutex<Vec<JoinHandle<()>>>);

impl Drains {
    fn push(&self, task: JoinHandle<()>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(task);
    }

    /// Waits until every drain started so far has finished.
    pub async fn wait(&self) {
        let tasks = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The NATS JetStream store. Cheap to clone (clones share the connection).
#[derive(Clone, Debug)]
pub struct NatsStore {
    inner: Arc<Shared>,
}

/// What every interface's code shares.
#[derive(Debug)]
pub(crate) struct Shared {
    client: async_nats::Client,
    js: jetstream::Context,
    clock: SharedClock,
    options: NatsOptions,
    /// Subject prefix (the prefix in lower case).
    sub: String,
    log: JsStream,
    jobs: JsStream,
    dlq: JsStream,
    queues: JsStream,
    config: table::Table,
    qstate: table::Table,
    /// Archive copies (see [`archives`]).
    archive: JsStream,
    /// Deduplication keys (see [`dedup`]).
    dedup: table::Table,
    /// FIFO chains' last scheduled slot and head state (see [`jobs`]).
    chains: table::Table,
    /// Registered and discovered schemas (see [`schemas`]).
    schemas: table::Table,
    /// Per-event traces and facts waiting for them (see [`traces`]).
    traces: table::Table,
    /// Replay records (see [`replays`]).
    replays: table::Table,
    /// Plugin components (an object store).
    plugins: blobs::NatsBlobs,
    /// What the last reachability probe found (see [`NatsStore::health`]).
    probe: Arc<Mutex<Result<(), String>>>,
    /// Counts (re)connections: a feed that may have lost its server-side
    /// state across one ends, so its reader reloads.
    reconnects: tokio::sync::watch::Sender<u64>,
    job_pool: jobs::Pool,
    /// Everything whose ack subject must get `+WPI` every `ack_wait / 3`.
    holders: Mutex<Vec<Weak<dyn Holder>>>,
}

/// Holds JetStream messages unacknowledged (work in progress).
pub(crate) trait Holder: Send + Sync + std::fmt::Debug {
    /// The ack subjects of every message held now.
    fn held_replies(&self) -> Vec<String>;
}

impl NatsStore {
    /// Connects and creates (or updates) the streams. Fails within
    /// `connect_timeout` (plus one request) when no server answers.
    pub async fn connect(options: NatsOptions, clock: SharedClock) -> Result<Self, ConnectError> {
        if options.urls.is_empty() {
            return Err(ConnectError::Invalid("no server URL".into()));
        }
        if options.prefix.is_empty()
            || !options
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConnectError::Invalid(format!(
                "prefix {:?}: use letters, digits, '_' and '-'",
                options.prefix
            )));
        }
        if !(1..=5).contains(&options.replicas) {
            return Err(ConnectError::Invalid(format!(
                "replicas {}: use 1 to 5 (3 on a cluster)",
                options.replicas
            )));
        }
        let urls = options.urls.join(",");
        let unreachable = |reason: String| ConnectError::Unreachable {
            urls: urls.clone(),
            timeout: options.connect_timeout,
            reason,
        };
        let addrs = options
            .urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConnectError::Invalid(format!("server URL: {e}")))?;
        let (reconnects, _) = tokio::sync::watch::channel(0u64);
        let on_event = reconnects.clone();
        let mut connect = async_nats::ConnectOptions::new()
            .name(&options.client_name)
            .event_callback(move |event| {
                match &event {
                    async_nats::Event::Connected => {
                        tracing::info!("connected to NATS");
                        on_event.send_modify(|n| *n += 1);
                    }
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    other => tracing::debug!(event = %other, "NATS connection event"),
                }
                std::future::ready(())
            })
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            // Reconnect forever, at most a second apart: a node comes back
            // by itself soon after the cluster does.
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(2u64.saturating_pow(attempts.min(20) as u32))
                    .min(RECONNECT_MAX)
            });
        match &options.credentials {
            Some(NatsCredentials::UserPassword { user, password }) => {
                connect = connect.user_and_password(user.clone(), password.clone());
            }
            Some(NatsCredentials::Token(token)) => connect = connect.token(token.clone()),
            None => {}
        }
        if let Some(ca) = &options.tls_ca_file {
            connect = connect.add_root_certificates(ca.clone());
        }
        let connect = connect.connect(addrs);
        let client = tokio::time::timeout(options.connect_timeout, connect)
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .build(client.clone());
        // A cluster that is just starting (no meta leader yet, too few
        // peers for R3) refuses the setup for a moment: wait (asking
        // briefly) until JetStream answers, then set up, trying again
        // until `setup_timeout` runs out.
        let deadline = tokio::time::Instant::now() + options.setup_timeout;
        loop {
            let answer = tokio::time::timeout(PROBE_EVERY * 2, js.query_account()).await;
            match answer {
                Ok(Ok(_)) => break,
                _ if tokio::time::Instant::now() >= deadline => {
                    let reason = match answer {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".into(),
                    };
                    return Err(ConnectError::Setup(format!(
                        "JetStream at {urls} is not available: {reason}"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let Objects {
            sub,
            log,
            jobs,
            dlq,
            queues,
            config,
            qstate,
            archive,
            dedup,
            chains,
            schemas,
            traces,
            replays,
            plugins,
        } = loop {
            // Boxed: the setup future is large, and a caller polling
            // `connect` inline (a test on a 2 MB thread) would carry it.
            match Box::pin(set_up(&client, &js, &options)).await {
                Ok(objects) => break objects,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "JetStream setup refused; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let inner = Arc::new(Shared {
            client,
            js,
            clock,
            sub,
            log,
            jobs,
            dlq,
            queues,
            config,
            qstate,
            archive,
            dedup,
            chains,
            schemas,
            traces,
            replays,
            plugins,
            probe: Arc::new(Mutex::new(Ok(()))),
            reconnects,
            job_pool: jobs::Pool::default(),
            holders: Mutex::new(Vec::new()),
            options,
        });
        tokio::spawn(heartbeat(Arc::downgrade(&inner)));
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The connection (for health checks).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The shared plugin components, as a handle that does not keep the
    /// rest of the store alive (the plugin host holds it for as long as the
    /// process runs).
    pub fn blobs(&self) -> Arc<dyn super::Blobs> {
        Arc::new(self.inner.plugins.clone())
    }

    /// Whether this node can write to JetStream now: connected, and the
    /// last probe (every [`PROBE_EVERY`]) got an answer from the log
    /// stream's leader — so a cluster without a quorum is "not ready" too.
    pub fn health(&self) -> Arc<dyn Health> {
        Arc::new(NatsHealth {
            client: self.inner.client.clone(),
            probe: self.inner.probe.clone(),
        })
    }
}

/// Creates a stream, or updates it when it exists with another
/// configuration. Creating first (rather than updating first) is what lets
/// several nodes that start together set up a fresh deployment at once:
/// an identical create is answered at once, while updates of a stream being
/// created concurrently were seen to wait out the request timeout.
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    config: &stream::Config,
    timeout: Duration,
) -> Result<(), String> {
    let named = |e: &dyn std::fmt::Display| format!("stream {}: {e}", config.name);
    let created = tokio::time::timeout(timeout, js.create_stream(config.clone()))
        .await
        .map_err(|_| named(&"timed out"))?;
    match created {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) =>
        {
            tokio::time::timeout(timeout, js.update_stream(config.clone()))
                .await
                .map_err(|_| named(&"timed out"))?
                .map(|_| ())
                .map_err(|e| named(&e))
        }
        Err(e) => Err(named(&e)),
    }
}

/// The streams, tables and bucket of a deployment.
struct Objects {
    sub: String,
    log: JsStream,
    jobs: JsStream,
    dlq: JsStream,
    queues: JsStream,
    config: table::Table,
    qstate: table::Table,
    archive: JsStream,
    dedup: table::Table,
    chains: table::Table,
    schemas: table::Table,
    traces: table::Table,
    replays: table::Table,
    plugins: blobs::NatsBlobs,
}

/// Creates (or updates) the deployment's streams, tables and bucket.
async fn set_up(
    client: &async_nats::Client,
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<Objects, ConnectError> {
    let sub = options.prefix.to_ascii_lowercase();
    let setup = |e: String| ConnectError::Setup(e);
    let make = |kind: &str, subject: &str| stream::Config {
        name: format!("{}_{kind}", options.prefix),
        subjects: vec![format!("{sub}.{subject}.>")],
        num_replicas: options.replicas,
        duplicate_window: Duration::from_secs(120),
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let log = stream::Config {
        max_age: options.log_max_age.unwrap_or_default(),
        max_bytes: options.log_max_bytes.unwrap_or(-1),
        ..make("LOG", "log")
    };
    let jobs = stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        ..make("JOBS", "jobs")
    };
    let dlq = stream::Config {
        max_age: options.dead_letter_max_age.unwrap_or_default(),
        ..make("DLQ", "dlq")
    };
    let queues = make("QUEUES", "queue");
    let archive = make("ARCHIVE", "archive");
    let mut streams = Vec::new();
    for config in [log, jobs, dlq, queues, archive] {
        ensure_stream(js, &config, options.request_timeout * 2)
            .await
            .map_err(setup)?;
        let stream = js
            .get_stream_no_info(&config.name)
            .await
            .map_err(|e| setup(format!("stream {}: {e}", config.name)))?;
        streams.push(stream);
    }
    let config = table::Table::open(js, options, &sub, "CONFIG", "cfg")
        .await
        .map_err(setup)?;
    let config = config.track_writes();
    let qstate = table::Table::open(js, options, &sub, "QSTATE", "qv")
        .await
        .map_err(setup)?;
    let open_table = |name: &'static str, subject: &'static str| {
        table::Table::open(js, options, &sub, name, subject)
    };
    let (dedup, chains, schemas, traces, replays) = tokio::try_join!(
        open_table("DEDUP", "dedup"),
        open_table("CHAINS", "chain"),
        open_table("SCHEMAS", "schema"),
        open_table("TRACES", "trace"),
        open_table("REPLAYS", "replay"),
    )
    .map_err(setup)?;
    let plugins = blobs::open_bucket(client, js, options)
        .await
        .map_err(setup)?;
    let mut streams = streams.into_iter();
    let (Some(log), Some(jobs), Some(dlq), Some(queues), Some(archive)) = (
        streams.next(),
        streams.next(),
        streams.next(),
        streams.next(),
        streams.next(),
    ) else {
        return Err(setup("streams missing".into()));
    };
    Ok(Objects {
        sub,
        log,
        jobs,
        dlq,
        queues,
        config,
        qstate,
        archive,
        dedup,
        chains,
        schemas,
        traces,
        replays,
        plugins,
    })
}

/// Longest pause between two reconnect attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How often reachability is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// [`NatsStore::health`].
struct NatsHealth {
    client: async_nats::Client,
    probe: Arc<Mutex<Result<(), String>>>,
}

impl Health for NatsHealth {
    fn check(&self) -> Result<(), String> {
        if !matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            return Err("not connected to NATS".into());
        }
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Asks the log stream's leader for its state every [`PROBE_EVERY`] and
/// records whether it answered; ends with the store.
async fn probe(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        let outcome = match tokio::time::timeout(PROBE_EVERY * 2, s.log.get_info()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("JetStream does not answer: {e}")),
            Err(_) => Err("JetStream does not answer: timed out".to_owned()),
        };
        *s.probe.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
    }
}

/// Sends `+WPI` for every held message every `ack_wait / 3`, so the server
/// does not hand a live node's work to another; ends with the store.
async fn heartbeat(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => s.options.ack_wait / 3,
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut replies = shared.job_pool.held_replies();
        {
            let mut holders = shared.holders.lock().unwrap_or_else(|p| p.into_inner());
            holders.retain(|h| h.strong_count() > 0);
            for h in holders.iter().filter_map(Weak::upgrade) {
                replies.extend(h.held_replies());
            }
        }
        for reply in replies {
            // Fire and forget: a lost heartbeat is repeated a third of
            // AckWait later, and only a node silent for all of AckWait
            // loses its work.
            let _ = shared
                .client
                .publish(reply, Bytes::from_static(b"+WPI"))
                .await;
        }
    }
}

impl Shared {
    /// Now, on the bus's clock.
    fn now(&self) -> crate::clock::Millis {
        self.clock.now_ms()
    }

    /// Registers something that holds messages for the heartbeat.
    fn hold(&self, holder: Weak<dyn Holder>) {
        self.holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(holder);
    }

    /// A subject under the prefix: `<prefix>.<kind>.<tokens...>`.
    fn subject(&self, kind: &str, tokens: &[&str]) -> String {
        let mut s = format!("{}.{kind}", self.sub);
        for t in tokens {
            s.push('.');
            s.push_str(&token(t));
        }
        s
    }

    /// The error a failed operation reports (see [`fail`]).
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        fail(&self.client, what, e)
    }

    /// Runs `f`, failing as unavailable while disconnected or if it takes
    /// longer than the request timeout.
    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::IntoFuture<Output = Result<T, E>>,
    ) -> StoreResult<T> {
        timed(&self.client, self.options.request_timeout * 2, what, f).await
    }

    /// Publishes and awaits the stream's acknowledgement.
    async fn publish(
        &self,
        what: &str,
        subject: String,
        payload: Bytes,
        msg_id: Option<&str>,
    ) -> StoreResult<jetstream::publish::PublishAck> {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout * 2;
        loop {
            let mut publish = jetstream::message::PublishMessage::build().payload(payload.clone());
            if let Some(id) = msg_id {
                publish = publish.message_id(id);
            }
            let ack = self
                .timed(what, self.js.send_publish(subject.clone(), publish))
                .await?;
            match self.timed(what, ack).await {
                // On a cluster, a publish with the id of one still being
                // replicated is refused (409, 10158) rather than answered
                // as a duplicate: ask again once that one is through.
                Err(e)
                    if e.to_string().contains("is in process")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends an ack kind to a message's ack subject and waits for the
    /// server to confirm it (a "double ack").
    async fn ack_sync(&self, reply: String, kind: &'static [u8]) -> StoreResult<()> {
        self.timed("ack", self.client.request(reply, Bytes::from_static(kind)))
            .await
            .map(|_| ())
    }

    /// The message at `seq` or the first one after it whose subject matches
    /// `filter` (read from the stream leader: it sees every acknowledged write).
    async fn first_at_or_after(
        &self,
        stream: &JsStream,
        filter: &str,
        seq: u64,
    ) -> StoreResult<Option<jetstream::message::StreamMessage>> {
        let get = stream
            .raw_message_builder()
            .sequence(seq.max(1))
            .next_by_subject(filter)
            .send();
        self.get_or_none("read", get).await
    }

    /// The message at `seq` (from the stream leader), if it exists.
    async fn message_at(
        &self,
        stream: &JsStream,
        seq: u64,
    ) -> StoreResult<Option<jetstream::message::StreamMessage>> {
        let get = stream.raw_message_builder().sequence(seq).send();
        self.get_or_none("read", get).await
    }

    async fn get_or_none(
        &self,
        what: &str,
        get: impl std::future::Future<
            Output = Result<jetstream::message::StreamMessage, stream::RawMessageError>,
        >,
    ) -> StoreResult<Option<jetstream::message::StreamMessage>> {
        match tokio::time::timeout(self.options.request_timeout * 2, get).await {
            Ok(Ok(m)) => Ok(Some(m)),
            Ok(Err(e)) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Ok(Err(e)) => Err(self.fail(what, e)),
            Err(_) => Err(StoreError::Unavailable(format!("NATS: {what}: timed out"))),
        }
    }

    /// Deletes one message; false if it was not there.
    async fn delete_message(&self, stream: &JsStream, seq: u64) -> StoreResult<bool> {
        match tokio::time::timeout(self.options.request_timeout * 2, stream.delete_message(seq))
            .await
        {
            Ok(Ok(done)) => Ok(done),
            Ok(Err(e)) => match e.kind() {
                stream::DeleteMessageErrorKind::JetStream(err)
                    if err.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                        || err.code() == 404
                        || err.code() == 400 =>
                {
                    Ok(false)
                }
                _ => Err(self.fail("delete", e)),
            },
            Err(_) => Err(StoreError::Unavailable("NATS: delete: timed out".into())),
        }
    }

    /// Waits until a just-created consumer has a leader to answer pulls
    /// (on a cluster the first pulls would otherwise get "no responders").
    async fn await_leader(
        &self,
        consumer: &mut async_nats::jetstream::consumer::Consumer<
            async_nats::jetstream::consumer::pull::Config,
        >,
    ) -> StoreResult<()> {
        let deadline = tokio::time::Instant::now() + self.options.request_timeout * 2;
        loop {
            let info = self.timed("open a consumer", consumer.info()).await?;
            if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "NATS: the consumer has no leader".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands messages back to the server at once, when a handle is dropped
    /// (a clean shutdown), so other nodes need not wait for `AckWait`.
    fn drain(&self, mut replies: Vec<(u64, String)>) {
        if replies.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // In sequence order: the server redelivers naked messages in the
        // order of the naks, and the oldest should come back first.
        replies.sort_unstable_by_key(|(seq, _)| *seq);
        let client = self.client.clone();
        let task = runtime.spawn(async move {
            for (_, reply) in replies {
                let nak = client.request(reply, Bytes::from_static(b"-NAK"));
                let _ = tokio::time::timeout(Duration::from_secs(2), nak).await;
            }
            let _ = client.flush().await;
        });
        self.options.drains.push(task);
    }
}

/// The pulls a handle has running. Each runs in a task of its own that
/// files what it receives as held before its caller sees it, so a caller
/// that stops waiting (a shutdown cancels the router's and the retry
/// loop's waits) loses nothing: a message the server handed to a pull
/// nobody reads any more would come back only after `AckWait`. A clean
/// stop ([`Pulls::close`]) waits for the running pulls and refuses new
/// ones before it hands back what the node holds, so no pull of the
/// stopping node takes that work again.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    /// Read-held by every running pull; `true` once closed.
    closed: Arc<tokio::sync::RwLock<bool>>,
}

impl Pulls {
    /// Runs `pull` to its end in a task of its own, even if the caller
    /// stops waiting; `None` once closed (or if the task panicked).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        pull: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let open = self.closed.clone().read_owned().await;
        if *open {
            return None;
        }
        tokio::spawn(async move {
            let out = pull.await;
            drop(open);
            out
        })
        .await
        .ok()
    }

    /// Refuses new pulls and waits until the running ones have ended
    /// (each is bounded by its own wait and the request timeout).
    pub(crate) async fn close(&self) {
        *self.closed.write().await = true;
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let replies = self.job_pool.take_all();
        self.drain(replies);
    }
}

/// The error a failed operation reports: `Unavailable` when the cluster
/// cannot be reached or did not answer in time (the caller may retry and
/// must not report success), `Backend` otherwise.
///
/// async-nats has one error enum per call; what they share is that a lost
/// connection, a timeout and "no responders" (no JetStream quorum) all mean
/// "try again later", so the connection state and those outcomes decide.
fn fail(client: &async_nats::Client, what: &str, e: impl std::fmt::Display) -> StoreError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let connected = matches!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    let transient = [
        "timed out",
        "timeout",
        "no responders",
        "broken pipe",
        "disconnected",
        "connection",
        "temporarily unavailable",
        "not enough",
        "503",
        "no suitable peers",
        "leader",
        "quorum",
        "offline",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if !connected || transient {
        StoreError::Unavailable(format!("NATS: {what}: {text}"))
    } else {
        StoreError::Backend(anyhow::anyhow!("NATS: {what}: {text}"))
    }
}

/// Runs `f` on `client`'s connection: unavailable at once while it is
/// down, or when `f` takes longer than `timeout`.
async fn timed<T, E: std::fmt::Display>(
    client: &async_nats::Client,
    timeout: Duration,
    what: &str,
    f: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> StoreResult<T> {
    // Without a connection nothing can succeed: say so at once rather
    // than after the timeout (an ingest answers 503 right away).
    if !matches!(
        client.connection_state(),
        async_nats::connection::State::Connected
    ) {
        return Err(StoreError::Unavailable(format!(
            "NATS: {what}: not connected"
        )));
    }
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fail(client, what, e)),
        Err(_) => Err(StoreError::Unavailable(format!("NATS: {what}: timed out"))),
    }
}

/// Escapes a name into one subject token: letters, digits, `-` and `_`
/// stay; every other byte becomes `=XX` (hex), so `.`, `*`, `>` and spaces
/// never reach a subject, and distinct names stay distinct.
pub(crate) fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        // An empty name still needs a token; `=` alone decodes to "".
        out.push('=');
    }
    out
}

/// Reverses [`token`]; `None` if `t` is not one.
pub(crate) fn untoken(t: &str) -> Option<String> {
    if t == "=" {
        return Some(String::new());
    }
    let bytes = t.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = t.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A message body of a JSON header line and raw bytes (the event), so the
/// event is stored as it came, without escaping or base64.
fn frame(meta: &impl serde::Serialize, raw: &[u8]) -> StoreResult<Bytes> {
    let json = serde_json::to_vec(meta).map_err(|e| StoreError::Backend(e.into()))?;
    let mut out = BytesMut::with_capacity(json.len() + 1 + raw.len());
    out.extend_from_slice(&json);
    out.extend_from_slice(b"\n");
    out.extend_from_slice(raw);
    Ok(out.freeze())
}

/// Splits a [`frame`] into its header and raw bytes.
fn unframe<T: serde::de::DeserializeOwned>(payload: &Bytes) -> StoreResult<(T, Bytes)> {
    let split = payload
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| StoreError::Backend(anyhow::anyhow!("stored message has no header line")))?;
    let meta = serde_json::from_slice(&payload[..split])
        .map_err(|e| StoreError::Backend(anyhow::anyhow!("stored message header: {e}")))?;
    Ok((meta, payload.slice(split + 1..)))
}

/// A random 64-bit value (lease and receipt tokens).
fn random_u64() -> u64 {
    rand::random()
}

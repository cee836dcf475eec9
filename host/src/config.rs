//! Server configuration: defaults, then the config file, then environment
//! variables and flags (handled by the CLI), each overriding the one before.

use crate::deliver::engine::EngineConfig;
use crate::ingest::IngestLimits;
use crate::net::{EgressConfig, EgressConfigError, EgressPolicy};
use crate::pattern::PatternLimits;
use crate::plugin::{KindLimits, RuntimeConfig};
use crate::store::StoreSettings;
use crate::store::nats::{NatsCredentials, NatsOptions};
use crate::store::sqlite::Durability;
use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything `busbar serve` can be told.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory for the database (with the SQLite store) and this node's
    /// plugin files (always).
    pub data_dir: PathBuf,
    /// Where the bus keeps its state: SQLite in `data_dir` (default) or a
    /// NATS JetStream cluster shared by several nodes.
    pub store: StoreConfig,
    /// This node's name in metrics and logs (default: host name and process id).
    pub node_id: Option<String>,
    /// The admin key (plain text). When absent, the stored hash is used, or a
    /// key is generated on first start and printed once.
    pub admin_key: Option<String>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// How hard SQLite commits are synced: `normal` (survives `kill -9`) or
    /// `always` (fsync per commit, survives power loss). With NATS the
    /// servers' `sync_interval` decides instead (see the README).
    #[serde(alias = "durability")]
    pub fsync: Durability,
    /// Size and count limits on ingestion.
    pub limits: Limits,
    /// Delivery engine tuning.
    pub delivery: DeliveryConfig,
    /// Pattern limits.
    pub patterns: PatternConfig,
    /// Wasm plugin runtime settings.
    pub plugins: PluginsConfig,
    /// Non-public destinations outbound HTTP (webhooks and connectors) may
    /// reach; everything but the public internet is refused by default.
    pub egress: EgressConfig,
    /// Directory of `*.wasm` plugins loaded (and reloaded on change) for
    /// local development, as plugins of the tenant `plugins_tenant`.
    pub plugins_dir: Option<PathBuf>,
    /// The tenant that owns plugins from `plugins_dir` (created if missing).
    pub plugins_tenant: String,
    /// Traces, archives and replays.
    pub history: HistoryConfig,
}

/// `[history]`: trace retention and replay limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// How long each event's trace is kept (hours).
    pub trace_retention_hours: u64,
    /// Most traces kept; beyond it the oldest are dropped (about 2–3 KB
    /// each on disk with a 1 KB event).
    pub trace_max_events: u64,
    /// Replays one tenant may run at once.
    pub max_concurrent_replays: usize,
    /// Events per second all of one tenant's replays may append together
    /// (0: no cap).
    pub replay_rate: u32,
    /// Time between retention sweeps (milliseconds).
    pub sweep_interval_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            trace_retention_hours: 72,
            trace_max_events: 2_000_000,
            max_concurrent_replays: 10,
            replay_rate: 0,
            sweep_interval_ms: 60_000,
        }
    }
}

/// Wasm plugin runtime settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Largest component accepted for upload, in bytes.
    pub max_upload_bytes: usize,
    /// Limits for every invocation (CPU, memory, output, logs, time).
    pub limits: crate::plugin::PluginLimits,
    /// Changes to `limits` for filters only.
    pub filter_limits: crate::plugin::LimitsOverride,
    /// Changes to `limits` for transformers only.
    pub transformer_limits: crate::plugin::LimitsOverride,
    /// Changes to `limits` for connectors only (e.g. a longer `timeout_ms`
    /// for slow receivers).
    pub connector_limits: crate::plugin::LimitsOverride,
    /// Deprecated alias of `[egress] allow` (its entries are added to it,
    /// for webhooks too). It listed URL hosts connectors may reach even
    /// though they are not public, which is what `[egress] allow` entries do.
    pub allow_private_hosts: Vec<String>,
}

impl PluginsConfig {
    /// The server's limits for each plugin kind: `limits`, changed by the
    /// kind's `*_limits`. Problems are named as in the config file.
    pub fn kind_limits(&self) -> Result<crate::plugin::KindLimits, Vec<String>> {
        let named = |section: &str, problems: Vec<crate::plugin::limits::LimitError>| {
            problems
                .into_iter()
                .map(|p| format!("plugins.{section}.{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
        };
        self.limits.validate().map_err(|p| named("limits", p))?;
        let limits = crate::plugin::KindLimits::uniform(&self.limits).with(
            &crate::plugin::LimitsOverrides {
                all: Default::default(),
                filter: self.filter_limits.clone(),
                transformer: self.transformer_limits.clone(),
                connector: self.connector_limits.clone(),
            },
        );
        limits.validate().map_err(|problems| {
            problems
                .into_iter()
                .map(|p| {
                    let (kind, field) = p.field.split_once('.').unwrap_or(("", &p.field));
                    format!("plugins.{kind}_limits.{field}: {}", p.message)
                })
                .collect::<Vec<_>>()
        })?;
        Ok(limits)
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 16 * 1024 * 1024,
            limits: crate::plugin::PluginLimits::default(),
            filter_limits: Default::default(),
            transformer_limits: Default::default(),
            connector_limits: Default::default(),
            allow_private_hosts: Vec::new(),
        }
    }
}

/// `[store]`: where the bus keeps its state.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite:DIR` (one process; DIR is then the data dir) or
    /// `nats://host:port[,nats://host:port...]` (any number of nodes share
    /// the deployment; any reachable server will do). Default: SQLite in
    /// `data_dir`. `--store` sets it too.
    pub url: Option<String>,
    /// NATS: names this deployment's streams and subjects, so several
    /// deployments can share one cluster (letters, digits, `_`, `-`).
    pub prefix: String,
    /// NATS: replicas of every stream (1, or 3 on a 3-node cluster; default
    /// 1 for one URL, 3 for several).
    pub replicas: Option<usize>,
    /// NATS: how long start-up may try to connect before it fails.
    pub connect_timeout_ms: u64,
    /// NATS: how long one request (a publish's acknowledgement) may take
    /// before the operation fails as unavailable (503).
    pub request_timeout_ms: u64,
    /// NATS: how long a node may stay silent before the events and jobs it
    /// holds go to another node (it is presumed dead).
    pub ack_wait_ms: u64,
    /// NATS: user name (with `password`).
    pub user: Option<String>,
    /// NATS: password (with `user`).
    pub password: Option<String>,
    /// NATS: authentication token (instead of user and password).
    pub token: Option<String>,
    /// NATS: PEM file of CA certificates to trust for `tls://` servers.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            prefix: "BUSBAR".to_owned(),
            replicas: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
            ack_wait_ms: 30_000,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("busbar-data"),
            store: StoreConfig::default(),
            node_id: None,
            admin_key: None,
            log_format: LogFormat::Human,
            fsync: Durability::Normal,
            limits: Limits::default(),
            delivery: DeliveryConfig::default(),
            patterns: PatternConfig::default(),
            plugins: PluginsConfig::default(),
            egress: EgressConfig::default(),
            plugins_dir: None,
            plugins_tenant: "dev".to_owned(),
            history: HistoryConfig::default(),
        }
    }
}

pub use crate::telemetry::LogFormat;

/// Ingestion limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted event in bytes (serialised CloudEvents JSON); at most 1 MiB.
    pub max_event_bytes: usize,
    /// Most events in one CloudEvents batch.
    pub max_batch_entries: usize,
    /// Most entries in one `PutEvents` call.
    pub max_put_events_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 * 1024,
            max_batch_entries: 1000,
            max_put_events_entries: 10,
        }
    }
}

/// Delivery engine tuning.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Attempts in flight at once for one target; beyond this, deliveries wait
    /// in the store so a slow target never holds up the others.
    pub max_in_flight_per_target: usize,
    /// Attempts in flight at once across all targets.
    pub max_in_flight: usize,
    /// Hops through `bus` targets before an event is dead-lettered as a loop.
    pub max_hops: u32,
    /// How long routed events stay in the log (hours). On SQLite an event
    /// a stored trace refers to stays as long as that trace, and an archived
    /// event as long as its archive keeps it (archives refer to the log
    /// entry instead of copying it).
    pub log_retention_hours: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_in_flight_per_target: 256,
            max_in_flight: 4096,
            max_hops: 8,
            log_retention_hours: 1,
        }
    }
}

/// Pattern limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PatternConfig {
    /// Largest pattern in characters.
    pub max_chars: usize,
}

impl Default for PatternConfig {
    fn default() -> Self {
        Self { max_chars: 2048 }
    }
}

/// Why a configuration is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
    /// An `[egress]` entry (or one of its alias) is not an address, block or
    /// host name; each problem names its key, e.g. `egress.allow[2]`.
    #[error("invalid config: {0}")]
    Egress(#[from] EgressConfigError),
    /// A value is out of range.
    #[error("invalid config: {field}: {message}")]
    Invalid {
        /// The setting at fault.
        field: &'static str,
        /// Why.
        message: String,
    },
}

/// Everything the running parts of the bus are built with, derived from a
/// [`Config`] in one place ([`Config::runtime`]).
#[derive(Clone, Debug)]
pub struct RuntimeSettings {
    /// Ingestion limits (also what plugin outputs must meet).
    pub ingest: IngestLimits,
    /// Pattern limits.
    pub patterns: PatternLimits,
    /// Delivery engine tuning.
    pub engine: EngineConfig,
    /// Where outbound requests (webhooks, connectors) may go.
    pub egress: EgressPolicy,
    /// The Wasm sandbox.
    pub plugin_runtime: RuntimeConfig,
    /// The server's plugin limits per kind.
    pub plugin_limits: KindLimits,
    /// Most `bus` hops before an event is treated as looping.
    pub max_hops: u32,
    /// How long routed events stay in the log.
    pub log_retention: Duration,
    /// Largest request body on event endpoints (a batch may carry many events).
    pub max_request_bytes: usize,
    /// The store backend to open.
    pub store: StoreSettings,
    /// This node's name (metrics label `node`, logs, NATS connection name).
    pub node_id: String,
    /// Trace retention and replay limits.
    pub history: crate::history::HistorySettings,
}

impl Config {
    /// Checks the configuration and turns it into the settings the running
    /// parts are built with.
    pub fn runtime(&self) -> Result<RuntimeSettings, ConfigError> {
        self.validate()?;
        let ingest = IngestLimits {
            max_event_bytes: self.limits.max_event_bytes,
            max_batch_entries: self.limits.max_batch_entries,
            max_put_events_entries: self.limits.max_put_events_entries,
        };
        ingest.validate().map_err(|e| ConfigError::Invalid {
            field: match e.field {
                "max_event_bytes" => "limits.max_event_bytes",
                "max_batch_entries" => "limits.max_batch_entries",
                _ => "limits.max_put_events_entries",
            },
            message: e.reason.to_owned(),
        })?;
        let plugin_limits =
            self.plugins
                .kind_limits()
                .map_err(|problems| ConfigError::Invalid {
                    field: "plugins",
                    message: problems.join("; "),
                })?;
        let egress = self.egress_policy()?;
        let node_id = self.node_id.clone().unwrap_or_else(default_node_id);
        let mut store = self.store_settings()?;
        if let StoreSettings::Nats(options) = &mut store {
            options.client_name = format!("busbar {node_id}");
        }
        let mut plugin_runtime = RuntimeConfig::new(self.data_dir().to_owned());
        plugin_runtime.max_upload_bytes = self.plugins.max_upload_bytes;
        plugin_runtime.outbound.egress = egress.clone();
        plugin_runtime.event_limits = ingest;
        Ok(RuntimeSettings {
            patterns: PatternLimits {
                max_chars: self.patterns.max_chars,
                ..PatternLimits::default()
            },
            engine: EngineConfig {
                max_in_flight: self.delivery.max_in_flight,
                per_target_cap: self.delivery.max_in_flight_per_target,
                ..EngineConfig::default()
            },
            egress,
            plugin_runtime,
            plugin_limits,
            max_hops: self.delivery.max_hops,
            log_retention: Duration::from_secs(self.delivery.log_retention_hours * 3600),
            max_request_bytes: (self.limits.max_event_bytes * 4).max(16 * 1024 * 1024),
            ingest,
            store,
            node_id,
            history: crate::history::HistorySettings {
                retention: crate::history::RetentionSettings {
                    trace_retention: Duration::from_secs(self.history.trace_retention_hours * 3600),
                    trace_max_events: self.history.trace_max_events,
                    interval: Duration::from_millis(self.history.sweep_interval_ms),
                },
                replays: crate::history::ReplayLimits {
                    max_concurrent: self.history.max_concurrent_replays,
                    rate: (self.history.replay_rate > 0).then_some(self.history.replay_rate),
                },
            },
        })
    }

    /// The data dir in effect: the `sqlite:DIR` of `[store] url`, else `data_dir`.
    pub fn data_dir(&self) -> &Path {
        match self
            .store
            .url
            .as_deref()
            .and_then(|u| u.strip_prefix("sqlite:"))
        {
            Some(dir) if !dir.is_empty() => Path::new(dir),
            _ => &self.data_dir,
        }
    }

    /// The backend `[store]` names, checked.
    pub fn store_settings(&self) -> Result<StoreSettings, ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid { field, message };
        let store = &self.store;
        let url = match store.url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(u) => Some(u),
        };
        let Some(urls) = url.filter(|u| !u.starts_with("sqlite:")) else {
            if url == Some("sqlite:") {
                return Err(invalid(
                    "store.url",
                    "sqlite: needs a directory, e.g. sqlite:/var/lib/busbar".into(),
                ));
            }
            return Ok(StoreSettings::Sqlite {
                dir: self.data_dir().to_owned(),
                durability: self.fsync,
            });
        };
        let mut options = NatsOptions::new(urls);
        if options.urls.is_empty()
            || !options.urls.iter().all(|u| {
                ["nats://", "tls://"]
                    .iter()
                    .any(|scheme| u.starts_with(scheme))
                    && u.parse::<async_nats::ServerAddr>().is_ok()
            })
        {
            return Err(invalid(
                "store.url",
                format!("{urls:?}: use sqlite:DIR or nats://host:port[,nats://host:port...]"),
            ));
        }
        options.prefix = store.prefix.clone();
        if options.prefix.is_empty()
            || !options
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "store.prefix",
                format!("{:?}: use letters, digits, '_' and '-'", store.prefix),
            ));
        }
        options.replicas = store
            .replicas
            .unwrap_or(if options.urls.len() > 1 { 3 } else { 1 });
        if !(1..=5).contains(&options.replicas) {
            return Err(invalid("store.replicas", "must be between 1 and 5".into()));
        }
        for (field, ms) in [
            ("store.connect_timeout_ms", store.connect_timeout_ms),
            ("store.request_timeout_ms", store.request_timeout_ms),
        ] {
            if !(100..=600_000).contains(&ms) {
                return Err(invalid(field, "must be between 100 and 600000".into()));
            }
        }
        if !(1_000..=3_600_000).contains(&store.ack_wait_ms) {
            return Err(invalid(
                "store.ack_wait_ms",
                "must be between 1000 and 3600000".into(),
            ));
        }
        options.connect_timeout = Duration::from_millis(store.connect_timeout_ms);
        options.request_timeout = Duration::from_millis(store.request_timeout_ms);
        options.ack_wait = Duration::from_millis(store.ack_wait_ms);
        options.credentials = match (&store.user, &store.password, &store.token) {
            (None, None, None) => None,
            (Some(user), Some(password), None) => Some(NatsCredentials::UserPassword {
                user: user.clone(),
                password: password.clone(),
            }),
            (None, None, Some(token)) => Some(NatsCredentials::Token(token.clone())),
            _ => {
                return Err(invalid(
                    "store.user",
                    "give user and password together, or a token alone".into(),
                ));
            }
        };
        options.tls_ca_file = store.tls_ca_file.clone();
        Ok(StoreSettings::Nats(Box::new(options)))
    }

    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Checks ranges that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.to_owned(),
            })
        };
        if self.limits.max_event_bytes == 0 || self.limits.max_event_bytes > 1024 * 1024 {
            return invalid("limits.max_event_bytes", "must be between 1 and 1048576");
        }
        if self.limits.max_batch_entries == 0 {
            return invalid("limits.max_batch_entries", "must be at least 1");
        }
        if self.delivery.max_in_flight == 0 || self.delivery.max_in_flight_per_target == 0 {
            return invalid("delivery.max_in_flight", "must be at least 1");
        }
        if self.patterns.max_chars < 16 {
            return invalid("patterns.max_chars", "must be at least 16");
        }
        if self.node_id.as_deref().is_some_and(|n| {
            n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        }) {
            return invalid("node_id", "use 1 to 64 letters, digits, '-', '_' and '.'");
        }
        if self.history.trace_retention_hours == 0 {
            return invalid("history.trace_retention_hours", "must be at least 1");
        }
        if self.history.max_concurrent_replays == 0 {
            return invalid("history.max_concurrent_replays", "must be at least 1");
        }
        if self.history.sweep_interval_ms < 10 {
            return invalid("history.sweep_interval_ms", "must be at least 10");
        }
        self.egress_policy()?;
        self.store_settings()?;
        Ok(())
    }

    /// The egress policy: `[egress]`, with the deprecated
    /// `[plugins] allow_private_hosts` added to its `allow`.
    pub fn egress_policy(&self) -> Result<EgressPolicy, ConfigError> {
        let alias = (
            "plugins.allow_private_hosts",
            &self.plugins.allow_private_hosts[..],
        );
        Ok(EgressPolicy::from_config(&self.egress, &[alias])?)
    }

    /// The data dir in effect ([`Config::data_dir`]), created if needed.
    pub fn ensure_data_dir(&self) -> anyhow::Result<&Path> {
        let dir = self.data_dir();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        Ok(dir)
    }
}

/// A node name unique on this machine and readable: `<host name>-<pid>`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "busbar".to_owned());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("busbar-data"));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = toml::from_str::<Config>("listne = \"1.2.3.4:5\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
    }

    #[test]
    fn fsync_always_is_a_setting() {
        let c: Config = toml::from_str("fsync = \"always\"").unwrap();
        assert_eq!(c.fsync, Durability::Always);
        assert_eq!(Config::default().fsync, Durability::Normal);
    }

    #[test]
    fn plugin_limits_per_kind() {
        let c: Config = toml::from_str(
            "[plugins.limits]\ncpu_ms = 50\n[plugins.connector_limits]\ntimeout_ms = 60000\n",
        )
        .unwrap();
        let limits = c.plugins.kind_limits().unwrap();
        assert_eq!(
            (limits.filter.cpu_ms, limits.filter.timeout_ms),
            (50, 10_000)
        );
        assert_eq!(
            (limits.connector.cpu_ms, limits.connector.timeout_ms),
            (50, 60_000)
        );
        let c: Config = toml::from_str("[plugins.filter_limits]\ncpu_ms = 0\n").unwrap();
        assert_eq!(
            c.plugins.kind_limits().unwrap_err(),
            ["plugins.filter_limits.cpu_ms: must be between 1 and 60000"]
        );
        let c: Config = toml::from_str("[plugins.limits]\nmax_handles = 2\n").unwrap();
        assert!(c.plugins.kind_limits().unwrap_err()[0].starts_with("plugins.limits.max_handles"));
        assert!(toml::from_str::<Config>("[plugins.filter_limits]\nfuel = 1\n").is_err());
    }

    #[test]
    fn egress_is_validated_up_front_and_the_old_key_still_works() {
        let c: Config = toml::from_str(
            "[plugins]\nallow_private_hosts = [\"127.0.0.1\"]\n\
             [egress]\nallow = [\"10.0.0.0/8\", \"hooks.internal\"]\n\
             [egress.tenants.acme]\nallow = [\"192.168.0.0/16\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        let policy = c.egress_policy().unwrap();
        let all = policy.for_tenant("globex");
        assert!(all.check_address("127.0.0.1".parse().unwrap()).is_ok());
        assert!(all.check_address("10.9.9.9".parse().unwrap()).is_ok());
        assert!(all.check_address("192.168.1.1".parse().unwrap()).is_err());
        let acme = policy.for_tenant("acme");
        assert!(acme.check_address("192.168.1.1".parse().unwrap()).is_ok());
        assert!(acme.check_address("127.0.0.1".parse().unwrap()).is_ok());

        let c: Config = toml::from_str("[egress]\nallow = [\"10.0.0.0/33\"]\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid config: egress.allow[0]: \"10.0.0.0/33\" has a prefix length that is not 0 to 32"
        );
        let c: Config = toml::from_str("[plugins]\nallow_private_hosts = [\"a b\"]\n").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("plugins.allow_private_hosts[0]"), "{err}");
        assert!(toml::from_str::<Config>("[egress]\nallow_hosts = []\n").is_err());
        // Nothing is allowed by default.
        let all = Config::default()
            .egress_policy()
            .unwrap()
            .for_tenant("acme");
        assert!(all.entries().is_empty());
    }

    #[test]
    fn out_of_range_limits_are_rejected() {
        let c: Config = toml::from_str("[limits]\nmax_event_bytes = 2000000").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "limits.max_event_bytes",
                ..
            })
        ));
    }

    #[test]
    fn the_store_is_sqlite_in_the_data_dir_unless_told_otherwise() {
        let c: Config = toml::from_str("data_dir = \"/var/lib/b\"").unwrap();
        match c.runtime().unwrap().store {
            StoreSettings::Sqlite { dir, durability } => {
                assert_eq!(dir, PathBuf::from("/var/lib/b"));
                assert_eq!(durability, Durability::Normal);
            }
            other => panic!("{other:?}"),
        }
        // `sqlite:DIR` names the data dir, for plugins too.
        let c: Config = toml::from_str("[store]\nurl = \"sqlite:/srv/bus\"").unwrap();
        let settings = c.runtime().unwrap();
        assert_eq!(settings.store.describe(), "sqlite:/srv/bus");
        assert_eq!(settings.plugin_runtime.data_dir, PathBuf::from("/srv/bus"));
        assert_eq!(c.data_dir(), Path::new("/srv/bus"));
    }

    #[test]
    fn a_nats_store_takes_its_urls_and_settings_from_store() {
        let c: Config = toml::from_str(
            "node_id = \"n1\"\n[store]\nurl = \"nats://h1:4222, nats://h2:4222,nats://h3:4222\"\n\
             prefix = \"PROD\"\nack_wait_ms = 10000\nuser = \"bus\"\npassword = \"secret\"\n",
        )
        .unwrap();
        let settings = c.runtime().unwrap();
        assert_eq!(settings.node_id, "n1");
        let StoreSettings::Nats(o) = settings.store else {
            panic!("not NATS");
        };
        assert_eq!(
            o.urls,
            ["nats://h1:4222", "nats://h2:4222", "nats://h3:4222"]
        );
        assert_eq!(
            (o.prefix.as_str(), o.replicas),
            ("PROD", 3),
            "several URLs: R3"
        );
        assert_eq!(o.ack_wait, Duration::from_secs(10));
        assert_eq!(o.client_name, "busbar n1");
        let shown = format!("{:?}", o.credentials);
        assert!(
            shown.contains("bus") && !shown.contains("secret"),
            "{shown}"
        );

        let c: Config = toml::from_str("[store]\nurl = \"nats://h1:4222\"").unwrap();
        let StoreSettings::Nats(o) = c.runtime().unwrap().store else {
            panic!("not NATS");
        };
        assert_eq!(o.replicas, 1, "one URL: R1 unless told");
        assert!(!c.runtime().unwrap().node_id.is_empty());
    }

    #[test]
    fn bad_store_settings_name_their_key() {
        for (text, field) in [
            ("[store]\nurl = \"redis://x\"", "store.url"),
            ("[store]\nurl = \"sqlite:\"", "store.url"),
            (
                "[store]\nurl = \"nats://h:1\"\nprefix = \"a.b\"",
                "store.prefix",
            ),
            (
                "[store]\nurl = \"nats://h:1\"\nreplicas = 7",
                "store.replicas",
            ),
            (
                "[store]\nurl = \"nats://h:1\"\nack_wait_ms = 10",
                "store.ack_wait_ms",
            ),
            ("[store]\nurl = \"nats://h:1\"\nuser = \"u\"", "store.user"),
            (
                "[store]\nurl = \"nats://h:1\"\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"",
                "store.user",
            ),
            ("node_id = \"a b\"", "node_id"),
        ] {
            let c: Config = toml::from_str(text).unwrap();
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(toml::from_str::<Config>("[store]\nurls = []").is_err());
    }
}

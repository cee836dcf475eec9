//! `busbar serve`: wires the store, catalog, router, delivery engine and HTTP
//! API together, and shuts them down in order.

use crate::api::{self, AppState, hash_key};
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::config::Config;
use crate::deliver::engine::Engine;
use crate::deliver::http::HttpClient;
use crate::deliver::queue::QueueSignals;
use crate::ingest::IngestLimits;
use crate::pattern::PatternLimits;
use crate::plugin::registry::{PluginHost, PluginRecord};
use crate::plugin::{LimitsOverrides, PluginRuntime, RuntimeConfig};
use crate::route::router::Router;
use crate::route::{CompileContext, compile_rule};
use crate::store::sqlite::SqliteStore;
use crate::store::{ResourceKind, Store};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings key of the admin key's hash.
const ADMIN_KEY_HASH: &str = "admin_key_hash";

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The admin key, when this start generated it (shown once).
    pub generated_admin_key: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Asks every part to stop (stop accepting, finish or persist in-flight work).
    pub fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until everything has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        let http = self.http.await.context("HTTP server task")?;
        for task in self.tasks {
            let _ = task.await;
        }
        http.context("HTTP server")
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger_shutdown();
        self.wait().await
    }
}

/// Decides the admin key hash: the configured key wins; else the stored hash;
/// else a new key is generated and returned so it can be shown once.
async fn admin_key(
    store: &dyn Store,
    configured: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    if let Some(key) = configured {
        let hash = hash_key(key);
        store.put_setting(ADMIN_KEY_HASH, &hash).await?;
        return Ok((hash, None));
    }
    if let Some(hash) = store.setting(ADMIN_KEY_HASH).await? {
        return Ok((hash, None));
    }
    let key = api::generate_key();
    let hash = hash_key(&key);
    store.put_setting(ADMIN_KEY_HASH, &hash).await?;
    Ok((hash, Some(key)))
}

/// Loads tenants, keys and resources from the store into a fresh catalog.
async fn load_catalog(
    store: &dyn Store,
    http: &HttpClient,
    pattern_limits: &PatternLimits,
) -> anyhow::Result<Catalog> {
    let snapshot = store.load_catalog().await?;
    let catalog = Catalog::default();
    for t in &snapshot.tenants {
        catalog.add_tenant(&t.name, t.created_ms);
    }
    for k in &snapshot.keys {
        catalog.add_key(&k.tenant, &k.id, &k.hash, k.created_ms);
    }
    // Buses, queues and plugins first: rules refer to them.
    for r in snapshot
        .resources
        .iter()
        .filter(|r| r.kind != ResourceKind::Rule)
    {
        match r.kind {
            ResourceKind::Bus => catalog.put_bus(&r.tenant, &r.name, r.spec.clone()),
            ResourceKind::Queue => catalog.put_queue(&r.tenant, &r.name, r.spec.clone()),
            ResourceKind::Plugin => match serde_json::from_value::<PluginRecord>(r.spec.clone()) {
                Ok(record) => catalog.put_plugin(&r.tenant, record),
                Err(e) => {
                    tracing::error!(tenant = %r.tenant, plugin = %r.name, error = %e, "stored plugin record unreadable; skipped")
                }
            },
            ResourceKind::PluginLimits => {
                match serde_json::from_value::<LimitsOverrides>(r.spec.clone()) {
                    Ok(overrides) => catalog.set_plugin_limits(&r.tenant, Some(overrides)),
                    Err(e) => {
                        tracing::error!(tenant = %r.tenant, error = %e, "stored plugin limits unreadable; server defaults apply")
                    }
                }
            }
            ResourceKind::Rule => {}
        }
    }
    for r in snapshot
        .resources
        .iter()
        .filter(|r| r.kind == ResourceKind::Rule)
    {
        let Some((bus, name)) = r.name.split_once('/') else {
            continue;
        };
        let lookup = |plugin: &str| catalog.plugin(&r.tenant, plugin);
        let ctx = CompileContext {
            http,
            pattern_limits,
            plugins: &lookup,
        };
        match compile_rule(bus, name, &r.spec, &ctx) {
            Ok(rule) => {
                catalog.put_rule(&r.tenant, rule);
            }
            Err(errors) => {
                tracing::error!(tenant = %r.tenant, rule = %r.name, ?errors, "stored rule no longer compiles; skipped")
            }
        }
    }
    Ok(catalog)
}

/// Starts the bus and returns once it is listening.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    config.validate()?;
    let dir = config.ensure_data_dir()?.to_owned();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir, config.fsync)?);
    let http = HttpClient::new()?;
    let pattern_limits = PatternLimits {
        max_chars: config.patterns.max_chars,
        ..PatternLimits::default()
    };
    let catalog = Arc::new(load_catalog(store.as_ref(), &http, &pattern_limits).await?);
    let plugin_limits = config
        .plugins
        .kind_limits()
        .map_err(|problems| anyhow::anyhow!("invalid config: {}", problems.join("; ")))?;
    // One set of ingest limits: for events arriving over HTTP and for events
    // transformer plugins return.
    let ingest_limits = IngestLimits {
        max_event_bytes: config.limits.max_event_bytes,
        max_batch_entries: config.limits.max_batch_entries,
        max_put_events_entries: config.limits.max_put_events_entries,
    };
    let mut runtime_config = RuntimeConfig::new(dir.clone());
    runtime_config.event_limits = ingest_limits;
    runtime_config.max_upload_bytes = config.plugins.max_upload_bytes;
    runtime_config.outbound.allow_private = config.plugins.allow_private_hosts.clone();
    let runtime = Arc::new(PluginRuntime::new(runtime_config)?);
    let plugins = Arc::new(PluginHost::new(runtime, catalog.clone(), plugin_limits));
    let (admin_key_hash, generated_admin_key) =
        admin_key(store.as_ref(), config.admin_key.as_deref()).await?;

    let engine = Arc::new(Engine::new(
        store.clone(),
        catalog.clone(),
        plugins.clone(),
        config.delivery.max_in_flight,
        config.delivery.max_in_flight_per_target,
    ));
    let queues = Arc::new(QueueSignals::default());
    let router = Arc::new(Router {
        store: store.clone(),
        catalog: catalog.clone(),
        engine: engine.clone(),
        queues: queues.clone(),
        max_hops: config.delivery.max_hops,
        plugins: plugins.clone(),
    });
    // A batch may carry many events; still bounded so one request cannot exhaust memory.
    let max_request_bytes = (config.limits.max_event_bytes * 4).max(16 * 1024 * 1024);
    let state = Arc::new(AppState {
        store: store.clone(),
        catalog,
        engine: engine.clone(),
        queues,
        plugins,
        max_plugin_bytes: config.plugins.max_upload_bytes,
        http,
        admin_key_hash,
        ingest_limits,
        pattern_limits,
        max_request_bytes,
        metrics: crate::telemetry::metrics_handle(),
        ready: false.into(),
    });

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(dir) = &config.plugins_dir {
        tasks.push(tokio::spawn(crate::plugin::dev_dir::watch_dir(
            dir.clone(),
            config.plugins_tenant.clone(),
            store.clone(),
            state.catalog.clone(),
            state.plugins.clone(),
            shutdown_rx.clone(),
        )));
    }
    tasks.extend([
        tokio::spawn(router.run(shutdown_rx.clone())),
        tokio::spawn(engine.clone().run_retries(shutdown_rx.clone())),
        tokio::spawn(engine.run_cursor(shutdown_rx.clone())),
    ]);
    tasks.push(tokio::spawn(prune_loop(
        store,
        Duration::from_secs(config.delivery.log_retention_hours * 3600),
        shutdown_rx.clone(),
    )));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = api::router(state.clone());
    let mut stop_http = shutdown_rx.clone();
    let ready_state = state.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_http.wait_for(|stop| *stop).await;
                ready_state.ready.store(false, Ordering::Release);
            })
            .await
    });
    state.ready.store(true, Ordering::Release);
    tracing::info!(%addr, data_dir = %dir.display(), "busbar listening");
    Ok(Running {
        addr,
        generated_admin_key,
        shutdown,
        tasks,
        http,
    })
}

/// Deletes routed events past their retention, once a minute.
async fn prune_loop(
    store: Arc<dyn Store>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
        match store.prune_log(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "pruned routed events"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the log"),
        }
    }
}

/// Runs until SIGINT/SIGTERM, then shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let running = start(config).await?;
    if let Some(key) = &running.generated_admin_key {
        // Printed once: only its hash is stored.
        println!("Generated admin key (shown only once, store it safely): {key}");
    }
    println!("busbar listening on http://{}", running.addr);
    wait_for_signal().await;
    tracing::info!("shutting down: no new requests; finishing in-flight deliveries");
    running.stop().await
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

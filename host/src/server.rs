//! `busbar serve`: wires the store, catalog, router, delivery engine and HTTP
//! API together, and shuts them down in order.

use crate::api::{self, AppState};
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::control::{Catalog, ControlPlane};
use crate::deliver::TargetServices;
use crate::deliver::engine::DeliveryEngine;
use crate::deliver::http::HttpClient;
use crate::deliver::queue::QueueSignals;
use crate::door::Door;
use crate::history::replay::ReplayerParts;
use crate::history::retention::Sweeper;
use crate::history::stamp::StampingLog;
use crate::history::{HistoryServices, Replayer, RoutingLag, TraceSink};
use crate::plugin::PluginRuntime;
use crate::plugin::registry::PluginHost;
use crate::route::router::{Router, RouterHistory};
use crate::store::{DeliveryJobs, EventLog, LogConsumer};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Longest a shutdown waits for deliveries in flight to finish or be stored.
const DRAIN: Duration = Duration::from_secs(10);

/// A running server.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The admin key, when this start generated it (shown once).
    pub generated_admin_key: Option<String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    router: JoinHandle<JoinHandle<()>>,
    routing: Arc<dyn LogConsumer>,
    /// Delivery jobs, whose leases a clean stop gives back.
    jobs: Arc<dyn DeliveryJobs>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Asks every part to stop (stop accepting, finish or persist in-flight work).
    pub fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until everything has stopped: the HTTP server, the router, and
    /// (bounded) the deliveries still in flight, whose routing progress is
    /// then written.
    pub async fn wait(self) -> anyhow::Result<()> {
        let http = self.http.await.context("HTTP server task")?;
        for task in self.tasks {
            let _ = task.await;
        }
        let acks = self.router.await.context("router task")?;
        let deadline = tokio::time::Instant::now() + DRAIN;
        while self.routing.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if tokio::time::timeout(Duration::from_secs(1), acks)
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.routing.in_flight(),
                "stopped with deliveries in flight; they will be routed again after the restart"
            );
        }
        // Not left to the consumer's and the store's drops: the API state
        // and detached tasks can outlive this.
        self.routing.release().await;
        self.jobs.release().await;
        http.context("HTTP server")
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger_shutdown();
        self.wait().await
    }
}

/// Starts the bus on the system clock and returns once it is listening.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the bus reading time from `clock` (tests control time with it).
pub async fn start_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Running> {
    let settings = config.runtime()?;
    if !config.plugins.allow_private_hosts.is_empty() {
        tracing::warn!(
            "[plugins] allow_private_hosts is deprecated: its entries are added to [egress] allow, \
             for webhooks too; move them there"
        );
    }
    let dir = config.ensure_data_dir()?.to_owned();
    let stores = crate::store::open(&settings.store, clock.clone()).await?;
    let catalog = Arc::new(Catalog::default());
    // Ingest and bus targets append through this: it stamps archive copies.
    let lag = Arc::new(RoutingLag::default());
    let stamping = Arc::new(StampingLog::new(
        stores.log.clone(),
        stores.dedup.clone(),
        catalog.clone(),
        lag.clone(),
    ));
    let log: Arc<dyn EventLog> = stamping.clone();
    let (trace_sink, _trace_writer) = TraceSink::start(stores.traces.clone(), catalog.clone());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let runtime = Arc::new(PluginRuntime::new(settings.plugin_runtime.clone())?);
    let plugins = Arc::new(
        PluginHost::new(runtime, catalog.clone(), settings.plugin_limits.clone())
            .sharing(stores.blobs.clone()),
    );
    let queue_signals = Arc::new(QueueSignals::default());
    let services = TargetServices {
        http: HttpClient::keeping_idle(&settings.egress, settings.engine.per_target_cap)?,
        queues: stores.queues.clone(),
        queue_signals: queue_signals.clone(),
        log: log.clone(),
        max_hops: settings.max_hops,
        clock: clock.clone(),
        plugins: plugins.clone(),
    };
    let control = Arc::new(ControlPlane::new(
        stores.config.clone(),
        stores.queues.clone(),
        catalog.clone(),
        services,
        settings.patterns.clone(),
    ));
    // Changes other nodes make: watched from before the load, so none is missed.
    let watch = stores.config.watch().await?;
    control.load().await?;
    let door = Arc::new(Door::new(
        catalog.clone(),
        log.clone(),
        stamping,
        stores.schemas.clone(),
        clock.clone(),
    ));
    door.registry.load().await?;
    let (admin_key_hash, generated_admin_key) =
        control.admin_key(config.admin_key.as_deref()).await?;

    let engine = Arc::new(
        DeliveryEngine::new(
            stores.jobs.clone(),
            catalog.clone(),
            clock.clone(),
            settings.engine.clone(),
        )
        .with_traces(trace_sink.clone()),
    );
    let routing = stores.log.consumer().await?;
    let router = Arc::new(Router {
        routes: catalog.clone(),
        engine: engine.clone(),
        plugins: plugins.clone(),
        clock: clock.clone(),
        history: Some(RouterHistory {
            table: catalog.clone(),
            traces: stores.traces.clone(),
            lag: lag.clone(),
        }),
    });
    let replayer = Replayer::new(ReplayerParts {
        archives: stores.archives.clone(),
        replays: stores.replays.clone(),
        table: catalog.clone(),
        sink: trace_sink.clone(),
        routing: routing.clone(),
        lag,
        clock: clock.clone(),
        limits: settings.history.replays,
        shutdown: shutdown_rx.clone(),
    });
    let sweeper = Sweeper {
        table: catalog.clone(),
        archives: stores.archives.clone(),
        traces: stores.traces.clone(),
        clock: clock.clone(),
        settings: settings.history.retention.clone(),
    };
    let history = HistoryServices {
        archives: stores.archives.clone(),
        traces: stores.traces.clone(),
        replays: stores.replays.clone(),
        replayer: replayer.clone(),
        sink: trace_sink,
    };
    let state = Arc::new(AppState {
        control: control.clone(),
        catalog,
        log: log.clone(),
        door: door.clone(),
        history,
        routing: routing.clone(),
        dead_letters: stores.dead_letters.clone(),
        queues: stores.queues.clone(),
        queue_signals,
        plugins,
        clock: clock.clone(),
        max_plugin_bytes: config.plugins.max_upload_bytes,
        admin_key_hash,
        ingest_limits: settings.ingest,
        pattern_limits: settings.patterns.clone(),
        max_request_bytes: settings.max_request_bytes,
        metrics: crate::telemetry::metrics_handle(&settings.node_id),
        ready: false.into(),
        store_health: stores.health.clone(),
    });

    let mut tasks = Vec::new();
    if let Some(watch) = watch {
        tasks.push(tokio::spawn(
            control.clone().follow(watch, shutdown_rx.clone()),
        ));
        // Schemas live in their own store interface, not the watched
        // configuration: other nodes' changes are read every moment.
        tasks.push(tokio::spawn(follow_schemas(
            door.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(dir) = &config.plugins_dir {
        tasks.push(tokio::spawn(crate::control::dev_dir::watch_dir(
            dir.clone(),
            config.plugins_tenant.clone(),
            control,
            shutdown_rx.clone(),
        )));
    }
    let router = tokio::spawn(router.run(routing.clone(), shutdown_rx.clone()));
    let resumed = replayer.resume().await?;
    if resumed > 0 {
        tracing::info!(
            replays = resumed,
            "resumed replays interrupted by the last stop"
        );
    }
    tasks.push(tokio::spawn(sweeper.run(shutdown_rx.clone())));
    tasks.push(tokio::spawn(engine.run_retries(shutdown_rx.clone())));
    tasks.push(tokio::spawn(door.run_upkeep(shutdown_rx.clone())));
    tasks.push(tokio::spawn(prune_loop(
        stores.log.clone(),
        clock,
        settings.log_retention,
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
    tracing::info!(%addr, node = %settings.node_id, store = %settings.store.describe(), data_dir = %dir.display(), "busbar listening");
    Ok(Running {
        addr,
        generated_admin_key,
        shutdown,
        tasks,
        router,
        routing,
        jobs: stores.jobs.clone(),
        http,
    })
}

/// Deletes routed events past their retention, once a minute.
async fn prune_loop(
    log: Arc<dyn EventLog>,
    clock: SharedClock,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        let before = clock.now_ms() - crate::clock::millis(retention);
        match log.prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "pruned routed events"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the log"),
        }
    }
}

/// How often a node sharing its store reads the schemas other nodes changed
/// (a change applies everywhere within this, well inside the 1 s promise).
const SCHEMA_REFRESH: Duration = Duration::from_millis(400);

/// Keeps the door's schema registry in line with a store other nodes write.
async fn follow_schemas(door: Arc<Door>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCHEMA_REFRESH) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = door.registry.refresh().await {
            tracing::warn!(error = %e, "cannot read the schemas other nodes changed");
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

//! Running the node: engine, HTTP API and metrics listeners, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{AppState, metrics_router, router};
use crate::config::NodeConfig;
use crate::inference::{Engine, EngineOptions, ModelRepository, OnnxRuntime, ResultCache};
use crate::metrics::NodeMetrics;
use crate::payment::PaymentService;
use crate::{Error, Result};

/// A started node.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the HTTP API listens (resolved: port 0 becomes the real port).
    pub http_addr: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    /// The engine (for in-process use and tests).
    pub engine: Engine,
    /// The libp2p side, when enabled.
    pub p2p: Option<crate::p2p::P2pHandle>,
    /// Payments, in paid mode.
    pub payments: Option<Arc<PaymentService>>,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Wait until the node has shut down (after `shutdown` is cancelled).
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Build the engine from the config (loads eager models; fails loudly on a broken one).
pub async fn build_engine(config: &NodeConfig, metrics: NodeMetrics) -> Result<Engine> {
    let runtime: Arc<OnnxRuntime> = OnnxRuntime::init(config.onnxruntime.as_deref())?;
    let repo = ModelRepository::open(&config.model_repository)?;
    let ttl = Duration::from_secs(config.cache.ttl_secs);
    let cache = match (&config.cache.redis_url, config.cache.enabled) {
        (_, false) => None,
        (Some(url), true) => Some(ResultCache::redis(url, ttl).await?),
        (None, true) => Some(ResultCache::memory(config.cache.capacity_mib << 20, ttl)),
    };
    let options = EngineOptions::from(&config.inference);
    Engine::start(runtime, repo, cache, metrics, options).await
}

/// Start the node: engine, then both listeners. Returns once everything listens.
pub async fn start(config: NodeConfig) -> Result<RunningNode> {
    let metrics = NodeMetrics::new()?;
    let engine = build_engine(&config, metrics.clone()).await?;
    let shutdown = CancellationToken::new();
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|e| Error::Listen { addr, reason: e.to_string() })
    };
    let http = bind(config.http.listen).await?;
    let metrics_listener = bind(config.metrics.listen).await?;
    let http_addr = http.local_addr().map_err(|e| Error::Listen { addr: config.http.listen, reason: e.to_string() })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| Error::Listen { addr: config.metrics.listen, reason: e.to_string() })?;
    let operator = crate::p2p::operator_signer(&config)?;
    let mut tasks = Vec::new();
    let system = crate::system::SystemMetrics::register(metrics.registry()).map_err(Error::Metrics)?;
    tasks.push(system.spawn(Duration::from_secs(5), shutdown.clone()));
    let payments = if config.payment.enabled {
        if config.operator_key.is_none() && config.operator_keystore.is_none() {
            return Err(Error::Config {
                path: "operator_key".into(),
                reason: "paid mode needs the operator key that channels pay (--operator-keystore)".into(),
            });
        }
        let (service, payment_tasks) =
            PaymentService::start(&config.payment, operator.clone(), metrics.registry(), shutdown.clone()).await?;
        tasks.extend(payment_tasks);
        tracing::info!(target: "node", payee = %service.payee(), "paid mode: vouchers are checked on every job");
        Some(service)
    } else {
        None
    };
    let admin_token = match &payments {
        Some(_) => Some(crate::api::admin::write_token(&config.payment.ledger)?),
        None => None,
    };
    let state = AppState { engine: engine.clone(), payments: payments.clone(), admin_token, request_timeout: None };
    let app = router(state.clone(), crate::api::Limits::of(&config.http));
    let token = shutdown.clone();
    let drain_engine = engine.clone();
    let http_task = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(http, app).with_graceful_shutdown(async move {
            token.cancelled().await;
            // Let queued inferences finish before the listener closes.
            drain_engine.drain(Duration::from_secs(10)).await;
        });
        if let Err(err) = served.await {
            tracing::error!(target: "node::api", %err, "HTTP server failed");
        }
    });
    let token = shutdown.clone();
    let metrics_task = tokio::spawn(async move {
        let served = axum::serve(metrics_listener, metrics_router(metrics, state))
            .with_graceful_shutdown(token.cancelled_owned());
        if let Err(err) = served.await {
            tracing::error!(target: "node::metrics", %err, "metrics server failed");
        }
    });
    tasks.push(http_task);
    tasks.push(metrics_task);
    let p2p = if config.p2p.enabled {
        let (handle, task) = crate::p2p::spawn(
            engine.clone(),
            &config.p2p,
            operator,
            engine.metrics().clone(),
            payments.clone(),
            shutdown.clone(),
        )?;
        tasks.push(task);
        Some(handle)
    } else {
        None
    };
    tracing::info!(target: "node", %http_addr, %metrics_addr, models = engine.configs().count(), "node started");
    Ok(RunningNode { http_addr, metrics_addr, engine, p2p, payments, shutdown, tasks })
}

/// Run until ctrl-c or SIGTERM, then shut down gracefully.
pub async fn run(config: NodeConfig) -> Result<()> {
    let node = start(config).await?;
    println!("mlbridge-node: API on http://{}  metrics on http://{}/metrics", node.http_addr, node.metrics_addr);
    if let Some(p2p) = &node.p2p {
        // Listeners report their addresses asynchronously (port 0 resolves then).
        let mut addrs = Vec::new();
        for _ in 0..200 {
            addrs = p2p.listen_addrs().await?;
            if !addrs.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for addr in addrs {
            println!("mlbridge-node: p2p on {addr}");
        }
    }
    let token = node.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(target: "node", "shutting down");
        token.cancel();
    });
    node.join().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! Prometheus metrics of the node, served on their own port (`/metrics`).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

/// Every node metric. Cloning shares them. Labels: `model` is `name/version`.
#[derive(Clone, Debug)]
pub struct NodeMetrics {
    registry: Registry,
    /// Inference requests by model and outcome (`ok`, `cache_hit`, `client_error`, `overloaded`, `error`).
    pub requests: IntCounterVec,
    /// End-to-end latency of answered requests inside the node, seconds.
    pub request_seconds: HistogramVec,
    /// Time a request waited in the batcher queue, seconds.
    pub queue_wait_seconds: HistogramVec,
    /// Time of one model execution (a whole batch), seconds.
    pub compute_seconds: HistogramVec,
    /// Requests waiting in a model's queue.
    pub queue_depth: IntGaugeVec,
    /// Samples a model is computing right now (0 when its worker is idle).
    pub running_samples: IntGaugeVec,
    /// Samples per model execution.
    pub batch_size: HistogramVec,
    /// Samples inferred (a request of batch 4 counts 4).
    pub inferences: IntCounterVec,
    /// Model executions (ONNX Runtime calls); inferences / executions = average batch size.
    pub executions: IntCounterVec,
    /// Result cache hits.
    pub cache_hits: IntCounterVec,
    /// Result cache misses.
    pub cache_misses: IntCounterVec,
    /// Seconds it took to load a model (hash check and session creation).
    pub model_load_seconds: GaugeVec,
    /// Peers connected over libp2p.
    pub p2p_peers: IntGauge,
    /// 1 while the node runs on the p2p network (0: HTTP only), so that "no peers" means something.
    pub p2p_enabled: IntGauge,
    /// Gossip messages by direction (`in`, `out`, `rejected`).
    pub p2p_gossip: IntCounterVec,
    /// Inbound p2p requests by outcome (`ok`, `client_error`, `overloaded`, `error`, `unsupported_version`).
    pub p2p_requests: IntCounterVec,
    /// Latency of answered inbound p2p requests inside the node, seconds.
    pub p2p_request_seconds: Histogram,
    /// Peers banned for invalid messages.
    pub p2p_banned: IntCounter,
    /// Peers the swarm task keeps per-peer state for (pruned when a peer's last connection closes).
    pub p2p_tracked_peers: IntGauge,
    /// Inbound p2p inference requests admitted and not yet answered.
    pub p2p_inflight: IntGauge,
    /// Peers subscribed to the receipts topic (validators, or anyone relaying receipts to them).
    pub p2p_receipt_listeners: IntGauge,
    /// Bytes of our libp2p protocols, by protocol and direction (`mlbridge_p2p_bytes_total`).
    pub p2p_bytes: mlbridge_sdk::net::traffic::Traffic,
}

impl NodeMetrics {
    /// Create and register every metric (and the process CPU/memory collector) in a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let by_model = |name: &str, help: &str, extra: &[&str]| {
            let mut labels = vec!["model"];
            labels.extend_from_slice(extra);
            IntCounterVec::new(Opts::new(name, help), &labels)
        };
        let latency = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(exponential_buckets(0.000_05, 1.6, 28)?),
                &["model"],
            )
        };
        let m = Self {
            requests: by_model("mlbridge_requests_total", "Inference requests by model and outcome", &["outcome"])?,
            request_seconds: latency("mlbridge_request_seconds", "Latency of answered requests inside the node")?,
            queue_wait_seconds: latency("mlbridge_queue_wait_seconds", "Time requests waited in the batcher queue")?,
            compute_seconds: latency("mlbridge_compute_seconds", "Time of one model execution (a whole batch)")?,
            queue_depth: IntGaugeVec::new(
                Opts::new("mlbridge_queue_depth", "Requests waiting in a model's queue"),
                &["model"],
            )?,
            running_samples: IntGaugeVec::new(
                Opts::new("mlbridge_running_samples", "Samples a model is computing right now"),
                &["model"],
            )?,
            batch_size: HistogramVec::new(
                HistogramOpts::new("mlbridge_batch_size", "Samples per model execution")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
                &["model"],
            )?,
            inferences: by_model("mlbridge_inferences_total", "Samples inferred", &[])?,
            executions: by_model("mlbridge_executions_total", "Model executions (ONNX Runtime calls)", &[])?,
            cache_hits: by_model("mlbridge_cache_hits_total", "Result cache hits", &[])?,
            cache_misses: by_model("mlbridge_cache_misses_total", "Result cache misses", &[])?,
            model_load_seconds: GaugeVec::new(
                Opts::new("mlbridge_model_load_seconds", "Seconds it took to load a model"),
                &["model"],
            )?,
            p2p_peers: IntGauge::new("mlbridge_p2p_peers", "Peers connected over libp2p")?,
            p2p_enabled: IntGauge::new("mlbridge_p2p_enabled", "1 while the node runs on the p2p network")?,
            p2p_gossip: IntCounterVec::new(
                Opts::new("mlbridge_p2p_gossip_messages_total", "Gossip messages by direction"),
                &["direction"],
            )?,
            p2p_requests: IntCounterVec::new(
                Opts::new("mlbridge_p2p_requests_total", "Inbound p2p requests by outcome"),
                &["outcome"],
            )?,
            p2p_request_seconds: Histogram::with_opts(
                HistogramOpts::new("mlbridge_p2p_request_seconds", "Latency of answered inbound p2p requests")
                    .buckets(exponential_buckets(0.000_05, 1.6, 28)?),
            )?,
            p2p_banned: IntCounter::new("mlbridge_p2p_banned_peers_total", "Peers banned for invalid messages")?,
            p2p_tracked_peers: IntGauge::new("mlbridge_p2p_tracked_peers", "Peers with per-peer state (rates)")?,
            p2p_receipt_listeners: IntGauge::new(
                "mlbridge_p2p_receipt_listeners",
                "Peers subscribed to the receipts topic (validators or relays)",
            )?,
            p2p_inflight: IntGauge::new("mlbridge_p2p_inflight", "Inbound p2p inference requests not yet answered")?,
            p2p_bytes: mlbridge_sdk::net::traffic::Traffic::register(&registry)?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.requests.clone()))?;
        r.register(Box::new(m.request_seconds.clone()))?;
        r.register(Box::new(m.queue_wait_seconds.clone()))?;
        r.register(Box::new(m.compute_seconds.clone()))?;
        r.register(Box::new(m.queue_depth.clone()))?;
        r.register(Box::new(m.running_samples.clone()))?;
        r.register(Box::new(m.batch_size.clone()))?;
        r.register(Box::new(m.inferences.clone()))?;
        r.register(Box::new(m.executions.clone()))?;
        r.register(Box::new(m.cache_hits.clone()))?;
        r.register(Box::new(m.cache_misses.clone()))?;
        r.register(Box::new(m.model_load_seconds.clone()))?;
        r.register(Box::new(m.p2p_peers.clone()))?;
        r.register(Box::new(m.p2p_enabled.clone()))?;
        r.register(Box::new(m.p2p_gossip.clone()))?;
        r.register(Box::new(m.p2p_requests.clone()))?;
        r.register(Box::new(m.p2p_request_seconds.clone()))?;
        r.register(Box::new(m.p2p_banned.clone()))?;
        r.register(Box::new(m.p2p_tracked_peers.clone()))?;
        r.register(Box::new(m.p2p_inflight.clone()))?;
        r.register(Box::new(m.p2p_receipt_listeners.clone()))?;
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(m)
    }

    /// The registry, for subsystems that add their own metrics (chain, p2p).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

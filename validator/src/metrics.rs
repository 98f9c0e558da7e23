//! The validator's Prometheus metrics, served on `/metrics` (`[metrics] listen`).

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// Every metric of the validator.
#[derive(Clone, Debug)]
pub struct ValidatorMetrics {
    registry: Registry,
    /// Receipts heard on `mlbridge/receipts/1`.
    pub receipts_seen: IntCounter,
    /// Receipts refused before sampling, by reason (bad signature or proof, unregistered node, wrong publisher...).
    pub receipts_rejected: IntCounterVec,
    /// Receipts drawn for checking.
    pub receipts_sampled: IntCounter,
    /// Sampled receipts dropped because too many audits were waiting.
    pub samples_dropped: IntCounter,
    /// Jobs re-executed and compared, by verdict (`agree`, `mismatch`).
    pub jobs_checked: IntCounterVec,
    /// Audit records that could not be judged, by reason (`unknown_model`, `input_hash`, `output_hash`, ...).
    pub records_rejected: IntCounterVec,
    /// Audit round trips, seconds.
    pub audit_seconds: Histogram,
    /// Audits a node refused or did not answer, by reason.
    pub audit_refusals: IntCounterVec,
    /// Nodes sampled more because they refused, stalled or faked an audit, or cheated.
    pub suspected_nodes: IntGauge,
    /// Disputes this validator opened.
    pub disputes_opened: IntCounter,
    /// This validator's disputes resolved, by result (`won`, `lost`).
    pub disputes_resolved: IntCounterVec,
    /// Votes cast on others' disputes, by side (`node_wrong`, `node_right`).
    pub votes: IntCounterVec,
    /// Attestations mined.
    pub attestations: IntCounter,
    /// Records votes were judged on, by source (`gossip`: the challenger's evidence, `audit`: the accused node's).
    pub vote_records: IntCounterVec,
    /// Mismatches not challenged, by reason (`evidence_too_large`: the record cannot be gossiped to voters,
    /// `already_disputed`).
    pub challenges_skipped: IntCounterVec,
    /// Gossip messages received, by topic (receipts, whole evidence, evidence parts).
    pub gossip_messages: IntCounterVec,
    /// Validator stake, wei (as of the last chain poll).
    pub stake_wei: Gauge,
    /// Epoch rewards earned in ValidatorRewards, wei, claimed or not (as of the last chain poll).
    pub earned_wei: Gauge,
    /// Epoch rewards, vote rewards and dispute credits received by this process, wei.
    pub claimed_wei: Counter,
}

impl ValidatorMetrics {
    /// Create and register every metric in a new registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let by = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let wei_gauge = |name: &str, help: &str| -> Result<Gauge, prometheus::Error> {
            let g = Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let claimed_wei = Counter::new("mlbridge_validator_claimed_wei_total", "Wei received by this process")?;
        registry.register(Box::new(claimed_wei.clone()))?;
        let audit_seconds = Histogram::with_opts(
            HistogramOpts::new("mlbridge_validator_audit_seconds", "Audit round trips, seconds")
                .buckets(exponential_buckets(0.001, 2.0, 15)?),
        )?;
        registry.register(Box::new(audit_seconds.clone()))?;
        Ok(Self {
            receipts_seen: counter("mlbridge_validator_receipts_seen_total", "Receipts heard")?,
            receipts_rejected: by("mlbridge_validator_receipts_rejected_total", "Receipts refused", "reason")?,
            receipts_sampled: counter("mlbridge_validator_receipts_sampled_total", "Receipts drawn for checking")?,
            samples_dropped: counter("mlbridge_validator_samples_dropped_total", "Samples dropped (audit backlog)")?,
            jobs_checked: by("mlbridge_validator_jobs_checked_total", "Jobs re-executed", "verdict")?,
            records_rejected: by("mlbridge_validator_records_rejected_total", "Audit records not judged", "reason")?,
            audit_seconds,
            audit_refusals: by("mlbridge_validator_audit_refusals_total", "Audits refused or unanswered", "reason")?,
            suspected_nodes: gauge("mlbridge_validator_suspected_nodes", "Nodes sampled more")?,
            disputes_opened: counter("mlbridge_validator_disputes_opened_total", "Disputes opened")?,
            disputes_resolved: by("mlbridge_validator_disputes_resolved_total", "Own disputes resolved", "result")?,
            votes: by("mlbridge_validator_votes_total", "Votes on others' disputes", "side")?,
            attestations: counter("mlbridge_validator_attestations_total", "Attestations mined")?,
            vote_records: by("mlbridge_validator_vote_records_total", "Records votes were judged on", "source")?,
            gossip_messages: by("mlbridge_validator_gossip_messages_total", "Gossip messages received", "topic")?,
            challenges_skipped: by(
                "mlbridge_validator_challenges_skipped_total",
                "Mismatches not challenged",
                "reason",
            )?,
            stake_wei: wei_gauge("mlbridge_validator_stake_wei", "Validator stake, wei")?,
            earned_wei: wei_gauge("mlbridge_validator_earned_wei", "Epoch rewards earned, claimed or not, wei")?,
            claimed_wei,
            registry,
        })
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serve `/metrics` on `addr` until `shutdown`. Returns the bound address.
pub async fn serve(
    metrics: ValidatorMetrics,
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> crate::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Network(format!("metrics listener on {addr}: {e}")))?;
    let bound = listener.local_addr().map_err(|e| crate::Error::Network(e.to_string()))?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { metrics.render() }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await;
    });
    Ok(bound)
}

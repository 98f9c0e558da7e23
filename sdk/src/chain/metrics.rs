//! Prometheus metrics of the chain layer: one struct, registered once per process.

use prometheus::{
    CounterVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, exponential_buckets,
    linear_buckets,
};

/// Chain-layer metrics. Cloning shares the underlying metrics.
#[derive(Clone, Debug)]
pub struct ChainMetrics {
    /// Transactions sent (fee bumps and resubmissions included), by kind.
    pub tx_sent: IntCounterVec,
    /// Transactions that reached the confirmation depth, by kind.
    pub tx_confirmed: IntCounterVec,
    /// Included transactions whose block was reorged away, by kind.
    pub tx_reorged: IntCounterVec,
    /// Raw transactions sent again after a reorg or disappearance, by kind.
    pub tx_resubmitted: IntCounterVec,
    /// Transactions given up on (foreign ones not seen for too long), by kind.
    pub tx_dropped: IntCounterVec,
    /// Gas used by confirmed transactions, by kind.
    pub gas_used: IntCounterVec,
    /// Fees paid by confirmed transactions in wei (gas used x effective gas price), by kind.
    pub cost_wei: CounterVec,
    /// Blocks from tracking start to confirmation.
    pub confirmation_blocks: Histogram,
    /// Seconds from tracking start to confirmation.
    pub confirmation_seconds: Histogram,
    /// RPC calls of the tracker that failed.
    pub rpc_errors: IntCounter,
    /// Latest head block seen.
    pub head_block: IntGauge,
}

impl ChainMetrics {
    /// Create the metrics and register them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let by_kind = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["kind"]);
        let m = Self {
            tx_sent: by_kind(
                "mlbridge_chain_tx_sent_total",
                "Transactions sent, fee bumps and resubmissions included",
            )?,
            tx_confirmed: by_kind(
                "mlbridge_chain_tx_confirmed_total",
                "Transactions confirmed at the configured depth",
            )?,
            tx_reorged: by_kind(
                "mlbridge_chain_tx_reorged_total",
                "Included transactions whose block was reorged away",
            )?,
            tx_resubmitted: by_kind("mlbridge_chain_tx_resubmitted_total", "Raw transactions sent again")?,
            tx_dropped: by_kind("mlbridge_chain_tx_dropped_total", "Transactions given up on")?,
            gas_used: by_kind("mlbridge_chain_gas_used_total", "Gas used by confirmed transactions")?,
            cost_wei: CounterVec::new(
                Opts::new("mlbridge_chain_tx_cost_wei_total", "Fees paid by confirmed transactions in wei"),
                &["kind"],
            )?,
            confirmation_blocks: Histogram::with_opts(
                HistogramOpts::new("mlbridge_chain_confirmation_blocks", "Blocks from tracking start to confirmation")
                    .buckets(linear_buckets(1.0, 1.0, 12)?),
            )?,
            confirmation_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "mlbridge_chain_confirmation_seconds",
                    "Seconds from tracking start to confirmation",
                )
                .buckets(exponential_buckets(0.25, 2.0, 10)?),
            )?,
            rpc_errors: IntCounter::new("mlbridge_chain_rpc_errors_total", "Failed RPC calls of the tracker")?,
            head_block: IntGauge::new("mlbridge_chain_head_block", "Latest head block seen")?,
        };
        registry.register(Box::new(m.tx_sent.clone()))?;
        registry.register(Box::new(m.tx_confirmed.clone()))?;
        registry.register(Box::new(m.tx_reorged.clone()))?;
        registry.register(Box::new(m.tx_resubmitted.clone()))?;
        registry.register(Box::new(m.tx_dropped.clone()))?;
        registry.register(Box::new(m.gas_used.clone()))?;
        registry.register(Box::new(m.cost_wei.clone()))?;
        registry.register(Box::new(m.confirmation_blocks.clone()))?;
        registry.register(Box::new(m.confirmation_seconds.clone()))?;
        registry.register(Box::new(m.rpc_errors.clone()))?;
        registry.register(Box::new(m.head_block.clone()))?;
        Ok(m)
    }
}

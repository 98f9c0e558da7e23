//! Prometheus metrics of payments and settlement.

use prometheus::{Counter, Gauge, IntCounter, IntCounterVec, Opts, Registry};

/// Payment metrics. Cloning shares them.
#[derive(Clone, Debug)]
pub struct PaymentMetrics {
    /// Paid jobs answered (voucher accepted, job recorded).
    pub paid_jobs: IntCounter,
    /// Prices of answered paid jobs, wei.
    pub charged_wei: Counter,
    /// Payments refused, by reason.
    pub refused: IntCounterVec,
    /// Requests served free (allowlist).
    pub free_jobs: IntCounter,
    /// Confirmed redemption transactions.
    pub settlements: IntCounter,
    /// Jobs paid by confirmed redemptions.
    pub settled_jobs: IntCounter,
    /// Gas used by confirmed redemptions.
    pub settlement_gas: IntCounter,
    /// What redemption gas cost, wei.
    pub settlement_cost_wei: Counter,
    /// Revenue redeemed (after the protocol fee), wei.
    pub revenue_wei: Counter,
    /// Protocol fees sent to ValidatorRewards by our redemptions, wei.
    pub protocol_fees_wei: Counter,
    /// Accepted but not yet redeemed, wei.
    pub unredeemed_wei: Gauge,
    /// Vouchers the contract refused to redeem (e.g. the channel expired first).
    pub vouchers_lost: IntCounter,
    /// Receipts published on the receipts topic.
    pub receipts_published: IntCounter,
    /// Confirmed redemptions a reorg deeper than the confirmation depth undid (redeemed again).
    pub redemptions_undone: IntCounter,
    /// Settlement rounds finished (timed or forced), whether or not they redeemed anything.
    pub settle_rounds: IntCounter,
    /// Receipt batches signed (one signature each).
    pub receipt_batches: IntCounter,
    /// Receipts per signed batch.
    pub receipt_batch_size: prometheus::Histogram,
    /// Paid jobs that brought a new voucher (the others drew on credit paid ahead).
    pub vouchers_accepted: IntCounter,
}

impl PaymentMetrics {
    /// Create and register in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            paid_jobs: IntCounter::new("mlbridge_paid_jobs_total", "Paid jobs answered")?,
            charged_wei: Counter::new("mlbridge_charged_wei_total", "Prices of answered paid jobs, wei")?,
            refused: IntCounterVec::new(
                Opts::new("mlbridge_payments_refused_total", "Payments refused, by reason"),
                &["reason"],
            )?,
            free_jobs: IntCounter::new("mlbridge_free_jobs_total", "Requests served free (allowlist)")?,
            settlements: IntCounter::new("mlbridge_settlements_total", "Confirmed redemption transactions")?,
            settled_jobs: IntCounter::new("mlbridge_settled_jobs_total", "Jobs paid by confirmed redemptions")?,
            settlement_gas: IntCounter::new("mlbridge_settlement_gas_total", "Gas used by confirmed redemptions")?,
            settlement_cost_wei: Counter::new("mlbridge_settlement_cost_wei_total", "Redemption gas cost, wei")?,
            revenue_wei: Counter::new("mlbridge_revenue_wei_total", "Revenue redeemed after the protocol fee, wei")?,
            protocol_fees_wei: Counter::new("mlbridge_protocol_fees_wei_total", "Protocol fees of our redemptions")?,
            unredeemed_wei: Gauge::new("mlbridge_unredeemed_wei", "Accepted but not yet redeemed, wei")?,
            vouchers_lost: IntCounter::new("mlbridge_vouchers_lost_total", "Vouchers the contract refused to redeem")?,
            receipts_published: IntCounter::new("mlbridge_receipts_published_total", "Receipts gossiped")?,
            redemptions_undone: IntCounter::new(
                "mlbridge_redemptions_undone_total",
                "Confirmed redemptions undone by a reorg deeper than the confirmation depth",
            )?,
            settle_rounds: IntCounter::new(
                "mlbridge_settle_rounds_total",
                "Settlement rounds finished, whether or not they redeemed anything",
            )?,
            receipt_batches: IntCounter::new("mlbridge_receipt_batches_total", "Receipt batches signed")?,
            receipt_batch_size: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new("mlbridge_receipt_batch_size", "Receipts per signed batch")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            vouchers_accepted: IntCounter::new(
                "mlbridge_vouchers_accepted_total",
                "Paid jobs that brought a new best voucher (the others drew on credit paid ahead)",
            )?,
        };
        registry.register(Box::new(m.paid_jobs.clone()))?;
        registry.register(Box::new(m.charged_wei.clone()))?;
        registry.register(Box::new(m.refused.clone()))?;
        registry.register(Box::new(m.free_jobs.clone()))?;
        registry.register(Box::new(m.settlements.clone()))?;
        registry.register(Box::new(m.settled_jobs.clone()))?;
        registry.register(Box::new(m.settlement_gas.clone()))?;
        registry.register(Box::new(m.settlement_cost_wei.clone()))?;
        registry.register(Box::new(m.revenue_wei.clone()))?;
        registry.register(Box::new(m.protocol_fees_wei.clone()))?;
        registry.register(Box::new(m.unredeemed_wei.clone()))?;
        registry.register(Box::new(m.vouchers_lost.clone()))?;
        registry.register(Box::new(m.receipts_published.clone()))?;
        registry.register(Box::new(m.redemptions_undone.clone()))?;
        registry.register(Box::new(m.settle_rounds.clone()))?;
        registry.register(Box::new(m.receipt_batches.clone()))?;
        registry.register(Box::new(m.receipt_batch_size.clone()))?;
        registry.register(Box::new(m.vouchers_accepted.clone()))?;
        Ok(m)
    }
}

//! Getting paid (DESIGN.md §3, §5): voucher checks before any work, the durable ledger, signed receipts, the audit
//! record for validators, and settlement on chain.
//!
//! - [`watcher`]: the confirmed view of the channels paying this node, from contract events.
//! - [`gate`]: the voucher check and the per-channel bookkeeping (no two jobs take the same increment).
//! - [`ledger`]: `sled` trees for channels, job records, settlements; flushed before an answer leaves.
//! - [`settlement`]: the background `redeemMany` task, tracked to N confirmations.
//! - [`audit`]: inputs and outputs of recent paid jobs, served to validators over the audit protocol.
//! - [`signer`]: the receipt signer, one signature per batch of answered jobs.
//!
//! [`PaymentService`] ties them together for the p2p and HTTP front ends: [`PaymentService::authorize`] before the
//! work (a voucher, or the credit paid ahead on a channel; the price of its units held in flight), [`guarded`]
//! around it (a failed or dropped job releases the hold), then [`PaymentService::complete`] (node job id, receipt in
//! a signed batch, charge, job record, audit record; the ledger flushed before the answer when the job brought a new
//! voucher, group-committed otherwise).

pub mod audit;
pub mod gate;
pub mod generation;
pub mod ledger;
pub mod metrics;
pub mod settlement;
pub mod signer;
pub mod watcher;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_sdk::Tensor;
use mlbridge_sdk::chain::{ConfirmationTracker, Deployment, SenderConfig, TrackerConfig, TxSender};
use mlbridge_sdk::protocol::{
    AuditRecord, ModelRef, PaymentRefusal, ReceiptMsg, WireVoucher, tensors_hash, texts_hash,
};
use mlbridge_sdk::receipt::Receipt;
use mlbridge_sdk::signer::FastSigner;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use audit::{AuditStore, Validators};
pub use gate::{Authorization, Gate};
pub use ledger::Ledger;
pub use metrics::PaymentMetrics;
pub use settlement::{SettleReport, SettlementConfig, Settler, SettlerHandle};
pub use signer::{ReceiptSigner, SignedBatch};
pub use watcher::{Watcher, WatcherConfig};

use crate::config::PaymentConfig;
use crate::inference::ModelConfig;
use crate::{Error, Result};

/// Everything a paid job needs. Shared (`Arc`) by the p2p and HTTP front ends.
#[derive(Debug)]
pub struct PaymentService {
    gate: Arc<Gate>,
    operator: FastSigner,
    signer: ReceiptSigner,
    audit: AuditStore,
    validators: Validators,
    metrics: PaymentMetrics,
    settler: SettlerHandle,
    tracker: ConfirmationTracker,
    deployment: Deployment,
    free_for: Vec<IpAddr>,
    free_localhost: bool,
    job_salt: B256,
    job_counter: std::sync::atomic::AtomicU64,
    corrupt_outputs: f32,
}

/// What a paid job ran on.
#[derive(Debug)]
pub enum JobInput {
    /// Named tensors (inference jobs).
    Tensors(Vec<Tensor>),
    /// Texts (embedding jobs).
    Texts(Vec<String>),
    /// A text generation: prompt tokens, parameters, output tokens (its outputs are the tokens, not tensors).
    Generation(Box<mlbridge_sdk::generate::GenerationAudit>),
}

/// What the work of a paid job produced, for its receipt and audit record.
#[derive(Debug)]
pub struct Completed<'a> {
    /// The model served.
    pub config: &'a ModelConfig,
    /// Its input.
    pub input: JobInput,
    /// The outputs returned.
    pub outputs: &'a [Tensor],
}

impl PaymentService {
    /// Connect to the chain, open the ledger, sync the channel view and start settlement. Tasks stop (settling
    /// once more) when `shutdown` is cancelled.
    pub async fn start(
        config: &PaymentConfig,
        operator: PrivateKeySigner,
        registry: &prometheus::Registry,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, Vec<JoinHandle<()>>)> {
        let path = config.deployment.as_deref().ok_or_else(|| Error::Config {
            path: "payment.deployment".into(),
            reason: "paid mode needs the contracts' addresses file (contracts/deployments/<chainId>.json)".into(),
        })?;
        let deployment = Deployment::load(path)?;
        let url = config.rpc_url.parse().map_err(|e| Error::Config {
            path: "payment.rpc_url".into(),
            reason: format!("'{}' is not a URL: {e}", config.rpc_url),
        })?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        verify_deployment(&deployment, &provider, path).await?;
        let ledger = Ledger::open_with(&config.ledger, Duration::from_millis(config.commit_interval_ms.max(1)))?;
        let metrics = PaymentMetrics::register(registry)?;
        let chain_metrics = mlbridge_sdk::chain::ChainMetrics::register(registry)?;
        let poll = Duration::from_millis(config.poll_interval_ms.max(10));
        let watch_config = WatcherConfig {
            contract: deployment.payment_channels,
            payee: operator.address(),
            start_block: deployment.start_block,
            confirmations: config.confirmations,
            poll_interval: poll,
        };
        let (watcher, watch_task) =
            Watcher::start(provider.clone(), ledger.clone(), watch_config, shutdown.clone()).await?;
        let domain = deployment.domain();
        let gate = Arc::new(Gate::new(ledger, watcher, domain.clone(), operator.address(), config.expiry_margin_secs));
        // The sender needs the chain id; with the RPC down at start, settlement waits for it in the background.
        let sender_config = SenderConfig { poll_interval: poll, ..SenderConfig::default() };
        let tracker_config = TrackerConfig {
            confirmations: config.confirmations,
            poll_interval: poll,
            resubmit_after: Duration::from_secs(config.resubmit_after_secs),
            ..TrackerConfig::default()
        };
        let tracker = ConfirmationTracker::spawn(provider.clone(), tracker_config, Some(chain_metrics.clone()));
        let settle_config = SettlementConfig {
            interval: Duration::from_secs_f64(config.settle_interval_secs.max(0.05)),
            gas_multiple: config.settle_gas_multiple,
            redeem_gas: config.redeem_gas,
            deadline_margin: Duration::from_secs(config.expiry_margin_secs * 2),
            max_batch: config.max_batch,
            confirm_timeout: Duration::from_secs(config.confirm_timeout_secs),
            shutdown_timeout: Duration::from_secs(config.shutdown_settle_secs),
        };
        let validators = Validators::new(provider.clone(), deployment.staking, Duration::from_secs(30));
        let (settler, settle_task) = spawn_settler(
            gate.clone(),
            deployment,
            provider,
            operator.clone(),
            sender_config,
            tracker.clone(),
            deployment.payment_channels,
            settle_config,
            metrics.clone(),
            Some(chain_metrics),
            shutdown.clone(),
        );
        let prune_task = spawn_pruning(
            gate.clone(),
            Duration::from_secs_f64(config.audit_retention_hours.max(0.0) * 3600.0),
            shutdown.clone(),
        );
        let fast = FastSigner::new(&operator);
        let service = Arc::new(Self {
            gate,
            tracker,
            signer: ReceiptSigner::new(fast.clone(), domain, metrics.clone()),
            operator: fast,
            audit: AuditStore::new(
                Duration::from_secs_f64(config.audit_retention_hours.max(0.0) * 3600.0),
                config.audit_retention_mib << 20,
            ),
            validators,
            metrics,
            settler,
            deployment,
            free_for: config.free_allowlist.clone(),
            free_localhost: config.free_localhost,
            job_salt: PrivateKeySigner::random().to_bytes(),
            job_counter: std::sync::atomic::AtomicU64::new(0),
            corrupt_outputs: config.testing_corrupt_outputs,
        });
        if config.testing_corrupt_outputs != 0.0 {
            tracing::warn!(target: "node::payment", delta = config.testing_corrupt_outputs,
                "payment.testing_corrupt_outputs is set: this node CHEATS on paid jobs (tests only) and will be slashed");
        }
        Ok((service, vec![watch_task, settle_task, prune_task]))
    }

    /// The voucher gate.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Payment metrics.
    pub fn metrics(&self) -> &PaymentMetrics {
        &self.metrics
    }

    /// The settlement task.
    pub fn settler(&self) -> &SettlerHandle {
        &self.settler
    }

    /// The receipt signer (its signed batches go to validators by gossip).
    pub fn receipt_signer(&self) -> &ReceiptSigner {
        &self.signer
    }

    /// The confirmation tracker settlement sends through (`head()` / `wait_head` say which blocks it has processed).
    pub fn tracker(&self) -> &ConfirmationTracker {
        &self.tracker
    }

    /// The contract set.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The operator (payee) address.
    pub fn payee(&self) -> Address {
        self.operator.address()
    }

    /// Whether HTTP requests from `ip` are served free (operators' own use). `forwarded` says the request came
    /// through a proxy (it carries `Forwarded`, `X-Forwarded-For` or `X-Real-IP`): the connection's address is then
    /// the proxy's, not the client's, and a loopback proxy must not make the whole world free.
    pub fn is_free(&self, ip: IpAddr, forwarded: bool) -> bool {
        !forwarded && ((self.free_localhost && ip.is_loopback()) || self.free_for.contains(&ip))
    }

    /// Check a job's payment — a voucher, or the credit paid ahead on `channel` by `spender` (see [`gate`]) — and
    /// reserve its price, `units` x `unit_price` (prices are per unit: a sample, a text); a refusal is counted by
    /// reason.
    pub fn authorize(
        &self,
        voucher: Option<&WireVoucher>,
        channel: Option<B256>,
        spender: Option<B256>,
        unit_price: U256,
        units: u64,
    ) -> Result<Authorization, Box<PaymentRefusal>> {
        let price = unit_price.saturating_mul(U256::from(units));
        self.gate
            .authorize(voucher, channel, spender, price)
            .map(|a| Authorization { units, ..a })
            .inspect_err(|r| self.metrics.refused.with_label_values(&[refusal_label(r)]).inc())
    }

    /// Whether a job of at least `least` could be paid by this voucher or credit (see [`Gate::precheck`]); nothing
    /// is reserved, a refusal is counted by reason.
    pub fn precheck(
        &self,
        voucher: Option<&WireVoucher>,
        channel: Option<B256>,
        spender: Option<B256>,
        least: U256,
    ) -> Result<(), Box<PaymentRefusal>> {
        self.gate
            .precheck(voucher, channel, spender, least)
            .inspect_err(|r| self.metrics.refused.with_label_values(&[refusal_label(r)]).inc())
    }

    /// The job failed: nothing is charged.
    pub fn release(&self, auth: &Authorization) {
        self.gate.release(auth);
    }

    /// The job used less than it held (a generation that stopped before `max_tokens`): it now holds `price` for
    /// `units`, and the rest of its hold is released. A `price` above the hold is cut to it.
    pub fn settle_part(&self, auth: &mut Authorization, units: u64, price: U256) {
        let price = price.min(auth.price);
        self.gate.release_part(&auth.channel_id, auth.price - price);
        auth.price = price;
        auth.units = units;
    }

    /// The job succeeded: assign its job id, have its receipt signed in a batch, charge it, record it and keep it
    /// for audits. A job that brought a new voucher waits for the ledger flush (the voucher is durable before the
    /// answer); the others' charges are group-committed without waiting. Answer only once this returned `Ok`; if it
    /// fails or is dropped before it finishes, the job is not charged.
    pub async fn complete(&self, auth: &Authorization, done: Completed<'_>) -> Result<ReceiptMsg> {
        let mut hold = Release(Some((&self.gate, auth)));
        let (input_hash, inputs, texts, generation) = match done.input {
            JobInput::Tensors(t) => (tensors_hash(&t), t, Vec::new(), None),
            JobInput::Texts(t) => (texts_hash(&t), Vec::new(), t, None),
            JobInput::Generation(g) => (g.input_hash(), Vec::new(), Vec::new(), Some(*g)),
        };
        let output_hash = generation.as_ref().map_or_else(|| tensors_hash(done.outputs), |g| g.output_hash());
        let config = done.config;
        let receipt = Receipt {
            jobId: self.next_job_id(),
            modelId: B256::from(*config.sha256.as_bytes()),
            inputHash: input_hash,
            outputHash: output_hash,
            units: U256::from(auth.units),
            price: auth.price,
            channelId: auth.channel_id,
            issuedAt: gate::now_ms() / 1000,
        };
        let job = ledger::JobRecord {
            job_id: receipt.jobId,
            channel_id: auth.channel_id,
            model_id: receipt.modelId,
            input_hash: receipt.inputHash,
            output_hash: receipt.outputHash,
            price: auth.price,
            voucher_amount: auth.amount,
            at_ms: gate::now_ms(),
        };
        let signed = self.signer.sign(receipt).await?;
        // From here on synchronous up to the flush: a caller cancelled during the flush leaves a charged,
        // recorded job whose answer was lost.
        let unflushed = self.gate.record(auth, &job)?;
        hold.0 = None;
        self.metrics.paid_jobs.inc();
        self.metrics.charged_wei.inc_by(f64::from(auth.price));
        self.audit.insert(AuditRecord {
            version: mlbridge_sdk::protocol::WIRE_VERSION,
            receipt: signed.clone(),
            model: ModelRef { name: config.name.clone(), version: Some(config.version), id: Some(config.sha256) },
            inputs,
            texts,
            outputs: done.outputs.to_vec(),
            generation,
        });
        if auth.new_voucher {
            self.metrics.vouchers_accepted.inc();
        }
        // A best voucher not yet on disk that this job needs (see `Gate::record`) is flushed before the answer; only
        // then do later jobs stop waiting for flushes. Otherwise the staged charge is committed within the interval.
        if let Some(best) = unflushed {
            self.gate.ledger().flush().await?;
            self.gate.mark_durable(&auth.channel_id, best);
        }
        Ok(signed)
    }

    /// A job id unique to this node (DESIGN.md §3: ids are the node's, so no client can make two jobs share
    /// a record): keccak of a random per-start salt and a counter.
    fn next_job_id(&self) -> B256 {
        let n = self.job_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        alloy::primitives::keccak256([self.job_salt.as_slice(), &n.to_be_bytes()].concat())
    }

    /// The test-only cheat (`payment.testing_corrupt_outputs`): shift every FP32 output by the configured delta.
    pub fn corrupt(&self, outputs: &mut [Tensor]) {
        if self.corrupt_outputs == 0.0 {
            return;
        }
        for t in outputs.iter_mut() {
            if let mlbridge_sdk::TensorData::Fp32(v) = t.data() {
                let shifted = v.iter().map(|x| x + self.corrupt_outputs).collect();
                if let Ok(c) = Tensor::new(t.name(), t.shape().to_vec(), mlbridge_sdk::TensorData::Fp32(shifted)) {
                    *t = c;
                }
            }
        }
    }

    /// Who may fetch audit records (active validators in `Staking`).
    pub fn validators(&self) -> &Validators {
        &self.validators
    }

    /// A recent paid job's record, for a validator's audit.
    pub fn audit(&self, job: &B256) -> Option<Arc<AuditRecord>> {
        self.audit.get(job)
    }
}

/// A job's held price, released when dropped unless disarmed (`.0 = None`) once the job is charged.
struct Release<'a>(Option<(&'a Gate, &'a Authorization)>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if let Some((gate, auth)) = self.0.take() {
            gate.release(auth);
        }
    }
}

/// The spender a payer's secret credit key stands for (what the gate compares; the same over libp2p and HTTP).
pub fn credit_spender(key: &[u8]) -> B256 {
    alloy::primitives::keccak256([b"mlbridge-credit-key:".as_slice(), key].concat())
}

/// Run a job's `work`; if it fails, or is dropped before it finishes (an HTTP timeout, a client that went away), the
/// price held for it is released: nothing is charged for a job that was not answered.
pub async fn guarded<T>(
    payments: Option<&PaymentService>,
    auth: Option<&Authorization>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let mut release = Release(payments.map(|p| &*p.gate).zip(auth));
    let out = work.await;
    if out.is_ok() {
        // Answered: the caller completes (charges) it.
        release.0 = None;
    }
    out
}

/// Check the deployment file against the chain before accepting any voucher: a wrong file means vouchers that pass
/// the gate and revert on chain. A mismatch fails the start; an RPC that does not answer (within 10 s) does not,
/// since a restarted node keeps serving the channels it confirmed earlier; it is said loudly and settlement waits.
async fn verify_deployment(deployment: &Deployment, provider: &DynProvider, path: &std::path::Path) -> Result<()> {
    use mlbridge_sdk::Error as E;
    match tokio::time::timeout(Duration::from_secs(10), deployment.verify(provider)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e @ (E::ChainIdMismatch { .. } | E::NoContractAt { .. } | E::DeploymentMismatch { .. }))) => {
            Err(Error::Config { path: "payment.deployment".into(), reason: format!("{}: {e}", path.display()) })
        }
        Ok(Err(e)) => {
            tracing::warn!(target: "node::payment", err = %e, "cannot verify the deployment file against the chain now; settlement verifies it before redeeming");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(target: "node::payment", "the chain RPC did not answer in 10 s; settlement verifies the deployment before redeeming");
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn_settler(
    gate: Arc<Gate>,
    deployment: Deployment,
    provider: DynProvider,
    operator: PrivateKeySigner,
    sender_config: SenderConfig,
    tracker: ConfirmationTracker,
    contract: Address,
    config: SettlementConfig,
    metrics: PaymentMetrics,
    chain_metrics: Option<mlbridge_sdk::chain::ChainMetrics>,
    shutdown: CancellationToken,
) -> (SettlerHandle, JoinHandle<()>) {
    let (handle, inbox) = settlement::channel();
    let task = tokio::spawn(async move {
        // TxSender::new asks the chain id; keep trying while the RPC is down.
        let sender = loop {
            match TxSender::new(provider.clone(), operator.clone(), sender_config.clone(), chain_metrics.clone()).await
            {
                Ok(s) => break Arc::new(s),
                Err(err) => {
                    tracing::warn!(target: "node::payment", %err, "settlement cannot reach the chain yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        // Never redeem against a deployment the chain does not match (checked at start only if the RPC answered).
        loop {
            match deployment.verify(&provider).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(target: "node::payment", %err, "settlement waits: the deployment is not verified");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
        let settler = Settler { gate, sender, tracker, provider, contract, config, metrics };
        settler.run(inbox, shutdown).await;
    });
    (handle, task)
}

/// Forget job records older than the audit window, once a minute.
fn spawn_pruning(gate: Arc<Gate>, retention: Duration, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let cutoff = gate::now_ms().saturating_sub(retention.as_millis() as u64);
            match gate.ledger().prune_jobs(cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(target: "node::payment", n, "job records past the audit window pruned"),
                Err(err) => tracing::warn!(target: "node::payment", %err, "pruning job records failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    })
}

fn refusal_label(r: &PaymentRefusal) -> &'static str {
    match r {
        PaymentRefusal::Required { .. } => "no_voucher",
        PaymentRefusal::UnknownChannel { .. } => "unknown_channel",
        PaymentRefusal::Unconfirmed { .. } => "unconfirmed",
        PaymentRefusal::WrongPayee { .. } => "wrong_payee",
        PaymentRefusal::BadSignature { .. } => "bad_signature",
        PaymentRefusal::Replayed { .. } => "replayed",
        PaymentRefusal::BelowAccepted { .. } => "below_accepted",
        PaymentRefusal::Underpaid { .. } => "underpaid",
        PaymentRefusal::OverDeposit { .. } => "over_deposit",
        PaymentRefusal::Expiring { .. } => "expiring",
        PaymentRefusal::Unsettleable { .. } => "unsettleable",
        PaymentRefusal::NoCredit { .. } => "no_credit",
        PaymentRefusal::Unavailable { .. } => "unavailable",
    }
}

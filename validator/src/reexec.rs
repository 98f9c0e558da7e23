//! Re-execution: run an audited job again with the node's own inference code (`mlbridge-node`'s engine, batching
//! off, no cache, so the job runs alone) and compare with what the node returned, under the model's
//! `[validation] max_abs_diff`.
//!
//! [`Reexecutor::check`] refuses a record before any work when it does not belong to the receipt, names a model
//! this validator does not hold, or carries inputs or outputs that do not hash to the receipt's hashes: only a
//! record the node is bound to by its signature can lead to a dispute.

use std::sync::Arc;

use alloy::primitives::B256;
use mlbridge_node::generate::Sampling;
use mlbridge_node::inference::{Engine, EngineOptions, ModelConfig, ModelRepository, OnnxRuntime};
use mlbridge_node::metrics::NodeMetrics;
use mlbridge_sdk::generate::GenerationAudit;
use mlbridge_sdk::protocol::{AuditRecord, ReceiptMsg, tensors_hash, texts_hash};

use crate::generation::{GenerationClaim, Verdict, verify_generation};
use mlbridge_sdk::{Tensor, TensorData};

use crate::compare::max_diff;
use crate::{Error, Result};

/// Why a record cannot be judged (none of these is evidence against the node by itself).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejected {
    /// The record is for another receipt than the one sampled.
    #[error("the record belongs to another receipt")]
    WrongReceipt,
    /// This validator does not hold the model.
    #[error("model {0} is not in this validator's repository")]
    UnknownModel(B256),
    /// The inputs do not hash to the receipt's input hash.
    #[error("the record's inputs do not hash to the receipt's input hash")]
    InputHash,
    /// The outputs do not hash to the receipt's output hash (the node served other outputs than it signed for).
    #[error("the record's outputs do not hash to the receipt's output hash")]
    OutputHash,
    /// The model refuses the inputs (wrong names, shapes, values): it will refuse them every time.
    #[error("the model refuses the record's inputs: {0}")]
    Refused(String),
    /// Re-execution failed for a reason that may pass (overloaded, a queue timeout, an internal error).
    #[error("re-execution failed: {0}")]
    Failed(String),
    /// A generation by a model version whose generations one teacher-forced pass cannot check (`[generation]
    /// verifiable = false`): judging it could condemn an honest node.
    #[error("model {0}'s generations cannot be checked by one forward pass")]
    Unverifiable(B256),
}

impl Rejected {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::WrongReceipt => "wrong_receipt",
            Self::UnknownModel(_) => "unknown_model",
            Self::InputHash => "input_hash",
            Self::OutputHash => "output_hash",
            Self::Refused(_) => "inputs_refused",
            Self::Failed(_) => "reexecution_failed",
            Self::Unverifiable(_) => "unverifiable",
        }
    }

    /// Whether the same record would be rejected again (a verdict on the record itself, not on this moment).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Failed(_))
    }
}

/// The result of re-executing one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// Whether the node's output is within the model's tolerance of ours.
    pub agrees: bool,
    /// Largest element-wise difference (`None`: the outputs' shapes or names differ, or a generation: its tokens are
    /// checked one by one, not as differences).
    pub max_diff: Option<f64>,
    /// The model's tolerance.
    pub tolerance: f64,
    /// The hash of our outputs (what a challenge commits to).
    pub ours: B256,
}

/// Re-executes jobs with the validator's own copy of the models.
#[derive(Clone, Debug)]
pub struct Reexecutor {
    engine: Engine,
}

impl Reexecutor {
    /// Open the model repository at `root` (every model is loaded and checked against its sha256).
    pub async fn open(root: &std::path::Path, onnxruntime: Option<&std::path::Path>) -> Result<Self> {
        let runtime: Arc<OnnxRuntime> = OnnxRuntime::init(onnxruntime)?;
        let repo = ModelRepository::open(root)?;
        // Every request alone: a job is re-executed outside any batch, which is what the tolerance is measured for.
        let options = EngineOptions { batching: false, threads: None, ..EngineOptions::default() };
        let metrics = NodeMetrics::new().map_err(Error::Metrics)?;
        Ok(Self { engine: Engine::start(runtime, repo, None, metrics, options).await? })
    }

    /// The engine (also used to measure tolerances).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The model with these weights (tensor, text or text-generation), if held.
    pub fn model(&self, id: B256) -> Option<&ModelConfig> {
        self.engine.configs().chain(self.engine.generation_configs()).find(|c| c.sha256.as_bytes() == id.as_slice())
    }

    /// Run `record`'s inputs through the model alone.
    pub async fn run(&self, config: &ModelConfig, record: &AuditRecord) -> std::result::Result<Vec<Tensor>, Rejected> {
        let failed = |e: mlbridge_node::Error| {
            if mlbridge_node::inference::engine::is_client_error(&e) {
                Rejected::Refused(e.to_string())
            } else {
                Rejected::Failed(e.to_string())
            }
        };
        if record.texts.is_empty() {
            let out =
                self.engine.infer(&config.name, Some(config.version), record.inputs.clone()).await.map_err(failed)?;
            Ok(out.outputs.as_ref().clone())
        } else {
            let emb = self.engine.embed(&config.name, Some(config.version), &record.texts).await.map_err(failed)?;
            let dim = emb.vectors.first().map_or(0, Vec::len);
            let data: Vec<f32> = emb.vectors.into_iter().flatten().collect();
            let shape = vec![record.texts.len() as i64, dim as i64];
            Tensor::new("embedding", shape, TensorData::Fp32(data))
                .map(|t| vec![t])
                .map_err(|e| Rejected::Refused(e.to_string()))
        }
    }

    /// Whether `record` is the record of `receipt`: the same receipt, inputs and outputs that hash to it.
    pub fn bound(&self, receipt: &ReceiptMsg, record: &AuditRecord) -> std::result::Result<(), Rejected> {
        if record.receipt.receipt().leaf() != receipt.receipt().leaf() || record.receipt.node() != receipt.node() {
            return Err(Rejected::WrongReceipt);
        }
        let (input_hash, output_hash) = match &record.generation {
            Some(g) => (g.input_hash(), g.output_hash()),
            None if record.texts.is_empty() => (tensors_hash(&record.inputs), tensors_hash(&record.outputs)),
            None => (texts_hash(&record.texts), tensors_hash(&record.outputs)),
        };
        if input_hash != receipt.input_hash {
            return Err(Rejected::InputHash);
        }
        if output_hash != receipt.output_hash {
            return Err(Rejected::OutputHash);
        }
        Ok(())
    }

    /// Check a paid generation's record: bound to the receipt, then every output token against the decoding rule
    /// its parameters and seed give, from one teacher-forced pass on a blocking thread. `ours` commits to the
    /// verdict (the output hash when the tokens pass; else a hash of the first wrong position and its reason).
    async fn check_generation(
        &self,
        receipt: &ReceiptMsg,
        record: &AuditRecord,
        g: &GenerationAudit,
    ) -> std::result::Result<Check, Rejected> {
        let config = self
            .engine
            .generation_configs()
            .find(|c| c.sha256.as_bytes() == receipt.model_id.as_slice())
            .ok_or(Rejected::UnknownModel(receipt.model_id))?
            .clone();
        self.bound(receipt, record)?;
        if !record.inputs.is_empty() || !record.outputs.is_empty() || !record.texts.is_empty() {
            return Err(Rejected::Refused("a generation's record carries tensors or texts".into()));
        }
        if !config.generation.as_ref().is_some_and(|c| c.verifiable) {
            return Err(Rejected::Unverifiable(receipt.model_id));
        }
        let generator = self.engine.generator(&config.name, Some(config.version)).await.map_err(|e| {
            if mlbridge_node::inference::engine::is_client_error(&e) {
                Rejected::Refused(e.to_string())
            } else {
                Rejected::Failed(e.to_string())
            }
        })?;
        let tolerance = config.validation.max_abs_diff;
        let g = g.clone();
        let verdict = tokio::task::spawn_blocking(move || {
            let p = &g.params;
            let claim = GenerationClaim {
                prompt: &g.prompt,
                output: &g.output,
                sampling: Sampling { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, seed: p.seed },
                max_tokens: p.max_tokens as usize,
                stop: &p.stop,
                cancelled: g.finish == mlbridge_node::payment::generation::CANCELLED,
            };
            verify_generation(&generator, &claim, tolerance as f32)
        })
        .await
        .map_err(|e| Rejected::Failed(format!("the check panicked: {e}")))?
        .map_err(|e| Rejected::Failed(e.to_string()))?;
        let (agrees, ours) = match &verdict {
            Verdict::Valid => (true, receipt.output_hash),
            Verdict::Invalid { position, reason } => {
                tracing::info!(target: "validator::audit", job = %receipt.job_id, position, reason, "generation check failed");
                (false, alloy::primitives::keccak256(format!("{position}:{reason}")))
            }
        };
        Ok(Check { agrees, max_diff: None, tolerance, ours })
    }

    /// Check `record` against `receipt` ([`Self::bound`]) and re-execute it (a text generation: check it with one
    /// teacher-forced pass, [`crate::generation`]).
    pub async fn check(&self, receipt: &ReceiptMsg, record: &AuditRecord) -> std::result::Result<Check, Rejected> {
        if let Some(g) = &record.generation {
            return self.check_generation(receipt, record, g).await;
        }
        let config = self.model(receipt.model_id).ok_or(Rejected::UnknownModel(receipt.model_id))?.clone();
        self.bound(receipt, record)?;
        let ours = self.run(&config, record).await?;
        let max_diff = outputs_diff(&record.outputs, &ours);
        let tolerance = config.validation.max_abs_diff;
        Ok(Check { agrees: max_diff.is_some_and(|d| d <= tolerance), max_diff, tolerance, ours: tensors_hash(&ours) })
    }
}

/// Largest element-wise difference between two output lists ([`crate::compare`]'s rule; `None` when names, shapes or
/// types differ). Non-float tensors must be equal.
pub fn outputs_diff(node: &[Tensor], ours: &[Tensor]) -> Option<f64> {
    if node.len() != ours.len() {
        return None;
    }
    let mut worst = 0.0f64;
    for (a, b) in node.iter().zip(ours) {
        if a.name() != b.name() || a.shape() != b.shape() {
            return None;
        }
        let d = match (a.data(), b.data()) {
            (TensorData::Fp32(x), TensorData::Fp32(y)) => max_diff(x, y)?,
            (TensorData::Fp64(x), TensorData::Fp64(y)) => max_diff(x, y)?,
            (x, y) if x == y => 0.0,
            _ => return None,
        };
        worst = worst.max(d);
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, v: Vec<f32>) -> Tensor {
        Tensor::new(name, vec![1, v.len() as i64], TensorData::Fp32(v)).unwrap()
    }

    #[test]
    fn outputs_compare_by_name_shape_and_value() {
        assert_eq!(outputs_diff(&[t("y", vec![1.0, 0.5])], &[t("y", vec![1.0, 0.25])]), Some(0.25));
        assert_eq!(outputs_diff(&[t("y", vec![1.0])], &[t("z", vec![1.0])]), None, "another name");
        assert_eq!(outputs_diff(&[t("y", vec![1.0])], &[t("y", vec![1.0, 1.0])]), None, "another shape");
        assert_eq!(outputs_diff(&[t("y", vec![1.0])], &[]), None, "missing output");
        let ids = |v: Vec<i64>| Tensor::new("ids", vec![1, v.len() as i64], TensorData::Int64(v)).unwrap();
        assert_eq!(outputs_diff(&[ids(vec![1, 2])], &[ids(vec![1, 2])]), Some(0.0));
        assert_eq!(outputs_diff(&[ids(vec![1, 2])], &[ids(vec![1, 3])]), None, "integers must be equal");
    }
}

//! Re-execution: run an audited job again with the node's own inference code (`mlbridge-node`'s engine, batching
//! off, no cache, so the job runs alone) and compare with what the node returned, under the model's
//! `[validation] max_abs_diff`.
//!
//! [`Reexecutor::check`] refuses a record before any work when it does not belong to the receipt, names a model
//! this validator does not hold, or carries inputs or outputs that do not hash to the receipt's hashes: only a
//! record the node is bound to by its signature can lead to a dispute.

use std::sync::Arc;

use alloy::primitives::B256;
use mlbridge_node::inference::{Engine, EngineOptions, ModelConfig, ModelRepository, OnnxRuntime};
use mlbridge_node::metrics::NodeMetrics;
use mlbridge_sdk::protocol::{AuditRecord, ReceiptMsg, tensors_hash, texts_hash};
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
    /// Largest element-wise difference (`None`: the outputs' shapes or names differ).
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

    /// The model with these weights, if held.
    pub fn model(&self, id: B256) -> Option<&ModelConfig> {
        self.engine.configs().find(|c| c.sha256.as_bytes() == id.as_slice())
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
        let input_hash = if record.texts.is_empty() { tensors_hash(&record.inputs) } else { texts_hash(&record.texts) };
        if input_hash != receipt.input_hash {
            return Err(Rejected::InputHash);
        }
        if tensors_hash(&record.outputs) != receipt.output_hash {
            return Err(Rejected::OutputHash);
        }
        Ok(())
    }

    /// Check `record` against `receipt` ([`Self::bound`]) and re-execute it.
    pub async fn check(&self, receipt: &ReceiptMsg, record: &AuditRecord) -> std::result::Result<Check, Rejected> {
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

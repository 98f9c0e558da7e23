//! `mlbridge-validator tolerance`: how far a job's output moves between running inside a full batch (as a node
//! runs it, padded with its batch-mates) and running alone (as a validator re-executes it). The worst deviation
//! per model is what each model's `[validation] max_abs_diff` must cover.

use mlbridge_node::inference::Task;
use mlbridge_node::inference::batch::split;

use crate::config::ValidatorConfig;
use crate::reexec::{Reexecutor, outputs_diff};
use crate::{Error, Result};

/// One model's measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Deviation {
    /// `name/version`.
    pub model: String,
    /// Samples per batch.
    pub batch: usize,
    /// Jobs compared.
    pub jobs: usize,
    /// Worst element-wise difference between batched and lone runs (`None`: shapes differed).
    pub worst: Option<f64>,
    /// The configured tolerance.
    pub tolerance: f64,
}

/// Sentences of different lengths, so a batch pads most of them.
fn sentences(n: usize) -> Vec<String> {
    let words = ["validators", "re-execute", "sampled", "jobs", "and", "compare", "outputs", "within", "tolerance"];
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % 40;
            (0..len).map(|j| words[(i + j) % words.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// Measure every model of the repository: `rounds` batches of `batch` samples (default: the model's max batch).
pub async fn measure(rx: &Reexecutor, batch: Option<usize>, rounds: usize) -> Result<Vec<Deviation>> {
    let engine = rx.engine();
    let configs: Vec<_> = engine.configs().cloned().collect();
    let mut out = Vec::new();
    for c in configs {
        let n = batch.unwrap_or(c.max_batch_size).clamp(1, c.max_batch_size.max(1));
        let (name, v) = (c.name.as_str(), Some(c.version));
        let mut worst = Some(0.0f64);
        let mut jobs = 0;
        let mut record = |d: Option<f64>| {
            jobs += 1;
            worst = match (worst, d) {
                (Some(w), Some(d)) => Some(w.max(d)),
                _ => None,
            };
        };
        if c.task == Task::TextEmbedding {
            let texts = sentences(n * rounds);
            for chunk in texts.chunks(n) {
                let together = engine.embed(name, v, chunk).await?;
                for (i, t) in chunk.iter().enumerate() {
                    let alone = engine.embed(name, v, std::slice::from_ref(t)).await?;
                    record(crate::compare::max_diff(&together.vectors[i], &alone.vectors[0]));
                }
            }
        } else {
            let inputs = c.example_inputs(n * rounds, 16);
            for chunk in split(inputs, &vec![n; rounds]) {
                let together = engine.infer(name, v, chunk.clone()).await?;
                let per_job = split(together.outputs.as_ref().clone(), &vec![1; n]);
                for (sample, outputs) in split(chunk, &vec![1; n]).into_iter().zip(per_job) {
                    let alone = engine.infer(name, v, sample).await?;
                    record(outputs_diff(&outputs, &alone.outputs));
                }
            }
        }
        out.push(Deviation { model: c.key(), batch: n, jobs, worst, tolerance: c.validation.max_abs_diff });
    }
    Ok(out)
}

/// Print the measurement of every model in the configured repository.
pub async fn report(config: &ValidatorConfig, batch: Option<usize>, rounds: usize) -> Result<()> {
    if rounds == 0 {
        return Err(Error::Config { path: "--rounds".into(), reason: "measure at least one batch".into() });
    }
    let rx = Reexecutor::open(&config.model_repository, config.onnxruntime.as_deref()).await?;
    println!("{:<16} {:>5} {:>5} {:>12} {:>12}  verdict", "model", "batch", "jobs", "worst diff", "tolerance");
    for d in measure(&rx, batch, rounds).await? {
        let (worst, ok) = match d.worst {
            Some(w) => (format!("{w:.3e}"), w <= d.tolerance),
            None => ("shape".into(), false),
        };
        let verdict = if ok { "ok" } else { "TOLERANCE TOO TIGHT: honest nodes would be challenged" };
        println!("{:<16} {:>5} {:>5} {:>12} {:>12.1e}  {verdict}", d.model, d.batch, d.jobs, worst, d.tolerance);
    }
    Ok(())
}

//! The dynamic batcher: one dedicated OS thread per model owns its ONNX Runtime session (never the async runtime).
//!
//! Requests arrive over a bounded queue. The worker takes the first, then gathers more until `preferred_batch_size`
//! samples or until `max_queue_delay` has passed since the first arrived (as Triton does), stacks them (padding
//! ragged dimensions when the model allows it), runs the model once and splits the outputs. A full queue refuses at
//! once with [`Error::Overloaded`]: load beyond capacity never becomes a growing backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use mlbridge_sdk::Tensor;
use tokio::sync::oneshot;

use super::batch::{same_sample_shapes, split, stack};
use super::model::LoadedModel;
use crate::metrics::NodeMetrics;
use crate::{Error, Result};

/// Timings of one answered request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    /// Time spent waiting in the queue.
    pub queue_wait: Duration,
    /// Time of the execution that served it.
    pub compute: Duration,
    /// Samples in that execution.
    pub batch_samples: usize,
}

/// What a request gets back: its outputs and timings, or the error of its execution.
pub type Answer = Result<(Vec<Tensor>, Timing)>;

type Reply = oneshot::Sender<Answer>;

struct Job {
    inputs: Vec<Tensor>,
    samples: usize,
    enqueued: Instant,
    /// Answer "overloaded" instead of running if the job is still queued at this instant.
    queue_deadline: Option<Instant>,
    reply: Reply,
}

/// Handle to a model's batcher thread. The thread ends when the handle is dropped.
#[derive(Debug)]
pub struct Batcher {
    model: Arc<LoadedModel>,
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

impl Batcher {
    /// Start the worker thread. `batching = false` executes every request on its own.
    pub fn start(model: Arc<LoadedModel>, capacity: usize, batching: bool, metrics: NodeMetrics) -> Result<Self> {
        let (tx, rx) = sync_channel(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let worker =
            Worker { model: model.clone(), rx, depth: depth.clone(), batching, metrics, label: model.config().key() };
        std::thread::Builder::new()
            .name(format!("batcher-{}", model.config().key()))
            .spawn(move || worker.run())
            .map_err(|e| Error::Inference {
                model: model.config().key(),
                reason: format!("cannot start thread: {e}"),
            })?;
        Ok(Self { model, tx, depth, capacity })
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Validate and enqueue a request; the answer arrives on the returned channel. Refuses at once when full.
    /// With `queue_timeout`, a request still waiting after that long is answered "overloaded" without running.
    pub fn submit(&self, inputs: Vec<Tensor>, queue_timeout: Option<Duration>) -> Result<oneshot::Receiver<Answer>> {
        let samples = self.model.validate(&inputs)?;
        self.enqueue(inputs, samples, queue_timeout)
    }

    /// Enqueue a request the caller has validated (`samples` = its batch size).
    pub(crate) fn enqueue(
        &self,
        inputs: Vec<Tensor>,
        samples: usize,
        queue_timeout: Option<Duration>,
    ) -> Result<oneshot::Receiver<Answer>> {
        let (reply, rx) = oneshot::channel();
        let enqueued = Instant::now();
        let job = Job { inputs, samples, enqueued, queue_deadline: queue_timeout.map(|t| enqueued + t), reply };
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Overloaded { model: self.model.config().key(), capacity: self.capacity })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                Err(Error::Inference { model: self.model.config().key(), reason: "batcher thread stopped".into() })
            }
        }
    }
}

struct Worker {
    model: Arc<LoadedModel>,
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    batching: bool,
    metrics: NodeMetrics,
    label: String,
}

impl Worker {
    fn run(self) {
        let config = self.model.config();
        let max = config.preferred_batch_size.unwrap_or(config.max_batch_size).min(config.max_batch_size);
        let delay = Duration::from_micros(config.max_queue_delay_us);
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match self.rx.recv() {
                    Ok(job) => job,
                    Err(_) => return, // every handle dropped
                },
            };
            let deadline = first.enqueued + delay;
            let mut total = first.samples;
            let mut jobs = vec![first];
            while self.batching && total < max {
                let now = Instant::now();
                // Past the deadline we still take what is already queued, without waiting.
                let next = if now >= deadline {
                    self.rx.try_recv().map_err(|_| ())
                } else {
                    self.rx.recv_timeout(deadline - now).map_err(|_| ())
                };
                match next {
                    Ok(job) if total + job.samples <= max => {
                        total += job.samples;
                        jobs.push(job);
                    }
                    Ok(job) => {
                        carry = Some(job);
                        break;
                    }
                    Err(()) => break,
                }
            }
            self.depth.fetch_sub(jobs.len(), Ordering::Relaxed);
            self.metrics.queue_depth.with_label_values(&[&self.label]).set(self.depth.load(Ordering::Relaxed) as i64);
            // Jobs whose queue deadline passed are answered without running: their client has moved on.
            let now = Instant::now();
            let (late, jobs): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| j.queue_deadline.is_some_and(|d| now > d));
            for job in late {
                let waited = now.duration_since(job.enqueued);
                let _ = job
                    .reply
                    .send(Err(Error::QueueTimeout { model: self.label.clone(), waited_ms: waited.as_millis() as u64 }));
            }
            // Jobs whose requester went away (a closed connection, an HTTP timeout) are not run: a paid one was
            // released when its handler was dropped, so running it would be free work for nobody.
            let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
            if !jobs.is_empty() {
                self.execute(jobs);
            }
        }
    }

    /// Run the gathered jobs: all together when their shapes allow (or the model pads), else in shape groups.
    fn execute(&self, jobs: Vec<Job>) {
        let ragged = self.model.config().ragged_padding;
        let mut groups: Vec<Vec<Job>> = Vec::new();
        for job in jobs {
            match groups.iter_mut().find(|g| ragged || same_sample_shapes(&g[0].inputs, &job.inputs)) {
                Some(g) => g.push(job),
                None => groups.push(vec![job]),
            }
        }
        for group in groups {
            self.execute_group(group);
        }
    }

    fn execute_group(&self, jobs: Vec<Job>) {
        let started = Instant::now();
        let sizes: Vec<usize> = jobs.iter().map(|j| j.samples).collect();
        let samples: usize = sizes.iter().sum();
        let (inputs, replies): (Vec<Vec<Tensor>>, Vec<(Reply, Instant)>) =
            jobs.into_iter().map(|j| (j.inputs, (j.reply, j.enqueued))).unzip();
        let m = &self.metrics;
        // Back to 0 when the run ends, however it ends (a panic in ONNX Runtime's bindings included).
        let running = Running(m.running_samples.with_label_values(&[&self.label]));
        running.0.set(samples as i64);
        // A batch keeps its requests' inputs until it succeeds, to re-run them alone if it fails.
        let (result, kept) = if inputs.len() == 1 {
            (self.model.execute(inputs.into_iter().next().expect("one")), None)
        } else {
            (self.model.execute(stack(self.model.config(), &inputs)), Some(inputs))
        };
        drop(running);
        let compute = started.elapsed();
        m.executions.with_label_values(&[&self.label]).inc();
        m.inferences.with_label_values(&[&self.label]).inc_by(samples as u64);
        m.batch_size.with_label_values(&[&self.label]).observe(samples as f64);
        m.compute_seconds.with_label_values(&[&self.label]).observe(compute.as_secs_f64());
        tracing::trace!(target: "node::batcher", model = %self.label, batch = samples, requests = sizes.len(), "executed");
        match result {
            Ok(outputs) => {
                let parts = if sizes.len() == 1 { vec![outputs] } else { split(outputs, &sizes) };
                for ((reply, enqueued), outputs) in replies.into_iter().zip(parts) {
                    let queue_wait = started.saturating_duration_since(enqueued);
                    m.queue_wait_seconds.with_label_values(&[&self.label]).observe(queue_wait.as_secs_f64());
                    let _ = reply.send(Ok((outputs, Timing { queue_wait, compute, batch_samples: samples })));
                }
            }
            Err(err) if replies.len() > 1 => {
                // One request the checks let through can fail a whole batch: run each alone, so only it fails.
                tracing::warn!(target: "node::batcher", model = %self.label, %err, requests = replies.len(),
                    "a batch failed; running its requests one by one");
                for ((reply, enqueued), inputs) in replies.into_iter().zip(kept.unwrap_or_default()) {
                    let samples = inputs.first().and_then(|t| t.shape().first()).map_or(1, |&b| b.max(1) as usize);
                    let job = Job { inputs, samples, enqueued, queue_deadline: None, reply };
                    self.execute_group(vec![job]);
                }
            }
            Err(err) => {
                tracing::error!(target: "node::batcher", model = %self.label, %err, "execution failed");
                let reason = err.to_string();
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Inference { model: self.label.clone(), reason: reason.clone() }));
                }
            }
        }
    }
}

/// The running-samples gauge of one execution; resets it to 0 when dropped.
struct Running(prometheus::IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

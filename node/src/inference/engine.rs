//! The inference engine: every model of the repository with its batcher, the result cache and the metrics.
//!
//! `infer` is the one path every front end uses (HTTP today, libp2p next): resolve the model (the highest version
//! when none is named), answer from the cache when possible, else validate, queue on the model's batcher and wait.
//! Eager models load at start and a broken one stops the start with its name and reason; lazy ones load on first
//! use. Loading (hashing, graph optimisation) runs on blocking threads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlbridge_sdk::{Tensor, TensorData};
use tokio::sync::OnceCell;

use super::batcher::{Batcher, Timing};
use super::cache::{ResultCache, cache_key};
use super::config::{LoadPolicy, ModelConfig, Task};
use super::image::ImageClassifier;
use super::repository::ModelRepository;
use super::runtime::OnnxRuntime;
use super::text::TextEncoder;
use crate::generate::{ChatTokenizer, Decoder, Generator};
use crate::metrics::NodeMetrics;
use crate::{Error, Result};

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Dynamic batching on (default) or every request executed alone.
    pub batching: bool,
    /// Queue capacity per model; beyond it requests are refused as overloaded.
    pub queue_capacity: usize,
    /// Override every model's intra-op thread count.
    pub threads: Option<usize>,
    /// Texts one embeddings request may hold (each is a priced unit of work).
    pub max_texts_per_request: usize,
    /// Bytes one text may hold (longer texts are refused, not silently truncated).
    pub max_text_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self::from(&crate::config::InferenceConfig::default())
    }
}

impl From<&crate::config::InferenceConfig> for EngineOptions {
    fn from(c: &crate::config::InferenceConfig) -> Self {
        Self {
            batching: c.batching,
            queue_capacity: c.queue_capacity,
            threads: c.threads,
            max_texts_per_request: c.max_texts_per_request.max(1),
            max_text_bytes: c.max_text_bytes.max(1),
        }
    }
}

/// The answer to one inference.
#[derive(Clone, Debug)]
pub struct Inference {
    /// `name/version` that ran.
    pub model: String,
    /// Version that ran.
    pub version: u64,
    /// Outputs in config order.
    pub outputs: Arc<Vec<Tensor>>,
    /// Answered from the cache.
    pub cached: bool,
    /// Queue and compute timings (zero for cache hits).
    pub timing: Timing,
}

impl Inference {
    /// The first output's rows as vectors (an embedding model's one per sample).
    pub fn rows(&self) -> Result<Vec<Vec<f32>>> {
        let bad = |output: &str| Error::BadOutput {
            model: self.model.clone(),
            output: output.into(),
            expected: mlbridge_sdk::DataType::Fp32,
        };
        let out = self.outputs.first().ok_or_else(|| bad("(none)"))?;
        let TensorData::Fp32(data) = out.data() else { return Err(bad(out.name())) };
        let dim = out.shape().get(1).copied().unwrap_or(0).max(1) as usize;
        Ok(data.chunks(dim).map(<[f32]>::to_vec).collect())
    }
}

/// Sentence embeddings of a batch of texts.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// `name/version` that ran.
    pub model: String,
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens consumed (special tokens included).
    pub tokens: usize,
}

struct Slot {
    config: ModelConfig,
    batcher: OnceCell<Arc<Batcher>>,
    encoder: OnceCell<Arc<TextEncoder>>,
    classifier: OnceCell<Arc<ImageClassifier>>,
}

struct GenSlot {
    config: ModelConfig,
    generator: OnceCell<Arc<Generator>>,
}

struct Inner {
    runtime: Arc<OnnxRuntime>,
    repo: ModelRepository,
    slots: BTreeMap<(String, u64), Slot>,
    /// Text-generation models (served by their own schedulers, not by batchers).
    generators: BTreeMap<(String, u64), GenSlot>,
    cache: Option<ResultCache>,
    metrics: NodeMetrics,
    options: EngineOptions,
}

/// Cloneable handle to the engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("models", &self.inner.slots.len()).finish()
    }
}

impl Engine {
    /// Refuse an embeddings request over the per-request limits before any work (or payment) happens.
    pub fn check_texts(&self, texts: &[String]) -> Result<()> {
        let o = &self.inner.options;
        if texts.is_empty() {
            return Err(Error::EmptyInput);
        }
        if texts.len() > o.max_texts_per_request {
            return Err(Error::TooLarge {
                what: format!("{} texts in one request", texts.len()),
                limit: format!("{} per request (inference.max_texts_per_request)", o.max_texts_per_request),
            });
        }
        if let Some(long) = texts.iter().find(|t| t.len() > o.max_text_bytes) {
            return Err(Error::TooLarge {
                what: format!("a text of {} bytes", long.len()),
                limit: format!("{} bytes (inference.max_text_bytes)", o.max_text_bytes),
            });
        }
        Ok(())
    }

    /// Open every model of the repository and load the eager ones. Fails on the first model that cannot load.
    pub async fn start(
        runtime: Arc<OnnxRuntime>,
        repo: ModelRepository,
        cache: Option<ResultCache>,
        metrics: NodeMetrics,
        options: EngineOptions,
    ) -> Result<Self> {
        let configs = repo.configs().map(|c| {
            let mut config = c.clone();
            if let Some(t) = options.threads {
                config.intra_op_threads = t;
            }
            ((c.name.clone(), c.version), config)
        });
        let (generate, tensors): (Vec<_>, Vec<_>) = configs.partition(|(_, c)| c.task == Task::TextGeneration);
        let slots = tensors
            .into_iter()
            .map(|(k, config)| {
                (k, Slot { config, batcher: OnceCell::new(), encoder: OnceCell::new(), classifier: OnceCell::new() })
            })
            .collect();
        let generators =
            generate.into_iter().map(|(k, config)| (k, GenSlot { config, generator: OnceCell::new() })).collect();
        let engine = Self { inner: Arc::new(Inner { runtime, repo, slots, generators, cache, metrics, options }) };
        for ((name, version), slot) in &engine.inner.generators {
            if slot.config.load == LoadPolicy::Eager {
                engine.generator(name, Some(*version)).await?;
            }
        }
        for ((name, version), slot) in &engine.inner.slots {
            if slot.config.load == LoadPolicy::Eager {
                engine.batcher(name, Some(*version)).await?;
                if slot.config.task == Task::TextEmbedding {
                    engine.encoder(name, Some(*version)).await?;
                }
                if slot.config.image.is_some() {
                    engine.classifier(name, Some(*version)).await?;
                }
            }
        }
        Ok(engine)
    }

    /// The metrics.
    pub fn metrics(&self) -> &NodeMetrics {
        &self.inner.metrics
    }

    /// Every tensor model version's config (text-generation models excepted), by name then version.
    pub fn configs(&self) -> impl Iterator<Item = &ModelConfig> {
        self.inner.slots.values().map(|s| &s.config)
    }

    /// Every text-generation model version's config, by name then version.
    pub fn generation_configs(&self) -> impl Iterator<Item = &ModelConfig> {
        self.inner.generators.values().map(|s| &s.config)
    }

    /// The generator of a text-generation model (the given version or the highest), loading it on first use.
    pub async fn generator(&self, name: &str, version: Option<u64>) -> Result<Arc<Generator>> {
        let found = match version {
            Some(v) => self.inner.generators.get(&(name.to_owned(), v)),
            None => self
                .inner
                .generators
                .range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
                .next_back()
                .map(|(_, s)| s),
        };
        let Some(slot) = found else {
            if self.slot(name, version).is_ok() {
                return Err(Error::BadRequest(format!(
                    "model {name} is not a text-generation model; use /v1/embeddings or the KServe v2 infer endpoint"
                )));
            }
            return Err(Error::UnknownModel { name: name.to_owned(), version });
        };
        let generator = slot
            .generator
            .get_or_try_init(|| async {
                let inner = self.inner.clone();
                let config = slot.config.clone();
                let key = config.key();
                let started = Instant::now();
                let generator = tokio::task::spawn_blocking(move || {
                    let bytes = inner.repo.read_verified(&config)?;
                    let decoder = Decoder::from_bytes(&inner.runtime, &config, &bytes)?;
                    let dir = inner.repo.version_dir(&config);
                    let (Some(tok), Some(generation)) = (&config.tokenizer, &config.generation) else {
                        return Err(Error::NotTextModel { model: config.key() });
                    };
                    let tokenizer = ChatTokenizer::load(&dir, tok, &generation.chat_template, &config.key())?;
                    let capacity = inner.options.queue_capacity;
                    Generator::start(decoder, Arc::new(tokenizer), config, capacity, inner.metrics.clone())
                })
                .await
                .map_err(|e| Error::LoadFailed { model: key.clone(), reason: e.to_string() })??;
                self.inner.metrics.model_load_seconds.with_label_values(&[&key]).set(started.elapsed().as_secs_f64());
                tracing::info!(target: "node::inference", model = %key, "text-generation model loaded");
                Ok::<_, Error>(Arc::new(generator))
            })
            .await?;
        Ok(generator.clone())
    }

    /// A model's config: the given version or the highest.
    pub fn config(&self, name: &str, version: Option<u64>) -> Result<&ModelConfig> {
        self.slot(name, version).map(|s| &s.config)
    }

    /// Versions served under `name`, ascending.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.inner.slots.keys().filter(|(n, _)| n == name).map(|(_, v)| *v).collect()
    }

    /// Whether a model version is loaded and can answer now.
    pub fn is_ready(&self, name: &str, version: Option<u64>) -> bool {
        self.slot(name, version).is_ok_and(|s| s.batcher.initialized())
    }

    /// Requests each model may queue before it answers "overloaded".
    pub fn queue_capacity(&self) -> usize {
        self.inner.options.queue_capacity
    }

    /// Queue depth of a model version (0 when not loaded).
    pub fn queue_depth(&self, name: &str, version: Option<u64>) -> usize {
        self.slot(name, version).ok().and_then(|s| s.batcher.get()).map_or(0, |b| b.queue_depth())
    }

    fn slot(&self, name: &str, version: Option<u64>) -> Result<&Slot> {
        let found = match version {
            Some(v) => self.inner.slots.get(&(name.to_owned(), v)),
            None => {
                self.inner.slots.range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX)).next_back().map(|(_, s)| s)
            }
        };
        found.ok_or_else(|| {
            if self.inner.generators.keys().any(|(n, _)| n == name) {
                return Error::BadRequest(format!(
                    "model {name} is a text-generation model; use /v1/completions or /v1/chat/completions"
                ));
            }
            Error::UnknownModel { name: name.to_owned(), version }
        })
    }

    async fn batcher(&self, name: &str, version: Option<u64>) -> Result<Arc<Batcher>> {
        let slot = self.slot(name, version)?;
        let batcher = slot
            .batcher
            .get_or_try_init(|| async {
                let inner = self.inner.clone();
                let config = slot.config.clone();
                let key = config.key();
                let started = Instant::now();
                let model = tokio::task::spawn_blocking(move || inner.repo.load_config(&inner.runtime, config))
                    .await
                    .map_err(|e| Error::LoadFailed { model: key.clone(), reason: e.to_string() })??;
                self.inner.metrics.model_load_seconds.with_label_values(&[&key]).set(started.elapsed().as_secs_f64());
                let b = Batcher::start(
                    Arc::new(model),
                    self.inner.options.queue_capacity,
                    self.inner.options.batching,
                    self.inner.metrics.clone(),
                )?;
                Ok::<_, Error>(Arc::new(b))
            })
            .await?;
        Ok(batcher.clone())
    }

    async fn encoder(&self, name: &str, version: Option<u64>) -> Result<Arc<TextEncoder>> {
        let slot = self.slot(name, version)?;
        let key = slot.config.key();
        let tokenizer = match (&slot.config.task, &slot.config.tokenizer) {
            (Task::TextEmbedding, Some(t)) => t.clone(),
            _ => return Err(Error::NotTextModel { model: key }),
        };
        let dir = self.inner.repo.version_dir(&slot.config);
        let enc = slot
            .encoder
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || TextEncoder::load(&dir, &tokenizer, &key))
                    .await
                    .map_err(|e| Error::Tokenizer { model: String::new(), reason: e.to_string() })?
                    .map(Arc::new)
            })
            .await?;
        Ok(enc.clone())
    }

    /// The preprocessing and labels of an image classifier (a model with an `[image]` section).
    pub async fn classifier(&self, name: &str, version: Option<u64>) -> Result<Arc<ImageClassifier>> {
        let slot = self.slot(name, version)?;
        let key = slot.config.key();
        let (Some(image), [input], [output]) =
            (slot.config.image.clone(), slot.config.inputs.as_slice(), slot.config.outputs.as_slice())
        else {
            return Err(Error::BadRequest(format!(
                "model {key} is not an image classifier (it has no [image] section)"
            )));
        };
        let (input, classes) = (input.name.clone(), output.dims.iter().product::<i64>() as usize);
        let dir = self.inner.repo.version_dir(&slot.config);
        let classifier = slot
            .classifier
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || ImageClassifier::load(&dir, &image, &input, classes, &key))
                    .await
                    .map_err(|e| Error::LoadFailed { model: String::new(), reason: e.to_string() })?
                    .map(Arc::new)
            })
            .await?;
        Ok(classifier.clone())
    }

    /// Run one inference request (any batch size up to the model's limit).
    pub async fn infer(&self, name: &str, version: Option<u64>, inputs: Vec<Tensor>) -> Result<Inference> {
        self.infer_within(name, version, inputs, None).await
    }

    /// Like [`Self::infer`], refusing to run the request if it waits in the queue longer than `queue_timeout`.
    pub async fn infer_within(
        &self,
        name: &str,
        version: Option<u64>,
        inputs: Vec<Tensor>,
        queue_timeout: Option<Duration>,
    ) -> Result<Inference> {
        let started = Instant::now();
        let slot = self.slot(name, version)?;
        let key = slot.config.key();
        let result = self.infer_inner(slot, inputs, queue_timeout).await;
        let outcome = match &result {
            Ok(i) if i.cached => "cache_hit",
            Ok(_) => "ok",
            Err(Error::Overloaded { .. } | Error::QueueTimeout { .. }) => "overloaded",
            Err(e) if is_client_error(e) => "client_error",
            Err(_) => "error",
        };
        let m = &self.inner.metrics;
        m.requests.with_label_values(&[&key, outcome]).inc();
        if result.is_ok() {
            m.request_seconds.with_label_values(&[&key]).observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn infer_inner(
        &self,
        slot: &Slot,
        inputs: Vec<Tensor>,
        queue_timeout: Option<Duration>,
    ) -> Result<Inference> {
        let config = &slot.config;
        let key = config.key();
        // Bad input is refused before it can touch the cache or a queue; this is the request's only validation.
        let samples = config.validate_inputs(&inputs)?;
        // (Keyed by what was sent: an image by its bytes.)
        let cache_key = self.inner.cache.as_ref().map(|_| cache_key(&config.sha256, &inputs));
        if let (Some(cache), Some(ck)) = (&self.inner.cache, &cache_key) {
            if let Some(outputs) = cache.get(ck).await {
                self.inner.metrics.cache_hits.with_label_values(&[&key]).inc();
                return Ok(Inference {
                    model: key,
                    version: config.version,
                    outputs,
                    cached: true,
                    timing: Timing::default(),
                });
            }
            self.inner.metrics.cache_misses.with_label_values(&[&key]).inc();
        }
        let image = match &config.image {
            Some(i) => super::image::encoded(i, &key, &inputs)?.is_some(),
            None => false,
        };
        let inputs = if image { self.pixels(config, inputs).await? } else { inputs };
        let batcher = self.batcher(&config.name, Some(config.version)).await?;
        let rx = batcher.enqueue(inputs, samples, queue_timeout)?;
        let (outputs, timing) =
            rx.await.map_err(|_| Error::Inference { model: key.clone(), reason: "batcher stopped".into() })??;
        let outputs = Arc::new(outputs);
        if let (Some(cache), Some(ck)) = (&self.inner.cache, cache_key) {
            cache.insert(ck, outputs.clone()).await;
        }
        Ok(Inference { model: key, version: config.version, outputs, cached: false, timing })
    }

    /// An image request's input tensor: the encoded image decoded and preprocessed into the model's pixels, on a
    /// blocking thread (cached by the image's bytes).
    async fn pixels(&self, config: &ModelConfig, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let classifier = self.classifier(&config.name, Some(config.version)).await?;
        let key = config.key();
        let Some((_, _, TensorData::Uint8(bytes))) = inputs.into_iter().next().map(Tensor::into_parts) else {
            return Err(Error::BadImage { model: key, reason: "no encoded image".into() });
        };
        let model = key.clone();
        tokio::task::spawn_blocking(move || classifier.pixels(&bytes, &key).map(|t| vec![t]))
            .await
            .map_err(|e| Error::Inference { model, reason: format!("preprocessing the image: {e}") })?
    }

    /// Embed texts with a text-embedding model (tokenize, batch up to the model's limit, infer, split vectors).
    pub async fn embed(&self, name: &str, version: Option<u64>, texts: &[String]) -> Result<Embeddings> {
        self.check_texts(texts)?;
        let slot = self.slot(name, version)?;
        let (config_name, config_version, max) =
            (slot.config.name.clone(), slot.config.version, slot.config.max_batch_size);
        let encoder = self.encoder(&config_name, Some(config_version)).await?;
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        let mut model = String::new();
        for chunk in texts.chunks(max) {
            let enc = encoder.clone();
            let owned = chunk.to_vec();
            let (inputs, n) = tokio::task::spawn_blocking(move || enc.encode_batch(&owned))
                .await
                .map_err(|e| Error::Tokenizer { model: String::new(), reason: e.to_string() })??;
            tokens += n;
            let inference = self.infer(&config_name, Some(config_version), inputs).await?;
            vectors.extend(inference.rows()?);
            model = inference.model;
        }
        Ok(Embeddings { model, vectors, tokens })
    }

    /// The model inputs of token-id sequences for a text-embedding model (see [`TextEncoder::encode_ids`]), at most
    /// one batch of the model (the job runs, and is re-executed by validators, as one inference); and the token
    /// count. Nothing runs yet: the caller can price the job first.
    pub async fn encode_ids(
        &self,
        name: &str,
        version: Option<u64>,
        seqs: &[Vec<u32>],
    ) -> Result<(Vec<Tensor>, usize)> {
        let slot = self.slot(name, version)?;
        let (key, max) = (slot.config.key(), slot.config.max_batch_size);
        if seqs.len() > max {
            return Err(Error::TooLarge {
                what: format!("{} token-id sequences in one request", seqs.len()),
                limit: format!("{max} (the batch size of model {key}); send texts, or several requests"),
            });
        }
        let encoder = self.encoder(name, version).await?;
        encoder.encode_ids(seqs, &key)
    }

    /// Wait until every model's queue is empty or `timeout` passes (for shutdown).
    pub async fn drain(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self.inner.slots.values().any(|s| s.batcher.get().is_some_and(|b| b.queue_depth() > 0))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Whether an error is the client's fault (4xx) rather than the node's.
pub fn is_client_error(e: &Error) -> bool {
    matches!(
        e,
        Error::UnknownModel { .. }
            | Error::MissingInput { .. }
            | Error::UnknownInput { .. }
            | Error::WrongDataType { .. }
            | Error::WrongShape { .. }
            | Error::BadBatch { .. }
            | Error::NotTextModel { .. }
            | Error::EmptyInput
            | Error::TooLarge { .. }
            | Error::ValueOutOfRange { .. }
            | Error::NotFinite { .. }
            | Error::BadRequest(_)
            | Error::BadImage { .. }
            | Error::Sdk(_)
    )
}

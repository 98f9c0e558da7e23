//! Inference: the model repository, ONNX Runtime sessions, the dynamic batcher, the result cache and the engine.
//!
//! - [`runtime`] finds and loads the ONNX Runtime shared library once per process.
//! - [`config`] is a model's `config.toml`: tensor signatures, batching limits, price, validation tolerance.
//! - [`repository`] scans `models/<name>/<version>/`, verifies each file's sha256 (the model id) and loads sessions.
//! - [`model`] is a loaded model: input validation and a blocking `run`.
//! - [`batcher`] runs one model on a dedicated thread, batching queued requests; a full queue means "overloaded".
//! - [`cache`] answers repeated requests (in memory, or Redis for a fleet).
//! - [`text`] tokenizes text for embedding models; [`image`] decodes and preprocesses images for image classifiers.
//! - [`engine`] ties them together: the one `infer` path for every front end.

pub mod batch;
pub mod batcher;
pub mod cache;
pub mod config;
pub mod engine;
pub mod image;
pub mod model;
pub mod repository;
pub mod runtime;
pub mod text;

pub use batcher::{Batcher, Timing};
pub use cache::ResultCache;
pub use config::{LoadPolicy, ModelConfig, Task, TensorSpec};
pub use engine::{Embeddings, Engine, EngineOptions, Inference};
pub use model::LoadedModel;
pub use repository::ModelRepository;
pub use runtime::OnnxRuntime;

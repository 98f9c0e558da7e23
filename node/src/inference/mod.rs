//! Inference: the model repository, ONNX Runtime sessions and (later) the dynamic batcher and result cache.
//!
//! - [`runtime`] finds and loads the ONNX Runtime shared library once per process.
//! - [`config`] is a model's `config.toml`: tensor signatures, batching limits, price, validation tolerance.
//! - [`repository`] scans `models/<name>/<version>/`, verifies each file's sha256 (the model id) and loads sessions.
//! - [`model`] is a loaded model: input validation and a blocking `run`; callers on an async runtime must call it
//!   from a blocking thread.

pub mod config;
pub mod model;
pub mod repository;
pub mod runtime;

pub use config::{LoadPolicy, ModelConfig, Task, TensorSpec};
pub use model::LoadedModel;
pub use repository::ModelRepository;
pub use runtime::OnnxRuntime;

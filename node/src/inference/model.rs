//! A loaded model version: its config, its id, and an ONNX Runtime session.
//!
//! [`LoadedModel::run`] validates a request against `config.toml` (names, datatypes, shapes, batch limit) before
//! anything reaches ONNX Runtime, so bad input becomes a typed error, never a runtime crash. It blocks: async callers
//! run it on a blocking thread.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlbridge_sdk::{DataType, ModelId, Tensor, TensorData};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorElementType};

use super::config::{ModelConfig, TensorSpec};
use super::runtime::OnnxRuntime;
use crate::{Error, Result};

/// A model ready to run.
#[derive(Debug)]
pub struct LoadedModel {
    config: ModelConfig,
    id: ModelId,
    session: Mutex<Session>,
    load_time: Duration,
}

impl LoadedModel {
    /// Create a session from verified model bytes and check the graph's signature against the config.
    pub(crate) fn from_bytes(runtime: &OnnxRuntime, config: ModelConfig, id: ModelId, bytes: &[u8]) -> Result<Self> {
        let started = Instant::now();
        let key = config.key();
        let session = session(runtime, &config, bytes, true)?;
        check_signature(&config, &session)?;
        let load_time = started.elapsed();
        tracing::info!(target: "node::inference", model = %key, id = %id, ms = load_time.as_millis() as u64, "model loaded");
        Ok(Self { config, id, session: Mutex::new(session), load_time })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model id (sha256 of model.onnx).
    pub fn id(&self) -> ModelId {
        self.id
    }

    /// Time spent creating the session.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Check a request's tensors against the config; returns the batch size.
    pub fn validate(&self, inputs: &[Tensor]) -> Result<usize> {
        self.config.validate_inputs(inputs)
    }

    /// Validate `inputs` and run the model once. Returns the outputs in config order. Blocks the calling thread.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.validate(&inputs)?;
        self.execute(inputs)
    }

    /// Run inputs that were already validated (the batcher's path: requests are checked once, on entry).
    pub(crate) fn execute(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let model = self.config.key();
        let fail = |e: ort::Error| Error::Inference { model: model.clone(), reason: e.to_string() };
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for t in inputs {
            let (name, shape, data) = t.into_parts();
            values.push((name, to_value(shape, data).map_err(fail)?));
        }
        let mut session = self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let outputs = session.run(values).map_err(fail)?;
        self.config.outputs.iter().map(|spec| from_value(&model, spec, outputs.get(&spec.name))).collect()
    }
}

/// An ONNX Runtime session of `config`'s model from its verified bytes: full graph optimisation, the config's intra-op
/// threads (and spinning, turned off only when asked), one inter-op thread; `memory_pattern` for fixed-shape reuse.
pub(crate) fn session(
    runtime: &OnnxRuntime,
    config: &ModelConfig,
    bytes: &[u8],
    memory_pattern: bool,
) -> Result<Session> {
    let fail = |e: ort::Error| Error::SessionCreate { model: config.key(), reason: e.to_string() };
    let mut builder = Session::builder(runtime.env())
        .map_err(fail)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(e.into()))?
        .with_intra_threads(config.intra_op_threads)
        .map_err(|e| fail(e.into()))?;
    if !config.intra_op_spinning {
        builder = builder.with_intra_op_spinning(false).map_err(|e| fail(e.into()))?;
    }
    builder = builder.with_inter_threads(1).map_err(|e| fail(e.into()))?;
    if memory_pattern {
        builder = builder.with_memory_pattern(true).map_err(|e| fail(e.into()))?;
    }
    builder.commit_from_memory(bytes).map_err(fail)
}

fn to_value(shape: Vec<i64>, data: TensorData) -> ort::Result<DynValue> {
    use ort::value::Tensor as OrtTensor;
    Ok(match data {
        TensorData::Bool(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
    })
}

fn from_value(model: &str, spec: &TensorSpec, value: Option<&DynValue>) -> Result<Tensor> {
    let bad = || Error::BadOutput { model: model.to_owned(), output: spec.name.clone(), expected: spec.datatype };
    let value = value.ok_or_else(bad)?;
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(|_| bad())?;
            (shape.to_vec(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match spec.datatype {
        DataType::Bool => extract!(bool, Bool),
        DataType::Uint8 => extract!(u8, Uint8),
        DataType::Int8 => extract!(i8, Int8),
        DataType::Int32 => extract!(i32, Int32),
        DataType::Int64 => extract!(i64, Int64),
        DataType::Fp32 => extract!(f32, Fp32),
        DataType::Fp64 => extract!(f64, Fp64),
    };
    Ok(Tensor::new(spec.name.clone(), shape, data)?)
}

fn element_type(dt: DataType) -> TensorElementType {
    match dt {
        DataType::Bool => TensorElementType::Bool,
        DataType::Uint8 => TensorElementType::Uint8,
        DataType::Int8 => TensorElementType::Int8,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
    }
}

/// The graph must have exactly the configured inputs and at least the configured outputs, with the same element
/// types and ranks, and fixed sizes that agree.
fn check_signature(config: &ModelConfig, session: &Session) -> Result<()> {
    let mismatch = |reason: String| Error::SignatureMismatch { model: config.key(), reason };
    let graph_inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let config_inputs: Vec<&str> = config.inputs.iter().map(|s| s.name.as_str()).collect();
    let mut sorted_graph = graph_inputs.clone();
    let mut sorted_config = config_inputs.clone();
    sorted_graph.sort_unstable();
    sorted_config.sort_unstable();
    if sorted_graph != sorted_config {
        return Err(mismatch(format!("graph inputs are {graph_inputs:?}, config declares {config_inputs:?}")));
    }
    let pairs = config
        .inputs
        .iter()
        .map(|spec| (spec, session.inputs().iter().find(|o| o.name() == spec.name)))
        .chain(config.outputs.iter().map(|spec| (spec, session.outputs().iter().find(|o| o.name() == spec.name))));
    for (spec, outlet) in pairs {
        let outlet = outlet.ok_or_else(|| mismatch(format!("the graph has no tensor '{}'", spec.name)))?;
        let ty = outlet.dtype().tensor_type();
        if ty != Some(element_type(spec.datatype)) {
            return Err(mismatch(format!("'{}' is {ty:?} in the graph, {} in config", spec.name, spec.datatype)));
        }
        if let Some(shape) = outlet.dtype().tensor_shape() {
            let graph_dims = &shape[..];
            let agree = graph_dims.len() == spec.dims.len() + 1
                && graph_dims[1..].iter().zip(&spec.dims).all(|(&g, &c)| g < 0 || c == -1 || g == c);
            if !agree {
                return Err(mismatch(format!(
                    "'{}' has shape {graph_dims:?} in the graph, config says {:?}",
                    spec.name,
                    spec.shape_with_batch()
                )));
            }
        }
    }
    Ok(())
}

/// Read a file for loading, mapping a missing file to [`Error::ModelFileMissing`].
pub(crate) fn read_model_file(model: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ModelFileMissing { model: model.to_owned(), path: path.to_owned() },
        _ => Error::Sdk(mlbridge_sdk::Error::Io { path: path.to_owned(), source: e }),
    })
}

//! A model's `config.toml`, next to its `model.onnx` in `models/<name>/<version>/`.
//!
//! Dimensions in `dims` exclude the batch dimension (as in Triton): a request's tensor has shape
//! `[batch, dims...]`, `-1` means any size, and `batch` may be 1..=`max_batch_size`.

use std::path::Path;

use mlbridge_sdk::{DataType, ModelId};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a model does; selects extra endpoints (e.g. embeddings for text-embedding models).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Text in, one embedding vector per text out.
    TextEmbedding,
    /// Image in, class probabilities out.
    ImageClassification,
    /// A decoder-only language model with a KV cache: tokens in, tokens out (`[generation]` says how).
    TextGeneration,
    /// Anything else: plain tensors in and out.
    Generic,
}

/// When the model's session is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadPolicy {
    /// At start; a broken model stops the node from starting.
    #[default]
    Eager,
    /// On first use.
    Lazy,
}

/// One input or output tensor of a model.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Name in the ONNX graph and in requests.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions after the batch dimension; `-1` for any size.
    pub dims: Vec<i64>,
    /// Largest size of each dimension (same length as `dims`; a `-1` dimension is otherwise bounded only by the
    /// frame size). Bounds what a request can cost and how far padding can stretch its batch-mates.
    #[serde(default)]
    pub max_dims: Option<Vec<i64>>,
    /// Allowed values `[min, max]` of an integer input (token ids below the vocabulary size, masks 0 or 1): a value
    /// outside makes ONNX Runtime fail, so it is refused before it can reach a batch.
    #[serde(default)]
    pub range: Option<[i64; 2]>,
    /// Another input whose shape this one must have (an attention mask and its token ids).
    #[serde(default)]
    pub same_shape_as: Option<String>,
}

/// The first value of an integer tensor outside `[lo, hi]`, if any.
fn out_of_range(t: &mlbridge_sdk::Tensor, lo: i64, hi: i64) -> Option<i64> {
    use mlbridge_sdk::TensorData as D;
    match t.data() {
        D::Int64(v) => v.iter().copied().find(|x| *x < lo || *x > hi),
        D::Int32(v) => v.iter().map(|&x| i64::from(x)).find(|x| *x < lo || *x > hi),
        _ => None,
    }
}

impl TensorSpec {
    /// The full shape with the batch dimension, for messages: `[-1, 384]`.
    pub fn shape_with_batch(&self) -> Vec<i64> {
        std::iter::once(-1).chain(self.dims.iter().copied()).collect()
    }
}

/// Tokenizer settings of a text model.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// Tokenizer family; `wordpiece` (BERT) today.
    pub kind: String,
    /// Vocabulary file next to model.onnx.
    pub vocab: String,
    /// sha256 of the vocabulary file.
    pub vocab_sha256: String,
    /// Lower-case input before tokenizing.
    #[serde(default)]
    pub lowercase: bool,
    /// Longest token sequence, special tokens included.
    pub max_length: usize,
}

/// How an image classifier takes images (`[image]`): see [`crate::inference::image`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// The shorter side is resized to this many pixels (bilinear), the longer in proportion.
    pub resize: u32,
    /// Then the centre `crop` × `crop` is cut out: the model's input is `[3, crop, crop]`.
    pub crop: u32,
    /// Per-channel (RGB) mean subtracted from pixels scaled to 0-1.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation the result is divided by.
    pub std: [f32; 3],
    /// Class names file next to model.onnx: a JSON list, one name per output position.
    pub labels: String,
    /// sha256 of the labels file.
    pub labels_sha256: String,
    /// Largest encoded image accepted, bytes.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: usize,
    /// Largest width or height accepted, pixels (decoding stops at the header of a larger one).
    #[serde(default = "default_max_side")]
    pub max_side: u32,
    /// Most pixels (width × height) accepted: what decoding one image may allocate is about 10 bytes a pixel.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

fn default_max_pixels() -> u64 {
    16 << 20
}

fn default_max_image_bytes() -> usize {
    8 << 20
}

fn default_max_side() -> u32 {
    8192
}

impl ImageConfig {
    /// The labels file in `dir`, after checking its sha256 against `labels_sha256`.
    pub fn verified_labels(&self, dir: &Path, key: &str) -> Result<std::path::PathBuf> {
        verified(dir, &self.labels, &self.labels_sha256, key)
    }
}

/// `dir/file` after checking its sha256 against `sha256`.
fn verified(dir: &Path, file: &str, sha256: &str, key: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(file);
    let actual = mlbridge_sdk::ModelId::of_file(&path)
        .map_err(|_| Error::ModelFileMissing { model: key.to_owned(), path: path.clone() })?;
    if actual.to_string() != sha256 {
        return Err(Error::HashMismatch {
            model: key.to_owned(),
            path,
            expected: sha256.to_owned(),
            actual: actual.to_string(),
        });
    }
    Ok(path)
}

/// Text generation settings of a decoder (`task = "text-generation"`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationConfig {
    /// KV memory bound: tokens (prompt + output, every sequence together) held at once. A sequence reserves its
    /// prompt plus its `max_tokens` when it is admitted; requests wait for room. A decoding step's gathering buffers
    /// hold at most as many tokens again (half as much more while they shrink).
    pub kv_budget_tokens: usize,
    /// Longest sequence (prompt + output) one request may reach.
    pub max_context: usize,
    /// Output tokens when a request names no `max_tokens`.
    pub default_max_tokens: usize,
    /// Tokens that end a generation (end of text, end of turn).
    pub stop_token_ids: Vec<u32>,
    /// Price of one prompt token, wei.
    pub price_wei_per_input_token: u64,
    /// Price of one generated token, wei.
    pub price_wei_per_output_token: u64,
    /// Jinja chat template applied to `/v1/chat/completions` messages (the model's own, from its weights' metadata).
    pub chat_template: String,
    /// Whether a validator can check this version's generations with one teacher-forced pass (its incremental
    /// decoding matches a whole-sequence pass to float noise). Paid generations are served only by verifiable
    /// versions: a validator would dispute an honest node's drift otherwise. Off unless the config says so: a
    /// version nobody measured is not sold.
    #[serde(default)]
    pub verifiable: bool,
}

impl GenerationConfig {
    /// Whether a node that charges sells this version's generations: validators can check them, or they are free.
    pub fn sold_to_payers(&self) -> bool {
        self.verifiable || self.prices().is_free()
    }

    /// The per-token prices.
    pub fn prices(&self) -> mlbridge_sdk::generate::GenerationPrices {
        mlbridge_sdk::generate::GenerationPrices {
            input_wei: alloy::primitives::U256::from(self.price_wei_per_input_token),
            output_wei: alloy::primitives::U256::from(self.price_wei_per_output_token),
        }
    }
}

impl TokenizerConfig {
    /// The tokenizer file of model `key` in `dir`, checked against the recorded sha256.
    pub fn verified_path(&self, dir: &Path, key: &str) -> Result<std::path::PathBuf> {
        verified(dir, &self.vocab, &self.vocab_sha256, key)
    }
}

/// How validators compare a re-execution with the node's answer.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    /// Largest element-wise difference accepted: absolute within [-1, 1], relative to the larger magnitude beyond
    /// (`|a - b| / max(1, |a|, |b|)`).
    pub max_abs_diff: f64,
}

/// A model version's configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Served name (must equal the folder name).
    pub name: String,
    /// Version (must equal the folder name).
    pub version: u64,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// sha256 of model.onnx: the model id.
    pub sha256: ModelId,
    /// What the model does.
    pub task: Task,
    /// `fp32`, `int8`, ... for humans and adverts.
    pub precision: String,
    /// Largest batch one request (and one execution) may carry.
    pub max_batch_size: usize,
    /// The batcher stops gathering requests at this many samples (as Triton's `preferred_batch_size`): the batch
    /// size that runs fastest per sample on this hardware (`scripts/bench inference` shows it). Default: max.
    #[serde(default)]
    pub preferred_batch_size: Option<usize>,
    /// How long the batcher may hold a request waiting for batch-mates, in microseconds.
    pub max_queue_delay_us: u64,
    /// Price of one inference in wei.
    pub price_wei: u64,
    /// ONNX Runtime intra-op threads per session.
    pub intra_op_threads: usize,
    /// Let those threads spin waiting for work between parallel sections (ONNX Runtime's default, on). Turning it
    /// off gives the node's network and payment work more of the cores, at a large cost in latency: MiniLM INT8 at
    /// concurrency 1 on 2 cores went from 4.5 to 9.9 ms (`scripts/bench paid`).
    #[serde(default = "spinning_default")]
    pub intra_op_spinning: bool,
    /// Create the session at start or on first use.
    #[serde(default)]
    pub load: LoadPolicy,
    /// Batch requests whose `-1` dimensions differ by padding them with zeros (e.g. token sequences with an
    /// attention mask). Only for models whose outputs have no padded dimension.
    #[serde(default)]
    pub ragged_padding: bool,
    /// Inputs, in the order the graph declares them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs.
    pub outputs: Vec<TensorSpec>,
    /// Tokenizer, for text models.
    #[serde(default)]
    pub tokenizer: Option<TokenizerConfig>,
    /// Text generation settings (decoders only).
    #[serde(default)]
    pub generation: Option<GenerationConfig>,
    /// How an image classifier takes encoded images (image classifiers only).
    #[serde(default)]
    pub image: Option<ImageConfig>,
    /// Re-execution tolerance for validators.
    pub validation: ValidationConfig,
}

fn spinning_default() -> bool {
    true
}

impl ModelConfig {
    /// Read and check `config.toml` of the model in `dir` (`models/<name>/<version>`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.toml");
        let err = |reason: String| Error::Config { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let config: Self = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.check(dir).map_err(err)?;
        Ok(config)
    }

    /// `name/version`, as used in logs and errors.
    pub fn key(&self) -> String {
        format!("{}/{}", self.name, self.version)
    }

    /// Check a request's tensors against this config (names, datatypes, shapes, batch limit) before anything runs;
    /// returns the batch size.
    pub fn validate_inputs(&self, inputs: &[mlbridge_sdk::Tensor]) -> Result<usize> {
        // An image classifier also takes one encoded image (one sample; decoded when it runs).
        if let Some(image) = &self.image
            && super::image::encoded(image, &self.key(), inputs)?.is_some()
        {
            return Ok(1);
        }
        // (The model's key is formatted only for an error: this runs for every request.)
        let model = || self.key();
        for t in inputs {
            if !self.inputs.iter().any(|s| s.name == t.name()) {
                let expected = self.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(Error::UnknownInput { model: model(), input: t.name().to_owned(), expected });
            }
        }
        // An input tied to another (an attention mask to its token ids) must come with the same shape: a shorter
        // mask would run one way padded in a batch and another alone.
        for spec in &self.inputs {
            let Some(other) = &spec.same_shape_as else { continue };
            let shape = |name: &str| inputs.iter().find(|t| t.name() == name).map(|t| t.shape());
            if let (Some(want), Some(got)) = (shape(other), shape(&spec.name))
                && want != got
            {
                return Err(Error::WrongShape {
                    model: model(),
                    input: spec.name.clone(),
                    expected: format!("{want:?} (the shape of {other})"),
                    actual: got.to_vec(),
                });
            }
        }
        let mut batch = None;
        for spec in &self.inputs {
            let mut found = inputs.iter().filter(|t| t.name() == spec.name);
            let (Some(t), None) = (found.next(), found.next()) else {
                return Err(Error::MissingInput { model: model(), input: spec.name.clone() });
            };
            if t.datatype() != spec.datatype {
                return Err(Error::WrongDataType {
                    model: model(),
                    input: spec.name.clone(),
                    expected: spec.datatype,
                    actual: t.datatype(),
                });
            }
            let shape = t.shape();
            let dims_ok = shape.len() == spec.dims.len() + 1
                && shape[1..].iter().zip(&spec.dims).all(|(&got, &want)| got > 0 && (want == -1 || got == want));
            if !dims_ok {
                return Err(Error::WrongShape {
                    model: model(),
                    input: spec.name.clone(),
                    expected: format!("{:?}", spec.shape_with_batch()),
                    actual: shape.to_vec(),
                });
            }
            if let Some(limits) = &spec.max_dims
                && shape[1..].iter().zip(limits).any(|(&got, &max)| got > max)
            {
                return Err(Error::TooLarge {
                    what: format!("input {} of shape {shape:?}", spec.name),
                    limit: format!("{:?} per sample for model {}", limits, model()),
                });
            }
            if let Some([lo, hi]) = spec.range
                && let Some(v) = out_of_range(t, lo, hi)
            {
                return Err(Error::ValueOutOfRange {
                    model: model(),
                    input: spec.name.clone(),
                    value: v,
                    min: lo,
                    max: hi,
                });
            }
            // Without early exit, so it vectorises (every float of every request passes here).
            let finite = match t.data() {
                mlbridge_sdk::TensorData::Fp32(v) => v.iter().fold(true, |ok, x| ok & x.is_finite()),
                mlbridge_sdk::TensorData::Fp64(v) => v.iter().fold(true, |ok, x| ok & x.is_finite()),
                _ => true,
            };
            if !finite {
                return Err(Error::NotFinite { model: model(), input: spec.name.clone() });
            }
            let b = shape[0];
            let max = self.max_batch_size;
            if b < 1 || b as u64 > max as u64 || batch.is_some_and(|prev| prev != b) {
                return Err(Error::BadBatch { model: model(), batch: b, max });
            }
            batch = Some(b);
        }
        Ok(batch.unwrap_or(0) as usize)
    }

    /// A deterministic sample request of `batch` samples, `-1` dimensions set to `dyn_len`: floats pseudo-random
    /// in [-1, 1), integers 1 (a valid token id and attention-mask value alike). For smoke tests and benchmarks.
    pub fn example_inputs(&self, batch: usize, dyn_len: usize) -> Vec<mlbridge_sdk::Tensor> {
        use mlbridge_sdk::{Tensor, TensorData};
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next_f32 = move || {
            // splitmix64: reproducible without a dependency.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        self.inputs
            .iter()
            .map(|spec| {
                let shape: Vec<i64> = std::iter::once(batch as i64)
                    .chain(spec.dims.iter().map(|&d| if d == -1 { dyn_len as i64 } else { d }))
                    .collect();
                let n = mlbridge_sdk::tensor::element_count(&shape).unwrap_or(0);
                let data = match spec.datatype {
                    DataType::Fp32 => TensorData::Fp32((0..n).map(|_| next_f32()).collect()),
                    DataType::Fp64 => TensorData::Fp64((0..n).map(|_| f64::from(next_f32())).collect()),
                    DataType::Int64 => TensorData::Int64(vec![1; n]),
                    DataType::Int32 => TensorData::Int32(vec![1; n]),
                    DataType::Int8 => TensorData::Int8(vec![1; n]),
                    DataType::Uint8 => TensorData::Uint8(vec![1; n]),
                    DataType::Bool => TensorData::Bool(vec![true; n]),
                };
                Tensor::new(spec.name.clone(), shape, data).expect("shape and data built together")
            })
            .collect()
    }

    fn check(&self, dir: &Path) -> std::result::Result<(), String> {
        let folder_version = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let folder_name = dir.parent().and_then(Path::file_name).and_then(|n| n.to_str()).unwrap_or_default();
        if self.name != folder_name || self.version.to_string() != folder_version {
            return Err(format!(
                "it declares {}/{} but lives in {folder_name}/{folder_version}; the folders must be <name>/<version>",
                self.name, self.version
            ));
        }
        if self.max_batch_size == 0 {
            return Err("max_batch_size must be at least 1".into());
        }
        for spec in &self.inputs {
            if spec.max_dims.as_ref().is_some_and(|m| m.len() != spec.dims.len() || m.iter().any(|&d| d < 1)) {
                return Err(format!("input {}: max_dims must give a positive size for each of dims", spec.name));
            }
            if let Some(other) = &spec.same_shape_as
                && (other == &spec.name || !self.inputs.iter().any(|i| &i.name == other))
            {
                return Err(format!("input {}: same_shape_as names no other input of this model", spec.name));
            }
            if spec.range.is_some_and(|[lo, hi]| lo > hi) {
                return Err(format!("input {}: range must be [min, max] with min <= max", spec.name));
            }
        }
        if self.preferred_batch_size.is_some_and(|p| p == 0 || p > self.max_batch_size) {
            return Err("preferred_batch_size must be between 1 and max_batch_size".into());
        }
        if self.intra_op_threads == 0 {
            return Err("intra_op_threads must be at least 1".into());
        }
        if self.task == Task::TextGeneration {
            let Some(g) = &self.generation else {
                return Err("a text-generation model needs a [generation] section".into());
            };
            if self.tokenizer.as_ref().is_none_or(|t| t.kind != "bpe-json") {
                return Err("a text-generation model needs [tokenizer] kind = \"bpe-json\" (a tokenizer.json)".into());
            }
            if g.max_context < 2 || g.default_max_tokens == 0 || g.kv_budget_tokens < g.max_context {
                return Err("[generation] needs max_context >= 2, default_max_tokens >= 1 and kv_budget_tokens >= \
                            max_context (one longest sequence must fit)"
                    .into());
            }
            if !self.inputs.is_empty() || !self.outputs.is_empty() {
                return Err(
                    "a text-generation model's tensors are fixed by its graph: leave inputs and outputs empty".into()
                );
            }
        } else if let Some(image) = &self.image {
            check_image(self, image)?;
        } else if self.generation.is_some() {
            return Err("[generation] is only for task = \"text-generation\"".into());
        } else if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err("a model needs at least one [[inputs]] and one [[outputs]]".into());
        }
        for spec in self.inputs.iter().chain(&self.outputs) {
            if let Some(bad) = spec.dims.iter().find(|&&d| d == 0 || d < -1) {
                return Err(format!("tensor '{}' has dimension {bad}; use a positive size or -1", spec.name));
            }
        }
        let mut names: Vec<&str> = self.inputs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("input names must be unique".into());
        }
        if self.ragged_padding && self.outputs.iter().any(|o| o.dims.contains(&-1)) {
            return Err("ragged_padding needs outputs with fixed dims (padding would leak into them)".into());
        }
        if !(self.validation.max_abs_diff.is_finite() && self.validation.max_abs_diff >= 0.0) {
            return Err("validation.max_abs_diff must be a finite number >= 0".into());
        }
        Ok(())
    }
}

/// An `[image]` section fits its model: an image classifier with one `[3, crop, crop]` FP32 input and one output of
/// class probabilities.
fn check_image(config: &ModelConfig, image: &ImageConfig) -> std::result::Result<(), String> {
    if config.task != Task::ImageClassification {
        return Err("[image] is only for task = \"image-classification\"".into());
    }
    let side = i64::from(image.crop);
    let fits = matches!(config.inputs.as_slice(), [i] if i.datatype == DataType::Fp32 && i.dims == [3, side, side]);
    if !fits || image.crop == 0 || image.resize < image.crop {
        return Err("[image] needs one FP32 input of dims [3, crop, crop], crop >= 1 and resize >= crop".into());
    }
    if config.inputs[0].name == super::image::IMAGE_INPUT {
        return Err(format!(
            "the input may not be called \"{}\": that name carries encoded images",
            super::image::IMAGE_INPUT
        ));
    }
    if !matches!(config.outputs.as_slice(), [o] if o.datatype == DataType::Fp32 && o.dims.len() == 1 && o.dims[0] > 0) {
        return Err("[image] needs one FP32 output of class probabilities, dims [classes]".into());
    }
    if !image.std.iter().chain(&image.mean).all(|v| v.is_finite()) || image.std.iter().any(|&s| s <= 0.0) {
        return Err("[image] mean and std must be finite, std above 0".into());
    }
    if image.max_side < image.crop || image.max_image_bytes == 0 || image.max_pixels < u64::from(image.crop).pow(2) {
        return Err(
            "[image] max_side must be at least crop, max_pixels at least crop², max_image_bytes at least 1".into()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
version = 3
sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
task = "generic"
precision = "fp32"
max_batch_size = 8
max_queue_delay_us = 100
price_wei = 5
intra_op_threads = 1

[[inputs]]
name = "input"
datatype = "FP32"
dims = [4]

[[outputs]]
name = "out"
datatype = "FP32"
dims = [-1]

[validation]
max_abs_diff = 0.0
"#;

    fn write(dir: &Path, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.toml"), text).unwrap();
    }

    #[test]
    fn parses_a_good_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m/3");
        write(&dir, GOOD);
        let c = ModelConfig::load(&dir).unwrap();
        assert_eq!(c.key(), "m/3");
        assert_eq!(c.load, LoadPolicy::Eager);
        assert_eq!(c.inputs[0].shape_with_batch(), vec![-1, 4]);
    }

    #[test]
    fn rejects_bad_configs_with_reasons() {
        let tmp = tempfile::tempdir().unwrap();
        let cases = [
            ("m/4", GOOD.to_string(), "lives in m/4"),
            ("m/3", GOOD.replace("max_batch_size = 8", "max_batch_size = 0"), "max_batch_size"),
            ("m/3", GOOD.replace("dims = [4]", "dims = [0]"), "dimension 0"),
            ("m/3", GOOD.replace("\"FP32\"", "\"FLOAT\""), "FLOAT"),
            ("m/3", GOOD.replace("task = \"generic\"", "task = \"generic\"\ncolour = 1"), "colour"),
            ("m/3", GOOD.replace("ba7816bf", "zz"), "model id"),
        ];
        for (i, (sub, text, needle)) in cases.iter().enumerate() {
            let dir = tmp.path().join(i.to_string()).join(sub);
            write(&dir, text);
            let err = ModelConfig::load(&dir).unwrap_err().to_string();
            assert!(err.contains(needle), "case {i}: {err}");
        }
    }
}

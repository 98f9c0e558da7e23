//! The node library's error type.

use std::path::PathBuf;

use mlbridge_sdk::{DataType, ModelId};

/// Result alias with the node's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the node library. Messages say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No ONNX Runtime shared library was found.
    #[error(
        "ONNX Runtime library not found (looked at: {}); run scripts/setup, or set ORT_DYLIB_PATH / --onnxruntime to \
         libonnxruntime.so",
        searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OnnxRuntimeNotFound {
        /// Places searched.
        searched: Vec<PathBuf>,
    },
    /// The ONNX Runtime library exists but could not be loaded or initialised.
    #[error(
        "cannot load ONNX Runtime from {path}: {reason}; use the onnxruntime 1.31/1.32 wheel that scripts/setup installs"
    )]
    OnnxRuntimeLoad {
        /// The library.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// The model repository folder does not exist.
    #[error("model repository {0} does not exist; run scripts/models or pass --model-repository")]
    RepositoryNotFound(PathBuf),
    /// A `config.toml` could not be read or parsed.
    #[error("model config {path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No model of that name (and version) is in the repository.
    #[error("unknown model '{name}'{}; list the served models with `mlbridge-node models`", version.map(|v| format!(" version {v}")).unwrap_or_default())]
    UnknownModel {
        /// Requested name.
        name: String,
        /// Requested version, if any.
        version: Option<u64>,
    },
    /// A model's ONNX file is missing.
    #[error("model {model}: file {path} is missing; run scripts/models to build the model repository")]
    ModelFileMissing {
        /// `name/version`.
        model: String,
        /// The missing file.
        path: PathBuf,
    },
    /// A model file's sha256 differs from the one recorded in its config.
    #[error(
        "model {model}: {path} has sha256 {actual} but config.toml records {expected}; the file is corrupted or stale, run scripts/models to rebuild it"
    )]
    HashMismatch {
        /// `name/version`.
        model: String,
        /// The file.
        path: PathBuf,
        /// Recorded hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
    /// ONNX Runtime refused to create a session for the model.
    #[error("model {model}: ONNX Runtime cannot load it: {reason}")]
    SessionCreate {
        /// `name/version`.
        model: String,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// The ONNX graph's inputs or outputs disagree with config.toml.
    #[error("model {model}: the ONNX graph does not match config.toml: {reason}; fix config.toml or the model")]
    SignatureMismatch {
        /// `name/version`.
        model: String,
        /// The disagreement.
        reason: String,
    },
    /// A request is missing one of the model's inputs.
    #[error("model {model} needs input '{input}', which the request does not contain")]
    MissingInput {
        /// `name/version`.
        model: String,
        /// The missing input.
        input: String,
    },
    /// A request names an input the model does not have.
    #[error("model {model} has no input named '{input}'; its inputs are: {expected}")]
    UnknownInput {
        /// `name/version`.
        model: String,
        /// The unknown name.
        input: String,
        /// The model's input names.
        expected: String,
    },
    /// An input has the wrong datatype.
    #[error("model {model}: input '{input}' must be {expected}, got {actual}")]
    WrongDataType {
        /// `name/version`.
        model: String,
        /// The input.
        input: String,
        /// Declared datatype.
        expected: DataType,
        /// Given datatype.
        actual: DataType,
    },
    /// An input has the wrong shape.
    #[error("model {model}: input '{input}' must have shape {expected} (-1 = any size), got {actual:?}")]
    WrongShape {
        /// `name/version`.
        model: String,
        /// The input.
        input: String,
        /// Expected shape, batch dimension first.
        expected: String,
        /// Given shape.
        actual: Vec<i64>,
    },
    /// The batch dimension is 0, differs between inputs, or is over the model's limit.
    #[error(
        "model {model}: batch size {batch} is not allowed; send between 1 and {max} samples, the same number in every input"
    )]
    BadBatch {
        /// `name/version`.
        model: String,
        /// Batch size given.
        batch: i64,
        /// The model's max_batch_size.
        max: usize,
    },
    /// ONNX Runtime failed while running the model.
    #[error("model {model}: inference failed: {reason}")]
    Inference {
        /// `name/version`.
        model: String,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// The model's id as served.
    #[error("model {model}: output '{output}' is missing or not a {expected} tensor")]
    BadOutput {
        /// `name/version`.
        model: String,
        /// The output.
        output: String,
        /// Declared datatype.
        expected: DataType,
    },
    /// The model's queue is full: the node is at capacity for it.
    #[error("model {model} is overloaded ({capacity} requests queued); retry shortly or use another node")]
    Overloaded {
        /// `name/version`.
        model: String,
        /// Queue capacity.
        capacity: usize,
    },
    /// A request waited in the queue longer than its client allowed and was not run.
    #[error(
        "model {model}: the request waited {waited_ms} ms in the queue, longer than its queue timeout; retry elsewhere"
    )]
    QueueTimeout {
        /// `name/version`.
        model: String,
        /// How long it waited.
        waited_ms: u64,
    },
    /// A lazily loaded model failed to load.
    #[error("model {model} could not be loaded: {reason}")]
    LoadFailed {
        /// `name/version`.
        model: String,
        /// Why.
        reason: String,
    },
    /// Text input for a model that does not take text.
    #[error("model {model} is not a text-embedding model; use the KServe v2 infer endpoint with tensors")]
    NotTextModel {
        /// `name/version`.
        model: String,
    },
    /// An integer input holds a value the model cannot take (a token id beyond the vocabulary, say).
    #[error("model {model}: input {input} holds {value}, outside [{min}, {max}]")]
    ValueOutOfRange {
        /// `name/version`.
        model: String,
        /// The input.
        input: String,
        /// The offending value.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// A float input holds NaN or an infinity (no model output over it could be checked by a validator).
    #[error("model {model}: input {input} holds NaN or an infinity; send finite numbers")]
    NotFinite {
        /// `name/version`.
        model: String,
        /// The input.
        input: String,
    },
    /// A request over one of the node's per-request limits.
    #[error("request too large: {what}; the limit is {limit}")]
    TooLarge {
        /// What was asked.
        what: String,
        /// The limit.
        limit: String,
    },
    /// `doctor` found problems (its report says which).
    #[error("{0} problem(s) found; see the report above")]
    ProblemsFound(usize),
    /// An empty request (no texts, no samples).
    #[error("the request has no input; send at least one text or sample")]
    EmptyInput,
    /// A generation request the node cannot serve as asked (bad parameters, a prompt too long for the context).
    #[error("{0}")]
    BadRequest(String),
    /// The node cut a generation it could not finish (it is shutting down, or a whole answer could not be cut
    /// within the request timeout); nothing was charged for it.
    #[error("the node cut this generation ({0}); nothing was charged for it: retry, on another node if it is stopping")]
    Interrupted(String),
    /// An image that cannot be read (not JPEG or PNG, corrupt, or beyond the model's size limits).
    #[error("model {model}: the image cannot be used: {reason}; send one JPEG or PNG within the model's limits")]
    BadImage {
        /// `name/version`.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// A text-generation model's sequences and KV memory are taken, and its admission queue is full.
    #[error("model {model} is generating at capacity ({waiting} requests waiting for KV memory); retry shortly")]
    GenerationFull {
        /// `name/version`.
        model: String,
        /// Requests already waiting.
        waiting: usize,
    },
    /// The tokenizer failed.
    #[error("model {model}: tokenizer error: {reason}")]
    Tokenizer {
        /// `name/version`.
        model: String,
        /// Why.
        reason: String,
    },
    /// The result cache backend failed (Redis unreachable, bad data).
    #[error("result cache: {0}")]
    Cache(String),
    /// Binding a listener or serving failed.
    #[error("cannot listen on {addr}: {reason}; choose another address or port")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer-to-peer network failed (addresses, transport, task stopped).
    #[error("p2p network: {0}")]
    Network(String),
    /// Prometheus metric registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// An SDK-level error (tensor construction, model ids).
    #[error(transparent)]
    Sdk(#[from] mlbridge_sdk::Error),
    /// The payment ledger failed.
    #[error("payment ledger {path}: {reason}")]
    Ledger {
        /// The ledger folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The chain layer failed (RPC, transaction, contract revert).
    #[error("chain: {0}")]
    Chain(mlbridge_sdk::Error),
    /// The operator key could not sign (a receipt or an advert): the node's fault, never the client's.
    #[error("the operator key could not sign: {0}")]
    Signing(String),
    /// Settlement failed (it is retried).
    #[error("settlement: {0}")]
    Settlement(String),
    /// Two configs claim the same model id under different names (would make receipts ambiguous).
    #[error("models {first} and {second} have the same sha256 {id}; serve each file once")]
    DuplicateModelId {
        /// One model.
        first: String,
        /// The other.
        second: String,
        /// Their id.
        id: ModelId,
    },
}

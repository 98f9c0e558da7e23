//! The SDK's error type.

use crate::tensor::DataType;

/// Result alias with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor's data does not hold as many elements as its shape says.
    #[error(
        "tensor '{name}': shape {shape:?} needs {expected} elements but {actual} were given; send shape and data that agree"
    )]
    ElementCount {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<i64>,
        /// Elements the shape implies.
        expected: usize,
        /// Elements present.
        actual: usize,
    },
    /// A tensor shape has a negative dimension or its element count overflows.
    #[error("tensor '{name}': shape {shape:?} is not a valid concrete shape; every dimension must be >= 0")]
    InvalidShape {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<i64>,
    },
    /// The declared datatype does not match the data.
    #[error("tensor '{name}': datatype is {declared} but the data holds {actual}; send data of the declared datatype")]
    DataTypeMismatch {
        /// Tensor name.
        name: String,
        /// The datatype named in the request.
        declared: DataType,
        /// The datatype of the data.
        actual: DataType,
    },
    /// A datatype name that the KServe v2 protocol does not define.
    #[error("unknown tensor datatype '{0}'; use one of BOOL, UINT8, INT8, INT32, INT64, FP32, FP64")]
    UnknownDataType(String),
    /// A model identifier that is not 64 hex digits.
    #[error("'{0}' is not a model id; a model id is the sha256 of the ONNX file, 64 hex digits")]
    InvalidModelId(String),
    /// The chain RPC could not be reached or answered with an error.
    #[error("chain RPC error: {0}; check --rpc-url and that the chain node is running")]
    Rpc(String),
    /// The RPC serves a different chain than the deployment file names.
    #[error(
        "the RPC serves chain id {actual}, but the deployment is for chain id {expected}; point --rpc-url at chain {expected} or use that chain's deployment file"
    )]
    ChainIdMismatch {
        /// Chain id in the deployment file.
        expected: u64,
        /// Chain id the RPC reports.
        actual: u64,
    },
    /// No contract code where the deployment file says a contract is.
    #[error(
        "no contract code at {address} for {name} on this chain; the deployment file does not match the chain (redeploy, or fix the addresses file)"
    )]
    NoContractAt {
        /// Contract name.
        name: &'static str,
        /// The address.
        address: alloy::primitives::Address,
    },
    /// The contracts at the deployment's addresses are not wired to each other as a deployment is.
    #[error(
        "the deployment file does not match the contracts on this chain: {what} (redeploy, or fix the addresses file)"
    )]
    DeploymentMismatch {
        /// What differs.
        what: String,
    },
    /// The deployment (addresses) file is missing or malformed.
    #[error("deployment file {path}: {reason}")]
    DeploymentFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The sending account cannot pay for gas.
    #[error("account {address} has too little ETH to pay for this transaction ({reason}); send ETH to {address}")]
    InsufficientFunds {
        /// The account to fund.
        address: alloy::primitives::Address,
        /// What the node said.
        reason: String,
    },
    /// A contract call reverted with one of our contracts' errors.
    #[error(transparent)]
    Contract(#[from] crate::chain::ContractRevert),
    /// A transaction was mined but reverted.
    #[error("transaction {hash} reverted on chain; inspect it with `cast run {hash}`")]
    Reverted {
        /// The transaction.
        hash: alloy::primitives::TxHash,
    },
    /// The network's fees are above the configured cap.
    #[error(
        "the chain wants a max fee of {needed} wei/gas but the cap is {cap} wei/gas; raise --max-fee-per-gas or wait for cheaper blocks"
    )]
    FeeCapExceeded {
        /// Fee the network needs.
        needed: u128,
        /// The configured cap.
        cap: u128,
    },
    /// A transaction was not mined in time, even after fee bumps.
    #[error("transaction with nonce {nonce} was not mined after {attempts} attempts; check the chain and the fee cap")]
    NotMined {
        /// The nonce.
        nonce: u64,
        /// Sends made (original and bumps).
        attempts: u32,
    },
    /// A signature could not be created or checked.
    #[error("signature error: {0}")]
    Signature(String),
    /// A key file could not be made, read or opened.
    #[error("key: {0}")]
    Key(String),
    /// The confirmation tracker has stopped (its task ended).
    #[error("the confirmation tracker has stopped")]
    TrackerStopped,
    /// The peer-to-peer network failed (transport, listen address, behaviour setup).
    #[error("network: {0}")]
    Network(String),
    /// No known node serves the model (or all were tried).
    #[error("no reachable node serves model '{model}'; wait for adverts (mlbridge nodes) or check --bootstrap")]
    NoNodes {
        /// The model asked for.
        model: String,
    },
    /// A node refused or failed the request.
    #[error("node {peer} answered {kind:?}: {message}")]
    Remote {
        /// The node.
        peer: String,
        /// What kind of failure.
        kind: crate::protocol::ErrorKind,
        /// Its message.
        message: String,
    },
    /// The client's network task has stopped.
    #[error("the network client has stopped")]
    ClientStopped,
    /// The payer's channel store failed.
    #[error("channel store {path}: {reason}; check the --store folder (one process at a time may use it)")]
    Store {
        /// The store folder.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// The store has no such channel.
    #[error("channel {channel} is not in this payer's store; list channels with `mlbridge channel list`")]
    NoChannel {
        /// The channel.
        channel: alloy::primitives::B256,
    },
    /// A channel's deposit does not cover another job.
    #[error("channel {channel} holds {deposit} wei, not enough for {needed}; top it up (`mlbridge channel top-up`)")]
    ChannelExhausted {
        /// The channel.
        channel: alloy::primitives::B256,
        /// Its deposit.
        deposit: alloy::primitives::U256,
        /// The cumulative amount needed.
        needed: alloy::primitives::U256,
    },
    /// Paying would need a channel or top-up beyond the policy's spending limit.
    #[error(
        "no channel to {payee} covers {price} wei, and opening or topping one up would pass the spending limit of {limit} wei; open one yourself or raise --max-spend"
    )]
    SpendLimit {
        /// The node operator to pay.
        payee: alloy::primitives::Address,
        /// The job price.
        price: alloy::primitives::U256,
        /// The limit.
        limit: alloy::primitives::U256,
    },
    /// A node refused a job's payment.
    #[error("node {peer} refused the payment: {refusal}")]
    PaymentRefused {
        /// The node.
        peer: String,
        /// Why.
        refusal: Box<crate::protocol::PaymentRefusal>,
    },
    /// A paid answer came without a valid receipt, or the receipt does not match the job.
    #[error("node {peer} sent a bad receipt ({reason}); do not pay it again and report it to validators")]
    BadReceipt {
        /// The node.
        peer: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

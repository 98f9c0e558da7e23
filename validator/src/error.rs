//! The validator's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the validator, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or wrong.
    #[error("config {path}: {reason}")]
    Config {
        /// The setting or file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The validator key could not be loaded.
    #[error("validator key: {0}; give --key (devnet) or --keystore with --password-file")]
    Key(String),
    /// A chain call or transaction failed.
    #[error(transparent)]
    Chain(Box<mlbridge_sdk::Error>),
    /// A contract refused a transaction; the reason is the contract's own error.
    #[error("{what} was refused by the contract: {reason}")]
    Refused {
        /// The transaction.
        what: String,
        /// The contract's error, decoded.
        reason: String,
    },
    /// The node library failed (model repository, ONNX Runtime).
    #[error(transparent)]
    Node(Box<mlbridge_node::Error>),
    /// The validator's own files could not be read or written.
    #[error("{path}: {reason}; check the data_dir setting and its permissions")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Metrics could not be set up.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The network could not start.
    #[error("network: {0}; check [p2p] listen and bootstrap")]
    Network(String),
}

impl From<mlbridge_sdk::Error> for Error {
    fn from(e: mlbridge_sdk::Error) -> Self {
        Self::Chain(Box::new(e))
    }
}

impl From<mlbridge_node::Error> for Error {
    fn from(e: mlbridge_node::Error) -> Self {
        Self::Node(Box::new(e))
    }
}

/// Result with the validator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

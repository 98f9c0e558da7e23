//! # mlbridge-node
//!
//! The ML Bridge node daemon as a library (the `mlbridge-node` binary is a thin wrapper, and validators reuse the
//! inference code through this crate rather than copying it).
//!
//! ## Bird's-eye view
//! - [`inference`]: the model repository (`models/<name>/<version>/{model.onnx, config.toml}`), ONNX Runtime loaded
//!   from the PyPI wheel at run time, sha256 verification (the model id), signature checks and a blocking `run` that
//!   validates every request first.
//! - [`cli`]: the command line (`mlbridge-node models` loads and smoke-runs every model).
//!
//! Coming with the next issues (DESIGN.md §5): the dynamic batcher and result cache in `inference`, the libp2p swarm
//! actor in `p2p`, the KServe v2 HTTP API in `api`, vouchers, the sled ledger and settlement in `payment`, metrics.

pub mod cli;
pub mod error;
pub mod inference;

pub use error::{Error, Result};

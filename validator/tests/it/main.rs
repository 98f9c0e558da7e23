//! Validator integration tests: real anvil, real libp2p, real ONNX Runtime, real nodes.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod generation;
mod network;
mod support;

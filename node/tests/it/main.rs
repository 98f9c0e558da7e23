//! Integration tests of mlbridge-node against the real model repository and the real ONNX Runtime.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod api;
mod chain;
mod crash;
mod generate;
mod images;
mod p2p;
mod paid;
mod paid_generate;
mod repository;
mod support;

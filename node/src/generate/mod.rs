//! Text generation (DESIGN.md §8): decoder-only language models with an explicit KV cache, served with continuous
//! batching.
//!
//! - [`decoder`] runs the graph: any mix of prefills and decoding steps in one call, KV memory owned by the caller.
//! - [`scheduler`] is the continuous-batching loop (one thread per model): bounded admission by KV budget, prefill of
//!   newcomers, one decoding step for every running sequence, cancellation when a client goes away.
//! - [`sampling`] picks tokens: greedy, or temperature / top-k / top-p from a seed, reproducibly.
//! - [`tokenizer`] is the model's `tokenizer.json`, its chat template, streaming detokenization and stop strings.
//!
//! A validator checks a generation with one teacher-forced pass ([`Generator::teacher_forced`]).

pub mod decoder;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;

pub use decoder::{Decoder, KvCache, Shape};
pub use sampling::{Sampler, Sampling};
pub use scheduler::{Completion, Event, FinishReason, GenerateRequest, Generator, Prompt};
pub use tokenizer::{ChatTokenizer, Message};

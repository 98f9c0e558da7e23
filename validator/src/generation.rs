//! Checking a text generation with one forward pass (DESIGN.md §8).
//!
//! The prompt and the claimed output run through the model once, teacher-forced (like a prefill), which gives the
//! logits the node saw before each output token. Then every claimed token must be the one the decoding rule picks:
//!
//! - **Greedy**: the claimed token's logit is within `tolerance` of the largest logit at that position. The band
//!   covers near-ties: a node decodes one token at a time inside batches of other sequences, the validator runs the
//!   whole sequence at once, and float sums in another order move logits by about 1e-5 (more on another CPU); two
//!   tokens closer than that could go either way. A dishonest node can only use the band to pick among tokens within
//!   `tolerance` of the best one.
//! - **Sampled**: the seeded draws are replayed (one uniform draw per token, ChaCha8 from the seed): the draw must
//!   fall inside the claimed token's share of the distribution the parameters make of those logits (shares laid out
//!   in token-id order, so near-equal logits cannot swap places), widened by a margin (`1e-4` of probability, divided
//!   by the temperature below 1) so that a draw on a boundary does not fail an honest node. A token at the very edge
//!   of the top-k / top-p set can still fall in or out with float noise: a rare false alarm, which a dispute's vote
//!   (re-execution by other validators) is there to settle.
//!
//! This holds for models whose incremental decoding matches a whole-sequence pass to float noise (the fp32 SmolLM2,
//! about 1e-5); the per-token INT8 version drifts (see its config.toml) and cannot be checked this way.
//!
//! And the generation must end where the node's rule ends it (replayed with the node's own detokenizer and stop-string
//! matcher): at a stop token, at the token that completes a stop string, or at `max_tokens`, and never after one of
//! the first two. The claim's `max_tokens`, `stop` and `sampling` (seed included) must be the client's request, not
//! the node's word: with them a validator can tell a shortened or lengthened answer. A shortened or lengthened
//! answer, a changed token and text from another model all fail; a failure names the first position that is wrong.

use mlbridge_node::generate::sampling::{Draws, candidates};
use mlbridge_node::generate::tokenizer::{Detokenizer, StopMatcher};
use mlbridge_node::generate::{Generator, Sampling};

use crate::{Error, Result};

/// Probability margin around a sampled token's share (scaled by 1/temperature below 1, up to the cap).
const DRAW_MARGIN: f64 = 1e-4;
const MAX_DRAW_MARGIN: f64 = 0.01;

/// What a node claims it generated.
#[derive(Clone, Debug)]
pub struct GenerationClaim<'a> {
    /// Prompt token ids.
    pub prompt: &'a [u32],
    /// Output token ids (a stop token that ended it included).
    pub output: &'a [u32],
    /// Decoding rule and seed.
    pub sampling: Sampling,
    /// The request's output limit.
    pub max_tokens: usize,
    /// The request's stop strings.
    pub stop: &'a [String],
    /// The client went away before the end (finish `cancelled`): the tokens are checked, not where they end.
    pub cancelled: bool,
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every token is the rule's choice and the generation ends where it should.
    Valid,
    /// The first thing wrong.
    Invalid {
        /// Output position (0 = first output token); `output.len()` for an early end.
        position: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Check `claim` against the model `generator` serves; `tolerance` is the greedy logit band (the model's
/// `[validation] max_abs_diff`). Blocks (one forward pass).
pub fn verify_generation(generator: &Generator, claim: &GenerationClaim<'_>, tolerance: f32) -> Result<Verdict> {
    let invalid = |position: usize, reason: String| Ok(Verdict::Invalid { position, reason });
    let g = generator.generation();
    let (prompt, output) = (claim.prompt, claim.output);
    if prompt.is_empty() || output.is_empty() {
        return invalid(0, "a generation needs a prompt and at least one output token".into());
    }
    if output.len() > claim.max_tokens || prompt.len() + output.len() > g.max_context {
        return invalid(claim.max_tokens.min(output.len()), "more output than max_tokens or the context allow".into());
    }
    if let Err(e) = claim.sampling.check() {
        return invalid(0, format!("the claim's sampling parameters: {e}"));
    }
    let vocab = generator.decoder().shape().vocab;
    if let Some(i) = output.iter().position(|&t| t as usize >= vocab) {
        return invalid(i, format!("token {} is outside the vocabulary", output[i]));
    }
    if prompt.iter().any(|&t| t as usize >= vocab) {
        return invalid(0, "the prompt holds a token outside the vocabulary".into());
    }
    let tokens: Vec<u32> = prompt.iter().chain(output).copied().collect();
    let logits = generator.teacher_forced(&tokens, prompt.len()).map_err(|e| Error::Node(Box::new(e)))?;
    if logits.len() != output.len() * vocab {
        let reason = format!("teacher forcing gave {} logits for {} tokens", logits.len(), output.len());
        return Err(Error::Node(Box::new(mlbridge_node::Error::BadRequest(reason))));
    }
    let mut draws = Draws::new(claim.sampling.seed);
    for (i, (&token, row)) in output.iter().zip(logits.chunks(vocab)).enumerate() {
        if i + 1 < output.len() && g.stop_token_ids.contains(&token) {
            return invalid(i + 1, format!("output goes on after the stop token {token}"));
        }
        if claim.sampling.is_greedy() {
            let best = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let got = row[token as usize];
            if got < best - tolerance {
                let top = mlbridge_node::generate::sampling::argmax(row);
                return invalid(
                    i,
                    format!("token {token} (logit {got}) is not the greedy choice {top} (logit {best})"),
                );
            }
        } else {
            let u = draws.next_uniform();
            let (order, probs) = candidates(row, &claim.sampling);
            let Some(at) = order.iter().position(|&t| t == token) else {
                return invalid(i, format!("token {token} is outside the top-k / top-p candidates"));
            };
            let lo: f64 = probs[..at].iter().sum();
            let hi = lo + probs[at];
            // Noise in the logits moves probabilities by about noise / temperature.
            let margin = (DRAW_MARGIN * (1.0 / f64::from(claim.sampling.temperature)).max(1.0)).min(MAX_DRAW_MARGIN);
            if u < lo - margin || u >= hi + margin {
                return invalid(
                    i,
                    format!("the seeded draw {u:.6} falls outside token {token}'s share [{lo:.6}, {hi:.6})"),
                );
            }
        }
    }
    // Where it ends: replay the node's own detokenizer and stop-string matcher, token by token.
    let tok = generator.tokenizer();
    let mut detok = Detokenizer::default();
    let mut stops = StopMatcher::new(claim.stop.to_vec());
    for (i, &token) in output.iter().enumerate() {
        let last = i + 1 == output.len();
        let ended = if g.stop_token_ids.contains(&token) { true } else { stops.feed(&detok.push(tok, token)).1 };
        if ended {
            return if last { Ok(Verdict::Valid) } else { invalid(i + 1, "output goes on after a stop string".into()) };
        }
    }
    if output.len() == claim.max_tokens || claim.cancelled {
        return Ok(Verdict::Valid);
    }
    invalid(output.len(), "the output ends early: no stop token, no stop string, fewer than max_tokens".into())
}

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
//!   fall inside the claimed token's share of the distribution the parameters make of those logits, widened by the
//!   same kind of margin (`1e-4` of probability) so that a draw on a boundary does not fail an honest node.
//!
//! This holds for models whose incremental decoding matches a whole-sequence pass to float noise (the fp32 SmolLM2,
//! about 1e-5); the per-token INT8 version drifts (see its config.toml) and cannot be checked this way.
//!
//! And the generation must end where the rule ends it: at a stop token (nothing after it), at a stop string (which
//! the last token completes), or at `max_tokens`. A shortened answer, a changed token and text from another model
//! all fail; a failure names the first position that is wrong.

use mlbridge_node::generate::sampling::{Draws, candidates};
use mlbridge_node::generate::{Generator, Sampling};

use crate::{Error, Result};

/// Probability margin around a sampled token's share.
const DRAW_MARGIN: f64 = 1e-4;

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
    let tokens: Vec<u32> = prompt.iter().chain(output).copied().collect();
    let logits = generator.teacher_forced(&tokens, prompt.len()).map_err(|e| Error::Node(Box::new(e)))?;
    let vocab = generator.decoder().shape().vocab;
    if logits.len() != output.len() * vocab {
        let reason = format!("teacher forcing gave {} logits for {} tokens", logits.len(), output.len());
        return Err(Error::Node(Box::new(mlbridge_node::Error::BadRequest(reason))));
    }
    let mut draws = Draws::new(claim.sampling.seed);
    for (i, (&token, row)) in output.iter().zip(logits.chunks(vocab)).enumerate() {
        if token as usize >= vocab {
            return invalid(i, format!("token {token} is outside the vocabulary"));
        }
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
            if u < lo - DRAW_MARGIN || u >= hi + DRAW_MARGIN {
                return invalid(
                    i,
                    format!("the seeded draw {u:.6} falls outside token {token}'s share [{lo:.6}, {hi:.6})"),
                );
            }
        }
    }
    // Where it ends.
    let last = *output.last().expect("checked non-empty");
    if g.stop_token_ids.contains(&last) || output.len() == claim.max_tokens {
        return Ok(Verdict::Valid);
    }
    let tok = generator.tokenizer();
    let stops: Vec<&String> = claim.stop.iter().filter(|s| !s.is_empty()).collect();
    let text = tok.decode(output);
    let before = tok.decode(&output[..output.len() - 1]);
    if stops.iter().any(|s| text.contains(s.as_str())) && !stops.iter().any(|s| before.contains(s.as_str())) {
        return Ok(Verdict::Valid);
    }
    invalid(output.len(), "the output ends early: no stop token, no stop string, fewer than max_tokens".into())
}

//! The decoder graph (`scripts/modelgen/smollm.py` documents it) and the KV memory of its sequences.
//!
//! One [`Decoder::step`] runs any mix of sequences: each row brings its new tokens (a whole prompt, one sampled token,
//! or a prompt plus claimed output for a validator) and its cache; the graph returns the logits asked for and the new
//! tokens' keys and values, which are appended to each row's [`KvCache`]. Rows are right-padded to the longest new
//! part and the longest past; the attention mask keeps padding out of every real token's view. Blocking: runs on the
//! scheduler's thread.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::{Tensor as OrtTensor, TensorRef};

use crate::inference::ModelConfig;
use crate::inference::runtime::OnnxRuntime;
use crate::{Error, Result};

/// Sizes read from the graph's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Transformer blocks (one KV cache pair each).
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (logits per position).
    pub vocab: usize,
}

impl Shape {
    /// Floats of one token in one layer's key (or value) cache.
    fn per_token(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Past lengths of a step are padded up to a multiple of this, so that a sequence's gathered past stays where it is
/// from one decoding step to the next (only its new token is copied) until the longest crosses the next multiple.
const PAST_ALIGN: usize = 32;

/// Identities of caches (0 is none).
static NEXT_CACHE: AtomicU64 = AtomicU64::new(1);

/// The keys and values of one sequence, every layer, allocated once for its whole reserved length.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: keys then values, each `[kv_heads][capacity][head_dim]`.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    capacity: usize,
    len: usize,
    /// Which cache this is (the decoder remembers whose past its gathering buffers hold).
    id: u64,
}

impl KvCache {
    /// Room for `capacity` tokens.
    pub fn new(shape: Shape, capacity: usize) -> Self {
        let n = shape.per_token() * capacity;
        let layers = (0..shape.layers).map(|_| (vec![0.0; n], vec![0.0; n])).collect();
        Self { layers, capacity, len: 0, id: NEXT_CACHE.fetch_add(1, Ordering::Relaxed) }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One row of a step.
#[derive(Debug)]
pub struct Row<'a> {
    /// Tokens to run, following what `cache` holds.
    pub tokens: &'a [u32],
    /// The sequence's cache (grows by `tokens.len()`).
    pub cache: &'a mut KvCache,
    /// Positions within `tokens` whose next-token logits to return.
    pub logits_at: Vec<usize>,
}

/// The logits of a step, per row those of its `logits_at` positions, in one buffer that a caller keeps from step to
/// step: a decoding step of 32 sequences returns 6 MB of them, which the allocator would otherwise hand out afresh
/// (and fault in again) every step.
#[derive(Debug, Default)]
pub struct Logits {
    data: Vec<f32>,
    /// Floats per row in `data`.
    stride: usize,
    /// Per row: how many positions' logits it asked for.
    counts: Vec<usize>,
    vocab: usize,
}

impl Logits {
    /// Rows of the last step.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the last step had no rows.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Row `i`'s logits: `vocab` floats for each position it asked for, in order.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.stride..][..self.counts[i] * self.vocab]
    }
}

/// A loaded decoder.
#[derive(Debug)]
pub struct Decoder {
    inner: Mutex<Inner>,
    shape: Shape,
    key: String,
}

/// The session and the buffers past keys and values are gathered into, one set per group of sequences a scheduler
/// steps in turn (see [`Decoder::step_group`]), kept between steps: allocating them per step (tens of MB at 32
/// sequences) cost a page fault and a zeroing per page, every step, and copying every row's whole past again cost as
/// much once more.
#[derive(Debug)]
struct Inner {
    session: Session,
    groups: Vec<Gathered>,
}

/// One group's gathering buffers.
#[derive(Debug, Default)]
struct Gathered {
    /// Per layer: keys, values, each `[rows][kv_heads][padded][head_dim]`.
    past: Vec<Vec<f32>>,
    /// The padded past length the buffers are laid out for.
    padded: usize,
    /// Per row: whose cache it holds (its id) and how many of its tokens; past those, the row is zeros.
    rows: Vec<(u64, usize)>,
}

impl Gathered {
    /// Size the buffers to `need` floats each for a past padded to `padded`: they grow as needed and shrink once
    /// larger than needed (a step of many long sequences does not hold its memory for ever). What they hold is
    /// forgotten when the layout changes or a buffer is let go.
    fn size(&mut self, count: usize, need: usize, padded: usize) {
        if self.padded != padded || self.past.len() != count {
            self.rows.clear();
            self.padded = padded;
        }
        self.past.resize_with(count, Vec::new);
        for buf in &mut self.past {
            // (Shrunk past half again what is needed: together the groups' buffers stay near `decode_groups`'
            // bound.)
            if buf.len() > (need + need / 2).max(1 << 16) {
                *buf = Vec::new();
                self.rows.clear();
            }
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
        }
    }
}

/// The past length a step pads its rows to when the longest holds `longest` tokens (at least one slot, masked when
/// unused: no zero-sized tensors).
pub fn padded_past(longest: usize) -> usize {
    if longest == 0 { 1 } else { longest.next_multiple_of(PAST_ALIGN) }
}

/// How sequences whose pasts hold `lens` tokens (ascending) go into decoding calls, as the calls' sizes in order. A
/// call pads its rows to its longest past plus the new token, and gathers them into its own buffers
/// ([`Decoder::step_group`]). So one call holds at most `cap` padded tokens, and all the calls together hold no more
/// than `cap` (or than the sequences need one per call, when that is more: padding rounds each up by less than 32),
/// in as few calls as that allows (each call costs a pass over the weights). Sequences of alike lengths share one
/// call; one long sequence among many short ones gets its own. (Fewest calls first, then fewest padded tokens: a
/// dynamic programme over where calls start, O(n²) per call count tried.)
pub fn decode_groups(lens: &[usize], cap: usize) -> Vec<usize> {
    let n = lens.len();
    let alone = |l: usize| padded_past(l) + 1;
    let bound = cap.max(lens.iter().map(|&l| alone(l)).sum());
    // `least[i]`: fewest padded tokens over `lens[..i]` in the calls counted so far; `starts[k][i]`: where the last
    // of `k + 1` calls over `lens[..i]` starts.
    let mut least = vec![usize::MAX; n + 1];
    least[0] = 0;
    let mut starts: Vec<Vec<usize>> = Vec::new();
    while least[n] > bound && starts.len() < n {
        let mut next = vec![usize::MAX; n + 1];
        let mut start = vec![0; n + 1];
        for i in 1..=n {
            for (j, &before) in least[..i].iter().enumerate() {
                let call = (i - j) * alone(lens[i - 1]);
                if before == usize::MAX || (call > cap && i - j > 1) {
                    continue;
                }
                if before + call < next[i] {
                    (next[i], start[i]) = (before + call, j);
                }
            }
        }
        least = next;
        starts.push(start);
    }
    let mut sizes = Vec::with_capacity(starts.len());
    let mut i = n;
    for start in starts.iter().rev() {
        sizes.push(i - start[i]);
        i = start[i];
    }
    sizes.reverse();
    sizes
}

impl Decoder {
    /// Create the session from verified model bytes and read its sizes from the signature.
    pub fn from_bytes(runtime: &OnnxRuntime, config: &ModelConfig, bytes: &[u8]) -> Result<Self> {
        let key = config.key();
        // (No memory pattern: every step's shapes differ.)
        let session = crate::inference::model::session(runtime, config, bytes, false)?;
        let shape = read_shape(&session).map_err(|reason| Error::SignatureMismatch { model: key.clone(), reason })?;
        let inner = Inner { session, groups: Vec::new() };
        Ok(Self { inner: Mutex::new(inner), shape, key })
    }

    /// Let go of the gathering buffers of groups `from` and above (a scheduler that now steps fewer groups).
    pub fn keep_groups(&self, from: usize) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.groups.truncate(from);
    }

    /// The graph's sizes.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Run one step over `rows`; returns, per row, the logits of each of its `logits_at` positions (concatenated,
    /// `vocab` floats each). Every row's cache grows by its tokens. Blocks. (A loop keeps a [`Logits`] and calls
    /// [`Decoder::step_into`] instead.)
    pub fn step(&self, rows: &mut [Row<'_>]) -> Result<Vec<Vec<f32>>> {
        let mut logits = Logits::default();
        self.step_into(rows, &mut logits)?;
        if logits.len() == 1 {
            // One row (a validator's teacher-forced pass: up to thousands of positions): its logits, not a copy.
            let mut data = std::mem::take(&mut logits.data);
            data.truncate(logits.counts[0] * logits.vocab);
            return Ok(vec![data]);
        }
        Ok((0..logits.len()).map(|i| logits.row(i).to_vec()).collect())
    }

    /// [`Decoder::step`] into `logits` (what it held before is replaced).
    pub fn step_into(&self, rows: &mut [Row<'_>], logits: &mut Logits) -> Result<()> {
        self.step_group(0, rows, logits)
    }

    /// [`Decoder::step_into`] for group `group` of sequences that a caller steps in turn (calls whose padded size
    /// would be too large): each group keeps its own gathering buffers, so that a row is copied in whole only when it
    /// joins its group, not every time the groups take turns.
    pub fn step_group(&self, group: usize, rows: &mut [Row<'_>], logits: &mut Logits) -> Result<()> {
        let fail = |reason: String| Error::Inference { model: self.key.clone(), reason };
        let s = self.shape;
        let b = rows.len();
        logits.counts.clear();
        if b == 0 {
            return Ok(());
        }
        if let Some(r) = rows.iter().find(|r| r.tokens.is_empty() || r.cache.len + r.tokens.len() > r.cache.capacity) {
            return Err(fail(format!("a row of {} tokens does not fit its cache", r.tokens.len())));
        }
        let new = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(1);
        let longest = rows.iter().map(|r| r.cache.len).max().unwrap_or(0);
        let past = padded_past(longest);
        let k = rows.iter().map(|r| r.logits_at.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![0i64; b * new];
        let mut pos = vec![0i64; b * new];
        let mut mask = vec![0i64; b * (past + new)];
        let mut at = vec![0i64; b * k];
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.tokens.iter().enumerate() {
                ids[i * new + j] = i64::from(t);
                pos[i * new + j] = (r.cache.len + j) as i64;
                mask[i * (past + new) + past + j] = 1;
            }
            mask[i * (past + new)..][..r.cache.len].fill(1);
            for (j, &p) in r.logits_at.iter().enumerate() {
                if p >= r.tokens.len() {
                    return Err(fail(format!("logits asked at {p} of {} tokens", r.tokens.len())));
                }
                at[i * k + j] = p as i64;
            }
        }
        let dims = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let ort_fail = |e: ort::Error| fail(e.to_string());
        let hd = s.head_dim;
        let per_buf = b * s.kv_heads * past * hd;
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A prefill (no row has a past) gets one masked zero slot per row of its own, and leaves the gathering
        // buffers, laid out for the running sequences, as they are.
        let prefill = longest == 0;
        let Inner { session, groups } = &mut *inner;
        if groups.len() <= group {
            groups.resize_with(group + 1, Gathered::default);
        }
        if !prefill {
            groups[group].size(2 * s.layers, per_buf, past);
        }
        let Gathered { past: bufs, rows: gathered, .. } = &mut groups[group];
        // Gather every row's past, per layer and head, into `[b, kv_heads, past, head_dim]`; a shorter row's padding
        // is zeroed (the mask keeps it out of every real token's view). A row that already holds the start of the
        // same cache (the last step's) gets only the tokens added since.
        if !prefill {
            gathered.resize(b.max(gathered.len()), (0, 0));
        }
        let gathering = if prefill { &rows[..0] } else { &rows[..] };
        for (i, r) in gathering.iter().enumerate() {
            let (id, held) = gathered[i];
            let from_token = if id == r.cache.id && held <= r.cache.len { Some(held) } else { None };
            for (n, buf) in bufs.iter_mut().enumerate() {
                let (keys, values) = &r.cache.layers[n / 2];
                let src = if n % 2 == 0 { keys } else { values };
                for h in 0..s.kv_heads {
                    let from = &src[h * r.cache.capacity * hd..][..r.cache.len * hd];
                    let to = &mut buf[((i * s.kv_heads + h) * past) * hd..][..past * hd];
                    match from_token {
                        Some(t) => to[t * hd..from.len()].copy_from_slice(&from[t * hd..]),
                        None => {
                            to[..from.len()].copy_from_slice(from);
                            to[from.len()..].fill(0.0);
                        }
                    }
                }
            }
            gathered[i] = (r.cache.id, r.cache.len);
        }
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = Vec::with_capacity(4 + 2 * s.layers);
        inputs.push(("input_ids".into(), OrtTensor::from_array((dims(&[b, new]), ids)).map_err(ort_fail)?.into()));
        inputs.push(("position_ids".into(), OrtTensor::from_array((dims(&[b, new]), pos)).map_err(ort_fail)?.into()));
        inputs.push((
            "attention_mask".into(),
            OrtTensor::from_array((dims(&[b, past + new]), mask)).map_err(ort_fail)?.into(),
        ));
        inputs.push(("logits_index".into(), OrtTensor::from_array((dims(&[b, k]), at)).map_err(ort_fail)?.into()));
        let past_dims = dims(&[b, s.kv_heads, past, hd]);
        for n in 0..2 * s.layers {
            let kind = if n % 2 == 0 { "key" } else { "value" };
            let value: SessionInputValue<'_> = match bufs.get(n).filter(|_| !prefill) {
                Some(buf) => TensorRef::from_array_view((past_dims.clone(), &buf[..per_buf])).map_err(ort_fail)?.into(),
                None => OrtTensor::from_array((past_dims.clone(), vec![0f32; per_buf])).map_err(ort_fail)?.into(),
            };
            inputs.push((format!("past_{kind}.{}", n / 2), value));
        }
        let outputs = session.run(inputs).map_err(ort_fail)?;
        let (_, all) = outputs["logits"].try_extract_tensor::<f32>().map_err(ort_fail)?;
        let Some(all) = all.get(..b * k * s.vocab) else {
            return Err(fail(format!("the graph returned {} logits for {b} rows of {k}", all.len())));
        };
        logits.data.clear();
        logits.data.extend_from_slice(all);
        logits.stride = k * s.vocab;
        logits.vocab = s.vocab;
        logits.counts.extend(rows.iter().map(|r| r.logits_at.len()));
        for layer in 0..s.layers {
            for (kind, pick) in [("key", 0usize), ("value", 1)] {
                let (_, data) =
                    outputs[format!("{kind}.{layer}").as_str()].try_extract_tensor::<f32>().map_err(ort_fail)?;
                for (i, r) in rows.iter_mut().enumerate() {
                    let (cap, len, n) = (r.cache.capacity, r.cache.len, r.tokens.len());
                    let (keys, values) = &mut r.cache.layers[layer];
                    let dst = if pick == 0 { keys } else { values };
                    for h in 0..s.kv_heads {
                        let from = &data[((i * s.kv_heads + h) * new) * hd..][..n * hd];
                        dst[(h * cap + len) * hd..][..n * hd].copy_from_slice(from);
                    }
                }
            }
        }
        for r in rows.iter_mut() {
            r.cache.len += r.tokens.len();
        }
        Ok(())
    }
}

/// Layers, heads and sizes from the graph's inputs and outputs (and a check that it is our decoder's interface).
fn read_shape(session: &Session) -> std::result::Result<Shape, String> {
    let names: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    for want in ["input_ids", "position_ids", "attention_mask", "logits_index", "past_key.0", "past_value.0"] {
        if !names.contains(&want) {
            return Err(format!("the graph has no input '{want}'; it is not a KV-cache decoder (inputs: {names:?})"));
        }
    }
    let layers = names.iter().filter(|n| n.starts_with("past_key.")).count();
    let dims = |name: &str, outputs: bool| {
        let list = if outputs { session.outputs() } else { session.inputs() };
        list.iter().find(|o| o.name() == name).and_then(|o| o.dtype().tensor_shape().map(|s| s.to_vec()))
    };
    let past = dims("past_key.0", false).ok_or("past_key.0 has no shape")?;
    let logits = dims("logits", true).ok_or("the graph has no output 'logits'")?;
    let (Some(&kv_heads), Some(&head_dim), Some(&vocab)) = (past.get(1), past.get(3), logits.get(2)) else {
        return Err(format!("unexpected shapes: past_key.0 {past:?}, logits {logits:?}"));
    };
    if kv_heads < 1 || head_dim < 1 || vocab < 1 {
        return Err(format!("the graph must fix KV heads, head size and vocabulary: {past:?}, {logits:?}"));
    }
    for l in 0..layers {
        for n in [format!("past_value.{l}"), format!("past_key.{l}")] {
            if !names.contains(&n.as_str()) {
                return Err(format!("the graph has no input '{n}'"));
            }
        }
    }
    Ok(Shape { layers, kv_heads: kv_heads as usize, head_dim: head_dim as usize, vocab: vocab as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Padded tokens the calls of `sizes` gather, one call at a time and all together.
    fn gathered(lens: &[usize], sizes: &[usize]) -> (usize, usize) {
        let (mut at, mut most, mut total) = (0, 0, 0);
        for &n in sizes {
            let padded = n * (padded_past(lens[at + n - 1]) + 1);
            (most, total, at) = (most.max(padded), total + padded, at + n);
        }
        assert_eq!(at, lens.len(), "every sequence in one call");
        (most, total)
    }

    #[test]
    fn decode_calls_gather_no_more_than_the_budget_together() {
        // Alike lengths well inside the budget: one call.
        let alike: Vec<usize> = (0..32).map(|i| 90 + i).collect();
        assert_eq!(decode_groups(&alike, 16_384), vec![32]);
        // Short sequences, a middling one and two long ones, the budget nearly full. Filling each call up to the
        // budget (the rule before) put the middling one with the short ones: 14,805 padded tokens, then 14,210 for
        // the long pair, 1.8 times the budget in all. Here the middling one goes alone.
        let mut mixed = vec![10; 20];
        mixed.extend([700, 7_000, 7_100]);
        let sizes = decode_groups(&mixed, 16_384);
        let (most, total) = gathered(&mixed, &sizes);
        assert!(most <= 16_384 && total <= 16_384, "{sizes:?}: {most} in a call, {total} in all");
        assert_eq!(sizes, vec![20, 1, 2]);
        // Spread lengths under a tight budget: never more than the budget, in far fewer calls than sequences (the
        // fewest: one fewer call cannot fit).
        let spread: Vec<usize> = (0..40).map(|i| 10 + i * 19).collect();
        let real: usize = spread.iter().sum();
        let sizes = decode_groups(&spread, real + 2_000);
        let (_, total) = gathered(&spread, &sizes);
        assert!(total <= real + 2_000, "{total} > {}", real + 2_000);
        assert_eq!(sizes.len(), 8, "{sizes:?}");
        // When the sequences alone need more than the budget after padding, one per call is the bound.
        let sizes = decode_groups(&[100, 100, 100], 250);
        assert_eq!(gathered(&[100, 100, 100], &sizes).1, 3 * 129);
        assert!(decode_groups(&[], 100).is_empty());
    }
}

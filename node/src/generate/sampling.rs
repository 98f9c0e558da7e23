//! Picking the next token from logits: greedy, or temperature / top-k / top-p sampling driven by a seed.
//!
//! Sampling is reproducible: the random stream is ChaCha8 seeded with the request's seed (the node picks one when the
//! client gives none, and reports it), one draw per token, and the candidates' shares are laid out in token-id order.
//! So the same model, prompt, parameters and seed give the same tokens, and a validator can replay the sampler over
//! teacher-forced logits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Temperatures below this are greedy decoding. Below it a validator could not check a sampled token: float noise in
/// the logits (about 1e-5 between a node's batched steps and a validator's whole-sequence pass) moves probabilities
/// by noise / temperature, past its draw margin on near-ties. At it, the greedy pick differs from a sampled one only
/// between tokens whose logits are within a few hundredths.
pub const MIN_SAMPLING_TEMPERATURE: f32 = 0.01;

/// How to pick tokens. A `temperature` below [`MIN_SAMPLING_TEMPERATURE`] (0 among them) is greedy (the other fields
/// are then ignored).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Softmax temperature; 0 (or below [`MIN_SAMPLING_TEMPERATURE`]) = greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the random stream.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Self = Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

    /// Check the parameters (OpenAI's ranges: temperature 0-2, top_p in (0, 1]).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return Err(Error::BadRequest(format!("temperature must be between 0 and 2, not {}", self.temperature)));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::BadRequest(format!("top_p must be in (0, 1], not {}", self.top_p)));
        }
        Ok(())
    }

    /// Whether this is greedy decoding (a temperature below [`MIN_SAMPLING_TEMPERATURE`]).
    pub fn is_greedy(&self) -> bool {
        self.temperature < MIN_SAMPLING_TEMPERATURE
    }
}

/// The sampler of one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: Sampling,
    draws: Draws,
    /// Weights of the last step (kept: a step over the whole vocabulary allocates nothing).
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler for `params`.
    pub fn new(params: Sampling) -> Self {
        Self { params, draws: Draws::new(params.seed), scratch: Vec::new() }
    }

    /// The next token.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let u = self.draws.next_uniform();
        if self.params.top_k == 0 && self.params.top_p >= 1.0 {
            return sample_all(logits, self.params.temperature, u, &mut self.scratch);
        }
        sample(logits, &self.params, u)
    }
}

/// Index of the largest logit (the lowest index among equals).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        // A NaN never wins, and one in first place does not hide the rest.
        if x > logits[best] || (logits[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// Candidates this many temperatures below the best logit are left out (probability under e^-40 of the best's).
const NEGLIGIBLE: f64 = 40.0;

/// The tokens sampling may pick from `logits` under `params`, in id order, and their probabilities, which sum to 1:
/// temperature, then top-k, then the nucleus (the shortest prefix, by logit, reaching top-p).
pub fn candidates(logits: &[f32], params: &Sampling) -> (Vec<u32>, Vec<f64>) {
    if params.top_k == 0 && params.top_p >= 1.0 {
        return all_candidates(logits, params.temperature);
    }
    let t = f64::from(params.temperature);
    let top = f64::from(logits.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    // Tokens more than 40 temperatures below the best have under e^-40 of its probability (all of them together
    // under 1e-12): left out, so a step sorts tens of candidates instead of the whole vocabulary.
    let floor = top - NEGLIGIBLE * t;
    let mut order: Vec<u32> = (0..logits.len() as u32).filter(|&i| f64::from(logits[i as usize]) >= floor).collect();
    if order.is_empty() {
        // Only NaN logits (a broken model): nothing to sample from but the arg-max rule's pick.
        return (vec![argmax(logits)], vec![1.0]);
    }
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = if params.top_k == 0 { order.len() } else { (params.top_k as usize).min(order.len()) };
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    let p = |i: u32| ((f64::from(logits[i as usize]) - top) / t).exp();
    let mut probs: Vec<f64>;
    if params.top_p < 1.0 {
        // Nucleus: the shortest prefix by logit reaching top_p.
        order.sort_unstable_by(by_logit);
        probs = order.iter().map(|&i| p(i)).collect();
        let total: f64 = probs.iter().sum();
        let mut keep = probs.len();
        let mut acc = 0.0;
        for (i, q) in probs.iter().enumerate() {
            acc += q / total;
            if acc >= f64::from(params.top_p) {
                keep = i + 1;
                break;
            }
        }
        order.truncate(keep);
        probs.truncate(keep);
    } else {
        probs = order.iter().map(|&i| p(i)).collect();
    }
    let mass: f64 = probs.iter().sum();
    // Walked in token-id order: two tokens whose logits differ by float noise (another batch shape, another CPU)
    // would swap places in logit order and move each other's share by a whole token's probability; in id order
    // noise moves the shares only by as much as it moves the probabilities.
    let mut pairs: Vec<(u32, f64)> = order.into_iter().zip(probs.into_iter().map(|q| q / mass)).collect();
    pairs.sort_unstable_by_key(|&(t, _)| t);
    pairs.into_iter().unzip()
}

/// [`candidates`] without top-k or top-p: the weights of [`weights`] in id order (f32 exponentials: a decoding step
/// computes tens of thousands of them; f32 is exact to about 1e-7, far inside a validator's draw margin).
fn all_candidates(logits: &[f32], temperature: f32) -> (Vec<u32>, Vec<f64>) {
    let mut w = Vec::new();
    let Some((floor, mass)) = weights(logits, temperature, &mut w) else {
        // Only NaN logits, or an infinite one (a broken model): nothing to sample from but the arg-max rule's pick.
        return (vec![argmax(logits)], vec![1.0]);
    };
    logits
        .iter()
        .zip(&w)
        .enumerate()
        .filter(|(_, (x, _))| **x >= floor)
        .map(|(i, (_, w))| (i as u32, f64::from(*w) / mass))
        .unzip()
}

/// [`sample`] without top-k or top-p: the same arithmetic as [`all_candidates`] and the walk of [`sample`] (so the
/// same token for the same draw, which a validator replays with [`candidates`]), with `scratch` for the weights
/// instead of three vocabulary-sized allocations per step.
fn sample_all(logits: &[f32], temperature: f32, u: f64, scratch: &mut Vec<f32>) -> u32 {
    let Some((floor, mass)) = weights(logits, temperature, scratch) else {
        return argmax(logits);
    };
    let mut acc = 0.0;
    let mut last = 0;
    for (i, (&x, &w)) in logits.iter().zip(scratch.iter()).enumerate() {
        if x >= floor {
            acc += f64::from(w) / mass;
            if u < acc {
                return i as u32;
            }
            last = i;
        }
    }
    last as u32
}

/// The unnormalised probabilities of sampling over the whole vocabulary at `temperature`, into `w` (0 for logits
/// more than [`NEGLIGIBLE`] temperatures below the best, and for NaN), and their sum: `(floor, mass)`, where only
/// logits at or above `floor` are candidates. `None` when there is nothing to sample from (only NaN logits, or an
/// infinite one). Written so that the compiler vectorises it: this runs for every sequence at every step.
fn weights(logits: &[f32], temperature: f32, w: &mut Vec<f32>) -> Option<(f32, f64)> {
    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = top - NEGLIGIBLE as f32 * temperature;
    let inv_t = 1.0 / temperature;
    w.clear();
    w.resize(logits.len(), 0.0);
    for (w, &x) in w.iter_mut().zip(logits) {
        *w = if x >= floor { exp((x - top) * inv_t) } else { 0.0 };
    }
    // Summed in eight interleaved lanes, then the lanes in a fixed order: the same sum on every machine.
    let mut lanes = [0.0f64; 8];
    let chunks = w.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane += f64::from(v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(tail) {
        *lane += f64::from(v);
    }
    let mass = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    (mass.is_finite() && mass > 0.0).then_some((floor, mass))
}

/// e^`a` for `a` in [-87, 0] (what [`weights`] needs), to a relative error under 2.4e-7 (twice f32's epsilon); NaN
/// stays NaN. Plain IEEE arithmetic (Cody-Waite
/// reduction and Cephes' polynomial), so every machine gets the same bits, which a libm's `expf` does not promise;
/// and it vectorises, which a call into libm does not.
fn exp(a: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Rounds to the nearest integer for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    let a = if a < -87.0 { -87.0 } else { a };
    let t = a * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (a - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = (p * (r * r) + r) + 1.0;
    // 2^n: n sits in the low bits of `t`.
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

/// The token `u` (uniform in [0, 1)) selects from the distribution `params` makes of `logits`.
pub fn sample(logits: &[f32], params: &Sampling, u: f64) -> u32 {
    let (order, probs) = candidates(logits, params);
    let mut acc = 0.0;
    for (t, p) in order.iter().zip(&probs) {
        acc += p;
        if u < acc {
            return *t;
        }
    }
    *order.last().expect("at least one candidate")
}

/// The draws of a seeded sampler, one per sampled token (what a validator replays).
#[derive(Debug)]
pub struct Draws(ChaCha8Rng);

impl Draws {
    /// The draws of `seed`.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// The next uniform draw in [0, 1).
    pub fn next_uniform(&mut self) -> f64 {
        self.0.r#gen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` pseudo-random logits from `seed`, in steps of 0.01 over [-half, half).
    fn spread(seed: u64, n: usize, half: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((x >> 33) % (200 * half)) as f32 / 100.0 - half as f32
            })
            .collect()
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        assert_eq!(Sampler::new(Sampling::GREEDY).pick(&[0.0, 0.5, 0.2]), 1);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [1.0, 4.0, 3.0, 2.0];
        let p = Sampling { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 0 };
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample(&logits, &p, u), 1);
        }
        let p = Sampling { temperature: 1.0, top_k: 0, top_p: 0.5, seed: 0 };
        // P(token 1) = e^4 / (e^1 + e^4 + e^3 + e^2) = 0.64 >= 0.5: only token 1 is left.
        assert_eq!(sample(&logits, &p, 0.99), 1);
        let p = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0, seed: 0 };
        assert_eq!(sample(&logits, &p, 0.0), 1);
        assert_eq!(sample(&logits, &p, 0.99), 2);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_another_differs() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 300.0).collect();
        let params = |seed| Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed };
        let run = |seed| {
            let mut s = Sampler::new(params(seed));
            (0..32).map(|_| s.pick(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn the_allocation_free_sampler_picks_what_the_candidates_say() {
        // Logits like a model's (a few large, a long tail), with ties, -inf and NaN among them.
        let mut logits = spread(12_345, 5_000, 20);
        logits[7] = logits[8];
        logits[9] = f32::NEG_INFINITY;
        logits[10] = f32::NAN;
        let mut scratch = Vec::new();
        let mut draws = Draws::new(3);
        for temperature in [0.05, 0.3, 0.8, 1.0, 2.0] {
            let params = Sampling { temperature, top_k: 0, top_p: 1.0, seed: 0 };
            for u in [0.0, 0.25, 0.5, 0.999_999].into_iter().chain((0..200).map(|_| draws.next_uniform())) {
                assert_eq!(sample_all(&logits, temperature, u, &mut scratch), sample(&logits, &params, u), "{u}");
            }
        }
        // The sampler takes this path exactly when top-k and top-p are off, and picks what the draws select.
        for (top_k, top_p) in [(0, 1.0), (5, 1.0), (0, 0.9)] {
            let params = Sampling { temperature: 0.8, top_k, top_p, seed: 11 };
            let (mut sampler, mut draws) = (Sampler::new(params), Draws::new(11));
            for _ in 0..50 {
                assert_eq!(sampler.pick(&logits), sample(&logits, &params, draws.next_uniform()));
            }
        }
        // Nothing to sample from (an infinite logit, NaN): the arg-max rule's pick, the infinite one.
        let broken = [f32::NAN, f32::INFINITY, 1.0];
        let params = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0 };
        assert_eq!(sample_all(&broken, 1.0, 0.5, &mut scratch), 1);
        assert_eq!(sample(&broken, &params, 0.5), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 2.0, f32::NAN]), 2, "NaN never wins");
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    }

    #[test]
    fn temperatures_below_the_floor_are_greedy() {
        // Two near-tied leaders: sampling at the floor still picks either, anything colder is the arg-max.
        let logits = [0.0, 5.0, 5.001, -3.0];
        for temperature in [0.0, 1e-6, 0.001, MIN_SAMPLING_TEMPERATURE / 2.0] {
            let params = Sampling { temperature, top_k: 0, top_p: 1.0, seed: 1 };
            assert!(params.is_greedy(), "{temperature}");
            let mut s = Sampler::new(params);
            assert!((0..64).all(|_| s.pick(&logits) == 2), "{temperature} sampled");
        }
        let params = Sampling { temperature: MIN_SAMPLING_TEMPERATURE, top_k: 0, top_p: 1.0, seed: 1 };
        assert!(!params.is_greedy());
        let mut s = Sampler::new(params);
        let picks: Vec<u32> = (0..64).map(|_| s.pick(&logits)).collect();
        assert!(picks.contains(&1) && picks.contains(&2), "{picks:?}");
    }

    #[test]
    fn the_exponential_is_within_twice_f32_epsilon_of_f64_and_keeps_nan() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let a = -(i as f32) * 1e-4;
            let (got, want) = (f64::from(exp(a)), f64::from(a).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.0 * f64::from(f32::EPSILON), "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        // Below the range: e^-87, not a wrapped power of two.
        assert!((f64::from(exp(-200.0)) - (-87f64).exp()).abs() < 1e-40);
    }

    #[test]
    fn sampling_over_the_whole_vocabulary_is_the_softmax_of_the_logits_over_the_temperature() {
        // Against a plain f64 softmax: a wrong temperature, floor or sum would make node and validator agree on a
        // wrong distribution, which their equality tests cannot see.
        let mut logits = spread(99, 3_001, 30);
        logits[17] = 31.5;
        for temperature in [0.2f32, 0.8, 1.0, 2.0] {
            let (order, probs) = all_candidates(&logits, temperature);
            let t = f64::from(temperature);
            let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weight = |l: f32| ((f64::from(l) - f64::from(top)) / t).exp();
            let total: f64 = logits.iter().map(|&l| weight(l)).sum();
            let mut seen = 0.0;
            for (&i, &p) in order.iter().zip(&probs) {
                let want = weight(logits[i as usize]) / total;
                assert!((p - want).abs() <= 1e-6 * want + 1e-12, "T={temperature} token {i}: {p} vs {want}");
                seen += want;
            }
            // What is left out (more than 40 temperatures below the best) is negligible.
            assert!(1.0 - seen < 1e-12, "T={temperature}: {} of the mass left out", 1.0 - seen);
        }
    }

    #[test]
    fn parameters_out_of_range_are_refused() {
        let bad = [
            Sampling { temperature: -0.5, ..Sampling::GREEDY },
            Sampling { temperature: f32::NAN, ..Sampling::GREEDY },
            Sampling { top_p: 0.0, ..Sampling::GREEDY },
            Sampling { top_p: 1.5, ..Sampling::GREEDY },
        ];
        for s in bad {
            assert!(s.check().is_err(), "{s:?}");
        }
    }
}

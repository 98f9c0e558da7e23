//! Which receipts to check: a share nodes cannot predict, larger for new and suspected nodes.
//!
//! The draw for a receipt is `keccak256(secret ‖ leaf)` read as a number in [0, 1): the validator's secret never
//! leaves it, so a node cannot tell which of its receipts will be checked, and two validators sample independently.
//! A node is *new* for its first `new_node_receipts` receipts seen and *suspected* after it refused, stalled or
//! faked an audit, or was caught cheating. Both raise its rate. Per-node state is bounded ([`MAX_NODES`]).

use std::collections::HashMap;

use alloy::primitives::{Address, B256, keccak256};

use crate::config::SamplingConfig;

/// Nodes tracked at most; beyond it the least recently seen one is forgotten (it becomes "new" again, which only
/// raises its sampling rate).
pub const MAX_NODES: usize = 10_000;

#[derive(Clone, Copy, Debug, Default)]
struct NodeState {
    seen: u64,
    suspect: bool,
    last: u64,
}

/// The sampling decision, per validator.
#[derive(Debug)]
pub struct Sampler {
    secret: B256,
    config: SamplingConfig,
    nodes: HashMap<Address, NodeState>,
    clock: u64,
}

impl Sampler {
    /// A sampler drawing with `secret`.
    pub fn new(secret: B256, config: SamplingConfig) -> Self {
        Self { secret, config, nodes: HashMap::new(), clock: 0 }
    }

    /// The draw for `leaf`, uniform in [0, 1) and unpredictable without the secret.
    pub fn draw(&self, leaf: B256) -> f64 {
        let h = keccak256([self.secret.as_slice(), leaf.as_slice()].concat());
        let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
        (n >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The rate that applies to `node` now.
    pub fn rate(&self, node: Address) -> f64 {
        let s = self.nodes.get(&node).copied().unwrap_or_default();
        let mut rate = self.config.rate;
        if s.seen < self.config.new_node_receipts {
            rate = rate.max(self.config.new_node_rate);
        }
        if s.suspect {
            rate = rate.max(self.config.suspect_rate);
        }
        rate
    }

    /// Count a receipt of `node` and say whether to check it.
    pub fn should_check(&mut self, node: Address, leaf: B256) -> bool {
        let rate = self.rate(node);
        self.clock += 1;
        if !self.nodes.contains_key(&node) && self.nodes.len() >= MAX_NODES {
            let oldest = self.nodes.iter().min_by_key(|(_, s)| s.last).map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.nodes.remove(&a);
            }
        }
        let s = self.nodes.entry(node).or_default();
        s.seen += 1;
        s.last = self.clock;
        self.draw(leaf) < rate
    }

    /// Sample `node` more from now on.
    pub fn suspect(&mut self, node: Address) {
        self.nodes.entry(node).or_default().suspect = true;
    }

    /// Nodes suspected now.
    pub fn suspected(&self) -> usize {
        self.nodes.values().filter(|s| s.suspect).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> B256 {
        keccak256(i.to_be_bytes())
    }

    #[test]
    fn samples_the_configured_share_and_more_for_new_and_suspected_nodes() {
        let config = SamplingConfig { rate: 0.05, new_node_rate: 0.5, new_node_receipts: 100, ..Default::default() };
        let mut s = Sampler::new(B256::repeat_byte(7), config);
        let node = Address::repeat_byte(1);
        let first: usize = (0..100).filter(|&i| s.should_check(node, leaf(i))).count();
        assert!((35..=65).contains(&first), "a new node: about half, got {first}");
        let steady: usize = (100..20_100).filter(|&i| s.should_check(node, leaf(i))).count();
        assert!((850..=1150).contains(&steady), "about 5% of 20,000, got {steady}");
        s.suspect(node);
        let suspected: usize = (30_000..32_000).filter(|&i| s.should_check(node, leaf(i))).count();
        assert!((900..=1100).contains(&suspected), "a suspected node: about half, got {suspected}");
        assert_eq!(s.suspected(), 1);
    }

    #[test]
    fn another_secret_samples_other_receipts() {
        let (a, b) = (
            Sampler::new(B256::repeat_byte(1), Default::default()),
            Sampler::new(B256::repeat_byte(2), Default::default()),
        );
        let picks = |s: &Sampler| (0..2000).filter(|&i| s.draw(leaf(i)) < 0.05).collect::<Vec<_>>();
        let (pa, pb) = (picks(&a), picks(&b));
        let common = pa.iter().filter(|i| pb.contains(i)).count();
        assert!(common < pa.len() / 3, "independent draws share about 5%: {common} of {}", pa.len());
    }
}

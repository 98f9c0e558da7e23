//! Routing strategies: which of the nodes that serve a model gets the next request.

use std::collections::HashMap;

use libp2p::PeerId;

/// How the client spreads requests over the nodes that serve a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Each node in turn.
    #[default]
    RoundRobin,
    /// The node with the fewest of our requests in flight.
    LeastOutstanding,
    /// In proportion to each node's advertised capacity (smooth weighted round-robin).
    WeightedCapacity,
    /// The node with the shortest advertised queue for this model plus our requests in flight.
    ModelAware,
}

/// One routing candidate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) peer: PeerId,
    pub(crate) outstanding: usize,
    pub(crate) capacity: u32,
    pub(crate) queue_depth: u32,
}

/// Routing state kept across requests (cursors and weights per model).
#[derive(Debug, Default)]
pub(crate) struct Router {
    cursor: HashMap<String, usize>,
    current_weight: HashMap<(String, PeerId), i64>,
}

impl Router {
    /// Pick among `candidates` (sorted by peer id for determinism) for `model`.
    pub(crate) fn pick(&mut self, strategy: Strategy, model: &str, mut candidates: Vec<Candidate>) -> Option<PeerId> {
        if candidates.is_empty() {
            return None;
        }
        candidates.sort_by_key(|c| c.peer);
        let n = candidates.len();
        let cursor = self.cursor.entry(model.to_owned()).or_default();
        let start = *cursor % n;
        *cursor = cursor.wrapping_add(1);
        // Rotate so ties break in round-robin order.
        candidates.rotate_left(start);
        let chosen = match strategy {
            Strategy::RoundRobin => candidates[0],
            Strategy::LeastOutstanding => *candidates.iter().min_by_key(|c| c.outstanding).expect("non-empty"),
            Strategy::ModelAware => {
                *candidates.iter().min_by_key(|c| c.queue_depth as usize + c.outstanding).expect("non-empty")
            }
            Strategy::WeightedCapacity => {
                candidates.sort_by_key(|c| c.peer);
                let total: i64 = candidates.iter().map(|c| i64::from(c.capacity.max(1))).sum();
                let mut best: Option<(i64, Candidate)> = None;
                for c in &candidates {
                    let w = self.current_weight.entry((model.to_owned(), c.peer)).or_default();
                    *w += i64::from(c.capacity.max(1));
                    if best.is_none_or(|(bw, _)| *w > bw) {
                        best = Some((*w, *c));
                    }
                }
                let (_, c) = best.expect("non-empty");
                *self.current_weight.get_mut(&(model.to_owned(), c.peer)).expect("set above") -= total;
                c
            }
        };
        Some(chosen.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(spec: &[(usize, u32, u32)]) -> (Vec<PeerId>, Vec<Candidate>) {
        let mut peers: Vec<PeerId> = spec.iter().map(|_| PeerId::random()).collect();
        peers.sort();
        let c = peers
            .iter()
            .zip(spec)
            .map(|(p, &(outstanding, capacity, queue_depth))| Candidate {
                peer: *p,
                outstanding,
                capacity,
                queue_depth,
            })
            .collect();
        (peers, c)
    }

    fn count(router: &mut Router, s: Strategy, c: &[Candidate], n: usize) -> HashMap<PeerId, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            *out.entry(router.pick(s, "m", c.to_vec()).unwrap()).or_default() += 1;
        }
        out
    }

    #[test]
    fn round_robin_is_even() {
        let (peers, c) = cands(&[(0, 1, 0), (0, 1, 0), (0, 1, 0)]);
        let counts = count(&mut Router::default(), Strategy::RoundRobin, &c, 300);
        assert!(peers.iter().all(|p| counts[p] == 100), "{counts:?}");
    }

    #[test]
    fn least_outstanding_and_model_aware_avoid_busy_nodes() {
        let (peers, c) = cands(&[(5, 1, 0), (0, 1, 0), (3, 1, 0)]);
        let counts = count(&mut Router::default(), Strategy::LeastOutstanding, &c, 10);
        assert_eq!(counts.get(&peers[1]), Some(&10));
        let (peers, c) = cands(&[(0, 1, 9), (1, 1, 0), (0, 1, 4)]);
        let counts = count(&mut Router::default(), Strategy::ModelAware, &c, 10);
        assert_eq!(counts.get(&peers[1]), Some(&10));
    }

    #[test]
    fn weighted_follows_capacity() {
        let (peers, c) = cands(&[(0, 1, 0), (0, 2, 0), (0, 5, 0)]);
        let counts = count(&mut Router::default(), Strategy::WeightedCapacity, &c, 800);
        assert_eq!((counts[&peers[0]], counts[&peers[1]], counts[&peers[2]]), (100, 200, 500));
    }
}

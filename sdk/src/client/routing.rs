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
    /// In proportion to each node's measured throughput for us (answers per second: reliability / latency), by
    /// smooth weighted round-robin. Nothing a node says about itself counts; a node we have not measured yet gets
    /// the average weight, so new nodes are tried.
    Weighted,
    /// The node with the shortest expected wait: (advertised queue for this model + our requests in flight + 1) x
    /// its measured latency / its measured reliability. A node advertising an empty queue but answering slowly or
    /// failing is not favoured.
    ModelAware,
}

/// What the client measured of one node: answers, failures and an exponentially weighted latency.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Measured {
    /// Answers received.
    pub(crate) ok: u64,
    /// Failed requests (errors of the node's making, timeouts, broken streams).
    pub(crate) failed: u64,
    /// EWMA of answer latency, ms (0 until the first answer).
    pub(crate) latency_ms: f64,
}

impl Measured {
    /// Record one request's result.
    pub(crate) fn record(&mut self, ok: bool, latency_ms: f64) {
        if ok {
            self.ok += 1;
            self.latency_ms =
                if self.latency_ms == 0.0 { latency_ms } else { 0.8 * self.latency_ms + 0.2 * latency_ms };
        } else {
            self.failed += 1;
        }
    }

    /// Share of requests answered (Laplace-smoothed: 1/2 before any).
    pub(crate) fn reliability(&self) -> f64 {
        (self.ok as f64 + 1.0) / ((self.ok + self.failed) as f64 + 2.0)
    }

    /// Answers per second it gives us, if measured.
    pub(crate) fn throughput(&self) -> Option<f64> {
        if self.ok == 0 && self.failed > 0 {
            return Some(0.0); // only failures so far: the smallest weight, still probed now and then
        }
        (self.latency_ms > 0.0).then(|| 1000.0 * self.reliability() / self.latency_ms.max(0.01))
    }
}

/// One routing candidate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub(crate) peer: PeerId,
    pub(crate) outstanding: usize,
    pub(crate) queue_depth: u32,
    pub(crate) measured: Measured,
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
                // Unmeasured nodes are assumed as fast as the fastest measured one, so they get tried.
                let known =
                    candidates.iter().filter_map(|c| (c.measured.latency_ms > 0.0).then_some(c.measured.latency_ms));
                let fastest = known.fold(f64::INFINITY, f64::min);
                let fastest = if fastest.is_finite() { fastest } else { 1.0 };
                let wait = |c: &Candidate| {
                    let latency = if c.measured.latency_ms > 0.0 { c.measured.latency_ms } else { fastest };
                    (f64::from(c.queue_depth) + c.outstanding as f64 + 1.0) * latency / c.measured.reliability()
                };
                *candidates.iter().min_by(|a, b| wait(a).total_cmp(&wait(b))).expect("non-empty")
            }
            Strategy::Weighted => {
                candidates.sort_by_key(|c| c.peer);
                let known: Vec<f64> = candidates.iter().filter_map(|c| c.measured.throughput()).collect();
                let average = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
                // Integer weights for smooth weighted round-robin, scaled so the average node weighs 100.
                let weight = |c: &Candidate| {
                    ((c.measured.throughput().unwrap_or(average) / average) * 100.0).round().max(1.0) as i64
                };
                let total: i64 = candidates.iter().map(weight).sum();
                let mut best: Option<(i64, Candidate)> = None;
                for c in &candidates {
                    let w = self.current_weight.entry((model.to_owned(), c.peer)).or_default();
                    *w += weight(c);
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

    fn measured(ok: u64, failed: u64, latency_ms: f64) -> Measured {
        Measured { ok, failed, latency_ms }
    }

    fn cands(spec: &[(usize, u32, Measured)]) -> (Vec<PeerId>, Vec<Candidate>) {
        let mut peers: Vec<PeerId> = spec.iter().map(|_| PeerId::random()).collect();
        peers.sort();
        let c = peers
            .iter()
            .zip(spec)
            .map(|(p, &(outstanding, queue_depth, measured))| Candidate {
                peer: *p,
                outstanding,
                queue_depth,
                measured,
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
        let m = Measured::default();
        let (peers, c) = cands(&[(0, 0, m), (0, 0, m), (0, 0, m)]);
        let counts = count(&mut Router::default(), Strategy::RoundRobin, &c, 300);
        assert!(peers.iter().all(|p| counts[p] == 100), "{counts:?}");
    }

    #[test]
    fn least_outstanding_and_model_aware_avoid_busy_nodes() {
        let m = measured(10, 0, 5.0);
        let (peers, c) = cands(&[(5, 0, m), (0, 0, m), (3, 0, m)]);
        let counts = count(&mut Router::default(), Strategy::LeastOutstanding, &c, 10);
        assert_eq!(counts.get(&peers[1]), Some(&10));
        let (peers, c) = cands(&[(0, 9, m), (1, 0, m), (0, 4, m)]);
        let counts = count(&mut Router::default(), Strategy::ModelAware, &c, 10);
        assert_eq!(counts.get(&peers[1]), Some(&10));
    }

    #[test]
    fn weighted_follows_measured_throughput_not_claims() {
        // Latencies 10, 5 and 2 ms: throughputs 1 : 2 : 5.
        let (peers, c) =
            cands(&[(0, 0, measured(50, 0, 10.0)), (0, 0, measured(50, 0, 5.0)), (0, 0, measured(50, 0, 2.0))]);
        let counts = count(&mut Router::default(), Strategy::Weighted, &c, 800);
        let (a, b, d) = (counts[&peers[0]], counts[&peers[1]], counts[&peers[2]]);
        assert!((90..=110).contains(&a) && (190..=210).contains(&b) && (490..=510).contains(&d), "{a} {b} {d}");
    }

    #[test]
    fn a_node_that_lies_about_its_queue_or_fails_does_not_capture_the_traffic() {
        // The liar advertises an empty queue but answers in 50 ms and fails half its requests; the honest node
        // says 3 queued and answers in 5 ms.
        let (peers, c) = cands(&[(0, 0, measured(10, 10, 50.0)), (0, 3, measured(20, 0, 5.0))]);
        let counts = count(&mut Router::default(), Strategy::ModelAware, &c, 20);
        assert_eq!(counts.get(&peers[1]), Some(&20), "{counts:?}");
        let counts = count(&mut Router::default(), Strategy::Weighted, &c, 200);
        assert!(counts[&peers[1]] >= 180, "the honest node gets over 90%: {counts:?}");
        // A node that only ever failed gets the smallest weight, not the average.
        let (peers, c) = cands(&[(0, 0, measured(100, 0, 5.0)), (0, 0, measured(0, 30, 0.0))]);
        let counts = count(&mut Router::default(), Strategy::Weighted, &c, 200);
        assert!(counts.get(&peers[1]).copied().unwrap_or(0) <= 2, "{counts:?}");
        // An unmeasured newcomer still gets tried.
        let (peers, c) = cands(&[(0, 0, measured(100, 0, 5.0)), (0, 0, Measured::default())]);
        let counts = count(&mut Router::default(), Strategy::Weighted, &c, 100);
        assert!(counts.get(&peers[1]).copied().unwrap_or(0) >= 40, "{counts:?}");
    }
}

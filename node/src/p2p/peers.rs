//! Per-peer load limits, shared by the request-response path (answered by the swarm task) and the multiplexed
//! streams (served by their own tasks): a token bucket of requests per second, requests in flight, and streams open.
//! A peer's entry lives while it is connected (as the swarm's connection events say) or has work in flight, so a
//! disconnect never loses a count, and work arriving after a disconnect cannot keep an entry alive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use libp2p::PeerId;

use crate::metrics::NodeMetrics;

/// Per-peer request budget: `rate` tokens per second, up to `2 * rate` saved.
pub(super) struct TokenBucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate: f64) -> Self {
        Self { rate, tokens: 2.0 * rate, at: Instant::now() }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(2.0 * self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Load {
    bucket: TokenBucket,
    inflight: usize,
    streams: usize,
    connected: bool,
}

/// The limits and every peer's load.
pub(super) struct PeerLoad {
    peers: Mutex<HashMap<PeerId, Load>>,
    rate: f64,
    max_inflight: usize,
    max_streams: usize,
    metrics: NodeMetrics,
}

impl PeerLoad {
    pub(super) fn new(rate: f64, max_inflight: usize, max_streams: usize, metrics: NodeMetrics) -> Self {
        Self { peers: Mutex::new(HashMap::new()), rate, max_inflight, max_streams, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Load>> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry<'a>(&self, peers: &'a mut HashMap<PeerId, Load>, peer: PeerId) -> &'a mut Load {
        peers.entry(peer).or_insert_with(|| Load {
            bucket: TokenBucket::new(self.rate),
            inflight: 0,
            streams: 0,
            connected: false,
        })
    }

    /// Take one request of `peer` in, or say why not (it is answered "overloaded").
    pub(super) fn admit(&self, peer: PeerId) -> Result<(), String> {
        let mut peers = self.lock();
        let load = self.entry(&mut peers, peer);
        let refused = if !load.bucket.take() {
            Some(format!("more than {} requests per second from one peer", self.rate))
        } else if load.inflight >= self.max_inflight {
            Some(format!("more than {} requests in flight from one peer", self.max_inflight))
        } else {
            None
        };
        if let Some(msg) = refused {
            self.prune(&mut peers, peer);
            return Err(msg);
        }
        let load = self.entry(&mut peers, peer);
        load.inflight += 1;
        self.metrics.p2p_inflight.inc();
        self.metrics.p2p_tracked_peers.set(peers.len() as i64);
        Ok(())
    }

    /// One admitted request of `peer` was answered.
    pub(super) fn done(&self, peer: PeerId) {
        let mut peers = self.lock();
        if let Some(load) = peers.get_mut(&peer) {
            debug_assert!(load.inflight > 0, "a request answered that was not admitted");
            load.inflight = load.inflight.saturating_sub(1);
            self.metrics.p2p_inflight.dec();
        }
        self.prune(&mut peers, peer);
    }

    /// A multiplexed stream from `peer` opens; `false` when it has as many as allowed (the stream is refused).
    pub(super) fn open_stream(&self, peer: PeerId) -> bool {
        let mut peers = self.lock();
        let load = self.entry(&mut peers, peer);
        if load.streams >= self.max_streams {
            return false;
        }
        load.streams += 1;
        self.metrics.p2p_tracked_peers.set(peers.len() as i64);
        true
    }

    /// A multiplexed stream from `peer` closed.
    pub(super) fn close_stream(&self, peer: PeerId) {
        let mut peers = self.lock();
        if let Some(load) = peers.get_mut(&peer) {
            load.streams = load.streams.saturating_sub(1);
        }
        self.prune(&mut peers, peer);
    }

    /// `peer` connected (a swarm event).
    pub(super) fn connected(&self, peer: PeerId) {
        let mut peers = self.lock();
        self.entry(&mut peers, peer).connected = true;
        self.metrics.p2p_tracked_peers.set(peers.len() as i64);
    }

    /// `peer`'s last connection closed: its entry goes once nothing of it is left.
    pub(super) fn disconnected(&self, peer: PeerId) {
        let mut peers = self.lock();
        if let Some(load) = peers.get_mut(&peer) {
            load.connected = false;
        }
        self.prune(&mut peers, peer);
    }

    fn prune(&self, peers: &mut HashMap<PeerId, Load>, peer: PeerId) {
        if peers.get(&peer).is_some_and(|l| !l.connected && l.inflight == 0 && l.streams == 0) {
            peers.remove(&peer);
        }
        self.metrics.p2p_tracked_peers.set(peers.len() as i64);
    }

    /// Whether any request is in flight.
    pub(super) fn busy(&self) -> bool {
        self.lock().values().any(|l| l.inflight > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10.0);
        assert_eq!((0..25).filter(|_| b.take()).count(), 20, "burst of twice the rate");
        std::thread::sleep(std::time::Duration::from_millis(310));
        let refilled = (0..10).filter(|_| b.take()).count();
        assert!((2..=4).contains(&refilled), "about 3 tokens after 0.3 s at 10/s, got {refilled}");
    }

    #[test]
    fn in_flight_and_streams_are_bounded_and_an_entry_outlives_its_work() {
        let metrics = NodeMetrics::new().unwrap();
        let load = PeerLoad::new(1_000.0, 2, 1, metrics.clone());
        let peer = PeerId::random();
        load.connected(peer);
        load.admit(peer).unwrap();
        load.admit(peer).unwrap();
        assert!(load.admit(peer).unwrap_err().contains("in flight"));
        assert!(load.open_stream(peer) && !load.open_stream(peer), "one stream at most");
        // The peer leaves with work in flight: counts stay until the answers are out.
        load.disconnected(peer);
        assert!(load.busy());
        load.done(peer);
        load.done(peer);
        assert!(!load.busy());
        assert_eq!(metrics.p2p_tracked_peers.get(), 1, "its stream is still open");
        load.close_stream(peer);
        assert_eq!((metrics.p2p_tracked_peers.get(), metrics.p2p_inflight.get()), (0, 0));
        // Work that arrives after the disconnect (a frame already read) leaves no entry behind.
        load.admit(peer).unwrap();
        load.done(peer);
        assert_eq!(metrics.p2p_tracked_peers.get(), 0);
    }
}

//! Bytes our protocols carry, per protocol and direction (`mlbridge_p2p_bytes_total{protocol, direction}`), counted
//! where their messages are read and written: request-response inference and audits, the multiplexed inference
//! stream, gossip. (The transport's own overhead — noise, yamux, identify, Kademlia — is not in it.)

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The protocols counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `/mlbridge/infer/1` (request-response).
    Infer,
    /// `/mlbridge/infer-mux/1` (the long-lived stream).
    Mux,
    /// Gossipsub message payloads (adverts, offers, bids, receipts, evidence).
    Gossip,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Infer, Proto::Mux, Proto::Gossip];

    fn label(self) -> &'static str {
        match self {
            Proto::Infer => crate::protocol::INFER_PROTOCOL,
            Proto::Mux => crate::net::mux::MUX_PROTOCOL,
            Proto::Gossip => "gossipsub",
        }
    }
}

/// A cheap handle on the counters (none: counts nothing).
#[derive(Clone, Debug, Default)]
pub struct Traffic(Option<Arc<[[IntCounter; 2]; 3]>>);

impl Traffic {
    /// Counters registered in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let vec = IntCounterVec::new(
            Opts::new("mlbridge_p2p_bytes_total", "Bytes of our libp2p protocols' messages, by protocol and direction"),
            &["protocol", "direction"],
        )?;
        registry.register(Box::new(vec.clone()))?;
        let pair = |p: Proto| ["in", "out"].map(|d| vec.with_label_values(&[p.label(), d]));
        Ok(Self(Some(Arc::new(Proto::ALL.map(pair)))))
    }

    /// Count `bytes` of `proto` received (`inbound`) or sent.
    pub fn add(&self, proto: Proto, inbound: bool, bytes: usize) {
        if let Some(c) = &self.0 {
            let row = match proto {
                Proto::Infer => 0,
                Proto::Mux => 1,
                Proto::Gossip => 2,
            };
            c[row][usize::from(!inbound)].inc_by(bytes as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_land_on_their_protocol_and_direction() {
        let registry = Registry::new();
        let t = Traffic::register(&registry).unwrap();
        t.add(Proto::Mux, true, 100);
        t.add(Proto::Mux, false, 7);
        t.add(Proto::Gossip, true, 5);
        Traffic::default().add(Proto::Infer, true, 1_000);
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains(r#"mlbridge_p2p_bytes_total{direction="in",protocol="/mlbridge/infer-mux/1"} 100"#),
            "{text}"
        );
        assert!(text.contains(r#"mlbridge_p2p_bytes_total{direction="out",protocol="/mlbridge/infer-mux/1"} 7"#));
        assert!(text.contains(r#"mlbridge_p2p_bytes_total{direction="in",protocol="gossipsub"} 5"#));
        assert!(text.contains(r#"mlbridge_p2p_bytes_total{direction="in",protocol="/mlbridge/infer/1"} 0"#));
    }
}

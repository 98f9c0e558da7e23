//! What every ML Bridge peer (node or client) runs: the libp2p behaviour and the swarm builder.
//!
//! Transports: TCP and QUIC, noise, yamux. Behaviours: the multiplexed inference streams of [`mux`] (one long-lived
//! stream per client and node), request-response on `/mlbridge/infer/1` with our CBOR [`Codec`] (audits, bids,
//! older peers), gossipsub (signed messages, explicit validation, peer scoring that penalises invalid messages),
//! identify, Kademlia (`/mlbridge/kad/1`) for discovery beyond the bootstrap peers, mDNS for LANs (optional), and a
//! block list for banned peers. The node's and the client's swarm actors own one swarm each.

mod codec;
pub mod ipban;
pub mod mux;
pub mod traffic;

use std::collections::HashMap;
use std::time::Duration;

use libp2p::allow_block_list;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds, TopicScoreParams,
};
use libp2p::identity::Keypair;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, StreamProtocol, Swarm, identify, mdns, noise, tcp, yamux};

pub use codec::{Codec, DEFAULT_INBOUND_BUDGET, InboundBudget};

use crate::protocol::{
    ADVERTS_TOPIC, DISPUTES_TOPIC, EVIDENCE_PARTS_TOPIC, INFER_PROTOCOL, MAX_GOSSIP_BYTES, RECEIPTS_TOPIC,
};
use crate::{Error, Result};

/// Kademlia protocol name (a private DHT: only ML Bridge peers).
pub const KAD_PROTOCOL: &str = "/mlbridge/kad/1";
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/mlbridge/id/1";

/// Network settings shared by nodes and clients.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Addresses to listen on (e.g. `/ip4/0.0.0.0/tcp/4001`, `/ip4/0.0.0.0/udp/4001/quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start and whenever every connection is lost (with their `/p2p/<id>` suffix).
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network.
    pub mdns: bool,
    /// How long one request may take end to end.
    pub request_timeout: Duration,
    /// Close connections idle for this long.
    pub idle_timeout: Duration,
    /// Gossipsub heartbeat (mesh maintenance).
    pub heartbeat: Duration,
    /// Connections accepted from others at once.
    pub max_incoming_connections: u32,
    /// Connections to or from one peer at once.
    pub max_connections_per_peer: u32,
    /// Handshakes in progress from others at once.
    pub max_pending_incoming: u32,
    /// Request streams one connection may have open at once.
    pub max_streams_per_connection: usize,
    /// Bytes of inbound requests being read at once, across all connections (beyond: "overloaded").
    pub inbound_budget_bytes: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().expect("valid"),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            heartbeat: Duration::from_millis(500),
            max_incoming_connections: 512,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            max_streams_per_connection: 64,
            inbound_budget_bytes: codec::DEFAULT_INBOUND_BUDGET,
        }
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    // The derive generates `BehaviourEvent` with one undocumented variant per field.
    #![allow(missing_docs)]

    use libp2p::allow_block_list::{self, BlockedPeers};
    use libp2p::kad::{self, store::MemoryStore};
    use libp2p::swarm::NetworkBehaviour;
    use libp2p::swarm::behaviour::toggle::Toggle;
    use libp2p::{gossipsub, identify, mdns, request_response};

    use super::Codec;
    use super::ipban::IpBan;

    /// The ML Bridge network behaviour.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        /// Inference, embedding and bid requests.
        pub rpc: request_response::Behaviour<Codec>,
        /// Adverts, job offers and receipts.
        pub gossipsub: gossipsub::Behaviour,
        /// Exchanges listen addresses and protocols with every peer.
        pub identify: identify::Behaviour,
        /// Peer routing beyond the bootstrap peers.
        pub kad: kad::Behaviour<MemoryStore>,
        /// LAN discovery (off when not wanted).
        pub mdns: Toggle<mdns::tokio::Behaviour>,
        /// Peers banned for misbehaving.
        pub blocked: allow_block_list::Behaviour<BlockedPeers>,
        /// Addresses banned for misbehaving (a fresh key is no fresh start).
        pub ip_ban: IpBan,
        /// Connection limits (incoming, per peer, pending).
        pub limits: libp2p::connection_limits::Behaviour,
        /// Long-lived streams of the multiplexed inference protocol, handed to our own tasks.
        pub stream: libp2p_stream::Behaviour,
    }
}

fn net_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Network(format!("{what}: {e}"))
}

/// Topic scores: invalid messages on our fixed topics cost a peer dearly, so spammers are graylisted.
fn score_params() -> (PeerScoreParams, PeerScoreThresholds) {
    let mut topics = HashMap::new();
    for t in [ADVERTS_TOPIC, RECEIPTS_TOPIC, DISPUTES_TOPIC, EVIDENCE_PARTS_TOPIC] {
        topics.insert(
            IdentTopic::new(t).hash(),
            TopicScoreParams {
                topic_weight: 1.0,
                invalid_message_deliveries_weight: -100.0,
                invalid_message_deliveries_decay: 0.9,
                ..TopicScoreParams::default()
            },
        );
    }
    let params = PeerScoreParams { topics, ..PeerScoreParams::default() };
    let thresholds = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        ..PeerScoreThresholds::default()
    };
    (params, thresholds)
}

/// Build a swarm with the ML Bridge behaviour for `keypair` and start listening on `config.listen`.
pub fn build_swarm(keypair: Keypair, config: &NetConfig) -> Result<Swarm<Behaviour>> {
    build_swarm_with(keypair, config, Codec::new(InboundBudget::new(config.inbound_budget_bytes)))
}

/// [`build_swarm`] whose request-response requests draw on `budget` (a node shares it with its multiplexed
/// streams, so the bytes being read stay within one budget).
pub fn build_swarm_with(keypair: Keypair, config: &NetConfig, codec: Codec) -> Result<Swarm<Behaviour>> {
    let peer_id = keypair.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net_err("TCP transport", e))?
        .with_quic()
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(config.heartbeat)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_BYTES)
                .build()
                .map_err(|e| e.to_string())?;
            let mut gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let (params, thresholds) = score_params();
            gossipsub.with_peer_score(params, thresholds)?;
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(StreamProtocol::new(INFER_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(config.request_timeout)
                    .with_max_concurrent_streams(config.max_streams_per_connection),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("mlbridge/{}", env!("CARGO_PKG_VERSION"))),
            );
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                MemoryStore::new(peer_id),
                kad::Config::new(StreamProtocol::new(KAD_PROTOCOL)),
            );
            kad.set_mode(Some(kad::Mode::Server));
            let mdns =
                if config.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
            Ok(Behaviour {
                rpc,
                gossipsub,
                identify,
                kad,
                mdns: Toggle::from(mdns),
                blocked: allow_block_list::Behaviour::default(),
                ip_ban: ipban::IpBan::default(),
                limits: libp2p::connection_limits::Behaviour::new(
                    libp2p::connection_limits::ConnectionLimits::default()
                        .with_max_established_incoming(Some(config.max_incoming_connections))
                        .with_max_established_per_peer(Some(config.max_connections_per_peer))
                        .with_max_pending_incoming(Some(config.max_pending_incoming)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| net_err("network behaviour", e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| net_err(&format!("listening on {addr}"), e))?;
    }
    Ok(swarm)
}

/// The peer id at the end of a `/p2p/<id>` multiaddr, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// The bootstrap peers: IP addresses are dialled as they are; names (`/dns4/host/tcp/port`, a StatefulSet pod's stable
/// name) are resolved by the system resolver on a blocking thread and their addresses come back through
/// [`Bootstrap::resolved`]. The swarm itself has no DNS transport, so a name a peer hands us (identify, Kademlia,
/// adverts) is never dialled, and the IP ban always sees the address of a connection.
#[derive(Debug)]
pub struct Bootstrap {
    addrs: Vec<Multiaddr>,
    tx: tokio::sync::mpsc::Sender<Multiaddr>,
    rx: tokio::sync::mpsc::Receiver<Multiaddr>,
}

impl Bootstrap {
    /// The configured bootstrap addresses.
    pub fn new(addrs: Vec<Multiaddr>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        Self { addrs, tx, rx }
    }

    /// No bootstrap peer configured.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Dial every bootstrap peer (names: once resolved); needs a tokio runtime.
    pub fn dial(&self, swarm: &mut Swarm<Behaviour>) {
        for addr in &self.addrs {
            if ipban::ip_of(addr).is_some() {
                dial_known(swarm, addr.clone());
            } else {
                let (addr, tx) = (addr.clone(), self.tx.clone());
                tokio::task::spawn_blocking(move || {
                    for resolved in resolve(&addr) {
                        let _ = tx.blocking_send(resolved);
                    }
                });
            }
        }
        if !self.addrs.is_empty() {
            let _ = swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// The next address a bootstrap name resolved to (dial it with [`Bootstrap::dial_resolved`]).
    pub async fn resolved(&mut self) -> Option<Multiaddr> {
        self.rx.recv().await
    }

    /// Dial an address [`Bootstrap::resolved`] gave.
    pub fn dial_resolved(&self, swarm: &mut Swarm<Behaviour>, addr: Multiaddr) {
        dial_known(swarm, addr);
    }
}

fn dial_known(swarm: &mut Swarm<Behaviour>, addr: Multiaddr) {
    if let Some(peer) = peer_of(&addr) {
        swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
    }
    if let Err(err) = swarm.dial(addr.clone()) {
        tracing::debug!(target: "sdk::net", %addr, %err, "cannot dial bootstrap peer");
    }
}

/// `/dns4/host/tcp/port/...` as the `/ip4/a.b.c.d/tcp/port/...` addresses the system resolver gives for `host`
/// (`/dns6`: IPv6 only, `/dns`: both); empty when it does not resolve or is not a name.
pub fn resolve(addr: &Multiaddr) -> Vec<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    use std::net::{IpAddr, ToSocketAddrs};
    let mut parts = addr.iter();
    let (host, v4, v6) = match parts.next() {
        Some(Protocol::Dns(h)) => (h, true, true),
        Some(Protocol::Dns4(h)) => (h, true, false),
        Some(Protocol::Dns6(h)) => (h, false, true),
        _ => return Vec::new(),
    };
    let rest: Vec<Protocol<'_>> = parts.collect();
    let port = rest.iter().find_map(|p| match p {
        Protocol::Tcp(p) | Protocol::Udp(p) => Some(*p),
        _ => None,
    });
    let Ok(found) = (host.as_ref(), port.unwrap_or(0)).to_socket_addrs() else { return Vec::new() };
    let mut out: Vec<Multiaddr> = Vec::new();
    for ip in found.map(|s| s.ip()) {
        let first = match ip {
            IpAddr::V4(ip) if v4 => Protocol::Ip4(ip),
            IpAddr::V6(ip) if v6 => Protocol::Ip6(ip),
            _ => continue,
        };
        let resolved: Multiaddr = std::iter::once(first).chain(rest.iter().cloned()).collect();
        if !out.contains(&resolved) {
            out.push(resolved);
        }
    }
    out
}

/// Learn peer addresses from identify and mDNS events (into Kademlia; mDNS finds are dialled). Returns whether the
/// event was one of those, so swarm loops can hand every event here first.
pub fn learn_addresses(swarm: &mut Swarm<Behaviour>, event: &libp2p::swarm::SwarmEvent<BehaviourEvent>) -> bool {
    use libp2p::swarm::SwarmEvent;
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
            // IP addresses only: a name a peer announces could point at an address we banned (names are dialled
            // only from our own bootstrap list).
            for addr in info.listen_addrs.iter().filter(|a| ipban::ip_of(a).is_some()) {
                swarm.behaviour_mut().kad.add_address(peer_id, addr.clone());
            }
            true
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
            for (peer, addr) in found.iter().filter(|(_, a)| ipban::ip_of(a).is_some()) {
                swarm.behaviour_mut().kad.add_address(peer, addr.clone());
                let _ = swarm.dial(addr.clone());
            }
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_names_resolve_to_addresses_and_keep_the_rest() {
        let id = libp2p::PeerId::random();
        let named: Multiaddr = format!("/dns4/localhost/tcp/4001/p2p/{id}").parse().unwrap();
        let found = resolve(&named);
        let want: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{id}").parse().unwrap();
        assert!(found.contains(&want), "{found:?}");
        assert!(found.iter().all(|a| ipban::ip_of(a).is_some_and(|ip| ip.is_ipv4())), "dns4 gives IPv4 only");
        // Addresses are not names; a name that does not resolve gives nothing.
        assert!(resolve(&"/ip4/10.0.0.1/tcp/1".parse().unwrap()).is_empty());
        assert!(resolve(&"/dns4/no-such-host.invalid/tcp/1".parse().unwrap()).is_empty());
    }
}

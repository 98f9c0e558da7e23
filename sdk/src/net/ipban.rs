//! Bans by IP address: a peer banned for misbehaving could come back at once with a fresh key (a new PeerId), so
//! the node also refuses every connection from the address it misbehaved from, before the handshake.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
    dummy,
};

/// Most addresses kept banned (oldest forgotten first); bounds the memory an attacker with many addresses can use.
pub const MAX_BANNED_IPS: usize = 65_536;

/// Refuses connections from and to banned IP addresses.
#[derive(Debug, Default)]
pub struct IpBan {
    banned: HashSet<IpAddr>,
    order: std::collections::VecDeque<IpAddr>,
}

/// The IP address of a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl IpBan {
    /// Ban `ip` (loopback is never banned: tests and local operators share it).
    pub fn ban(&mut self, ip: IpAddr) {
        if ip.is_loopback() || !self.banned.insert(ip) {
            return;
        }
        self.order.push_back(ip);
        while self.order.len() > MAX_BANNED_IPS {
            if let Some(old) = self.order.pop_front() {
                self.banned.remove(&old);
            }
        }
    }

    /// Whether `ip` is banned.
    pub fn is_banned(&self, ip: &IpAddr) -> bool {
        self.banned.contains(ip)
    }

    fn check(&self, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        match ip_of(addr) {
            Some(ip) if self.banned.contains(&ip) => {
                Err(ConnectionDenied::new(std::io::Error::other(format!("{ip} is banned"))))
            }
            _ => Ok(()),
        }
    }
}

impl NetworkBehaviour for IpBan {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.check(remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(remote)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(addr)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_by_address_never_loopback_and_stays_bounded() {
        let mut b = IpBan::default();
        let bad: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().unwrap();
        assert!(b.check(&bad).is_ok());
        b.ban(ip_of(&bad).unwrap());
        assert!(b.check(&bad).is_err());
        assert!(b.check(&"/ip4/203.0.113.7/udp/9/quic-v1".parse().unwrap()).is_err(), "any port or transport");
        b.ban("127.0.0.1".parse().unwrap());
        assert!(b.check(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()).is_ok(), "loopback is never banned");
        for i in 0..(MAX_BANNED_IPS as u32 + 10) {
            b.ban(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert_eq!(b.banned.len(), MAX_BANNED_IPS);
        assert!(!b.is_banned(&ip_of(&bad).unwrap()), "the oldest ban was forgotten first");
    }
}

//! Counts open connections and TLS handshakes, in all and per peer, and refuses those over
//! the caps. A peer is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64,
//! so counting single IPv6 addresses would cap nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use super::ConnectionLimits;

/// Why a connection or handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// [`ConnectionLimits::max_connections`] connections are open.
    #[error("the coordinator holds its most connections ({0})")]
    Total(usize),
    /// The peer holds [`ConnectionLimits::max_per_peer`] connections.
    #[error("this peer holds its most connections ({0})")]
    Peer(usize),
    /// The peer has [`ConnectionLimits::max_handshakes_per_peer`] handshakes in flight.
    #[error("this peer has its most TLS handshakes in flight ({0})")]
    Handshakes(usize),
}

impl Refused {
    /// Short reason, for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Total(_) => "max_connections",
            Refused::Peer(_) => "max_per_peer",
            Refused::Handshakes(_) => "max_handshakes_per_peer",
        }
    }
}

/// What one peer holds.
#[derive(Debug, Default, Clone, Copy)]
struct PeerCount {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    peers: HashMap<IpAddr, PeerCount>,
}

/// The listener's counts of connections and handshakes.
#[derive(Debug)]
pub struct Admission {
    limits: ConnectionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    /// Counts against `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The limits counted against.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Admits a new connection from `ip`, or says which cap it would pass. The connection
    /// counts until the ticket is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnTicket, Refused> {
        let peer = peer_key(ip);
        let mut counts = self.lock();
        if counts.total >= self.limits.max_connections {
            return Err(Refused::Total(self.limits.max_connections));
        }
        let count = counts.peers.entry(peer).or_default();
        if count.connections >= self.limits.max_per_peer {
            return Err(Refused::Peer(self.limits.max_per_peer));
        }
        count.connections += 1;
        counts.total += 1;
        Ok(ConnTicket {
            admission: Arc::clone(self),
            peer,
            handshaking: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent across a panic (each update is one step).
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, peer: IpAddr, handshaking: bool) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.peers.get_mut(&peer) {
            count.connections = count.connections.saturating_sub(1);
            if handshaking {
                count.handshakes = count.handshakes.saturating_sub(1);
            }
            if count.connections == 0 {
                counts.peers.remove(&peer);
            }
        }
    }
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnTicket {
    admission: Arc<Admission>,
    peer: IpAddr,
    handshaking: bool,
}

impl ConnTicket {
    /// Counts this connection's TLS handshake against its peer's cap, until
    /// [`ConnTicket::handshake_done`] or the ticket is dropped.
    pub fn start_handshake(&mut self) -> Result<(), Refused> {
        let max = self.admission.limits.max_handshakes_per_peer;
        let mut counts = self.admission.lock();
        let count = counts.peers.entry(self.peer).or_default();
        if count.handshakes >= max {
            return Err(Refused::Handshakes(max));
        }
        count.handshakes += 1;
        self.handshaking = true;
        Ok(())
    }

    /// The handshake finished (either way): it no longer counts.
    pub fn handshake_done(&mut self) {
        if !std::mem::take(&mut self.handshaking) {
            return;
        }
        let mut counts = self.admission.lock();
        if let Some(count) = counts.peers.get_mut(&self.peer) {
            count.handshakes = count.handshakes.saturating_sub(1);
        }
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        self.admission.release(self.peer, self.handshaking);
    }
}

/// The peer an address counts as: IPv4 addresses (also IPv4-mapped IPv6) as they are, IPv6
/// addresses by their /64.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_peer: usize, handshakes: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: total,
            max_per_peer: per_peer,
            max_handshakes_per_peer: handshakes,
            ..ConnectionLimits::DEFAULT
        }
    }

    #[test]
    fn per_peer_and_total_caps_refuse_and_free_on_drop() {
        let admission = Admission::new(limits(3, 2, 1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::Peer(2));
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Total(3));
        assert_eq!(admission.open(), 3);
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a).is_ok());
    }

    #[test]
    fn handshakes_are_capped_per_peer_until_done() {
        let admission = Admission::new(limits(10, 10, 1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut first = admission.admit(a).unwrap();
        let mut second = admission.admit(a).unwrap();
        first.start_handshake().unwrap();
        assert_eq!(
            second.start_handshake().unwrap_err(),
            Refused::Handshakes(1)
        );
        first.handshake_done();
        second.start_handshake().unwrap();
        drop(second);
        let mut third = admission.admit(a).unwrap();
        third.start_handshake().unwrap();
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(limits(10, 1, 1));
        let _one = admission.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            admission
                .admit("2001:db8:1:2::ffff".parse().unwrap())
                .unwrap_err(),
            Refused::Peer(1)
        );
        assert!(admission.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = admission.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            admission
                .admit("::ffff:192.0.2.7".parse().unwrap())
                .is_err()
        );
    }
}

//! What the gRPC listener lets a client hold: connections in all and per peer, TLS
//! handshakes in flight per peer, and how long a connection may stay without a call.
//!
//! - [`admission`] counts connections and handshakes per peer and refuses those over the
//!   caps at accept time, before a byte is read.
//! - [`idle`] counts each connection's open calls (a tower layer in front of the services)
//!   and closes a connection that has had none for its idle timeout — or, when it never
//!   opened one (a silent client, a request whose headers never finish), for the shorter
//!   first-call timeout.
//! - [`failures`] logs refused connections and failed handshakes at most once per interval,
//!   with the count of those it held back.
//!
//! docs/security.md describes the limits and their defaults.

pub mod admission;
pub mod failures;
pub mod idle;

use std::time::Duration;

pub use admission::{Admission, ConnTicket, Refused};
pub use idle::{Activity, CallCountLayer, IdleClock};

/// Connection limits of the gRPC listener (`[connections]`-style settings in the config
/// file, and flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once, from everyone; further ones are closed on accept.
    pub max_connections: usize,
    /// Connections open at once from one peer (an IPv4 address, an IPv6 /64).
    pub max_per_peer: usize,
    /// TLS handshakes in flight from one peer.
    pub max_handshakes_per_peer: usize,
    /// How long a connection may stay open with no call in progress; `None` never closes
    /// idle connections.
    pub idle_timeout: Option<Duration>,
    /// How long a new connection may take to start its first call (send complete request
    /// headers) after its handshake.
    pub first_call_timeout: Duration,
}

impl ConnectionLimits {
    /// Defaults sized for a fleet of 10,000 agents, each with one connection, behind
    /// addresses of their own.
    pub const DEFAULT: ConnectionLimits = ConnectionLimits {
        max_connections: 16_384,
        max_per_peer: 512,
        max_handshakes_per_peer: 32,
        idle_timeout: Some(Duration::from_secs(120)),
        first_call_timeout: Duration::from_secs(10),
    };
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits::DEFAULT
    }
}

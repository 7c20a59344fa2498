//! Authentication and authorization of gRPC calls (docs/security.md).
//!
//! - [`role`]: the roles a token carries (operator, viewer, agent).
//! - [`token`]: token secrets — generation, hashing, the `authorization` header.
//! - [`policy`]: the one table mapping an RPC path to the access it needs.
//! - [`authenticator`]: who is calling — the token cache over the store, the open mode,
//!   mutual TLS for agents; why a call is refused.
//! - [`identity`]: which agent ids an agent's client certificate may act as (its subject
//!   alternative names and the operator's map); the agent service checks every id a call
//!   names against it.
//! - [`rate`]: per-caller token buckets (submissions).
//! - [`usage`]: tokens' `last_used`, written at most once a minute per token.
//! - [`layer`]: the tower layer in front of every service: request id and span, the
//!   decision, logging and auditing of refusals.
//!
//! When tokens are enforced: once any token was created, or whenever the listener is
//! reachable from the network without `--insecure`. Otherwise (loopback, or `--insecure`,
//! and no token ever created) every caller may do everything, as `anonymous`.

pub mod authenticator;
pub mod identity;
pub mod layer;
pub mod policy;
pub mod rate;
pub mod role;
pub mod token;
pub mod usage;

pub use authenticator::{AuthSettings, Authenticator, Caller, Refusal};
pub use layer::AuthLayer;
pub use role::Role;

//! Plumbing that the coordinator and the agent both need and that is not part of any contract
//! between them: each side links its own copy of this code instead of writing it twice.
//!
//! | module | job |
//! |---|---|
//! | `sqlite` (feature `sqlite`) | opening SQLite files, the errors of doing so, attaching context to statements |
//! | `migrations` (feature `sqlite`) | numbered `.sql` schema migrations tracked by `PRAGMA user_version` |
//! | [`lock`] | an exclusive lock file naming its holder, so two processes never share a store |
//! | [`signal`] | SIGINT/SIGTERM as a shutdown future |
//! | [`duration`] | human durations ("30s", "2m") in config files |
//! | [`error_chain`] | an error and its causes on one line |
//!
//! Architecture invariant: nothing here knows the wire format or the result documents; this
//! crate depends on no other evalctl crate.

pub mod duration;
pub mod lock;
#[cfg(feature = "sqlite")]
pub mod migrations;
pub mod signal;
#[cfg(feature = "sqlite")]
pub mod sqlite;

mod chain;

pub use chain::error_chain;

//! The evalctl wire protocol (package `evalctl.v1`): messages and tonic clients and
//! servers generated from `proto/evalctl/v1/*.proto` (`common`, `campaign`, `agent`, and
//! `admin` with the `TokenService`).
//!
//! Only the gRPC layers of the coordinator, agent and CLI use these types; their
//! cores work on domain types and convert at the edge.
//!
//! Beside the messages, the wire contract includes:
//! - [`template`]: the grammar and placeholder vocabulary of command templates, which the
//!   coordinator checks and the agent renders;
//! - [`client`]: how a client (an agent, the CLI) connects to the coordinator: TLS, mutual
//!   TLS and the bearer token sent with every call.

pub mod client;
pub mod template;

/// Generated code of package `evalctl.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("evalctl.v1");

    /// Encoded file descriptor set, for the gRPC reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("evalctl_descriptor");
}

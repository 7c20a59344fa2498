//! The agent service's identity checks under mutual TLS: every agent id a call names, and
//! the agent of every lease it names, must be one the connection's client certificate may
//! act as ([`crate::auth::identity`]). A refusal is `PERMISSION_DENIED`, logged and
//! audited like the authorization layer's.

use std::collections::HashSet;

use tonic::{Request, Status};
use tracing::warn;

use super::status::{chain, store_error};
use crate::auth::identity::{self, AgentIdentity};
use crate::auth::layer::{caller_name, request_id_of};
use crate::domain::{AgentId, LeaseId};
use crate::store::Store;
use crate::tls::PeerInfo;

/// Who makes one agent call, taken from the request before its message is consumed.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    identity: Option<AgentIdentity>,
    caller: String,
    request_id: String,
    peer: Option<String>,
    method: &'static str,
    /// Leases already found to be this certificate's (a result stream names the same
    /// lease batch after batch).
    allowed_leases: HashSet<LeaseId>,
}

impl Binding {
    /// The binding of `request`, a call of `AgentService/method`.
    pub(crate) fn of<T>(request: &Request<T>, method: &'static str) -> Binding {
        Binding {
            identity: identity::of(request),
            caller: caller_name(request),
            request_id: request_id_of(request),
            peer: request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.remote_addr)
                .map(|a| a.to_string()),
            method,
            allowed_leases: HashSet::new(),
        }
    }

    /// Refuses the call unless its certificate may act as `agent` (always allowed without
    /// mutual TLS).
    pub(crate) fn check_agent(&self, store: &Store, agent: &AgentId) -> Result<(), Status> {
        match &self.identity {
            Some(identity) if !identity.allows(agent.as_str()) => {
                Err(self.refuse(store, identity, agent, None))
            }
            _ => Ok(()),
        }
    }

    /// Refuses the call unless its certificate may act as the agent `lease` was granted to.
    /// A lease the store does not know passes: the store's own answer follows.
    pub(crate) async fn check_lease(
        &mut self,
        store: &Store,
        lease: &LeaseId,
    ) -> Result<(), Status> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        if self.allowed_leases.contains(lease) {
            return Ok(());
        }
        let Some(holder) = store.lease_holder(lease).await.map_err(store_error)? else {
            return Ok(());
        };
        if !identity.allows(holder.as_str()) {
            return Err(self.refuse(store, identity, &holder, Some(lease)));
        }
        self.allowed_leases.insert(lease.clone());
        Ok(())
    }

    fn refuse(
        &self,
        store: &Store,
        identity: &AgentIdentity,
        agent: &AgentId,
        lease: Option<&LeaseId>,
    ) -> Status {
        let names = identity.describe_names();
        warn!(
            method = self.method,
            peer = ?self.peer,
            actor = %self.caller,
            agent = %agent,
            lease = ?lease.map(LeaseId::as_str),
            certificate_names = %names,
            refusal = "agent_identity",
            "call refused"
        );
        let detail = serde_json::json!({
            "request_id": self.request_id,
            "reason": "agent_identity",
            "code": "PermissionDenied",
            "peer": self.peer,
            "agent_id": agent.as_str(),
            "lease_id": lease.map(LeaseId::as_str),
            "certificate_names": names,
        });
        let target = format!("rpc/evalctl.v1.AgentService/{}", self.method);
        let (store, actor) = (store.clone(), self.caller.clone());
        // The answer does not wait for the audit write.
        tokio::spawn(async move {
            if let Err(err) = store.record_audit(&actor, "refused", &target, detail).await {
                warn!(error = %chain(&err), "failed to audit a refused call");
            }
        });
        let status = identity.refusal(agent.as_str(), lease.map(LeaseId::as_str));
        Status::permission_denied(format!(
            "{} (request id {})",
            status.message(),
            self.request_id
        ))
    }
}

//! Which role each RPC needs: one table, keyed by the gRPC path
//! (`/evalctl.v1.CampaignService/Submit`). The authorization layer consults nothing else.

use super::Role;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, no token: the standard health service (load balancers, probes).
    Public,
    /// Operator or viewer.
    Read,
    /// Operator.
    Operate,
    /// Agent (and, with mutual TLS, a verified client certificate).
    Agent,
}

impl Access {
    /// Whether a caller with `role` may make the call.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public => true,
            Access::Read => matches!(role, Role::Operator | Role::Viewer),
            Access::Operate => role == Role::Operator,
            Access::Agent => role == Role::Agent,
        }
    }

    /// The roles that may make the call, for messages ("needs operator or viewer").
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "no token",
            Access::Read => "the operator or viewer role",
            Access::Operate => "the operator role",
            Access::Agent => "the agent role",
        }
    }
}

/// Read-only `CampaignService` methods; every other method of it needs an operator.
const CAMPAIGN_READS: &[&str] = &[
    "ListCampaigns",
    "GetCampaign",
    "Watch",
    "ListUnits",
    "Results",
    "ListAgents",
    "Export",
    "Report",
    "Compare",
    "Recommend",
];

/// Read-only `ScheduleService` methods; changing or firing a schedule needs an operator.
const SCHEDULE_READS: &[&str] = &["ListSchedules", "GetSchedule"];

/// The access an RPC path needs. Unknown services need an operator: a method added
/// without a decision here is never open by accident.
pub fn access(path: &str) -> Access {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health" => Access::Public,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Access::Read
        }
        "evalctl.v1.AgentService" => Access::Agent,
        "evalctl.v1.CampaignService" if CAMPAIGN_READS.contains(&method) => Access::Read,
        "evalctl.v1.ScheduleService" if SCHEDULE_READS.contains(&method) => Access::Read,
        "evalctl.v1.CampaignService" | "evalctl.v1.TokenService" => Access::Operate,
        _ => Access::Operate,
    }
}

/// The short method name of a path, for logs and metrics (`Submit`); the whole path when it
/// has no method part.
pub fn method_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_of_docs_security_md() {
        let cases = [
            ("/evalctl.v1.CampaignService/Submit", Access::Operate),
            ("/evalctl.v1.CampaignService/Cancel", Access::Operate),
            ("/evalctl.v1.CampaignService/Retry", Access::Operate),
            ("/evalctl.v1.CampaignService/Drain", Access::Operate),
            ("/evalctl.v1.CampaignService/ListCampaigns", Access::Read),
            ("/evalctl.v1.CampaignService/Watch", Access::Read),
            ("/evalctl.v1.CampaignService/Results", Access::Read),
            ("/evalctl.v1.AgentService/Heartbeat", Access::Agent),
            ("/evalctl.v1.TokenService/ListTokens", Access::Operate),
            ("/evalctl.v1.ScheduleService/ListSchedules", Access::Read),
            ("/evalctl.v1.ScheduleService/AddSchedule", Access::Operate),
            ("/evalctl.v1.ScheduleService/RunSchedule", Access::Operate),
            ("/grpc.health.v1.Health/Check", Access::Public),
            ("/evalctl.v1.Unknown/Thing", Access::Operate),
            ("", Access::Operate),
        ];
        for (path, want) in cases {
            assert_eq!(access(path), want, "{path}");
        }
        assert!(Access::Read.allows(Role::Viewer));
        assert!(!Access::Operate.allows(Role::Viewer));
        assert!(!Access::Read.allows(Role::Agent));
        assert!(!Access::Agent.allows(Role::Operator));
    }

    /// Every RPC of the protocol has a deliberate entry: a new read-only `CampaignService`
    /// method must be added to `CAMPAIGN_READS` (or it stays operator-only).
    #[test]
    fn every_rpc_in_the_descriptor_set_is_classified() {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(evalctl_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let got = access(&path);
                    match service.name() {
                        "AgentService" => assert_eq!(got, Access::Agent, "{path}"),
                        "TokenService" => assert_eq!(got, Access::Operate, "{path}"),
                        "CampaignService" | "ScheduleService" => {
                            assert_ne!(got, Access::Public, "{path}")
                        }
                        other => panic!("service {other} has no policy"),
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 20, "only {seen} methods found");
    }
}

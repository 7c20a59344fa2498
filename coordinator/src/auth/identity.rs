//! Which agent ids an agent's client certificate may act as (mutual TLS).
//!
//! With `--tls-client-ca`, every `AgentService` call that names an agent (`Register`,
//! `AcquireLease`, `Heartbeat`) or a lease (`ReportResults`, `Complete`, `Fail`, `Release`:
//! the lease's agent) must name one the connection's certificate allows:
//!
//! - an agent id equal to one of its DNS or URI subject alternative names (never the
//!   subject's common name), or
//! - one the operator's [`AgentCertMap`] allows for one of those names: a certificate name
//!   and the agent id patterns it may use, where `*` stands for any run of characters
//!   (`gpu-pool.lab` → `gpu-*`).
//!
//! Anything else is refused with `PERMISSION_DENIED` naming the certificate's names and the
//! agent id. Without mutual TLS there is no certificate and nothing to bind.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tonic::Status;

use super::Caller;
use crate::tls::CertName;

/// An agent id pattern: literal text in which `*` matches any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPattern(String);

impl AgentPattern {
    /// Whether `agent` matches the whole pattern.
    pub fn matches(&self, agent: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = agent.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the pattern is the whole id.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

impl fmt::Display for AgentPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A map entry that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertMapError {
    /// A flag value without `=`.
    #[error(
        "invalid --agent-cert-map value `{0}`: expected NAME=PATTERN[,PATTERN...] (hint: \
         --agent-cert-map 'gpu-pool.lab=gpu-*')"
    )]
    Shape(String),
    /// An empty certificate name, or one with spaces or control characters.
    #[error(
        "invalid certificate name `{0}` in the agent certificate map: expected a DNS or URI \
         subject alternative name without spaces"
    )]
    Name(String),
    /// An empty agent id pattern, or one with control characters.
    #[error(
        "invalid agent id pattern `{pattern}` for certificate name `{name}`: expected an agent \
         id, `*` standing for any run of characters (e.g. `gpu-*`)"
    )]
    Pattern {
        /// The certificate name.
        name: String,
        /// The pattern.
        pattern: String,
    },
}

/// The operator's map: certificate names and the agent id patterns each may use, beside
/// the name itself (config file `[agent_cert_map]`, flag `--agent-cert-map`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCertMap {
    by_name: BTreeMap<String, Vec<AgentPattern>>,
}

impl AgentCertMap {
    /// A map from certificate names to pattern texts, checked.
    pub fn new(entries: BTreeMap<String, Vec<String>>) -> Result<AgentCertMap, CertMapError> {
        let mut map = AgentCertMap::default();
        for (name, patterns) in entries {
            map.add(name, patterns)?;
        }
        Ok(map)
    }

    /// A map from flag values `NAME=PATTERN[,PATTERN...]`; a name given twice gets the
    /// patterns of both.
    pub fn from_flags(values: &[String]) -> Result<AgentCertMap, CertMapError> {
        let mut map = AgentCertMap::default();
        for value in values {
            let (name, patterns) = value
                .split_once('=')
                .ok_or_else(|| CertMapError::Shape(value.clone()))?;
            map.add(
                name.trim().to_owned(),
                patterns.split(',').map(|p| p.trim().to_owned()).collect(),
            )?;
        }
        Ok(map)
    }

    fn add(&mut self, name: String, patterns: Vec<String>) -> Result<(), CertMapError> {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CertMapError::Name(name));
        }
        let mut checked = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            if pattern.is_empty() || pattern.chars().any(char::is_control) {
                return Err(CertMapError::Pattern { name, pattern });
            }
            checked.push(AgentPattern(pattern));
        }
        if checked.is_empty() {
            return Err(CertMapError::Pattern {
                name,
                pattern: String::new(),
            });
        }
        self.by_name.entry(name).or_default().extend(checked);
        Ok(())
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The patterns the certificate name `name` may use.
    fn patterns(&self, name: &str) -> &[AgentPattern] {
        self.by_name.get(name).map_or(&[], Vec::as_slice)
    }
}

/// What one mutual-TLS connection may act as: its certificate's names and the operator's
/// map. The authorization layer attaches it to the [`Caller`] of every agent call when
/// mutual TLS is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    names: Arc<[CertName]>,
    map: Arc<AgentCertMap>,
}

impl AgentIdentity {
    /// The identity of a certificate with these names under this map.
    pub fn new(names: Arc<[CertName]>, map: Arc<AgentCertMap>) -> AgentIdentity {
        AgentIdentity { names, map }
    }

    /// Whether the certificate may act as `agent`.
    pub fn allows(&self, agent: &str) -> bool {
        self.names.iter().any(|name| {
            name.value() == agent
                || self
                    .map
                    .patterns(name.value())
                    .iter()
                    .any(|p| p.matches(agent))
        })
    }

    /// The certificate's names as messages and audit entries show them
    /// (`DNS:gpu-node-07, URI:spiffe://lab/a`), or `none`.
    pub fn describe_names(&self) -> String {
        if self.names.is_empty() {
            return "none".to_owned();
        }
        self.names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `PERMISSION_DENIED` answer to a call as `agent` that this certificate does not
    /// allow; `lease` when the call named the agent through one of its leases.
    pub fn refusal(&self, agent: &str, lease: Option<&str>) -> Status {
        let through = lease.map_or_else(String::new, |lease| {
            format!(" (the holder of lease `{lease}`)")
        });
        let hint = if self.names.is_empty() {
            format!(
                "the certificate has no DNS or URI subject alternative name (its common name \
                 does not count): issue one naming the agent, e.g. `evalctl-coordinator \
                 gen-certs --agents {agent}`"
            )
        } else {
            format!(
                "run the agent with --agent-id set to one of the certificate's names, or map \
                 a name to it on the coordinator: --agent-cert-map '{}={agent}'",
                self.names[0].value()
            )
        };
        Status::permission_denied(format!(
            "client certificate (names: {}) may not act as agent id `{agent}`{through} (hint: \
             {hint})",
            self.describe_names()
        ))
    }
}

/// The identity of a request's connection, when mutual TLS binds it; `None` without mutual
/// TLS (no certificate, nothing to bind).
pub fn of<T>(request: &tonic::Request<T>) -> Option<AgentIdentity> {
    request
        .extensions()
        .get::<Caller>()
        .and_then(|caller| caller.agent_identity.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(text: &str) -> AgentPattern {
        AgentPattern(text.to_owned())
    }

    #[test]
    fn patterns_match_whole_ids_with_stars_for_any_run() {
        let cases = [
            ("gpu-*", "gpu-node-07", true),
            ("gpu-*", "gpu-", true),
            ("gpu-*", "cpu-node", false),
            ("gpu-*", "xgpu-node", false),
            ("*-07", "gpu-node-07", true),
            ("*-07", "gpu-node-070", false),
            ("gpu-*-07", "gpu-node-07", true),
            ("gpu-*-07", "gpu-07", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("*", "anything", true),
            ("node1", "node1", true),
            ("node1", "node10", false),
            ("ab*ba", "aba", false),
        ];
        for (p, agent, want) in cases {
            assert_eq!(pattern(p).matches(agent), want, "{p} vs {agent}");
        }
    }

    proptest! {
        /// A pattern without `*` matches exactly itself; with a `*` in place of any part
        /// of an id, it matches that id.
        #[test]
        fn a_starred_id_matches_the_id(id in "[a-z0-9.-]{0,12}", start in 0usize..13, len in 0usize..13) {
            prop_assert!(pattern(&id).matches(&id));
            let start = start.min(id.len());
            let end = (start + len).min(id.len());
            let starred = format!("{}*{}", &id[..start], &id[end..]);
            prop_assert!(pattern(&starred).matches(&id), "{starred} vs {id}");
        }
    }

    fn identity(names: &[CertName], map: AgentCertMap) -> AgentIdentity {
        AgentIdentity::new(names.to_vec().into(), Arc::new(map))
    }

    #[test]
    fn a_name_allows_itself_and_what_the_map_gives_it() {
        let map = AgentCertMap::from_flags(&[
            "gpu-pool.lab=gpu-*,spare".to_owned(),
            "spiffe://lab/rack1=rack1-*".to_owned(),
        ])
        .unwrap();
        let pool = identity(&[CertName::Dns("gpu-pool.lab".into())], map.clone());
        assert!(pool.allows("gpu-pool.lab"));
        assert!(pool.allows("gpu-node-07"));
        assert!(pool.allows("spare"));
        assert!(!pool.allows("cpu-node-01"));
        let rack = identity(
            &[
                CertName::Dns("node1".into()),
                CertName::Uri("spiffe://lab/rack1".into()),
            ],
            map.clone(),
        );
        assert!(rack.allows("node1"));
        assert!(rack.allows("rack1-node9"));
        assert!(!rack.allows("gpu-node-07"));
        let none = identity(&[], map);
        assert!(!none.allows("gpu-node-07"));
        assert!(!none.allows(""));
    }

    #[test]
    fn refusals_name_the_certificate_and_the_agent_id() {
        let node1 = identity(&[CertName::Dns("node1".into())], AgentCertMap::default());
        let status = node1.refusal("node2", None);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let message = status.message();
        assert!(
            message.contains("DNS:node1") && message.contains("`node2`"),
            "{message}"
        );
        assert!(
            message.contains("--agent-cert-map 'node1=node2'"),
            "{message}"
        );
        let bare = identity(&[], AgentCertMap::default()).refusal("node2", Some("l-1"));
        assert!(
            bare.message().contains("names: none")
                && bare.message().contains("lease `l-1`")
                && bare.message().contains("gen-certs"),
            "{}",
            bare.message()
        );
    }

    #[test]
    fn bad_map_entries_are_refused_naming_them() {
        let err = AgentCertMap::from_flags(&["gpu-*".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("NAME=PATTERN"), "{err}");
        let err = AgentCertMap::from_flags(&["=gpu-*".to_owned()]).unwrap_err();
        assert!(matches!(err, CertMapError::Name(_)), "{err}");
        let err = AgentCertMap::from_flags(&["pool=gpu-*,".to_owned()]).unwrap_err();
        assert!(
            matches!(&err, CertMapError::Pattern { name, .. } if name == "pool"),
            "{err}"
        );
        let err = AgentCertMap::new(BTreeMap::from([("pool".to_owned(), vec![])])).unwrap_err();
        assert!(err.to_string().contains("`pool`"), "{err}");
        let err =
            AgentCertMap::new(BTreeMap::from([("a b".to_owned(), vec!["x".into()])])).unwrap_err();
        assert!(err.to_string().contains("`a b`"), "{err}");
    }
}

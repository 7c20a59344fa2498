//! Coordinator configuration: one optional TOML file, overridden by environment
//! variables and flags (flags > env > file > defaults). `deploy/coordinator.toml`
//! is the documented default file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::identity::{AgentCertMap, CertMapError};
use crate::auth::rate::Rate;
use crate::connections::ConnectionLimits;
use crate::tls::TlsFiles;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7717";

/// Submissions per token by default: a burst of 20, then 60 a minute.
pub const DEFAULT_SUBMIT_RATE: Rate = Rate {
    per_minute: 60,
    burst: 20,
};

/// Shortest lease TTL accepted (tests use sub-second TTLs; production wants tens of
/// seconds).
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Settings as read from the TOML file; every field optional so flags and env can fill in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address.
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database.
    pub data_dir: Option<PathBuf>,
    /// Explicit database file (default `<data_dir>/coordinator.sqlite`).
    pub database: Option<PathBuf>,
    /// Lease time to live, e.g. "30s".
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub lease_ttl: Option<Duration>,
    /// Allow plain text on a non-loopback address.
    pub insecure: Option<bool>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain of the gRPC listener (with `tls_key`, turns TLS on).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA that signs agents' client certificates: agent calls then need one (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: client certificate names (DNS or URI subject alternative
    /// names) and the agent id patterns each may act as besides the name itself, e.g.
    /// `"gpu-pool.lab" = ["gpu-*"]`.
    pub agent_cert_map: Option<BTreeMap<String, Vec<String>>>,
    /// Address of the Prometheus endpoint (`GET /metrics`); off when unset.
    pub metrics_addr: Option<SocketAddr>,
    /// Notification sinks and thresholds (docs/notifications.md).
    pub notify: Option<crate::notify::NotifyFile>,
    /// Submissions per minute per token once the burst is spent; 0 = no limit.
    pub submit_rate_per_minute: Option<u32>,
    /// Submissions per token allowed at once.
    pub submit_burst: Option<u32>,
    /// How long shutdown waits for in-flight calls, e.g. "10s".
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub shutdown_grace: Option<Duration>,
    /// gRPC connections open at once, from everyone.
    pub max_connections: Option<usize>,
    /// gRPC connections open at once from one peer (IPv4 address, IPv6 /64).
    pub max_connections_per_peer: Option<usize>,
    /// TLS handshakes in flight from one peer.
    pub max_handshakes_per_peer: Option<usize>,
    /// How long a connection may stay without a call, e.g. "120s"; "0s" keeps idle
    /// connections open.
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub idle_timeout: Option<Duration>,
    /// How long a new connection may take to start its first call, e.g. "10s".
    #[serde(default, with = "evalctl_common::duration::optional")]
    pub first_call_timeout: Option<Duration>,
}

/// The coordinator's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// SQLite database file.
    pub database: PathBuf,
    /// Lease time to live; heartbeats come every third of it.
    pub lease_ttl: Duration,
    /// Allow plain text on a non-loopback address.
    pub insecure: bool,
    /// How long shutdown waits for in-flight calls before it gives up on them.
    pub shutdown_grace: Duration,
    /// TLS files; `None` serves plain text.
    pub tls: Option<TlsFiles>,
    /// Address of the Prometheus endpoint; `None` turns it off.
    pub metrics_addr: Option<SocketAddr>,
    /// Submissions per token (applied while tokens are enforced).
    pub submit_rate: Rate,
    /// Caps on connections and how long idle ones stay.
    pub connections: ConnectionLimits,
    /// Under mutual TLS: the agent ids client certificate names may act as, besides the
    /// name itself (docs/security.md).
    pub agent_cert_map: AgentCertMap,
    /// Notification sinks and thresholds.
    pub notify: crate::notify::NotifyConfig,
}

impl Config {
    /// Defaults for a coordinator whose data lives under `data_dir`.
    pub fn with_data_dir(data_dir: &Path) -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            database: data_dir.join("coordinator.sqlite"),
            lease_ttl: Duration::from_secs(30),
            insecure: false,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            metrics_addr: None,
            submit_rate: DEFAULT_SUBMIT_RATE,
            connections: ConnectionLimits::DEFAULT,
            agent_cert_map: AgentCertMap::default(),
            notify: crate::notify::NotifyConfig::default(),
        }
    }

    /// Whether a caller without a token may do everything as long as no token was ever
    /// created: on loopback, or with `insecure`.
    pub fn open_without_tokens(&self) -> bool {
        self.listen.ip().is_loopback() || self.insecure
    }

    /// Heartbeat interval agents must keep: a third of the TTL, so two heartbeats
    /// may be lost before a lease expires.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// Refuses a lease TTL under [`MIN_LEASE_TTL`]: agents heartbeat every third of it.
    pub fn check_lease_ttl(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < MIN_LEASE_TTL {
            Err(ConfigError::LeaseTtlTooShort(self.lease_ttl))
        } else {
            Ok(())
        }
    }

    /// Refuses connection caps of zero (nothing could connect) and a first-call timeout of
    /// zero (nothing could start a call).
    pub fn check_connections(&self) -> Result<(), ConfigError> {
        let limits = &self.connections;
        let zero = [
            ("max_connections", limits.max_connections),
            ("max_connections_per_peer", limits.max_per_peer),
            ("max_handshakes_per_peer", limits.max_handshakes_per_peer),
        ]
        .into_iter()
        .find(|(_, n)| *n == 0);
        if let Some((setting, _)) = zero {
            return Err(ConfigError::ZeroLimit(setting));
        }
        if limits.first_call_timeout.is_zero() {
            return Err(ConfigError::ZeroLimit("first_call_timeout"));
        }
        Ok(())
    }

    /// Refuses plain text on a non-loopback address unless `insecure` is set.
    pub fn check_transport(&self) -> Result<(), ConfigError> {
        if self.tls.is_some() || self.listen.ip().is_loopback() || self.insecure {
            Ok(())
        } else {
            Err(ConfigError::PlainTextOffLoopback(self.listen))
        }
    }

    /// Refuses an agent certificate map without mutual TLS, where no certificate is
    /// presented to map.
    pub fn check_agent_cert_map(&self) -> Result<(), ConfigError> {
        let mutual = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if self.agent_cert_map.is_empty() || mutual {
            Ok(())
        } else {
            Err(ConfigError::AgentCertMapWithoutMutualTls)
        }
    }

    /// Builds the TLS files from the three settings: certificate and key together, a
    /// client CA only with them.
    pub fn set_tls(
        &mut self,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        self.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None) if client_ca.is_none() => None,
            _ => return Err(ConfigError::TlsIncomplete),
        };
        Ok(())
    }
}

/// Errors in the configuration file or values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read config file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("invalid config file `{path}`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A `[notify]` section that cannot work.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyConfigError),
    /// A lease TTL too short for agents to keep up with.
    #[error(
        "lease TTL {0:?} is too short: agents heartbeat every third of it (hint: use at least 100ms; 30s is the default)"
    )]
    LeaseTtlTooShort(Duration),
    /// Plain text requested on a network-reachable address.
    #[error(
        "refusing to serve plain text on non-loopback address {0} (hint: listen on 127.0.0.1, or pass --insecure to accept unencrypted, unauthenticated traffic)"
    )]
    PlainTextOffLoopback(SocketAddr),
    /// Only part of the TLS settings is given.
    #[error(
        "TLS needs both a certificate and a key (hint: pass --tls-cert and --tls-key; --tls-client-ca only with them)"
    )]
    TlsIncomplete,
    /// A connection limit of zero.
    #[error(
        "`{0}` is 0: no client could connect (hint: give a positive number, or leave it out for the default)"
    )]
    ZeroLimit(&'static str),
    /// An agent certificate map entry that cannot be used.
    #[error("invalid agent certificate map")]
    AgentCertMap(#[source] CertMapError),
    /// An agent certificate map without a client CA.
    #[error(
        "an agent certificate map needs mutual TLS (hint: pass --tls-client-ca, or drop \
         --agent-cert-map / [agent_cert_map])"
    )]
    AgentCertMapWithoutMutualTls,
}

impl FileConfig {
    /// Reads and parses a TOML config file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml");
        let file = FileConfig::load(&path).expect("deploy/coordinator.toml parses");
        assert_eq!(file.lease_ttl, Some(Duration::from_secs(30)));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = toml::from_str::<FileConfig>("listn = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn plain_text_is_refused_off_loopback() {
        let mut config = Config::with_data_dir(Path::new("/tmp"));
        config.listen = "0.0.0.0:7717".parse().unwrap();
        assert!(config.check_transport().is_err());
        config.insecure = true;
        assert!(config.check_transport().is_ok());
        config.insecure = false;
        config.listen = "[::1]:7717".parse().unwrap();
        assert!(config.check_transport().is_ok());
        config.listen = "0.0.0.0:7717".parse().unwrap();
        config
            .set_tls(Some("c.pem".into()), Some("k.pem".into()), None)
            .unwrap();
        assert!(config.check_transport().is_ok(), "TLS is fine anywhere");
        assert!(!config.open_without_tokens());
    }

    #[test]
    fn tls_needs_certificate_and_key() {
        let mut config = Config::with_data_dir(Path::new("/tmp"));
        assert!(config.set_tls(Some("c.pem".into()), None, None).is_err());
        assert!(config.set_tls(None, None, Some("ca.pem".into())).is_err());
        assert!(config.set_tls(None, None, None).is_ok());
        assert!(config.tls.is_none());
    }

    #[test]
    fn an_agent_cert_map_is_read_from_the_file_and_needs_mutual_tls() {
        let file: FileConfig =
            toml::from_str("[agent_cert_map]\n\"gpu-pool.lab\" = [\"gpu-*\", \"spare\"]\n")
                .unwrap();
        let entries = file.agent_cert_map.unwrap();
        let mut config = Config::with_data_dir(Path::new("/tmp"));
        config.agent_cert_map = AgentCertMap::new(entries).unwrap();
        assert!(!config.agent_cert_map.is_empty());
        let err = config.check_agent_cert_map().unwrap_err();
        assert!(err.to_string().contains("--tls-client-ca"), "{err}");
        config
            .set_tls(
                Some("c.pem".into()),
                Some("k.pem".into()),
                Some("ca.pem".into()),
            )
            .unwrap();
        config.check_agent_cert_map().unwrap();
    }

    #[test]
    fn heartbeat_is_a_third_of_the_ttl() {
        let config = Config::with_data_dir(Path::new("/tmp"));
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(10));
    }
}

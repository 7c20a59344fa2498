//! Coordinator configuration: one optional TOML file, overridden by environment
//! variables and flags (flags > env > file > defaults). `deploy/coordinator.toml`
//! is the documented default file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7717";

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
    #[serde(default, with = "humantime_serde_opt")]
    pub lease_ttl: Option<Duration>,
    /// Allow plain text on a non-loopback address.
    pub insecure: Option<bool>,
    /// Log format.
    pub log_format: Option<LogFormat>,
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
        }
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

    /// Refuses plain text on a non-loopback address unless `insecure` is set.
    pub fn check_transport(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() || self.insecure {
            Ok(())
        } else {
            Err(ConfigError::PlainTextOffLoopback(self.listen))
        }
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

/// Serde adapter for optional humantime durations ("30s", "2m").
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
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
    }

    #[test]
    fn heartbeat_is_a_third_of_the_ttl() {
        let config = Config::with_data_dir(Path::new("/tmp"));
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(10));
    }
}

//! Command-line flags of `evalctl-coordinator` and how they merge with the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{Config, ConfigError, FileConfig, LogFormat};

/// evalctl coordinator: expands campaigns, leases units to agents, stores results.
#[derive(Debug, Clone, Parser)]
#[command(name = "evalctl-coordinator", version, about)]
pub struct Args {
    /// TOML config file (see deploy/coordinator.toml).
    #[arg(long, env = "EVALCTL_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "EVALCTL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: ~/.local/share/evalctl].
    #[arg(long, env = "EVALCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database file [default: <data-dir>/coordinator.sqlite].
    #[arg(long, env = "EVALCTL_DATABASE")]
    pub database: Option<PathBuf>,
    /// Lease time to live, e.g. "30s"; agents heartbeat every third of it.
    #[arg(long, env = "EVALCTL_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Serve plain text on a non-loopback address (no TLS, no authentication).
    #[arg(long, env = "EVALCTL_INSECURE")]
    pub insecure: bool,
    /// Log format.
    #[arg(long, env = "EVALCTL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

impl Args {
    /// Merges flags and env (already merged by clap) over the config file over defaults.
    pub fn resolve(&self) -> Result<(Config, LogFormat), ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let data_dir = self
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let mut config = Config::with_data_dir(&data_dir);
        if let Some(database) = self.database.clone().or(file.database) {
            config.database = database;
        }
        if let Some(listen) = self.listen.or(file.listen) {
            config.listen = listen;
        }
        if let Some(ttl) = self.lease_ttl.or(file.lease_ttl) {
            config.lease_ttl = ttl;
        }
        config.insecure = self.insecure || file.insecure.unwrap_or(false);
        let log_format = self.log_format.or(file.log_format).unwrap_or_default();
        Ok((config, log_format))
    }
}

/// `~/.local/share/evalctl`, or `./.evalctl` when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME").or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share").into_os_string())
    }) {
        Some(base) => PathBuf::from(base).join("evalctl"),
        None => PathBuf::from(".evalctl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nlease_ttl = \"45s\"\ndata_dir = \"/srv/evalctl\"\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "evalctl-coordinator",
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9100",
        ]);
        let (config, format) = args.resolve().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.lease_ttl, Duration::from_secs(45));
        assert_eq!(
            config.database,
            PathBuf::from("/srv/evalctl/coordinator.sqlite")
        );
        assert_eq!(format, LogFormat::Text);
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let args = Args::parse_from(["evalctl-coordinator", "--config", "/nonexistent/c.toml"]);
        let err = args.resolve().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.toml"), "{err}");
    }
}

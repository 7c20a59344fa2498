//! Command-line flags of `evalctl-coordinator` and how they merge with the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::Role;
use crate::auth::identity::AgentCertMap;
use crate::auth::rate::Rate;
use crate::config::{Config, ConfigError, FileConfig, LogFormat};

/// evalctl coordinator: expands campaigns, leases units to agents, stores results.
#[derive(Debug, Clone, Parser)]
#[command(name = "evalctl-coordinator", version, about)]
pub struct Args {
    /// Administration instead of serving (works on the database file directly).
    #[command(subcommand)]
    pub command: Option<AdminCommand>,
    /// TOML config file (see deploy/coordinator.toml).
    #[arg(long, global = true, env = "EVALCTL_COORDINATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "EVALCTL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the SQLite database [default: ~/.local/share/evalctl].
    #[arg(long, global = true, env = "EVALCTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database file [default: <data-dir>/coordinator.sqlite].
    #[arg(long, global = true, env = "EVALCTL_DATABASE")]
    pub database: Option<PathBuf>,
    /// Lease time to live, e.g. "30s"; agents heartbeat every third of it.
    #[arg(long, env = "EVALCTL_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Serve plain text on a non-loopback address (no TLS, no authentication).
    #[arg(long, env = "EVALCTL_INSECURE")]
    pub insecure: bool,
    /// Log format.
    #[arg(long, global = true, env = "EVALCTL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// PEM certificate chain for TLS (with --tls-key); re-read on SIGHUP.
    #[arg(long, env = "EVALCTL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS; re-read on SIGHUP.
    #[arg(long, env = "EVALCTL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA of agents' client certificates: agent calls then need one (mutual TLS).
    #[arg(long, env = "EVALCTL_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: let the client certificate name NAME (a DNS or URI subject
    /// alternative name) act as the agent ids matching PATTERN (`*`: any run of
    /// characters), besides NAME itself; repeatable, or `;`-separated. Replaces the config
    /// file's [agent_cert_map].
    #[arg(
        long,
        env = "EVALCTL_AGENT_CERT_MAP",
        value_name = "NAME=PATTERN[,PATTERN...]",
        value_delimiter = ';'
    )]
    pub agent_cert_map: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "EVALCTL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Submissions per minute per token after the burst; 0 = no limit [default: 60].
    #[arg(long, env = "EVALCTL_SUBMIT_RATE")]
    pub submit_rate: Option<u32>,
    /// Submissions per token allowed at once [default: 20].
    #[arg(long, env = "EVALCTL_SUBMIT_BURST")]
    pub submit_burst: Option<u32>,
    /// How long shutdown waits for in-flight calls, e.g. "10s".
    #[arg(long, env = "EVALCTL_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// gRPC connections open at once, from everyone [default: 16384].
    #[arg(long, env = "EVALCTL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// gRPC connections open at once from one peer (IPv4 address, IPv6 /64) [default: 512].
    #[arg(long, env = "EVALCTL_MAX_CONNECTIONS_PER_PEER")]
    pub max_connections_per_peer: Option<usize>,
    /// TLS handshakes in flight from one peer [default: 32].
    #[arg(long, env = "EVALCTL_MAX_HANDSHAKES_PER_PEER")]
    pub max_handshakes_per_peer: Option<usize>,
    /// Close a connection with no call for this long, e.g. "120s"; "0s" never does
    /// [default: 120s].
    #[arg(long, env = "EVALCTL_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close a new connection that has not started a call this long after its handshake
    /// [default: 10s].
    #[arg(long, env = "EVALCTL_FIRST_CALL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub first_call_timeout: Option<Duration>,
}

/// `evalctl-coordinator` subcommands: administration without a running server.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// Write a CA, a server certificate and agent client certificates (a lab without a PKI).
    GenCerts(GenCertsArgs),
    /// Create, list or revoke API tokens directly in the database (bootstrap).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `evalctl-coordinator gen-certs`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenCertsArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// DNS names and IP addresses of the coordinator, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub hosts: Vec<String>,
    /// Agent names to issue client certificates for, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub agents: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Replace files already in the output directory.
    #[arg(long)]
    pub force: bool,
}

/// `evalctl-coordinator token …`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (once).
    Create {
        /// Token name, unique among live tokens (e.g. `admin`, `ci`, `gpu-node-07`).
        name: String,
        /// Role: operator, viewer or agent.
        #[arg(long)]
        role: Role,
        /// Write the secret to this file (mode 0600) instead of stdout.
        #[arg(long)]
        secret_file: Option<PathBuf>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id or by the name of a live token.
    Revoke {
        /// Token id or name.
        token: String,
    },
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
        config.set_tls(
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
            self.tls_client_ca.clone().or(file.tls_client_ca),
        )?;
        config.agent_cert_map = if self.agent_cert_map.is_empty() {
            AgentCertMap::new(file.agent_cert_map.unwrap_or_default())
        } else {
            AgentCertMap::from_flags(&self.agent_cert_map)
        }
        .map_err(ConfigError::AgentCertMap)?;
        config.check_agent_cert_map()?;
        config.notify = file.notify.clone().unwrap_or_default().check()?;
        config.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        config.submit_rate = Rate {
            per_minute: self
                .submit_rate
                .or(file.submit_rate_per_minute)
                .unwrap_or(config.submit_rate.per_minute),
            burst: self
                .submit_burst
                .or(file.submit_burst)
                .unwrap_or(config.submit_rate.burst),
        };
        if let Some(grace) = self.shutdown_grace.or(file.shutdown_grace) {
            config.shutdown_grace = grace;
        }
        let limits = &mut config.connections;
        if let Some(n) = self.max_connections.or(file.max_connections) {
            limits.max_connections = n;
        }
        if let Some(n) = self
            .max_connections_per_peer
            .or(file.max_connections_per_peer)
        {
            limits.max_per_peer = n;
        }
        if let Some(n) = self
            .max_handshakes_per_peer
            .or(file.max_handshakes_per_peer)
        {
            limits.max_handshakes_per_peer = n;
        }
        if let Some(idle) = self.idle_timeout.or(file.idle_timeout) {
            limits.idle_timeout = (!idle.is_zero()).then_some(idle);
        }
        if let Some(first) = self.first_call_timeout.or(file.first_call_timeout) {
            limits.first_call_timeout = first;
        }
        config.check_connections()?;
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
    fn admin_subcommands_take_the_database_flags_after_them() {
        let args = Args::parse_from([
            "evalctl-coordinator",
            "token",
            "create",
            "admin",
            "--role",
            "operator",
            "--data-dir",
            "/srv/evalctl",
        ]);
        let (config, _) = args.resolve().unwrap();
        assert_eq!(
            config.database,
            PathBuf::from("/srv/evalctl/coordinator.sqlite")
        );
        assert!(matches!(
            args.command,
            Some(AdminCommand::Token(TokenCommand::Create {
                role: Role::Operator,
                ..
            }))
        ));
        assert!(
            Args::try_parse_from([
                "evalctl-coordinator",
                "token",
                "create",
                "x",
                "--role",
                "root"
            ])
            .is_err()
        );
    }

    #[test]
    fn agent_cert_map_flags_replace_the_file_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "tls_cert = \"s.pem\"\ntls_key = \"k.pem\"\ntls_client_ca = \"ca.pem\"\n\
             [agent_cert_map]\n\"pool.lab\" = [\"gpu-*\"]\n",
        )
        .unwrap();
        let from_file =
            Args::parse_from(["evalctl-coordinator", "--config", file.to_str().unwrap()]);
        let (config, _) = from_file.resolve().unwrap();
        let expected = AgentCertMap::from_flags(&["pool.lab=gpu-*".to_owned()]).unwrap();
        assert_eq!(config.agent_cert_map, expected);

        let flags = Args::parse_from([
            "evalctl-coordinator",
            "--config",
            file.to_str().unwrap(),
            "--agent-cert-map",
            "a.lab=a-*,spare;b.lab=b-*",
            "--agent-cert-map",
            "c.lab=c1",
        ]);
        let (config, _) = flags.resolve().unwrap();
        let expected = AgentCertMap::from_flags(&[
            "a.lab=a-*,spare".to_owned(),
            "b.lab=b-*".to_owned(),
            "c.lab=c1".to_owned(),
        ])
        .unwrap();
        assert_eq!(config.agent_cert_map, expected);

        let bad = Args::parse_from([
            "evalctl-coordinator",
            "--config",
            file.to_str().unwrap(),
            "--agent-cert-map",
            "gpu-*",
        ]);
        let err = evalctl_common::error_chain(&bad.resolve().unwrap_err());
        assert!(err.contains("NAME=PATTERN"), "{err}");
    }

    #[test]
    fn missing_config_file_names_the_path() {
        let args = Args::parse_from(["evalctl-coordinator", "--config", "/nonexistent/c.toml"]);
        let err = args.resolve().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.toml"), "{err}");
    }
}

//! `evalctl-coordinator gen-certs`: a CA, a server certificate and agent client
//! certificates for a lab without a PKI (rcgen, ECDSA P-256).
//!
//! Files written to the output directory (keys readable by their owner only):
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca-key.pem` | the lab CA; keep the key offline once done |
//! | `server.pem`, `server-key.pem` | the coordinator's certificate, for `--hosts` |
//! | `agent-NAME.pem`, `agent-NAME-key.pem` | one client certificate per agent (mutual TLS) |
//!
//! An agent's certificate carries its name as a DNS subject alternative name: under mutual
//! TLS it may act as the agent id `NAME` only ([`crate::auth::identity`]).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, string::Ia5String,
};

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A host name is not a valid DNS name or IP address.
    #[error("invalid host `{host}` for the server certificate")]
    Host {
        /// The host.
        host: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// Key generation or signing failed.
    #[error("failed to generate {what}")]
    Generate {
        /// What.
        what: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("failed to write `{}`", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The output already holds a CA; overwriting it would orphan issued certificates.
    #[error("`{}` exists (hint: pick an empty directory, or pass --force to replace it)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// An agent name cannot be used in a file name.
    #[error("invalid agent name `{0}` (hint: use letters, digits, '.', '_' and '-')")]
    AgentName(String),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct CertsRequest {
    /// DNS names and IP addresses the coordinator is reached at.
    pub hosts: Vec<String>,
    /// One client certificate per agent name.
    pub agents: Vec<String>,
    /// Days each certificate is valid.
    pub days: u32,
    /// Replace existing files.
    pub force: bool,
}

/// Writes the CA, the server certificate and the agent certificates into `out`; returns
/// the files written.
pub fn generate(out: &Path, request: &CertsRequest) -> Result<Vec<PathBuf>, CertsError> {
    let ca_path = out.join("ca.pem");
    if ca_path.exists() && !request.force {
        return Err(CertsError::Exists { path: ca_path });
    }
    for agent in &request.agents {
        if agent.is_empty()
            || !agent
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(CertsError::AgentName(agent.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|source| CertsError::Write {
        path: out.to_owned(),
        source,
    })?;
    let gen_err = |what: &str| {
        let what = what.to_owned();
        move |source| CertsError::Generate { what, source }
    };
    let (not_before, not_after) = validity(request.days);

    let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = name("evalctl lab CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(gen_err("the CA certificate"))?;
    let issuer = Issuer::new(ca, ca_key);

    let mut written = Vec::new();
    write(out, "ca.pem", &ca_cert.pem(), false, &mut written)?;
    write(
        out,
        "ca-key.pem",
        &issuer.key().serialize_pem(),
        true,
        &mut written,
    )?;

    let mut server =
        CertificateParams::new(Vec::<String>::new()).map_err(gen_err("the server certificate"))?;
    for host in &request.hosts {
        let one =
            CertificateParams::new(vec![host.clone()]).map_err(|source| CertsError::Host {
                host: host.clone(),
                source,
            })?;
        server.subject_alt_names.extend(one.subject_alt_names);
    }
    server.distinguished_name = name(
        request
            .hosts
            .first()
            .map_or("evalctl-coordinator", String::as_str),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.not_before = not_before;
    server.not_after = not_after;
    let server_key = KeyPair::generate().map_err(gen_err("the server key"))?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(gen_err("the server certificate"))?;
    write(out, "server.pem", &server_cert.pem(), false, &mut written)?;
    write(
        out,
        "server-key.pem",
        &server_key.serialize_pem(),
        true,
        &mut written,
    )?;

    for agent in &request.agents {
        let mut client = CertificateParams::default();
        let san = Ia5String::try_from(agent.as_str())
            .map_err(gen_err(&format!("the name of agent {agent}")))?;
        client.subject_alt_names = vec![SanType::DnsName(san)];
        client.distinguished_name = name(agent);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.not_before = not_before;
        client.not_after = not_after;
        let key = KeyPair::generate().map_err(gen_err(&format!("the key of agent {agent}")))?;
        let cert = client
            .signed_by(&key, &issuer)
            .map_err(gen_err(&format!("the certificate of agent {agent}")))?;
        write(
            out,
            &format!("agent-{agent}.pem"),
            &cert.pem(),
            false,
            &mut written,
        )?;
        write(
            out,
            &format!("agent-{agent}-key.pem"),
            &key.serialize_pem(),
            true,
            &mut written,
        )?;
    }
    Ok(written)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "evalctl");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// From an hour ago (clock skew between hosts) for `days` days.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    (
        not_before,
        now + time::Duration::days(i64::from(days.max(1))),
    )
}

fn write(
    dir: &Path,
    file: &str,
    text: &str,
    secret: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(file);
    let failed = |source| CertsError::Write {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut f = options.open(&path).map_err(failed)?;
    f.write_all(text.as_bytes()).map_err(failed)?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertName, names, read_certs};

    #[test]
    fn agent_certificates_carry_their_name_as_a_dns_san() {
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            &CertsRequest {
                hosts: vec!["localhost".into()],
                agents: vec!["gpu-node-07".into(), "node_1".into()],
                days: 1,
                force: false,
            },
        )
        .unwrap();
        for agent in ["gpu-node-07", "node_1"] {
            let path = dir.path().join(format!("agent-{agent}.pem"));
            let certs = read_certs(&path, "an agent certificate").unwrap();
            assert_eq!(
                names::subject_alt_names(&certs[0]),
                [CertName::Dns(agent.to_owned())],
                "{agent}"
            );
        }
    }
}

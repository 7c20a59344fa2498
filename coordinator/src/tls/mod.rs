//! TLS for the coordinator's gRPC listener (rustls, ring provider).
//!
//! - [`ServerTls`] holds the current rustls configuration built from a certificate chain, a
//!   private key and, for mutual TLS, a client CA. [`ServerTls::reload`] re-reads the files
//!   and swaps the configuration in: new connections use it, open ones keep theirs. The
//!   server calls it on SIGHUP, so a renewed certificate needs no restart.
//! - [`incoming`] accepts TCP connections and runs TLS handshakes off the accept loop, with
//!   a timeout and a cap on handshakes in flight.
//! - [`certs`] writes a CA and certificates for a lab without a PKI (`gen-certs`).
//! - [`names`] reads the subject alternative names of a client certificate, which bind it
//!   to the agent ids it may use.
//!
//! With a client CA, a client certificate is optional at the handshake but verified when
//! presented; the authorization layer then requires one for `AgentService` calls, so agents
//! prove their identity with mutual TLS while CLI users need only a token.

pub mod certs;
pub mod incoming;
pub mod names;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use incoming::{Conn, PeerInfo};
pub use names::CertName;

/// Files the TLS configuration is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign agents' client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("failed to read {what} from `{}`", path.display())]
    Pem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("`{}` holds no certificate (hint: expected a PEM `BEGIN CERTIFICATE` block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A client CA certificate was refused.
    #[error("failed to use the client CA certificate from `{}`", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("failed to build the client certificate verifier for `{}`", path.display())]
    Verifier {
        /// The client CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and key do not make a valid configuration (e.g. they do not match).
    #[error("failed to use certificate `{}` with key `{}`", cert.display(), key.display())]
    Config {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
}

/// The crypto provider evalctl uses everywhere (ring), picked explicitly so that no
/// process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Builds a server configuration from the files (ALPN `h2`, as gRPC needs).
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs(&files.cert, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        what: "the server private key",
        path: files.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "the client CA")? {
                roots.add(cert).map_err(|source| TlsError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The server's TLS configuration, swappable while serving.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; fails if they do not make a valid configuration.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = server_config(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(config),
        })
    }

    /// Whether clients may present certificates checked against a client CA.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the files and swaps the new configuration in. On an error the current
    /// configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }
}

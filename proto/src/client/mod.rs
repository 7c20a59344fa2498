//! Connections to the coordinator: TLS (server verified against a CA file or the system
//! roots, optionally a client certificate for mutual TLS) and the bearer token sent with
//! every call. The agent and the `evalctl` CLI both connect through here, and read what a
//! failed connection says about their TLS setup in [`problem`].

pub mod problem;

pub use problem::{TlsProblem, is_connection_failure, serves_tls, tls_problem};

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How a client authenticates to the coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuth {
    /// Bearer token secret (`evt_…`).
    pub token: Option<String>,
    /// PEM CA that signed the coordinator's certificate; the system roots when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A token, CA or certificate file could not be read.
    #[error("failed to read {what} `{}`", path.display())]
    Read {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A token file holds no token.
    #[error("token file `{}` is empty", path.display())]
    EmptyToken {
        /// The file.
        path: PathBuf,
    },
    /// The token has characters a header cannot carry.
    #[error(
        "the token is not a valid header value (hint: tokens look like `evt_` and 64 hex digits)"
    )]
    BadToken,
    /// Only one of client certificate and key.
    #[error(
        "a client certificate needs its key and the other way round (hint: pass both --client-cert and --client-key)"
    )]
    HalfIdentity,
    /// The URL or TLS settings were refused.
    #[error("invalid coordinator endpoint `{url}`")]
    Endpoint {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Reads a token: the value given, else the first line of `token_file`.
pub fn read_token(
    token: Option<&str>,
    token_file: Option<&Path>,
) -> Result<Option<String>, ClientError> {
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(token.to_owned()));
    }
    let Some(path) = token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        what: "token file",
        path: path.to_owned(),
        source,
    })?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => Ok(Some(line.to_owned())),
        None => Err(ClientError::EmptyToken {
            path: path.to_owned(),
        }),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// An endpoint for `url` with a connect timeout; `https://` URLs get TLS as `auth` says.
pub fn endpoint(url: &str, auth: &ClientAuth) -> Result<Endpoint, ClientError> {
    let failed = |source| ClientError::Endpoint {
        url: url.to_owned(),
        source,
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(failed)?
        .connect_timeout(Duration::from_secs(5));
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &auth.ca_file {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("CA file", ca)?)),
        None => tls.with_native_roots(),
    };
    match (&auth.client_cert, &auth.client_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ));
        }
        (None, None) => {}
        _ => return Err(ClientError::HalfIdentity),
    }
    endpoint.tls_config(tls).map_err(failed)
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token`.
    pub fn new(token: Option<&str>) -> Result<BearerToken, ClientError> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::BadToken)
            })
            .transpose()
            .map(|v| {
                BearerToken(v.map(|mut v| {
                    v.set_sensitive(true);
                    v
                }))
            })
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_comes_from_the_value_or_the_first_line_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\n  evt_abc  \nignored\n").unwrap();
        assert_eq!(
            read_token(None, Some(&file)).unwrap().as_deref(),
            Some("evt_abc")
        );
        assert_eq!(
            read_token(Some("evt_x"), Some(&file)).unwrap().as_deref(),
            Some("evt_x")
        );
        assert_eq!(read_token(None, None).unwrap(), None);
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            read_token(None, Some(&file)),
            Err(ClientError::EmptyToken { .. })
        ));
        assert!(BearerToken::new(Some("bad\nvalue")).is_err());
    }

    #[test]
    fn https_needs_both_halves_of_a_client_identity() {
        let auth = ClientAuth {
            client_cert: Some("c.pem".into()),
            ..ClientAuth::default()
        };
        assert!(matches!(
            endpoint("https://127.0.0.1:1", &auth),
            Err(ClientError::HalfIdentity)
        ));
        assert!(endpoint("http://127.0.0.1:1", &auth).is_ok());
    }
}

//! What a failed connection says about the client's own setup rather than the network: the
//! coordinator's certificate is not trusted, the coordinator refused the client's
//! certificate, or an `http://` URL points at a port that speaks TLS. None of these gets
//! better by retrying; the agent stops on them and the CLI says what to change.
//!
//! Found by walking the error's source chain for `rustls` errors (inside `std::io::Error`s,
//! whose `source` skips the error they wrap, and inside `h2` I/O errors, which have no
//! `source` at all), and for a TLS port by [`serves_tls`]. An error that went through an
//! HTTP/2 connection has lost its type on the way — `h2` keeps I/O errors as a kind and a
//! message — so an `InvalidData` I/O error whose message is rustls's text for an alert or a
//! certificate error is read back into that error.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};

use super::ClientAuth;

/// A TLS setup that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// The coordinator's certificate does not chain to a CA the client trusts (`UnknownIssuer`;
    /// `BadSignature` when a CA of the same name but another key signed it).
    UntrustedServer {
        /// rustls's reason, e.g. `UnknownIssuer`.
        reason: String,
    },
    /// The coordinator's certificate does not name the host of the URL.
    ServerNameMismatch {
        /// rustls's reason, with the names when it has them.
        reason: String,
    },
    /// The coordinator's certificate has expired or is not valid yet.
    ServerNotValidNow {
        /// rustls's reason.
        reason: String,
    },
    /// The coordinator refused the client's certificate (its TLS alert: unknown CA, bad or
    /// expired certificate, or `decrypt_error` for a certificate of a same-named CA).
    ClientRefused {
        /// The alert, e.g. `UnknownCA`.
        alert: String,
    },
    /// The coordinator wants a client certificate and got none.
    ClientMissing,
    /// A plain-text (`http://`) connection reached a port that answers in TLS.
    PlainTextToTls,
}

impl TlsProblem {
    /// What is wrong, for a message that names the coordinator before it: "failed to
    /// connect to the coordinator at URL: <this>". Names the CA and certificate files of
    /// `auth`.
    pub fn describe(&self, auth: &ClientAuth) -> String {
        let trusted = match &auth.ca_file {
            Some(ca) => format!("the CA in `{}` (--ca-file)", ca.display()),
            None => "any CA of the system roots (no --ca-file given)".to_owned(),
        };
        let client_cert = match &auth.client_cert {
            Some(cert) => format!(
                "this client's certificate `{}` (--client-cert)",
                cert.display()
            ),
            None => "this client's certificate".to_owned(),
        };
        match self {
            TlsProblem::UntrustedServer { reason } => {
                format!("its TLS certificate is not signed by {trusted} ({reason})")
            }
            TlsProblem::ServerNameMismatch { reason } => {
                format!("its TLS certificate is not valid for the host in the URL ({reason})")
            }
            TlsProblem::ServerNotValidNow { reason } => {
                format!("its TLS certificate is not valid at this time ({reason})")
            }
            TlsProblem::ClientRefused { alert } => {
                format!("it refused {client_cert} (TLS alert {alert})")
            }
            TlsProblem::ClientMissing => {
                "it requires a client certificate and this client sent none".to_owned()
            }
            TlsProblem::PlainTextToTls => {
                "it speaks TLS, and the URL asks for plain text (`http://`)".to_owned()
            }
        }
    }

    /// What to change, for a `(hint: …)` line; `url` is the coordinator URL that was used.
    pub fn hint(&self, url: &str) -> String {
        match self {
            TlsProblem::UntrustedServer { .. } => "pass --ca-file (or EVALCTL_CA_FILE) the CA \
                that signed the coordinator's certificate: the `ca.pem` that \
                `evalctl-coordinator gen-certs` wrote beside its `server.pem`"
                .to_owned(),
            TlsProblem::ServerNameMismatch { .. } => "use the host name the coordinator's \
                certificate was made for (`gen-certs --hosts`), or make it a certificate for \
                this name"
                .to_owned(),
            TlsProblem::ServerNotValidNow { .. } => "check this host's clock, or renew the \
                coordinator's certificate (`evalctl-coordinator gen-certs --force`)"
                .to_owned(),
            TlsProblem::ClientRefused { .. } => "use a client certificate signed by the CA \
                the coordinator trusts (its --tls-client-ca), e.g. one `evalctl-coordinator \
                gen-certs --agents NAME` wrote with that CA"
                .to_owned(),
            TlsProblem::ClientMissing => "pass --client-cert and --client-key (`client_cert`, \
                `client_key` in the agent's config)"
                .to_owned(),
            TlsProblem::PlainTextToTls => format!(
                "use `{}`, with --ca-file naming the CA that signed the coordinator's certificate",
                url.replacen("http://", "https://", 1)
            ),
        }
    }
}

impl fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(&ClientAuth::default()))
    }
}

/// The TLS problem in `err`'s source chain, if any (never [`TlsProblem::PlainTextToTls`]:
/// that takes [`serves_tls`]).
pub fn tls_problem(err: &(dyn Error + 'static)) -> Option<TlsProblem> {
    chain(err).find_map(|e| match e.downcast_ref::<rustls::Error>() {
        Some(tls) => classify(tls),
        None => e
            .downcast_ref::<std::io::Error>()
            .filter(|io| io.kind() == std::io::ErrorKind::InvalidData)
            .and_then(|io| io.get_ref())
            .and_then(|inner| rustls_error_from_text(&inner.to_string()))
            .as_ref()
            .and_then(classify),
    })
}

/// The rustls error whose `Display` is `text`, for the alerts and certificate errors that
/// [`classify`] knows: `received fatal alert: UnknownCA`, `invalid peer certificate:
/// UnknownIssuer`.
fn rustls_error_from_text(text: &str) -> Option<rustls::Error> {
    if let Some(name) = text.strip_prefix("received fatal alert: ") {
        return KNOWN_ALERTS
            .iter()
            .find(|alert| format!("{alert:?}") == name)
            .map(|alert| rustls::Error::AlertReceived(*alert));
    }
    let name = text.strip_prefix("invalid peer certificate: ")?;
    let known = [
        CertificateError::UnknownIssuer,
        CertificateError::BadSignature,
        CertificateError::NotValidForName,
        CertificateError::Expired,
        CertificateError::NotValidYet,
        CertificateError::Revoked,
    ];
    Some(rustls::Error::InvalidCertificate(
        known
            .into_iter()
            .find(|cert| format!("{cert:?}") == name)
            // Another certificate error (one with context, say): untrusted all the same.
            .unwrap_or(CertificateError::UnknownIssuer),
    ))
}

/// The alerts [`classify`] reads as a refused client certificate, and the one that asks
/// for a certificate.
const KNOWN_ALERTS: [AlertDescription; 9] = [
    AlertDescription::CertificateRequired,
    AlertDescription::UnknownCA,
    AlertDescription::BadCertificate,
    AlertDescription::UnsupportedCertificate,
    AlertDescription::CertificateRevoked,
    AlertDescription::CertificateExpired,
    AlertDescription::CertificateUnknown,
    AlertDescription::AccessDenied,
    AlertDescription::DecryptError,
];

/// Whether the call behind `err` failed on the connection — no answer came from the
/// coordinator — rather than with a status the coordinator sent: an HTTP/2 or hyper error
/// is in its chain.
pub fn is_connection_failure(err: &(dyn Error + 'static)) -> bool {
    chain(err).any(|e| e.is::<h2::Error>() || e.is::<hyper::Error>())
}

/// `err` and its causes, looking inside the wrappers that hide theirs: a
/// `std::io::Error`'s `source` is its inner error's source, not the inner error, and an
/// `h2::Error` keeps its I/O error outside `source`.
fn chain<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    let mut next = Some(err);
    let mut pending: Vec<&'a (dyn Error + 'static)> = Vec::new();
    std::iter::from_fn(move || {
        let current = next.take().or_else(|| pending.pop())?;
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            pending.push(inner);
        }
        if let Some(io) = current
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::get_io)
        {
            pending.push(io);
        }
        next = current.source();
        Some(current)
    })
}

fn classify(err: &rustls::Error) -> Option<TlsProblem> {
    match err {
        rustls::Error::InvalidCertificate(cert) => {
            let reason = format!("{cert:?}");
            match cert {
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::BadEncoding
                | CertificateError::UnhandledCriticalExtension
                | CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. }
                | CertificateError::Revoked => Some(TlsProblem::UntrustedServer { reason }),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    Some(TlsProblem::ServerNameMismatch { reason })
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => {
                    Some(TlsProblem::ServerNotValidNow { reason })
                }
                _ => Some(TlsProblem::UntrustedServer { reason }),
            }
        }
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => Some(TlsProblem::ClientMissing),
            // With TLS 1.3 the client's handshake is over before the server checks the client
            // certificate, so a refusal arrives as an alert on the first read. A certificate
            // of another CA with the same name fails its signature: `decrypt_error`.
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError => Some(TlsProblem::ClientRefused {
                alert: format!("{alert:?}"),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// How long [`serves_tls`] waits to connect and for the first bytes of the answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server at an `http://` URL's host and port answers the HTTP/2 preface with a
/// TLS record (an alert, or a handshake): a TLS port given a plain-text URL. False for any
/// other URL, and when it cannot be told (no connection, no answer in time).
pub async fn serves_tls(url: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        Some(head)
    };
    // Record types 21 (alert) and 22 (handshake), protocol version 3.x.
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some([0x15 | 0x16, 0x03]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_found_inside_io_and_h2_errors() {
        let untrusted = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        // tokio-rustls hands rustls errors up inside an io::Error, whose `source` skips it.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, untrusted.clone());
        assert_eq!(
            tls_problem(&io),
            Some(TlsProblem::UntrustedServer {
                reason: "UnknownIssuer".into()
            })
        );
        // Deeper in a chain: a transport error over the io::Error over the rustls error.
        #[derive(Debug)]
        struct Transport(std::io::Error);
        impl fmt::Display for Transport {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("transport error")
            }
        }
        impl Error for Transport {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        let wrapped = Transport(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refused,
        ));
        assert_eq!(
            tls_problem(&wrapped),
            Some(TlsProblem::ClientRefused {
                alert: "UnknownCA".into()
            })
        );
        assert!(!is_connection_failure(&wrapped));
        assert!(is_connection_failure(&h2::Error::from(
            h2::Reason::PROTOCOL_ERROR
        )));
        // Through HTTP/2 only the text is left (h2 keeps an I/O error's kind and message).
        let flattened = |text: &str| {
            Transport(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                text.to_owned(),
            ))
        };
        assert_eq!(
            tls_problem(&flattened("received fatal alert: DecryptError")),
            Some(TlsProblem::ClientRefused {
                alert: "DecryptError".into()
            })
        );
        assert_eq!(
            tls_problem(&flattened("invalid peer certificate: BadSignature")),
            Some(TlsProblem::UntrustedServer {
                reason: "BadSignature".into()
            })
        );
        assert_eq!(
            tls_problem(&flattened("received fatal alert: CloseNotify")),
            None
        );
        assert_eq!(tls_problem(&flattened("frame too large")), None);
        // The text is rustls's own.
        for alert in KNOWN_ALERTS {
            let text = rustls::Error::AlertReceived(alert).to_string();
            assert_eq!(
                rustls_error_from_text(&text),
                Some(rustls::Error::AlertReceived(alert)),
                "{text}"
            );
        }
        let text = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer).to_string();
        assert_eq!(
            rustls_error_from_text(&text),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert_eq!(tls_problem(&required), Some(TlsProblem::ClientMissing));
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(matches!(
            tls_problem(&name),
            Some(TlsProblem::ServerNameMismatch { .. })
        ));
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(matches!(
            tls_problem(&expired),
            Some(TlsProblem::ServerNotValidNow { .. })
        ));
    }

    #[test]
    fn other_errors_are_no_tls_problem() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(tls_problem(&refused), None);
        assert!(!is_connection_failure(&refused));
        let closed = rustls::Error::AlertReceived(AlertDescription::CloseNotify);
        assert_eq!(tls_problem(&closed), None);
        let status = tonic::Status::unavailable("coordinator is draining");
        assert_eq!(tls_problem(&status), None);
        assert!(!is_connection_failure(&status));
    }

    #[test]
    fn descriptions_name_the_files_to_change() {
        let auth = ClientAuth {
            ca_file: Some("/etc/evalctl/ca.pem".into()),
            client_cert: Some("/etc/evalctl/node1.pem".into()),
            ..ClientAuth::default()
        };
        let untrusted = TlsProblem::UntrustedServer {
            reason: "UnknownIssuer".into(),
        };
        assert_eq!(
            untrusted.describe(&auth),
            "its TLS certificate is not signed by the CA in `/etc/evalctl/ca.pem` (--ca-file) \
             (UnknownIssuer)"
        );
        assert!(
            untrusted
                .describe(&ClientAuth::default())
                .contains("system roots")
        );
        assert!(untrusted.hint("https://c:7717").contains("--ca-file"));
        let refused = TlsProblem::ClientRefused {
            alert: "UnknownCA".into(),
        };
        assert!(
            refused
                .describe(&auth)
                .contains("`/etc/evalctl/node1.pem` (--client-cert)")
        );
        assert!(
            TlsProblem::PlainTextToTls
                .hint("http://c:7717")
                .starts_with("use `https://c:7717`")
        );
    }

    #[tokio::test]
    async fn a_tls_port_is_told_from_a_plain_one() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // A port that answers like rustls does to a plain-text preface: a fatal alert.
        let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_addr = tls.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = tls.accept().await.unwrap();
            let mut buf = [0u8; 24];
            let _ = peer.read(&mut buf).await;
            let _ = peer
                .write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32])
                .await;
        });
        // And one that answers with HTTP/1.1.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = plain.accept().await.unwrap();
            let mut buf = [0u8; 24];
            let _ = peer.read(&mut buf).await;
            let _ = peer.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        assert!(serves_tls(&format!("http://{tls_addr}")).await);
        assert!(!serves_tls(&format!("http://{plain_addr}")).await);
        assert!(!serves_tls(&format!("https://{tls_addr}")).await);
        assert!(!serves_tls("http://127.0.0.1:1").await);
        assert!(!serves_tls("not a url").await);
    }
}

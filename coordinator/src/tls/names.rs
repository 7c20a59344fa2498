//! The names a verified client certificate carries: its DNS and URI subject alternative
//! names, which bind an agent's certificate to the agent ids it may use
//! ([`crate::auth::identity`]). The subject's common name is deliberately not one of them:
//! it is free text that CAs do not check the way they check SANs.

use std::fmt;

use x509_parser::extensions::GeneralName;

/// One subject alternative name of a client certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertName {
    /// A `dNSName`, e.g. `gpu-node-07` or `gpu-node-07.lab`.
    Dns(String),
    /// A `uniformResourceIdentifier`, e.g. `spiffe://lab/agent/gpu-node-07`.
    Uri(String),
}

impl CertName {
    /// The name without its kind: what agent ids and the operator's map are matched against.
    pub fn value(&self) -> &str {
        match self {
            CertName::Dns(name) | CertName::Uri(name) => name,
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Dns(name) => write!(f, "DNS:{name}"),
            CertName::Uri(name) => write!(f, "URI:{name}"),
        }
    }
}

/// The DNS and URI subject alternative names of a DER certificate, in certificate order.
/// A certificate that does not parse, or has no such names, has none: it then allows no
/// agent id (the TLS handshake has already verified its signature).
pub fn subject_alt_names(der: &[u8]) -> Vec<CertName> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(CertName::Dns((*dns).to_owned())),
            GeneralName::URI(uri) => Some(CertName::Uri((*uri).to_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn der(params: CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn dns_and_uri_names_are_read_and_others_ignored() {
        let mut params = CertificateParams::new(vec!["gpu-node-07".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::URI(
            "spiffe://lab/agent/gpu-node-07".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.7".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@lab".try_into().unwrap()));
        let names = subject_alt_names(&der(params));
        assert_eq!(
            names,
            [
                CertName::Dns("gpu-node-07".into()),
                CertName::Uri("spiffe://lab/agent/gpu-node-07".into()),
            ]
        );
        assert_eq!(names[0].to_string(), "DNS:gpu-node-07");
        assert_eq!(names[1].value(), "spiffe://lab/agent/gpu-node-07");
    }

    #[test]
    fn the_common_name_is_not_a_name() {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gpu-node-07");
        assert!(subject_alt_names(&der(params)).is_empty());
        assert!(subject_alt_names(b"not a certificate").is_empty());
    }
}

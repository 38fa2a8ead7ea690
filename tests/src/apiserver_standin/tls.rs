//! A throw-away PKI made at start: a CA (what the kubeconfig trusts) and a
//! server certificate it signs for 127.0.0.1, localhost and the address the
//! server listens on.
use std::{net::IpAddr, sync::Arc};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::{ServerConfig, pki_types::PrivateKeyDer};

pub(crate) struct Pki {
    /// The CA certificate, PEM: the kubeconfig's certificate-authority-data.
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
}

/// `ip`: the address the server listens on, also a subject alternative
/// name of its certificate.
pub(crate) fn generate(ip: IpAddr) -> Result<Pki> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "apiserver-standin-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    // rcgen makes a name that parses as an address an IP address SAN.
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate()?;
    let server_cert = server.signed_by(&server_key, &ca)?;

    // An explicit provider: no reliance on a process-wide default, which
    // another crate in the test binary may or may not have installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone(), ca.der().clone()],
            PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )?;
    // HTTP/1.1 only, as kube's client speaks it (watches are chunked
    // HTTP/1.1 responses).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: ca.pem(),
        server_config: Arc::new(config),
    })
}

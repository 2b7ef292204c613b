//! TLS material: rustls server configs for listeners that terminate TLS and client configs for
//! upstreams reached over https. Loading happens at config compile time, never per request.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots trusted for the HTTPS requests the gateway makes itself — OIDC discovery and
/// JWKS, token endpoints, approval webhooks (`gateway.outbound_ca`; default: Mozilla's roots,
/// built in). Compared by content, so a reload with the same file changes nothing.
#[derive(Clone, Default)]
pub struct Outbound(Option<Arc<Vec<Vec<u8>>>>);

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => write!(f, "Outbound(Mozilla roots)"),
            Some(c) => write!(f, "Outbound({} certificate(s))", c.len()),
        }
    }
}

impl PartialEq for Outbound {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_deref() == other.0.as_deref()
    }
}

impl Eq for Outbound {}

impl Outbound {
    /// The certificates of a PEM file; the error names the file and what is wrong.
    pub fn from_pem(path: &Path) -> Result<Outbound, String> {
        Ok(Outbound(Some(Arc::new(certs(path)?.into_iter().map(|c| c.as_ref().to_vec()).collect()))))
    }

    /// The TLS settings of an HTTP client agent.
    pub fn tls(&self) -> ureq::tls::TlsConfig {
        self.tls_with(None)
    }

    /// The same, presenting a client certificate.
    pub fn tls_with(&self, client: Option<ureq::tls::ClientCert>) -> ureq::tls::TlsConfig {
        let roots = match &self.0 {
            None => ureq::tls::RootCerts::WebPki,
            Some(c) => c.iter().map(|d| ureq::tls::Certificate::from_der(d).to_owned()).into(),
        };
        ureq::tls::TlsConfig::builder().root_certs(roots).client_cert(client).build()
    }
}

/// A client certificate (chain) and its key, from PEM files, for the gateway's own requests.
pub fn client_cert(cert: &Path, key: &Path) -> Result<ureq::tls::ClientCert, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let chain: Vec<_> = ureq::tls::parse_pem(&read(cert)?)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if chain.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key = ureq::tls::PrivateKey::from_pem(&read(key)?).map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    Ok(ureq::tls::ClientCert::new_with_certs(&chain, key))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn private_key(key: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{} is not a PEM key file: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no private key", key.display()))
}

/// Server side of a TLS listener; `client_ca` (with "required") verifies agents' client
/// certificates against these CAs.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<(&Path, bool)>) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = certs(cert)?;
    let key_der = private_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, required)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: not a CA certificate: {e}", ca.display()))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let v = if required { v } else { v.allow_unauthenticated() };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client side for an https upstream: verified against `ca` (or the Mozilla roots).
pub fn client_config(
    ca: Option<&Path>,
    server_name: &str,
    client_auth: Option<(&Path, &Path)>,
) -> Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(p) => {
            for c in certs(p)? {
                roots.add(c).map_err(|e| format!("{}: unusable CA certificate: {e}", p.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match client_auth {
        Some((cert, key)) => cfg
            .with_client_auth_cert(certs(cert)?, private_key(key)?)
            .map_err(|e| format!("{} / {}: unusable client certificate or key: {e}", cert.display(), key.display()))?,
        None => cfg.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| format!("\"{server_name}\" is not a valid TLS server name"))?;
    Ok((Arc::new(cfg), name))
}

/// The names in a verified client certificate: the subject's common name and the subject
/// alternative names (URI, DNS, e-mail), in certificate order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    pub cn: Option<String>,
    pub sans: Vec<String>,
}

/// Read the names of a DER certificate (already verified by rustls).
pub fn peer_names(der: &[u8]) -> Result<PeerNames, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("client certificate: {e}"))?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).map(str::to_owned);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::URI(u) => sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::RFC822Name(m) => sans.push((*m).to_owned()),
                _ => {}
            }
        }
    }
    Ok(PeerNames { cn, sans })
}

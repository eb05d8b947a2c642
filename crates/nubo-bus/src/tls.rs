//! TLS to external brokers: `mqtts://` (MQTT over TLS, port 8883 by default) and `tls://` (NATS
//! with TLS required). The broker's certificate is checked against the system's roots and, when
//! the URL names one with `?ca=FILE`, the certificate authorities (PEM) in that file; the host
//! name of the URL must be in the certificate. Nothing is ever accepted unchecked.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::BusError;

/// TLS settings of a bus URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// Extra certificate authorities (PEM), from `?ca=FILE`.
    pub ca_file: Option<PathBuf>,
}

/// Splits `?ca=FILE` (the only query parameter a bus URL takes) off `url`.
pub(crate) fn split_query(url: &str) -> Result<(&str, Option<PathBuf>), BusError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url, None));
    };
    let mut ca = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("ca", file)) if !file.is_empty() => ca = Some(PathBuf::from(file)),
            _ => {
                return Err(BusError::InvalidUrl {
                    url: crate::redact_url(url),
                    reason: format!(
                        "`{pair}`: the only parameter of a bus URL is `ca=FILE` (certificate authorities in PEM, for TLS)"
                    ),
                });
            }
        }
    }
    Ok((base, ca))
}

/// A client configuration that trusts the system's roots and those of `settings.ca_file`.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, BusError> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's roots: missing or unreadable ones only narrow what is trusted.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = &settings.ca_file {
        let added = add_pem_file(&mut roots, file)?;
        if added == 0 {
            return Err(tls_error(file, "holds no certificate (PEM)".into()));
        }
    }
    if roots.is_empty() {
        return Err(BusError::Tls(
            "no certificate authority to check the broker with: the system has none; name the broker's with ?ca=FILE".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BusError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn add_pem_file(roots: &mut rustls::RootCertStore, file: &Path) -> Result<usize, BusError> {
    let pem = std::fs::read(file).map_err(|e| tls_error(file, e.to_string()))?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| tls_error(file, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| tls_error(file, e.to_string()))?;
        added += 1;
    }
    Ok(added)
}

fn tls_error(file: &Path, reason: String) -> BusError {
    BusError::Tls(format!(
        "the certificate authorities of ?ca={}: {reason}",
        file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_parameter_is_the_only_one() {
        assert_eq!(split_query("mqtts://h:1").unwrap(), ("mqtts://h:1", None));
        assert_eq!(
            split_query("mqtts://u:p@h:1?ca=/etc/ca.pem").unwrap(),
            ("mqtts://u:p@h:1", Some(PathBuf::from("/etc/ca.pem")))
        );
        let e = split_query("mqtts://u:secret@h?insecure=1").unwrap_err();
        assert!(e.to_string().contains("insecure=1") && !e.to_string().contains("secret"));
        assert!(split_query("tls://h?ca=").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let e = client_config(&TlsSettings { ca_file: Some(f) }).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = client_config(&TlsSettings {
            ca_file: Some(dir.path().join("missing.pem")),
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}

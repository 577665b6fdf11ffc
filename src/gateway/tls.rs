//! The gateway's TLS (rustls, aws-lc): a certificate and key from PEM files, swapped in place on
//! SIGHUP so a renewed certificate is served without dropping a connection.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::gateway::TlsFiles;

pub(super) struct Tls {
    pub(super) files: TlsFiles,
    current: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    pub(super) fn load(files: TlsFiles) -> Result<Self, String> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Re-reads the files; on any problem the current certificate stays.
    pub(super) fn reload(&self) -> Result<(), String> {
        self.current.store(Arc::new(server_config(&self.files)?));
        Ok(())
    }

    /// The acceptor for the next connection (a connection keeps the config it started with).
    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    // The key is a secret: the same rule as every other secret file (mode and owner).
    credbroker_provider_api::settings::check_secret_file(&files.key)?;
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: no usable PEM private key ({e})", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

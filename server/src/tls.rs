//! HTTPS (and gRPC over TLS): the certificate and key from `--tls-cert`/
//! `--tls-key` (PEM), loaded into rustls acceptors (aws-lc-rs crypto, no
//! OpenSSL), and reloaded on
//! SIGHUP so a renewed certificate takes effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptors in force and the files they came from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptors: RwLock<Acceptors>,
}

/// One certificate, two protocols: the HTTP API speaks HTTP/1.1, the gRPC
/// front end HTTP/2 (negotiated by ALPN, which gRPC clients require).
#[derive(Clone)]
struct Acceptors {
    http: TlsAcceptor,
    grpc: TlsAcceptor,
}

impl Tls {
    /// Loads the certificate chain and key.
    pub fn open(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            acceptors: RwLock::new(acceptors(cert, key)?),
        })
    }

    /// The acceptor for a new HTTP API connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current().http
    }

    /// The acceptor for a new gRPC connection.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        self.current().grpc
    }

    fn current(&self) -> Acceptors {
        self.acceptors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again; on success new connections use them, on failure
    /// the ones in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptors(&self.cert, &self.key)?;
        *self
            .acceptors
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

fn acceptors(cert_path: &Path, key_path: &Path) -> Result<Acceptors, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert_path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    let mut grpc = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Acceptors {
        http: TlsAcceptor::from(Arc::new(config)),
        grpc: TlsAcceptor::from(Arc::new(grpc)),
    })
}

//! The in-cluster TLS listener's certificate: read from two PEM files (a mounted Secret) and swapped in
//! place when they change, so a renewed certificate is served without a restart.
//!
//! Kubernetes updates a mounted Secret by swapping a symlink, so both files change together; a reader can
//! still catch the moment between them, which is why a pair that does not match keeps the previous one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsListenConfig;

/// Why a certificate pair did not load.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The PEM did not hold what it should.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (the key does not match the certificate, an unsupported key type).
    #[error("certificate and key: {0}")]
    Pair(String),
}

impl TlsError {
    /// Low-cardinality reason for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "tls_read",
            Self::Pem { .. } => "tls_pem",
            Self::Pair(_) => "tls_pair",
        }
    }
}

/// The files as last read, and the key they made.
#[derive(Debug)]
struct Loaded {
    bytes: (Vec<u8>, Vec<u8>),
    key: Arc<CertifiedKey>,
}

/// Serves whatever pair was last loaded from the configured files.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_file.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_file.to_owned(),
            message: "no certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key_file.to_owned(),
        message: e.to_string(),
    })?;
    let provider = aws_lc_rs::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Pair(e.to_string()))
}

impl ReloadingCert {
    /// Loads the pair; an error here stops the server from starting.
    pub fn load(config: &TlsListenConfig) -> Result<Self, TlsError> {
        let bytes = (read(&config.cert_file)?, read(&config.key_file)?);
        let key = certified_key(&config.cert_file, &config.key_file, &bytes.0, &bytes.1)?;
        Ok(Self {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: RwLock::new(Loaded {
                bytes,
                key: Arc::new(key),
            }),
        })
    }

    /// Re-reads the files; returns `Ok(true)` when a new pair took over, `Ok(false)` when nothing changed.
    /// On error the previous pair stays in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let bytes = (read(&self.cert_file)?, read(&self.key_file)?);
        if self.current.read().is_ok_and(|c| c.bytes == bytes) {
            return Ok(false);
        }
        let key = certified_key(&self.cert_file, &self.key_file, &bytes.0, &bytes.1)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Loaded {
            bytes,
            key: Arc::new(key),
        };
        Ok(true)
    }

    /// The rustls config of the listener: TLS 1.2 and 1.3, no client certificates (sidecars authenticate
    /// with `private_key_jwt` inside the request), HTTP/1.1 only like the plain listener.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(current.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, (cert, key): &(String, String)) -> TlsListenConfig {
        std::fs::write(dir.join("tls.crt"), cert).expect("write");
        std::fs::write(dir.join("tls.key"), key).expect("write");
        TlsListenConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
        }
    }

    fn served(cert: &ReloadingCert) -> Vec<u8> {
        let current = cert.current.read().expect("lock");
        current.key.cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_changed_pair_takes_over_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let first = pair("a.example");
        let config = files(dir.path(), &first);
        let cert = ReloadingCert::load(&config).expect("loads");
        let before = served(&cert);
        assert!(!cert.reload().expect("unchanged"), "nothing changed");

        let second = pair("a.example");
        files(dir.path(), &second);
        assert!(cert.reload().expect("reloads"));
        assert_ne!(served(&cert), before);
        let renewed = served(&cert);

        // Caught between the two files of a Secret update: the new certificate with the old key.
        std::fs::write(dir.path().join("tls.crt"), pair("a.example").0).expect("write");
        let err = cert.reload().expect_err("mismatched pair");
        assert!(matches!(err, TlsError::Pair(_)), "{err}");
        assert_eq!(served(&cert), renewed, "the previous pair stays in force");

        std::fs::write(dir.path().join("tls.crt"), "not pem").expect("write");
        assert_eq!(
            cert.reload().expect_err("no certificate").to_string(),
            format!("{}: no certificate", dir.path().join("tls.crt").display())
        );
        std::fs::remove_file(dir.path().join("tls.key")).expect("rm");
        let err = cert.reload().expect_err("missing key");
        assert!(
            err.to_string().starts_with(&format!(
                "reading {}: ",
                dir.path().join("tls.key").display()
            )),
            "{err}"
        );
        assert_eq!(served(&cert), renewed);
    }
}

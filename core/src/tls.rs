//! TLS client settings (rustls on ring) for connections this service opens: Redis today,
//! Postgres later.
//!
//! The server certificate is always verified, host name included, against either a PEM bundle
//! the operator names (`*_TLS_CA_FILE`) or the system's trust store (rustls-native-certs, which
//! honours `SSL_CERT_FILE`/`SSL_CERT_DIR`; see docs/decisions.md). A client certificate and key
//! (mutual TLS) are optional, both or neither. Every file is read once, at start-up, so a bad
//! file is a configuration problem (exit 64), never a runtime surprise.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS client configuration could not be built. Messages name files, never contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (missing, unreadable).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file held no PEM certificate (or a malformed one).
    #[error("{} holds no valid PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file held no PEM private key (PKCS#8, PKCS#1 or SEC1), or a malformed one.
    #[error("{} holds no valid PEM private key", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate was rejected by the trust store (not a usable trust anchor).
    #[error("{}: invalid CA certificate: {source}", path.display())]
    InvalidCa {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The system trust store yielded no certificate (no CA file was named).
    #[error("no system root certificates found (install ca-certificates or name a CA file)")]
    NoSystemRoots,
    /// ring refused the protocol versions (cannot happen with the safe defaults).
    #[error("TLS provider: {0}")]
    Provider(#[source] rustls::Error),
    /// Only one of the client certificate and key was given.
    #[error("a client certificate needs both the certificate and the key file")]
    HalfClientIdentity,
    /// The client certificate and key do not form a usable identity (e.g. they do not match).
    #[error("client certificate {}: {source}", path.display())]
    InvalidClientIdentity {
        /// The certificate file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// The three file settings of one TLS client (e.g. `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE`,
/// `REDIS_TLS_KEY_FILE`), as configured; nothing is read until [`TlsFiles::client_config`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of trusted CAs; `None` = the system trust store.
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file is named.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Reads the files and builds the rustls configuration ([`client_config`]).
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let cert_key = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err(TlsError::HalfClientIdentity),
        };
        client_config(self.ca.as_deref(), cert_key)
    }
}

/// ring as the process-wide default rustls provider, installed once. Our own configurations
/// name ring explicitly; this covers code that asks rustls for "the default" (it would panic
/// if a second provider were ever compiled in).
pub fn install_default_provider() {
    // Err means a provider is already installed, which is all we want.
    let _ = CryptoProvider::install_default(ring_provider());
}

/// rustls's ring provider. rustls 0.23.48 deprecated it for lacking post-quantum key exchange
/// (only its aws-lc-rs provider has one); ring is still the deliberate choice for a light,
/// C-toolchain-free build (docs/decisions.md), so the deprecation is allowed here, once.
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A rustls client configuration that verifies the server (chain and host name) against the
/// CAs in `ca` (PEM bundle) or, when `None`, the system trust store, and presents the client
/// certificate chain and key in `cert_key` (PEM) when given.
pub fn client_config(
    ca: Option<&Path>,
    cert_key: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    install_default_provider();
    let roots = match ca {
        Some(path) => ca_roots(path)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_root_certificates(roots);
    match cert_key {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_path, key_path)) => {
            let chain = certificates(cert_path)?;
            let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|_| {
                TlsError::NoPrivateKey {
                    path: key_path.to_owned(),
                }
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|source| {
                TlsError::InvalidClientIdentity {
                    path: cert_path.to_owned(),
                    source,
                }
            })
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate {
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|source| TlsError::InvalidCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    // Per-file errors (one unreadable file in /etc/ssl/certs) are not fatal as long as some
    // roots load; rustls-native-certs reports them alongside what it found.
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing), None).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty), None).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let files = TlsFiles {
            ca: None,
            cert: Some("/x/cert.pem".into()),
            key: None,
        };
        assert!(matches!(
            files.client_config(),
            Err(TlsError::HalfClientIdentity)
        ));
        assert!(TlsFiles::default().is_empty());
    }
}

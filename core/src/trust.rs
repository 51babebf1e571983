//! Trust anchors and rustls settings shared by every TLS client of this crate (Postgres, OTLP).
//!
//! One crypto provider, ring, named explicitly on every config so the result never depends on
//! which rustls features another crate of the build enabled. Trust comes from a PEM CA file
//! (validated at start-up: unreadable or empty is a configuration problem) or from the
//! system's store, read once per process with `rustls-native-certs` (`/etc/ssl/certs`,
//! or `SSL_CERT_FILE` / `SSL_CERT_DIR`; the runtime image ships `ca-certificates`).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file cannot be read.
    #[error("cannot read CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds no `CERTIFICATE` PEM block, or a malformed one.
    #[error("CA file {} holds no valid PEM certificate{}", path.display(), detail(reason))]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint, if any.
        reason: Option<String>,
    },
    /// A certificate in the file is not a usable trust anchor.
    #[error("CA file {}: unusable certificate: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why webpki refused it.
        #[source]
        source: rustls::Error,
    },
    /// No file was given and the system's store holds no usable CA.
    #[error("the system CA store is empty (install ca-certificates, or name a CA file)")]
    NoSystemRoots,
}

fn detail(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

/// The crypto provider of every TLS client here: ring.
///
/// rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; the
/// project standardises on ring (no aws-lc C build, one provider for Postgres, OTLP and
/// Redis), so the deprecation is accepted here, in one place.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where a client finds the CAs it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The system's store (see the module docs).
    System,
    /// A PEM file of one or more CA certificates (replaces the system store).
    File(PathBuf),
}

impl Roots {
    /// The trust anchors, never empty. A file is read each time (so a validated path is read
    /// again at build time); the system store is read once per process.
    pub fn load(&self) -> Result<Arc<RootCertStore>, TrustError> {
        match self {
            Roots::System => Some(system_roots())
                .filter(|r| !r.is_empty())
                .ok_or(TrustError::NoSystemRoots),
            Roots::File(path) => load_ca_file(path).map(Arc::new),
        }
    }
}

/// Reads a PEM CA bundle; every certificate in it must be a valid trust anchor.
pub fn load_ca_file(path: &Path) -> Result<RootCertStore, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let pem_error = |reason: Option<String>| TrustError::Pem {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(Some(e.to_string())))?;
    if certs.is_empty() {
        return Err(pem_error(None));
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|source| TrustError::Certificate {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The system's trust anchors, loaded on first use (possibly empty). Unreadable entries are
/// logged and skipped.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "skipping part of the system CA store");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "system CA store loaded");
            Arc::new(roots)
        })
        .clone()
}

/// A client config (no client certificate) around `verifier`.
pub fn client_config(verifier: Arc<dyn ServerCertVerifier>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        // ring supports every default protocol version, so this cannot fail.
        .unwrap_or_else(|e| unreachable!("ring lacks the default TLS versions: {e}"))
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// The standard verifier: the chain up to `roots`, and the server's name (DNS or IP SAN).
pub fn full_verifier(roots: Arc<RootCertStore>) -> Result<Arc<dyn ServerCertVerifier>, TrustError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        // Only an empty store fails to build ([`Roots::load`] never returns one).
        .map_err(|_| TrustError::NoSystemRoots)
}

/// Verifies the chain up to the trusted roots but not the name: libpq's `verify-ca`.
#[derive(Debug)]
pub struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ChainOnly {
    /// A verifier trusting `roots`.
    pub fn new(roots: Arc<RootCertStore>) -> ChainOnly {
        ChainOnly {
            roots,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Accepts any certificate (the handshake's own signatures are still checked): encryption
/// without authentication, libpq's `require` without a root certificate. Protects against
/// passive eavesdropping only.
#[derive(Debug)]
pub struct EncryptOnly {
    algorithms: WebPkiSupportedAlgorithms,
}

impl Default for EncryptOnly {
    fn default() -> Self {
        EncryptOnly {
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether `e`'s chain holds a refused server certificate (as opposed to a refused
/// connection or a protocol error).
pub fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        // tokio-rustls wraps the rustls error in an io::Error, whose `source()` skips it.
        let wrapped = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(s), wrapped].into_iter().flatten() {
            if let Some(r) = candidate.downcast_ref::<rustls::Error>() {
                return matches!(
                    r,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                );
            }
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refused);
        assert!(is_certificate_error(&io));
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_certificate_error(&other));
        assert!(!is_certificate_error(&std::io::Error::other("refused")));
    }

    #[test]
    fn a_missing_ca_file_names_the_path() {
        let e = load_ca_file(Path::new("/nonexistent/ca.pem")).expect_err("missing");
        assert!(matches!(e, TrustError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("ryze-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").expect("write");
        let e = load_ca_file(&path).expect_err("no PEM");
        assert!(matches!(e, TrustError::Pem { .. }), "{e}");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = load_ca_file(&path).expect_err("not a certificate");
        assert!(matches!(e, TrustError::Certificate { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Throwaway X.509 material for TLS tests, made with the `openssl` CLI: a CA, a server
//! certificate signed by it, and a client certificate for mutual TLS. EC P-256 keys (fast to
//! make), valid from now for 30 days.
//!
//! The server certificate names `localhost`, `127.0.0.1` and `::1` unless
//! [`Certs::generate_for`] is given other names (to prove that `verify-full` checks them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context};

/// The server names [`Certs::generate`] puts in the server certificate.
pub const LOOPBACK_NAMES: &[&str] = &["DNS:localhost", "IP:127.0.0.1", "IP:::1"];

/// PEM files in one directory (which the caller owns and removes).
#[derive(Debug, Clone)]
pub struct Certs {
    /// The CA certificate: what a client trusts.
    pub ca_pem: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The server certificate (leaf only).
    pub server_cert: PathBuf,
    /// Its key (PKCS#8, unencrypted).
    pub server_key: PathBuf,
    /// A client certificate (`CN=postgres`, clientAuth) signed by the same CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ryze-events test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = ${ENV::RYZE_SAN}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Certs {
    /// A fresh CA, server and client certificate in `dir` (created if missing), the server
    /// certificate valid for the loopback names. Blocking (runs `openssl` a few times).
    pub fn generate(dir: &Path) -> anyhow::Result<Certs> {
        Certs::generate_for(dir, LOOPBACK_NAMES)
    }

    /// Like [`Certs::generate`] with the server certificate's subjectAltNames, in OpenSSL
    /// syntax (`DNS:db.internal`, `IP:10.0.0.1`).
    pub fn generate_for(dir: &Path, names: &[&str]) -> anyhow::Result<Certs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF).context("writing openssl.cnf")?;
        let certs = Certs {
            ca_pem: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        let san = names.join(",");
        let openssl = |args: &[&str]| run_openssl(dir, &cnf, &san, args);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let p = |p: &Path| p.to_string_lossy().into_owned();
        let (ca_pem, ca_key) = (p(&certs.ca_pem), p(&certs.ca_key));
        openssl(
            &[
                &["req", "-x509", "-days", "30", "-extensions", "ca_ext"][..],
                &ec,
                &[
                    "-subj",
                    "/CN=ryze-events test CA",
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca_pem,
                ],
            ]
            .concat(),
        )?;
        for (cert, key, cn, ext, serial) in [
            (
                &certs.server_cert,
                &certs.server_key,
                "localhost",
                "server_ext",
                "1001",
            ),
            (
                &certs.client_cert,
                &certs.client_key,
                "postgres",
                "client_ext",
                "1002",
            ),
        ] {
            let csr = p(&cert.with_extension("csr"));
            let (cert, key) = (p(cert), p(key));
            let subj = format!("/CN={cn}");
            openssl(
                &[
                    &["req", "-new"][..],
                    &ec,
                    &["-subj", &subj, "-keyout", &key, "-out", &csr],
                ]
                .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-set_serial",
                serial,
                "-days",
                "30",
                "-extfile",
                &p(&cnf),
                "-extensions",
                ext,
                "-out",
                &cert,
            ])?;
        }
        Ok(certs)
    }

    /// A rustls server config presenting the server certificate (for in-test TLS servers).
    pub fn rustls_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&self.server_cert)
            .context("server certificate")?
            .collect::<Result<Vec<_>, _>>()
            .context("server certificate PEM")?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key).context("server key")?;
        let config = rustls::ServerConfig::builder_with_provider(ryze_core::trust::provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("server certificate and key")?;
        Ok(Arc::new(config))
    }
}

fn run_openssl(dir: &Path, cnf: &Path, san: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .args(if matches!(args.first(), Some(&"req")) {
            vec!["-config".to_owned(), cnf.to_string_lossy().into_owned()]
        } else {
            Vec::new()
        })
        .env("RYZE_SAN", san)
        .current_dir(dir)
        .output()
        .context("running openssl (run scripts/install-test-deps.sh)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

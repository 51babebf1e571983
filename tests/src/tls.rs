//! Throwaway certificates for TLS tests, made with the `openssl` CLI in a temp dir.
//!
//! [`TestCerts::generate`] makes a CA, a server certificate for `localhost` and `127.0.0.1`
//! (server and client use, as Redis also uses it for its own outgoing links) and a client
//! certificate, all P-256 keys valid for two days. A second `generate()` gives an unrelated
//! CA: the "wrong CA" of a test. The files live as long as the value.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Extensions of the server certificate (`-extfile`).
const SERVER_EXT: &str = "basicConstraints=CA:FALSE\n\
keyUsage=critical,digitalSignature\n\
extendedKeyUsage=serverAuth,clientAuth\n\
subjectAltName=DNS:localhost,IP:127.0.0.1\n";
/// Extensions of the client certificate.
const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\n\
keyUsage=critical,digitalSignature\n\
extendedKeyUsage=clientAuth\n";

/// A CA with one server and one client certificate, as PEM files in a temp dir.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    /// Makes the CA and both certificates (a few `openssl` runs, well under a second).
    pub async fn generate() -> anyhow::Result<TestCerts> {
        let dir = tempfile::Builder::new()
            .prefix("ryze-certs-")
            .tempdir()
            .context("creating the certificate dir")?;
        let d = dir.path();
        std::fs::write(d.join("server.ext"), SERVER_EXT)?;
        std::fs::write(d.join("client.ext"), CLIENT_EXT)?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ryze test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca).await?;
        for (name, cn) in [("server", "localhost"), ("client", "ryze-test-client")] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={cn}");
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &req).await?;
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            )
            .await?;
        }
        Ok(TestCerts { dir })
    }

    /// The dir holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate (what `REDIS_TLS_CA_FILE` names).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (`localhost`, `127.0.0.1`).
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client certificate (`REDIS_TLS_CERT_FILE`).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }

    /// The client's private key (`REDIS_TLS_KEY_FILE`).
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }

    /// `REDIS_TLS_CA_FILE` (and, with `client_cert`, the client pair) as service settings.
    pub fn redis_env(&self, client_cert: bool) -> Vec<(&'static str, String)> {
        let mut env = vec![("REDIS_TLS_CA_FILE", path_str(&self.ca()))];
        if client_cert {
            env.push(("REDIS_TLS_CERT_FILE", path_str(&self.client_cert())));
            env.push(("REDIS_TLS_KEY_FILE", path_str(&self.client_key())));
        }
        env
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .context("running openssl (run scripts/install-test-deps.sh)")?;
    if !out.status.success() {
        bail!(
            "openssl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

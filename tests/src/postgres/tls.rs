//! The TLS side of the private Postgres: certificate files and `pg_hba.conf` for
//! [`super::PgServer::start_private_tls`], and the harness's own connections (TLS without
//! verification when the server refuses plain TCP).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::certs::Certs;

/// Connects (with TLS, unverified, when `tls`) and drives the connection on the current
/// runtime.
pub(super) async fn connect(url: &str, tls: bool) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("harness URL")?;
    if !tls {
        return drive(config.connect(NoTls).await, url);
    }
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let verifier = Arc::new(ryze_core::trust::EncryptOnly::default());
    let connector = MakeRustlsConnect::new(ryze_core::trust::client_config(verifier));
    drive(config.connect(connector).await, url)
}

fn drive<S, T>(
    connected: Result<
        (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
        tokio_postgres::Error,
    >,
    url: &str,
) -> anyhow::Result<tokio_postgres::Client>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = connected.with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        // The error surfaces on the client's next query; nothing to add here.
        let _ = connection.await;
    });
    Ok(client)
}

/// Copies the server certificate and key where postgres wants them (the key 0600 and owned by
/// the server's user, or postgres refuses it), makes `pg_hba.conf` TLS-only on TCP, and
/// returns the settings that turn TLS on.
pub(super) fn enable_tls(
    dir: &Path,
    data: &Path,
    certs: &Certs,
    user: Option<(u32, u32)>,
) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::copy(&certs.server_cert, &cert).context("copying the server certificate")?;
    std::fs::copy(&certs.server_key, &key).context("copying the server key")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .context("chmod server.key")?;
    let hba = data.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\n\
         hostssl all all 127.0.0.1/32 trust\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .context("writing pg_hba.conf")?;
    if let Some((uid, gid)) = user {
        for f in [&cert, &key, &hba] {
            std::os::unix::fs::chown(f, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", f.display()))?;
        }
    }
    Ok(vec![
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", cert.display()),
        format!("ssl_key_file={}", key.display()),
    ])
}

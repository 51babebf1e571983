use super::*;

const SECRET: &str = "s3cr?t";

fn url(params: &str) -> String {
    format!("postgres://app:s3cr%3Ft@db.example:5432/ryze{params}")
}

#[test]
fn url_form_loses_exactly_the_tls_parameters() {
    let s = split_tls_params(&url(
        "?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3",
    ))
    .expect("splits");
    assert_eq!(s.sslmode.as_deref(), Some("verify-full"));
    assert_eq!(s.sslrootcert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(s.rest, url("?application_name=x&connect_timeout=3"));
    assert_eq!(
        s.keys,
        [
            "application_name",
            "sslmode",
            "sslrootcert",
            "connect_timeout"
        ]
    );

    let s = split_tls_params(&url("?sslmode=require")).expect("splits");
    assert_eq!(s.rest, url(""));
    let plain = split_tls_params(&url("")).expect("splits");
    assert_eq!((plain.rest, plain.sslmode), (url(""), None));
}

#[test]
fn a_question_mark_in_the_password_is_not_the_query() {
    let raw = "postgresql://app:pa?ss@db/ryze?sslmode=disable";
    let s = split_tls_params(raw).expect("splits");
    assert_eq!(s.rest, "postgresql://app:pa?ss@db/ryze");
    assert_eq!(s.sslmode.as_deref(), Some("disable"));
}

#[test]
fn keyword_form_loses_exactly_the_tls_parameters() {
    let s = split_tls_params(
        "host=db user=app password='it\\'s secret' sslmode = verify-ca sslrootcert='/a b/ca.pem' dbname=ryze",
    )
    .expect("splits");
    assert_eq!(s.sslmode.as_deref(), Some("verify-ca"));
    assert_eq!(s.sslrootcert.as_deref(), Some("/a b/ca.pem"));
    let config: tokio_postgres::Config = s.rest.parse().expect("tokio-postgres parses the rest");
    assert_eq!(config.get_dbname(), Some("ryze"));
    assert_eq!(config.get_password(), Some(&b"it's secret"[..]));
    assert!(matches!(
        split_tls_params("host=db sslmode='verify-full"),
        Err(DatabaseUrlError::Syntax(_))
    ));
    assert!(matches!(
        split_tls_params("host"),
        Err(DatabaseUrlError::Syntax(_))
    ));
}

#[test]
fn unknown_sslmode_is_refused_without_echoing_the_url() {
    for raw in [
        url("?sslmode=bogus"),
        format!("password={SECRET} sslmode=bogus"),
    ] {
        let e = DatabaseTarget::parse(&raw).expect_err("bogus sslmode");
        assert!(
            matches!(e, DatabaseUrlError::SslMode(ref m) if m == "bogus"),
            "{e}"
        );
        assert!(!e.to_string().contains(SECRET), "{e}");
    }
}

#[test]
fn defaults_follow_libpq_and_keepalives_are_set() {
    let t = DatabaseTarget::parse(&url("")).expect("parses");
    assert_eq!(t.ssl_mode(), SslMode::Prefer);
    let c = t.config();
    assert!(c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), KEEPALIVE_IDLE);
    assert_eq!(c.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
    assert_eq!(c.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
    assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);

    let t = DatabaseTarget::parse(&url("?keepalives_idle=60&sslmode=require")).expect("parses");
    assert_eq!(t.config().get_keepalives_idle(), Duration::from_secs(60));
    assert_eq!(
        t.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    let t = DatabaseTarget::parse(&url("?sslmode=disable")).expect("parses");
    assert_eq!(
        t.config().get_ssl_mode(),
        tokio_postgres::config::SslMode::Disable
    );
}

#[test]
fn an_unreadable_root_certificate_is_a_configuration_problem() {
    let e = DatabaseTarget::parse(&url("?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"))
        .expect_err("missing CA file");
    assert!(matches!(e, DatabaseUrlError::RootCert(_)), "{e}");
    // require with a root certificate verifies the chain (libpq), so the file must be usable.
    assert!(
        DatabaseTarget::parse(&url("?sslmode=require&sslrootcert=/nonexistent/ca.pem")).is_err()
    );
    // require without one reads nothing.
    assert!(DatabaseTarget::parse(&url("?sslmode=require")).is_ok());
}

#[test]
fn system_roots_demand_verify_full_as_in_libpq() {
    let e = DatabaseTarget::parse(&url("?sslmode=require&sslrootcert=system")).expect_err("weak");
    assert!(
        matches!(e, DatabaseUrlError::WeakSystemRoots("require")),
        "{e}"
    );
}

#[test]
fn debug_output_never_shows_the_password() {
    let t = DatabaseTarget::parse(&url("?sslmode=require")).expect("parses");
    assert!(!format!("{t:?}").contains("s3cr"), "{t:?}");
}

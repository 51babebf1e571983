use super::*;
use crate::redis::Topology;

fn database(url: Option<&str>) -> DatabaseSettings {
    DatabaseSettings {
        url: url.map(|u| SecretString::from(u.to_owned())),
        pool_size: 16,
        encryption_key: None,
    }
}

fn redis(url: Option<&str>) -> RedisSettings {
    RedisSettings {
        url: url.map(|u| SecretString::from(u.to_owned())),
        tls_ca_file: None,
        tls_cert_file: None,
        tls_key_file: None,
        prefix: "ryze".to_owned(),
        stall_timeout: Duration::from_secs(3),
    }
}

fn ingest(key: Option<&str>, base_url: Option<&str>) -> IngestSettings {
    IngestSettings {
        api_key: key.map(|k| SecretString::from(k.to_owned())),
        base_url: base_url.map(str::to_owned),
        max_bytes: 1024,
    }
}

#[test]
fn a_missing_database_url_is_the_one_problem_reported() {
    let problems = database(None).validate().expect_err("no URL");
    assert_eq!(problems, ["DATABASE_URL is required"]);
}

#[test]
fn a_bad_key_and_an_empty_pool_are_reported_with_the_url_problem() {
    let mut settings = database(Some("postgres://u@db/x?sslmode=bogus"));
    settings.encryption_key = Some(SecretString::from("c2hvcnQ=".to_owned()));
    settings.pool_size = 0;
    let problems = settings.validate().expect_err("three problems");
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("bogus"), "{problems:?}");
    assert!(problems[1].contains("ENCRYPTION_KEY"), "{problems:?}");
    assert_eq!(problems[2], "DATABASE_POOL_SIZE must be greater than 0");
}

#[test]
fn a_valid_database_url_yields_a_database_that_opens_without_a_server() {
    let db = database(Some("postgres://u:hunter2@127.0.0.1:1/x?sslmode=disable"))
        .validate()
        .expect("valid");
    assert_eq!(db.pool_size, 16);
    assert!(!format!("{db:?}").contains("hunter2"), "{db:?}");
    // The pool connects lazily: opening needs no Postgres.
    let store = db.open().expect("opens");
    assert!(!store.tls_failing());
}

#[test]
fn an_unset_redis_url_validates_to_no_target() {
    let r = redis(None).validate(false).expect("valid");
    assert!(r.target.is_none());
    assert_eq!(r.prefix, "ryze");
}

#[test]
fn a_valid_redis_url_yields_a_target_with_the_stall_timeout_applied() {
    let mut settings = redis(Some("redis-cluster://a:1,b:2"));
    settings.stall_timeout = Duration::from_millis(250);
    let r = settings.validate(false).expect("valid");
    let target = r.target.as_ref().expect("a target");
    assert_eq!(target.topology, Topology::Cluster);
    assert_eq!(target.stall_timeout, Duration::from_millis(250));
    let region = r.prepare(RedisTarget::parse("redis://c:3").expect("parses"));
    assert_eq!(region.stall_timeout, Duration::from_millis(250));
}

#[test]
fn redis_problems_name_the_setting_and_never_the_password() {
    let mut settings = redis(Some("http://u:hunter2@a"));
    settings.stall_timeout = Duration::from_millis(1);
    let problems = settings.validate(false).expect_err("two problems");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].starts_with("REDIS_URL: "), "{problems:?}");
    assert!(!problems[0].contains("hunter2"), "{problems:?}");
    assert_eq!(problems[1], "REDIS_STALL_TIMEOUT must be at least 30ms");
}

#[test]
fn an_unreadable_redis_ca_file_is_a_problem_when_a_url_uses_tls() {
    let mut settings = redis(Some("rediss://a:6380"));
    settings.tls_ca_file = Some(PathBuf::from("/nope/ca.pem"));
    let problems = settings.validate(false).expect_err("unreadable CA");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("REDIS_TLS_CA_FILE: ") && problems[0].contains("/nope/ca.pem"),
        "{problems:?}"
    );
    // A region's TLS URL needs the files as much as REDIS_URL's would.
    let mut plain = redis(None);
    plain.tls_ca_file = Some(PathBuf::from("/nope/ca.pem"));
    assert!(plain.validate(true).is_err());
}

#[test]
fn missing_ingest_settings_are_each_reported_with_the_suffix() {
    let problems = ingest(None, None)
        .validate(" with EMBEDDED_PUBLISHER=true")
        .expect_err("both missing");
    assert_eq!(
        problems,
        [
            "PUBLISHER_API_KEY is required with EMBEDDED_PUBLISHER=true",
            "PUBLIC_BASE_URL is required with EMBEDDED_PUBLISHER=true",
        ]
    );
    // An empty key is no key.
    let problems = ingest(Some(""), Some("https://a"))
        .validate("")
        .expect_err("empty key");
    assert_eq!(problems, ["PUBLISHER_API_KEY is required"]);
}

#[test]
fn valid_ingest_settings_yield_the_key_base_url_and_size() {
    let i = ingest(Some("k"), Some("https://a.example"))
        .validate("")
        .expect("valid");
    assert_eq!(i.api_key.expose_secret(), "k");
    assert_eq!(i.base_url, "https://a.example");
    assert_eq!(i.max_bytes, 1024);
}

use super::connection::tcp_config;
use super::*;

fn sentinel_hosts(t: &RedisTarget) -> Vec<String> {
    match &t.config.server {
        ServerConfig::Sentinel { hosts, .. } => {
            let mut v: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        }
        other => panic!("not a sentinel config: {other:?}"),
    }
}

#[test]
fn cluster_urls_list_their_nodes() {
    let t = RedisTarget::parse("redis-cluster://127.0.0.1:7000,127.0.0.1:7001").unwrap();
    assert!(t.clustered);
    assert!(!t.tls);
    assert!(
        matches!(t.config.server, ServerConfig::Clustered { ref hosts, .. } if hosts.len() == 2)
    );
    let plain = RedisTarget::parse("redis://127.0.0.1:6379").unwrap();
    assert!(!plain.clustered);
    assert_eq!(plain.topology, Topology::Standalone);
    assert_eq!(
        RedisTarget::parse("http://x").unwrap_err(),
        RedisUrlError::Scheme
    );
    assert!(matches!(
        RedisTarget::parse("redis-cluster://nohost"),
        Err(RedisUrlError::BadNode { .. })
    ));
    assert!(matches!(
        RedisTarget::parse("redis-cluster://"),
        Err(RedisUrlError::NoHosts { .. })
    ));
}

#[test]
fn tls_schemes_ask_for_tls_without_reading_anything() {
    for url in [
        "rediss://h:6380",
        "rediss-cluster://a:1,b:2",
        "rediss-sentinel://s1:26379?sentinelServiceName=m",
    ] {
        let t = RedisTarget::parse(url).unwrap();
        assert!(t.tls, "{url}");
        // Installed later, from the configured files.
        assert!(t.config.tls.is_none(), "{url}");
    }
    let t = RedisTarget::parse("rediss-cluster://a:1,b:2").unwrap();
    assert!(t.clustered);
    assert!(!RedisTarget::parse("redis://h").unwrap().tls);
    // A plain URL never reads the TLS files.
    let files = TlsFiles {
        ca: Some("/nonexistent/ca.pem".into()),
        ..TlsFiles::default()
    };
    assert!(RedisTarget::parse("redis://h")
        .unwrap()
        .with_tls_files(&files)
        .is_ok());
    assert!(RedisTarget::parse("rediss://h")
        .unwrap()
        .with_tls_files(&files)
        .is_err());
}

#[test]
fn sentinel_urls_take_a_host_list_credentials_and_a_service_name() {
    let t = RedisTarget::parse(
        "redis-sentinel://user:p%40ss@10.0.0.1:26379,10.0.0.2,10.0.0.3:26380/2\
         ?sentinelServiceName=mymaster&sentinelUsername=su&sentinelPassword=sp",
    )
    .unwrap();
    assert_eq!(t.topology, Topology::Sentinel);
    assert!(!t.clustered);
    assert_eq!(
        sentinel_hosts(&t),
        ["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380"]
    );
    assert_eq!(t.config.username.as_deref(), Some("user"));
    assert_eq!(t.config.password.as_deref(), Some("p@ss"));
    assert_eq!(t.config.database, Some(2));
    match &t.config.server {
        ServerConfig::Sentinel {
            service_name,
            username,
            password,
            ..
        } => {
            assert_eq!(service_name, "mymaster");
            assert_eq!(username.as_deref(), Some("su"));
            assert_eq!(password.as_deref(), Some("sp"));
        }
        other => panic!("{other:?}"),
    }
    // fred's own form (extra sentinels as node=) is accepted as is.
    let t =
        RedisTarget::parse("redis-sentinel://a:1?sentinelServiceName=m&node=b:2&node=c:3").unwrap();
    assert_eq!(sentinel_hosts(&t), ["a:1", "b:2", "c:3"]);
}

#[test]
fn errors_never_repeat_a_password() {
    for url in [
        "redis-sentinel://u:hunter2@a:1,b:2",
        "redis-sentinel://u:hunter2@a:1,b:x?sentinelServiceName=m",
        "rediss-cluster://u:hunter2@a:1,b",
        "redis://u:hunter2@h:notaport",
        "rediss://u:hunter2@h/notadb",
        "unix://u:hunter2@h",
    ] {
        let e = RedisTarget::parse(url).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{url}: {e}");
    }
    assert!(matches!(
        RedisTarget::parse("redis-sentinel://a:1,b:2"),
        Err(RedisUrlError::NoServiceName { .. })
    ));
}

#[test]
fn every_connection_gets_keepalive_and_nodelay() {
    let tcp = tcp_config();
    assert_eq!(tcp.nodelay, Some(true));
    assert!(tcp.keepalive.is_some());
}

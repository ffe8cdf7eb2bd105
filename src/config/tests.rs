//! Tests of loading, overriding and validating the configuration.

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str("", env(pairs))
}

fn refused(text: &str) -> String {
    match Config::from_toml_str(text, env(&[])) {
        Ok(config) => panic!("accepted {text:?}: {config:?}"),
        Err(err) => err.to_string(),
    }
}

fn refused_env(pairs: &[(&str, &str)]) -> String {
    match with_env(pairs) {
        Ok(config) => panic!("accepted {pairs:?}: {config:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn defaults() {
    let config = Config::load(None, env(&[])).expect("defaults are valid");
    assert!(config.node.id.starts_with("node-"));
    assert_eq!(config.node.id.len(), 13);
    let suffix = &config.node.id[5..];
    assert!(suffix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(config.node.region, "local");
    assert_eq!(
        config.http.listen,
        "0.0.0.0:7880"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
    );
    assert_eq!(config.media, MediaConfig::default());
    assert_eq!(config.media.bind_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(config.media.port_range(), None);
    assert!(config.cluster.etcd_endpoints.is_empty());
    assert!(config.auth.keys.is_empty());
    assert!(!config.auth.dev_mode);
    assert_eq!(config.room.empty_timeout, Duration::from_secs(20));
    assert_eq!(config.room.max_participants, 100);
    assert_eq!(config.signaling.max_message_bytes, 65_536);
    assert_eq!(config.signaling.rate_per_sec, 50);
    assert_eq!(config.signaling.rate_burst, 100);
    assert_eq!(config.log.level, "info");
}

#[test]
fn empty_file_gives_defaults() {
    let config = Config::from_toml_str("", env(&[])).expect("empty file");
    let mut expected = Config::default();
    expected.node.id = config.node.id.clone();
    assert_eq!(config, expected);
}

#[test]
fn random_node_ids_differ() {
    assert_ne!(random_node_id(), random_node_id());
}

#[test]
fn full_file() {
    let text = format!(
        r#"
        [node]
        id = "edge-1"
        region = "eu-west"
        [http]
        listen = "127.0.0.1:9000"
        [media]
        bind_ip = "10.0.0.5"
        udp_port_min = 50000
        udp_port_max = 50100
        public_ip = "203.0.113.7"
        [cluster]
        etcd_endpoints = ["http://etcd-1:2379", "http://etcd-2:2379"]
        cascade_listen = "10.0.0.5:7881"
        cascade_secret = "{SECRET}"
        [auth]
        dev_mode = true
        [auth.keys]
        prod = "{SECRET}"
        [room]
        empty_timeout_secs = 45
        max_participants = 8
        [signaling]
        max_message_bytes = 4096
        rate_per_sec = 10
        rate_burst = 20
        [log]
        level = "relais=debug,info"
        "#
    );
    let config = Config::from_toml_str(&text, env(&[])).expect("full file");
    assert_eq!(config.node.id, "edge-1");
    assert_eq!(config.node.region, "eu-west");
    assert_eq!(
        config.http.listen,
        "127.0.0.1:9000"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
    );
    assert_eq!(
        config.media.bind_ip,
        "10.0.0.5".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(config.media.port_range(), Some(50000..=50100));
    assert_eq!(
        config.media.public_ip,
        Some("203.0.113.7".parse().expect("ip"))
    );
    assert_eq!(config.cluster.etcd_endpoints.len(), 2);
    assert_eq!(
        config.auth.keys.get("prod").map(String::as_str),
        Some(SECRET)
    );
    assert!(config.auth.dev_mode);
    assert_eq!(config.room.empty_timeout, Duration::from_secs(45));
    assert_eq!(config.room.max_participants, 8);
    assert_eq!(config.signaling.max_message_bytes, 4096);
    assert_eq!(config.signaling.rate_per_sec, 10);
    assert_eq!(config.signaling.rate_burst, 20);
    assert_eq!(config.log.level, "relais=debug,info");
}

#[test]
fn example_file_loads() {
    let text = include_str!("../../config/relais.toml");
    let config = Config::from_toml_str(text, env(&[])).expect("example config");
    assert!(config.auth.dev_mode);
    assert!(config.auth.keys["devkey"].len() >= 40);
    assert_eq!(
        config.http.listen,
        "0.0.0.0:7880"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
    );
}

#[test]
fn load_reads_a_file() {
    let path = std::env::temp_dir().join(format!("relais-cfg-{}.toml", random_node_id()));
    std::fs::write(&path, "[room]\nmax_participants = 3\n").expect("write temp file");
    let loaded = Config::load(Some(&path), env(&[]));
    let _ = std::fs::remove_file(&path);
    assert_eq!(loaded.expect("loads").room.max_participants, 3);
}

#[test]
fn load_names_a_missing_file() {
    let path = Path::new("/nonexistent/relais.toml");
    let err = Config::load(Some(path), env(&[])).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/relais.toml"));
}

#[test]
fn env_node_and_region() {
    let config = with_env(&[("RELAIS_NODE_ID", "n7"), ("RELAIS_REGION", "us")]).expect("ok");
    assert_eq!(config.node.id, "n7");
    assert_eq!(config.node.region, "us");
}

#[test]
fn env_http_listen() {
    let config = with_env(&[("RELAIS_HTTP_LISTEN", "[::1]:8080")]).expect("ok");
    assert_eq!(
        config.http.listen,
        "[::1]:8080".parse::<std::net::SocketAddr>().expect("addr")
    );
}

#[test]
fn env_media() {
    let config = with_env(&[
        ("RELAIS_MEDIA_BIND_IP", "192.168.1.2"),
        ("RELAIS_MEDIA_UDP_PORTS", "40000-40010"),
        ("RELAIS_MEDIA_PUBLIC_IP", "198.51.100.1"),
    ])
    .expect("ok");
    assert_eq!(
        config.media.bind_ip,
        "192.168.1.2".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(config.media.port_range(), Some(40000..=40010));
    assert_eq!(
        config.media.public_ip,
        Some("198.51.100.1".parse().expect("ip"))
    );
}

#[test]
fn env_empty_public_ip_unsets() {
    let text = "[media]\npublic_ip = \"203.0.113.7\"\n";
    let config = Config::from_toml_str(text, env(&[("RELAIS_MEDIA_PUBLIC_IP", "")]));
    assert_eq!(config.expect("ok").media.public_ip, None);
}

#[test]
fn env_udp_ports_zero_is_ephemeral() {
    let text = "[media]\nudp_port_min = 1000\nudp_port_max = 2000\n";
    let config = Config::from_toml_str(text, env(&[("RELAIS_MEDIA_UDP_PORTS", "0")]));
    assert_eq!(config.expect("ok").media.port_range(), None);
}

#[test]
fn env_etcd_endpoints() {
    let value = "http://a:2379, http://b:2379";
    let config = with_env(&[
        ("RELAIS_ETCD_ENDPOINTS", value),
        ("RELAIS_CASCADE_SECRET", SECRET),
    ])
    .expect("ok");
    assert_eq!(
        config.cluster.etcd_endpoints,
        ["http://a:2379", "http://b:2379"]
    );
}

#[test]
fn env_cluster_settings() {
    let config = with_env(&[
        ("RELAIS_ADVERTISE_URL", "wss://par-1.example.org"),
        ("RELAIS_LEASE_TTL_SECS", "3"),
        ("RELAIS_DRAIN_GRACE_SECS", "0"),
    ])
    .expect("ok");
    assert_eq!(
        config.cluster.advertise_url.as_deref(),
        Some("wss://par-1.example.org")
    );
    assert_eq!(config.cluster.lease_ttl, Duration::from_secs(3));
    assert_eq!(config.cluster.drain_grace, Duration::ZERO);
    let unset = with_env(&[("RELAIS_ADVERTISE_URL", "")]).expect("ok");
    assert_eq!(unset.cluster.advertise_url, None);
}

#[test]
fn refuses_bad_cluster_settings() {
    assert!(refused("[cluster]\nlease_ttl_secs = 1\n").contains("cluster.lease_ttl_secs"));
    assert!(refused("[cluster]\nlease_ttl_secs = 61\n").contains("cluster.lease_ttl_secs"));
    assert!(refused("[cluster]\nprefix = \"relais\"\n").contains("cluster.prefix"));
    assert!(refused("[cluster]\nprefix = \"/relais/\"\n").contains("cluster.prefix"));
    let url = refused("[cluster]\nadvertise_url = \"http://a:7880\"\n");
    assert!(url.contains("cluster.advertise_url"), "{url}");
    let env = refused_env(&[("RELAIS_LEASE_TTL_SECS", "soon")]);
    assert!(env.contains("RELAIS_LEASE_TTL_SECS"), "{env}");
    let no_secret = refused("[cluster]\netcd_endpoints = [\"http://e:2379\"]\n");
    assert!(no_secret.contains("cluster.cascade_secret"), "{no_secret}");
    let short = refused_env(&[("RELAIS_CASCADE_SECRET", "short")]);
    assert!(short.contains("cascade_secret"), "{short}");
    // The secret never shows in debug output.
    let config = with_env(&[("RELAIS_CASCADE_SECRET", SECRET)]).expect("ok");
    assert!(!format!("{config:?}").contains(SECRET));
}

#[test]
fn env_api_keys_replace_file_keys() {
    let text = format!("[auth.keys]\nold = \"{SECRET}\"\n");
    let value = format!("k1:{SECRET},k2:{SECRET}:x");
    let config = Config::from_toml_str(&text, env(&[("RELAIS_API_KEYS", &value)]));
    let keys = config.expect("ok").auth.keys;
    assert_eq!(keys.keys().collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(keys["k2"], format!("{SECRET}:x"));
}

#[test]
fn env_dev_mode() {
    for (value, expected) in [("true", true), ("1", true), ("FALSE", false), ("0", false)] {
        let config = with_env(&[("RELAIS_DEV_MODE", value)]).expect("ok");
        assert_eq!(config.auth.dev_mode, expected, "{value}");
    }
}

#[test]
fn bandwidth_adaptation_is_on_and_pausing_for_it_off_unless_set() {
    let defaults = with_env(&[]).expect("ok");
    assert!(defaults.media.bandwidth_adaptation);
    assert!(!defaults.media.pause_for_bandwidth);
    let config = with_env(&[
        ("RELAIS_MEDIA_BANDWIDTH_ADAPTATION", "false"),
        ("RELAIS_MEDIA_PAUSE_FOR_BANDWIDTH", "true"),
    ])
    .expect("ok");
    assert!(!config.media.bandwidth_adaptation);
    assert!(config.media.pause_for_bandwidth);
    let err = with_env(&[("RELAIS_MEDIA_PAUSE_FOR_BANDWIDTH", "often")]).expect_err("refused");
    assert!(
        err.to_string().contains("RELAIS_MEDIA_PAUSE_FOR_BANDWIDTH"),
        "{err}"
    );
}

#[test]
fn env_room() {
    let config = with_env(&[
        ("RELAIS_ROOM_EMPTY_TIMEOUT_SECS", "5"),
        ("RELAIS_ROOM_MAX_PARTICIPANTS", "12"),
        ("RELAIS_ROOM_LAST_N", "4"),
        ("RELAIS_ROOM_LAST_N_ABOVE", "6"),
        ("RELAIS_ROOM_AUDIO_LAST_N", "2"),
    ])
    .expect("ok");
    assert_eq!(config.room.empty_timeout, Duration::from_secs(5));
    assert_eq!(config.room.max_participants, 12);
    assert_eq!((config.room.last_n, config.room.last_n_above), (4, 6));
    assert_eq!(config.room.audio_last_n, 2);
}

#[test]
fn env_signaling() {
    let config = with_env(&[
        ("RELAIS_SIGNALING_MAX_MESSAGE_BYTES", "2048"),
        ("RELAIS_SIGNALING_RATE_PER_SEC", "7"),
        ("RELAIS_SIGNALING_RATE_BURST", "9"),
    ])
    .expect("ok");
    assert_eq!(config.signaling.max_message_bytes, 2048);
    assert_eq!(config.signaling.rate_per_sec, 7);
    assert_eq!(config.signaling.rate_burst, 9);
}

#[test]
fn env_log() {
    let config = with_env(&[("RELAIS_LOG", "debug")]).expect("ok");
    assert_eq!(config.log.level, "debug");
}

#[test]
fn env_metrics_listen() {
    let config = with_env(&[("RELAIS_METRICS_LISTEN", "0.0.0.0:9100")]).expect("ok");
    assert_eq!(
        config.metrics.listen,
        "0.0.0.0:9100".parse::<std::net::SocketAddr>().unwrap()
    );
    assert!(refused_env(&[("RELAIS_METRICS_LISTEN", "nope")]).contains("RELAIS_METRICS_LISTEN"));
}

#[test]
fn metrics_listen_defaults_to_loopback() {
    let config = Config::from_toml_str("", env(&[])).expect("ok");
    assert_eq!(
        config.metrics.listen,
        "127.0.0.1:9464".parse::<std::net::SocketAddr>().unwrap()
    );
}

#[test]
fn env_overrides_file() {
    let text = "[room]\nmax_participants = 3\n";
    let pairs = [("RELAIS_ROOM_MAX_PARTICIPANTS", "4")];
    let config = Config::from_toml_str(text, env(&pairs)).expect("ok");
    assert_eq!(config.room.max_participants, 4);
}

#[test]
fn unknown_env_vars_are_ignored() {
    let pairs = [
        ("RELAIS_CONFIG", "/etc/relais.toml"),
        ("RELAIS_NOPE", "x"),
        ("PATH", "/"),
    ];
    assert!(with_env(&pairs).is_ok());
}

#[test]
fn env_names_are_listed() {
    assert!(env_var_names().any(|name| name == "RELAIS_API_KEYS"));
    assert!(!env_var_names().any(|name| name == CONFIG_PATH_VAR));
}

#[test]
fn refuses_unparseable_env_values() {
    let cases = [
        ("RELAIS_HTTP_LISTEN", "localhost"),
        ("RELAIS_MEDIA_BIND_IP", "nope"),
        ("RELAIS_MEDIA_UDP_PORTS", "50000"),
        ("RELAIS_MEDIA_UDP_PORTS", "1-70000"),
        ("RELAIS_MEDIA_PUBLIC_IP", "host"),
        ("RELAIS_API_KEYS", "nocolon"),
        ("RELAIS_DEV_MODE", "yes"),
        ("RELAIS_ROOM_EMPTY_TIMEOUT_SECS", "-1"),
        ("RELAIS_ROOM_MAX_PARTICIPANTS", "many"),
        ("RELAIS_SIGNALING_MAX_MESSAGE_BYTES", "1k"),
        ("RELAIS_SIGNALING_RATE_PER_SEC", "x"),
        ("RELAIS_SIGNALING_RATE_BURST", "x"),
    ];
    for (var, value) in cases {
        let message = refused_env(&[(var, value)]);
        assert!(message.contains(var), "{message}");
        assert!(message.contains("expected"), "{message}");
    }
}

#[test]
fn refuses_duplicate_env_api_key_without_echoing_secrets() {
    let value = format!("a:{SECRET},a:{SECRET}");
    let message = refused_env(&[("RELAIS_API_KEYS", &value)]);
    assert!(message.contains("RELAIS_API_KEYS"), "{message}");
    assert!(!message.contains(SECRET), "{message}");
}

#[test]
fn refuses_invalid_env_values_naming_the_variable() {
    let message = refused_env(&[("RELAIS_ROOM_MAX_PARTICIPANTS", "0")]);
    assert!(
        message.contains("RELAIS_ROOM_MAX_PARTICIPANTS"),
        "{message}"
    );
    assert!(message.contains("room.max_participants"), "{message}");

    let message = refused_env(&[("RELAIS_API_KEYS", "k:short")]);
    assert!(message.contains("RELAIS_API_KEYS"), "{message}");
    assert!(message.contains("auth.keys.k"), "{message}");
    assert!(!message.contains("short"), "{message}");

    let message = refused_env(&[("RELAIS_NODE_ID", "has space")]);
    assert!(message.contains("RELAIS_NODE_ID"), "{message}");
    assert!(message.contains("node.id"), "{message}");
}

#[test]
fn refuses_bad_toml_with_line() {
    let message = refused("[node]\nid = \"a\"\nregion = \n");
    assert!(message.contains("invalid TOML"), "{message}");
    assert!(message.contains("line 3"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn refuses_wrong_type() {
    let message = refused("[media]\nudp_port_min = \"x\"\n");
    assert!(message.contains("media.udp_port_min"), "{message}");
    assert!(message.contains("line 2"), "{message}");

    let message = refused("[room]\nempty_timeout_secs = -3\n");
    assert!(message.contains("room.empty_timeout_secs"), "{message}");
}

#[test]
fn refuses_unknown_keys() {
    let message = refused("[media]\nudp_port = 5\n");
    assert!(message.contains("media.udp_port"), "{message}");
    assert!(message.contains("unknown field"), "{message}");

    let message = refused("[nope]\n");
    assert!(message.contains("nope"), "{message}");
}

#[test]
fn refuses_invalid_socket_address() {
    let message = refused("[http]\nlisten = \"localhost\"\n");
    assert!(message.contains("http.listen"), "{message}");
}

#[test]
fn refuses_invalid_ip() {
    let message = refused("[media]\nbind_ip = \"1.2.3\"\n");
    assert!(message.contains("media.bind_ip"), "{message}");

    let message = refused("[media]\npublic_ip = \"0.0.0.0\"\n");
    assert!(message.contains("media.public_ip"), "{message}");
}

#[test]
fn refuses_bad_port_ranges() {
    let message = refused("[media]\nudp_port_min = 6000\nudp_port_max = 5000\n");
    assert!(message.contains("media.udp_port_min"), "{message}");

    let message = refused("[media]\nudp_port_min = 6000\n");
    assert!(message.contains("media.udp_port_max"), "{message}");

    let message = refused("[media]\nudp_port_max = 6000\n");
    assert!(message.contains("media.udp_port_min"), "{message}");
}

#[test]
fn refuses_bad_names() {
    assert!(refused("[node]\nid = \"\"\n").contains("node.id"));
    assert!(refused("[node]\nid = \"a/b\"\n").contains("node.id"));
    assert!(refused("[node]\nregion = \"\"\n").contains("node.region"));
}

#[test]
fn refuses_bad_etcd_endpoints() {
    let message = refused("[cluster]\netcd_endpoints = [\"\"]\n");
    assert!(message.contains("cluster.etcd_endpoints"), "{message}");
}

#[test]
fn refuses_short_secret_without_echoing_it() {
    let message = refused("[auth.keys]\nweak = \"tooshortsecret\"\n");
    assert!(message.contains("auth.keys.weak"), "{message}");
    assert!(
        message.contains("secret must be at least 32 bytes"),
        "{message}"
    );
    assert!(!message.contains("tooshortsecret"), "{message}");
}

#[test]
fn refuses_bad_key_names() {
    let message = refused(&format!("[auth.keys]\n\"\" = \"{SECRET}\"\n"));
    assert!(message.contains("auth.keys"), "{message}");
    assert!(message.contains("empty"), "{message}");

    let message = refused(&format!("[auth.keys]\n\"a:b\" = \"{SECRET}\"\n"));
    assert!(message.contains("auth.keys.a:b"), "{message}");
}

#[test]
fn refuses_non_string_secret() {
    let message = refused("[auth.keys]\nk = 5\n");
    assert!(message.contains("auth.keys.k"), "{message}");
}

#[test]
fn refuses_out_of_range_limits() {
    let message = refused("[room]\nmax_participants = 0\n");
    assert!(message.contains("room.max_participants"), "{message}");

    for bytes in [1023, 1_048_577] {
        let message = refused(&format!("[signaling]\nmax_message_bytes = {bytes}\n"));
        assert!(message.contains("signaling.max_message_bytes"), "{message}");
    }

    let message = refused("[signaling]\nrate_per_sec = 0\n");
    assert!(message.contains("signaling.rate_per_sec"), "{message}");

    let message = refused("[signaling]\nrate_burst = 0\n");
    assert!(message.contains("signaling.rate_burst"), "{message}");
}

#[test]
fn accepts_limit_bounds() {
    for bytes in [1024, 1_048_576] {
        let text = format!("[signaling]\nmax_message_bytes = {bytes}\n");
        assert!(Config::from_toml_str(&text, env(&[])).is_ok(), "{bytes}");
    }
}

#[test]
fn refuses_empty_log_level() {
    assert!(refused("[log]\nlevel = \"  \"\n").contains("log.level"));
    assert!(refused_env(&[("RELAIS_LOG", "")]).contains("RELAIS_LOG"));
}

#[test]
fn debug_hides_secrets() {
    let text = format!("[auth.keys]\nk = \"{SECRET}\"\n");
    let config = Config::from_toml_str(&text, env(&[])).expect("ok");
    let shown = format!("{config:?}");
    assert!(shown.contains("\"k\""), "{shown}");
    assert!(!shown.contains(SECRET), "{shown}");
}

//! Node configuration: a TOML file, then `RELAIS_*` environment overrides, then validation.
//!
//! Owns the [`Config`] tree and the rules that make it valid. Invariants: every key is
//! optional and has a documented default; unknown keys are refused; a [`Config`] returned by
//! [`Config::load`] or [`Config::from_toml_str`] has passed [`Config::validate`]; no error
//! message ever contains an API secret.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Deserializer};

/// The environment variable `main` reads the config file path from; ignored by [`Config::load`].
pub const CONFIG_PATH_VAR: &str = "RELAIS_CONFIG";

/// Shortest accepted API secret, in bytes: HS256 keys shorter than the hash are weak.
pub const MIN_SECRET_BYTES: usize = 32;

/// Accepted range for `signaling.max_message_bytes`.
pub const MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=1_048_576;

/// Why a configuration was refused. Every message names the offending key or variable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The path that was given.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// The text is not valid TOML.
    #[error("invalid TOML{}: {message}", at_line(.line))]
    Syntax {
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// The parser's description.
        message: String,
    },

    /// A key in the file has the wrong type or an unparseable value, or is unknown.
    #[error("{key}{}: {message}", at_line(.line))]
    Field {
        /// Dotted path of the key (or of its section, for an unknown key).
        key: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// An environment variable's value does not parse.
    #[error("environment variable {var}: expected {expected}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// The accepted form.
        expected: &'static str,
    },

    /// A value parsed but is out of range or inconsistent.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted path of the key, with the variable that set it when it came from the env.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Formats an optional line number as a message suffix.
fn at_line(line: &Option<usize>) -> String {
    line.map(|n| format!(" at line {n}")).unwrap_or_default()
}

/// The whole node configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Identity of this node in the cluster.
    pub node: NodeConfig,
    /// The HTTP and signaling listener.
    pub http: HttpConfig,
    /// UDP media transport.
    pub media: MediaConfig,
    /// Cluster placement.
    pub cluster: ClusterConfig,
    /// API keys for access tokens.
    pub auth: AuthConfig,
    /// Room lifecycle and limits.
    pub room: RoomConfig,
    /// Limits on the signaling socket.
    pub signaling: SignalingConfig,
    /// Logging.
    pub log: LogConfig,
}

/// `[node]`: identity of this node in the cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique node id; defaults to `node-` and 8 random lowercase alphanumerics.
    pub id: String,
    /// Region label used for placement; defaults to `local`.
    pub region: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: random_node_id(),
            region: "local".to_owned(),
        }
    }
}

/// Builds `node-` followed by 8 random lowercase alphanumerics.
fn random_node_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..8)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("node-{suffix}")
}

/// `[http]`: the HTTP and signaling listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Socket address to listen on; defaults to `0.0.0.0:7880`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7880)),
        }
    }
}

/// `[media]`: UDP media transport.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address the UDP media sockets bind; defaults to `0.0.0.0`.
    pub bind_ip: IpAddr,
    /// Lowest UDP port, inclusive; 0 together with `udp_port_max = 0` means ephemeral ports.
    pub udp_port_min: u16,
    /// Highest UDP port, inclusive; 0 together with `udp_port_min = 0` means ephemeral ports.
    pub udp_port_max: u16,
    /// Address advertised in ICE candidates instead of the bound one; defaults to none.
    pub public_ip: Option<IpAddr>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port_min: 0,
            udp_port_max: 0,
            public_ip: None,
        }
    }
}

impl MediaConfig {
    /// The inclusive UDP port range, or `None` for ephemeral ports.
    pub fn port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let ephemeral = self.udp_port_min == 0 && self.udp_port_max == 0;
        (!ephemeral).then_some(self.udp_port_min..=self.udp_port_max)
    }
}

/// `[cluster]`: cluster placement.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints; empty selects embedded (single-node) placement.
    pub etcd_endpoints: Vec<String>,
}

/// `[auth]`: API keys that sign access tokens.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API key name to its HS256 secret (at least [`MIN_SECRET_BYTES`] bytes).
    pub keys: BTreeMap<String, String>,
    /// Development conveniences; never enable in production. Defaults to false.
    pub dev_mode: bool,
}

// Secrets must never reach a log line, so Debug shows key names only.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("dev_mode", &self.dev_mode)
            .finish()
    }
}

/// `[room]`: room lifecycle and limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomConfig {
    /// How long an empty room lingers before closing; TOML key `empty_timeout_secs`,
    /// defaults to 20 s.
    #[serde(rename = "empty_timeout_secs", deserialize_with = "duration_from_secs")]
    pub empty_timeout: Duration,
    /// Most participants one room admits; defaults to 100, at least 1.
    pub max_participants: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            empty_timeout: Duration::from_secs(20),
            max_participants: 100,
        }
    }
}

/// Reads a whole number of seconds as a [`Duration`].
fn duration_from_secs<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    u64::deserialize(de).map(Duration::from_secs)
}

/// `[signaling]`: limits on the signaling socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalingConfig {
    /// Largest accepted signaling message; defaults to 65536, within [`MESSAGE_BYTES_RANGE`].
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection; defaults to 50, at least 1.
    pub rate_per_sec: u32,
    /// Burst of messages allowed above the sustained rate; defaults to 100, at least 1.
    pub rate_burst: u32,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            max_message_bytes: 65_536,
            rate_per_sec: 50,
            rate_burst: 100,
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Filter in `tracing` EnvFilter syntax; defaults to `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

/// One recognised environment variable: the keys it sets and the form it expects.
struct EnvVar {
    name: &'static str,
    keys: &'static [&'static str],
    expected: &'static str,
}

const ENV_VARS: &[EnvVar] = &[
    env_var("RELAIS_NODE_ID", &["node.id"], "a node id"),
    env_var("RELAIS_REGION", &["node.region"], "a region name"),
    env_var(
        "RELAIS_HTTP_LISTEN",
        &["http.listen"],
        "a socket address like 0.0.0.0:7880",
    ),
    env_var("RELAIS_MEDIA_BIND_IP", &["media.bind_ip"], "an IP address"),
    env_var(
        "RELAIS_MEDIA_UDP_PORTS",
        &["media.udp_port_min", "media.udp_port_max"],
        "a port range like 50000-50100, or 0 for ephemeral ports",
    ),
    env_var(
        "RELAIS_MEDIA_PUBLIC_IP",
        &["media.public_ip"],
        "an IP address, or empty",
    ),
    env_var(
        "RELAIS_ETCD_ENDPOINTS",
        &["cluster.etcd_endpoints"],
        "comma-separated endpoints",
    ),
    env_var(
        "RELAIS_API_KEYS",
        &["auth.keys"],
        "key:secret pairs separated by commas",
    ),
    env_var("RELAIS_DEV_MODE", &["auth.dev_mode"], "true, false, 1 or 0"),
    env_var(
        "RELAIS_ROOM_EMPTY_TIMEOUT_SECS",
        &["room.empty_timeout_secs"],
        "whole seconds",
    ),
    env_var(
        "RELAIS_ROOM_MAX_PARTICIPANTS",
        &["room.max_participants"],
        "a positive integer",
    ),
    env_var(
        "RELAIS_SIGNALING_MAX_MESSAGE_BYTES",
        &["signaling.max_message_bytes"],
        "bytes",
    ),
    env_var(
        "RELAIS_SIGNALING_RATE_PER_SEC",
        &["signaling.rate_per_sec"],
        "a positive integer",
    ),
    env_var(
        "RELAIS_SIGNALING_RATE_BURST",
        &["signaling.rate_burst"],
        "a positive integer",
    ),
    env_var("RELAIS_LOG", &["log.level"], "a log filter like info"),
];

const fn env_var(
    name: &'static str,
    keys: &'static [&'static str],
    expected: &'static str,
) -> EnvVar {
    EnvVar {
        name,
        keys,
        expected,
    }
}

/// Names of the environment variables [`Config::load`] reads, for help text.
pub fn env_var_names() -> impl Iterator<Item = &'static str> {
    ENV_VARS.iter().map(|var| var.name)
}

impl Config {
    /// Loads the file at `path` (built-in defaults when `None`), applies the `RELAIS_*`
    /// variables from `env` on top, and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Config::default().finish(env);
        };

        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text, env)
    }

    /// Parses `text` as TOML, applies the `RELAIS_*` variables from `env`, and validates.
    pub fn from_toml_str(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        // A syntax pass first, so syntax errors are not reported against a key.
        if let Err(err) = text.parse::<toml::Table>() {
            let line = line_of(text, &err);
            return Err(ConfigError::Syntax {
                line,
                message: one_line(err.message()),
            });
        }

        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|err| field_error(text, err))?;
        config.finish(env)
    }

    /// Checks every value's range and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("node.id", &self.node.id)?;
        validate_name("node.region", &self.node.region)?;
        self.validate_media()?;
        self.validate_cluster()?;
        self.validate_auth()?;
        self.validate_limits()?;

        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(())
    }

    /// Applies the environment, then validates, naming the variable for values it set.
    fn finish(
        mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let applied = self.apply_env(env)?;
        self.validate().map_err(|err| blame_env(err, &applied))?;
        Ok(self)
    }

    /// Applies every recognised variable; returns those that were set.
    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<&'static EnvVar>, ConfigError> {
        let mut applied = Vec::new();
        for (name, value) in env {
            // Unknown names, including CONFIG_PATH_VAR, belong to someone else.
            let Some(var) = ENV_VARS.iter().find(|var| var.name == name) else {
                continue;
            };
            self.apply_var(var, &value)?;
            applied.push(var);
        }
        Ok(applied)
    }

    /// Sets the keys `var` stands for from its `value`.
    fn apply_var(&mut self, var: &'static EnvVar, value: &str) -> Result<(), ConfigError> {
        let value = value.trim();
        match var.name {
            "RELAIS_NODE_ID" => self.node.id = value.to_owned(),
            "RELAIS_REGION" => self.node.region = value.to_owned(),
            "RELAIS_HTTP_LISTEN" => self.http.listen = parse_env(var, value)?,
            "RELAIS_MEDIA_BIND_IP" => self.media.bind_ip = parse_env(var, value)?,
            "RELAIS_MEDIA_UDP_PORTS" => {
                (self.media.udp_port_min, self.media.udp_port_max) = parse_ports(var, value)?;
            }
            // Empty unsets, so a deployment can pass the variable through unconditionally.
            "RELAIS_MEDIA_PUBLIC_IP" if value.is_empty() => self.media.public_ip = None,
            "RELAIS_MEDIA_PUBLIC_IP" => self.media.public_ip = Some(parse_env(var, value)?),
            "RELAIS_ETCD_ENDPOINTS" => self.cluster.etcd_endpoints = parse_list(value),
            "RELAIS_API_KEYS" => self.auth.keys = parse_keys(var, value)?,
            "RELAIS_DEV_MODE" => self.auth.dev_mode = parse_bool(var, value)?,
            "RELAIS_ROOM_EMPTY_TIMEOUT_SECS" => {
                self.room.empty_timeout = Duration::from_secs(parse_env(var, value)?);
            }
            _ => self.apply_limit_var(var, value)?,
        }
        Ok(())
    }

    /// The numeric limits and the log level, split out to keep `apply_var` short.
    fn apply_limit_var(&mut self, var: &'static EnvVar, value: &str) -> Result<(), ConfigError> {
        match var.name {
            "RELAIS_ROOM_MAX_PARTICIPANTS" => self.room.max_participants = parse_env(var, value)?,
            "RELAIS_SIGNALING_MAX_MESSAGE_BYTES" => {
                self.signaling.max_message_bytes = parse_env(var, value)?;
            }
            "RELAIS_SIGNALING_RATE_PER_SEC" => self.signaling.rate_per_sec = parse_env(var, value)?,
            "RELAIS_SIGNALING_RATE_BURST" => self.signaling.rate_burst = parse_env(var, value)?,
            "RELAIS_LOG" => self.log.level = value.to_owned(),
            _ => {}
        }
        Ok(())
    }

    fn validate_media(&self) -> Result<(), ConfigError> {
        let (min, max) = (self.media.udp_port_min, self.media.udp_port_max);
        let both_zero = "must be non-zero unless both ends are 0 (ephemeral ports)";
        if min == 0 && max != 0 {
            return Err(invalid("media.udp_port_min", both_zero));
        }
        if max == 0 && min != 0 {
            return Err(invalid("media.udp_port_max", both_zero));
        }
        if min > max {
            return Err(invalid(
                "media.udp_port_min",
                "must not exceed media.udp_port_max",
            ));
        }

        // Peers cannot reach a wildcard or multicast address.
        match self.media.public_ip {
            Some(ip) if ip.is_unspecified() || ip.is_multicast() => Err(invalid(
                "media.public_ip",
                "must be a unicast, non-wildcard address",
            )),
            _ => Ok(()),
        }
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let bad = |e: &String| e.is_empty() || e.chars().any(char::is_whitespace);
        if self.cluster.etcd_endpoints.iter().any(bad) {
            return Err(invalid(
                "cluster.etcd_endpoints",
                "endpoints must be non-empty and contain no whitespace",
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        for (name, secret) in &self.auth.keys {
            if name.is_empty() {
                return Err(invalid("auth.keys", "api key name must not be empty"));
            }

            // The env form `key:secret,...` must be able to express every name.
            if name
                .chars()
                .any(|c| c == ':' || c == ',' || c.is_whitespace())
            {
                let reason = "api key name must not contain ':', ',' or whitespace";
                return Err(invalid(&format!("auth.keys.{name}"), reason));
            }

            if secret.len() < MIN_SECRET_BYTES {
                let reason = format!("secret must be at least {MIN_SECRET_BYTES} bytes");
                return Err(invalid(&format!("auth.keys.{name}"), &reason));
            }
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.room.max_participants == 0 {
            return Err(invalid("room.max_participants", "must be at least 1"));
        }
        if !MESSAGE_BYTES_RANGE.contains(&self.signaling.max_message_bytes) {
            let (lo, hi) = (MESSAGE_BYTES_RANGE.start(), MESSAGE_BYTES_RANGE.end());
            let reason = format!("must be between {lo} and {hi}");
            return Err(invalid("signaling.max_message_bytes", &reason));
        }
        if self.signaling.rate_per_sec == 0 {
            return Err(invalid("signaling.rate_per_sec", "must be at least 1"));
        }
        if self.signaling.rate_burst == 0 {
            return Err(invalid("signaling.rate_burst", "must be at least 1"));
        }
        Ok(())
    }
}

fn invalid(key: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Node ids and regions end up in cluster keys and URLs, so they stay plain.
fn validate_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > 64 || !value.chars().all(plain) {
        return Err(invalid(
            key,
            "must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'",
        ));
    }
    Ok(())
}

/// Rewrites a validation error's key to name the variable that set it, if any.
fn blame_env(err: ConfigError, applied: &[&'static EnvVar]) -> ConfigError {
    let ConfigError::Invalid { key, reason } = err else {
        return err;
    };
    let covers = |k: &&str| key == *k || key.starts_with(&format!("{k}."));
    match applied.iter().find(|var| var.keys.iter().any(covers)) {
        Some(var) => ConfigError::Invalid {
            key: format!("{} ({key})", var.name),
            reason,
        },
        None => ConfigError::Invalid { key, reason },
    }
}

/// Converts a typed deserialization error into one naming the key path.
fn field_error(text: &str, err: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let key = if path == "." {
        "config".to_owned()
    } else {
        path
    };
    let line = line_of(text, &inner);
    ConfigError::Field {
        key,
        line,
        message: one_line(inner.message()),
    }
}

/// Joins a multi-line parser message so the error stays on one log line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The 1-based line a TOML error points at.
fn line_of(text: &str, err: &toml::de::Error) -> Option<usize> {
    let start = err.span()?.start;
    let before = text.get(..start)?;
    Some(before.matches('\n').count() + 1)
}

fn parse_env<T: FromStr>(var: &'static EnvVar, value: &str) -> Result<T, ConfigError> {
    value.parse().map_err(|_| env_error(var))
}

fn env_error(var: &'static EnvVar) -> ConfigError {
    ConfigError::Env {
        var: var.name,
        expected: var.expected,
    }
}

fn parse_bool(var: &'static EnvVar, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(env_error(var)),
    }
}

/// `min-max`, or a lone `0` for ephemeral ports.
fn parse_ports(var: &'static EnvVar, value: &str) -> Result<(u16, u16), ConfigError> {
    if value == "0" {
        return Ok((0, 0));
    }
    let (min, max) = value.split_once('-').ok_or_else(|| env_error(var))?;
    Ok((parse_env(var, min.trim())?, parse_env(var, max.trim())?))
}

/// Comma-separated items, trimmed, empty items dropped.
fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `key:secret` pairs separated by commas; a secret may itself contain ':'.
fn parse_keys(var: &'static EnvVar, value: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut keys = BTreeMap::new();
    for pair in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, secret) = pair.split_once(':').ok_or_else(|| env_error(var))?;

        // A repeated name would silently drop a secret.
        if keys
            .insert(name.trim().to_owned(), secret.trim().to_owned())
            .is_some()
        {
            return Err(env_error(var));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
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
        let text = include_str!("../config/relais.toml");
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
        let config = with_env(&[("RELAIS_ETCD_ENDPOINTS", value)]).expect("ok");
        assert_eq!(
            config.cluster.etcd_endpoints,
            ["http://a:2379", "http://b:2379"]
        );
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
    fn env_room() {
        let config = with_env(&[
            ("RELAIS_ROOM_EMPTY_TIMEOUT_SECS", "5"),
            ("RELAIS_ROOM_MAX_PARTICIPANTS", "12"),
        ])
        .expect("ok");
        assert_eq!(config.room.empty_timeout, Duration::from_secs(5));
        assert_eq!(config.room.max_participants, 12);
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
}

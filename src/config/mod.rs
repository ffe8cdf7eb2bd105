//! Node configuration: a TOML file, then `RELAIS_*` environment overrides, then validation.
//!
//! Owns the [`Config`] tree and the rules that make it valid. Invariants: every key is
//! optional and has a documented default; unknown keys are refused; a [`Config`] returned by
//! [`Config::load`] or [`Config::from_toml_str`] has passed [`Config::validate`]; no error
//! message ever contains an API secret.

mod env;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Deserializer};

use env::blame_env;
pub use env::env_var_names;

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
    /// The Prometheus metrics listener.
    pub metrics: MetricsConfig,
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
    /// Fit what each subscriber is sent into its estimated downlink (REMB) by lowering
    /// simulcast layers. Default on.
    pub bandwidth_adaptation: bool,
    /// Also pause video whose lowest layer does not fit that downlink. Default off:
    /// browsers' estimates fall on a busy receiver as on a thin link.
    pub pause_for_bandwidth: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_port_min: 0,
            udp_port_max: 0,
            public_ip: None,
            bandwidth_adaptation: true,
            pause_for_bandwidth: false,
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints; empty selects embedded (single-node) placement.
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key relais writes in etcd; defaults to `/relais`.
    pub prefix: String,
    /// Lifetime of the node's lease; TOML key `lease_ttl_secs`, 2 to 60, default 5.
    #[serde(rename = "lease_ttl_secs", deserialize_with = "duration_from_secs")]
    pub lease_ttl: Duration,
    /// How long a draining node waits for its participants to move before it
    /// exits anyway; TOML key `drain_grace_secs`, default 30.
    #[serde(rename = "drain_grace_secs", deserialize_with = "duration_from_secs")]
    pub drain_grace: Duration,
    /// Signaling URL other nodes send clients to, e.g. `ws://10.0.0.5:7880`;
    /// default: `ws://` and the bound HTTP address.
    pub advertise_url: Option<String>,
    /// UDP address of the cascade port (QUIC) other nodes connect to.
    pub cascade_listen: SocketAddr,
    /// Shared secret that cascade links authenticate with; required in a cluster.
    pub cascade_secret: Option<Secret>,
}

/// A secret that never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Fewest bytes of a cascade secret.
pub const MIN_CASCADE_SECRET_BYTES: usize = 32;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd_endpoints: Vec::new(),
            prefix: "/relais".to_owned(),
            lease_ttl: Duration::from_secs(5),
            drain_grace: Duration::from_secs(30),
            advertise_url: None,
            cascade_listen: SocketAddr::from(([0, 0, 0, 0], 7881)),
            cascade_secret: None,
        }
    }
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
    /// In a room larger than `last_n_above`, the camera video of only this many
    /// participants, the most recent speakers, is forwarded to each subscriber
    /// (besides what the subscriber pins, and screen shares); 0 forwards every camera.
    /// Defaults to 12.
    pub last_n: usize,
    /// Rooms of at most this many participants forward every camera; defaults to 20.
    pub last_n_above: usize,
    /// In a room larger than `last_n_above`, the audio of only this many speakers, the
    /// loudest, is forwarded; 0 forwards every voice. Defaults to 3.
    pub audio_last_n: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            empty_timeout: Duration::from_secs(20),
            max_participants: 100,
            last_n: 12,
            last_n_above: 20,
            audio_last_n: 3,
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

/// `[metrics]`: the Prometheus metrics listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Socket address serving `/metrics`; defaults to `127.0.0.1:9464`, port 0 for any.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
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
        let ttl = self.cluster.lease_ttl.as_secs();
        if !(2..=60).contains(&ttl) {
            return Err(invalid(
                "cluster.lease_ttl_secs",
                "must be between 2 and 60",
            ));
        }
        let prefix = &self.cluster.prefix;
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains(char::is_whitespace)
        {
            return Err(invalid(
                "cluster.prefix",
                "must start with '/', not end with '/', and contain no whitespace",
            ));
        }
        let secret_len = self.cluster.cascade_secret.as_ref().map(|s| s.0.len());
        if !self.cluster.etcd_endpoints.is_empty() && secret_len.is_none() {
            return Err(invalid(
                "cluster.cascade_secret",
                "is required when etcd_endpoints are set",
            ));
        }
        if secret_len.is_some_and(|n| n < MIN_CASCADE_SECRET_BYTES) {
            return Err(invalid(
                "cluster.cascade_secret",
                "must be at least 32 bytes",
            ));
        }
        if let Some(url) = &self.cluster.advertise_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(invalid(
                    "cluster.advertise_url",
                    "must be a ws:// or wss:// URL",
                ));
            }
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

#[cfg(test)]
mod tests;

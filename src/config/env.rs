//! Environment overrides: the `RELAIS_*` variables and the keys each one sets.
//!
//! Variables are applied on top of the file; a value that does not parse is an
//! error naming the variable and the form it expects, and a value that fails
//! validation is reported against both the variable and the key it set.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use super::{Config, ConfigError};

/// One recognised environment variable: the keys it sets and the form it expects.
pub(super) struct EnvVar {
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
        "RELAIS_MEDIA_BANDWIDTH_ADAPTATION",
        &["media.bandwidth_adaptation"],
        "true or false",
    ),
    env_var(
        "RELAIS_MEDIA_PAUSE_FOR_BANDWIDTH",
        &["media.pause_for_bandwidth"],
        "true or false",
    ),
    env_var(
        "RELAIS_ETCD_ENDPOINTS",
        &["cluster.etcd_endpoints"],
        "comma-separated endpoints",
    ),
    env_var(
        "RELAIS_ADVERTISE_URL",
        &["cluster.advertise_url"],
        "a ws:// or wss:// URL, or empty",
    ),
    env_var(
        "RELAIS_CASCADE_LISTEN",
        &["cluster.cascade_listen"],
        "a UDP socket address like 0.0.0.0:7881",
    ),
    env_var(
        "RELAIS_CASCADE_SECRET",
        &["cluster.cascade_secret"],
        "a secret of at least 32 bytes",
    ),
    env_var(
        "RELAIS_LEASE_TTL_SECS",
        &["cluster.lease_ttl_secs"],
        "whole seconds",
    ),
    env_var(
        "RELAIS_DRAIN_GRACE_SECS",
        &["cluster.drain_grace_secs"],
        "whole seconds",
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
        "RELAIS_ROOM_LAST_N",
        &["room.last_n"],
        "a whole number, 0 for every camera",
    ),
    env_var(
        "RELAIS_ROOM_LAST_N_ABOVE",
        &["room.last_n_above"],
        "a whole number",
    ),
    env_var(
        "RELAIS_ROOM_AUDIO_LAST_N",
        &["room.audio_last_n"],
        "a whole number, 0 for every voice",
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
    env_var(
        "RELAIS_METRICS_LISTEN",
        &["metrics.listen"],
        "a socket address like 127.0.0.1:9464",
    ),
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
    /// Applies every recognised variable; returns those that were set.
    pub(super) fn apply_env(
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
            "RELAIS_MEDIA_BANDWIDTH_ADAPTATION" => {
                self.media.bandwidth_adaptation = parse_bool(var, value)?
            }
            "RELAIS_MEDIA_PAUSE_FOR_BANDWIDTH" => {
                self.media.pause_for_bandwidth = parse_bool(var, value)?
            }
            "RELAIS_MEDIA_PUBLIC_IP" if value.is_empty() => self.media.public_ip = None,
            "RELAIS_MEDIA_PUBLIC_IP" => self.media.public_ip = Some(parse_env(var, value)?),
            "RELAIS_ETCD_ENDPOINTS" => self.cluster.etcd_endpoints = parse_list(value),
            "RELAIS_ADVERTISE_URL" if value.is_empty() => self.cluster.advertise_url = None,
            "RELAIS_ADVERTISE_URL" => self.cluster.advertise_url = Some(value.to_owned()),
            "RELAIS_CASCADE_LISTEN" => self.cluster.cascade_listen = parse_env(var, value)?,
            "RELAIS_CASCADE_SECRET" if value.is_empty() => self.cluster.cascade_secret = None,
            "RELAIS_CASCADE_SECRET" => {
                self.cluster.cascade_secret = Some(super::Secret(value.to_owned()));
            }
            "RELAIS_LEASE_TTL_SECS" => {
                self.cluster.lease_ttl = Duration::from_secs(parse_env(var, value)?);
            }
            "RELAIS_DRAIN_GRACE_SECS" => {
                self.cluster.drain_grace = Duration::from_secs(parse_env(var, value)?);
            }
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
            "RELAIS_ROOM_LAST_N" => self.room.last_n = parse_env(var, value)?,
            "RELAIS_ROOM_LAST_N_ABOVE" => self.room.last_n_above = parse_env(var, value)?,
            "RELAIS_ROOM_AUDIO_LAST_N" => self.room.audio_last_n = parse_env(var, value)?,
            "RELAIS_SIGNALING_MAX_MESSAGE_BYTES" => {
                self.signaling.max_message_bytes = parse_env(var, value)?;
            }
            "RELAIS_SIGNALING_RATE_PER_SEC" => self.signaling.rate_per_sec = parse_env(var, value)?,
            "RELAIS_SIGNALING_RATE_BURST" => self.signaling.rate_burst = parse_env(var, value)?,
            "RELAIS_LOG" => self.log.level = value.to_owned(),
            "RELAIS_METRICS_LISTEN" => self.metrics.listen = parse_env(var, value)?,
            _ => {}
        }
        Ok(())
    }
}

/// Rewrites a validation error's key to name the variable that set it, if any.
pub(super) fn blame_env(err: ConfigError, applied: &[&'static EnvVar]) -> ConfigError {
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

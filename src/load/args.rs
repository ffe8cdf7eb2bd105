//! The `relais load` command line, and its translation into a [`LoadConfig`].
//!
//! Owns defaults, the choice of API credentials (flags first, then the
//! `RELAIS_API_KEYS` value the caller passes in) and the conversion of seconds into
//! durations. Nothing here reads the environment itself.

use std::net::IpAddr;
use std::time::Duration;

use rand::distributions::Alphanumeric;
use rand::Rng;

use super::{LoadConfig, LoadError, SpreadBy, Target};

/// Joins simulated participants to running nodes and measures what they forward.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The kind of server to measure; for janus, --url is its WebSocket address.
    #[arg(long, value_enum, default_value = "relais")]
    pub target: Target,
    /// Base URL of a node; repeat the flag (or separate with commas) for several
    /// nodes, over which --spread spreads the run.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:7880",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
    /// What goes round-robin over the nodes: whole rooms, or each room's
    /// participants (then every room spans the nodes, and its media cascades).
    #[arg(long, value_enum, default_value = "rooms")]
    pub spread: SpreadBy,
    /// API key that signs the access tokens; default: the key in RELAIS_API_KEYS.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Secret of that API key; default: its secret in RELAIS_API_KEYS.
    #[arg(long)]
    pub api_secret: Option<String>,
    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishers per room; they also receive each other.
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribers per room; they only receive.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Average video bitrate of each publisher, in bits per second.
    #[arg(long, default_value_t = 500_000, value_name = "BITS")]
    pub video_bitrate: u64,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds between keyframes (more come when the server asks).
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub keyframe_interval: f64,
    /// Publishers send Opus-shaped audio too, 50 packets a second (the default).
    #[arg(long, overrides_with = "no_audio")]
    pub audio: bool,
    /// Publishers send video only.
    #[arg(long, overrides_with = "audio")]
    pub no_audio: bool,
    /// Only the first K publishers of each room send audio, speaking in turns of 2 s
    /// (with audio levels, so that the node's speaker detection and last-N follow),
    /// as in a large meeting where everyone else is muted.
    #[arg(long, value_name = "K")]
    pub speakers: Option<usize>,
    /// Seconds to measure, once every participant has joined and receives media.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Participants started per second.
    #[arg(long, default_value_t = 20.0, value_name = "PER_SECOND")]
    pub ramp: f64,
    /// Print the summary as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A node process whose CPU time and peak memory to report; repeatable.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,
    /// Local address of the participants' media sockets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind_ip: IpAddr,
    /// Prefix of the room names; default: "load-" and a random tag, so that runs
    /// never meet each other's rooms.
    #[arg(long)]
    pub room_prefix: Option<String>,
    /// Fault injection: publishers leave out every N-th media packet, a loss no
    /// retransmission repairs, to check that the measurement reports it.
    #[arg(long = "drop-every-nth", value_name = "N")]
    pub drop_every_nth_sent: Option<u64>,
}

impl LoadArgs {
    /// The run these arguments ask for; `env_keys` is the value of RELAIS_API_KEYS.
    pub fn into_config(self, env_keys: Option<&str>) -> Result<LoadConfig, LoadError> {
        let (api_key, api_secret) = match self.target {
            Target::Relais => credentials(self.api_key, self.api_secret, env_keys)?,
            Target::Janus => (String::new(), String::new()),
        };
        let room_prefix = self.room_prefix.unwrap_or_else(random_prefix);
        Ok(LoadConfig {
            target: self.target,
            urls: self.urls,
            spread: self.spread,
            api_key,
            api_secret,
            rooms: self.rooms,
            publishers: self.publishers,
            subscribers: self.subscribers,
            video_bitrate: self.video_bitrate,
            fps: self.fps,
            keyframe_interval: seconds("--keyframe-interval", self.keyframe_interval)?,
            audio: !self.no_audio,
            speakers: self.speakers,
            duration: seconds("--duration", self.duration)?,
            ramp_per_second: self.ramp,
            server_pids: self.server_pids,
            bind_ip: self.bind_ip,
            room_prefix,
            progress: true,
            drop_every_nth_sent: self.drop_every_nth_sent,
        })
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration, LoadError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| LoadError::Invalid(format!("{flag} must be a number of seconds")))
}

fn random_prefix() -> String {
    let tag: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(6)
        .map(|b| char::from(b).to_ascii_lowercase())
        .collect();
    format!("load-{tag}")
}

/// Key and secret from the flags, completed from `key:secret` pairs in `env_keys`.
fn credentials(
    key: Option<String>,
    secret: Option<String>,
    env_keys: Option<&str>,
) -> Result<(String, String), LoadError> {
    let pairs: Vec<(&str, &str)> = env_keys
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.trim().split_once(':'))
        .collect();
    match (key, secret) {
        (Some(key), Some(secret)) => Ok((key, secret)),
        (Some(key), None) => match pairs.iter().find(|(k, _)| *k == key) {
            Some((_, secret)) => Ok((key, (*secret).to_owned())),
            None => Err(LoadError::Invalid(format!(
                "no secret for API key {key}: pass --api-secret or list it in RELAIS_API_KEYS"
            ))),
        },
        (None, Some(_)) => Err(LoadError::Invalid("--api-secret needs --api-key".into())),
        (None, None) => pairs
            .first()
            .map(|(k, s)| ((*k).to_owned(), (*s).to_owned()))
            .ok_or_else(|| {
                LoadError::Invalid(
                    "no API key: pass --api-key and --api-secret, or set \
                     RELAIS_API_KEYS=key:secret"
                        .into(),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(args: &[&str]) -> LoadArgs {
        let argv = std::iter::once("load").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid arguments").load
    }

    #[test]
    fn defaults_take_the_key_from_the_environment() {
        let config = parse(&[]).into_config(Some("k1:s1,k2:s2")).unwrap();
        assert_eq!(
            (config.api_key.as_str(), config.api_secret.as_str()),
            ("k1", "s1")
        );
        assert_eq!(config.urls, ["ws://127.0.0.1:7880"]);
        assert_eq!(config.spread, SpreadBy::Rooms);
        assert_eq!(
            (config.video_bitrate, config.fps, config.audio),
            (500_000, 30, true)
        );
        assert_eq!(config.duration, Duration::from_secs(30));
        assert_eq!(config.keyframe_interval, Duration::from_secs(2));
        assert_eq!(config.ramp_per_second, 20.0);
        assert!(config.room_prefix.starts_with("load-"));
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn flags_override_and_repeat() {
        let args = parse(&[
            "--url=ws://a:1",
            "--url",
            "ws://b:2,ws://c:3",
            "--api-key=k2",
            "--server-pid=10",
            "--server-pid=11",
            "--no-audio",
            "--duration=2.5",
            "--room-prefix=fixed",
            "--spread=participants",
        ]);
        let config = args.into_config(Some("k1:s1,k2:s2")).unwrap();
        assert_eq!(config.urls, ["ws://a:1", "ws://b:2", "ws://c:3"]);
        assert_eq!(config.api_secret, "s2");
        assert_eq!(config.server_pids, [10, 11]);
        assert!(!config.audio);
        assert_eq!(config.duration, Duration::from_millis(2500));
        assert_eq!(config.room_prefix, "fixed");
        assert_eq!(config.spread, SpreadBy::Participants);
        assert!(
            parse(&["--no-audio", "--audio"])
                .into_config(Some("k:s"))
                .unwrap()
                .audio
        );
    }

    #[test]
    fn janus_needs_no_key() {
        let config = parse(&["--target=janus", "--url=ws://127.0.0.1:8188"])
            .into_config(None)
            .unwrap();
        assert_eq!(config.target, Target::Janus);
        config.validate().expect("no key is needed");
        let lossy = parse(&["--drop-every-nth=1"])
            .into_config(Some("k:s"))
            .unwrap();
        assert!(lossy.validate().is_err());
        let spread = parse(&["--target=janus", "--url=ws://a", "--url=ws://b"]);
        let spread = LoadArgs {
            spread: SpreadBy::Participants,
            ..spread
        };
        let refused = spread.into_config(None).unwrap().validate();
        assert!(refused.is_err(), "Janus rooms cannot span servers");
    }

    #[test]
    fn missing_or_bad_values_are_refused() {
        assert!(parse(&[]).into_config(None).is_err());
        assert!(parse(&["--api-key=zz"]).into_config(Some("k:s")).is_err());
        assert!(parse(&["--api-secret=s"]).into_config(Some("k:s")).is_err());
        assert!(parse(&["--duration=-1"]).into_config(Some("k:s")).is_err());
        let zero_rooms = parse(&["--rooms=0"]).into_config(Some("k:s")).unwrap();
        assert!(zero_rooms.validate().is_err());
    }
}

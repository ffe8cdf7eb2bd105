//! `relais load`: a load generator that joins simulated participants to running nodes
//! through the documented protocol, sends synthetic media and measures what the nodes
//! forward: join time, time to first media, packet and byte rates, loss, one-way delay,
//! and the nodes' CPU time and peak memory.
//!
//! Every participant is a [`crate::client::Client`] in this one process. Publishers
//! send VP8-shaped video and Opus-shaped audio whose payloads carry a load header
//! (module `payload`) with a per-track sequence and the send time on a process-wide
//! clock ([`since_epoch`]), so a subscriber measures loss and exact one-way delay from
//! the packet alone. Publishers also receive each other, as in a meeting.
//!
//! Layout: `plan` (who joins where, and when), `source` (synthetic media), `payload`
//! (the load header), `stats` and `histogram` (what a subscriber measures), `live`
//! (running totals for the progress line), `procfs` (server CPU and memory),
//! `report` (the summary), `participant` and `scenario` (the tasks that do the I/O),
//! `session` and `janus` (the servers a participant can talk to: relais, or Janus's
//! VideoRoom for comparison), `args` (the command line).
//!
//! The generator shares the machine with the nodes it measures when run locally: the
//! summary reports its own CPU time so a saturated generator can be told apart from a
//! saturated node. A real capacity test runs the generator on other hosts.

mod args;
mod histogram;
pub mod janus;
mod live;
mod participant;
mod payload;
mod plan;
pub(crate) mod procfs;
mod report;
mod scenario;
mod session;
mod source;
mod stats;

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

pub use args::LoadArgs;
pub use plan::Role;
pub use report::{Delay, Scenario, ServerUsage, SessionRow, Spread, Summary};
pub use scenario::run_scenario;

/// The kind of server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// relais nodes, through the documented signaling protocol.
    Relais,
    /// Janus's VideoRoom plugin over its WebSocket transport, for comparison.
    Janus,
}

/// How the participants of a run are spread over the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpreadBy {
    /// Each room on one node, rooms round-robin over the nodes.
    Rooms,
    /// Each room's participants round-robin over all the nodes, so that its media
    /// cascades between them.
    Participants,
}

/// Everything a load run needs, independent of the command line.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    /// Base URLs of the nodes, e.g. `ws://127.0.0.1:7880`.
    pub urls: Vec<String>,
    /// What goes round-robin over `urls`: rooms or participants.
    pub spread: SpreadBy,
    pub api_key: String,
    pub api_secret: String,
    pub rooms: usize,
    /// Publishers per room.
    pub publishers: usize,
    /// Subscribers per room.
    pub subscribers: usize,
    /// Average video bits per second of each publisher.
    pub video_bitrate: u64,
    pub fps: u32,
    pub keyframe_interval: Duration,
    /// Publishers also send audio.
    pub audio: bool,
    /// Only the first this many publishers of each room send audio, taking turns to
    /// speak (an audio level, RFC 6464, says who), as in a large meeting where the
    /// others are muted; `None`: every publisher sends audio, with no level.
    pub speakers: Option<usize>,
    /// Length of the steady window, after the ramp.
    pub duration: Duration,
    /// Participants started per second.
    pub ramp_per_second: f64,
    /// Node processes whose CPU time and peak memory to report.
    pub server_pids: Vec<u32>,
    /// Local address of the participants' media sockets.
    pub bind_ip: IpAddr,
    /// Room names are this prefix, a dash and the room's number.
    pub room_prefix: String,
    /// Print a progress line to stderr once a second.
    pub progress: bool,
    /// Fault injection: each publisher leaves out every n-th media packet it numbers,
    /// as a lossy link to the node would, and no retransmission can bring it back.
    pub drop_every_nth_sent: Option<u64>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error("cannot read process {pid} in /proc: {reason}")]
    Process { pid: u32, reason: String },
}

impl LoadConfig {
    /// Refuses a configuration that cannot run.
    pub fn validate(&self) -> Result<(), LoadError> {
        // Janus takes no tokens.
        let relais = self.target == Target::Relais;
        let refusals = [
            (self.urls.is_empty(), "at least one --url is needed"),
            (relais && self.api_key.is_empty(), "the API key is empty"),
            (
                relais && self.api_secret.is_empty(),
                "the API secret is empty",
            ),
            (self.rooms == 0, "--rooms must be at least 1"),
            (
                !relais && self.spread == SpreadBy::Participants && self.urls.len() > 1,
                "Janus does not cascade: spread participants over one node only",
            ),
            (
                self.publishers + self.subscribers == 0,
                "a room needs at least one publisher or subscriber",
            ),
            (self.video_bitrate == 0, "--video-bitrate must be positive"),
            (
                !(1..=240).contains(&self.fps),
                "--fps must be between 1 and 240",
            ),
            (
                self.keyframe_interval.is_zero(),
                "--keyframe-interval must be positive",
            ),
            (self.duration.is_zero(), "--duration must be positive"),
            (
                !(self.ramp_per_second.is_finite() && self.ramp_per_second > 0.0),
                "--ramp must be a positive number",
            ),
            (
                self.drop_every_nth_sent.is_some_and(|n| n < 2),
                "--drop-every-nth must be at least 2",
            ),
        ];
        match refusals.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(LoadError::Invalid((*why).to_owned())),
            None => Ok(()),
        }
    }

    fn describe(&self, participants: usize) -> String {
        format!(
            "relais load: {participants} participants in {} room(s) on {} {:?} node(s), \
             spread by {:?}, ramp {}/s, then {:.1} s",
            self.rooms,
            self.urls.len(),
            self.target,
            self.spread,
            self.ramp_per_second,
            self.duration.as_secs_f64()
        )
    }
}

/// Time since the process-wide epoch, the clock of the load header's send times.
pub fn since_epoch() -> Duration {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    EPOCH.get_or_init(std::time::Instant::now).elapsed()
}

/// Runs `relais load`: exit status 0 when every participant joined and received the
/// media it expected, 1 otherwise, 2 for unusable arguments.
pub fn run(args: LoadArgs) -> ExitCode {
    let keys = std::env::var("RELAIS_API_KEYS").ok();
    let json = args.json;
    let config = match args.into_config(keys.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relais load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relais load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run_scenario(config));
    // Peer connections may still be winding down; they do not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(summary) => print_summary(&summary, json),
        Err(e) => {
            eprintln!("relais load: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_summary(summary: &Summary, json: bool) -> ExitCode {
    if json {
        match serde_json::to_string_pretty(summary) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("relais load: cannot serialise the summary: {e}"),
        }
    } else {
        print!("{}", summary.table());
    }
    if summary.failed == 0 && summary.missing_media == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The run: ramp participants up, hold for the configured duration, stop them all,
//! and summarise.
//!
//! Loop: the ramp starts participants on the schedule of [`plan::launched_by`] until
//! every one has joined or failed (bounded by the schedule plus [`JOIN_TIMEOUT`]);
//! then the run waits, up to [`MEDIA_WAIT`], for media to reach every receiver; the
//! steady window then lasts `duration`; publishers then stop sending for [`DRAIN`]
//! while everyone still receives; then the stop goes out and each participant's report
//! is awaited, all within one bounded wait. A progress line goes to stderr once a
//! second throughout. Server processes are read at the start, at both ends of the
//! steady window and at the end.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::live::{Live, Totals};
use super::participant::{self, Phase, Shared, JOIN_TIMEOUT};
use super::plan::{self, Layout, Planned};
use super::procfs;
use super::report::{self, ParticipantReport, ProcReadings, RunFacts, Scenario, Summary, Targets};
use super::source::VideoShape;
use super::stats::RateMeter;
use super::{janus, LoadConfig, LoadError, Target};

/// How often the ramp checks whether everyone has joined, between launches.
const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Longest wait for all participants to hand back their reports once stopped.
const COLLECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack after the planned end before a participant stops on its own.
const OVERRUN: Duration = Duration::from_secs(15);
/// How long the ramp waits, after the last join, for media to reach every receiver.
const MEDIA_WAIT: Duration = Duration::from_secs(10);
/// How long subscribers go on receiving after publishers stop: packets still in
/// flight arrive, and what has not arrived by then counts as lost.
const DRAIN: Duration = Duration::from_secs(1);

type Launched = Vec<(Planned, JoinHandle<ParticipantReport>)>;

/// Runs a load scenario against running nodes and returns its summary.
pub async fn run_scenario(config: LoadConfig) -> Result<Summary, LoadError> {
    config.validate()?;
    let mut processes = Processes::first(&config.server_pids)?;
    let plans = plan::participants(&Layout {
        urls: &config.urls,
        spread: config.spread,
        room_prefix: &config.room_prefix,
        rooms: config.rooms,
        publishers: config.publishers,
        subscribers: config.subscribers,
    });
    let mut run = Run::new(&config, &plans);
    if config.progress {
        eprintln!("{}", config.describe(plans.len()));
    }
    if config.target == Target::Janus {
        create_janus_rooms(&config, &plans).await?;
    }

    let launched = run.ramp_up(plans).await;
    run.await_media().await;
    let steady = run.steady_window(&mut processes).await;
    let reports = run.stop(launched).await;
    processes.read(|r, sample| r.end = sample);

    let facts = RunFacts {
        scenario: Scenario {
            rooms: config.rooms,
            publishers: config.publishers,
            subscribers: config.subscribers,
            audio: config.audio,
            speakers: config.speakers,
        },
        steady: steady.totals,
        steady_time: steady.time,
        servers: processes.servers,
        generator: processes.generator,
        ticks_per_second: processes.ticks_per_second,
    };
    Ok(report::summarise(&reports, &facts))
}

/// Janus rooms exist before anyone joins, so join times leave room creation out;
/// relais opens a room on its first join, within that join's time.
async fn create_janus_rooms(config: &LoadConfig, plans: &[Planned]) -> Result<(), LoadError> {
    let everyone = config.publishers + config.subscribers;
    for url in &config.urls {
        let mut rooms: Vec<String> = plans
            .iter()
            .filter(|p| &p.url == url)
            .map(|p| p.room.clone())
            .collect();
        rooms.dedup();
        janus::create_rooms(url, &rooms, everyone)
            .await
            .map_err(|e| LoadError::Invalid(format!("cannot create the Janus rooms: {e}")))?;
    }
    Ok(())
}

/// The steady window: its length and the running totals at both ends.
struct Steady {
    time: Duration,
    totals: (Totals, Totals),
}

/// The state of one run, owned by the task that drives it.
struct Run<'a> {
    config: &'a LoadConfig,
    shared: Arc<Shared>,
    phase: watch::Sender<Phase>,
    progress: Progress,
    /// When joins that have not happened yet have failed.
    joins_by: Instant,
    /// When participants stop on their own if no stop came.
    deadline: Instant,
}

impl<'a> Run<'a> {
    fn new(config: &'a LoadConfig, plans: &[Planned]) -> Run<'a> {
        let targets = Targets {
            participants: plans.len(),
            receivers: plan::receivers(plans, config.publishers),
        };
        let started = Instant::now();
        let joins_bound = plan::launch_offset(plans.len(), config.ramp_per_second) + JOIN_TIMEOUT;
        let ramp_bound = joins_bound + MEDIA_WAIT;
        Run {
            config,
            shared: Arc::new(shared(config, ramp_bound)),
            phase: watch::channel(Phase::Running).0,
            progress: Progress::new(config.progress, started, targets),
            joins_by: started + joins_bound,
            deadline: started + ramp_bound + config.duration + OVERRUN,
        }
    }

    fn start(&self, plan: Planned) -> (Planned, JoinHandle<ParticipantReport>) {
        let phase = self.phase.subscribe();
        let task = participant::run(plan.clone(), self.shared.clone(), phase, self.deadline);
        (plan, tokio::spawn(task))
    }

    /// Starts participants on schedule until all have joined or failed.
    async fn ramp_up(&mut self, plans: Vec<Planned>) -> Launched {
        let total = plans.len();
        let rate = self.config.ramp_per_second;
        let mut waiting = plans.into_iter();
        let mut launched = Vec::with_capacity(total);
        loop {
            let now = Instant::now();
            let due = plan::launched_by(now - self.progress.started, rate, total);
            while launched.len() < due {
                let Some(plan) = waiting.next() else { break };
                launched.push(self.start(plan));
            }
            self.progress.tick(now, &self.shared.live);

            let totals = self.shared.live.totals();
            let settled = (totals.joined + totals.failed) as usize >= total;
            if (launched.len() == total && settled) || now >= self.joins_by {
                return launched;
            }
            let next_launch = self.progress.started + plan::launch_offset(launched.len(), rate);
            let wake = next_launch.min(self.progress.next).min(now + SETTLE_POLL);
            sleep_until(wake.min(self.joins_by)).await;
        }
    }

    /// Waits, bounded, until every receiver gets media.
    async fn await_media(&mut self) {
        let receivers = self.progress.targets.receivers;
        // Participants that failed to join will not receive; nobody waits for them.
        let everyone = |t: &Totals| (t.receiving + t.failed) as usize >= receivers;
        self.hold(Instant::now() + MEDIA_WAIT, everyone).await;
    }

    /// Holds for the configured duration, reading totals and processes at both ends.
    async fn steady_window(&mut self, processes: &mut Processes) -> Steady {
        let (started, before) = (Instant::now(), self.shared.live.totals());
        processes.read(|r, sample| r.steady_start = sample);
        self.hold(started + self.config.duration, |_| false).await;
        let (time, after) = (started.elapsed(), self.shared.live.totals());
        processes.read(|r, sample| r.steady_end = sample);
        Steady {
            time,
            totals: (before, after),
        }
    }

    /// Drains, stops everyone and collects their reports.
    async fn stop(&mut self, launched: Launched) -> Vec<ParticipantReport> {
        // `send_replace` stores the phase even when every participant has gone.
        self.phase.send_replace(Phase::Draining);
        self.hold(Instant::now() + DRAIN, |_| false).await;
        self.phase.send_replace(Phase::Stopped);
        collect(launched).await
    }

    /// Prints progress until `until`, or until `done` holds of the running totals.
    async fn hold(&mut self, until: Instant, done: impl Fn(&Totals) -> bool) {
        let live = &self.shared.live;
        loop {
            let now = Instant::now();
            self.progress.tick(now, live);
            if now >= until || done(&live.totals()) {
                return;
            }
            let wake = self.progress.next.min(now + SETTLE_POLL);
            sleep_until(wake.min(until)).await;
        }
    }
}

fn shared(config: &LoadConfig, ramp_bound: Duration) -> Shared {
    Shared {
        api_key: config.api_key.clone(),
        api_secret: config.api_secret.clone(),
        bind_ip: config.bind_ip,
        video: VideoShape {
            bitrate: config.video_bitrate,
            fps: config.fps,
            keyframe_interval: config.keyframe_interval,
        },
        audio: config.audio,
        speakers: config.speakers,
        drop_every_nth_sent: config.drop_every_nth_sent,
        target: config.target,
        token_ttl: ramp_bound + config.duration + Duration::from_secs(3600),
        live: Live::default(),
    }
}

/// Awaits every participant's report; one that does not stop in time is aborted and
/// reported without its figures.
async fn collect(launched: Launched) -> Vec<ParticipantReport> {
    let deadline = Instant::now() + COLLECT_TIMEOUT;
    let mut reports = Vec::with_capacity(launched.len());
    for (plan, mut handle) in launched {
        let report = match timeout_at(deadline, &mut handle).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => lost_report(plan, format!("participant task failed: {e}")),
            Err(_) => {
                handle.abort();
                lost_report(plan, "did not stop in time".to_owned())
            }
        };
        reports.push(report);
    }
    reports
}

fn lost_report(plan: Planned, why: String) -> ParticipantReport {
    let mut report = ParticipantReport::new(&plan);
    report.error = Some(why);
    report
}

/// The processes whose CPU time and memory the summary reports.
struct Processes {
    servers: Vec<ProcReadings>,
    /// This process, when `/proc` can be read.
    generator: Option<ProcReadings>,
    ticks_per_second: u64,
}

impl Processes {
    /// Reads every server process once; a pid that cannot be read is a usage error.
    fn first(pids: &[u32]) -> Result<Processes, LoadError> {
        let servers = pids.iter().map(|pid| first_reading(*pid));
        let servers = servers.collect::<Result<Vec<_>, _>>()?;
        Ok(Processes {
            servers,
            generator: first_reading(std::process::id()).ok(),
            ticks_per_second: procfs::ticks_per_second(),
        })
    }

    /// Reads every process again; `put` stores the reading (`None` once it has exited).
    fn read(&mut self, put: impl Fn(&mut ProcReadings, Option<procfs::ProcSample>)) {
        let own = self.generator.iter_mut();
        for readings in self.servers.iter_mut().chain(own) {
            put(readings, procfs::sample_with_wait(readings.pid).ok());
        }
    }
}

fn first_reading(pid: u32) -> Result<ProcReadings, LoadError> {
    let start = procfs::sample_with_wait(pid).map_err(|e| LoadError::Process {
        pid,
        reason: e.to_string(),
    })?;
    Ok(ProcReadings {
        pid,
        start,
        steady_start: None,
        steady_end: None,
        end: None,
    })
}

/// The once-a-second progress line on stderr.
struct Progress {
    enabled: bool,
    started: Instant,
    /// When the next line is due.
    next: Instant,
    targets: Targets,
    meter: RateMeter,
}

impl Progress {
    fn new(enabled: bool, started: Instant, targets: Targets) -> Progress {
        let mut meter = RateMeter::default();
        meter.update(Duration::ZERO, 0);
        Progress {
            enabled,
            started,
            next: started + Duration::from_secs(1),
            targets,
            meter,
        }
    }

    fn tick(&mut self, now: Instant, live: &Live) {
        if now < self.next {
            return;
        }
        self.next = now + Duration::from_secs(1);
        let totals = live.totals();
        let elapsed = now - self.started;
        let rate = self.meter.update(elapsed, totals.packets);
        if self.enabled {
            eprintln!(
                "{}",
                report::progress_line(elapsed, &totals, self.targets, rate)
            );
        }
    }
}

//! The summary of a load run: built from what every participant measured, printed as
//! a table or serialised as JSON, and the one-line progress report.
//!
//! Owns aggregation and formatting only; its inputs are plain values (participant
//! reports, the steady-state window, process readings), so it is I/O-free.
//!
//! Rates are taken over the steady window, from the end of the ramp to the stop, so
//! joins do not dilute them; loss, delay and received totals cover the whole run.
//! Loss includes a stream's tail: the packets its publisher sent after the newest one
//! a subscriber received, which the run's drain phase gave time to arrive.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::live::Totals;
use super::plan::{has_voice, publishers_heard, Planned, Role};
use super::procfs::{cpu_between, ProcSample};
use super::stats::{per_second, quantile, ReceiveStats};
use crate::signal::protocol::TrackKind;

/// What one participant hands back when it stops.
#[derive(Debug, Clone)]
pub struct ParticipantReport {
    pub identity: String,
    pub room: String,
    pub role: Role,
    /// A publisher's stream number, as its load headers carry it.
    pub stream: u32,
    /// Its place in the room, publishers first.
    pub seat: usize,
    /// From opening the socket to `joined`.
    pub join_time: Option<Duration>,
    /// From opening the socket to the first media packet received.
    pub first_media: Option<Duration>,
    pub received: ReceiveStats,
    /// Packets a publisher sent (or tried to) per kind: its next load sequence.
    pub sent_video: u64,
    pub sent_audio: u64,
    /// Why the participant did not join or stopped early.
    pub error: Option<String>,
}

impl ParticipantReport {
    /// The report of a participant before it has measured anything.
    pub fn new(plan: &Planned) -> ParticipantReport {
        ParticipantReport {
            identity: plan.identity.clone(),
            room: plan.room.clone(),
            role: plan.role,
            stream: plan.stream,
            seat: plan.seat,
            join_time: None,
            first_media: None,
            received: ReceiveStats::default(),
            sent_video: 0,
            sent_audio: 0,
            error: None,
        }
    }
}

/// Readings of one process: at the start, around the steady window, at the end.
#[derive(Debug, Clone, Copy)]
pub struct ProcReadings {
    pub pid: u32,
    pub start: ProcSample,
    pub steady_start: Option<ProcSample>,
    pub steady_end: Option<ProcSample>,
    pub end: Option<ProcSample>,
}

/// What the run was asked to do, as far as the summary needs it.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub audio: bool,
    /// Only the first this many publishers of each room send audio, taking turns
    /// to speak; `None`: every publisher sends audio (when `audio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speakers: Option<usize>,
}

/// Median and 99th percentile, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Delay {
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

/// CPU and memory of a node process.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// CPU time over the whole run; `None` if the process was gone at the end.
    pub cpu_seconds: Option<f64>,
    /// CPU time over the steady window.
    pub steady_cpu_seconds: Option<f64>,
    /// Time its threads waited for a CPU over the steady window: high when other
    /// work on the machine held the cores.
    pub steady_wait_seconds: Option<f64>,
    pub peak_rss_mib: Option<f64>,
}

/// One participant's line in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub identity: String,
    pub room: String,
    pub role: Role,
    pub join_ms: Option<f64>,
    pub first_media_ms: Option<f64>,
    pub video_packets: u64,
    pub audio_packets: u64,
    pub lost_packets: u64,
    /// Publishers whose video this participant received.
    pub publishers_heard: usize,
    /// Publishers whose video the server held back from this participant (last-N)
    /// before it sent any.
    pub publishers_held_back: usize,
    /// Expected video or audio but received none, or not from every publisher.
    pub missing_media: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub participants: usize,
    pub joined: usize,
    pub failed: usize,
    pub missing_media: usize,
    pub join_ms: Spread,
    pub first_media_ms: Spread,
    pub steady_seconds: f64,
    /// Packets received per second by all participants: what the nodes forwarded.
    pub packets_per_second: f64,
    /// RTP payload bytes received per second.
    pub bytes_per_second: f64,
    /// What one participant received, on average: payload bits per second.
    pub downlink_bits_per_second: f64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub lost_packets: u64,
    pub loss_ratio: f64,
    /// Packets received twice (retransmitted after all).
    pub duplicate_packets: u64,
    pub delay_ms: Delay,
    pub servers: Vec<ServerUsage>,
    /// Steady-window CPU time of all servers over the packets forwarded meanwhile.
    pub server_cpu_us_per_packet: Option<f64>,
    /// CPU time of the load generator itself, to tell whether it kept up.
    pub generator_cpu_seconds: Option<f64>,
    /// Time the generator's threads waited for a CPU over the steady window.
    pub generator_steady_wait_seconds: Option<f64>,
    pub sessions: Vec<SessionRow>,
}

/// The measurements that are not per participant.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub scenario: Scenario,
    /// Totals at the start and the end of the steady window.
    pub steady: (Totals, Totals),
    pub steady_time: Duration,
    pub servers: Vec<ProcReadings>,
    pub generator: Option<ProcReadings>,
    pub ticks_per_second: u64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn spread(samples: &[Duration]) -> Spread {
    Spread {
        p50: quantile(samples, 0.5).map(ms),
        p99: quantile(samples, 0.99).map(ms),
    }
}

impl ServerUsage {
    fn from_readings(r: &ProcReadings, ticks: u64) -> ServerUsage {
        let seconds = |a: ProcSample, b: ProcSample| cpu_between(a, b, ticks).as_secs_f64();
        ServerUsage {
            pid: r.pid,
            cpu_seconds: r.end.map(|end| seconds(r.start, end)),
            steady_cpu_seconds: r.steady_start.zip(r.steady_end).map(|(s, e)| seconds(s, e)),
            steady_wait_seconds: r
                .steady_start
                .zip(r.steady_end)
                .and_then(|(s, e)| Some(e.run_queue_wait?.saturating_sub(s.run_queue_wait?)))
                .map(|d| d.as_secs_f64()),
            peak_rss_mib: r
                .end
                .and_then(|e| e.peak_rss_kib)
                .map(|k| k as f64 / 1024.0),
        }
    }
}

/// How many publishers' video a participant should receive, and whether audio too.
fn expects_media(report: &ParticipantReport, scenario: &Scenario) -> (usize, bool) {
    let heard = publishers_heard(report.role, scenario.publishers);
    let voices = match scenario.speakers {
        None => heard,
        Some(speakers) => {
            let speakers = speakers.min(scenario.publishers);
            let speaks = report.role == Role::Publisher && has_voice(report.seat, Some(speakers));
            speakers - usize::from(speaks)
        }
    };
    (heard, voices > 0 && scenario.audio)
}

/// Packets each publisher sent, by stream number and kind.
type Sent = HashMap<(u32, TrackKind), u64>;

fn sent_by_stream(reports: &[ParticipantReport]) -> Sent {
    let publishers = reports.iter().filter(|r| r.role == Role::Publisher);
    let by_kind = |r: &ParticipantReport| {
        [
            ((r.stream, TrackKind::Video), r.sent_video),
            ((r.stream, TrackKind::Audio), r.sent_audio),
        ]
    };
    publishers.flat_map(by_kind).collect()
}

/// Lost and expected packets of one participant: gaps, plus each stream's tail.
fn loss_of(received: &ReceiveStats, sent: &Sent) -> (u64, u64) {
    let mut lost = 0;
    let mut expected = 0;
    for (id, track) in &received.tracks {
        let count = sent.get(&(track.stream, track.kind));
        let tail = match (count, track.sequence.highest()) {
            // A track paused at the end, or resumed after its newest packet and not
            // forwarded since, was held back from its tail on purpose.
            _ if received.paused.contains(id) || track.sequence.gap_pending() => 0,
            (Some(count), Some(highest)) => count.saturating_sub(highest + 1),
            _ => 0,
        };
        lost += track.sequence.lost() + tail;
        expected += track.sequence.expected() + tail;
    }
    (lost, expected)
}

fn session_row(report: &ParticipantReport, scenario: &Scenario, sent: &Sent) -> SessionRow {
    let video_packets = report.received.packets(TrackKind::Video);
    let audio_packets = report.received.packets(TrackKind::Audio);
    let (want_video, want_audio) = expects_media(report, scenario);
    let heard = report.received.streams(TrackKind::Video);
    // Publishers whose video the server holds back (last-N) are there all the same.
    let held_back = report.received.held_back_streams();
    let present = heard + held_back;
    let missing = present < want_video || (want_audio && audio_packets == 0);
    SessionRow {
        identity: report.identity.clone(),
        room: report.room.clone(),
        role: report.role,
        join_ms: report.join_time.map(ms),
        first_media_ms: report.first_media.map(ms),
        video_packets,
        audio_packets,
        lost_packets: loss_of(&report.received, sent).0,
        publishers_heard: heard,
        publishers_held_back: held_back,
        missing_media: report.join_time.is_some() && missing,
        error: report.error.clone(),
    }
}

/// Totals over every participant's reception.
#[derive(Debug, Default)]
struct Reception {
    packets: u64,
    bytes: u64,
    lost: u64,
    expected: u64,
    duplicates: u64,
}

fn reception(reports: &[ParticipantReport], sent: &Sent) -> Reception {
    let mut total = Reception::default();
    for received in reports.iter().map(|r| &r.received) {
        let (lost, expected) = loss_of(received, sent);
        total.packets += received.packets(TrackKind::Video) + received.packets(TrackKind::Audio);
        total.bytes += received.bytes(TrackKind::Video) + received.bytes(TrackKind::Audio);
        total.lost += lost;
        total.expected += expected;
        total.duplicates += received.duplicates();
    }
    total
}

fn delay_of(reports: &[ParticipantReport]) -> Delay {
    let mut delay = super::histogram::Histogram::default();
    for report in reports {
        delay.merge(&report.received.delay);
    }
    Delay {
        min: delay.min().map(ms),
        p50: delay.quantile(0.5).map(ms),
        p99: delay.quantile(0.99).map(ms),
        max: delay.max().map(ms),
        mean: delay.mean().map(ms),
    }
}

/// Steady-window CPU time of all servers per packet received meanwhile.
fn cpu_per_packet(servers: &[ServerUsage], packets: u64) -> Option<f64> {
    let cpu: Option<f64> = servers.iter().map(|s| s.steady_cpu_seconds).sum();
    cpu.filter(|_| packets > 0 && !servers.is_empty())
        .map(|cpu| cpu * 1e6 / packets as f64)
}

/// Aggregates the participants' reports and the run's facts.
pub fn summarise(reports: &[ParticipantReport], facts: &RunFacts) -> Summary {
    let sent = sent_by_stream(reports);
    let sessions: Vec<SessionRow> = reports
        .iter()
        .map(|r| session_row(r, &facts.scenario, &sent))
        .collect();
    let joins: Vec<Duration> = reports.iter().filter_map(|r| r.join_time).collect();
    let firsts: Vec<Duration> = reports.iter().filter_map(|r| r.first_media).collect();
    let total = reception(reports, &sent);

    let (before, after) = facts.steady;
    let steady_packets = after.packets.saturating_sub(before.packets);
    let steady_bytes = after.bytes.saturating_sub(before.bytes);
    let usage = |r: &ProcReadings| ServerUsage::from_readings(r, facts.ticks_per_second);
    let servers: Vec<ServerUsage> = facts.servers.iter().map(usage).collect();
    let generator = facts.generator.as_ref().map(usage);

    Summary {
        scenario: facts.scenario.clone(),
        participants: reports.len(),
        joined: joins.len(),
        failed: reports.len() - joins.len(),
        missing_media: sessions.iter().filter(|s| s.missing_media).count(),
        join_ms: spread(&joins),
        first_media_ms: spread(&firsts),
        steady_seconds: facts.steady_time.as_secs_f64(),
        packets_per_second: per_second(steady_packets, facts.steady_time),
        bytes_per_second: per_second(steady_bytes, facts.steady_time),
        downlink_bits_per_second: per_second(steady_bytes * 8, facts.steady_time)
            / joins.len().max(1) as f64,
        packets_received: total.packets,
        bytes_received: total.bytes,
        packets_sent: reports.iter().map(|r| r.sent_video + r.sent_audio).sum(),
        lost_packets: total.lost,
        loss_ratio: if total.expected == 0 {
            0.0
        } else {
            total.lost as f64 / total.expected as f64
        },
        duplicate_packets: total.duplicates,
        delay_ms: delay_of(reports),
        server_cpu_us_per_packet: cpu_per_packet(&servers, steady_packets),
        servers,
        generator_cpu_seconds: generator.as_ref().and_then(|g| g.cpu_seconds),
        generator_steady_wait_seconds: generator.as_ref().and_then(|g| g.steady_wait_seconds),
        sessions,
    }
}

/// Distinct error messages the table shows.
const MAX_ERROR_ROWS: usize = 3;

fn opt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

impl Summary {
    /// The summary as an aligned two-column table.
    pub fn table(&self) -> String {
        let s = &self.scenario;
        let mut rows = vec![
            (
                "scenario".to_owned(),
                format!(
                    "{} room(s) x ({} publishers + {} subscribers), audio {}",
                    s.rooms,
                    s.publishers,
                    s.subscribers,
                    match (s.audio, s.speakers) {
                        (false, _) => "off".to_owned(),
                        (true, None) => "on".to_owned(),
                        (true, Some(k)) => format!("from {k} speakers per room, in turns"),
                    }
                ),
            ),
            (
                "participants".to_owned(),
                format!(
                    "{} joined of {}, {} failed, {} without expected media",
                    self.joined, self.participants, self.failed, self.missing_media
                ),
            ),
            ("join time".to_owned(), self.spread_text(&self.join_ms)),
            (
                "first media".to_owned(),
                self.spread_text(&self.first_media_ms),
            ),
            (
                "received (steady)".to_owned(),
                format!(
                    "{:.0} packets/s, {:.1} kB/s payload over {:.1} s, {:.0} kbit/s \
                     per participant",
                    self.packets_per_second,
                    self.bytes_per_second / 1000.0,
                    self.steady_seconds,
                    self.downlink_bits_per_second / 1000.0
                ),
            ),
            (
                "loss".to_owned(),
                format!(
                    "{:.3} % ({} missing, {} received, {} duplicates, {} sent)",
                    self.loss_ratio * 100.0,
                    self.lost_packets,
                    self.packets_received,
                    self.duplicate_packets,
                    self.packets_sent
                ),
            ),
            (
                "one-way delay".to_owned(),
                format!(
                    "min {}, p50 {}, p99 {}, max {}",
                    opt_ms(self.delay_ms.min),
                    opt_ms(self.delay_ms.p50),
                    opt_ms(self.delay_ms.p99),
                    opt_ms(self.delay_ms.max)
                ),
            ),
        ];
        rows.extend(self.error_rows());
        rows.extend(self.server_rows());
        let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (label, value) in rows {
            let _ = writeln!(out, "{label:<width$}  {value}");
        }
        out
    }

    fn spread_text(&self, spread: &Spread) -> String {
        format!("p50 {}, p99 {}", opt_ms(spread.p50), opt_ms(spread.p99))
    }

    /// The most frequent reasons participants failed or stopped early.
    fn error_rows(&self) -> Vec<(String, String)> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for error in self.sessions.iter().filter_map(|s| s.error.as_deref()) {
            *counts.entry(error).or_default() += 1;
        }
        let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let rows = counts.into_iter().take(MAX_ERROR_ROWS);
        rows.map(|(error, n)| ("errors".to_owned(), format!("{n} x {error}")))
            .collect()
    }

    fn server_rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for server in &self.servers {
            let value = match (server.cpu_seconds, server.steady_cpu_seconds) {
                (Some(run), Some(steady)) => format!(
                    "CPU {run:.2} s (run), {steady:.2} s (steady), peak RSS {}{}",
                    server
                        .peak_rss_mib
                        .map_or_else(|| "-".to_owned(), |m| format!("{m:.1} MiB")),
                    waited(server.steady_wait_seconds)
                ),
                _ => "exited before the end of the run".to_owned(),
            };
            rows.push((format!("server pid {}", server.pid), value));
        }
        if let Some(per_packet) = self.server_cpu_us_per_packet {
            let text = format!("{per_packet:.1} us per forwarded packet (steady)");
            rows.push(("server CPU".to_owned(), text));
        }
        if let Some(cpu) = self.generator_cpu_seconds {
            let wait = waited(self.generator_steady_wait_seconds);
            rows.push(("generator CPU".to_owned(), format!("{cpu:.2} s{wait}")));
        }
        rows
    }
}

/// ", waited W s for a CPU (steady)", or nothing when unknown.
fn waited(seconds: Option<f64>) -> String {
    seconds.map_or_else(String::new, |w| {
        format!(", waited {w:.2} s for a CPU (steady)")
    })
}

/// How many participants a run starts, and how many of them receive media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub participants: usize,
    pub receivers: usize,
}

/// The once-a-second progress line; loss counts only gaps seen so far.
pub fn progress_line(elapsed: Duration, totals: &Totals, targets: Targets, rate: f64) -> String {
    format!(
        "[{:>6.1} s] joined {}/{} ({} failed), receiving {}/{}, {:.0} packets/s, gaps {:.3} %",
        elapsed.as_secs_f64(),
        totals.joined,
        targets.participants,
        totals.failed,
        totals.receiving,
        targets.receivers,
        rate,
        totals.loss_ratio() * 100.0
    )
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;

//! The down-track: one published track delivered to one subscriber.
//!
//! Two small tasks per down-track. The writer drains the queue the up-track fills
//! and writes each packet to the subscriber's local track, so that a subscriber
//! whose connection is slow only ever delays itself. The feedback reader turns the
//! subscriber's PLI and FIR into keyframe requests on the up-track.
//! Both stop when the queue closes (the up-track dropped this down-track or ended)
//! or when the subscriber's participant aborts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};

use crate::media::forwarder::DownTrackKey;
use crate::media::uptrack::{Outgoing, UpTrackCommand, UpTrackHandle};
use crate::metrics::{Direction, Kind, Metrics, Path, Task};

/// Counters for one down-track.
#[derive(Debug, Default)]
pub struct DownTrackCounters {
    /// Writes refused by the connection (not bound yet, or closing).
    pub write_errors: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

/// The running tasks of one down-track; dropping it does not stop them, `stop` does.
pub struct DownTrackTasks {
    writer: JoinHandle<()>,
    feedback: JoinHandle<()>,
    pub counters: Arc<DownTrackCounters>,
}

impl DownTrackTasks {
    pub fn stop(&self) {
        self.writer.abort();
        self.feedback.abort();
    }
}

/// Starts the writer and feedback tasks for a down-track fed from `queue`.
pub fn spawn(
    key: DownTrackKey,
    local: Arc<dyn TrackLocal>,
    queue: mpsc::Receiver<Outgoing>,
    up: UpTrackHandle,
    metrics: &Metrics,
) -> DownTrackTasks {
    let counters = Arc::new(DownTrackCounters::default());
    let kind = Kind::from(up.kind);
    let recorder = Recorder {
        sent: metrics.rtp_counters(Direction::Out, kind, Path::Client),
        delay: metrics.forwarding_delay(kind),
        _gauges: (
            metrics.task(Task::DownTrackWriter),
            metrics.track(kind, Direction::Out),
        ),
    };
    let writer = tokio::spawn(write_loop(local.clone(), queue, counters.clone(), recorder));
    let counters_for_feedback = counters.clone();
    let feedback_gauge = metrics.task(Task::DownTrackFeedback);
    let feedback = tokio::spawn(async move {
        let _gauge = feedback_gauge;
        feedback_loop(key, local, up, counters_for_feedback).await
    });
    DownTrackTasks {
        writer,
        feedback,
        counters,
    }
}

/// What the writer records: packets sent, sampled forwarding delays, and its presence.
struct Recorder {
    sent: crate::metrics::RtpCounters,
    delay: prometheus::Histogram,
    /// The writer task and the subscribed track, counted while the writer runs.
    _gauges: (crate::metrics::GaugeGuard, crate::metrics::GaugeGuard),
}

async fn write_loop(
    local: Arc<dyn TrackLocal>,
    mut queue: mpsc::Receiver<Outgoing>,
    counters: Arc<DownTrackCounters>,
    mut recorder: Recorder,
) {
    while let Some(Outgoing { packet, arrived }) = queue.recv().await {
        let bytes = packet.payload.len();
        // A write fails while the transceiver is not bound yet or is going away;
        // the packet is lost either way, and later ones may still go through.
        if local.write_rtp(packet).await.is_err() {
            counters.write_errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        recorder.sent.record(now, bytes);
        if let Some(arrived) = arrived {
            let delay = now.saturating_duration_since(arrived);
            recorder.delay.observe(delay.as_secs_f64());
        }
    }
}

async fn feedback_loop(
    key: DownTrackKey,
    local: Arc<dyn TrackLocal>,
    up: UpTrackHandle,
    counters: Arc<DownTrackCounters>,
) {
    while let Some(event) = local.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        // The feedback interceptor lets only PLI and FIR through to here.
        for _ in packets {
            counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
            if !up.send(UpTrackCommand::KeyframeRequest { from: key }) {
                return;
            }
        }
    }
}

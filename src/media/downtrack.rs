//! The down-track: one published track delivered to one subscriber.
//!
//! The up-track task hands each rewritten packet straight to the subscriber's
//! local track through a [`PeerSink`]. The write goes into the connection's own
//! bounded queue and never waits: when that queue is full, the packet is dropped
//! for this subscriber alone and counted, so a slow subscriber only ever delays
//! itself. There is no queue and no task of our own between the two, which saves
//! a channel send and a task wake-up per packet and subscriber.
//!
//! One small task per down-track remains, the feedback reader: it turns the
//! subscriber's PLI and FIR into keyframe requests on the up-track, and stops when
//! the up-track ends or when the subscriber's participant aborts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use rtc::rtp::packet::Packet;
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};

use crate::media::forwarder::DownTrackKey;
use crate::media::uptrack::{DownTrackSink, Offer, PacketMeta, UpTrackCommand, UpTrackHandle};
use crate::metrics::{Direction, GaugeGuard, Kind, Metrics, Path, RtpCounters, Task};

/// Counters for one down-track.
#[derive(Debug, Default)]
pub struct DownTrackCounters {
    /// Writes refused by the connection (not bound yet, or closing).
    pub write_errors: AtomicU64,
    pub keyframe_requests: AtomicU64,
}

/// The feedback task of one down-track; dropping it does not stop it, `stop` does.
pub struct DownTrackTasks {
    feedback: JoinHandle<()>,
    pub counters: Arc<DownTrackCounters>,
}

impl DownTrackTasks {
    pub fn stop(&self) {
        self.feedback.abort();
    }
}

/// Starts the feedback task of a down-track and returns it, with the sink to attach
/// to the up-track.
pub fn spawn(
    key: DownTrackKey,
    local: Arc<dyn TrackLocal>,
    up: UpTrackHandle,
    metrics: &Metrics,
) -> (DownTrackTasks, PeerSink) {
    let counters = Arc::new(DownTrackCounters::default());
    let kind = Kind::from(up.kind);
    let sink = PeerSink {
        local: local.clone(),
        counters: counters.clone(),
        sent: metrics.rtp_counters(Direction::Out, kind, Path::Client),
        delay: metrics.forwarding_delay(kind),
        _track: metrics.track(kind, Direction::Out),
    };
    let counters_for_feedback = counters.clone();
    let feedback_gauge = metrics.task(Task::DownTrackFeedback);
    let feedback = tokio::spawn(async move {
        let _gauge = feedback_gauge;
        feedback_loop(key, local, up, counters_for_feedback).await
    });
    let tasks = DownTrackTasks { feedback, counters };
    (tasks, sink)
}

/// Writes a down-track's packets to the subscriber's local track, and records
/// what it sent. Owned by the up-track task while the down-track is attached.
pub struct PeerSink {
    local: Arc<dyn TrackLocal>,
    counters: Arc<DownTrackCounters>,
    sent: RtpCounters,
    delay: prometheus::Histogram,
    /// The subscribed track, counted while it is attached.
    _track: GaugeGuard,
}

impl DownTrackSink for PeerSink {
    fn offer(&mut self, packet: Packet, meta: PacketMeta) -> Offer {
        let bytes = packet.payload.len();
        // The write completes at its first poll unless the connection's queue is
        // full (or its track lock is held for a rebind): then it is dropped, and
        // the packet with it.
        match self.local.write_rtp(packet).now_or_never() {
            Some(Ok(())) => {}
            // Refused while the transceiver is not bound yet or is going away; the
            // packet is lost either way, and later ones may still go through.
            Some(Err(_)) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                return Offer::Refused;
            }
            None => return Offer::Full,
        }
        let now = Instant::now();
        self.sent.record(now, bytes);
        if let Some(arrived) = meta.arrived {
            let delay = now.saturating_duration_since(arrived);
            self.delay.observe(delay.as_secs_f64());
        }
        Offer::Taken
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

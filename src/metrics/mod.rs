//! Prometheus metrics of a node: what an operator needs to run relais from Grafana.
//!
//! Owns: one [`Metrics`] per node, holding every family in a registry of its own, and the
//! listener that serves them (`/metrics` on `metrics.listen`, apart from the signaling port so
//! that it can stay private). Names follow Prometheus conventions: the `relais_` prefix, base
//! units in the name (`_seconds`, `_bytes`, `_ratio`), `_total` on counters only. Labels come
//! from the closed sets in [`labels`]; every series is created at start-up with a zero value,
//! and no label ever holds a room, participant, track or address.
//!
//! Sharing: `Metrics` lives in an `Arc` on the node's context ([`NodeContext`]), handed to
//! whoever records. Not a process-wide global: two nodes in one process (tests) keep apart,
//! and a module's dependence on metrics shows in what it is given.
//!
//! Hot path: per-packet counts go to [`RtpCounters`], local (unsynchronised) counters owned by
//! the up-track tasks and their down-track sinks, and flushed to the shared families about
//! once a second; the forwarding delay is measured on one packet in [`DELAY_SAMPLE_EVERY`].
//! The I/O-free forwarder records nothing itself.
//!
//! # Families
//!
//! | family | type | labels | recorded by |
//! |---|---|---|---|
//! | `relais_build_info` | gauge (1) | version, node, region | start-up |
//! | `relais_node_state` | gauge (0/1) | state | placement status, on scrape |
//! | `relais_rooms` | gauge | role | room registry, on scrape |
//! | `relais_participants` | gauge | | [`Metrics::participant`] |
//! | `relais_tracks` | gauge | kind, direction | [`Metrics::track`] |
//! | `relais_joins_total` | counter | result | [`Metrics::join`] |
//! | `relais_join_duration_seconds` | histogram | | [`Metrics::join_connected`] |
//! | `relais_rtp_packets_total` | counter | direction, kind, path | [`RtpCounters`] |
//! | `relais_rtp_payload_bytes_total` | counter | direction, kind, path | [`RtpCounters`] |
//! | `relais_rtp_packets_lost_total` | counter | direction, kind | RTCP tap |
//! | `relais_rtcp_nacks_total` | counter | direction | RTCP tap |
//! | `relais_rtp_retransmitted_packets_total` | counter | | RTCP tap |
//! | `relais_keyframe_requests_total` | counter | type, direction | RTCP tap |
//! | `relais_rtp_jitter_seconds` | histogram | direction, kind | RTCP tap |
//! | `relais_rtt_seconds` | histogram | kind | RTCP tap |
//! | `relais_forwarding_delay_seconds` | histogram | kind | down-track sink |
//! | `relais_down_track_queue_drops_total` | counter | kind | up-track |
//! | `relais_cascade_links` | gauge | state | [`Metrics::set_cascade_links`] |
//! | `relais_cascade_reconnects_total` | counter | | [`Metrics::cascade_reconnect`] |
//! | `relais_etcd_request_duration_seconds` | histogram | operation | etcd placement |
//! | `relais_etcd_lease_keepalive_failures_total` | counter | | placement, on scrape |
//! | `relais_room_ownership_changes_total` | counter | reason | placement, on scrape |
//! | `relais_fencing_rejections_total` | counter | kind | placement, on scrape |
//! | `relais_tasks` | gauge | task | [`Metrics::task`] |
//! | `relais_bandwidth_limited_participants` | gauge | | [`Metrics::bandwidth_limited`] |
//! | `process_*` | | | the process collector (CPU, memory, open files) |
//!
//! Direction `in` is what this node receives (published tracks, RTP from publishers, NACKs
//! and keyframe requests from subscribers); `out` is what it sends. Loss and jitter `in` are
//! measured by this node on what publishers send; `out` are what subscribers report in RTCP
//! receiver reports. The round-trip time is that of subscribers' receiver reports. The
//! "RTCP tap" is the interceptor in [`rtcp`], at the wire end of every peer connection.
//!
//! # For cluster code
//!
//! On every scrape the listener reads the node state and the [`ClusterCounters`] from the
//! placement ([`Metrics::sync_placement`]) and the number of rooms from the registry (a
//! room actor lives on a node only while it owns the room). The etcd placement times each
//! request through [`Metrics::time_etcd`], labelled by [`EtcdRequest`].
//!
//! Events the placement does not count yet are recorded directly, without double counting
//! what [`Metrics::sync_placement`] carries over: [`Metrics::ownership_change`] with
//! [`OwnershipChange::Released`], [`Metrics::set_rooms`] with [`RoomRole::Shard`],
//! [`Metrics::etcd_request`] for a request timed elsewhere. Cascades, once they exist,
//! record through [`Metrics::set_cascade_links`], [`Metrics::cascade_reconnect`] and
//! [`Metrics::rtp_counters`] with [`Path::Cascade`]; until then those series stay at zero.
//!
//! [`ClusterCounters`]: crate::cluster::ClusterCounters
//!
//! [`NodeContext`]: crate::participant::NodeContext

mod cluster;
mod guards;
pub mod http;
pub mod labels;
pub mod rtcp;

use std::future::Future;
use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub use cluster::EtcdRequest;
pub use guards::{GaugeGuard, RtpCounters, DELAY_SAMPLE_EVERY};
pub use labels::*;

const JOIN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0];
const JITTER_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5];
const RTT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0];
const DELAY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];
const ETCD_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Every metric family of one node. See the module documentation for the list.
pub struct Metrics {
    /// The registry the listener encodes; holds every family below.
    registry: Registry,
    node_state: IntGaugeVec,
    rooms: IntGaugeVec,
    participants: IntGauge,
    tracks: IntGaugeVec,
    joins: IntCounterVec,
    join_duration: Histogram,
    rtp_packets: IntCounterVec,
    rtp_bytes: IntCounterVec,
    packets_lost: IntCounterVec,
    nacks: IntCounterVec,
    retransmissions: IntCounter,
    keyframe_requests: IntCounterVec,
    jitter: HistogramVec,
    rtt: HistogramVec,
    forwarding_delay: HistogramVec,
    queue_drops: IntCounterVec,
    cascade_links: IntGaugeVec,
    cascade_reconnects: IntCounter,
    etcd_duration: HistogramVec,
    keepalive_failures: IntCounter,
    ownership_changes: IntCounterVec,
    fencing_rejections: IntCounterVec,
    tasks: IntGaugeVec,
    bandwidth_limited: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh set of families for the node `node` in `region`, every series at zero, the
    /// node `serving`.
    pub fn new(node: &str, region: &str) -> Metrics {
        let r = Families::new();
        let build_info = r.gauge_vec(
            "relais_build_info",
            "Always 1: the relais version, node id and region of this process.",
            &["version", "node", "region"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), node, region])
            .set(1);

        let metrics = Metrics {
            node_state: r.gauge_vec(
                "relais_node_state",
                "1 for the state the node is in (serving, draining, fenced), else 0.",
                &["state"],
            ),
            rooms: r.gauge_vec(
                "relais_rooms",
                "Rooms this node takes part in, by its role in them.",
                &["role"],
            ),
            participants: r.gauge(
                "relais_participants",
                "Participants whose session runs on this node.",
            ),
            tracks: r.gauge_vec(
                "relais_tracks",
                "Tracks on this node: published (in) and subscribed (out).",
                &["kind", "direction"],
            ),
            joins: r.counter_vec(
                "relais_joins_total",
                "Attempts to join a room, by how they ended.",
                &["result"],
            ),
            join_duration: r.histogram(
                "relais_join_duration_seconds",
                "Time from a client's join request to its media connecting (DTLS up).",
                JOIN_BUCKETS,
            ),
            rtp_packets: r.counter_vec(
                "relais_rtp_packets_total",
                "RTP packets received from publishers (in) and sent to subscribers (out).",
                &["direction", "kind", "path"],
            ),
            rtp_bytes: r.counter_vec(
                "relais_rtp_payload_bytes_total",
                "RTP payload bytes received (in) and sent (out).",
                &["direction", "kind", "path"],
            ),
            packets_lost: r.counter_vec(
                "relais_rtp_packets_lost_total",
                "RTP packets lost: from publishers (in, measured here) and towards \
                 subscribers (out, from their receiver reports).",
                &["direction", "kind"],
            ),
            nacks: r.counter_vec(
                "relais_rtcp_nacks_total",
                "NACKs received from subscribers (in) and sent to publishers (out).",
                &["direction"],
            ),
            retransmissions: r.counter(
                "relais_rtp_retransmitted_packets_total",
                "Packets retransmitted to subscribers in answer to their NACKs.",
            ),
            keyframe_requests: r.counter_vec(
                "relais_keyframe_requests_total",
                "Keyframe requests received from subscribers (in) and sent to publishers (out).",
                &["type", "direction"],
            ),
            jitter: r.histogram_vec(
                "relais_rtp_jitter_seconds",
                "Interarrival jitter per stream: of publishers' streams measured here (in), \
                 of subscribers' streams from their receiver reports (out).",
                &["direction", "kind"],
                JITTER_BUCKETS,
            ),
            rtt: r.histogram_vec(
                "relais_rtt_seconds",
                "Round-trip time to subscribers, from their RTCP receiver reports.",
                &["kind"],
                RTT_BUCKETS,
            ),
            forwarding_delay: r.histogram_vec(
                "relais_forwarding_delay_seconds",
                "Time from a packet's arrival from the publisher to its write towards a \
                 subscriber, sampled.",
                &["kind"],
                DELAY_BUCKETS,
            ),
            queue_drops: r.counter_vec(
                "relais_down_track_queue_drops_total",
                "Packets dropped because a subscriber's down-track queue was full.",
                &["kind"],
            ),
            cascade_links: r.gauge_vec(
                "relais_cascade_links",
                "Cascade media links of this node to other nodes, by state.",
                &["state"],
            ),
            cascade_reconnects: r.counter(
                "relais_cascade_reconnects_total",
                "Times a lost cascade link was set up again.",
            ),
            etcd_duration: r.histogram_vec(
                "relais_etcd_request_duration_seconds",
                "Duration of etcd requests, by operation.",
                &["operation"],
                ETCD_BUCKETS,
            ),
            keepalive_failures: r.counter(
                "relais_etcd_lease_keepalive_failures_total",
                "Lease keep-alives towards etcd that failed or went unanswered.",
            ),
            ownership_changes: r.counter_vec(
                "relais_room_ownership_changes_total",
                "Changes of room ownership involving this node, by reason.",
                &["reason"],
            ),
            fencing_rejections: r.counter_vec(
                "relais_fencing_rejections_total",
                "Operations refused because they carried a stale ownership epoch.",
                &["kind"],
            ),
            tasks: r.gauge_vec(
                "relais_tasks",
                "Long-lived asynchronous tasks relais runs, by what they do.",
                &["task"],
            ),
            bandwidth_limited: r.gauge(
                "relais_bandwidth_limited_participants",
                "Participants whose downlink holds back video below what their tiles call for.",
            ),
            registry: r.finish(),
        };
        metrics.preinitialise();
        metrics.set_node_state(NodeState::Serving);
        metrics
    }

    /// Creates every labelled series, so each shows in a scrape before its first event.
    fn preinitialise(&self) {
        for state in NodeState::ALL {
            self.node_state.with_label_values(&[state.as_str()]);
        }
        for role in RoomRole::ALL {
            self.rooms.with_label_values(&[role.as_str()]);
        }
        for result in JoinResult::ALL {
            self.joins.with_label_values(&[result.as_str()]);
        }
        for kind in Kind::ALL {
            let k = kind.as_str();
            self.rtt.with_label_values(&[k]);
            self.forwarding_delay.with_label_values(&[k]);
            self.queue_drops.with_label_values(&[k]);
            for direction in Direction::ALL {
                let d = direction.as_str();
                self.tracks.with_label_values(&[k, d]);
                self.packets_lost.with_label_values(&[d, k]);
                self.jitter.with_label_values(&[d, k]);
                for path in Path::ALL {
                    self.rtp_packets.with_label_values(&[d, k, path.as_str()]);
                    self.rtp_bytes.with_label_values(&[d, k, path.as_str()]);
                }
            }
        }
        for direction in Direction::ALL {
            self.nacks.with_label_values(&[direction.as_str()]);
            for request in KeyframeRequest::ALL {
                let labels = [request.as_str(), direction.as_str()];
                self.keyframe_requests.with_label_values(&labels);
            }
        }
        for state in LinkState::ALL {
            self.cascade_links.with_label_values(&[state.as_str()]);
        }
        for op in EtcdOperation::ALL {
            self.etcd_duration.with_label_values(&[op.as_str()]);
        }
        for reason in OwnershipChange::ALL {
            self.ownership_changes.with_label_values(&[reason.as_str()]);
        }
        for kind in Fencing::ALL {
            self.fencing_rejections.with_label_values(&[kind.as_str()]);
        }
        for task in Task::ALL {
            self.tasks.with_label_values(&[task.as_str()]);
        }
    }

    /// Every family in the Prometheus text format.
    pub fn encode(&self) -> String {
        let families = self.registry.gather();
        // Encoding text into a String fails only on a malformed family, which new() excludes.
        TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }

    /// Marks `state` as the node's state (1) and every other state 0.
    pub fn set_node_state(&self, state: NodeState) {
        for s in NodeState::ALL {
            let value = i64::from(*s == state);
            self.node_state.with_label_values(&[s.as_str()]).set(value);
        }
    }

    /// The number of rooms in which this node has `role`.
    pub fn set_rooms(&self, role: RoomRole, rooms: usize) {
        let rooms = i64::try_from(rooms).unwrap_or(i64::MAX);
        self.rooms.with_label_values(&[role.as_str()]).set(rooms);
    }

    /// Counts one join attempt that ended with `result`.
    pub fn join(&self, result: JoinResult) {
        self.joins.with_label_values(&[result.as_str()]).inc();
    }

    /// A join reached media connected `elapsed` after the join request: counts a success
    /// and observes the duration.
    pub fn join_connected(&self, elapsed: Duration) {
        self.join(JoinResult::Success);
        self.join_duration.observe(elapsed.as_secs_f64());
    }

    /// Counts a participant for as long as the guard lives.
    pub fn participant(&self) -> GaugeGuard {
        GaugeGuard::new(self.participants.clone())
    }

    /// Counts a track for as long as the guard lives.
    pub fn track(&self, kind: Kind, direction: Direction) -> GaugeGuard {
        let gauge = self
            .tracks
            .with_label_values(&[kind.as_str(), direction.as_str()]);
        GaugeGuard::new(gauge)
    }

    /// Counts a participant held back by its downlink for as long as the guard lives.
    pub fn bandwidth_limited(&self) -> GaugeGuard {
        GaugeGuard::new(self.bandwidth_limited.clone())
    }

    /// Counts a running task for as long as the guard lives.
    pub fn task(&self, task: Task) -> GaugeGuard {
        GaugeGuard::new(self.tasks.with_label_values(&[task.as_str()]))
    }

    /// Local counters of RTP packets and payload bytes for one task's stream.
    pub fn rtp_counters(&self, direction: Direction, kind: Kind, path: Path) -> RtpCounters {
        let labels = [direction.as_str(), kind.as_str(), path.as_str()];
        RtpCounters::new(
            self.rtp_packets.with_label_values(&labels),
            self.rtp_bytes.with_label_values(&labels),
        )
    }

    /// The forwarding-delay histogram of `kind`, for a down-track writer to observe into.
    pub fn forwarding_delay(&self, kind: Kind) -> Histogram {
        self.forwarding_delay.with_label_values(&[kind.as_str()])
    }

    /// The queue-drop counter of `kind`, for an up-track to count into.
    pub fn queue_drops(&self, kind: Kind) -> IntCounter {
        self.queue_drops.with_label_values(&[kind.as_str()])
    }

    /// Counts one keyframe request of `request` type.
    pub fn keyframe_request(&self, request: KeyframeRequest, direction: Direction) {
        let labels = [request.as_str(), direction.as_str()];
        self.keyframe_requests.with_label_values(&labels).inc();
    }

    /// The number of cascade links in `state`.
    pub fn set_cascade_links(&self, state: LinkState, links: usize) {
        let links = i64::try_from(links).unwrap_or(i64::MAX);
        self.cascade_links
            .with_label_values(&[state.as_str()])
            .set(links);
    }

    /// Counts a cascade link set up again after it was lost.
    pub fn cascade_reconnect(&self) {
        self.cascade_reconnects.inc();
    }

    /// Observes the duration of one etcd request.
    pub fn etcd_request(&self, operation: EtcdOperation, duration: Duration) {
        self.etcd_duration
            .with_label_values(&[operation.as_str()])
            .observe(duration.as_secs_f64());
    }

    /// Runs `request` and observes how long it took, whatever it returned.
    pub async fn time_etcd<T>(
        &self,
        operation: EtcdOperation,
        request: impl Future<Output = T>,
    ) -> T {
        let start = Instant::now();
        let result = request.await;
        self.etcd_request(operation, start.elapsed());
        result
    }

    /// Counts a lease keep-alive that failed or went unanswered.
    pub fn keepalive_failure(&self) {
        self.keepalive_failures.inc();
    }

    /// Counts a change of ownership of one room.
    pub fn ownership_change(&self, reason: OwnershipChange) {
        self.ownership_counter(reason).inc();
    }

    fn ownership_counter(&self, reason: OwnershipChange) -> IntCounter {
        self.ownership_changes.with_label_values(&[reason.as_str()])
    }

    /// Counts an operation refused by fencing.
    pub fn fencing_rejection(&self, kind: Fencing) {
        self.fencing_counter(kind).inc();
    }

    fn fencing_counter(&self, kind: Fencing) -> IntCounter {
        self.fencing_rejections.with_label_values(&[kind.as_str()])
    }

    /// Records one reception report about a stream going `direction`.
    pub fn observe_report(&self, direction: Direction, reading: &rtcp::ReportReading) {
        let (d, k) = (direction.as_str(), reading.kind.as_str());
        self.packets_lost
            .with_label_values(&[d, k])
            .inc_by(reading.lost);
        self.jitter
            .with_label_values(&[d, k])
            .observe(reading.jitter_seconds);
        if let Some(rtt) = reading.rtt_seconds {
            self.rtt.with_label_values(&[k]).observe(rtt);
        }
    }

    /// Counts one NACK packet received (`In`) or sent (`Out`).
    pub fn nack(&self, direction: Direction) {
        self.nacks.with_label_values(&[direction.as_str()]).inc();
    }

    /// Counts one packet retransmitted in answer to a NACK.
    pub fn retransmission(&self) {
        self.retransmissions.inc();
    }
}

/// Creates families and registers them; registration fails only for a duplicate or
/// malformed name, which is a bug in [`Metrics::new`], hence the `expect`s.
struct Families {
    registry: Registry,
}

impl Families {
    fn new() -> Self {
        Families {
            registry: Registry::new(),
        }
    }

    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.registry
            .register(Box::new(metric.clone()))
            .expect("family names in Metrics::new are valid and distinct");
        metric
    }

    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid gauge"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid counter"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid histogram"))
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid histogram"))
    }

    /// Adds the process collector (CPU, memory, open files) and hands the registry over.
    fn finish(self) -> Registry {
        #[cfg(target_os = "linux")]
        self.register_process_collector();
        self.registry
    }

    #[cfg(target_os = "linux")]
    fn register_process_collector(&self) {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        self.registry
            .register(Box::new(collector))
            .expect("the process collector is registered once");
    }
}

#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use rtc::interceptor::StreamInfo;
use rtc::rtcp::reception_report::ReceptionReport;

use super::rtcp::{round_trip, ReportState};
use super::*;

/// The value of the series `name{labels}` in a scrape, labels as written in the text format.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn every_family_is_exported_before_anything_happens() {
    let metrics = Metrics::new("node-a", "eu-west");
    let scrape = metrics.encode();
    let build = "relais_build_info{node=\"node-a\",region=\"eu-west\",version=\"";
    assert!(scrape.contains(build), "{scrape}");
    let zeroes = [
        "relais_joins_total{result=\"abandoned\"}",
        "relais_rtp_packets_total{direction=\"out\",kind=\"video\",path=\"cascade\"}",
        "relais_rtp_packets_lost_total{direction=\"in\",kind=\"audio\"}",
        "relais_keyframe_requests_total{direction=\"in\",type=\"fir\"}",
        "relais_rooms{role=\"shard\"}",
        "relais_cascade_links{state=\"up\"}",
        "relais_cascade_reconnects_total",
        "relais_etcd_request_duration_seconds_count{operation=\"txn\"}",
        "relais_etcd_lease_keepalive_failures_total",
        "relais_room_ownership_changes_total{reason=\"acquired\"}",
        "relais_fencing_rejections_total{kind=\"stale_epoch\"}",
        "relais_tasks{task=\"up_track\"}",
        "relais_participants",
        "relais_join_duration_seconds_count",
        "relais_rtt_seconds_count{kind=\"video\"}",
        "relais_forwarding_delay_seconds_count{kind=\"audio\"}",
    ];
    for series in zeroes {
        assert_eq!(value(&scrape, series), Some(0.0), "{series} in {scrape}");
    }
    assert!(scrape.contains("process_resident_memory_bytes"));
    assert!(scrape.contains("process_open_fds"));
}

#[test]
fn exactly_one_node_state_is_set() {
    let metrics = Metrics::new("n", "r");
    metrics.set_node_state(NodeState::Fenced);
    let scrape = metrics.encode();
    assert_eq!(
        value(&scrape, "relais_node_state{state=\"fenced\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "relais_node_state{state=\"serving\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&scrape, "relais_node_state{state=\"draining\"}"),
        Some(0.0)
    );
}

#[test]
fn guards_count_while_they_live() {
    let metrics = Metrics::new("n", "r");
    let a = metrics.track(Kind::Video, Direction::Out);
    let b = metrics.track(Kind::Video, Direction::Out);
    let series = "relais_tracks{direction=\"out\",kind=\"video\"}";
    assert_eq!(value(&metrics.encode(), series), Some(2.0));
    drop((a, b));
    assert_eq!(value(&metrics.encode(), series), Some(0.0));
}

#[test]
fn rtp_counters_flush_each_second_and_when_dropped() {
    let metrics = Metrics::new("n", "r");
    let series = "relais_rtp_packets_total{direction=\"in\",kind=\"audio\",path=\"client\"}";
    let bytes = "relais_rtp_payload_bytes_total{direction=\"in\",kind=\"audio\",path=\"client\"}";
    let mut counters = metrics.rtp_counters(Direction::In, Kind::Audio, Path::Client);
    let t0 = Instant::now();
    counters.record(t0, 100);
    counters.record(t0 + Duration::from_millis(500), 100);
    assert_eq!(value(&metrics.encode(), series), Some(0.0));
    counters.record(t0 + Duration::from_millis(1000), 100);
    assert_eq!(value(&metrics.encode(), series), Some(3.0));
    assert_eq!(value(&metrics.encode(), bytes), Some(300.0));
    counters.record(t0 + Duration::from_millis(1100), 50);
    drop(counters);
    assert_eq!(value(&metrics.encode(), series), Some(4.0));
    assert_eq!(value(&metrics.encode(), bytes), Some(350.0));
}

#[test]
fn joins_count_results_and_durations() {
    let metrics = Metrics::new("n", "r");
    metrics.join(JoinResult::Unauthorized);
    metrics.join_connected(Duration::from_millis(300));
    let scrape = metrics.encode();
    assert_eq!(
        value(&scrape, "relais_joins_total{result=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "relais_joins_total{result=\"unauthorized\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "relais_join_duration_seconds_sum"),
        Some(0.3)
    );
}

#[test]
fn cluster_events_are_counted() {
    let metrics = Metrics::new("n", "r");
    metrics.etcd_request(EtcdOperation::Put, Duration::from_millis(4));
    metrics.keepalive_failure();
    metrics.ownership_change(OwnershipChange::Lost);
    metrics.fencing_rejection(Fencing::FencedNode);
    metrics.set_rooms(RoomRole::Shard, 3);
    metrics.set_cascade_links(LinkState::Down, 2);
    metrics.cascade_reconnect();
    let scrape = metrics.encode();
    let expect = [
        (
            "relais_etcd_request_duration_seconds_count{operation=\"put\"}",
            1.0,
        ),
        ("relais_etcd_lease_keepalive_failures_total", 1.0),
        ("relais_room_ownership_changes_total{reason=\"lost\"}", 1.0),
        ("relais_fencing_rejections_total{kind=\"fenced_node\"}", 1.0),
        ("relais_rooms{role=\"shard\"}", 3.0),
        ("relais_cascade_links{state=\"down\"}", 2.0),
        ("relais_cascade_reconnects_total", 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&scrape, series), Some(want), "{series}");
    }
}

fn ntp(seconds: u64, fraction_of_65536: u64) -> u64 {
    (seconds << 32) | (fraction_of_65536 << 16)
}

#[test]
fn round_trip_subtracts_the_receivers_delay() {
    // Sender report at 1000.0 s (middle bits), echoed after a 0.25 s hold, arriving at 1000.5.
    let lsr = (1000u32 & 0xFFFF) << 16;
    let rtt = round_trip(ntp(1000, 32768), lsr, 16384).expect("an echo");
    assert_eq!(rtt, Duration::from_millis(250));
    assert_eq!(
        round_trip(ntp(1000, 0), 0, 0),
        None,
        "no sender report echoed"
    );
    assert_eq!(
        round_trip(ntp(1000, 0), lsr, 65536 * 5),
        None,
        "negative wraps"
    );
}

fn stream(ssrc: u32, mime: &str, clock_rate: u32) -> StreamInfo {
    StreamInfo {
        ssrc,
        mime_type: mime.into(),
        clock_rate,
        ..Default::default()
    }
}

fn block(ssrc: u32, total_lost: u32, jitter: u32) -> ReceptionReport {
    ReceptionReport {
        ssrc,
        total_lost,
        jitter,
        ..Default::default()
    }
}

#[test]
fn reports_become_loss_deltas_and_jitter_in_seconds() {
    let mut state = ReportState::default();
    state.bind(Direction::Out, &stream(7, "video/VP8", 90_000));
    state.bind(Direction::In, &stream(9, "audio/opus", 48_000));

    let first = state
        .handle_report(Direction::Out, &block(7, 5, 900), 0)
        .unwrap();
    assert_eq!((first.kind, first.lost), (Kind::Video, 0));
    assert!((first.jitter_seconds - 0.01).abs() < 1e-9);
    let next = state
        .handle_report(Direction::Out, &block(7, 8, 0), 0)
        .unwrap();
    assert_eq!(next.lost, 3);
    let back = state
        .handle_report(Direction::Out, &block(7, 6, 0), 0)
        .unwrap();
    assert_eq!(back.lost, 0, "a cumulative count stepping back is no loss");

    let audio = state
        .handle_report(Direction::In, &block(9, 0, 480), 0)
        .unwrap();
    assert_eq!(audio.kind, Kind::Audio);
    assert_eq!(
        audio.rtt_seconds, None,
        "our own reports carry no round trip"
    );
    assert!(state
        .handle_report(Direction::In, &block(7, 0, 0), 0)
        .is_none());
    state.unbind(Direction::Out, 7);
    assert!(state
        .handle_report(Direction::Out, &block(7, 9, 0), 0)
        .is_none());
}

#[test]
fn placement_counters_are_carried_over_once() {
    use std::sync::atomic::Ordering;

    let metrics = Metrics::new("n", "r");
    let counters = crate::cluster::ClusterCounters::default();
    counters.stale_epoch.store(3, Ordering::Relaxed);
    counters.rooms_lost.store(2, Ordering::Relaxed);
    counters.keepalive_failures.store(1, Ordering::Relaxed);
    metrics.sync_placement(crate::cluster::NodeState::Fenced, &counters);
    metrics.sync_placement(crate::cluster::NodeState::Fenced, &counters);
    counters.rooms_lost.store(5, Ordering::Relaxed);
    metrics.sync_placement(crate::cluster::NodeState::Fenced, &counters);
    let scrape = metrics.encode();
    let expect = [
        ("relais_fencing_rejections_total{kind=\"stale_epoch\"}", 3.0),
        ("relais_room_ownership_changes_total{reason=\"lost\"}", 5.0),
        ("relais_etcd_lease_keepalive_failures_total", 1.0),
        ("relais_node_state{state=\"fenced\"}", 1.0),
    ];
    for (series, want) in expect {
        assert_eq!(value(&scrape, series), Some(want), "{series}");
    }
}

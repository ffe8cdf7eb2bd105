//! Metrics of a two-node cluster (placed through etcd) under a little load: every family is
//! exported with sane values, `promtool` finds no naming problem, and every dashboard query
//! runs against a real Prometheus scraping the nodes. The alert rules are checked and
//! unit-tested by `promtool`.

mod common;
#[path = "metrics/prom.rs"]
mod prom;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use relais::client::{Client, ClientEvent, ClientOptions};
use relais::signal::protocol::{ServerMessage, TrackKind};
use tokio::time::Instant;

/// A meeting joined through one node (the placement may send it to the other): alice
/// publishes audio and video, bob receives with some loss.
struct Meeting {
    alice: Client,
    bob: Client,
    sender: tokio::task::JoinHandle<()>,
}

async fn meeting(node: &Node, room: &str) -> Meeting {
    let mut alice = node.join(room, "alice").await;
    let options = ClientOptions {
        // Bob loses one packet in 25, so that NACKs, retransmissions and loss are counted.
        drop_every_nth_rtp: Some(25),
        ..node.options(room, "bob")
    };
    let mut bob = Client::connect(options).await.expect("bob connects");
    bob.wait_for(Duration::from_secs(10), "joined", |e| match e {
        ClientEvent::Server(ServerMessage::Joined { .. }) => Some(()),
        _ => None,
    })
    .await
    .expect("bob joined");
    let video = publish(&alice, "cam", TrackKind::Video).await;
    let audio = publish(&alice, "mic", TrackKind::Audio).await;
    let sender = stream(vec![video, audio], 100_000);
    published_ids(&mut alice, &["cam", "mic"]).await;
    Meeting { alice, bob, sender }
}

/// Series name with labels as written in a scrape, to its value.
fn parse(scrape: &str) -> HashMap<String, f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every series of family `name` whose labels contain all of `labels`.
fn sum(series: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    series
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .filter(|(k, _)| labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

/// What each healthy node shows, whatever it serves.
const EVERY_NODE: &[(&str, &[&str], f64)] = &[
    ("relais_build_info", &[], 1.0),
    ("relais_node_state", &["state=\"serving\""], 1.0),
];

/// What two nodes with two meetings of two show between them.
const CLUSTER: &[(&str, &[&str], f64)] = &[
    ("relais_rooms", &["role=\"owner\""], 2.0),
    ("relais_participants", &[], 4.0),
    ("relais_tracks", &["direction=\"in\""], 4.0),
    ("relais_tracks", &["direction=\"out\""], 4.0),
    ("relais_joins_total", &["result=\"success\""], 4.0),
    ("relais_join_duration_seconds_count", &[], 4.0),
    ("relais_tasks", &["task=\"up_track\""], 4.0),
    ("relais_tasks", &["task=\"down_track_feedback\""], 4.0),
];

/// Families that must have counted something (more than zero) under the load, summed
/// over the nodes.
const GROWING: &[(&str, &[&str])] = &[
    (
        "relais_etcd_request_duration_seconds_count",
        &["operation=\"txn\""],
    ),
    (
        "relais_etcd_request_duration_seconds_count",
        &["operation=\"lease_grant\""],
    ),
    (
        "relais_room_ownership_changes_total",
        &["reason=\"acquired\""],
    ),
    (
        "relais_rtp_packets_total",
        &["direction=\"in\"", "kind=\"video\""],
    ),
    (
        "relais_rtp_packets_total",
        &["direction=\"out\"", "kind=\"audio\""],
    ),
    (
        "relais_rtp_payload_bytes_total",
        &["direction=\"out\"", "kind=\"video\""],
    ),
    ("relais_forwarding_delay_seconds_count", &[]),
    (
        "relais_keyframe_requests_total",
        &["type=\"pli\"", "direction=\"out\""],
    ),
    ("relais_rtcp_nacks_total", &["direction=\"in\""]),
    ("relais_rtp_retransmitted_packets_total", &[]),
    ("relais_rtp_packets_lost_total", &["direction=\"out\""]),
    ("relais_rtp_jitter_seconds_count", &["direction=\"in\""]),
    ("relais_rtp_jitter_seconds_count", &["direction=\"out\""]),
    ("relais_rtt_seconds_count", &[]),
    ("process_cpu_seconds_total", &[]),
    ("process_resident_memory_bytes", &[]),
    ("process_open_fds", &[]),
];

/// Families that exist with all their series but count nothing on a healthy single node.
const PRESENT: &[&str] = &[
    "relais_cascade_links",
    "relais_cascade_reconnects_total",
    "relais_etcd_request_duration_seconds_bucket",
    "relais_etcd_lease_keepalive_failures_total",
    "relais_room_ownership_changes_total",
    "relais_fencing_rejections_total",
    "relais_down_track_queue_drops_total",
    "relais_tasks",
    "relais_bandwidth_limited_participants",
];

/// What is still missing from the nodes' scrapes, empty once they show everything.
fn missing(scrapes: &[String]) -> Vec<String> {
    let nodes: Vec<_> = scrapes.iter().map(|s| parse(s)).collect();
    let total = |name: &str, labels: &[&str]| -> f64 {
        nodes.iter().map(|series| sum(series, name, labels)).sum()
    };
    let mut missing = Vec::new();
    for (i, series) in nodes.iter().enumerate() {
        for (name, labels, want) in EVERY_NODE {
            let got = sum(series, name, labels);
            if got != *want {
                missing.push(format!("node {i}: {name}{labels:?} = {got}, want {want}"));
            }
        }
        for name in PRESENT {
            if !series.keys().any(|k| k.split('{').next() == Some(name)) {
                missing.push(format!("node {i}: {name} is absent"));
            }
        }
    }
    for (name, labels, want) in CLUSTER {
        let got = total(name, labels);
        if got != *want {
            missing.push(format!("{name}{labels:?} = {got}, want {want}"));
        }
    }
    for (name, labels) in GROWING {
        if total(name, labels) <= 0.0 {
            missing.push(format!("{name}{labels:?} is still 0"));
        }
    }
    missing
}

/// Scrapes until the nodes show everything, or fails with what is missing.
async fn await_full_scrapes(nodes: &[Node], within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let scrapes: Vec<String> = nodes.iter().map(Node::scrape).collect();
        let gaps = missing(&scrapes);
        if gaps.is_empty() {
            return scrapes;
        }
        if Instant::now() > deadline {
            panic!(
                "the scrapes never showed: {gaps:#?}\n{}",
                scrapes.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the node has joined the cluster and takes joins.
async fn await_ready(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.http_get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_under_load_export_every_family_and_dashboards_find_data() {
    let etcd = common::etcd::Etcd::start();
    let nodes = [
        Node::start_clustered(&etcd.endpoint(), "node-a", "eu-west", ""),
        Node::start_clustered(&etcd.endpoint(), "node-b", "us-east", ""),
    ];
    for node in &nodes {
        await_ready(node).await;
    }
    let mut meetings = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        meetings.push(meeting(node, &format!("metrics-{i}")).await);
    }

    let scrapes = await_full_scrapes(&nodes, Duration::from_secs(30)).await;
    for scrape in &scrapes {
        assert!(
            !scrape.contains("room=") && !scrape.contains("participant="),
            "a label names a room or participant"
        );
        prom::promtool_check_metrics(scrape);
    }
    let names: BTreeSet<String> = scrapes.iter().flat_map(|s| prom::series_names(s)).collect();

    // A real Prometheus scrapes both nodes; every dashboard query must run and find data.
    let targets: Vec<_> = nodes.iter().map(|n| n.metrics_addr).collect();
    let prometheus = prom::Prometheus::start(&targets);
    prometheus.await_samples(4, Duration::from_secs(30));
    let panels = prom::dashboard_queries();
    assert!(panels.len() >= 30, "only {} panel queries", panels.len());
    let mut empty = Vec::new();
    for panel in &panels {
        prom::assert_known_names(panel, &names);
        let series = prometheus.query(&panel.query);
        if series == 0 && !prom::may_be_empty(&panel.title) {
            empty.push(format!(
                "{} / {}: {}",
                panel.dashboard, panel.title, panel.query
            ));
        }
    }
    assert!(empty.is_empty(), "panels without data: {empty:#?}");

    // The alert rules run on the real series too: a healthy cluster trips none of them,
    // not even into pending.
    assert_eq!(
        prometheus.evaluated_alert_rules(),
        8,
        "alert rules loaded and evaluated"
    );
    let alerts = prometheus.query("ALERTS");
    assert_eq!(
        alerts,
        0,
        "alerts on a healthy cluster: {}",
        prometheus.raw("ALERTS")
    );

    for meeting in meetings {
        meeting.sender.abort();
        meeting.alice.close();
        meeting.bob.close();
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    prom::promtool(&["check", "rules", "config/prometheus/alerts.yml"]);
    prom::promtool(&["test", "rules", "config/prometheus/alerts_test.yml"]);
    prom::promtool(&["check", "config", "config/prometheus/prometheus.yml"]);
}

#[test]
fn every_alert_has_severity_summary_description_and_a_unit_test() {
    let rules = std::fs::read_to_string("config/prometheus/alerts.yml").expect("alerts.yml");
    let tests = std::fs::read_to_string("config/prometheus/alerts_test.yml").expect("tests");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
    for key in ["severity:", "summary:", "description:"] {
        assert_eq!(rules.matches(key).count(), alerts.len(), "{key} per alert");
    }
}

#[test]
fn every_panel_has_a_unit_and_rates_use_the_rate_interval() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    for name in ["overview", "media", "cluster", "resources"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let variables: Vec<&str> = dashboard["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert_eq!(
            variables,
            ["datasource", "job", "region", "instance"],
            "{name}"
        );
        for panel in dashboard["panels"].as_array().expect("panels") {
            let title = &panel["title"];
            let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
            assert!(
                unit.is_some_and(|u| !u.is_empty()),
                "{name}/{title} has no unit"
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}/{title}"
            );
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for range in expr.split('[').skip(1) {
                    let range = range.split(']').next().unwrap_or_default();
                    assert_eq!(range, "$__rate_interval", "{name}/{title}: {expr}");
                }
                assert!(expr.contains("instance=~\"$instance\""), "{name}/{title}");
            }
        }
    }
}

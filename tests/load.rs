//! The load generator against a real node: one room, one publisher, three subscribers.

mod common;

use std::time::Duration;

use common::{Node, API_KEY, SECRET};
use relais::load::{run_scenario, LoadConfig, Role};

fn config(url: String) -> LoadConfig {
    LoadConfig {
        urls: vec![url],
        api_key: API_KEY.into(),
        api_secret: SECRET.into(),
        rooms: 1,
        publishers: 1,
        subscribers: 3,
        video_bitrate: 300_000,
        fps: 30,
        keyframe_interval: Duration::from_secs(1),
        audio: true,
        duration: Duration::from_secs(3),
        ramp_per_second: 20.0,
        server_pids: Vec::new(),
        bind_ip: "127.0.0.1".parse().unwrap(),
        room_prefix: "load-test".into(),
        progress: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_three_subscribers_receive_everything_on_loopback() {
    let node = Node::start();
    let summary = run_scenario(config(node.url()))
        .await
        .expect("the run starts");
    eprintln!("{}", summary.table());

    assert_eq!(
        (summary.participants, summary.joined, summary.failed),
        (4, 4, 0)
    );
    for session in &summary.sessions {
        assert!(
            session.join_ms.is_some(),
            "{} has no join time",
            session.identity
        );
        assert!(
            session.error.is_none(),
            "{}: {:?}",
            session.identity,
            session.error
        );
    }
    let subscribers = summary
        .sessions
        .iter()
        .filter(|s| s.role == Role::Subscriber);
    for sub in subscribers {
        assert!(sub.video_packets > 0, "no video: {sub:?}");
        assert!(sub.audio_packets > 0, "no audio: {sub:?}");
        assert!(sub.first_media_ms.is_some());
    }
    assert_eq!(summary.missing_media, 0);
    assert!(summary.packets_per_second > 0.0);

    assert!(summary.loss_ratio < 0.01, "loss {}", summary.loss_ratio);
    // Sanity bounds only: a busy machine stretches the tail, not the median.
    let delay = summary.delay_ms;
    let (min, p50, max) = (delay.min.unwrap(), delay.p50.unwrap(), delay.max.unwrap());
    assert!(min > 0.0 && p50 < 1000.0 && max < 5000.0, "delay {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_pid_that_does_not_exist_is_refused() {
    let mut config = config("ws://127.0.0.1:9".into());
    config.server_pids = vec![u32::MAX];
    assert!(run_scenario(config).await.is_err());
}

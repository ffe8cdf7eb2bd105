//! The load generator against real servers: a relais node that forwards everything,
//! a path that loses a known share of packets, and a Janus VideoRoom.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Node, API_KEY, SECRET};
use relais::load::{run_scenario, LoadConfig, Role, SpreadBy, Summary, Target};

fn config(url: String) -> LoadConfig {
    LoadConfig {
        target: Target::Relais,
        urls: vec![url],
        spread: SpreadBy::Rooms,
        api_key: API_KEY.into(),
        api_secret: SECRET.into(),
        rooms: 1,
        publishers: 1,
        subscribers: 3,
        video_bitrate: 300_000,
        fps: 30,
        keyframe_interval: Duration::from_secs(1),
        audio: true,
        speakers: None,
        duration: Duration::from_secs(3),
        ramp_per_second: 20.0,
        server_pids: Vec::new(),
        bind_ip: "127.0.0.1".parse().unwrap(),
        room_prefix: "load-test".into(),
        progress: true,
        drop_every_nth_sent: None,
    }
}

/// Everyone joined, nobody failed, and every participant that hears a publisher
/// received video and audio.
fn assert_everyone_received(summary: &Summary) {
    let everyone = summary.participants;
    assert_eq!((summary.joined, summary.failed), (everyone, 0));
    for session in &summary.sessions {
        assert!(session.join_ms.is_some(), "no join time: {session:?}");
        assert!(session.error.is_none(), "{session:?}");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publisher_three_subscribers_receive_everything_on_loopback() {
    let node = Node::start();
    let summary = run_scenario(config(node.url()))
        .await
        .expect("the run starts");
    eprintln!("{}", summary.table());
    assert_eq!(summary.participants, 4);
    assert_everyone_received(&summary);

    // Every packet from a subscriber's first one to the publisher's last arrived,
    // once: no gap, no missing tail, no duplicate.
    assert_eq!((summary.lost_packets, summary.loss_ratio), (0, 0.0));
    assert_eq!(summary.duplicate_packets, 0);
    let per_session: u64 = summary
        .sessions
        .iter()
        .map(|s| s.video_packets + s.audio_packets)
        .sum();
    assert_eq!(summary.packets_received, per_session);
    for session in &summary.sessions {
        let received = session.video_packets + session.audio_packets;
        let heard = usize::from(session.role == Role::Subscriber);
        assert_eq!(session.publishers_heard, heard, "{session:?}");
        assert!(received <= summary.packets_sent, "{session:?}");
        assert_eq!(session.lost_packets, 0, "{session:?}");
    }

    // Sanity bounds only: a busy machine stretches the tail, not the median.
    let delay = summary.delay_ms;
    let (min, p50, max) = (delay.min.unwrap(), delay.p50.unwrap(), delay.max.unwrap());
    assert!(min > 0.0 && p50 < 1000.0 && max < 5000.0, "delay {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_share_of_lost_packets_is_reported_as_loss() {
    let node = Node::start();
    let mut lossy = config(node.url());
    lossy.room_prefix = "load-lossy".into();
    // One packet in ten never reaches the node; nothing can retransmit it.
    lossy.drop_every_nth_sent = Some(10);
    let summary = run_scenario(lossy).await.expect("the run starts");
    eprintln!("{}", summary.table());

    assert_everyone_received(&summary);
    assert!(
        (0.08..=0.12).contains(&summary.loss_ratio),
        "loss {} where a tenth was dropped",
        summary.loss_ratio
    );
    let subscribers = summary
        .sessions
        .iter()
        .filter(|s| s.role == Role::Subscriber);
    for sub in subscribers {
        let received = sub.video_packets + sub.audio_packets;
        let share = sub.lost_packets as f64 / (received + sub.lost_packets) as f64;
        assert!((0.08..=0.12).contains(&share), "{sub:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_large_room_last_n_holds_cameras_back_and_nothing_counts_as_lost() {
    // Rooms of more than two forward one camera: the latest speaker's.
    let node = Node::start_with("[room]\nlast_n = 1\nlast_n_above = 2\n");
    let mut large = config(node.url());
    large.room_prefix = "load-large".into();
    (large.publishers, large.subscribers, large.speakers) = (4, 0, Some(2));
    large.duration = Duration::from_secs(5);
    // Until someone has spoken, the room forwards the first camera to arrive: seats
    // join half a second apart so that it is a speaker's (seat 0), not a silent seat's
    // that a slow negotiation let through first.
    large.ramp_per_second = 2.0;
    let summary = run_scenario(large).await.expect("the run starts");
    eprintln!("{}", summary.table());

    assert_eq!((summary.joined, summary.failed), (4, 0));
    assert_eq!(
        summary.missing_media, 0,
        "held-back cameras are not missing"
    );
    // Seats 0 and 1 speak in turns; the cameras of 2 and 3 are never forwarded,
    // where without last-N everyone would see three.
    for session in &summary.sessions {
        assert!(session.publishers_heard <= 2, "{session:?}");
        assert!(session.audio_packets > 0, "{session:?}");
    }
    let silent = summary
        .sessions
        .iter()
        .filter(|s| s.identity.ends_with("-2") || s.identity.ends_with("-3"));
    for session in silent {
        assert_eq!(
            session.publishers_heard, 2,
            "both speakers' cameras: {session:?}"
        );
    }
    // The forwarded camera changed hands; what was held back is not loss.
    assert_eq!(summary.lost_packets, 0, "{:#?}", summary.sessions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_pid_that_does_not_exist_is_refused() {
    let mut config = config("ws://127.0.0.1:9".into());
    config.server_pids = vec![u32::MAX];
    assert!(run_scenario(config).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_of_a_janus_videoroom_receives_every_publisher() {
    let janus = Janus::start();
    let mut config = config(janus.url());
    config.target = Target::Janus;
    config.room_prefix = format!("load-janus-{}", std::process::id());
    config.publishers = 2;
    config.subscribers = 2;
    config.duration = Duration::from_secs(2);
    config.bind_ip = janus.media_ip;
    config.server_pids = vec![janus.child.id()];
    let summary = run_scenario(config).await.expect("the run starts");
    eprintln!("{}", summary.table());

    assert_eq!(summary.participants, 4);
    assert_everyone_received(&summary);
    // Publishers hear each other; subscribers hear both publishers.
    for session in &summary.sessions {
        let heard = if session.role == Role::Publisher {
            1
        } else {
            2
        };
        assert_eq!(session.publishers_heard, heard, "{session:?}");
    }
    assert!(summary.loss_ratio < 0.01, "loss {}", summary.loss_ratio);
    assert!(summary.server_cpu_us_per_packet.is_some());
}

/// A Janus process with the benchmark's configuration on free ports, in a temp dir;
/// killed when dropped.
struct Janus {
    child: Child,
    ws_port: u16,
    media_ip: IpAddr,
    _dir: tempfile::TempDir,
}

impl Janus {
    fn start() -> Janus {
        let installed = Command::new("janus").arg("--help").output();
        assert!(
            installed.is_ok_and(|o| o.status.success()),
            "janus is not installed: run scripts/setup.sh"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let ws_port = free_tcp_port();
        // Ports of the media range are checked when Janus binds, one per handle.
        let rtp_min = 30_000 + (std::process::id() % 300) as u16 * 100;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster/bench-janus-config");
        let output = Command::new(script)
            .arg(dir.path())
            .args([ws_port, rtp_min, rtp_min + 99].map(|p| p.to_string()))
            .output()
            .expect("run cluster/bench-janus-config");
        assert!(output.status.success(), "{output:?}");
        let media_ip = String::from_utf8_lossy(&output.stdout).trim().parse();
        let media_ip = media_ip.expect("the config script prints the media address");

        let log = std::fs::File::create(dir.path().join("janus.log")).expect("log file");
        let child = Command::new("janus")
            .arg("-F")
            .arg(dir.path())
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("start janus");
        let janus = Janus {
            child,
            ws_port,
            media_ip,
            _dir: dir,
        };
        janus.wait_until_listening();
        janus
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    fn wait_until_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ws_port)).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::File::open(self._dir.path().join("janus.log"));
                let tail: Vec<String> = log
                    .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
                    .unwrap_or_default();
                panic!("janus did not listen within 10 s:\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

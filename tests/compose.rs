//! The docker-compose cluster end to end: local images, `docker compose up`, a meeting
//! joined through node 1, its owner killed, the meeting continued on the other nodes, and
//! Prometheus reporting the node down. Everything is torn down, whatever happens.
//!
//! Needs a Docker engine with docker-compose (or the compose plugin), and Debian's
//! etcd-server, etcd-client and prometheus packages for the images (scripts/setup.sh).
//! Grafana is left out: its image cannot be built from local binaries.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{http_at, index_of, stream};
use relais::auth::{mint, now_unix, Grants, TokenRequest};
use relais::client::{Client, ClientEvent, ClientOptions};
use relais::signal::protocol::{ServerMessage, TrackKind, TrackSource};
use tokio::time::Instant;

const API_KEY: &str = "devkey";
const SECRET: &str = "devsecret-change-me-0123456789abcdefghijklmnop";
/// The compose network's gateway: the host's address on it, which the clients bind.
const HOST_IP: &str = "172.30.7.1";
const PROMETHEUS: &str = "172.30.7.20:9090";
const NODES: [&str; 3] = ["relais-1", "relais-2", "relais-3"];

fn node_addr(node: &str) -> SocketAddr {
    let last = node
        .trim_start_matches("relais-")
        .parse::<u8>()
        .expect("node number");
    SocketAddr::new(IpAddr::from([172, 30, 7, 10 + last]), 7880)
}

/// A compose project of its own; `down` on drop, removing containers, network, volumes
/// and the test images.
struct Cluster {
    project: String,
    env: Vec<(String, String)>,
}

impl Cluster {
    fn up() -> Cluster {
        let project = format!("relais-compose-test-{}", std::process::id());
        let mut env = vec![
            ("RELAIS_IMAGE".to_owned(), format!("{project}-relais:local")),
            ("ETCD_IMAGE".to_owned(), format!("{project}-etcd:local")),
            (
                "PROMETHEUS_IMAGE".to_owned(),
                format!("{project}-prometheus:local"),
            ),
        ];
        // Host ports nobody uses, so that the test runs beside a cluster of a user's.
        for name in [
            "RELAIS_1_PORT",
            "RELAIS_2_PORT",
            "RELAIS_3_PORT",
            "PROMETHEUS_PORT",
        ] {
            env.push((name.to_owned(), free_port().to_string()));
        }
        let cluster = Cluster { project, env };

        let binary = env!("CARGO_BIN_EXE_relais");
        cluster.run("sh", &["cluster/images.sh", binary]);
        let services = ["etcd", NODES[0], NODES[1], NODES[2], "prometheus"];
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend(services);
        cluster.compose(&args);
        cluster
    }

    fn compose(&self, args: &[&str]) -> Output {
        let (program, mut full) = compose_command();
        full.extend(["-p", &self.project, "-f", "docker-compose.yml"]);
        full.extend(args);
        self.run(&program, &full)
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The health Docker reports for a service, from its health check.
    fn health(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
        let format = "{{.State.Health.Status}}";
        let inspect = self.run("docker", &["inspect", "-f", format, &id]);
        String::from_utf8_lossy(&inspect.stdout).trim().to_owned()
    }

    fn logs(&self) -> String {
        let (program, mut args) = compose_command();
        args.extend([
            "-p",
            &self.project,
            "-f",
            "docker-compose.yml",
            "logs",
            "--no-color",
        ]);
        let output = Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output();
        output.map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs:\n{}", self.logs());
        }
        let (program, mut args) = compose_command();
        args.extend(["-p", &self.project, "-f", "docker-compose.yml"]);
        args.extend(["down", "-v", "--remove-orphans", "--rmi", "all", "-t", "2"]);
        let _ = Command::new(program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker compose` where the plugin exists, else `docker-compose`.
fn compose_command() -> (String, Vec<&'static str>) {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if plugin {
        ("docker".to_owned(), vec!["compose"])
    } else {
        ("docker-compose".to_owned(), vec![])
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Polls `check` every 250 ms until it gives a value, failing after `within`.
async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ready(node: &str) -> bool {
    std::net::TcpStream::connect_timeout(&node_addr(node), Duration::from_millis(200)).is_ok()
        && http_at(&node_addr(node).to_string(), "GET", "/readyz", None).0 == 200
}

/// A Prometheus instant query's first value, over HTTP/1.0 so the body is not chunked.
fn prometheus_value(query: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let addr: SocketAddr = PROMETHEUS.parse().expect("address");
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let request = format!("GET /api/v1/query?query={encoded} HTTP/1.0\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let body: serde_json::Value = serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn options(entry: &str, room: &str, identity: &str) -> ClientOptions {
    let request = TokenRequest {
        api_key: API_KEY.into(),
        identity: identity.into(),
        name: identity.into(),
        room: room.into(),
        grants: Grants {
            publish: true,
            subscribe: true,
            admin: false,
        },
        ttl: Duration::from_secs(600),
    };
    ClientOptions {
        url: format!("ws://{}", node_addr(entry)),
        room: room.into(),
        token: mint(&request, SECRET, now_unix()).expect("mint"),
        auto_subscribe: true,
        bind_ip: HOST_IP.parse().expect("host ip"),
        drop_every_nth_rtp: None,
    }
}

/// Longest a connection attempt may take. A redirect to a node that was just killed
/// points at an address nobody answers, where a TCP connect waits for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(12);

/// Joins through `entry` (following redirects); returns the client and the serving node.
async fn join(entry: &str, room: &str, identity: &str) -> Result<(Client, String), String> {
    let connect = Client::connect(options(entry, room, identity));
    let mut client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("connecting through {entry} took too long"))?
        .map_err(|e| e.to_string())?;
    let node = client
        .wait_for(Duration::from_secs(10), "joined", |e| match e {
            ClientEvent::Server(ServerMessage::Joined { node, .. }) => Some(node.clone()),
            _ => None,
        })
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok((client, node))
}

/// A running meeting: alice publishes video, bob receives it, `node` serves them.
struct Meeting {
    alice: Client,
    bob: Client,
    sender: tokio::task::JoinHandle<()>,
    node: String,
}

impl Meeting {
    fn end(self) {
        self.sender.abort();
        self.alice.close();
        self.bob.close();
    }
}

/// Alice publishes through `entry`, bob subscribes through `entry` too; returns once bob
/// received video from alice.
async fn meeting(entry: &str, room: &str) -> Result<Meeting, String> {
    let (alice, node) = join(entry, room, "alice").await?;
    let (mut bob, bob_node) = join(entry, room, "bob").await?;
    if node != bob_node {
        return Err(format!("alice is on {node}, bob on {bob_node}"));
    }
    let video = alice
        .publish("cam", TrackKind::Video, TrackSource::Camera)
        .await
        .map_err(|e| e.to_string())?;
    let sender = stream(vec![video], 100_000);
    let mut received = 0;
    let got = bob
        .wait_for(Duration::from_secs(20), "50 video packets", |e| {
            if let ClientEvent::Rtp { packet, .. } = e {
                received += usize::from(index_of(TrackKind::Video, &packet.payload).is_some());
            }
            (received >= 50).then_some(())
        })
        .await;
    let meeting = Meeting {
        alice,
        bob,
        sender,
        node,
    };
    match got {
        Ok(()) => Ok(meeting),
        Err(e) => {
            meeting.end();
            Err(format!("bob received no video: {e:?}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_survives_losing_a_rooms_owner_and_prometheus_sees_it() {
    let cluster = Cluster::up();
    for node in NODES {
        eventually(&format!("{node} ready"), Duration::from_secs(60), || {
            ready(node).then_some(())
        })
        .await;
    }
    // The health checks work in every image: relais checks itself, etcdctl and promtool
    // check theirs.
    for service in ["etcd", NODES[0], NODES[1], NODES[2], "prometheus"] {
        let what = format!("{service} healthy");
        eventually(&what, Duration::from_secs(60), || {
            (cluster.health(service) == "healthy").then_some(())
        })
        .await;
    }
    let all_up = "sum(up{job=\"relais\"})";
    eventually(
        "prometheus scraping three nodes",
        Duration::from_secs(60),
        || (prometheus_value(all_up)? == 3.0).then_some(()),
    )
    .await;

    // A meeting joined through node 1, served by whichever node owns the room.
    let first = meeting(NODES[0], "standup")
        .await
        .expect("the meeting starts");
    let owner = first.node.clone();
    assert!(NODES.contains(&owner.as_str()), "served by {owner}");

    cluster.compose(&["kill", &owner]);
    first.end();

    // The meeting goes on through a survivor once the owner's lease has expired; until
    // then joins are refused or sent to the dead owner, so they are tried again.
    let entry = NODES
        .iter()
        .copied()
        .find(|n| *n != owner)
        .expect("a survivor");
    let deadline = Instant::now() + Duration::from_secs(90);
    let second = loop {
        match meeting(entry, "standup").await {
            Ok(met) => break met,
            Err(e) if Instant::now() > deadline => panic!("the meeting did not continue: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    assert_ne!(second.node, owner, "the room moved to a survivor");

    // Prometheus sees the node down, and the alert is on its way.
    let down = format!("up{{job=\"relais\", instance=\"{owner}:9464\"}}");
    eventually(
        "prometheus reporting the node down",
        Duration::from_secs(30),
        || (prometheus_value(&down)? == 0.0).then_some(()),
    )
    .await;
    let alert = format!("count(ALERTS{{alertname=\"RelaisNodeDown\", instance=\"{owner}:9464\"}})");
    eventually("the node-down alert", Duration::from_secs(30), || {
        (prometheus_value(&alert)? >= 1.0).then_some(())
    })
    .await;

    second.end();
    drop(cluster);
}

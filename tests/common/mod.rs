//! A real `relais serve` process for integration tests, and media helpers.
//!
//! Each test starts its own node on an ephemeral port with a config in a fresh
//! temp dir, reads the bound address from the node's log, and kills the process
//! when the [`Node`] is dropped.

#![allow(dead_code)]

pub mod etcd;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use relais::auth::{mint, now_unix, Grants, TokenRequest};
use relais::client::{Client, ClientEvent, ClientOptions, LocalTrack};
use relais::ids::TrackId;
use relais::signal::protocol::{ServerMessage, TrackKind, TrackSource};
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

pub const API_KEY: &str = "testkey";
pub const SECRET: &str = "test-secret-that-is-long-enough-for-hs256-0123";
pub const CASCADE_SECRET: &str = "cascade-secret-for-tests-0123456789abcdef";

/// What an ordinary participant may do.
pub const PARTICIPANT: Grants = Grants {
    publish: true,
    subscribe: true,
    admin: false,
};

/// A token signed with the test key, issued at `issued` (unix seconds).
pub fn mint_token(
    room: &str,
    identity: &str,
    name: &str,
    grants: Grants,
    ttl_secs: u64,
    issued: u64,
) -> String {
    let request = TokenRequest {
        api_key: API_KEY.into(),
        identity: identity.into(),
        name: name.into(),
        room: room.into(),
        grants,
        ttl: Duration::from_secs(ttl_secs),
    };
    mint(&request, SECRET, issued).expect("mint")
}

/// The nodes a room detail of the operations API says serve it, sorted.
pub fn serving_nodes(detail: &serde_json::Value) -> Vec<String> {
    let mut nodes: Vec<String> = detail["nodes"]
        .as_array()
        .expect("a list of nodes")
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    nodes.sort();
    nodes
}

pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    pub fn start() -> Node {
        Self::start_with("")
    }

    /// Starts a node; `extra` is appended to the generated config.
    pub fn start_with(extra: &str) -> Node {
        Self::start_with_media("", extra)
    }

    /// Starts a node; `media` is added to its `[media]` table, and `extra` appended.
    pub fn start_with_media(media: &str, extra: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("relais.toml");
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[media]\nbind_ip = \"127.0.0.1\"\n{media}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [auth.keys]\n{API_KEY} = \"{SECRET}\"\n[log]\nlevel = \"info\"\n{extra}"
        );
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_relais"))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start relais");
        let addrs = read_addresses(child.stdout.take().expect("stdout"));
        let Some((addr, metrics_addr)) = addrs else {
            let _ = child.kill();
            panic!("relais did not report its addresses");
        };
        Node {
            child,
            addr,
            metrics_addr,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn token(&self, room: &str, identity: &str) -> String {
        self.token_with(room, identity, PARTICIPANT, 600)
    }

    pub fn token_with(&self, room: &str, identity: &str, grants: Grants, ttl: u64) -> String {
        let name = format!("{identity} name");
        mint_token(room, identity, &name, grants, ttl, now_unix())
    }

    /// A token that expired an hour ago.
    pub fn expired_token(&self, room: &str, identity: &str) -> String {
        mint_token(room, identity, identity, PARTICIPANT, 60, now_unix() - 3600)
    }

    pub fn options(&self, room: &str, identity: &str) -> ClientOptions {
        ClientOptions {
            url: self.url(),
            room: room.into(),
            token: self.token(room, identity),
            auto_subscribe: true,
            bind_ip: "127.0.0.1".parse().unwrap(),
            drop_every_nth_rtp: None,
        }
    }

    /// Waits until `/readyz` answers 200: a cluster node admits nobody before its
    /// lease is granted.
    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(15), "ready", || {
            (self.http_get("/readyz").0 == 200).then_some(())
        });
    }

    /// Joins and waits for `joined`; `auto_subscribe` as the client asks it.
    pub async fn join_with(&self, room: &str, identity: &str, auto_subscribe: bool) -> Client {
        let mut options = self.options(room, identity);
        options.auto_subscribe = auto_subscribe;
        let mut client = Client::connect(options).await.expect("connect");
        client
            .wait_for(Duration::from_secs(20), "joined", |e| {
                matches!(e, ClientEvent::Server(ServerMessage::Joined { .. })).then_some(())
            })
            .await
            .expect("joined");
        client
    }

    pub async fn join(&self, room: &str, identity: &str) -> Client {
        let mut client = Client::connect(self.options(room, identity))
            .await
            .expect("connect");
        client
            .wait_for(Duration::from_secs(10), "joined", |e| match e {
                ClientEvent::Server(ServerMessage::Joined { .. }) => Some(()),
                _ => None,
            })
            .await
            .expect("joined");
        client
    }

    /// A plain HTTP GET; returns status code and body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        self.http("GET", path)
    }

    /// A plain HTTP request without a body; returns status code and body.
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http_at(&self.addr.to_string(), method, path, None)
    }

    /// The node's metrics in the Prometheus text format.
    pub fn scrape(&self) -> String {
        let (status, body) = http_at(&self.metrics_addr.to_string(), "GET", "/metrics", None);
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }
}

/// A plain HTTP/1.1 request without a body to `host`; status 0 when unreachable.
pub fn http_at(host: &str, method: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(host) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: relais\r\nContent-Length: 0\r\n{auth}\
         Connection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

impl Node {
    /// Starts a cluster node on `etcd` with a short lease; `extra` adds config.
    pub fn start_clustered(etcd: &str, id: &str, region: &str, extra: &str) -> Node {
        let config = format!(
            "[node]\nid = \"{id}\"\nregion = \"{region}\"\n\
             [cluster]\netcd_endpoints = [\"{etcd}\"]\ncascade_listen = \"127.0.0.1:0\"\n\
             cascade_secret = \"{CASCADE_SECRET}\"\n{extra}"
        );
        Self::start_with(&config)
    }

    /// Nodes `ids` in region `r` on `etcd`, each listing all of them and ready.
    pub fn cluster_of(etcd: &str, ids: &[&str], extra: &str) -> Vec<Node> {
        let nodes: Vec<Node> = ids
            .iter()
            .map(|id| Node::start_clustered(etcd, id, "r", extra))
            .collect();
        wait_for(Duration::from_secs(10), "membership", || {
            let (_, listing) = nodes[0].admin("GET", "/admin/nodes");
            (listing["nodes"].as_array().map(Vec::len) == Some(ids.len())).then_some(())
        });
        for node in &nodes {
            node.wait_ready();
        }
        nodes
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A token with the admin grant for every room.
    pub fn admin_token(&self) -> String {
        let grants = Grants {
            publish: false,
            subscribe: false,
            admin: true,
        };
        self.token_with("*", "operator", grants, 600)
    }

    /// An operations API request with the admin token; the body parsed as JSON.
    pub fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let token = self.admin_token();
        let (status, body) = http_at(&self.addr.to_string(), method, path, Some(&token));
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid} failed");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the log until the serving line, then keeps draining it in the background.
/// Returns the HTTP and the metrics addresses; the metrics line comes first.
fn read_addresses(stdout: std::process::ChildStdout) -> Option<(SocketAddr, SocketAddr)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut sent, mut metrics) = (false, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent {
                metrics = metrics.or_else(|| parse_addr(&line, "metrics are served"));
                if let (Some(addr), Some(metrics)) =
                    (parse_addr(&line, "relais is serving"), metrics)
                {
                    let _ = tx.send((addr, metrics));
                    sent = true;
                }
            }
            if std::env::var_os("RELAIS_TEST_LOG").is_some() {
                eprintln!("[relais] {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).ok()
}

fn parse_addr(line: &str, message: &str) -> Option<SocketAddr> {
    let rest = line.split(message).nth(1)?;
    let field = rest
        .split_whitespace()
        .find_map(|f| f.strip_prefix("addr="))?;
    field.parse().ok()
}

/// The test payload: a marker of the packet's index, VP8-shaped for video.
pub fn payload(kind: TrackKind, index: u64, keyframe: bool) -> Bytes {
    let mut bytes = Vec::with_capacity(64);
    if kind == TrackKind::Video {
        // VP8 descriptor with S=1, PID=0, then the payload header's P bit.
        bytes.push(0x10);
        bytes.push(if keyframe { 0x00 } else { 0x01 });
    }
    bytes.extend_from_slice(&index.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0xAB, 40));
    Bytes::from(bytes)
}

/// Reads the index back out of a received payload.
pub fn index_of(kind: TrackKind, payload: &[u8]) -> Option<u64> {
    let offset = if kind == TrackKind::Video { 2 } else { 0 };
    let raw: [u8; 8] = payload.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

pub fn packet(kind: TrackKind, index: u64, keyframe: bool) -> Packet {
    let clock_step = if kind == TrackKind::Video { 3000 } else { 960 };
    Packet {
        header: Header {
            version: 2,
            marker: kind == TrackKind::Video,
            sequence_number: index as u16,
            timestamp: (index as u32).wrapping_mul(clock_step),
            ..Default::default()
        },
        payload: payload(kind, index, keyframe),
    }
}

/// Publishes `count` packets on `track` at `interval`, with a keyframe every 30 and on request.
pub async fn send_packets(track: &LocalTrack, start: u64, count: u64, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    for index in start..start + count {
        ticker.tick().await;
        let keyframe = index % 30 == 0 || track.take_keyframe_request();
        let _ = track.write(packet(track.kind, index, keyframe)).await;
    }
}

/// Streams `count` packets on each track, every 10 ms, in a task of its own.
pub fn stream(tracks: Vec<LocalTrack>, count: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let senders = tracks
            .iter()
            .map(|track| send_packets(track, 0, count, Duration::from_millis(10)));
        futures_util::future::join_all(senders).await;
    })
}

pub async fn publish(client: &Client, cid: &str, kind: TrackKind) -> LocalTrack {
    let source = match kind {
        TrackKind::Audio => TrackSource::Microphone,
        TrackKind::Video => TrackSource::Camera,
    };
    client.publish(cid, kind, source).await.expect("publish")
}

/// Waits for `track_published` of each of `cids` (in any order), returning their ids.
pub async fn published_ids(client: &mut Client, cids: &[&str]) -> Vec<TrackId> {
    let mut found: Vec<Option<TrackId>> = vec![None; cids.len()];
    client
        .wait_for(Duration::from_secs(15), "track_published", |e| {
            if let ClientEvent::Server(ServerMessage::TrackPublished { track }) = e {
                if let Some(i) = cids.iter().position(|c| *c == track.cid) {
                    found[i] = Some(track.id.clone());
                }
            }
            found.iter().all(Option::is_some).then_some(())
        })
        .await
        .expect("tracks published");
    found.into_iter().flatten().collect()
}

/// Polls `probe` until it returns `Some`, or panics naming `what` at the deadline.
pub fn wait_for<T>(within: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The room's owner node and epoch as the cluster lists them, asked through `node`.
pub fn owner_of(node: &Node, room: &str) -> Option<(String, i64)> {
    let (status, rooms) = node.admin("GET", "/admin/rooms");
    if status != 200 {
        return None;
    }
    rooms["rooms"].as_array()?.iter().find_map(|r| {
        if r["room"] != room {
            return None;
        }
        Some((r["owner"].as_str()?.to_owned(), r["epoch"].as_i64()?))
    })
}

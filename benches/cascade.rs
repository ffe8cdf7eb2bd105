//! What one cascade hop costs: the same publisher and subscribers, with the
//! subscribers on the publisher's node ("local") or on a second node ("cascaded"),
//! alternating in one run. Prints the added delay and the nodes' CPU time per
//! packet delivered to a subscriber, and the cascaded/local ratios.
//!
//! Run with `cargo bench --bench cascade` (needs etcd, see scripts/setup.sh).
//! Everything runs on loopback on this machine, the clients included: the delay is
//! end to end through two client stacks, the same in both modes, so the difference
//! between the modes is the hop.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::etcd::Etcd;
use common::Node;
use relais::client::{ClientEvent, LocalTrack};
use relais::signal::protocol::TrackKind;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

const SUBSCRIBERS: usize = 10;
const PACKETS: u64 = 1_500;
const INTERVAL: Duration = Duration::from_millis(10);
const ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Local,
    Cascaded,
}

struct Outcome {
    delays_us: Vec<u64>,
    cpu: Duration,
    delivered: u64,
}

fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

fn payload(index: u64, epoch: Instant) -> Bytes {
    let mut bytes = BytesMut::with_capacity(80);
    bytes.put_u64(index);
    bytes.put_u64(epoch.elapsed().as_nanos() as u64);
    bytes.put_bytes(0xAB, 64);
    bytes.freeze()
}

async fn send(track: &LocalTrack, first: u64, count: u64, epoch: Instant) {
    let mut ticker = tokio::time::interval(INTERVAL);
    for index in first..first + count {
        ticker.tick().await;
        let packet = Packet {
            header: Header {
                version: 2,
                sequence_number: index as u16,
                timestamp: (index as u32).wrapping_mul(960),
                ..Default::default()
            },
            payload: payload(index, epoch),
        };
        let _ = track.write(packet).await;
    }
}

async fn run(nodes: &[Node], mode: Mode, round: usize, epoch: Instant) -> Outcome {
    let room = format!("hop-{round}-{}", mode as u8);
    let publisher = nodes[0].join_with(&room, "pub", false).await;
    let home = if mode == Mode::Local {
        &nodes[0]
    } else {
        &nodes[1]
    };
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        subscribers.push(home.join_with(&room, &format!("s{i}"), true).await);
    }
    let track = publisher
        .publish("mic", TrackKind::Audio, Default::default())
        .await
        .expect("publish");
    // Warm up until every subscriber hears the publisher, then measure.
    let warm = {
        let track = track.clone();
        tokio::spawn(async move { send(&track, 0, 3_000, epoch).await })
    };
    for s in &mut subscribers {
        s.wait_for(Duration::from_secs(20), "media", |e| {
            matches!(e, ClientEvent::Rtp { .. }).then_some(())
        })
        .await
        .expect("media");
    }
    warm.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for s in &mut subscribers {
        while s.next_event(tokio::time::Instant::now()).await.is_some() {}
    }

    let pids: Vec<u32> = nodes.iter().map(Node::pid).collect();
    let cpu_before: Duration = pids.iter().map(|p| cpu_of(*p)).sum();
    const FIRST: u64 = 5_000;
    let sender = {
        let track = track.clone();
        tokio::spawn(async move { send(&track, FIRST, PACKETS, epoch).await })
    };
    let receivers = subscribers.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut delays = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while let Some(event) = s.next_event(deadline).await {
                let ClientEvent::Rtp { packet, .. } = event else {
                    continue;
                };
                let arrived = epoch.elapsed().as_nanos() as u64;
                let p = &packet.payload;
                if p.len() < 16 {
                    continue;
                }
                let index = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                let sent = u64::from_be_bytes(p[8..16].try_into().expect("8 bytes"));
                if index >= FIRST {
                    delays.push(arrived.saturating_sub(sent) / 1_000);
                }
                if index == FIRST + PACKETS - 1 {
                    break;
                }
            }
            delays
        })
    });
    let mut delays_us = Vec::new();
    for receiver in receivers.collect::<Vec<_>>() {
        delays_us.extend(receiver.await.expect("receiver"));
    }
    sender.await.expect("sender");
    let cpu_after: Duration = pids.iter().map(|p| cpu_of(*p)).sum();
    drop(publisher);
    Outcome {
        delivered: delays_us.len() as u64,
        delays_us,
        cpu: cpu_after.saturating_sub(cpu_before),
    }
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    // `cargo test --all-targets` builds and runs this too, without `--bench`: the
    // measurement belongs to `cargo bench` alone.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cascade: measured by `cargo bench --bench cascade`; nothing to test");
        return;
    }
    let etcd = Etcd::start();
    let nodes: Vec<Node> = ["n0", "n1"]
        .iter()
        .map(|id| Node::start_clustered(&etcd.endpoint(), id, "r", ""))
        .collect();
    for node in &nodes {
        node.wait_ready();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let epoch = Instant::now();
    let mut local = Vec::new();
    let mut cascaded = Vec::new();
    runtime.block_on(async {
        for round in 0..ROUNDS {
            local.push(run(&nodes, Mode::Local, round, epoch).await);
            cascaded.push(run(&nodes, Mode::Cascaded, round, epoch).await);
        }
    });

    println!(
        "one cascade hop, {SUBSCRIBERS} subscribers, {PACKETS} audio packets at 100/s, \
         {ROUNDS} rounds alternating"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>14} {:>10}",
        "mode", "p50 µs", "p99 µs", "max µs", "CPU µs/packet", "delivered"
    );
    let summary = |name: &str, outcomes: &[Outcome]| {
        let mut all: Vec<u64> = outcomes.iter().flat_map(|o| o.delays_us.clone()).collect();
        all.sort_unstable();
        let cpu: Duration = outcomes.iter().map(|o| o.cpu).sum();
        let delivered: u64 = outcomes.iter().map(|o| o.delivered).sum();
        let per_packet = cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
        let (p50, p99, max) = (
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            quantile(&all, 1.0),
        );
        println!("{name:<10} {p50:>9} {p99:>9} {max:>9} {per_packet:>14.1} {delivered:>10}");
        (p50, p99, per_packet)
    };
    let l = summary("local", &local);
    let c = summary("cascaded", &cascaded);
    println!(
        "cascaded/local: p50 {:.2}, p99 {:.2}, CPU per packet {:.2}; \
         the hop adds {} µs at p50, {} µs at p99",
        c.0 as f64 / l.0.max(1) as f64,
        c.1 as f64 / l.1.max(1) as f64,
        c.2 / l.2.max(1e-9),
        c.0 as i64 - l.0 as i64,
        c.1 as i64 - l.1 as i64,
    );
    for (i, (l, c)) in local.iter().zip(&cascaded).enumerate() {
        let med = |o: &Outcome| {
            let mut d = o.delays_us.clone();
            d.sort_unstable();
            quantile(&d, 0.5)
        };
        println!("round {i}: p50 local {} µs, cascaded {} µs", med(l), med(c));
    }
}

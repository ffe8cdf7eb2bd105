use super::*;
use crate::ids::TrackId;

use super::super::payload::sample as packet;

/// A participant that joined after `join_ms` and received `sequences` of video and
/// audio, each 2 ms after sending.
fn report(role: Role, join_ms: Option<u64>, sequences: &[u64]) -> ParticipantReport {
    let mut received = ReceiveStats::default();
    let (cam, mic) = (
        TrackId::from_string("v".into()),
        TrackId::from_string("a".into()),
    );
    for &s in sequences {
        let at = Duration::from_millis(1000 + s * 20);
        received.record(&cam, &packet(true, s, 998 + s * 20), at);
        received.record(&mic, &packet(false, s, 998 + s * 20), at);
    }
    ParticipantReport {
        identity: format!("{role:?}"),
        room: "r".into(),
        role,
        stream: 0,
        seat: 0,
        join_time: join_ms.map(Duration::from_millis),
        first_media: received.first_media.map(|_| Duration::from_millis(200)),
        received,
        sent_video: 0,
        sent_audio: 0,
        error: join_ms.is_none().then(|| "refused".to_owned()),
    }
}

fn facts(servers: Vec<ProcReadings>) -> RunFacts {
    let at = |packets, bytes| Totals {
        packets,
        bytes,
        ..Totals::default()
    };
    RunFacts {
        scenario: Scenario {
            rooms: 1,
            publishers: 1,
            subscribers: 3,
            audio: true,
            speakers: None,
        },
        steady: (at(1000, 50_000), at(3000, 250_000)),
        steady_time: Duration::from_secs(2),
        servers,
        generator: None,
        ticks_per_second: 100,
    }
}

fn sample(cpu_ticks: u64) -> ProcSample {
    ProcSample {
        cpu_ticks,
        peak_rss_kib: Some(2048),
        run_queue_wait: None,
    }
}

#[test]
fn summarises_joins_media_loss_and_delay() {
    let reports = vec![
        report(Role::Publisher, Some(40), &[]),
        report(Role::Subscriber, Some(50), &[0, 1, 2, 3]),
        report(Role::Subscriber, Some(60), &[0, 1, 3]),
        report(Role::Subscriber, None, &[]),
    ];
    let summary = summarise(&reports, &facts(Vec::new()));
    assert_eq!(
        (summary.participants, summary.joined, summary.failed),
        (4, 3, 1)
    );
    assert_eq!(summary.missing_media, 0, "a lone publisher expects nothing");
    assert_eq!(summary.join_ms.p50, Some(50.0));
    assert_eq!(summary.join_ms.p99, Some(60.0));
    assert_eq!(summary.packets_received, 14);
    assert_eq!(summary.lost_packets, 2);
    assert_eq!(summary.loss_ratio, 2.0 / 16.0);
    assert_eq!(summary.packets_per_second, 1000.0);
    assert_eq!(summary.bytes_per_second, 100_000.0);
    assert_eq!(summary.downlink_bits_per_second, 800_000.0 / 3.0);
    assert_eq!(summary.delay_ms.max, Some(2.0));
    assert_eq!(summary.server_cpu_us_per_packet, None);
    assert!(summary.sessions[2].video_packets == 3 && summary.sessions[2].lost_packets == 2);
}

#[test]
fn packets_sent_after_the_newest_received_are_lost() {
    let mut publisher = report(Role::Publisher, Some(40), &[]);
    (publisher.stream, publisher.sent_video, publisher.sent_audio) = (1, 6, 4);
    let reports = vec![publisher, report(Role::Subscriber, Some(50), &[0, 1, 3])];
    let summary = summarise(&reports, &facts(Vec::new()));
    assert_eq!((summary.lost_packets, summary.packets_sent), (4, 10));
    assert_eq!(summary.loss_ratio, 0.4);
    assert_eq!(summary.sessions[1].lost_packets, 4);
}

#[test]
fn the_table_names_the_commonest_errors() {
    let reports: Vec<ParticipantReport> = (0..3)
        .map(|_| report(Role::Subscriber, None, &[]))
        .collect();
    let summary = summarise(&reports, &facts(Vec::new()));
    let table = summary.table();
    assert!(table
        .lines()
        .any(|l| l.starts_with("errors") && l.ends_with("3 x refused")));
}

#[test]
fn a_joined_subscriber_without_media_is_flagged() {
    let reports = vec![report(Role::Subscriber, Some(50), &[])];
    let summary = summarise(&reports, &facts(Vec::new()));
    assert_eq!(summary.missing_media, 1);
    assert!(summary.sessions[0].missing_media);
}

#[test]
fn server_cpu_is_divided_by_steady_packets() {
    let alive = ProcReadings {
        pid: 7,
        start: sample(0),
        steady_start: Some(sample(100)),
        steady_end: Some(sample(300)),
        end: Some(sample(350)),
    };
    let gone = ProcReadings {
        pid: 8,
        steady_end: None,
        end: None,
        ..alive
    };
    let summary = summarise(&[], &facts(vec![alive]));
    let server = &summary.servers[0];
    assert_eq!(
        (server.cpu_seconds, server.steady_cpu_seconds),
        (Some(3.5), Some(2.0))
    );
    assert_eq!(server.peak_rss_mib, Some(2.0));
    assert_eq!(summary.server_cpu_us_per_packet, Some(1000.0));
    assert!(summary.table().contains("1000.0 us per forwarded packet"));

    let summary = summarise(&[], &facts(vec![alive, gone]));
    assert_eq!(summary.server_cpu_us_per_packet, None);
    let table = summary.table();
    let line = table.lines().find(|l| l.starts_with("server pid 8"));
    assert!(line.is_some_and(|l| l.ends_with("exited before the end of the run")));
}

#[test]
fn the_table_and_json_carry_the_headline_figures() {
    let reports = vec![report(Role::Subscriber, Some(50), &[0, 1, 2])];
    let summary = summarise(&reports, &facts(Vec::new()));
    let table = summary.table();
    assert!(table.contains("1 joined of 1, 0 failed"), "{table}");
    assert!(table.contains("1000 packets/s"), "{table}");
    assert!(table.contains("p50 2.0 ms"), "{table}");

    let json = serde_json::to_value(&summary).expect("serialisable");
    assert_eq!(json["joined"], 1);
    assert_eq!(json["sessions"][0]["role"], "subscriber");
    assert_eq!(json["delay_ms"]["max"], 2.0);
}

#[test]
fn the_progress_line_shows_joins_rate_and_loss() {
    let totals = Totals {
        joined: 3,
        failed: 1,
        receiving: 2,
        packets: 999,
        bytes: 0,
        lost: 1,
    };
    let targets = Targets {
        participants: 4,
        receivers: 3,
    };
    let line = progress_line(Duration::from_millis(2500), &totals, targets, 480.4);
    assert_eq!(
        line,
        "[   2.5 s] joined 3/4 (1 failed), receiving 2/3, 480 packets/s, gaps 0.100 %"
    );
}

#[test]
fn tracks_the_server_holds_back_are_neither_missing_nor_lost() {
    let mut publisher = report(Role::Publisher, Some(40), &[]);
    (publisher.stream, publisher.sent_video, publisher.sent_audio) = (1, 10, 10);
    // Paused after 0 to 3: the rest of the video was never sent on purpose.
    let mut paused = report(Role::Subscriber, Some(50), &[0, 1, 2, 3]);
    let cam = TrackId::from_string("v".into());
    paused.received.set_paused(&cam, true);
    // A second publisher's camera, held back from the start.
    paused
        .received
        .set_paused(&TrackId::from_string("other".into()), true);
    let mut run = facts(Vec::new());
    run.scenario.publishers = 2;
    let summary = summarise(&[publisher.clone(), paused.clone()], &run);
    // Only the audio's tail (4 to 9) is lost.
    assert_eq!(summary.sessions[1].lost_packets, 6);
    // Resumed at the end but nothing forwarded since: still held back.
    paused.received.set_paused(&cam, false);
    let summary = summarise(&[publisher.clone(), paused.clone()], &run);
    assert_eq!(summary.sessions[1].lost_packets, 6);
    assert!(
        !summary.sessions[1].missing_media,
        "a held-back camera is not missing"
    );
    // The other camera is resumed too, and sends nothing before the run ends: held
    // back all the same, not missing.
    let mut resumed = paused.clone();
    resumed
        .received
        .set_paused(&TrackId::from_string("other".into()), false);
    let summary = summarise(&[publisher.clone(), resumed], &run);
    assert_eq!(summary.sessions[1].publishers_held_back, 1);
    assert!(!summary.sessions[1].missing_media);
}

#[test]
fn with_speakers_only_those_who_hear_a_speaker_expect_audio() {
    let mut run = facts(Vec::new());
    (run.scenario.publishers, run.scenario.speakers) = (3, Some(1));
    // The lone speaker, in seat 0, hears video but no voice; seat 2 hears the speaker.
    let speaker = report(Role::Publisher, Some(40), &[]);
    let mut listener = report(Role::Publisher, Some(40), &[]);
    listener.seat = 2;
    let reports = [speaker, listener];
    let rows: Vec<(usize, bool)> = reports
        .iter()
        .map(|r| expects_media(r, &run.scenario))
        .collect();
    assert_eq!(rows, [(2, false), (2, true)]);
}

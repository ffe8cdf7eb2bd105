//! Tests of the forwarder, driven by synthetic packets and instants.
use super::*;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const UP_SSRC: u32 = 0x5eed;
/// VP8, no extension, S=1 PID=0, keyframe header.
const VP8_KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a];
/// VP8, S=1 PID=0, interframe header.
const VP8_DELTA: &[u8] = &[0x10, 0x51, 0x02, 0x00];
/// VP8, S=0: a later packet of a frame.
const VP8_MIDDLE: &[u8] = &[0x00, 0x77, 0x66];
const OPUS: &[u8] = &[0xfc, 0xff, 0xfe];

type Out = Vec<(DownTrackKey, Packet)>;

fn packet(ssrc: u32, seq: u16, ts: u32, payload: &[u8]) -> Packet {
    let header = Header {
        version: 2,
        payload_type: 96,
        sequence_number: seq,
        timestamp: ts,
        ssrc,
        ..Header::default()
    };
    Packet {
        header,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn at(base: Instant, millis: u64) -> Instant {
    base + Duration::from_millis(millis)
}

fn send(fwd: &mut Forwarder, now: Instant, packet: &Packet) -> Out {
    let mut out = Vec::new();
    fwd.handle_rtp(now, packet, &mut out);
    out
}

fn for_key(out: &Out, key: u64) -> Vec<&Header> {
    out.iter()
        .filter(|(k, _)| *k == DownTrackKey(key))
        .map(|(_, p)| &p.header)
        .collect()
}

/// Checks a down-track's output has consecutive sequence numbers and returns them.
fn assert_consecutive(headers: &[&Header]) -> Vec<u16> {
    let seqs: Vec<u16> = headers.iter().map(|h| h.sequence_number).collect();
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0].wrapping_add(1), "seqs {seqs:?}");
    }
    seqs
}

/// A video stream: frames of three packets at 90 kHz, keyframe on the given frames.
struct Publisher {
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl Publisher {
    fn new(ssrc: u32, seq: u16) -> Self {
        Publisher {
            ssrc,
            seq,
            ts: 1_000,
        }
    }

    fn frame(&mut self, key: bool) -> Vec<Packet> {
        let first = if key { VP8_KEY } else { VP8_DELTA };
        let packets = [first, VP8_MIDDLE, VP8_MIDDLE]
            .iter()
            .enumerate()
            .map(|(i, payload)| {
                packet(self.ssrc, self.seq.wrapping_add(i as u16), self.ts, payload)
            })
            .collect();
        self.seq = self.seq.wrapping_add(3);
        self.ts = self.ts.wrapping_add(3_000);
        packets
    }
}

fn send_all(fwd: &mut Forwarder, now: Instant, packets: &[Packet]) -> Out {
    packets.iter().flat_map(|p| send(fwd, now, p)).collect()
}

#[test]
fn audio_fans_out_with_each_subscribers_ssrc_and_payload_type() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::audio());
    for key in 0..3 {
        fwd.add_down_track(base, DownTrackKey(key), 100 + key as u32, 111 + key as u8);
    }
    let mut out = Vec::new();
    for i in 0..50_u16 {
        let p = packet(
            UP_SSRC,
            65_500_u16.wrapping_add(i),
            960 * u32::from(i),
            OPUS,
        );
        fwd.handle_rtp(at(base, 20 * u64::from(i)), &p, &mut out);
    }
    assert_eq!(out.len(), 150);
    for key in 0..3 {
        let headers = for_key(&out, key);
        assert_eq!(headers.len(), 50);
        assert!(headers.iter().all(|h| h.ssrc == 100 + key as u32));
        assert!(headers.iter().all(|h| h.payload_type == 111 + key as u8));
        assert_consecutive(&headers);
        for pair in headers.windows(2) {
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
    }
    assert!(out.iter().all(|(_, p)| p.payload == OPUS));
    let stats = fwd.stats();
    assert_eq!((stats.packets_in, stats.packets_out), (50, 150));
    assert_eq!((stats.bytes_in, stats.bytes_out), (150, 450));
}

#[test]
fn audio_never_requests_keyframes() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::audio());
    fwd.add_down_track(base, DownTrackKey(1), 1, 111);
    fwd.handle_keyframe_request(base, DownTrackKey(1));
    assert!(!fwd.poll_keyframe_request(base));
    assert_eq!(fwd.poll_timeout(), None);
}

#[test]
fn video_down_track_added_mid_stream_starts_at_a_keyframe() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
    let mut publisher = Publisher::new(UP_SSRC, 65_000);
    assert!(send_all(&mut fwd, base, &publisher.frame(true)).is_empty());
    fwd.add_down_track(base, DownTrackKey(7), 0x77, 96);
    for _ in 0..4 {
        assert!(send_all(&mut fwd, base, &publisher.frame(false)).is_empty());
    }
    assert_eq!(fwd.stats().dropped_waiting_keyframe, 12);
    let mut out = send_all(&mut fwd, base, &publisher.frame(true));
    for _ in 0..300 {
        out.extend(send_all(&mut fwd, base, &publisher.frame(false)));
    }
    let headers = for_key(&out, 7);
    assert_eq!(headers.len(), 3 * 301);
    assert_consecutive(&headers);
    assert_eq!(out[0].1.payload, VP8_KEY);
    assert_eq!(
        headers[3].timestamp.wrapping_sub(headers[0].timestamp),
        3_000
    );
    assert_eq!(fwd.stats().keyframes_in, 2);
}

#[test]
fn keyframe_requests_on_add_are_throttled_and_repeated_while_waiting() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
    let mut publisher = Publisher::new(UP_SSRC, 1);
    fwd.add_down_track(base, DownTrackKey(1), 1, 96);
    fwd.add_down_track(at(base, 10), DownTrackKey(2), 2, 96);
    assert!(fwd.poll_keyframe_request(at(base, 10)));
    assert!(!fwd.poll_keyframe_request(at(base, 100)));
    send_all(&mut fwd, at(base, 200), &publisher.frame(false));
    assert_eq!(fwd.poll_timeout(), Some(at(base, 510)));
    assert!(!fwd.poll_keyframe_request(at(base, 509)));
    assert!(fwd.poll_keyframe_request(at(base, 510)));
    send_all(&mut fwd, at(base, 600), &publisher.frame(true));
    assert_eq!(fwd.poll_timeout(), None);
    assert!(!fwd.poll_keyframe_request(at(base, 2_000)));
    assert_eq!(fwd.stats().keyframe_requests_sent, 2);
}

#[test]
fn subscriber_requests_are_throttled() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
    let mut publisher = Publisher::new(UP_SSRC, 1);
    fwd.add_down_track(base, DownTrackKey(1), 1, 96);
    assert!(fwd.poll_keyframe_request(base));
    send_all(&mut fwd, at(base, 50), &publisher.frame(true));
    for t in (100..1_000).step_by(10) {
        fwd.handle_keyframe_request(at(base, t), DownTrackKey(1));
        fwd.handle_keyframe_request(at(base, t), DownTrackKey(99));
        fwd.poll_keyframe_request(at(base, t));
    }
    assert_eq!(fwd.stats().keyframe_requests_sent, 2);
    assert_eq!(fwd.poll_timeout(), Some(at(base, 1_000)));
}

#[test]
fn unknown_video_codec_does_not_wait() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Other));
    let mut publisher = Publisher::new(UP_SSRC, 1);
    fwd.add_down_track(base, DownTrackKey(1), 1, 98);
    assert!(fwd.poll_keyframe_request(base));
    let out = send_all(&mut fwd, base, &publisher.frame(false));
    assert_eq!(out.len(), 3);
    assert_eq!(fwd.poll_timeout(), None);
}

#[test]
fn pause_and_resume_audio_continues_without_a_hole() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::audio());
    fwd.add_down_track(base, DownTrackKey(1), 1, 111);
    fwd.add_down_track(base, DownTrackKey(2), 2, 111);
    let mut out = Vec::new();
    for i in 0..30_u16 {
        fwd.set_paused(DownTrackKey(1), (10..20).contains(&i));
        let p = packet(UP_SSRC, i, 960 * u32::from(i), OPUS);
        fwd.handle_rtp(base, &p, &mut out);
    }
    let paused = for_key(&out, 1);
    assert_eq!(paused.len(), 20);
    assert_consecutive(&paused);
    assert_eq!(
        paused[10].timestamp.wrapping_sub(paused[9].timestamp),
        960 * 11
    );
    assert_eq!(for_key(&out, 2).len(), 30);
    assert!(!fwd.poll_keyframe_request(base));
}

#[test]
fn resumed_video_waits_for_a_keyframe_and_requests_one() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
    let mut publisher = Publisher::new(UP_SSRC, 500);
    fwd.add_down_track(base, DownTrackKey(1), 1, 96);
    assert!(fwd.poll_keyframe_request(base));
    let mut out = send_all(&mut fwd, base, &publisher.frame(true));
    fwd.set_paused(DownTrackKey(1), true);
    fwd.set_paused(DownTrackKey(1), true);
    assert!(send_all(&mut fwd, at(base, 600), &publisher.frame(false)).is_empty());
    assert_eq!(fwd.stats().dropped_waiting_keyframe, 0);
    fwd.set_paused(DownTrackKey(1), false);
    assert!(fwd.poll_keyframe_request(at(base, 600)));
    assert!(send_all(&mut fwd, at(base, 700), &publisher.frame(false)).is_empty());
    assert_eq!(fwd.stats().dropped_waiting_keyframe, 3);
    out.extend(send_all(&mut fwd, at(base, 800), &publisher.frame(true)));
    let headers = for_key(&out, 1);
    assert_eq!(headers.len(), 6);
    assert_consecutive(&headers);
    assert_eq!(
        headers[3].timestamp.wrapping_sub(headers[0].timestamp),
        9_000
    );
}

#[test]
fn removed_down_tracks_get_nothing() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::audio());
    fwd.add_down_track(base, DownTrackKey(1), 1, 111);
    fwd.add_down_track(base, DownTrackKey(2), 2, 111);
    fwd.add_down_track(base, DownTrackKey(2), 3, 111);
    assert_eq!(fwd.down_track_count(), 2);
    assert!(fwd.remove_down_track(DownTrackKey(1)));
    assert!(!fwd.remove_down_track(DownTrackKey(1)));
    assert_eq!(fwd.down_track_count(), 1);
    let out = send(&mut fwd, base, &packet(UP_SSRC, 1, 1, OPUS));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].0, out[0].1.header.ssrc), (DownTrackKey(2), 3));
}

#[test]
fn a_thousand_packets_to_ten_down_tracks() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::audio());
    for key in 0..10 {
        fwd.add_down_track(base, DownTrackKey(key), 1_000 + key as u32, 111);
    }
    let mut out = Vec::new();
    for i in 0..1_000_u16 {
        let p = packet(
            UP_SSRC,
            64_000_u16.wrapping_add(i),
            960 * u32::from(i),
            OPUS,
        );
        fwd.handle_rtp(at(base, 20 * u64::from(i)), &p, &mut out);
    }
    assert_eq!(out.len(), 10_000);
    for key in 0..10 {
        let headers = for_key(&out, key);
        assert_eq!(headers.len(), 1_000);
        assert!(headers.iter().all(|h| h.ssrc == 1_000 + key as u32));
        assert_consecutive(&headers);
    }
    assert_eq!(fwd.stats().packets_out, 10_000);
}

#[test]
fn a_new_upstream_source_needs_a_keyframe_and_keeps_numbering() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::Vp8));
    let mut old = Publisher::new(UP_SSRC, 100);
    let mut new = Publisher::new(0xbeef, 40_000);
    fwd.add_down_track(base, DownTrackKey(1), 1, 96);
    assert!(fwd.poll_keyframe_request(base));
    let mut out = send_all(&mut fwd, base, &old.frame(true));
    assert!(send_all(&mut fwd, at(base, 1_000), &new.frame(false)).is_empty());
    assert!(fwd.poll_keyframe_request(at(base, 1_000)));
    let late_old = send(&mut fwd, at(base, 1_010), &old.frame(false)[0]);
    assert!(late_old.is_empty());
    out.extend(send_all(&mut fwd, at(base, 1_100), &new.frame(true)));
    let headers = for_key(&out, 1);
    assert_eq!(headers.len(), 6);
    assert_consecutive(&headers);
    assert_eq!(
        headers[3].timestamp.wrapping_sub(headers[0].timestamp),
        99_000
    );
}

#[test]
fn late_packets_of_the_starting_keyframe_are_forwarded() {
    let base = Instant::now();
    let mut fwd = Forwarder::new(ForwarderConfig::video(VideoCodec::H264));
    fwd.add_down_track(base, DownTrackKey(1), 1, 102);
    let older_frame = packet(UP_SSRC, 9, 3_000, &[0x41, 0x9a]);
    let sps = packet(UP_SSRC, 10, 6_000, &[0x67, 0x42]);
    let start = packet(UP_SSRC, 11, 6_000, &[0x7c, 0x85, 0x88]);
    let end = packet(UP_SSRC, 12, 6_000, &[0x7c, 0x45, 0x11]);
    let mut out = send(&mut fwd, base, &start);
    out.extend(send(&mut fwd, base, &sps));
    out.extend(send(&mut fwd, base, &older_frame));
    out.extend(send(&mut fwd, base, &end));
    let seqs: Vec<u16> = for_key(&out, 1).iter().map(|h| h.sequence_number).collect();
    assert_eq!(seqs.len(), 3);
    assert_eq!(seqs[1], seqs[0].wrapping_sub(1));
    assert_eq!(seqs[2], seqs[0].wrapping_add(1));
}

#[test]
fn garbage_never_panics() {
    let base = Instant::now();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for cfg in [
        ForwarderConfig::video(VideoCodec::Vp8),
        ForwarderConfig::video(VideoCodec::H264),
        ForwarderConfig::video(VideoCodec::Other),
        ForwarderConfig::audio(),
    ] {
        let mut fwd = Forwarder::new(cfg);
        let mut out = Vec::new();
        for i in 0..5_000_u64 {
            let now = at(base, i);
            let key = DownTrackKey(rng.gen_range(0..4));
            match rng.gen_range(0..100) {
                0 => fwd.add_down_track(now, key, rng.gen(), rng.gen()),
                1 => {
                    fwd.remove_down_track(key);
                }
                2 => fwd.set_paused(key, rng.gen()),
                3 => fwd.handle_keyframe_request(now, key),
                _ => {
                    let mut payload = vec![0_u8; rng.gen_range(0..40)];
                    rng.fill(&mut payload[..]);
                    let header = Header {
                        ssrc: rng.gen_range(0..3),
                        sequence_number: rng.gen(),
                        timestamp: rng.gen(),
                        payload_type: rng.gen(),
                        ..Header::default()
                    };
                    let p = Packet {
                        header,
                        payload: Bytes::from(payload),
                    };
                    fwd.handle_rtp(now, &p, &mut out);
                }
            }
            fwd.poll_keyframe_request(now);
            let _ = fwd.poll_timeout();
            out.clear();
        }
        let stats = fwd.stats();
        assert!(stats.packets_in > 0 && stats.packets_out <= 4 * stats.packets_in);
    }
}

#[test]
fn ts_gap_follows_real_time() {
    assert_eq!(ts_gap(MediaKind::Video, Duration::from_millis(100)), 9_000);
    assert_eq!(ts_gap(MediaKind::Audio, Duration::from_millis(20)), 960);
    assert_eq!(ts_gap(MediaKind::Audio, Duration::ZERO), 1);
    assert_eq!(ts_gap(MediaKind::Video, Duration::MAX), MAX_TS_GAP);
}

//! Synthetic media: the RTP packets a publisher sends, shaped like VP8 video and Opus
//! audio but carrying only the load header and filler.
//!
//! Owns per-track numbering (RTP sequence and timestamp, load sequence) and the frame
//! plan: frame sizes that reach the configured bitrate, keyframes on a timer or on
//! request. Time is passed in as the duration since the epoch; nothing here reads a
//! clock or touches a socket. The caller ticks [`VideoSource::frame`] once per frame
//! interval and [`AudioSource::packet`] every [`AUDIO_PACKET_INTERVAL`].
//!
//! Keyframes are [`KEYFRAME_SCALE`] times larger than delta frames, as an encoder's
//! are; delta frames shrink so that a keyframe interval still averages the bitrate.

use std::time::Duration;

use bytes::Bytes;
use rtc::rtp::header::Header;
use rtc::rtp::packet::Packet;

use super::payload::{PayloadHeader, HEADER_LEN, VIDEO_PREFIX_LEN};

/// Largest RTP payload a video packet gets, as browsers keep under a 1280-byte MTU.
pub const MAX_VIDEO_PAYLOAD: usize = 1200;
/// How much larger a keyframe is than a delta frame.
pub const KEYFRAME_SCALE: usize = 4;
/// Opus-shaped audio: one packet every 20 ms.
pub const AUDIO_PACKET_INTERVAL: Duration = Duration::from_millis(20);
/// Payload bytes of one audio packet, about a speech-rate Opus packet.
pub const AUDIO_PAYLOAD: usize = 100;

const VIDEO_CLOCK_HZ: u64 = 90_000;
const AUDIO_CLOCK_HZ: u64 = 48_000;
/// VP8 payload descriptor with S=1 (start of partition 0).
const VP8_START: u8 = 0x10;
/// VP8 payload descriptor of a packet that continues a partition.
const VP8_CONTINUE: u8 = 0x00;
/// VP8 payload header byte: the P bit (inverse keyframe flag) set.
const VP8_DELTA: u8 = 0x01;

/// Shape of the video a publisher sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoShape {
    /// Average bits per second.
    pub bitrate: u64,
    pub fps: u32,
    /// Time between timed keyframes.
    pub keyframe_interval: Duration,
}

impl VideoShape {
    /// Bytes of a delta frame and of a keyframe.
    pub fn frame_sizes(&self) -> (usize, usize) {
        let fps = f64::from(self.fps.max(1));
        let average = self.bitrate as f64 / 8.0 / fps;
        let frames_per_key = (self.keyframe_interval.as_secs_f64() * fps).max(1.0);
        let scale = KEYFRAME_SCALE as f64;
        let delta = average * frames_per_key / (frames_per_key + scale - 1.0);
        let smallest = VIDEO_PREFIX_LEN + HEADER_LEN;
        let delta = (delta.round() as usize).max(smallest);
        (delta, delta * KEYFRAME_SCALE)
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs(1) / self.fps.max(1)
    }
}

/// RTP and load numbering of one track.
#[derive(Debug, Clone)]
struct Numbering {
    stream: u32,
    rtp_sequence: u16,
    rtp_timestamp_base: u32,
    clock_hz: u64,
    /// Time of the first packet: RTP timestamps count from here.
    started: Option<Duration>,
    sequence: u64,
}

impl Numbering {
    fn new(stream: u32, clock_hz: u64, rtp_sequence: u16, rtp_timestamp_base: u32) -> Self {
        Numbering {
            stream,
            rtp_sequence,
            rtp_timestamp_base,
            clock_hz,
            started: None,
            sequence: 0,
        }
    }

    fn timestamp(&mut self, now: Duration) -> u32 {
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_sub(started);
        let ticks = elapsed.as_nanos() * u128::from(self.clock_hz) / 1_000_000_000;
        // RTP timestamps wrap at 32 bits by definition.
        self.rtp_timestamp_base.wrapping_add(ticks as u32)
    }

    /// One packet: `prefix`, the load header, then filler up to `len` bytes.
    fn packet(
        &mut self,
        prefix: &[u8],
        len: usize,
        marker: bool,
        ts: u32,
        now: Duration,
    ) -> Packet {
        let mut payload = Vec::with_capacity(len.max(prefix.len() + HEADER_LEN));
        payload.extend_from_slice(prefix);
        let header = PayloadHeader {
            stream: self.stream,
            sequence: self.sequence,
            sent: now,
        };
        header.write(&mut payload);
        payload.resize(len.max(payload.len()), 0xA5);

        let rtp = Header {
            version: 2,
            marker,
            sequence_number: self.rtp_sequence,
            timestamp: ts,
            ..Default::default()
        };
        self.sequence += 1;
        self.rtp_sequence = self.rtp_sequence.wrapping_add(1);
        Packet {
            header: rtp,
            payload: Bytes::from(payload),
        }
    }
}

/// VP8-shaped video of one publisher.
#[derive(Debug, Clone)]
pub struct VideoSource {
    shape: VideoShape,
    numbering: Numbering,
    last_keyframe: Option<Duration>,
}

impl VideoSource {
    pub fn new(stream: u32, shape: VideoShape, rtp_sequence: u16, rtp_timestamp: u32) -> Self {
        VideoSource {
            shape,
            numbering: Numbering::new(stream, VIDEO_CLOCK_HZ, rtp_sequence, rtp_timestamp),
            last_keyframe: None,
        }
    }

    /// The packets of the frame captured at `now`; a keyframe when one is due or
    /// `key_requested` (the server relayed a PLI).
    pub fn frame(&mut self, now: Duration, key_requested: bool) -> Vec<Packet> {
        let timer_due = self
            .last_keyframe
            .is_none_or(|last| now.saturating_sub(last) >= self.shape.keyframe_interval);
        let keyframe = key_requested || timer_due;
        if keyframe {
            self.last_keyframe = Some(now);
        }
        let (delta, key) = self.shape.frame_sizes();
        let size = if keyframe { key } else { delta };

        let ts = self.numbering.timestamp(now);
        let lengths = split(size, MAX_VIDEO_PAYLOAD);
        let last = lengths.len() - 1;
        let p_byte = if keyframe { 0 } else { VP8_DELTA };
        let mut packets = Vec::with_capacity(lengths.len());
        for (i, len) in lengths.into_iter().enumerate() {
            let descriptor = if i == 0 { VP8_START } else { VP8_CONTINUE };
            let packet = self
                .numbering
                .packet(&[descriptor, p_byte], len, i == last, ts, now);
            packets.push(packet);
        }
        packets
    }
}

/// Opus-shaped audio of one publisher.
#[derive(Debug, Clone)]
pub struct AudioSource {
    numbering: Numbering,
}

impl AudioSource {
    pub fn new(stream: u32, rtp_sequence: u16, rtp_timestamp: u32) -> Self {
        AudioSource {
            numbering: Numbering::new(stream, AUDIO_CLOCK_HZ, rtp_sequence, rtp_timestamp),
        }
    }

    /// The packet captured at `now`.
    pub fn packet(&mut self, now: Duration) -> Packet {
        let ts = self.numbering.timestamp(now);
        self.numbering.packet(&[], AUDIO_PAYLOAD, false, ts, now)
    }
}

/// Splits `size` bytes into as few packets of at most `max` bytes as it takes, of
/// nearly equal length, so no runt packet trails a frame.
fn split(size: usize, max: usize) -> Vec<usize> {
    let count = size.div_ceil(max).max(1);
    let base = size / count;
    let extra = size % count;
    (0..count).map(|i| base + usize::from(i < extra)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::payload::parse;
    use super::*;
    use crate::signal::protocol::TrackKind;

    const SHAPE: VideoShape = VideoShape {
        bitrate: 500_000,
        fps: 30,
        keyframe_interval: Duration::from_secs(2),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn splits_evenly_within_the_limit() {
        assert_eq!(split(2400, 1200), vec![1200, 1200]);
        assert_eq!(split(2401, 1200), vec![801, 800, 800]);
        assert_eq!(split(10, 1200), vec![10]);
        assert_eq!(split(0, 1200), vec![0]);
    }

    #[test]
    fn frame_sizes_average_the_bitrate_over_a_keyframe_interval() {
        let (delta, key) = SHAPE.frame_sizes();
        assert_eq!(key, delta * KEYFRAME_SCALE);
        let per_interval = 59 * delta + key;
        let wanted = 500_000 / 8 * 2;
        assert!(
            per_interval.abs_diff(wanted) < 100,
            "{per_interval} vs {wanted}"
        );
    }

    #[test]
    fn keyframes_come_on_the_timer_and_on_request() {
        let mut video = VideoSource::new(1, SHAPE, 0, 0);
        let is_key = |packets: &[Packet]| packets[0].payload[1] & VP8_DELTA == 0;
        assert!(is_key(&video.frame(ms(0), false)));
        assert!(!is_key(&video.frame(ms(33), false)));
        assert!(is_key(&video.frame(ms(66), true)));
        assert!(!is_key(&video.frame(ms(1999), false)));
        assert!(is_key(&video.frame(ms(2066), false)));
    }

    #[test]
    fn a_frame_is_vp8_shaped_and_numbered() {
        let shape = VideoShape {
            bitrate: 2_000_000,
            ..SHAPE
        };
        let mut video = VideoSource::new(3, shape, u16::MAX, u32::MAX - 10);
        let first = video.frame(ms(0), false);
        assert!(first.len() > 2, "a keyframe of this bitrate spans packets");
        for (i, packet) in first.iter().enumerate() {
            assert!(packet.payload.len() <= MAX_VIDEO_PAYLOAD);
            assert_eq!(packet.header.marker, i == first.len() - 1);
            let descriptor = if i == 0 { VP8_START } else { VP8_CONTINUE };
            assert_eq!(packet.payload[0], descriptor);
            let (kind, header) = parse(&packet.payload).expect("load header");
            assert_eq!(
                (kind, header.stream, header.sequence),
                (TrackKind::Video, 3, i as u64)
            );
        }
        assert_eq!(first[1].header.sequence_number, 0, "RTP sequence wraps");

        let second = video.frame(ms(100), false);
        assert_eq!(
            second[0].header.timestamp,
            (u32::MAX - 10).wrapping_add(9000)
        );
        assert_eq!(second[0].payload[1], VP8_DELTA);
    }

    #[test]
    fn audio_packets_are_opus_sized_and_stamped() {
        let mut audio = AudioSource::new(9, 100, 1000);
        let a = audio.packet(ms(5));
        let b = audio.packet(ms(25));
        assert_eq!(a.payload.len(), AUDIO_PAYLOAD);
        assert_eq!(b.header.sequence_number, 101);
        assert_eq!(b.header.timestamp, 1000 + 960);
        let (kind, header) = parse(&b.payload).expect("load header");
        assert_eq!(kind, TrackKind::Audio);
        assert_eq!(
            (header.stream, header.sequence, header.sent),
            (9, 1, ms(25))
        );
    }
}

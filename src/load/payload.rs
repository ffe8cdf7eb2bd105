//! The header every load-generator payload carries, so a subscriber can tell loss and
//! one-way delay from the packet alone.
//!
//! Owns the byte layout only. A payload is the codec's own header bytes (none for
//! audio; for video a VP8 payload descriptor and one payload-header byte), then:
//!
//! ```text
//! magic u32 | stream u32 | sequence u64 | sent_ns u64      (big-endian, 24 bytes)
//! ```
//!
//! `stream` numbers the publisher, `sequence` counts the packets of one track from 0,
//! and `sent_ns` is the send time in nanoseconds since the process-wide epoch (see
//! [`super::since_epoch`]); publishers and subscribers share one process and one clock.
//!
//! Invariant: the magic's first byte (`R`) is neither a VP8 descriptor this generator
//! writes (0x10 or 0x00), so [`parse`] finds the header without knowing the track's
//! kind, and never panics on foreign bytes.

use std::time::Duration;

use crate::signal::protocol::TrackKind;

/// Marks a payload written by the load generator ("RLD1").
pub const MAGIC: u32 = 0x524C_4431;
/// Length of the load header in bytes.
pub const HEADER_LEN: usize = 24;
/// Bytes of VP8 payload descriptor and payload header before the load header.
pub const VIDEO_PREFIX_LEN: usize = 2;

/// The fields of the load header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    /// Which publisher sent the packet.
    pub stream: u32,
    /// Per-track packet counter, from 0.
    pub sequence: u64,
    /// Send time since the epoch.
    pub sent: Duration,
}

impl PayloadHeader {
    /// Appends the 24 header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let sent_ns = u64::try_from(self.sent.as_nanos()).unwrap_or(u64::MAX);
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&self.stream.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&sent_ns.to_be_bytes());
    }

    /// Reads a header at the start of `bytes`; `None` without the magic or when short.
    pub fn read(bytes: &[u8]) -> Option<PayloadHeader> {
        let magic = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
        if magic != MAGIC {
            return None;
        }
        let stream = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
        let sequence = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        let sent_ns = u64::from_be_bytes(bytes.get(16..24)?.try_into().ok()?);
        Some(PayloadHeader {
            stream,
            sequence,
            sent: Duration::from_nanos(sent_ns),
        })
    }
}

/// Finds the header in a received payload; the offset tells the kind of media.
pub fn parse(payload: &[u8]) -> Option<(TrackKind, PayloadHeader)> {
    if let Some(header) = PayloadHeader::read(payload) {
        return Some((TrackKind::Audio, header));
    }
    let header = PayloadHeader::read(payload.get(VIDEO_PREFIX_LEN..)?)?;
    Some((TrackKind::Video, header))
}

/// A payload as a publisher of stream 1 would send it, for the statistics' tests.
#[cfg(test)]
pub(super) fn sample(video: bool, sequence: u64, sent_ms: u64) -> Vec<u8> {
    let mut bytes = if video { vec![0x10, 0x01] } else { Vec::new() };
    let header = PayloadHeader {
        stream: 1,
        sequence,
        sent: Duration::from_millis(sent_ms),
    };
    header.write(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PayloadHeader {
        PayloadHeader {
            stream: 7,
            sequence: 1 << 40,
            sent: Duration::from_nanos(123_456_789_012),
        }
    }

    #[test]
    fn round_trips_audio_and_video() {
        let mut audio = Vec::new();
        header().write(&mut audio);
        assert_eq!(audio.len(), HEADER_LEN);
        assert_eq!(parse(&audio), Some((TrackKind::Audio, header())));

        let mut video = vec![0x10, 0x00];
        header().write(&mut video);
        video.extend_from_slice(&[0xAB; 100]);
        assert_eq!(parse(&video), Some((TrackKind::Video, header())));
    }

    #[test]
    fn continuation_packets_parse_as_video() {
        let mut video = vec![0x00, 0x01];
        header().write(&mut video);
        assert_eq!(parse(&video).map(|(kind, _)| kind), Some(TrackKind::Video));
    }

    #[test]
    fn foreign_and_truncated_payloads_are_refused() {
        let mut bytes = vec![0x10, 0x00];
        header().write(&mut bytes);
        for len in 0..bytes.len() {
            assert_eq!(parse(&bytes[..len]), None, "prefix of {len} bytes");
        }
        assert_eq!(parse(&[0x10, 0x00, 1, 2, 3, 4]), None);
        assert_eq!(parse(&[0xFF; 64]), None);
    }
}

//! An interceptor at the wire end of each peer connection that reads media quality off the
//! RTCP passing by: loss, jitter and round-trip time from reception reports, NACKs,
//! retransmissions and keyframe requests, in both directions.
//!
//! Sitting at the wire end (only `media::layer_acks` is closer, and it consumes nothing
//! inbound), it sees every RTCP packet the peer sends before any other interceptor
//! consumes it, and every packet the connection sends, including the receiver
//! reports, NACKs and retransmissions that other interceptors generate. It passes everything
//! through unchanged. RTCP is a few packets per second per stream, so it records into the
//! shared families directly; for RTP it only checks one attribute.
//!
//! The arithmetic lives in [`ReportState`], which takes the wall clock as an argument and is
//! unit-tested; the interceptor is the shell that feeds it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

use super::{Direction, KeyframeRequest, Kind, Metrics};

/// Slot of the tap: below every built-in interceptor (the lowest is 1 000), at the wire.
pub const RTCP_TAP_SLOT: usize = 500;

/// What one reception report says, in base units, ready to record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReportReading {
    pub kind: Kind,
    /// Packets lost since the previous report on this stream (0 for the first one).
    pub lost: u64,
    /// Interarrival jitter.
    pub jitter_seconds: f64,
    /// Round-trip time, when the report echoes a sender report of ours.
    pub rtt_seconds: Option<f64>,
}

/// What the tap knows of the streams of one connection: their kinds, clock rates and the
/// cumulative loss last reported for each.
#[derive(Debug, Default)]
pub struct ReportState {
    /// Streams this connection sends (subscriptions): reports from the peer are about these.
    local: HashMap<u32, StreamFacts>,
    /// Streams this connection receives (publications): our own reports are about these.
    remote: HashMap<u32, StreamFacts>,
}

#[derive(Clone, Copy, Debug)]
struct StreamFacts {
    kind: Kind,
    clock_rate: u32,
    /// Cumulative loss of the previous report, to turn the next one into a delta.
    total_lost: Option<u32>,
}

impl StreamFacts {
    fn of(info: &StreamInfo) -> Self {
        let video = info.mime_type.to_ascii_lowercase().starts_with("video/");
        StreamFacts {
            kind: if video { Kind::Video } else { Kind::Audio },
            clock_rate: info.clock_rate,
            total_lost: None,
        }
    }
}

impl ReportState {
    pub fn bind(&mut self, direction: Direction, info: &StreamInfo) {
        self.streams(direction)
            .insert(info.ssrc, StreamFacts::of(info));
    }

    pub fn unbind(&mut self, direction: Direction, ssrc: u32) {
        self.streams(direction).remove(&ssrc);
    }

    fn streams(&mut self, direction: Direction) -> &mut HashMap<u32, StreamFacts> {
        match direction {
            Direction::In => &mut self.remote,
            Direction::Out => &mut self.local,
        }
    }

    /// Reads one reception block. `direction` is that of the media it is about: `Out` for a
    /// block the peer sent about our stream, `In` for one we send about the peer's.
    /// `ntp_now` is the wall clock as a 64-bit NTP timestamp. Unknown streams give nothing.
    pub fn handle_report(
        &mut self,
        direction: Direction,
        block: &ReceptionReport,
        ntp_now: u64,
    ) -> Option<ReportReading> {
        let facts = self.streams(direction).get_mut(&block.ssrc)?;
        // The cumulative count is 24 bits and may step back (duplicates); only rises count.
        let lost = match facts.total_lost {
            Some(before) => u64::from(block.total_lost.saturating_sub(before)),
            None => 0,
        };
        facts.total_lost = Some(block.total_lost);
        let jitter_seconds = match facts.clock_rate {
            0 => 0.0,
            rate => f64::from(block.jitter) / f64::from(rate),
        };
        // Only the peer's reports about our streams echo our sender reports.
        let rtt_seconds = match direction {
            Direction::Out => round_trip(ntp_now, block.last_sender_report, block.delay),
            Direction::In => None,
        };
        Some(ReportReading {
            kind: facts.kind,
            lost,
            jitter_seconds,
            rtt_seconds: rtt_seconds.map(|d| d.as_secs_f64()),
        })
    }
}

/// RFC 3550's round-trip time: arrival minus the echoed sender report's time minus the
/// receiver's delay since it, all in the middle 32 bits of NTP time (1/65536 s). None when no
/// sender report was echoed, or when the clocks give a result that cannot be right.
pub fn round_trip(ntp_now: u64, last_sender_report: u32, delay: u32) -> Option<Duration> {
    if last_sender_report == 0 {
        return None;
    }
    let now = (ntp_now >> 16) as u32;
    let rtt = now.wrapping_sub(last_sender_report).wrapping_sub(delay);
    // Above a minute the subtraction wrapped: a clock stepped, or the report is bogus.
    if rtt > 60 << 16 {
        return None;
    }
    Some(Duration::from_secs_f64(f64::from(rtt) / 65536.0))
}

/// The wall clock as a 64-bit NTP timestamp (seconds since 1900 in the high half).
pub fn ntp_now() -> u64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_unix.as_secs() + 2_208_988_800;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// The interceptor; one per peer connection.
pub struct RtcpTap {
    metrics: Arc<Metrics>,
    state: ReportState,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

impl RtcpTap {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RtcpTap {
            metrics,
            state: ReportState::default(),
            inbound: VecDeque::new(),
            outbound: VecDeque::new(),
        }
    }

    /// Records what RTCP `packets` say; `direction` is the way they travel.
    fn observe(&mut self, direction: Direction, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        // Reports we receive are about what we send, and the other way round.
        let media = match direction {
            Direction::In => Direction::Out,
            Direction::Out => Direction::In,
        };
        let ntp = ntp_now();
        for packet in packets {
            let any = packet.as_any();
            let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports[..]
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports[..]
            } else {
                self.count_feedback(direction, any);
                continue;
            };
            for block in blocks {
                if let Some(reading) = self.state.handle_report(media, block, ntp) {
                    self.metrics.observe_report(media, &reading);
                }
            }
        }
    }

    fn count_feedback(&self, direction: Direction, any: &dyn std::any::Any) {
        if any.is::<TransportLayerNack>() {
            self.metrics.nack(direction);
        } else if any.is::<PictureLossIndication>() {
            self.metrics
                .keyframe_request(KeyframeRequest::Pli, direction);
        } else if any.is::<FullIntraRequest>() {
            self.metrics
                .keyframe_request(KeyframeRequest::Fir, direction);
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = std::time::Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            self.observe(Direction::In, packets);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtcp(packets) => self.observe(Direction::Out, packets),
            Packet::Rtp(_) if msg.message.has(&Attribute::Retransmission) => {
                self.metrics.retransmission()
            }
            _ => {}
        }
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.outbound.pop_front()
    }
}

impl Interceptor for RtcpTap {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.state.bind(Direction::Out, info);
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.state.unbind(Direction::Out, info.ssrc);
    }
    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.state.bind(Direction::In, info);
    }
    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.state.unbind(Direction::In, info.ssrc);
    }
}

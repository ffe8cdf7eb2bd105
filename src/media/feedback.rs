//! An interceptor that hands subscribers' keyframe requests and bandwidth estimates to
//! the application.
//!
//! Inbound RTCP normally ends inside the interceptor chain: receiver reports feed
//! statistics and NACKs are answered from the sender's buffer. A PLI or FIR from a
//! subscriber, though, is about a stream the publisher produces, so only relais can
//! act on it by asking the publisher. This interceptor sits last in the chain and
//! marks exactly those packets for delivery; everything else still ends there.
//!
//! A REMB (the receiver's estimate of its downlink, which browsers send when
//! `goog-remb` is negotiated) is recorded in the connection's [`DownlinkEstimate`],
//! which the participant's bandwidth allocation reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Slot of this interceptor: after every built-in one, so they all see the RTCP first.
pub const FEEDBACK_SLOT: usize = 14_000;

/// The latest estimate of what a connection's remote end can receive.
#[derive(Debug, Default)]
pub struct DownlinkEstimate {
    /// Bits per second; 0 until the remote sent one.
    bps: AtomicU64,
    /// How many estimates arrived.
    count: AtomicU64,
}

impl DownlinkEstimate {
    /// The latest estimate in bits per second, None before the first.
    pub fn get(&self) -> Option<u64> {
        (self.count.load(Ordering::Acquire) > 0).then(|| self.bps.load(Ordering::Relaxed))
    }

    /// How many estimates arrived so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn set(&self, bps: u64) {
        self.bps.store(bps, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Release);
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct RtcpFeedback {
    estimate: Arc<DownlinkEstimate>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

impl RtcpFeedback {
    /// An interceptor that records REMBs into `estimate`.
    pub fn new(estimate: Arc<DownlinkEstimate>) -> Self {
        RtcpFeedback {
            estimate,
            ..RtcpFeedback::default()
        }
    }

    fn note_estimate(&self, packet: &dyn rtc::rtcp::Packet) {
        if let Some(remb) = packet
            .as_any()
            .downcast_ref::<ReceiverEstimatedMaximumBitrate>()
        {
            // A negative or not-a-number bitrate from a broken client reads as 0.
            let bps = if remb.bitrate.is_finite() {
                remb.bitrate.max(0.0) as u64
            } else {
                0
            };
            self.estimate.set(bps);
        }
    }
}

fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpFeedback {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for packet in packets {
                self.note_estimate(packet.as_ref());
            }
            let requests: Vec<_> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            // Everything but keyframe requests was handled by the interceptors before us.
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.outbound.pop_front()
    }
}

impl Interceptor for RtcpFeedback {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate as remb;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Slot of this interceptor: after every built-in one, so they all see the RTCP first.
pub const FEEDBACK_SLOT: usize = 14_000;

/// The estimates a connection's remote end sent of its downlink, until they are taken.
#[derive(Debug, Default)]
pub struct DownlinkEstimate {
    /// Bits per second, oldest first; at most [`MAX_PENDING_ESTIMATES`].
    pending: Mutex<Vec<u64>>,
}

/// Estimates kept until taken; older ones are dropped first.
pub const MAX_PENDING_ESTIMATES: usize = 32;

impl DownlinkEstimate {
    /// The estimates that arrived since the last call, oldest first.
    pub fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.lock())
    }

    fn push(&self, bps: u64) {
        let mut pending = self.lock();
        if pending.len() == MAX_PENDING_ESTIMATES {
            pending.remove(0);
        }
        pending.push(bps);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        // A poisoned lock only means a reader panicked mid-take; the numbers are fine.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
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
        if let Some(report) = packet
            .as_any()
            .downcast_ref::<remb::ReceiverEstimatedMaximumBitrate>()
        {
            // A negative or not-a-number bitrate from a broken client reads as 0.
            let bps = if report.bitrate.is_finite() {
                report.bitrate.max(0.0) as u64
            } else {
                0
            };
            self.estimate.push(bps);
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

#[cfg(test)]
mod tests {
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::TransportContext;

    use super::*;

    fn rtcp(packets: Vec<Box<dyn rtc::rtcp::Packet>>) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(packets)),
        }
    }

    fn estimate_of(bitrate: f32) -> Box<dyn rtc::rtcp::Packet> {
        Box::new(remb::ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 1,
            bitrate,
            ssrcs: vec![2],
        })
    }

    #[test]
    fn estimates_are_recorded_and_only_keyframe_requests_reach_the_application() {
        let estimate = Arc::new(DownlinkEstimate::default());
        let mut feedback = RtcpFeedback::new(estimate.clone());
        let pli: Box<dyn rtc::rtcp::Packet> = Box::new(PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        });
        feedback
            .handle_read(rtcp(vec![estimate_of(1.5e6)]))
            .expect("read");
        assert!(feedback.poll_read().is_none(), "a REMB alone ends here");
        feedback
            .handle_read(rtcp(vec![estimate_of(f32::NAN), pli, estimate_of(-3.0)]))
            .expect("read");
        let delivered = feedback.poll_read().expect("the PLI");
        let Packet::Rtcp(packets) = &delivered.message.packet else {
            panic!("not RTCP");
        };
        assert_eq!(packets.len(), 1);
        assert!(is_keyframe_request(packets[0].as_ref()));
        // Broken bitrates read as nothing to spare.
        assert_eq!(estimate.take(), [1_500_000, 0, 0]);
        assert!(estimate.take().is_empty(), "taken once");
    }

    #[test]
    fn only_the_newest_estimates_are_kept_until_taken() {
        let estimate = DownlinkEstimate::default();
        for bps in 0..MAX_PENDING_ESTIMATES as u64 + 3 {
            estimate.push(bps);
        }
        let kept = estimate.take();
        assert_eq!(kept.len(), MAX_PENDING_ESTIMATES);
        assert_eq!(kept[0], 3);
    }
}

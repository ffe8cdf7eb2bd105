//! An interceptor that keeps simulcast publishers naming their layers: the SSRCs of
//! streams that arrive with a `rid` are left out of this node's reception reports.
//!
//! A browser names each simulcast layer by the `rid` header extension of its packets
//! until a reception report acknowledges the layer's SSRC, and stops then. The peer
//! connection, though, forgets which SSRC carries which `rid` whenever a remote
//! description is applied (the receiver's codings are rebuilt from the SDP, which
//! names no SSRC for them), and from then on it drops a layer's packets unless they name
//! their `rid` again. Never acknowledging the layers' SSRCs keeps every packet named,
//! so a renegotiation (a subscription of the publisher's, or another track it
//! publishes) does not cut its camera off. The cost is the extension's 8 or so bytes
//! per packet, and no loss figures from this node's reports for those streams: the
//! browser estimates its uplink from transport-wide feedback, which is sent as before.
//!
//! Sits at the wire end of the chain, below the report generators and the RTCP tap, so
//! that it sees every inbound RTP packet before anything else and every outbound report
//! after the node's own loss figures were taken from it.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Slot of this interceptor: wire-ward of the report generators and of the RTCP tap
/// (`metrics::rtcp::RTCP_TAP_SLOT`, 500).
pub const LAYER_ACKS_SLOT: usize = 400;

/// The URI of the header extension that names a simulcast layer (RFC 8852).
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";

/// See the module documentation.
#[derive(Default)]
pub struct LayerAcks {
    /// The negotiated id of the `rid` extension, once a stream that has it is bound.
    rid_id: Option<u8>,
    /// SSRCs seen with a `rid`: never acknowledged.
    layers: HashSet<u32>,
    inbound: VecDeque<TaggedPacket>,
    outbound: VecDeque<TaggedPacket>,
}

impl LayerAcks {
    fn note_layer(&mut self, packet: &rtc::rtp::packet::Packet) {
        let Some(id) = self.rid_id else { return };
        let ssrc = packet.header.ssrc;
        if !self.layers.contains(&ssrc) && packet.header.get_extension(id).is_some() {
            self.layers.insert(ssrc);
        }
    }

    /// The report without blocks about layers, or None when it has none to remove.
    fn without_layers(&self, packet: &dyn rtc::rtcp::Packet) -> Option<Box<dyn rtc::rtcp::Packet>> {
        let about_layer = |ssrc: &u32| self.layers.contains(ssrc);
        let any = packet.as_any();
        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            if rr.reports.iter().any(|r| about_layer(&r.ssrc)) {
                let mut kept = rr.clone();
                kept.reports.retain(|r| !about_layer(&r.ssrc));
                return Some(Box::new(kept));
            }
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            if sr.reports.iter().any(|r| about_layer(&r.ssrc)) {
                let mut kept = sr.clone();
                kept.reports.retain(|r| !about_layer(&r.ssrc));
                return Some(Box::new(kept));
            }
        }
        None
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for LayerAcks {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(packet) = &msg.message.packet {
            self.note_layer(packet);
        }
        self.inbound.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inbound.pop_front()
    }

    fn handle_write(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if !self.layers.is_empty() {
            if let Packet::Rtcp(packets) = &mut msg.message.packet {
                for packet in packets.iter_mut() {
                    if let Some(kept) = self.without_layers(packet.as_ref()) {
                        *packet = kept;
                    }
                }
            }
        }
        self.outbound.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.outbound.pop_front()
    }
}

impl Interceptor for LayerAcks {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        let rid = info.rtp_header_extensions.iter().find(|e| e.uri == RID_URI);
        if let Some(extension) = rid {
            self.rid_id = u8::try_from(extension.id).ok();
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.layers.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::interceptor::{AttributedPacket, RTPHeaderExtension};
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtp::header::Header;
    use rtc::shared::TransportContext;

    use super::*;

    const RID_ID: u8 = 10;
    const LAYER: u32 = 0x1111;
    const PLAIN: u32 = 0x2222;

    fn tagged(packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    fn rtp(ssrc: u32, rid: Option<&'static str>) -> TaggedPacket {
        let mut header = Header {
            version: 2,
            ssrc,
            ..Header::default()
        };
        if let Some(rid) = rid {
            header
                .set_extension(RID_ID, Bytes::from_static(rid.as_bytes()))
                .expect("an extension");
        }
        tagged(Packet::Rtp(rtc::rtp::packet::Packet {
            header,
            payload: Bytes::from_static(&[0; 4]),
        }))
    }

    fn reports_about(ssrcs: &[u32]) -> Vec<ReceptionReport> {
        let report = |ssrc: &u32| ReceptionReport {
            ssrc: *ssrc,
            ..ReceptionReport::default()
        };
        ssrcs.iter().map(report).collect()
    }

    /// The SSRCs each outgoing report acknowledges, after the interceptor.
    fn acknowledged(
        acks: &mut LayerAcks,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
    ) -> Vec<Vec<u32>> {
        acks.handle_write(tagged(Packet::Rtcp(packets)))
            .expect("write");
        let sent = acks.poll_write().expect("passed on");
        let Packet::Rtcp(packets) = sent.message.packet else {
            panic!("not RTCP");
        };
        packets
            .iter()
            .map(|p| {
                let any = p.as_any();
                let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    &rr.reports
                } else {
                    &any.downcast_ref::<SenderReport>()
                        .expect("a report")
                        .reports
                };
                blocks.iter().map(|b| b.ssrc).collect()
            })
            .collect()
    }

    #[test]
    fn streams_that_name_a_rid_are_never_acknowledged() {
        let mut acks = LayerAcks::default();
        acks.bind_remote_stream(&StreamInfo {
            ssrc: LAYER,
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: RID_URI.to_owned(),
                id: u16::from(RID_ID),
            }],
            ..StreamInfo::default()
        });
        for packet in [rtp(LAYER, Some("h")), rtp(PLAIN, None)] {
            acks.handle_read(packet).expect("read");
            assert!(acks.poll_read().is_some(), "every packet goes on");
        }
        let rr = ReceiverReport {
            ssrc: 1,
            reports: reports_about(&[LAYER, PLAIN]),
            ..ReceiverReport::default()
        };
        let sr = SenderReport {
            ssrc: 1,
            reports: reports_about(&[PLAIN, LAYER]),
            ..SenderReport::default()
        };
        let got = acknowledged(&mut acks, vec![Box::new(rr), Box::new(sr)]);
        assert_eq!(got, [[PLAIN], [PLAIN]]);

        // Once the stream is gone, its SSRC is no layer any more.
        acks.unbind_remote_stream(&StreamInfo {
            ssrc: LAYER,
            ..StreamInfo::default()
        });
        let rr = ReceiverReport {
            ssrc: 1,
            reports: reports_about(&[LAYER]),
            ..ReceiverReport::default()
        };
        assert_eq!(acknowledged(&mut acks, vec![Box::new(rr)]), [[LAYER]]);
    }

    #[test]
    fn without_a_negotiated_rid_nothing_is_held_back() {
        let mut acks = LayerAcks::default();
        acks.handle_read(rtp(LAYER, Some("h"))).expect("read");
        let rr = ReceiverReport {
            ssrc: 1,
            reports: reports_about(&[LAYER]),
            ..ReceiverReport::default()
        };
        assert_eq!(acknowledged(&mut acks, vec![Box::new(rr)]), [[LAYER]]);
    }
}

//! Offer/answer and trickle ICE for a participant's peer connection.
//!
//! Each step runs with the actor's mailbox held, so steps never interleave. The
//! server offers only when subscriptions changed and no offer of its own awaits an
//! answer; a client offer that arrives while one does is refused as glare.

use actix::prelude::*;
use rtc::rtp_transceiver::RTCRtpSenderId;
use tracing::debug;
use webrtc::peer_connection::{PeerConnection, RTCIceCandidateInit, RTCSessionDescription};

use super::Participant;
use crate::signal::protocol::{ErrorCode, IceCandidate, ServerMessage};

impl Participant {
    pub(super) fn on_offer(&mut self, sdp: String, ctx: &mut Context<Self>) {
        if self.offer_outstanding {
            let message = "a server offer is outstanding: answer it, then offer again";
            return self.send_error(ErrorCode::NegotiationGlare, message, "offer");
        }
        let Some(pc) = self.pc.clone() else { return };
        let fut = async move {
            let offer = RTCSessionDescription::offer(sdp)?;
            pc.set_remote_description(offer).await?;
            let answer = pc.create_answer(None).await?;
            pc.set_local_description(answer.clone()).await?;
            Ok::<_, webrtc::error::Error>(answer.sdp)
        };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(sdp) => {
                act.send(ServerMessage::Answer { sdp });
                act.maybe_offer(ctx);
            }
            Err(e) => act.send_error(ErrorCode::BadSdp, format!("offer refused: {e}"), "offer"),
        }));
    }

    pub(super) fn on_answer(&mut self, sdp: String, ctx: &mut Context<Self>) {
        if !self.offer_outstanding {
            return self.send_error(
                ErrorCode::NoPendingOffer,
                "no server offer to answer",
                "answer",
            );
        }
        let Some(pc) = self.pc.clone() else { return };
        let fut = async move {
            let answer = RTCSessionDescription::answer(sdp)?;
            pc.set_remote_description(answer).await
        };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => {
                act.offer_outstanding = false;
                act.mark_answered();
                act.activate_subscriptions(ctx);
                act.maybe_offer(ctx);
            }
            // The offer stays outstanding: the client may still send a usable answer.
            Err(e) => act.send_error(ErrorCode::BadSdp, format!("answer refused: {e}"), "answer"),
        }));
    }

    pub(super) fn on_candidate(&mut self, candidate: IceCandidate, ctx: &mut Context<Self>) {
        // An empty candidate marks the end of the client's gathering.
        if candidate.candidate.trim().is_empty() {
            return;
        }
        let Some(pc) = self.pc.clone() else { return };
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            ..Default::default()
        };
        let fut = async move { pc.add_ice_candidate(init).await };
        ctx.wait(fut.into_actor(self).map(|res, act, _ctx| {
            if let Err(e) = res {
                act.send_error(
                    ErrorCode::BadCandidate,
                    format!("candidate refused: {e}"),
                    "candidate",
                );
            }
        }));
    }

    /// Sends a server offer if subscriptions changed and none is outstanding.
    pub(super) fn maybe_offer(&mut self, ctx: &mut Context<Self>) {
        if !self.renegotiate || self.offer_outstanding {
            return;
        }
        let Some(pc) = self.pc.clone() else { return };
        self.renegotiate = false;
        self.offer_outstanding = true;
        let fut = async move {
            let offer = pc.create_offer(None).await?;
            pc.set_local_description(offer.clone()).await?;
            let senders = offered_senders(&*pc).await;
            Ok::<_, webrtc::error::Error>((offer.sdp, senders))
        };
        ctx.wait(fut.into_actor(self).map(|res, act, _ctx| match res {
            Ok((sdp, senders)) => {
                act.mark_offered(&senders);
                act.send(ServerMessage::Offer { sdp });
            }
            Err(e) => {
                debug!(participant = %act.id, error = %e, "server offer failed");
                act.offer_outstanding = false;
                // The changes are still unoffered; the next trigger tries again.
                act.renegotiate = true;
                act.send_unprompted_error(ErrorCode::Internal, "renegotiation failed");
            }
        }));
    }
}

/// Senders whose transceivers have a mid, i.e. appear in the local description.
async fn offered_senders(pc: &dyn PeerConnection) -> Vec<RTCRtpSenderId> {
    let mut senders = Vec::new();
    for transceiver in pc.get_transceivers().await {
        let has_mid = transceiver.mid().await.ok().flatten().is_some();
        if let (true, Ok(Some(sender))) = (has_mid, transceiver.sender().await) {
            senders.push(sender.id());
        }
    }
    senders
}

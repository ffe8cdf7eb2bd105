//! What the forwarder needs to know about codecs: the kind of media a track carries, which
//! video codec it uses, and whether an RTP payload starts a keyframe.
//!
//! Owns: payload inspection only; nothing here keeps state.
//!
//! Invariant: every parser reads the payload through bounds-checked slice access, so any byte
//! string (empty, truncated, garbage) yields an answer and never a panic. Whatever cannot be
//! parsed is "not a keyframe": a missed keyframe only delays a subscriber, while a false one
//! would hand its decoder a frame it cannot decode.
//!
//! Loop: none. The forwarder calls [`is_keyframe`] once per incoming video packet.

/// The kind of media a track carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    /// Every packet decodes on its own: subscribers can join at any packet.
    Audio,
    /// Frames depend on earlier ones: subscribers must start at a keyframe.
    Video,
}

/// The video codecs whose keyframes the forwarder can recognise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8, packetised per RFC 7741.
    Vp8,
    /// H.264, packetised per RFC 6184.
    H264,
    /// Anything else (and audio): keyframes are not recognised.
    Other,
}

impl VideoCodec {
    /// The codec named by an SDP / WebRTC MIME type such as `video/VP8`, case-insensitive.
    pub fn from_mime(mime: &str) -> VideoCodec {
        let mime = mime.trim();
        if mime.eq_ignore_ascii_case("video/vp8") {
            VideoCodec::Vp8
        } else if mime.eq_ignore_ascii_case("video/h264") {
            VideoCodec::H264
        } else {
            VideoCodec::Other
        }
    }
}

/// Whether this RTP payload starts a keyframe. Never panics; garbage → false.
pub fn is_keyframe(codec: VideoCodec, payload: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => vp8_is_keyframe(payload),
        VideoCodec::H264 => h264_is_keyframe(payload),
        VideoCodec::Other => false,
    }
}

/// VP8 payload descriptor, first octet: extension present.
const VP8_X: u8 = 0x80;
/// VP8 payload descriptor, first octet: start of a VP8 partition.
const VP8_S: u8 = 0x10;
/// VP8 payload descriptor, first octet: partition index.
const VP8_PID: u8 = 0x07;
/// VP8 extension octet: PictureID present.
const VP8_I: u8 = 0x80;
/// VP8 extension octet: TL0PICIDX present.
const VP8_L: u8 = 0x40;
/// VP8 extension octet: TID/Y (T) or KEYIDX (K) present; both share one octet.
const VP8_TK: u8 = 0x30;
/// PictureID octet: the PictureID is 15 bits long (two octets).
const VP8_M: u8 = 0x80;
/// VP8 payload header, first octet: inverse key frame flag (0 = keyframe).
const VP8_P: u8 = 0x01;

fn vp8_is_keyframe(payload: &[u8]) -> bool {
    vp8_header_offset(payload)
        .and_then(|offset| payload.get(offset))
        .is_some_and(|first| first & VP8_P == 0)
}

/// Offset of the VP8 payload header, if this packet starts the first partition of a frame.
fn vp8_header_offset(payload: &[u8]) -> Option<usize> {
    let first = *payload.first()?;
    if first & VP8_S == 0 || first & VP8_PID != 0 {
        return None;
    }
    if first & VP8_X == 0 {
        return Some(1);
    }
    let ext = *payload.get(1)?;
    let mut offset = 2;
    if ext & VP8_I != 0 {
        let picture_id = *payload.get(offset)?;
        offset += if picture_id & VP8_M != 0 { 2 } else { 1 };
    }
    if ext & VP8_L != 0 {
        offset += 1;
    }
    if ext & VP8_TK != 0 {
        offset += 1;
    }
    Some(offset)
}

/// Mask of the NAL unit type in a NAL header octet.
const NAL_TYPE: u8 = 0x1F;
/// Coded slice of an IDR picture.
const NAL_IDR: u8 = 5;
/// Sequence parameter set: encoders send it right before an IDR.
const NAL_SPS: u8 = 7;
/// Single-time aggregation packet: several NAL units, each prefixed by a 16-bit size.
const NAL_STAP_A: u8 = 24;
/// Fragmentation unit: one NAL unit split over several packets.
const NAL_FU_A: u8 = 28;
/// FU header: this fragment starts the NAL unit.
const FU_START: u8 = 0x80;

fn is_key_nal(nal_type: u8) -> bool {
    nal_type == NAL_IDR || nal_type == NAL_SPS
}

fn h264_is_keyframe(payload: &[u8]) -> bool {
    let Some((&header, rest)) = payload.split_first() else {
        return false;
    };
    match header & NAL_TYPE {
        NAL_STAP_A => stap_a_has_key_nal(rest),
        NAL_FU_A => rest
            .first()
            .is_some_and(|fu| fu & FU_START != 0 && is_key_nal(fu & NAL_TYPE)),
        nal_type => is_key_nal(nal_type),
    }
}

/// Walks the size-prefixed NAL units of a STAP-A; a truncated unit ends the walk.
fn stap_a_has_key_nal(mut units: &[u8]) -> bool {
    while let [hi, lo, tail @ ..] = units {
        let size = usize::from(u16::from_be_bytes([*hi, *lo]));
        let (Some(unit), Some(next)) = (tail.get(..size), tail.get(size..)) else {
            return false;
        };
        if unit.first().is_some_and(|h| is_key_nal(h & NAL_TYPE)) {
            return true;
        }
        units = next;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X=1 S=1 PID=0; I with a 15-bit PictureID; then a VP8 keyframe header with start code.
    const VP8_KEY_EXT: &[u8] = &[
        0x90, 0x80, 0x81, 0x23, 0xb0, 0x2c, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
    ];
    /// Same descriptor, interframe header (P=1).
    const VP8_DELTA_EXT: &[u8] = &[0x90, 0x80, 0x81, 0x24, 0x31, 0x12, 0x00, 0x44, 0x55];
    /// No extension: S=1 PID=0, keyframe header.
    const VP8_KEY_PLAIN: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01];
    /// No extension: S=1 PID=0, interframe header.
    const VP8_DELTA_PLAIN: &[u8] = &[0x10, 0x51, 0x02, 0x00, 0x11];
    /// Every extension field present: I (7-bit), L, T and K.
    const VP8_KEY_ALL_EXT: &[u8] = &[0x90, 0xf0, 0x05, 0x07, 0x40, 0x10, 0x02, 0x00, 0x9d];

    #[test]
    fn vp8_keyframes_and_interframes() {
        assert!(is_keyframe(VideoCodec::Vp8, VP8_KEY_EXT));
        assert!(is_keyframe(VideoCodec::Vp8, VP8_KEY_PLAIN));
        assert!(is_keyframe(VideoCodec::Vp8, VP8_KEY_ALL_EXT));
        assert!(!is_keyframe(VideoCodec::Vp8, VP8_DELTA_EXT));
        assert!(!is_keyframe(VideoCodec::Vp8, VP8_DELTA_PLAIN));
    }

    #[test]
    fn vp8_continuation_packets_are_not_keyframe_starts() {
        let mut middle = VP8_KEY_EXT.to_vec();
        middle[0] &= !VP8_S;
        assert!(!is_keyframe(VideoCodec::Vp8, &middle));
        let mut other_partition = VP8_KEY_PLAIN.to_vec();
        other_partition[0] |= 0x01;
        assert!(!is_keyframe(VideoCodec::Vp8, &other_partition));
    }

    #[test]
    fn vp8_seven_bit_picture_id() {
        let payload = [0x90, 0x80, 0x05, 0x30, 0x01];
        assert!(is_keyframe(VideoCodec::Vp8, &payload));
        let payload = [0x90, 0x80, 0x05, 0x31, 0x01];
        assert!(!is_keyframe(VideoCodec::Vp8, &payload));
    }

    #[test]
    fn vp8_truncated_never_panics_and_never_claims_keyframe_too_early() {
        for payload in [VP8_KEY_EXT, VP8_KEY_PLAIN, VP8_KEY_ALL_EXT, VP8_DELTA_EXT] {
            let offset = vp8_header_offset(payload).unwrap();
            for len in 0..=payload.len() {
                let got = is_keyframe(VideoCodec::Vp8, &payload[..len]);
                assert!(!got || len > offset, "len {len} claimed a keyframe");
            }
        }
    }

    /// SPS, PPS and IDR as single NAL units (F=0, NRI=3).
    const H264_SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1f, 0x8c];
    const H264_IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00];
    const H264_NON_IDR: &[u8] = &[0x41, 0x9a, 0x02];
    const H264_PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn stap_a(units: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0x78];
        for unit in units {
            out.extend_from_slice(&(unit.len() as u16).to_be_bytes());
            out.extend_from_slice(unit);
        }
        out
    }

    #[test]
    fn h264_single_nal_units() {
        assert!(is_keyframe(VideoCodec::H264, H264_SPS));
        assert!(is_keyframe(VideoCodec::H264, H264_IDR));
        assert!(!is_keyframe(VideoCodec::H264, H264_NON_IDR));
        assert!(!is_keyframe(VideoCodec::H264, H264_PPS));
    }

    #[test]
    fn h264_stap_a() {
        assert!(is_keyframe(
            VideoCodec::H264,
            &stap_a(&[H264_SPS, H264_PPS])
        ));
        assert!(is_keyframe(
            VideoCodec::H264,
            &stap_a(&[H264_PPS, H264_IDR])
        ));
        assert!(!is_keyframe(
            VideoCodec::H264,
            &stap_a(&[H264_PPS, H264_NON_IDR])
        ));
        assert!(!is_keyframe(VideoCodec::H264, &stap_a(&[&[], H264_PPS])));
    }

    #[test]
    fn h264_fu_a_start_and_middle() {
        let start = [0x7c, 0x85, 0x88, 0x84];
        let middle = [0x7c, 0x05, 0x11, 0x22];
        let end = [0x7c, 0x45, 0x11];
        let non_idr_start = [0x5c, 0x81, 0x9a];
        assert!(is_keyframe(VideoCodec::H264, &start));
        assert!(!is_keyframe(VideoCodec::H264, &middle));
        assert!(!is_keyframe(VideoCodec::H264, &end));
        assert!(!is_keyframe(VideoCodec::H264, &non_idr_start));
    }

    #[test]
    fn h264_truncated_never_panics() {
        let stap = stap_a(&[H264_PPS, H264_IDR]);
        for len in 0..=stap.len() {
            let got = is_keyframe(VideoCodec::H264, &stap[..len]);
            assert_eq!(got, len == stap.len(), "len {len}");
        }
        let fu = [0x7c, 0x85];
        for len in 0..=fu.len() {
            assert_eq!(is_keyframe(VideoCodec::H264, &fu[..len]), len == 2);
        }
    }

    #[test]
    fn stap_a_with_oversized_length_is_not_a_keyframe() {
        let payload = [0x78, 0xff, 0xff, 0x65, 0x00];
        assert!(!is_keyframe(VideoCodec::H264, &payload));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u32;
        for len in 0..64 {
            for _ in 0..64 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (state >> 24) as u8
                    })
                    .collect();
                for codec in [VideoCodec::Vp8, VideoCodec::H264, VideoCodec::Other] {
                    let _ = is_keyframe(codec, &bytes);
                }
            }
        }
    }

    #[test]
    fn other_codec_is_never_a_keyframe() {
        assert!(!is_keyframe(VideoCodec::Other, VP8_KEY_PLAIN));
        assert!(!is_keyframe(VideoCodec::Other, H264_IDR));
    }

    #[test]
    fn mime_types() {
        assert_eq!(VideoCodec::from_mime("video/VP8"), VideoCodec::Vp8);
        assert_eq!(VideoCodec::from_mime("VIDEO/vp8"), VideoCodec::Vp8);
        assert_eq!(VideoCodec::from_mime("video/H264"), VideoCodec::H264);
        assert_eq!(VideoCodec::from_mime("video/h264"), VideoCodec::H264);
        assert_eq!(VideoCodec::from_mime("video/VP9"), VideoCodec::Other);
        assert_eq!(VideoCodec::from_mime("audio/opus"), VideoCodec::Other);
        assert_eq!(VideoCodec::from_mime(""), VideoCodec::Other);
    }
}

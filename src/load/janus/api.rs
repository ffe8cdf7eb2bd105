//! The Janus API and VideoRoom requests the load generator sends, and the parts of
//! the replies and events it reads. Pure functions of JSON values.
//!
//! A request to a plugin is a `message` on a handle whose `body` is the plugin's
//! request; an SDP travels beside it as `jsep`. Replies come as `success` (with the
//! plugin's answer under `plugindata.data` for synchronous requests) or as the
//! plugin's `event`; failures as `error` or as an `error_code` in the plugin's data.

use serde_json::{json, Value};

use super::JanusError;

/// The VideoRoom's "room already exists": another participant created it first.
pub const ROOM_EXISTS: i64 = 427;

/// The numeric room id Janus uses for a room name: a stable FNV-1a hash, kept within
/// the 53 bits JavaScript clients can represent.
pub fn room_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash & ((1 << 52) - 1)) + 1
}

pub fn create_session() -> Value {
    json!({"janus": "create"})
}

pub fn attach(session: u64) -> Value {
    json!({"janus": "attach", "session_id": session, "plugin": "janus.plugin.videoroom"})
}

pub fn destroy(session: u64) -> Value {
    json!({"janus": "destroy", "session_id": session})
}

/// A VideoRoom request on `handle`, with an SDP when `jsep` is given.
pub fn message(session: u64, handle: u64, body: Value, jsep: Option<(&str, &str)>) -> Value {
    let mut message = json!({
        "janus": "message",
        "session_id": session,
        "handle_id": handle,
        "body": body,
    });
    if let Some((kind, sdp)) = jsep {
        message["jsep"] = json!({"type": kind, "sdp": sdp});
    }
    message
}

/// A local ICE candidate for the connection of `handle`.
pub fn trickle(session: u64, handle: u64, candidate: &str, mid: Option<&str>) -> Value {
    let candidate = match mid {
        Some(mid) => json!({"candidate": candidate, "sdpMid": mid}),
        None => json!({"candidate": candidate, "sdpMLineIndex": 0}),
    };
    json!({
        "janus": "trickle",
        "session_id": session,
        "handle_id": handle,
        "candidate": candidate,
    })
}

/// A room with the codecs relais forwards and room for `publishers` senders.
pub fn create_room(room: u64, publishers: usize) -> Value {
    json!({
        "request": "create",
        "room": room,
        "publishers": publishers,
        "audiocodec": "opus",
        "videocodec": "vp8",
        "notify_joining": false,
    })
}

/// Every participant joins as a publisher: only publishers hear of new feeds.
pub fn join_publisher(room: u64, display: &str) -> Value {
    json!({"request": "join", "ptype": "publisher", "room": room, "display": display})
}

pub fn join_subscriber(room: u64, feeds: &[u64]) -> Value {
    json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams(feeds)})
}

pub fn subscribe_more(feeds: &[u64]) -> Value {
    json!({"request": "update", "subscribe": streams(feeds)})
}

fn streams(feeds: &[u64]) -> Value {
    feeds.iter().map(|feed| json!({"feed": feed})).collect()
}

/// The reply as is, or the error it carries.
pub fn check(reply: Value) -> Result<Value, JanusError> {
    if reply["janus"] == "error" {
        return Err(JanusError::Janus {
            code: reply["error"]["code"].as_i64().unwrap_or(0),
            reason: reply["error"]["reason"].as_str().unwrap_or("").to_owned(),
        });
    }
    let data = plugin_data(&reply);
    if let Some(code) = data["error_code"].as_i64() {
        return Err(JanusError::Janus {
            code,
            reason: data["error"].as_str().unwrap_or("").to_owned(),
        });
    }
    Ok(reply)
}

/// The id in a `success` reply to `create` or `attach`.
pub fn created_id(reply: &Value) -> Result<u64, JanusError> {
    reply["data"]["id"]
        .as_u64()
        .ok_or_else(|| JanusError::Protocol(format!("no id in {reply}")))
}

/// What the plugin said, in a reply or an event.
pub fn plugin_data(frame: &Value) -> &Value {
    &frame["plugindata"]["data"]
}

/// The SDP of a reply or event, if it carries one of type `kind`.
pub fn jsep<'a>(frame: &'a Value, kind: &str) -> Option<&'a str> {
    let jsep = &frame["jsep"];
    (jsep["type"] == kind)
        .then(|| jsep["sdp"].as_str())
        .flatten()
}

/// Feeds that publish media, from a `joined` reply or a publishers event.
pub fn publishing_feeds(data: &Value) -> Vec<u64> {
    let Some(publishers) = data["publishers"].as_array() else {
        return Vec::new();
    };
    let publishing = |p: &&Value| p["streams"].as_array().is_none_or(|s| !s.is_empty());
    let ids = publishers.iter().filter(publishing);
    ids.filter_map(|p| p["id"].as_u64()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_stable_distinct_and_safe_for_javascript() {
        assert_eq!(room_id("load-a-0"), room_id("load-a-0"));
        assert_ne!(room_id("load-a-0"), room_id("load-a-1"));
        for name in ["", "x", "load-abcdef-39"] {
            let id = room_id(name);
            assert!(id > 0 && id <= 1 << 52, "{name}: {id}");
        }
    }

    #[test]
    fn errors_come_from_janus_or_from_the_plugin() {
        let janus = json!({"janus": "error", "error": {"code": 458, "reason": "no session"}});
        assert!(matches!(
            check(janus),
            Err(JanusError::Janus { code: 458, .. })
        ));
        let plugin = json!({"janus": "success", "plugindata": {"data": {
            "videoroom": "event", "error_code": 427, "error": "exists"}}});
        assert!(matches!(
            check(plugin),
            Err(JanusError::Janus {
                code: ROOM_EXISTS,
                ..
            })
        ));
        let ok = json!({"janus": "success", "data": {"id": 7}});
        assert_eq!(created_id(&check(ok).unwrap()).unwrap(), 7);
    }

    #[test]
    fn feeds_that_publish_and_their_sdp_are_found() {
        let event = json!({
            "janus": "event",
            "plugindata": {"data": {"videoroom": "event", "publishers": [
                {"id": 11, "streams": [{"type": "video", "mid": "0"}]},
                {"id": 12, "streams": []},
                {"id": 13},
            ]}},
            "jsep": {"type": "offer", "sdp": "v=0"},
        });
        assert_eq!(publishing_feeds(plugin_data(&event)), [11, 13]);
        assert_eq!(jsep(&event, "offer"), Some("v=0"));
        assert_eq!(jsep(&event, "answer"), None);
        assert!(publishing_feeds(&json!({})).is_empty());
    }

    #[test]
    fn requests_carry_session_handle_and_sdp() {
        let body = join_subscriber(5, &[1, 2]);
        assert_eq!(body["streams"], json!([{"feed": 1}, {"feed": 2}]));
        let m = message(1, 2, body, Some(("answer", "v=0")));
        assert_eq!(
            (m["session_id"].as_u64(), m["handle_id"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(m["jsep"]["type"], "answer");
        let t = trickle(1, 2, "candidate:1 1 udp 1 127.0.0.1 5000 typ host", None);
        assert_eq!(t["candidate"]["sdpMLineIndex"], 0);
    }
}

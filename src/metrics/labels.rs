//! The label values relais exports: closed sets, so every series can be created up front.
//!
//! Each enum lists every value of one label. The families are pre-initialised with all of
//! them, so a scrape shows every series at zero before anything happened, and rates and
//! alerts see a series from the node's first scrape on. No label ever carries a room,
//! participant, track or address.

/// Generates a label enum with its Prometheus spelling and the list of all its values.
macro_rules! label_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value as it appears in a scrape.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }
    };
}

label_enum! {
    /// `state` of `relais_node_state`: whether the node takes joins.
    NodeState {
        /// Takes joins and serves its rooms.
        Serving => "serving",
        /// Shutting down: serves its rooms, takes no joins.
        Draining => "draining",
        /// Lost its claim to its rooms (its lease ended): must not forward for them.
        Fenced => "fenced",
    }
}

label_enum! {
    /// `role` of `relais_rooms`: how this node takes part in a room.
    RoomRole {
        /// This node owns the room: membership and placement decisions are its.
        Owner => "owner",
        /// Another node owns the room; this node serves some of its participants.
        Shard => "shard",
    }
}

label_enum! {
    /// `result` of `relais_joins_total`: how one attempt to join ended.
    JoinResult {
        /// Media connected (DTLS up) after the room accepted the join.
        Success => "success",
        /// The access token was missing, invalid, expired or for another room.
        Unauthorized => "unauthorized",
        /// The request named no room or a malformed one.
        BadRequest => "bad_request",
        /// The node was not taking joins (starting or draining).
        NotReady => "not_ready",
        /// The room lives on another node: the client was sent there.
        Redirected => "redirected",
        /// The room had no free seat.
        RoomFull => "room_full",
        /// The cluster could not place the room (etcd unreachable, node fenced, no node
        /// available, or a stale epoch).
        Unplaced => "unplaced",
        /// The session ended after the room accepted it but before media connected.
        Abandoned => "abandoned",
        /// The node failed: the room could not be reached or no peer connection was built.
        Error => "error",
    }
}

label_enum! {
    /// `direction` of the media families: into this node or out of it.
    Direction {
        /// Received by this node: published tracks (up-tracks), RTP from publishers.
        In => "in",
        /// Sent by this node: subscriptions (down-tracks), RTP to subscribers.
        Out => "out",
    }
}

label_enum! {
    /// `kind` of the media families.
    Kind {
        Audio => "audio",
        Video => "video",
    }
}

label_enum! {
    /// `path` of the RTP families: whom the packets come from or go to.
    Path {
        /// A participant's peer connection.
        Client => "client",
        /// A cascade: a media link to another relais node.
        Cascade => "cascade",
    }
}

label_enum! {
    /// `type` of `relais_keyframe_requests_total`.
    KeyframeRequest {
        /// Picture loss indication.
        Pli => "pli",
        /// Full intra request.
        Fir => "fir",
    }
}

label_enum! {
    /// `state` of `relais_cascade_links`.
    LinkState {
        /// Being set up (signaling or ICE/DTLS in progress).
        Connecting => "connecting",
        /// Carrying media.
        Up => "up",
        /// Lost; waiting to reconnect or to be removed.
        Down => "down",
    }
}

label_enum! {
    /// `operation` of `relais_etcd_request_duration_seconds`.
    EtcdOperation {
        Get => "get",
        Put => "put",
        Delete => "delete",
        /// A compare-and-swap transaction (claiming or handing over a room).
        Txn => "txn",
        LeaseGrant => "lease_grant",
        LeaseKeepalive => "lease_keepalive",
        LeaseRevoke => "lease_revoke",
        /// Opening a watch.
        Watch => "watch",
    }
}

label_enum! {
    /// `reason` of `relais_room_ownership_changes_total`, seen from this node.
    OwnershipChange {
        /// This node took a room: created its owner key, or reclaimed it after a lost lease.
        Acquired => "acquired",
        /// This node gave a room up (it closed, or the node drains).
        Released => "released",
        /// This node lost a room it owned: another node owns it now.
        Lost => "lost",
    }
}

label_enum! {
    /// `kind` of `relais_fencing_rejections_total`: what was refused, and why.
    Fencing {
        /// A request, message or etcd write carrying an epoch older than the room's.
        StaleEpoch => "stale_epoch",
        /// A join refused because this node is fenced (it cannot renew its lease).
        FencedNode => "fenced_node",
    }
}

label_enum! {
    /// `task` of `relais_tasks`: the kinds of long-lived tasks relais spawns.
    Task {
        /// Reads a published track and drives its forwarder.
        UpTrack => "up_track",
        /// Turns a subscriber's PLI/FIR into keyframe requests.
        DownTrackFeedback => "down_track_feedback",
    }
}

impl From<crate::media::codec::MediaKind> for Kind {
    fn from(kind: crate::media::codec::MediaKind) -> Self {
        match kind {
            crate::media::codec::MediaKind::Audio => Kind::Audio,
            crate::media::codec::MediaKind::Video => Kind::Video,
        }
    }
}

//! The room registry: the one place on a node that maps room names to room actors.
//!
//! Rooms are opened on the first join and report back when they close; the
//! registry forgets a room only if the closing actor is the one it knows, so a
//! room reopened under the same name is never dropped by its predecessor's exit.
//!
//! The registry is also where ownership ends: when a room closes, the registry
//! releases it through the placement and refuses to reopen it until the release
//! is done. A join admitted just before the close asks the placement again and
//! gets a fresh epoch, instead of landing in a room nobody owns any more.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use actix::prelude::*;

use crate::cascade::Cascade;
use crate::cluster::{Placement, PlacementEvent, RoomSummary};
use crate::config::RoomConfig;
use crate::ids::RoomName;
use crate::room::messages::*;
use crate::room::room::{Room, RoomSettings};
use crate::signal::protocol::LeaveReason;

struct OpenRoomEntry {
    room: Addr<Room>,
    summary: RoomSummary,
    /// Another node owns the room now: close it without releasing anything.
    lost: bool,
}

pub struct RoomRegistry {
    rooms: HashMap<RoomName, OpenRoomEntry>,
    /// Rooms closed here whose ownership is being released.
    releasing: HashSet<RoomName>,
    placement: Arc<dyn Placement>,
    cascade: Option<Arc<Cascade>>,
    /// Limits and policies every room opens with.
    config: RoomConfig,
}

/// The release of a room finished; it may be opened again.
#[derive(Message)]
#[rtype(result = "()")]
struct Released {
    name: RoomName,
}

impl RoomRegistry {
    pub fn new(
        placement: Arc<dyn Placement>,
        cascade: Option<Arc<Cascade>>,
        config: RoomConfig,
    ) -> Self {
        Self {
            rooms: HashMap::new(),
            releasing: HashSet::new(),
            placement,
            cascade,
            config,
        }
    }

    fn settings(&self, open: &OpenRoom, registry: Addr<Self>) -> RoomSettings {
        RoomSettings {
            name: open.name.clone(),
            epoch: open.epoch,
            owner: open.owner,
            cascade: self.cascade.clone(),
            registry,
            placement: self.placement.clone(),
            gate: self.placement.gate(),
            config: self.config.clone(),
        }
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;
}

impl Handler<OpenRoom> for RoomRegistry {
    type Result = MessageResult<OpenRoom>;

    fn handle(&mut self, msg: OpenRoom, ctx: &mut Self::Context) -> Self::Result {
        if let Some(entry) = self.rooms.get(&msg.name).filter(|e| e.room.connected()) {
            return MessageResult(Ok(entry.room.clone()));
        }
        if self.releasing.contains(&msg.name) {
            return MessageResult(Err(OpenRefused::Releasing));
        }
        let settings = self.settings(&msg, ctx.address());
        let room = Room::new(settings).start();
        let entry = OpenRoomEntry {
            room: room.clone(),
            summary: RoomSummary::default(),
            lost: false,
        };
        self.rooms.insert(msg.name, entry);
        MessageResult(Ok(room))
    }
}

impl Handler<RoomClosed> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomClosed, ctx: &mut Self::Context) {
        if self.rooms.get(&msg.name).map(|e| &e.room) != Some(&msg.room) {
            return;
        }
        let Some(entry) = self.rooms.remove(&msg.name) else {
            return;
        };
        self.releasing.insert(msg.name.clone());
        let placement = self.placement.clone();
        let registry = ctx.address();
        // A room lost to another node has nothing to release, but its shard
        // record goes all the same.
        let release = msg.owner && !entry.lost;
        actix::spawn(async move {
            if release {
                placement.release(&msg.name, msg.epoch).await;
            }
            placement.leave_shard(&msg.name).await;
            registry.do_send(Released { name: msg.name });
        });
    }
}

impl Handler<Released> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: Released, _ctx: &mut Self::Context) {
        self.releasing.remove(&msg.name);
    }
}

impl Handler<RoomChanged> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _ctx: &mut Self::Context) {
        if let Some(entry) = self.rooms.get_mut(&msg.name) {
            entry.summary = msg.summary;
        }
    }
}

impl Handler<PlacementNotice> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: PlacementNotice, _ctx: &mut Self::Context) {
        match msg.event {
            PlacementEvent::RoomLost { room } => {
                if let Some(entry) = self.rooms.get_mut(&room) {
                    entry.lost = true;
                    entry.room.do_send(CloseAll {
                        reason: LeaveReason::Migrate,
                    });
                }
            }
            PlacementEvent::RoomEpoch { room, epoch } => {
                if let Some(entry) = self.rooms.get(&room) {
                    entry.room.do_send(SetEpoch { epoch });
                }
            }
        }
    }
}

impl Handler<CascadeNotice> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: CascadeNotice, _ctx: &mut Self::Context) {
        match &msg {
            CascadeNotice::Up { .. } | CascadeNotice::Down { .. } => {
                for entry in self.rooms.values() {
                    entry.room.do_send(msg.clone());
                }
            }
            CascadeNotice::Control { message, .. } => {
                let room = message.room().and_then(|r| RoomName::parse(r).ok());
                if let Some(entry) = room.and_then(|r| self.rooms.get(&r)) {
                    entry.room.do_send(msg);
                }
            }
        }
    }
}

impl Handler<LookupRoom> for RoomRegistry {
    type Result = Option<Addr<Room>>;

    fn handle(&mut self, msg: LookupRoom, _ctx: &mut Self::Context) -> Self::Result {
        self.rooms.get(&msg.name).map(|e| e.room.clone())
    }
}

impl Handler<GetRegistryStats> for RoomRegistry {
    type Result = MessageResult<GetRegistryStats>;

    fn handle(&mut self, _msg: GetRegistryStats, _ctx: &mut Self::Context) -> Self::Result {
        let summaries = self.rooms.values().map(|e| &e.summary);
        MessageResult(RegistryStats {
            rooms: self.rooms.len(),
            participants: summaries.clone().map(|s| s.participants).sum(),
            tracks: summaries.map(|s| s.tracks).sum(),
        })
    }
}

impl Handler<CloseAll> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: CloseAll, _ctx: &mut Self::Context) {
        for entry in self.rooms.values() {
            entry.room.do_send(msg);
        }
    }
}

impl Handler<CutIdentity> for RoomRegistry {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: CutIdentity, _ctx: &mut Self::Context) -> Self::Result {
        let room = self.rooms.get(&msg.room).map(|e| e.room.clone());
        Box::pin(async move {
            match room {
                Some(room) => room.send(msg).await.unwrap_or(0),
                None => 0,
            }
        })
    }
}

//! The room registry: the one place on a node that maps room names to room actors.
//!
//! Rooms are opened on the first join and report back when they close; the
//! registry forgets a room only if the closing actor is the one it knows, so a
//! room reopened under the same name is never dropped by its predecessor's exit.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;

use crate::ids::RoomName;
use crate::room::messages::*;
use crate::room::room::Room;

pub struct RoomRegistry {
    rooms: HashMap<RoomName, Addr<Room>>,
    max_participants: usize,
    empty_timeout: Duration,
}

impl RoomRegistry {
    pub fn new(max_participants: usize, empty_timeout: Duration) -> Self {
        Self {
            rooms: HashMap::new(),
            max_participants,
            empty_timeout,
        }
    }
}

impl Actor for RoomRegistry {
    type Context = Context<Self>;
}

impl Handler<OpenRoom> for RoomRegistry {
    type Result = MessageResult<OpenRoom>;

    fn handle(&mut self, msg: OpenRoom, ctx: &mut Self::Context) -> Self::Result {
        if let Some(room) = self.rooms.get(&msg.name).filter(|r| r.connected()) {
            return MessageResult(room.clone());
        }
        let room = Room::new(
            msg.name.clone(),
            ctx.address(),
            self.max_participants,
            self.empty_timeout,
        )
        .start();
        self.rooms.insert(msg.name, room.clone());
        MessageResult(room)
    }
}

impl Handler<RoomClosed> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: RoomClosed, _ctx: &mut Self::Context) {
        if self.rooms.get(&msg.name) == Some(&msg.room) {
            self.rooms.remove(&msg.name);
        }
    }
}

impl Handler<GetRegistryStats> for RoomRegistry {
    type Result = MessageResult<GetRegistryStats>;

    fn handle(&mut self, _msg: GetRegistryStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(RegistryStats {
            rooms: self.rooms.len(),
        })
    }
}

impl Handler<CloseAll> for RoomRegistry {
    type Result = ();

    fn handle(&mut self, msg: CloseAll, _ctx: &mut Self::Context) {
        for room in self.rooms.values() {
            room.do_send(msg);
        }
    }
}

impl Handler<CutIdentity> for RoomRegistry {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: CutIdentity, _ctx: &mut Self::Context) -> Self::Result {
        let room = self.rooms.get(&msg.room).cloned();
        Box::pin(async move {
            match room {
                Some(room) => room.send(msg).await.unwrap_or(0),
                None => 0,
            }
        })
    }
}

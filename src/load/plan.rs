//! Who joins where: the list of simulated participants and when each one starts.
//!
//! Owns the layout of a run (rooms, roles, identities, the node each room goes to,
//! publisher stream numbers) and the ramp schedule. Pure functions of the
//! configuration and of elapsed time.
//!
//! Either rooms or participants go round-robin over the nodes ([`SpreadBy`]):
//! whole rooms on one node each, or every room across all the nodes, with its
//! media cascaded between them. Within a room, publishers join first.

use std::time::Duration;

use super::SpreadBy;

/// What a participant does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends video (and audio) and receives the other publishers, as in a meeting.
    Publisher,
    /// Only receives.
    Subscriber,
}

/// One simulated participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub room: String,
    pub identity: String,
    /// Base URL of the node to join.
    pub url: String,
    pub role: Role,
    /// Number carried in the load header of a publisher's packets.
    pub stream: u32,
    /// Place in the room, publishers first, from 0.
    pub seat: usize,
}

/// The shape of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout<'a> {
    pub urls: &'a [String],
    pub spread: SpreadBy,
    /// Room names are this prefix, a dash and the room's number.
    pub room_prefix: &'a str,
    pub rooms: usize,
    pub publishers: usize,
    pub subscribers: usize,
}

/// Every participant of the run, in launch order: room by room, publishers first.
pub fn participants(layout: &Layout) -> Vec<Planned> {
    let mut planned = Vec::new();
    let mut stream = 0u32;
    for room_index in 0..layout.rooms {
        let room = format!("{}-{room_index}", layout.room_prefix);
        let roles = std::iter::repeat_n(Role::Publisher, layout.publishers)
            .chain(std::iter::repeat_n(Role::Subscriber, layout.subscribers));
        for (i, role) in roles.enumerate() {
            let tag = if role == Role::Publisher {
                "pub"
            } else {
                "sub"
            };
            stream += u32::from(role == Role::Publisher);
            let node = match layout.spread {
                SpreadBy::Rooms => room_index,
                SpreadBy::Participants => room_index + i,
            };
            planned.push(Planned {
                identity: format!("{room}-{tag}-{i}"),
                room: room.clone(),
                url: layout.urls[node % layout.urls.len().max(1)].clone(),
                role,
                stream,
                seat: i,
            });
        }
    }
    planned
}

/// Whether the publisher in `seat` sends audio: every one does, unless only the first
/// `speakers` of each room speak.
pub fn has_voice(seat: usize, speakers: Option<usize>) -> bool {
    speakers.is_none_or(|speakers| seat < speakers)
}

/// How many publishers a participant hears in a room of `publishers`: everyone but
/// itself.
pub fn publishers_heard(role: Role, publishers: usize) -> usize {
    match role {
        Role::Publisher => publishers.saturating_sub(1),
        Role::Subscriber => publishers,
    }
}

/// How many participants of a run receive media at all.
pub fn receivers(planned: &[Planned], publishers: usize) -> usize {
    let hears = |p: &&Planned| publishers_heard(p.role, publishers) > 0;
    planned.iter().filter(hears).count()
}

/// When participant `index` starts, after the run begins, at `per_second` a second.
pub fn launch_offset(index: usize, per_second: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / per_second.max(f64::MIN_POSITIVE))
}

/// How many participants should have started `elapsed` into the run.
pub fn launched_by(elapsed: Duration, per_second: f64, total: usize) -> usize {
    let started = (elapsed.as_secs_f64() * per_second).floor() as usize + 1;
    started.min(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_go_round_robin_with_publishers_first() {
        let urls = vec!["ws://a".to_owned(), "ws://b".to_owned()];
        let layout = Layout {
            urls: &urls,
            spread: SpreadBy::Rooms,
            room_prefix: "load-x",
            rooms: 3,
            publishers: 2,
            subscribers: 1,
        };
        let all = participants(&layout);
        assert_eq!(all.len(), 9);
        let rooms: Vec<(&str, &str)> = all.iter().map(|p| (&*p.room, &*p.url)).collect();
        assert_eq!(rooms[0], ("load-x-0", "ws://a"));
        assert_eq!(rooms[3], ("load-x-1", "ws://b"));
        assert_eq!(rooms[6], ("load-x-2", "ws://a"));

        let roles: Vec<Role> = all[..3].iter().map(|p| p.role).collect();
        assert_eq!(roles, [Role::Publisher, Role::Publisher, Role::Subscriber]);
        assert_eq!(all[2].identity, "load-x-0-sub-2");

        let publishers = all.iter().filter(|p| p.role == Role::Publisher);
        let streams: Vec<u32> = publishers.map(|p| p.stream).collect();
        assert_eq!(
            streams,
            [1, 2, 3, 4, 5, 6],
            "publishers are numbered uniquely"
        );
        assert_eq!(receivers(&all, 2), 9, "publishers hear each other");
        assert_eq!(receivers(&all[..2], 1), 0, "a lone publisher hears nobody");
    }

    #[test]
    fn participants_spread_over_every_node() {
        let urls = vec![
            "ws://a".to_owned(),
            "ws://b".to_owned(),
            "ws://c".to_owned(),
        ];
        let layout = Layout {
            urls: &urls,
            spread: SpreadBy::Participants,
            room_prefix: "load-y",
            rooms: 2,
            publishers: 2,
            subscribers: 2,
        };
        let all = participants(&layout);
        let nodes: Vec<&str> = all.iter().map(|p| &p.url[5..]).collect();
        assert_eq!(nodes, ["a", "b", "c", "a", "b", "c", "a", "b"]);
        assert_eq!(all[4].room, "load-y-1");
    }

    #[test]
    fn the_ramp_starts_one_at_once_then_at_the_rate() {
        assert_eq!(launch_offset(0, 20.0), Duration::ZERO);
        assert_eq!(launch_offset(10, 20.0), Duration::from_millis(500));
        assert_eq!(launched_by(Duration::ZERO, 20.0, 100), 1);
        assert_eq!(launched_by(Duration::from_millis(500), 20.0, 100), 11);
        assert_eq!(launched_by(Duration::from_secs(60), 20.0, 100), 100);
    }
}

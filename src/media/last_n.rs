//! Last-N: in a large room, whose camera video is forwarded to everyone.
//!
//! Owns: the order of the room's camera publishers by how recently they spoke, and
//! the rule that turns it into the set whose video is forwarded.
//!
//! Invariants:
//! - The order holds every camera publisher exactly once: those who spoke, most
//!   recent first, then those who never spoke, in the order their cameras arrived,
//!   so a room where nobody has spoken yet still shows its first cameras.
//!   Participants without a camera take no place.
//! - A room of at most `above` participants (publishing or not), or a limit `n` of
//!   0, forwards everyone ([`LastN::forwarded`] is `None`); above that, exactly the
//!   first `n` of the order.
//! - Speaking moves a participant to the front; silence moves nobody, so the set
//!   changes only when someone outside it speaks.
//!
//! Pinned tracks and screen shares are exceptions the caller makes per subscriber;
//! they are not this struct's business.
//!
//! Loop: [`LastN::sync`] with the camera publishers after a change of tracks or
//! membership, [`LastN::spoke`] after a speaker change, then [`LastN::forwarded`]
//! with the room's size.

use std::collections::BTreeSet;

/// The order of a room's participants and the forwarding rule over it.
#[derive(Clone, Debug)]
pub struct LastN<K> {
    /// How many participants' video is forwarded; 0 forwards everyone.
    n: usize,
    /// Rooms of at most this many participants forward everyone.
    above: usize,
    /// Camera publishers, most recent speaker first.
    order: Vec<K>,
}

impl<K: Clone + Ord> LastN<K> {
    pub fn new(n: usize, above: usize) -> Self {
        LastN {
            n,
            above,
            order: Vec::new(),
        }
    }

    /// The room's camera publishers are now `present`: those gone are dropped,
    /// newcomers join the end. Synced after every change, the end is the order of
    /// arrival; newcomers of one sync are ordered by key, which is stable.
    pub fn sync<'a>(&mut self, present: impl IntoIterator<Item = &'a K>)
    where
        K: 'a,
    {
        let present: BTreeSet<&K> = present.into_iter().collect();
        self.order.retain(|k| present.contains(k));
        let known: BTreeSet<K> = self.order.iter().cloned().collect();
        let newcomers = present.into_iter().filter(|k| !known.contains(*k));
        self.order.extend(newcomers.cloned());
    }

    /// These participants speak now, loudest first: they move to the front, in that
    /// order. Participants not present are ignored.
    pub fn spoke(&mut self, speakers: &[K]) {
        for speaker in speakers.iter().rev() {
            let Some(at) = self.order.iter().position(|k| k == speaker) else {
                continue;
            };
            let key = self.order.remove(at);
            self.order.insert(0, key);
        }
    }

    /// Whose video is forwarded in a room of `room_size` participants: `None` for
    /// everyone.
    pub fn forwarded(&self, room_size: usize) -> Option<BTreeSet<K>> {
        if self.n == 0 || room_size <= self.above {
            return None;
        }
        Some(self.order.iter().take(self.n).cloned().collect())
    }

    /// Camera publishers, most recent speaker first.
    pub fn order(&self) -> &[K] {
        &self.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&'static str]) -> Option<BTreeSet<&'static str>> {
        Some(keys.iter().copied().collect())
    }

    #[test]
    fn small_rooms_and_a_zero_limit_forward_everyone() {
        let mut small = LastN::new(2, 3);
        small.sync(&["a", "b", "c"]);
        assert_eq!(small.forwarded(3), None, "three is not above three");
        assert_eq!(
            small.forwarded(4),
            set(&["a", "b"]),
            "a fourth without a camera"
        );

        let mut unlimited = LastN::new(0, 0);
        unlimited.sync(&["a", "b", "c", "d"]);
        assert_eq!(unlimited.forwarded(9), None);
    }

    #[test]
    fn before_anyone_speaks_the_first_arrivals_are_forwarded() {
        let mut last_n = LastN::new(2, 0);
        last_n.sync(&["a"]);
        last_n.sync(&["a", "b"]);
        last_n.sync(&["a", "b", "c"]);
        assert_eq!(last_n.order(), ["a", "b", "c"]);
        assert_eq!(last_n.forwarded(10), set(&["a", "b"]));
    }

    #[test]
    fn speakers_move_to_the_front_loudest_first_and_silence_moves_nobody() {
        let mut last_n = LastN::new(2, 0);
        last_n.sync(&["a", "b", "c", "d"]);
        last_n.spoke(&["d"]);
        assert_eq!(last_n.order(), ["d", "a", "b", "c"]);
        assert_eq!(last_n.forwarded(10), set(&["a", "d"]));

        last_n.spoke(&["c", "b"]);
        assert_eq!(last_n.order(), ["c", "b", "d", "a"]);
        assert_eq!(last_n.forwarded(10), set(&["b", "c"]));

        last_n.spoke(&[]);
        assert_eq!(
            last_n.order(),
            ["c", "b", "d", "a"],
            "silence changes nothing"
        );
        last_n.spoke(&["c"]);
        assert_eq!(
            last_n.forwarded(10),
            set(&["b", "c"]),
            "a speaker inside stays"
        );
    }

    #[test]
    fn leavers_drop_out_and_newcomers_wait_behind_those_who_spoke() {
        let mut last_n = LastN::new(2, 0);
        last_n.sync(&["a", "b", "c"]);
        last_n.spoke(&["c"]);
        last_n.sync(&["a", "c", "e"]);
        assert_eq!(last_n.order(), ["c", "a", "e"]);
        last_n.sync(&["a", "e"]);
        assert_eq!(last_n.forwarded(10), set(&["a", "e"]));
        last_n.spoke(&["nobody-here"]);
        assert_eq!(last_n.order(), ["a", "e"], "strangers are ignored");
    }
}

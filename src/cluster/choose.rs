//! Where a new room goes: the placement rule, free of I/O.
//!
//! Only nodes that are serving and have reported their load recently are
//! candidates. Nodes in the participant's region are preferred when there are
//! any. Among the candidates, two are drawn at random and the less loaded one
//! wins ("power of two choices"): nearly as balanced as always taking the least
//! loaded node, without every node piling onto the same one when they all decide
//! at the same moment from the same slightly stale reports.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::cluster::{NodeLoad, NodeState};

/// What the rule knows about one node.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub region: String,
    pub state: NodeState,
    pub load: Option<NodeLoad>,
    /// When this node last saw the load report change.
    pub load_seen_at: Option<Instant>,
}

impl Candidate {
    /// A single number to compare nodes by; lower is better.
    fn score(&self) -> f64 {
        let Some(load) = &self.load else {
            return f64::MAX;
        };
        // Participants dominate; CPU breaks ties between similarly sized nodes.
        load.participants as f64 + load.tracks as f64 * 0.5 + load.cpu_ratio * 100.0
    }

    fn eligible(&self, now: Instant, stale_after: Duration) -> bool {
        self.state == NodeState::Serving
            && self
                .load_seen_at
                .is_some_and(|seen| now.saturating_duration_since(seen) <= stale_after)
    }
}

/// Picks the node for a new room, or `None` when no node may take it.
pub fn choose<'a, R: Rng>(
    candidates: &'a [Candidate],
    region: Option<&str>,
    now: Instant,
    stale_after: Duration,
    rng: &mut R,
) -> Option<&'a Candidate> {
    let eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.eligible(now, stale_after))
        .collect();
    let local: Vec<&Candidate> = match region {
        Some(region) => eligible
            .iter()
            .copied()
            .filter(|c| c.region == region)
            .collect(),
        None => Vec::new(),
    };
    let pool = if local.is_empty() { eligible } else { local };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rng.gen_range(0..n);
            let b = (a + rng.gen_range(1..n)) % n;
            let (a, b) = (pool[a], pool[b]);
            Some(if b.score() < a.score() { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const STALE: Duration = Duration::from_secs(6);

    fn node(id: &str, region: &str, participants: u64, now: Instant) -> Candidate {
        Candidate {
            id: id.to_owned(),
            region: region.to_owned(),
            state: NodeState::Serving,
            load: Some(NodeLoad {
                participants,
                ..NodeLoad::default()
            }),
            load_seen_at: Some(now),
        }
    }

    fn pick(candidates: &[Candidate], region: Option<&str>, now: Instant, seed: u64) -> String {
        let mut rng = StdRng::seed_from_u64(seed);
        choose(candidates, region, now, STALE, &mut rng)
            .map(|c| c.id.clone())
            .unwrap_or_default()
    }

    #[test]
    fn prefers_the_participants_region() {
        let now = Instant::now();
        let nodes = [
            node("a", "north", 50, now),
            node("b", "south", 0, now),
            node("c", "north", 40, now),
        ];
        for seed in 0..50 {
            let chosen = pick(&nodes, Some("north"), now, seed);
            assert!(chosen == "a" || chosen == "c", "seed {seed} chose {chosen}");
        }
    }

    #[test]
    fn falls_back_to_any_region_when_its_own_has_no_node() {
        let now = Instant::now();
        let nodes = [node("a", "north", 5, now), node("b", "south", 1, now)];
        assert_eq!(pick(&nodes, Some("west"), now, 1), "b");
    }

    #[test]
    fn of_two_draws_the_less_loaded_wins() {
        let now = Instant::now();
        let nodes = [node("busy", "r", 100, now), node("idle", "r", 1, now)];
        for seed in 0..20 {
            assert_eq!(pick(&nodes, None, now, seed), "idle");
        }
    }

    #[test]
    fn spreads_rooms_over_equal_nodes() {
        let now = Instant::now();
        let nodes: Vec<_> = (0..4)
            .map(|i| node(&format!("n{i}"), "r", 0, now))
            .collect();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0; 4];
        for _ in 0..400 {
            let c = choose(&nodes, None, now, STALE, &mut rng).expect("a node");
            counts[c.id[1..].parse::<usize>().expect("index")] += 1;
        }
        assert!(counts.iter().all(|&n| n > 50), "{counts:?}");
    }

    #[test]
    fn never_picks_a_draining_fenced_or_silent_node() {
        let now = Instant::now();
        let mut draining = node("draining", "r", 0, now);
        draining.state = NodeState::Draining;
        let mut fenced = node("fenced", "r", 0, now);
        fenced.state = NodeState::Fenced;
        let mut silent = node("silent", "r", 0, now);
        silent.load_seen_at = Some(now - Duration::from_secs(60));
        let busy = node("busy", "r", 500, now + Duration::from_secs(1));
        let nodes = [draining, fenced, silent, busy];
        for seed in 0..20 {
            assert_eq!(
                pick(&nodes, Some("r"), now + Duration::from_secs(1), seed),
                "busy"
            );
        }
    }

    #[test]
    fn no_eligible_node_means_no_choice() {
        let now = Instant::now();
        let mut only = node("a", "r", 0, now);
        only.state = NodeState::Draining;
        let mut rng = StdRng::seed_from_u64(0);
        assert!(choose(&[only], None, now, STALE, &mut rng).is_none());
    }
}

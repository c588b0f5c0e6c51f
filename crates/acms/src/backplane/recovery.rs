//! Repairs that wait: a recovery stuck because the notice or the `Resent` that would end it was
//! lost too, and the servers of a dead hub that never come back. Counted on the heartbeat's tick
//! with explicit instants, so a unit test drives them without a clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::HubId;

/// The hubs whose origins the servers here have waited on, tick after tick.
#[derive(Debug, Default)]
pub(crate) struct Stuck {
    ticks: HashMap<HubId, u32>,
}

impl Stuck {
    /// One tick: `waiting` are the hubs whose origins some server here still waits on (their
    /// frames dropped until `Resent`). Returns those waited on for `limit` ticks in a row, to be
    /// asked again; their count starts over.
    pub(crate) fn tick(&mut self, waiting: &HashSet<HubId>, limit: u32) -> Vec<HubId> {
        self.ticks.retain(|hub, _| waiting.contains(hub));
        let mut again = Vec::new();
        for &hub in waiting {
            let ticks = self.ticks.entry(hub).or_insert(0);
            *ticks += 1;
            if *ticks >= limit.max(1) {
                *ticks = 0;
                again.push(hub);
            }
        }
        again
    }
}

/// The hubs counted dead, and since when.
#[derive(Debug, Default)]
pub(crate) struct Dead {
    since: HashMap<HubId, Instant>,
}

impl Dead {
    pub(crate) fn died(&mut self, hub: HubId, at: Instant) {
        self.since.entry(hub).or_insert(at);
    }

    /// `hub` was heard from again: not dead after all.
    pub(crate) fn revived(&mut self, hub: HubId) {
        self.since.remove(&hub);
    }

    /// The hubs dead for longer than `grace` at `now`, forgotten here: the servers still placed
    /// on them did not come back on any hub and leave the cluster.
    pub(crate) fn past_grace(&mut self, now: Instant, grace: Duration) -> Vec<HubId> {
        let gone: Vec<HubId> = self
            .since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > grace)
            .map(|(&hub, _)| hub)
            .collect();
        for hub in &gone {
            self.since.remove(hub);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HubId = HubId(1);
    const B: HubId = HubId(2);

    #[test]
    fn a_hub_waited_on_for_the_limit_is_asked_again_and_the_count_starts_over() {
        let mut stuck = Stuck::default();
        let both = HashSet::from([A, B]);
        assert!(stuck.tick(&both, 3).is_empty());
        assert!(stuck.tick(&HashSet::from([A]), 3).is_empty(), "B is no longer waited on");
        let mut asked = stuck.tick(&both, 3);
        asked.sort();
        assert_eq!(asked, vec![A], "A three ticks in a row; B only one since it stopped");
        assert!(stuck.tick(&both, 3).is_empty());
        assert_eq!(stuck.tick(&both, 3), vec![B]);
        assert_eq!(stuck.tick(&both, 3), vec![A]);
    }

    #[test]
    fn a_dead_hub_is_given_up_after_the_grace_unless_it_comes_back() {
        let mut dead = Dead::default();
        let now = Instant::now();
        dead.died(A, now);
        dead.died(B, now);
        dead.revived(B);
        let grace = Duration::from_secs(5);
        assert!(dead.past_grace(now + Duration::from_secs(4), grace).is_empty());
        assert_eq!(dead.past_grace(now + Duration::from_secs(6), grace), vec![A]);
        assert!(dead.past_grace(now + Duration::from_secs(60), grace).is_empty(), "once");
    }
}

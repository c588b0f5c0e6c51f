//! Which app server a new client should use.
//!
//! A pure choice over the servers as the hub knows them (directory counts, latest load reports,
//! state), so every policy is tested without a socket. The admin API's `GET /api/assign` feeds it.

use acms_protocol::{Load, ServerId};
use serde::Deserialize;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// How the hub picks a server for a new client (`[assign] policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The server with the fewest users online.
    #[default]
    MinUsers,
    /// The server whose latest report shows the least CPU use; servers yet to report come last.
    MinCpu,
    /// Each server in turn, by id.
    RoundRobin,
    /// The server least full for its declared capacity; servers that declare none come last.
    Weighted,
    /// The key (a team or group id) picks one server by rendezvous hashing: stable while the
    /// servers stay, and only the keys of a server that leaves move. Clients who talk to each
    /// other share a server, so the hub relays less.
    Affinity,
}

/// One server as the choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The server.
    pub id: ServerId,
    /// Users the directory lists on it: fresher than its last report.
    pub users: u64,
    /// Its latest load report, if any.
    pub load: Option<Load>,
    /// Connected and taking clients (not away, not draining).
    pub active: bool,
}

impl Candidate {
    /// Full servers and servers not active are never chosen.
    fn can_take(&self) -> bool {
        let full = self
            .load
            .and_then(|load| load.capacity)
            .is_some_and(|capacity| self.users >= u64::from(capacity));
        self.active && !full
    }

    fn capacity(&self) -> Option<u32> {
        self.load.and_then(|load| load.capacity).filter(|&capacity| capacity > 0)
    }
}

/// The server a new client should use under `policy`, or `None` when no server can take one.
/// `key` matters to `affinity` only; `turn` (a counter the caller advances) to `round-robin` only.
pub fn choose(policy: Policy, candidates: &[Candidate], key: &str, turn: u64) -> Option<ServerId> {
    let mut open: Vec<&Candidate> = candidates.iter().filter(|c| c.can_take()).collect();
    // Ties go to the lowest id, whatever order the caller listed the servers in.
    open.sort_by_key(|c| c.id);
    let chosen = match policy {
        Policy::MinUsers => open.into_iter().min_by_key(|c| c.users),
        Policy::MinCpu => open
            .into_iter()
            .min_by_key(|c| c.load.map_or((true, 0), |load| (false, load.cpu_centipercent))),
        Policy::RoundRobin => {
            let len = open.len() as u64;
            (len > 0).then(|| open[(turn % len) as usize])
        }
        Policy::Weighted => open.into_iter().min_by(|a, b| {
            match (a.capacity(), b.capacity()) {
                // users_a / cap_a against users_b / cap_b, without division.
                (Some(ca), Some(cb)) => (u128::from(a.users) * u128::from(cb))
                    .cmp(&(u128::from(b.users) * u128::from(ca))),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.users.cmp(&b.users),
            }
        }),
        Policy::Affinity => open.into_iter().max_by_key(|c| rendezvous(key, c.id)),
    };
    chosen.map(|c| c.id)
}

/// The score of `server` for `key`: the highest-scoring server wins. A stable hash (xxh3), so
/// every hub, and every restart, maps a key the same way.
fn rendezvous(key: &str, server: ServerId) -> u64 {
    xxh3_64_with_seed(key.as_bytes(), u64::from(server.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three reporting servers: 1 busy on CPU with few users, 2 with most users and a large
    /// capacity, 3 in between.
    fn three() -> Vec<Candidate> {
        let server = |id, users, cpu, capacity| Candidate {
            id: ServerId(id),
            users,
            load: Some(Load {
                users: users as u32,
                cpu_centipercent: cpu,
                memory_bytes: 1 << 20,
                msgs_in_per_s: 0,
                msgs_out_per_s: 0,
                capacity: Some(capacity),
            }),
            active: true,
        };
        vec![server(1, 10, 9000, 20), server(2, 50, 500, 1000), server(3, 30, 2000, 40)]
    }

    fn pick(policy: Policy, servers: &[Candidate]) -> Option<u32> {
        choose(policy, servers, "team-a", 0).map(|id| id.0)
    }

    #[test]
    fn min_users_takes_the_fewest_users() {
        assert_eq!(pick(Policy::MinUsers, &three()), Some(1));
    }

    #[test]
    fn min_cpu_takes_the_least_cpu() {
        assert_eq!(pick(Policy::MinCpu, &three()), Some(2));
        let mut servers = three();
        servers[1].load = None;
        assert_eq!(pick(Policy::MinCpu, &servers), Some(3), "a server yet to report comes last");
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let servers = three();
        let turns: Vec<u32> =
            (0..6).map(|turn| choose(Policy::RoundRobin, &servers, "", turn).unwrap().0).collect();
        assert_eq!(turns, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn weighted_takes_the_least_full_for_its_capacity() {
        // Fill: 1 is 10/20, 2 is 50/1000, 3 is 30/40.
        assert_eq!(pick(Policy::Weighted, &three()), Some(2));
        let mut servers = three();
        servers[1].load.as_mut().unwrap().capacity = None;
        assert_eq!(pick(Policy::Weighted, &servers), Some(1), "no declared capacity comes last");
    }

    #[test]
    fn affinity_is_stable_and_ignores_order_and_load() {
        let servers = three();
        let first = pick(Policy::Affinity, &servers).unwrap();
        let mut reordered = servers.clone();
        reordered.reverse();
        reordered[0].users = 999;
        assert_eq!(pick(Policy::Affinity, &reordered), Some(first));
        // Another server leaving does not move the key.
        let fewer: Vec<_> =
            servers.into_iter().filter(|c| c.id.0 == first || c.id.0 == 2).collect();
        assert_eq!(pick(Policy::Affinity, &fewer), Some(first));
    }

    #[test]
    fn affinity_spreads_keys_evenly() {
        let servers: Vec<Candidate> = (1..=4)
            .map(|id| Candidate { id: ServerId(id), users: 0, load: None, active: true })
            .collect();
        let mut counts = [0u32; 4];
        for key in 0..10_000 {
            let id = choose(Policy::Affinity, &servers, &format!("team-{key}"), 0).unwrap();
            counts[id.0 as usize - 1] += 1;
        }
        for count in counts {
            assert!((2250..=2750).contains(&count), "{counts:?} not within 10% of 2500");
        }
    }

    #[test]
    fn full_and_inactive_servers_are_never_chosen() {
        let mut servers = three();
        servers[0].users = 20; // at its capacity of 20
        servers[1].active = false;
        for policy in [
            Policy::MinUsers,
            Policy::MinCpu,
            Policy::RoundRobin,
            Policy::Weighted,
            Policy::Affinity,
        ] {
            for turn in 0..3 {
                assert_eq!(choose(policy, &servers, "k", turn), Some(ServerId(3)), "{policy:?}");
            }
        }
        servers[2].active = false;
        assert_eq!(pick(Policy::MinUsers, &servers), None);
        assert_eq!(pick(Policy::Affinity, &[]), None);
    }
}

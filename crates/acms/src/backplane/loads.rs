//! The app servers' load reports shared between hubs: each hub carries its own servers' latest
//! reports in its heartbeat, and keeps the other hubs' per server, so assignment, drain and the
//! metrics of any hub see every server of the cluster.
//!
//! A heartbeat carries at most [`MAX_REPORTS`] servers, so a hub with many servers never sends a
//! large one: past the cap it reports them in turn, by id, each refreshed every
//! `ceil(servers / MAX_REPORTS)` heartbeats. A report is kept only for a server the directory
//! places on the reporting hub, and forgotten when that hub dies or stops reporting it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use acms_protocol::{Load, ServerId};

use super::HubId;

/// The most servers one heartbeat reports (41 bytes each: about 10 KiB at most).
pub(crate) const MAX_REPORTS: usize = 256;

/// How long a server drained through this hub counts as draining whatever its hub reports: a
/// heartbeat sent before the drain reached its hub must not make it look active again.
const DRAIN_MARK: Duration = Duration::from_secs(5);

/// What a hub reports of one of its app servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReport {
    /// The server.
    pub id: ServerId,
    /// Connected now (not away within its reconnect grace).
    pub connected: bool,
    /// Drained by an operator: it takes no new clients.
    pub draining: bool,
    /// When it registered, in milliseconds since the Unix epoch.
    pub since_ms: u64,
    /// Its latest load report, if it sent one.
    pub load: Option<Load>,
}

impl ServerReport {
    /// Whether assignment may send it a new client (its capacity is checked apart).
    pub fn takes_clients(&self) -> bool {
        self.connected && !self.draining
    }
}

/// This hub's rotation over its own servers, and the other hubs' reports.
#[derive(Debug, Default)]
pub(crate) struct Loads {
    /// Of each other hub, its servers' latest reports.
    by_hub: HashMap<HubId, HashMap<ServerId, ServerReport>>,
    /// Where this hub's next heartbeat starts reporting when it has more than the cap.
    cursor: usize,
    /// Servers of other hubs drained through this hub, with when, until their hub reports them
    /// draining (or [`DRAIN_MARK`] passes).
    drained: HashMap<ServerId, Instant>,
}

impl Loads {
    /// Of this hub's `reports`, those the next heartbeat carries, and how many there are in all.
    pub(crate) fn pick_mine(&mut self, mut reports: Vec<ServerReport>) -> (u32, Vec<ServerReport>) {
        let total = u32::try_from(reports.len()).unwrap_or(u32::MAX);
        if reports.len() <= MAX_REPORTS {
            self.cursor = 0;
            return (total, reports);
        }
        reports.sort_by_key(|report| report.id);
        let start = self.cursor % reports.len();
        reports.rotate_left(start);
        reports.truncate(MAX_REPORTS);
        self.cursor = start + MAX_REPORTS;
        (total, reports)
    }

    /// `hub`'s heartbeat reports `reports` of its `total` servers at `now`; `placed` says whether
    /// the directory places a server on `hub` (only those are kept, so memory follows the
    /// directory whatever a heartbeat claims). A heartbeat with every server replaces what `hub`
    /// reported before; a partial one (past the cap) adds to it.
    pub(crate) fn heard(
        &mut self,
        hub: HubId,
        total: u32,
        reports: Vec<ServerReport>,
        placed: impl Fn(ServerId) -> bool,
        now: Instant,
    ) {
        let complete = reports.len() as u64 >= u64::from(total);
        let kept = self.by_hub.entry(hub).or_default();
        if complete {
            kept.clear();
        }
        kept.retain(|&id, _| placed(id));
        for mut report in reports.into_iter().filter(|report| placed(report.id)) {
            if let Some(&at) = self.drained.get(&report.id) {
                if report.draining || now.saturating_duration_since(at) > DRAIN_MARK {
                    self.drained.remove(&report.id);
                } else {
                    report.draining = true;
                }
            }
            kept.insert(report.id, report);
        }
    }

    /// `hub`'s latest report of `server`.
    pub(crate) fn report(&self, hub: HubId, server: ServerId) -> Option<ServerReport> {
        self.by_hub.get(&hub)?.get(&server).copied()
    }

    /// `server` of `hub` was drained through this hub at `now`: counted draining until its hub's
    /// heartbeats say so.
    pub(crate) fn mark_draining(&mut self, hub: HubId, server: ServerId, now: Instant) {
        // Bounded: one entry per server a hub has reported, each for a few seconds at most.
        self.drained.retain(|_, at| now.saturating_duration_since(*at) <= DRAIN_MARK);
        if let Some(report) = self.by_hub.get_mut(&hub).and_then(|kept| kept.get_mut(&server)) {
            report.draining = true;
            self.drained.insert(server, now);
        }
    }

    /// `hub` died: its reports go with it.
    pub(crate) fn forget(&mut self, hub: HubId) {
        self.by_hub.remove(&hub);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: u32) -> ServerReport {
        ServerReport { id: ServerId(id), connected: true, draining: false, since_ms: 1, load: None }
    }

    #[test]
    fn past_the_cap_every_server_is_reported_in_turn() {
        let mut loads = Loads::default();
        let count = MAX_REPORTS * 2 + 10;
        let mine: Vec<ServerReport> = (0..count as u32).map(report).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let (total, picked) = loads.pick_mine(mine.clone());
            assert_eq!(total as usize, count);
            assert_eq!(picked.len(), MAX_REPORTS);
            seen.extend(picked.iter().map(|report| report.id));
        }
        assert_eq!(seen.len(), count, "three heartbeats report all {count}");
        let (total, picked) = loads.pick_mine(mine[..3].to_vec());
        assert_eq!((total, picked.len()), (3, 3));
    }

    #[test]
    fn only_servers_placed_on_the_hub_are_kept_and_a_dead_hub_takes_its_own() {
        let mut loads = Loads::default();
        let hub = HubId(2);
        let placed = |id: ServerId| id.0 < 10;
        let now = Instant::now();
        loads.heard(hub, 2, vec![report(1), report(50)], placed, now);
        assert!(loads.report(hub, ServerId(1)).is_some());
        assert!(loads.report(hub, ServerId(50)).is_none(), "not the hub's by the directory");
        // A partial heartbeat adds; a complete one replaces.
        loads.heard(hub, 300, vec![report(2)], placed, now);
        assert!(loads.report(hub, ServerId(1)).is_some());
        loads.heard(hub, 1, vec![report(2)], placed, now);
        assert!(loads.report(hub, ServerId(1)).is_none(), "no longer reported");
        loads.forget(hub);
        assert!(loads.report(hub, ServerId(2)).is_none());
    }

    #[test]
    fn a_server_drained_here_stays_draining_until_its_hub_says_so() {
        let mut loads = Loads::default();
        let (hub, server) = (HubId(2), ServerId(2));
        let now = Instant::now();
        let takes = |loads: &Loads| loads.report(hub, server).unwrap().takes_clients();
        loads.heard(hub, 1, vec![report(2)], |_| true, now);
        loads.mark_draining(hub, server, now);
        assert!(!takes(&loads));
        // A heartbeat its hub sent before the drain reached it.
        loads.heard(hub, 1, vec![report(2)], |_| true, now + Duration::from_millis(500));
        assert!(!takes(&loads), "still draining");
        let draining = ServerReport { draining: true, ..report(2) };
        loads.heard(hub, 1, vec![draining], |_| true, now + Duration::from_secs(1));
        // Its hub said so: from now on its reports rule (a server that registers again is active).
        loads.heard(hub, 1, vec![report(2)], |_| true, now + Duration::from_secs(2));
        assert!(takes(&loads));
        // A mark its hub never confirms ends.
        loads.mark_draining(hub, server, now);
        loads.heard(hub, 1, vec![report(2)], |_| true, now + DRAIN_MARK * 2);
        assert!(takes(&loads));
        loads.forget(hub);
        assert!(loads.report(hub, ServerId(2)).is_none());
    }
}

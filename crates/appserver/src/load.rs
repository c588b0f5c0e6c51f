//! Load reports: this process's CPU use and memory (sysinfo) and the link's message rates, sampled
//! every load interval for the hub's choice of a server for new clients.

use std::time::Instant;

use acms_protocol::Load;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Turns running totals into a [`Load`] report per interval.
pub(crate) struct LoadSampler {
    system: System,
    /// `None` where the platform cannot name this process: CPU and memory then report 0.
    pid: Option<Pid>,
    capacity: Option<u32>,
    last: Option<(Instant, u64, u64)>,
}

impl LoadSampler {
    pub(crate) fn new(capacity: Option<u32>) -> Self {
        Self { system: System::new(), pid: sysinfo::get_current_pid().ok(), capacity, last: None }
    }

    /// A report from the users online now and the messages received and sent since start. The
    /// first one after start shows no CPU and no rates: both need an earlier sample.
    pub(crate) fn sample(&mut self, users: usize, msgs_in: u64, msgs_out: u64) -> Load {
        let now = Instant::now();
        let (cpu, memory) = self.process();
        let rate = |total: u64, before: u64, since: Instant| {
            let seconds = now.duration_since(since).as_secs_f64();
            if seconds > 0.0 {
                (total.saturating_sub(before) as f64 / seconds).round()
            } else {
                0.0
            }
        };
        let (msgs_in_per_s, msgs_out_per_s) = match self.last {
            Some((since, before_in, before_out)) => {
                (rate(msgs_in, before_in, since), rate(msgs_out, before_out, since))
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, msgs_in, msgs_out));
        Load {
            users: u32::try_from(users).unwrap_or(u32::MAX),
            // Float to integer casts saturate.
            cpu_centipercent: (cpu * 100.0).round() as u32,
            memory_bytes: memory,
            msgs_in_per_s: msgs_in_per_s as u32,
            msgs_out_per_s: msgs_out_per_s as u32,
            capacity: self.capacity,
        }
    }

    /// CPU use (percent of one core, since the last refresh) and resident bytes of this process.
    fn process(&mut self) -> (f64, u64) {
        let Some(pid) = self.pid else {
            return (0.0, 0);
        };
        let what = ProcessRefreshKind::nothing().with_cpu().with_memory();
        self.system.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, what);
        self.system
            .process(pid)
            .map_or((0.0, 0), |process| (f64::from(process.cpu_usage()), process.memory()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_memory_rates_and_capacity() {
        let mut sampler = LoadSampler::new(Some(100));
        let first = sampler.sample(3, 10, 20);
        assert_eq!((first.users, first.msgs_in_per_s, first.capacity), (3, 0, Some(100)));
        assert!(first.memory_bytes > 0, "this process has resident memory");
        // Pretend the last sample was two seconds ago.
        let (_, before_in, before_out) = sampler.last.unwrap();
        sampler.last =
            Some((Instant::now() - std::time::Duration::from_secs(2), before_in, before_out));
        let second = sampler.sample(4, 210, 60);
        assert!((99..=100).contains(&second.msgs_in_per_s), "{second:?}");
        assert!((19..=20).contains(&second.msgs_out_per_s), "{second:?}");
    }
}

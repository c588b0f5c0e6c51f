//! The summary of a run: per metric the median with min–max over the rounds for each system,
//! the ACMS/NATS ratio of the medians (and, when the cross-hub case ran, cross-hub over
//! single-hub), the printed table and the closing summary line.
//! `results.json` holds the raw runs and this summary; the chart is drawn by [`crate::chart`].

use serde::Serialize;

use crate::results::{
    AcmsSend, HUB_A, HUB_B, NATS_CLUSTER, NatsClient, Results, RttRun, System, ThroughputRun,
};

/// Median, min and max of one metric over the successful rounds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Median (mean of the middle two for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Values summarised.
    pub runs: usize,
}

impl Stat {
    /// The summary of `values`, or `None` if there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median =
            if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 };
        Some(Self { median, min: sorted[0], max: sorted[sorted.len() - 1], runs: sorted.len() })
    }
}

/// How a row's numbers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A rate with a k/M suffix.
    Rate,
    /// A whole number.
    Count,
    /// Two decimals.
    Fixed2,
    /// One decimal.
    Fixed1,
    /// Three decimals.
    Fixed3,
}

impl Format {
    fn write(self, value: f64) -> String {
        match self {
            Format::Rate if value >= 1e6 => format!("{:.2}M", value / 1e6),
            Format::Rate if value >= 1e3 => format!("{:.1}k", value / 1e3),
            Format::Rate | Format::Count => format!("{value:.0}"),
            Format::Fixed1 => format!("{value:.1}"),
            Format::Fixed2 => format!("{value:.2}"),
            Format::Fixed3 => format!("{value:.3}"),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What the rows of a block measure: a payload size, `rtt`, `scale`.
    pub section: String,
    /// The metric, with its unit.
    pub metric: String,
    /// NATS's figures, if it ran.
    pub nats: Option<Stat>,
    /// ACMS's figures, if it ran.
    pub acms: Option<Stat>,
    /// ACMS median over NATS median.
    pub ratio: Option<f64>,
    /// The cross-hub figures, if that case ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross: Option<Stat>,
    /// Cross-hub median over the single hub's (ACMS) median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_ratio: Option<f64>,
    /// How the numbers are written.
    pub format: Format,
}

impl Row {
    fn new(section: &str, metric: &str, format: Format, nats: &[f64], acms: &[f64]) -> Self {
        Self::of_three(section, metric, format, [nats, acms, &[]])
    }

    /// A row of NATS, ACMS and cross-hub figures, in [`System::ALL`]'s order.
    fn of_three(section: &str, metric: &str, format: Format, values: [&[f64]; 3]) -> Self {
        let [nats, acms, cross] = values.map(Stat::of);
        let over = |a: Option<Stat>, b: Option<Stat>| match (a, b) {
            (Some(a), Some(b)) if b.median != 0.0 => Some(a.median / b.median),
            _ => None,
        };
        Self {
            section: section.to_owned(),
            metric: metric.to_owned(),
            nats,
            acms,
            ratio: over(acms, nats),
            cross,
            cross_ratio: over(cross, acms),
            format,
        }
    }

    /// The figures of `system`.
    pub fn stat(&self, system: System) -> Option<Stat> {
        match system {
            System::Nats => self.nats,
            System::Acms => self.acms,
            System::CrossHub => self.cross,
        }
    }

    fn cell(&self, stat: Option<Stat>) -> String {
        match stat {
            None => "-".to_owned(),
            Some(stat) if stat.runs == 1 || stat.min == stat.max => self.format.write(stat.median),
            Some(stat) => format!(
                "{} [{}–{}]",
                self.format.write(stat.median),
                self.format.write(stat.min),
                self.format.write(stat.max)
            ),
        }
    }
}

/// The summary of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Messages per throughput run.
    pub n: u64,
    /// Rounds.
    pub rounds: u32,
    /// The table.
    pub rows: Vec<Row>,
    /// ACMS over NATS, receive msg/s at 64 B.
    pub ratio_64: Option<f64>,
    /// ACMS over NATS, receive msg/s at 1 KiB.
    pub ratio_1k: Option<f64>,
    /// ACMS over NATS, round-trip p50.
    pub rtt_p50_ratio: Option<f64>,
    /// ACMS over NATS, round-trip p99.
    pub rtt_p99_ratio: Option<f64>,
    /// Whether the cross-hub case ran (the table then has its column and ratio).
    pub cross_hub: bool,
    /// Cross-hub over single hub, receive msg/s at 64 B.
    pub cross_ratio_64: Option<f64>,
    /// Cross-hub over single hub, receive msg/s at 1 KiB.
    pub cross_ratio_1k: Option<f64>,
    /// Cross-hub over single hub, round-trip p50.
    pub cross_rtt_p50_ratio: Option<f64>,
    /// Cross-hub over single hub, round-trip p99.
    pub cross_rtt_p99_ratio: Option<f64>,
    /// How each system was driven: one line per system and kind of run, then the batch sizes.
    pub policy: Vec<String>,
    /// Short names of the throughput drivers, for the column heads: NATS's, ACMS's, then the
    /// cross-hub case's.
    pub drivers: [String; 3],
}

/// `64 B`, `1 KiB`, `16 KiB`.
pub fn size_label(size: usize) -> String {
    if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

type ThroughputMetric = (&'static str, Format, fn(&ThroughputRun) -> Option<f64>);

/// The throughput rows, per payload size.
const THROUGHPUT_METRICS: &[ThroughputMetric] = &[
    ("receive msg/s", Format::Rate, |r| Some(r.recv.as_ref()?.msg_per_s)),
    ("receive MB/s", Format::Fixed1, |r| Some(r.recv.as_ref()?.mb_per_s)),
    ("sender msg/s", Format::Rate, |r| Some(r.send.as_ref()?.msg_per_s)),
    ("first msg after send, ms", Format::Fixed1, |r| {
        let (recv, send) = (r.recv.as_ref()?, r.send.as_ref()?);
        (recv.first_ns > 0).then(|| recv.first_ns.saturating_sub(send.start_ns) as f64 / 1e6)
    }),
    ("send to last msg, s", Format::Fixed2, |r| {
        let (recv, send) = (r.recv.as_ref()?, r.send.as_ref()?);
        (recv.last_ns > 0).then(|| recv.last_ns.saturating_sub(send.start_ns) as f64 / 1e9)
    }),
    // From the sender's start, not the first arrival: a stall before the first message counts.
    ("end-to-end msg/s", Format::Rate, |r| {
        let (recv, send) = (r.recv.as_ref()?, r.send.as_ref()?);
        let ns = recv.last_ns.checked_sub(send.start_ns).filter(|&ns| ns > 0)?;
        Some(recv.count as f64 * 1e9 / ns as f64)
    }),
    ("received (count)", Format::Count, |r| Some(r.recv.as_ref()?.count as f64)),
    ("receiver link drops", Format::Count, |r| Some(r.recv.as_ref()?.disconnects as f64)),
    ("broker CPU µs/msg", Format::Fixed3, |r| Some(r.broker.as_ref()?.cpu_us_per_msg)),
    ("broker CPU, cores", Format::Fixed2, |r| Some(r.broker.as_ref()?.cores)),
    ("sender CPU, cores", Format::Fixed2, |r| {
        let send = r.send.as_ref()?;
        Some(send.cpu_s / send.elapsed_s)
    }),
    ("receiver CPU, cores", Format::Fixed2, |r| {
        let recv = r.recv.as_ref()?;
        (recv.elapsed_s > 0.0).then(|| recv.cpu_s / recv.elapsed_s)
    }),
    ("broker peak RSS MB", Format::Fixed1, |r| Some(mib(r.broker.as_ref()?.peak_rss_kib))),
    ("broker RSS start MB", Format::Fixed1, |r| Some(mib(r.broker.as_ref()?.rss.start_kib))),
    ("broker RSS max MB", Format::Fixed1, |r| Some(mib(r.broker.as_ref()?.rss.max_kib))),
    ("broker RSS end MB", Format::Fixed1, |r| Some(mib(r.broker.as_ref()?.rss.end_kib))),
    ("hub A CPU µs/msg", Format::Fixed3, |r| r.broker.as_ref()?.part_us_per_msg(HUB_A)),
    ("hub B CPU µs/msg", Format::Fixed3, |r| r.broker.as_ref()?.part_us_per_msg(HUB_B)),
    ("NATS cluster CPU µs/msg", Format::Fixed3, |r| {
        r.broker.as_ref()?.part_us_per_msg(NATS_CLUSTER)
    }),
    ("routed, 2 nodes (0/1)", Format::Count, |r| {
        Some(f64::from(u8::from(r.broker.as_ref()?.routed?)))
    }),
];

/// Throughput rows that include failed runs.
const COUNT_METRICS: &[&str] = &["received (count)", "receiver link drops"];

type RttMetric = (&'static str, Format, fn(&RttRun) -> Option<f64>);

/// The round-trip rows.
const RTT_METRICS: &[RttMetric] = &[
    ("p50 µs", Format::Fixed1, |r| Some(r.rtt.as_ref()?.p50_us)),
    ("p99 µs", Format::Fixed1, |r| Some(r.rtt.as_ref()?.p99_us)),
    ("p99.9 µs", Format::Fixed1, |r| Some(r.rtt.as_ref()?.p999_us)),
    ("broker CPU µs/trip", Format::Fixed2, |r| Some(r.broker.as_ref()?.cpu_us_per_msg)),
    ("hub A CPU µs/trip", Format::Fixed2, |r| r.broker.as_ref()?.part_us_per_msg(HUB_A)),
    ("hub B CPU µs/trip", Format::Fixed2, |r| r.broker.as_ref()?.part_us_per_msg(HUB_B)),
    ("NATS cluster CPU µs/trip", Format::Fixed2, |r| {
        r.broker.as_ref()?.part_us_per_msg(NATS_CLUSTER)
    }),
];

/// Whether a row has a figure at all: the rows of the cross-hub parts are left out of a run
/// without that case.
fn has_figures(row: &Row) -> bool {
    row.nats.is_some() || row.acms.is_some() || row.cross.is_some()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report {
    /// Summarises `results`.
    pub fn new(results: &Results) -> Self {
        let mut rows = Vec::new();
        for &size in &results.settings.sizes {
            let section = size_label(size);
            for (metric, format, get) in THROUGHPUT_METRICS {
                let values = |system: System| -> Vec<f64> {
                    results
                        .throughput
                        .iter()
                        .filter(|r| r.system == system && r.size == size)
                        // Failed runs count only for what arrived: it is what went wrong.
                        .filter(|r| r.error.is_none() || COUNT_METRICS.contains(metric))
                        .filter_map(get)
                        .collect()
                };
                let row = Row::of_three(
                    &section,
                    metric,
                    *format,
                    System::ALL.map(values).each_ref().map(Vec::as_slice),
                );
                if has_figures(&row) {
                    rows.push(row);
                }
            }
        }
        let rtt_section = format!("rtt {}", size_label(results.settings.rtt_size));
        for (metric, format, get) in RTT_METRICS {
            let values = |system: System| -> Vec<f64> {
                results
                    .rtt
                    .iter()
                    .filter(|r| r.system == system && r.error.is_none())
                    .filter_map(get)
                    .collect()
            };
            let row = Row::of_three(
                &rtt_section,
                metric,
                *format,
                System::ALL.map(values).each_ref().map(Vec::as_slice),
            );
            if has_figures(&row) {
                rows.push(row);
            }
        }
        if let Some(scale) = results.scale.as_ref().filter(|scale| scale.error.is_none()) {
            let section = match scale.users {
                u if u >= 1_000_000 && u % 1_000_000 == 0 => format!("{}M users", u / 1_000_000),
                u if u >= 1000 => format!("{}k users", u / 1000),
                u => format!("{u} users"),
            };
            let scale_rows: [(&str, Format, f64); 6] = [
                ("login all, s", Format::Fixed2, scale.login_s),
                ("hub RSS MB", Format::Fixed1, mib(scale.rss_kib)),
                ("hub peak RSS MB", Format::Fixed1, mib(scale.peak_rss_kib)),
                ("resync after restart, s", Format::Fixed2, scale.resync_s),
                ("resync from kill, s", Format::Fixed2, scale.resync_from_kill_s),
                ("RSS after resync MB", Format::Fixed1, mib(scale.rss_after_resync_kib)),
            ];
            for (metric, format, value) in scale_rows {
                rows.push(Row::new(&section, metric, format, &[], &[value]));
            }
        }
        if let Some(kv) = results.kv_logins.as_ref().filter(|kv| kv.error.is_none()) {
            let section = "kv logins";
            let kv_rows: [(&str, Format, f64); 9] = [
                ("users on hub B", Format::Count, kv.users as f64),
                ("hub B confirmed, s", Format::Fixed2, kv.login_s),
                ("hub A replica has all, s", Format::Fixed2, kv.replica_s),
                ("logins/s", Format::Rate, kv.logins_per_s),
                ("hub A CPU s", Format::Fixed2, kv.hub_a_cpu_s),
                ("hub B CPU s", Format::Fixed2, kv.hub_b_cpu_s),
                ("NATS cluster CPU s", Format::Fixed2, kv.nats_cpu_s),
                ("hub A RSS growth MB", Format::Fixed1, {
                    mib(kv.hub_a_rss_after_kib.saturating_sub(kv.hub_a_rss_before_kib))
                }),
                ("replica B/user (hub A)", Format::Count, kv.replica_bytes_per_user),
            ];
            for (metric, format, value) in kv_rows {
                rows.push(Row::of_three(section, metric, format, [&[], &[], &[value]]));
            }
        }
        let row = |section: &str, metric: &str| {
            rows.iter().find(|r| r.section == section && r.metric == metric)
        };
        let ratio = |section: &str, metric: &str| row(section, metric).and_then(|r| r.ratio);
        let cross_ratio =
            |section: &str, metric: &str| row(section, metric).and_then(|r| r.cross_ratio);
        let s = &results.settings;
        let mut policy = Vec::new();
        for &system in &s.systems {
            policy.push(format!(
                "{} client: throughput {}; rtt {}",
                system.title(),
                s.throughput_policy(system),
                s.rtt_policy(system)
            ));
        }
        let batched = (s.systems.contains(&System::Nats) && s.nats_client == NatsClient::Raw)
            || (s.systems.iter().any(|system| system.is_acms()) && s.acms_send == AcmsSend::Batch);
        if batched {
            let sizes: Vec<String> = s
                .sizes
                .iter()
                .map(|&size| format!("{} = {}", size_label(size), s.batch_msgs(size)))
                .collect();
            policy.push(format!("messages per batch: {}", sizes.join(", ")));
        }
        let driver = |system: System, name: &str| {
            if s.systems.contains(&system) {
                format!("{} ({name})", system.title())
            } else {
                system.title().to_owned()
            }
        };
        let drivers = [
            driver(System::Nats, s.nats_client.name()),
            driver(System::Acms, s.acms_send.name()),
            driver(System::CrossHub, s.acms_send.name()),
        ];
        Self {
            n: results.settings.n,
            rounds: results.settings.rounds,
            policy,
            drivers,
            ratio_64: ratio("64 B", "receive msg/s"),
            ratio_1k: ratio("1 KiB", "receive msg/s"),
            rtt_p50_ratio: ratio(&rtt_section, "p50 µs"),
            rtt_p99_ratio: ratio(&rtt_section, "p99 µs"),
            cross_hub: s.systems.contains(&System::CrossHub),
            cross_ratio_64: cross_ratio("64 B", "receive msg/s"),
            cross_ratio_1k: cross_ratio("1 KiB", "receive msg/s"),
            cross_rtt_p50_ratio: cross_ratio(&rtt_section, "p50 µs"),
            cross_rtt_p99_ratio: cross_ratio(&rtt_section, "p99 µs"),
            rows,
        }
    }

    /// The table of medians [min–max], one line per metric.
    pub fn table(&self) -> String {
        let mut out = format!(
            "medians [min–max] over {} round(s), N = {} messages per throughput run\n",
            self.rounds, self.n
        );
        for line in &self.policy {
            out.push_str(line);
            out.push('\n');
        }
        let mut header = format!(
            "{:<10} {:<24} {:>28} {:>28} {:>9}",
            "", "metric", self.drivers[0], self.drivers[1], "ACMS/NATS"
        );
        if self.cross_hub {
            header.push_str(&format!(" {:>28} {:>11}", self.drivers[2], "cross/single"));
        }
        out.push_str(&header);
        out.push('\n');
        out.push_str(&"-".repeat(header.chars().count()));
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                out.push('\n');
                section = &row.section;
            }
            let ratio = row.ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
            out.push_str(&format!(
                "\n{:<10} {:<24} {:>28} {:>28} {:>9}",
                row.section,
                row.metric,
                row.cell(row.nats),
                row.cell(row.acms),
                ratio
            ));
            if self.cross_hub {
                let cross_ratio =
                    row.cross_ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
                out.push_str(&format!(" {:>28} {:>11}", row.cell(row.cross), cross_ratio));
            }
        }
        out
    }

    /// `ratio_64=R ratio_1k=R rtt_p50_ratio=R rtt_p99_ratio=R`, `n/a` where a system is missing;
    /// when the cross-hub case ran, followed by its ratios to the single hub,
    /// `cross_ratio_64=R cross_ratio_1k=R cross_rtt_p50_ratio=R cross_rtt_p99_ratio=R`.
    pub fn summary_line(&self) -> String {
        let r = |ratio: Option<f64>| ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"));
        let mut line = format!(
            "ratio_64={} ratio_1k={} rtt_p50_ratio={} rtt_p99_ratio={}",
            r(self.ratio_64),
            r(self.ratio_1k),
            r(self.rtt_p50_ratio),
            r(self.rtt_p99_ratio)
        );
        if self.cross_hub {
            line.push_str(&format!(
                " cross_ratio_64={} cross_ratio_1k={} cross_rtt_p50_ratio={} cross_rtt_p99_ratio={}",
                r(self.cross_ratio_64),
                r(self.cross_ratio_1k),
                r(self.cross_rtt_p50_ratio),
                r(self.cross_rtt_p99_ratio)
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(Stat::of(&[]), None);
        let stat = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((stat.median, stat.min, stat.max, stat.runs), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn formats() {
        assert_eq!(Format::Rate.write(3_100_000.0), "3.10M");
        assert_eq!(Format::Rate.write(880_400.0), "880.4k");
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(1024), "1 KiB");
        assert_eq!(size_label(16384), "16 KiB");
    }

    #[test]
    fn ratio_is_acms_over_nats() {
        let row = Row::new("64 B", "receive msg/s", Format::Rate, &[2.0, 2.0], &[3.0]);
        assert_eq!(row.ratio, Some(1.5));
        assert_eq!(Row::new("x", "y", Format::Rate, &[], &[1.0]).ratio, None);
    }

    #[test]
    fn cross_ratio_is_cross_hub_over_single_hub() {
        let row = Row::of_three("64 B", "receive msg/s", Format::Rate, [&[4.0], &[2.0], &[1.0]]);
        assert_eq!((row.ratio, row.cross_ratio), (Some(0.5), Some(0.5)));
        assert_eq!(row.stat(System::CrossHub).map(|s| s.median), Some(1.0));
        let without = Row::new("64 B", "receive msg/s", Format::Rate, &[1.0], &[2.0]);
        assert_eq!(without.cross_ratio, None);
    }
}

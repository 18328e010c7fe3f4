//! ghz's report, both ways it writes one: the JSON format (durations as
//! integer nanoseconds, its field names) and the text summary (count,
//! total, slowest, fastest, average, requests/sec, histogram, latency
//! distribution, status codes, errors), computed the way ghz computes them.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::{Deserialize, Serialize};
use tonic::Code;

use super::{
    runner::Outcome,
    scenario::{Bounds, Scenario},
};

/// ghz keeps at most this many per-call details.
const MAX_DETAILS: usize = 1_000_000;

/// The top-level keys of ghz's JSON report, all of which [`Report`] writes.
pub const GHZ_REPORT_KEYS: &[&str] = &[
    "name",
    "endReason",
    "options",
    "date",
    "count",
    "total",
    "average",
    "fastest",
    "slowest",
    "rps",
    "errorDistribution",
    "statusCodeDistribution",
    "latencyDistribution",
    "histogram",
    "details",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub name: String,
    pub end_reason: String,
    pub options: Options,
    pub date: String,
    pub count: u64,
    pub total: u64,
    pub average: u64,
    pub fastest: u64,
    pub slowest: u64,
    pub rps: f64,
    pub error_distribution: BTreeMap<String, u64>,
    pub status_code_distribution: BTreeMap<String, u64>,
    pub latency_distribution: Vec<LatencyDistribution>,
    pub histogram: Vec<Bucket>,
    pub details: Vec<Detail>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    pub host: String,
    pub call: String,
    pub insecure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    pub concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rps: Option<u64>,
    pub connections: usize,
    /// Nanoseconds, as ghz writes Go durations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    pub timeout: u64,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(rename = "CPUs")]
    pub cpus: usize,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyDistribution {
    pub percentage: u32,
    pub latency: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    /// Seconds.
    pub mark: f64,
    pub count: u64,
    pub frequency: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Detail {
    pub timestamp: String,
    pub latency: u64,
    pub error: String,
    pub status: String,
}

/// gRPC code names as Go spells them (ghz's status keys).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl Report {
    pub fn new(scenario: &Scenario, host: &str, bounds: &Bounds, outcome: &Outcome) -> Report {
        let mut errors = BTreeMap::new();
        let mut codes = BTreeMap::new();
        let mut sum = Duration::ZERO;
        let mut ok: Vec<Duration> = Vec::new();
        for s in &outcome.samples {
            sum += s.latency;
            *codes.entry(code_name(s.code).to_string()).or_insert(0) += 1;
            match &s.error {
                Some(e) => {
                    let text = format!("rpc error: code = {} desc = {e}", code_name(s.code));
                    *errors.entry(text).or_insert(0) += 1;
                }
                None => ok.push(s.latency),
            }
        }
        ok.sort_unstable();
        let count = outcome.samples.len() as u64;
        let details = outcome
            .samples
            .iter()
            .take(MAX_DETAILS)
            .map(|s| Detail {
                timestamp: humantime::format_rfc3339_nanos(s.at).to_string(),
                latency: ns(s.latency),
                error: s
                    .error
                    .as_ref()
                    .map(|e| format!("rpc error: code = {} desc = {e}", code_name(s.code)))
                    .unwrap_or_default(),
                status: code_name(s.code).to_string(),
            })
            .collect();
        Report {
            name: scenario.title(),
            end_reason: outcome.end_reason.as_str().to_string(),
            options: Options {
                host: host.to_string(),
                call: scenario.call.clone(),
                insecure: scenario.insecure,
                total: bounds.total,
                concurrency: bounds.concurrency,
                rps: bounds.rps,
                connections: bounds.connections,
                duration: bounds.duration.map(ns),
                timeout: ns(bounds.timeout),
                data: scenario.data.clone(),
                metadata: scenario.metadata.clone(),
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                name: scenario.title(),
            },
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            count,
            total: ns(outcome.total),
            average: if count == 0 {
                0
            } else {
                ns(sum / count as u32)
            },
            fastest: ok.first().copied().map_or(0, ns),
            slowest: ok.last().copied().map_or(0, ns),
            rps: if outcome.total.is_zero() {
                0.0
            } else {
                count as f64 / outcome.total.as_secs_f64()
            },
            error_distribution: errors,
            status_code_distribution: codes,
            latency_distribution: percentiles(&ok),
            histogram: histogram(&ok),
            details,
        }
    }

    /// The latency at `pct` percent (0 when nothing succeeded).
    pub fn percentile(&self, pct: u32) -> Duration {
        let l = self
            .latency_distribution
            .iter()
            .find(|l| l.percentage == pct)
            .map_or(0, |l| l.latency);
        Duration::from_nanos(l)
    }

    /// Calls that did not end OK.
    pub fn failures(&self) -> u64 {
        self.count
            - self
                .status_code_distribution
                .get("OK")
                .copied()
                .unwrap_or(0)
    }

    /// ghz's `summary` output.
    pub fn summary(&self) -> String {
        let ms = |n: u64| format!("{:.2} ms", n as f64 / 1e6);
        let mut out = String::new();
        let _ = writeln!(out, "\nSummary:");
        if !self.name.is_empty() {
            let _ = writeln!(out, "  Name:\t{}", self.name);
        }
        let _ = writeln!(out, "  Count:\t{}", self.count);
        let _ = writeln!(out, "  Total:\t{}", ms(self.total));
        let _ = writeln!(out, "  Slowest:\t{}", ms(self.slowest));
        let _ = writeln!(out, "  Fastest:\t{}", ms(self.fastest));
        let _ = writeln!(out, "  Average:\t{}", ms(self.average));
        let _ = writeln!(out, "  Requests/sec:\t{:.2}", self.rps);
        let _ = writeln!(out, "\nResponse time histogram:");
        let max = self.histogram.iter().map(|b| b.count).max().unwrap_or(0);
        for b in &self.histogram {
            let bar = (b.count * 40).checked_div(max).unwrap_or(0) as usize;
            let _ = writeln!(
                out,
                "  {:.3} [{}]\t|{}",
                b.mark * 1000.0,
                b.count,
                "∎".repeat(bar)
            );
        }
        let _ = writeln!(out, "\nLatency distribution:");
        for l in &self.latency_distribution {
            let _ = writeln!(out, "  {} % in {} ", l.percentage, ms(l.latency));
        }
        let _ = writeln!(out, "\nStatus code distribution:");
        for (code, n) in &self.status_code_distribution {
            let _ = writeln!(out, "  [{code}]   {n} responses   ");
        }
        if !self.error_distribution.is_empty() {
            let _ = writeln!(out, "\nError distribution:");
            for (e, n) in &self.error_distribution {
                let _ = writeln!(out, "  [{n}]   {e}   ");
            }
        }
        out
    }
}

/// ghz's nearest-rank percentiles over the sorted successful latencies.
fn percentiles(sorted: &[Duration]) -> Vec<LatencyDistribution> {
    if sorted.is_empty() {
        return Vec::new();
    }
    [10, 25, 50, 75, 90, 95, 99]
        .into_iter()
        .map(|p| {
            let rank = p as f64 / 100.0 * sorted.len() as f64;
            let mut i = rank as usize;
            if rank == i as f64 {
                i = i.saturating_sub(1);
            }
            LatencyDistribution {
                percentage: p,
                latency: ns(sorted[i.min(sorted.len() - 1)]),
            }
        })
        .collect()
}

/// ghz's histogram: ten equal steps from fastest to slowest, plus the
/// slowest; marks in seconds.
fn histogram(sorted: &[Duration]) -> Vec<Bucket> {
    let (Some(fastest), Some(slowest)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let (lo, hi) = (fastest.as_secs_f64(), slowest.as_secs_f64());
    let step = (hi - lo) / 10.0;
    let mut marks: Vec<f64> = (0..10).map(|i| lo + step * i as f64).collect();
    marks.push(hi);
    let mut counts = vec![0u64; marks.len()];
    let mut b = 0;
    for l in sorted.iter().map(Duration::as_secs_f64) {
        while l > marks[b] && b < marks.len() - 1 {
            b += 1;
        }
        counts[b] += 1;
    }
    marks
        .into_iter()
        .zip(counts)
        .map(|(mark, count)| Bucket {
            mark,
            count,
            frequency: count as f64 / sorted.len() as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::runner::{EndReason, Sample};

    #[test]
    fn figures_are_computed_as_ghz_computes_them() {
        let scenario = Scenario::parse(r#"{"call": "a.B/C", "total": 10}"#).unwrap();
        let bounds = scenario.bounds().unwrap();
        let mut samples: Vec<Sample> = (1..=9)
            .map(|ms| Sample {
                at: SystemTime::UNIX_EPOCH,
                latency: Duration::from_millis(ms),
                code: Code::Ok,
                error: None,
            })
            .collect();
        samples.push(Sample {
            at: SystemTime::UNIX_EPOCH,
            latency: Duration::from_millis(100),
            code: Code::NotFound,
            error: Some("no such key".into()),
        });
        let outcome = Outcome {
            samples,
            total: Duration::from_millis(500),
            end_reason: EndReason::Normal,
            first_reply: None,
        };
        let r = Report::new(&scenario, "127.0.0.1:1", &bounds, &outcome);
        assert_eq!(r.count, 10);
        assert_eq!(r.rps, 20.0);
        assert_eq!(r.fastest, 1_000_000);
        assert_eq!(r.slowest, 9_000_000, "only successful calls");
        assert_eq!(r.average, 14_500_000, "over every call");
        assert_eq!(r.status_code_distribution["OK"], 9);
        assert_eq!(r.status_code_distribution["NotFound"], 1);
        assert_eq!(
            r.error_distribution["rpc error: code = NotFound desc = no such key"],
            1
        );
        assert_eq!(r.failures(), 1);
        // Nearest rank over 9: 50% → rank 4.5 → index 4 → 5 ms.
        assert_eq!(r.percentile(50), Duration::from_millis(5));
        assert_eq!(r.percentile(99), Duration::from_millis(9));
        assert_eq!(r.histogram.len(), 11);
        assert_eq!(r.histogram.iter().map(|b| b.count).sum::<u64>(), 9);

        let json = serde_json::to_value(&r).unwrap();
        for key in GHZ_REPORT_KEYS {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(json["total"].is_u64(), "durations are integer nanoseconds");
        assert_eq!(json["details"][9]["status"], "NotFound");
        let text = r.summary();
        for line in [
            "Count:\t10",
            "Requests/sec:\t20.00",
            "50 % in 5.00 ms",
            "[OK]   9 responses",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

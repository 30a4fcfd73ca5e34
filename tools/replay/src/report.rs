//! Latency percentiles and outcome counts, printed the same way by every subcommand.

use std::collections::BTreeMap;
use std::time::Duration;

/// Collected latencies and outcomes of a run.
#[derive(Debug, Default)]
pub struct Tally {
    latencies_us: Vec<u64>,
    /// Accepted requests.
    pub accepted: u64,
    /// Rejections by status and message.
    pub rejected: BTreeMap<String, u64>,
}

impl Tally {
    /// Records one answer.
    pub fn record(&mut self, outcome: &crate::client::Outcome) {
        self.latencies_us
            .push(u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX));
        if outcome.accepted() {
            self.accepted += 1;
        } else {
            let status = if outcome.status == 0 {
                "no answer".to_owned()
            } else {
                outcome.status.to_string()
            };
            *self
                .rejected
                .entry(format!("{status}: {}", outcome.message()))
                .or_default() += 1;
        }
    }

    /// Returns the number of answers recorded.
    pub fn total(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// Prints counts and latency percentiles.
    pub fn print(&mut self, title: &str) {
        println!("{title}: {} sent, {} accepted", self.total(), self.accepted);
        for (reason, count) in &self.rejected {
            println!("  rejected {count:>6}  {reason}");
        }
        if let Some(line) = percentiles_line(&mut self.latencies_us) {
            println!("  latency {line}");
        }
    }
}

/// Formats p50, p90, p99 and max of a set of microsecond values, sorting them in place.
pub fn percentiles_line(values_us: &mut [u64]) -> Option<String> {
    if values_us.is_empty() {
        return None;
    }
    values_us.sort_unstable();
    let at = |quantile: f64| {
        let index = ((values_us.len() as f64 - 1.0) * quantile).round() as usize;
        Duration::from_micros(values_us[index])
    };
    Some(format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.90).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_hundred_values() {
        let mut values: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let line = percentiles_line(&mut values).unwrap();
        assert!(line.starts_with("p50 51.0 ms"), "{line}");
        assert!(line.contains("p99 99.0 ms"), "{line}");
        assert!(line.ends_with("max 100.0 ms"), "{line}");
    }
}

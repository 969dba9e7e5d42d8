//! How the benchmarks print latencies: one line per measure, percentiles and throughput.

use std::time::Duration;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// One line: the sample count, p50/p90/p99/max latency, and samples per second of `elapsed`.
pub(crate) fn report(name: &str, mut samples: Vec<Duration>, elapsed: Duration) {
    if samples.is_empty() {
        println!("{name:<44} n=0 (nothing measured)");
        return;
    }
    samples.sort();
    println!(
        "{name:<44} n={:<5} p50={:>8.3?} p90={:>8.3?} p99={:>8.3?} max={:>8.3?} throughput={:.0}/s",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
        samples.len() as f64 / elapsed.as_secs_f64(),
    );
}

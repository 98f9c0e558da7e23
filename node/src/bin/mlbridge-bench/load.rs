//! A bounded closed-loop load generator: `concurrency` workers each send one request at a time until the time or
//! request budget is spent; latencies are merged into percentiles.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Budget of one measurement.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Seconds.
    pub(crate) seconds: f64,
    /// Requests.
    pub(crate) max_requests: usize,
}

/// Result of one measurement.
#[derive(Clone, Debug)]
pub(crate) struct Stats {
    pub(crate) requests: usize,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
}

impl Stats {
    pub(crate) fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The mean of several measurements of the same thing (throughput, percentiles and errors averaged).
    pub(crate) fn mean(runs: &[Stats]) -> Stats {
        let n = runs.len().max(1) as f64;
        let avg = |f: fn(&Stats) -> f64| runs.iter().map(f).sum::<f64>() / n;
        let elapsed = Duration::from_secs_f64(avg(|s| s.elapsed.as_secs_f64()));
        Stats {
            requests: (avg(Stats::throughput) * elapsed.as_secs_f64()).round() as usize,
            errors: runs.iter().map(|s| s.errors).sum(),
            elapsed,
            p50_ms: avg(|s| s.p50_ms),
            p95_ms: avg(|s| s.p95_ms),
            p99_ms: avg(|s| s.p99_ms),
        }
    }

    /// The run of median throughput among several measurements of the same thing.
    pub(crate) fn median(runs: &[Stats]) -> Stats {
        let mut sorted = runs.to_vec();
        sorted.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        sorted.get(sorted.len() / 2).cloned().unwrap_or_else(|| Stats::mean(&[]))
    }

    pub(crate) fn from_latencies(mut lat: Vec<Duration>, errors: usize, elapsed: Duration) -> Self {
        lat.sort();
        let pct = |p: f64| {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i].as_secs_f64() * 1e3
        };
        Self { requests: lat.len(), errors, elapsed, p50_ms: pct(0.50), p95_ms: pct(0.95), p99_ms: pct(0.99) }
    }
}

/// Run `op` from `concurrency` tasks until the budget is spent. `op(i)` returns whether request `i` succeeded.
pub(crate) async fn run<F, Fut>(concurrency: usize, limits: Limits, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(limits.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (op, issued) = (op.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= limits.max_requests {
                    break;
                }
                let t0 = Instant::now();
                if op(i).await {
                    lat.push(t0.elapsed());
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("load task");
        all.extend(lat);
        errors += e;
    }
    Stats::from_latencies(all, errors, started.elapsed())
}

/// Run a blocking `op` on the current thread until the budget is spent (raw ONNX Runtime).
pub(crate) fn run_blocking(limits: Limits, mut op: impl FnMut(usize) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs_f64(limits.seconds);
    let started = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut i = 0;
    while Instant::now() < deadline && i < limits.max_requests {
        let t0 = Instant::now();
        if op(i) {
            lat.push(t0.elapsed());
        } else {
            errors += 1;
        }
        i += 1;
    }
    Stats::from_latencies(lat, errors, started.elapsed())
}

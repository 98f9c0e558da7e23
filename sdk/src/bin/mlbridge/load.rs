//! `mlbridge load`: a paid workload over the network for a set time — a mix of models, a share of inputs repeated
//! (so the nodes' result caches answer some) — with live progress, a table at the end and a JSON report.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use alloy::primitives::U256;
use alloy::primitives::utils::format_ether;
use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use mlbridge_sdk::client::Client;
use mlbridge_sdk::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{NetArgs, PayArgs, StrategyArg, client, read_inputs};

/// Earlier inputs per model that repeated jobs draw from.
const HOT_INPUTS: usize = 4;
/// Latencies kept per model (beyond it, the percentiles are of the first ones).
const MAX_SAMPLES: usize = 1_000_000;
/// Distinct error messages kept (the rest are counted as "other errors").
const MAX_MESSAGES: usize = 32;
/// Longest run (`--duration`), seconds.
const MAX_DURATION: f64 = 7.0 * 24.0 * 3600.0;

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    net: NetArgs,
    #[command(flatten)]
    pay: PayArgs,
    /// Seconds to run (Ctrl-C ends it sooner; jobs in flight finish and the report is written).
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    concurrency: u16,
    /// An embedding model and a file of texts, one per line (MODEL=FILE, repeatable). A fresh job embeds three of
    /// them joined.
    #[arg(long, value_name = "MODEL=FILE")]
    embed: Vec<String>,
    /// A tensor model and a JSON file of inputs as for `infer --input` (MODEL=FILE, repeatable). A fresh job draws
    /// new FP32 values in [0, 1) of the same shapes.
    #[arg(long, value_name = "MODEL=FILE")]
    tensors: Vec<String>,
    /// Share of jobs that repeat one of a few earlier inputs of their model (a node's result cache can answer them).
    #[arg(long, default_value_t = 0.25)]
    repeat_share: f64,
    /// Nodes to wait for before starting (up to 30 s).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Routing strategy.
    #[arg(long, value_enum, default_value = "model-aware")]
    strategy: StrategyArg,
    /// Write the report here (JSON).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seed of the input draws (the same seed sends the same inputs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One job's input.
#[derive(Clone)]
enum Input {
    Texts(Vec<String>),
    Tensors(Vec<Tensor>),
}

/// Where a model's inputs come from.
enum Pool {
    Texts(Vec<String>),
    Tensors(Vec<Tensor>),
}

struct Source {
    model: String,
    pool: Pool,
    hot: Vec<Input>,
}

impl Source {
    fn fresh(&self, rng: &mut StdRng) -> anyhow::Result<Input> {
        Ok(match &self.pool {
            // Three lines joined: 40 lines make 64,000 texts, so fresh inputs seldom repeat by chance.
            Pool::Texts(lines) => {
                let mut pick = || lines[rng.gen_range(0..lines.len())].as_str();
                Input::Texts(vec![[pick(), pick(), pick()].join(" ")])
            }
            Pool::Tensors(template) => Input::Tensors(
                template
                    .iter()
                    .map(|t| match t.data() {
                        TensorData::Fp32(v) => {
                            let data = (0..v.len()).map(|_| rng.r#gen::<f32>()).collect();
                            Ok(Tensor::new(t.name(), t.shape().to_vec(), TensorData::Fp32(data))?)
                        }
                        _ => Ok(t.clone()),
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
        })
    }
}

fn split_spec(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (model, file) = spec.split_once('=').with_context(|| format!("'{spec}' is not MODEL=FILE"))?;
    Ok((model.to_owned(), PathBuf::from(file)))
}

fn sources(args: &LoadArgs, rng: &mut StdRng) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    for spec in &args.embed {
        let (model, file) = split_spec(spec)?;
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
        if lines.is_empty() {
            bail!("{} holds no texts", file.display());
        }
        out.push(Source { model, pool: Pool::Texts(lines), hot: Vec::new() });
    }
    for spec in &args.tensors {
        let (model, file) = split_spec(spec)?;
        out.push(Source { model, pool: Pool::Tensors(read_inputs(&file)?), hot: Vec::new() });
    }
    if out.is_empty() {
        bail!("give at least one --embed MODEL=FILE or --tensors MODEL=FILE");
    }
    for s in &mut out {
        s.hot = (0..HOT_INPUTS).map(|_| s.fresh(rng)).collect::<anyhow::Result<_>>()?;
    }
    Ok(out)
}

#[derive(Default)]
struct ModelStats {
    ok: u64,
    repeats: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
struct NodeStats {
    jobs: u64,
    charged: U256,
    vouchers: u64,
}

#[derive(Default)]
struct Stats {
    models: BTreeMap<String, ModelStats>,
    nodes: BTreeMap<String, NodeStats>,
    errors: BTreeMap<String, u64>,
    failovers: u64,
}

impl Stats {
    fn totals(&self) -> (u64, u64) {
        self.models.values().fold((0, 0), |(ok, err), m| (ok + m.ok, err + m.errors))
    }
}

fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    // Counters only: a worker that panicked left nothing half-written worth refusing.
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn worker(
    c: Arc<Client>,
    sources: Arc<Vec<Source>>,
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    repeat_share: f64,
    mut rng: StdRng,
) -> anyhow::Result<()> {
    let mut backoff = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let source = &sources[rng.gen_range(0..sources.len())];
        let repeat = rng.gen_bool(repeat_share);
        let input =
            if repeat { source.hot[rng.gen_range(0..source.hot.len())].clone() } else { source.fresh(&mut rng)? };
        let started = Instant::now();
        let outcome = match input {
            Input::Texts(texts) => c.embed(&source.model, None, texts).await,
            Input::Tensors(tensors) => c.infer(&source.model, None, tensors).await,
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let failed = {
            let mut s = lock(&stats);
            match outcome {
                Ok(out) => {
                    let m = s.models.entry(source.model.clone()).or_default();
                    m.ok += 1;
                    m.repeats += u64::from(repeat);
                    if m.latencies_ms.len() < MAX_SAMPLES {
                        m.latencies_ms.push(ms);
                    }
                    let n = s.nodes.entry(out.node.to_string()).or_default();
                    n.jobs += 1;
                    if let Some(p) = &out.paid {
                        n.charged += p.price;
                        n.vouchers += u64::from(p.voucher.is_some());
                    }
                    // The nodes tried before the one that answered are not named by the client; counted in total.
                    s.failovers += (out.attempts.max(1) - 1) as u64;
                    false
                }
                Err(e) => {
                    s.models.entry(source.model.clone()).or_default().errors += 1;
                    // A node writes part of these messages: bounded and without control characters.
                    let message: String =
                        e.to_string().chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
                    let key = if s.errors.len() < MAX_MESSAGES || s.errors.contains_key(&message) {
                        message
                    } else {
                        "other errors".to_string()
                    };
                    *s.errors.entry(key).or_default() += 1;
                    true
                }
            }
        };
        // A failing network is not hammered: a growing pause after each error, up to 1 s.
        backoff = if failed {
            (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
        } else {
            Duration::ZERO
        };
        if !backoff.is_zero() {
            tokio::time::sleep(backoff).await;
        }
    }
    Ok(())
}

/// Live progress: a bar at a terminal, a line every 5 s otherwise (logs, CI).
async fn progress(stats: Arc<Mutex<Stats>>, stop: Arc<AtomicBool>, duration: Duration) {
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::new(duration.as_secs().max(1));
        bar.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let started = Instant::now();
    let (mut last_jobs, mut last_at, mut last_line) = (0u64, Instant::now(), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (line, jobs) = {
            let s = lock(&stats);
            let (ok, errors) = s.totals();
            let per_model: Vec<String> = s.models.iter().map(|(name, m)| format!("{name} {}", m.ok)).collect();
            let charged: U256 = s.nodes.values().map(|n| n.charged).sum();
            let rate = (ok - last_jobs) as f64 / last_at.elapsed().as_secs_f64();
            let line = format!(
                "{ok} jobs ({rate:.0}/s), {errors} errors, {} ETH charged | {}",
                format_ether(charged),
                per_model.join(", ")
            );
            (line, ok)
        };
        (last_jobs, last_at) = (jobs, Instant::now());
        match &bar {
            Some(bar) => {
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(line);
            }
            None if last_line.elapsed() >= Duration::from_secs(5) => {
                eprintln!("[{:>4.0}s/{:.0}s] {line}", started.elapsed().as_secs_f64(), duration.as_secs_f64());
                last_line = Instant::now();
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.repeat_share) {
        bail!("--repeat-share is a share between 0 and 1");
    }
    if !(args.duration > 0.0 && args.duration <= MAX_DURATION) {
        bail!("--duration is a positive number of seconds, at most {MAX_DURATION}");
    }
    // Ctrl-C from the start: the first ends the run (jobs in flight finish, the report is written), a second one
    // exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = Arc::new(tokio::sync::Notify::new());
    {
        let (stop, interrupted) = (stop.clone(), interrupted.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the jobs in flight (Ctrl-C again to quit now)");
                stop.store(true, Ordering::Relaxed);
                interrupted.notify_one();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let sources = Arc::new(sources(&args, &mut rng)?);
    let mut c = client(&args.net, args.strategy.into())?;
    if args.pay.key.is_some() || args.pay.keystore.is_some() {
        c = c.with_payer(Arc::new(args.pay.payer().await?));
    }
    let c = Arc::new(c);
    let wait_until = Instant::now() + Duration::from_secs(30);
    let nodes = loop {
        let nodes = c.nodes().await?;
        if nodes.len() >= args.nodes || Instant::now() >= wait_until || stop.load(Ordering::Relaxed) {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted before the workload started");
    }
    if nodes.len() < args.nodes {
        bail!("{} of {} nodes seen in 30 s; check --bootstrap", nodes.len(), args.nodes);
    }
    let operators: HashMap<String, String> =
        nodes.iter().map(|n| (n.peer_id.to_string(), n.operator.to_string())).collect();
    let models: Vec<&str> = sources.iter().map(|s| s.model.as_str()).collect();
    eprintln!(
        "{} nodes; {} jobs in flight for {:.0} s over {} ({:.0}% repeated inputs)",
        nodes.len(),
        args.concurrency,
        args.duration,
        models.join(", "),
        args.repeat_share * 100.0
    );

    let stats = Arc::new(Mutex::new(Stats::default()));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let rng = StdRng::seed_from_u64(args.seed.wrapping_add(1 + u64::from(i)));
            tokio::spawn(worker(c.clone(), sources.clone(), stats.clone(), stop.clone(), args.repeat_share, rng))
        })
        .collect();
    let duration = Duration::from_secs_f64(args.duration);
    let ticker = tokio::spawn(progress(stats.clone(), stop.clone(), duration));
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = interrupted.notified() => {}
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("a load worker panicked")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = ticker.await;

    let mut stats = std::mem::take(&mut *lock(&stats));
    let report = report(&mut stats, &operators, &c, elapsed, &args);
    print_table(&report);
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let (ok, _) = stats.totals();
    if ok == 0 {
        bail!("no job was answered");
    }
    Ok(())
}

fn report(
    stats: &mut Stats,
    operators: &HashMap<String, String>,
    c: &Client,
    elapsed: f64,
    args: &LoadArgs,
) -> serde_json::Value {
    let (ok, errors) = stats.totals();
    let models: serde_json::Map<String, serde_json::Value> = stats
        .models
        .iter_mut()
        .map(|(name, m)| {
            m.latencies_ms.sort_by(f64::total_cmp);
            let l = &m.latencies_ms;
            let v = json!({
                "requests": m.ok, "errors": m.errors, "repeated_inputs": m.repeats, "rps": m.ok as f64 / elapsed,
                "p50_ms": percentile(l, 0.50), "p95_ms": percentile(l, 0.95), "p99_ms": percentile(l, 0.99),
            });
            (name.clone(), v)
        })
        .collect();
    let nodes: Vec<serde_json::Value> = stats
        .nodes
        .iter()
        .map(|(peer, n)| {
            json!({
                "peer": peer, "operator": operators.get(peer), "jobs": n.jobs,
                "charged_wei": n.charged.to_string(), "vouchers": n.vouchers,
            })
        })
        .collect();
    let channels: Vec<serde_json::Value> = c
        .payer()
        .map(|p| p.store().list())
        .unwrap_or_default()
        .into_iter()
        .map(|ch| {
            json!({
                "channel": ch.channel_id, "payee": ch.payee, "deposit_wei": ch.deposit.to_string(),
                "signed_wei": ch.signed.to_string(),
            })
        })
        .collect();
    json!({
        "duration_s": elapsed, "concurrency": args.concurrency, "repeat_share": args.repeat_share,
        "requests": ok, "errors": errors, "failovers": stats.failovers, "rps": ok as f64 / elapsed,
        "models": models, "nodes": nodes, "channels": channels, "error_messages": stats.errors,
    })
}

fn print_table(r: &serde_json::Value) {
    println!(
        "{} jobs answered in {:.1} s ({:.1}/s), {} errors",
        r["requests"].as_u64().unwrap_or(0),
        r["duration_s"].as_f64().unwrap_or(0.0),
        r["rps"].as_f64().unwrap_or(0.0),
        r["errors"].as_u64().unwrap_or(0)
    );
    println!(
        "{:<14} {:>8} {:>7} {:>8} {:>9} {:>9} {:>9}",
        "model", "requests", "errors", "rps", "p50 ms", "p95 ms", "p99 ms"
    );
    for (name, m) in r["models"].as_object().into_iter().flatten() {
        let f = |k: &str| m[k].as_f64().unwrap_or(0.0);
        println!(
            "{name:<14} {:>8} {:>7} {:>8.1} {:>9.1} {:>9.1} {:>9.1}",
            m["requests"].as_u64().unwrap_or(0),
            m["errors"].as_u64().unwrap_or(0),
            f("rps"),
            f("p50_ms"),
            f("p95_ms"),
            f("p99_ms")
        );
    }
    for (message, count) in r["error_messages"].as_object().into_iter().flatten() {
        println!("error x{count}: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}

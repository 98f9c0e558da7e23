//! `mlbridge-node doctor`: read a node's metrics (a live `/metrics` endpoint, or a snapshot saved from one) and
//! name, for each symptom of the performance guide's troubleshooting table and our own, the likely cause and the
//! fix, with the numbers behind it.
//!
//! One snapshot holds counters since the node started, so the checks use shares of totals (of requests, of jobs)
//! and the gauges' current values; a live node is read twice, a few seconds apart, for the rates.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A sample's labels.
type Labels = BTreeMap<String, String>;

/// A parsed Prometheus text exposition: every sample by metric name, with its labels.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    samples: BTreeMap<String, Vec<(Labels, f64)>>,
}

impl Snapshot {
    /// Parse the text format (`name{label="value",...} number`); comments and malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            // `series value [timestamp] [# exemplar]`: the series ends after its labels' closing brace (label values
            // may hold spaces), the value is the next word.
            let end = match (line.find('{'), line.find(char::is_whitespace)) {
                (Some(brace), Some(space)) if brace < space => match labels_end(line, brace) {
                    Some(close) => close + 1,
                    None => continue,
                },
                (_, Some(space)) => space,
                (_, None) => continue,
            };
            let (series, rest) = line.split_at(end);
            let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            samples.entry(name.to_owned()).or_default().push((labels, value));
        }
        Self { samples }
    }

    /// Sum of a metric's samples whose labels include `filter` (all of them for an empty filter); 0 if absent.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.series(name, filter).map(|(_, v)| v).sum()
    }

    /// Whether the metric is present at all.
    pub fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }

    fn series<'a>(
        &'a self,
        name: &str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(labels, _)| filter.iter().all(|(k, v)| labels.get(*k).is_some_and(|x| x == v)))
            .map(|(l, v)| (l, *v))
    }

    /// Values of one label across a metric's samples.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut out: Vec<String> = self.series(name, &[]).filter_map(|(l, _)| l.get(label).cloned()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The `q` quantile of a histogram (its cumulative `_bucket` series for `model`), by linear interpolation in the
    /// bucket that holds it, as Prometheus' `histogram_quantile` does.
    pub fn quantile(&self, histogram: &str, model: &str, q: f64) -> Option<f64> {
        let mut buckets: Vec<(f64, f64)> = self
            .series(&format!("{histogram}_bucket"), &[("model", model)])
            .filter_map(|(l, v)| Some((l.get("le")?.replace("+Inf", "inf").parse::<f64>().ok()?, v)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev.0);
                }
                let width = count - prev.1;
                let frac = if width > 0.0 { (rank - prev.1) / width } else { 1.0 };
                return Some(prev.0 + (le - prev.0) * frac);
            }
            prev = (le, count);
        }
        None
    }

    /// A histogram's mean for `model` (`_sum / _count`).
    pub fn mean(&self, histogram: &str, model: &str) -> Option<f64> {
        let count = self.sum(&format!("{histogram}_count"), &[("model", model)]);
        (count > 0.0).then(|| self.sum(&format!("{histogram}_sum"), &[("model", model)]) / count)
    }
}

/// Where the label set opened at `open` closes: the first `}` outside a quoted value.
fn labels_end(line: &str, open: usize) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line[open..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(open + i),
            _ => {}
        }
    }
    None
}

fn parse_labels(s: &str) -> Labels {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_owned(), value);
        rest = &after[end..];
    }
    labels
}

/// One diagnosis: what is wrong, the numbers, the likely cause and the fix.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// A stable name of the symptom (`high_latency`, `queue_saturated`, ...).
    pub symptom: &'static str,
    /// What the numbers show.
    pub evidence: String,
    /// The likely cause.
    pub cause: String,
    /// What to do.
    pub fix: String,
}

/// What the node's config says, when the doctor is given it (`--config`): the fixes then name the settings and
/// their current values.
#[derive(Clone, Debug)]
pub struct Context {
    /// The node's config.
    pub node: crate::config::NodeConfig,
    /// The models it serves (`model_repository`), by `name/version`.
    pub models: Vec<crate::inference::ModelConfig>,
}

impl Context {
    /// Read the node's config file and its model repository.
    pub fn load(config: &std::path::Path) -> crate::Result<Self> {
        let node = crate::config::NodeConfig::load(config)?;
        let repo = crate::inference::ModelRepository::open(&node.model_repository)?;
        Ok(Self { models: repo.configs().cloned().collect(), node })
    }

    fn model(&self, key: &str) -> Option<&crate::inference::ModelConfig> {
        self.models.iter().find(|m| m.key() == key)
    }
}

/// What `context` adds to a fix about `model` (empty without a config).
fn model_settings(context: Option<&Context>, model: &str) -> String {
    let Some(m) = context.and_then(|c| c.model(model)) else { return String::new() };
    let threads = context.and_then(|c| c.node.inference.threads).unwrap_or(m.intra_op_threads);
    format!(
        " (now: max_batch_size {}, preferred_batch_size {}, max_queue_delay_us {}, intra_op_threads {threads})",
        m.max_batch_size,
        m.preferred_batch_size.map_or_else(|| "unset".to_owned(), |p| p.to_string()),
        m.max_queue_delay_us,
    )
}

/// The latency threshold (the alert rule `MLBridgeHighLatencyP99` uses the same).
const P99_LIMIT_SECS: f64 = 0.5;

/// Everything the snapshot shows to be wrong (empty when the node looks healthy). `earlier` is a snapshot taken
/// before `now`, when there is one (a live node); `context` the node's config, when given.
pub fn diagnose(now: &Snapshot, earlier: Option<&Snapshot>, context: Option<&Context>) -> Vec<Finding> {
    let mut out = Vec::new();
    let models = now.label_values("mlbridge_requests_total", "model");
    for model in &models {
        let requests = now.sum("mlbridge_requests_total", &[("model", model)]);
        if requests < 1.0 {
            continue;
        }
        let share =
            |outcome: &str| now.sum("mlbridge_requests_total", &[("model", model), ("outcome", outcome)]) / requests;
        // (At least 200 answers, so that the p99 is not simply the slowest one, e.g. a lazily loaded model's first.)
        let answered = now.sum("mlbridge_request_seconds_count", &[("model", model)]);
        let p99 = now.quantile("mlbridge_request_seconds", model, 0.99).filter(|p| *p > P99_LIMIT_SECS);
        if let Some(p99) = p99.filter(|_| answered >= 200.0) {
            let wait = now.mean("mlbridge_queue_wait_seconds", model).unwrap_or(0.0);
            let compute = now.mean("mlbridge_compute_seconds", model).unwrap_or(0.0);
            let batch = now.mean("mlbridge_batch_size", model).unwrap_or(1.0);
            let (cause, fix) = if wait > compute {
                (
                    format!(
                        "requests wait longer in the queue ({:.0} ms on average) than a batch computes ({:.0} ms): more work arrives than the node can run",
                        wait * 1e3,
                        compute * 1e3
                    ),
                    "add nodes or intra_op_threads, or lower the load; check that another model does not hold the CPUs"
                        .to_owned(),
                )
            } else {
                (
                    format!(
                        "one execution takes {:.0} ms on average with {batch:.1} samples per batch: batches are large for this hardware",
                        compute * 1e3
                    ),
                    format!(
                        "lower max_batch_size or preferred_batch_size in the model's config.toml, or use a smaller / INT8 model version{}",
                        model_settings(context, model)
                    ),
                )
            };
            out.push(Finding {
                symptom: "high_latency",
                evidence: format!("{model}: p99 {:.0} ms (over {:.0} ms)", p99 * 1e3, P99_LIMIT_SECS * 1e3),
                cause,
                fix,
            });
        }
        let overloaded = share("overloaded");
        if overloaded > 0.01 {
            out.push(Finding {
                symptom: "queue_saturated",
                evidence: format!("{model}: {:.1}% of {requests:.0} requests answered \"overloaded\"", overloaded * 100.0),
                cause: "the model's queue was full, or requests outlived their queue timeout".into(),
                fix: "add capacity (nodes, intra_op_threads); raise inference.queue_capacity only if the latency allows it".into(),
            });
        }
        let errors = share("error");
        if errors > 0.001 && errors * requests >= 10.0 {
            out.push(Finding {
                symptom: "errors",
                evidence: format!(
                    "{model}: {:.2}% of {requests:.0} requests failed on the node's side",
                    errors * 100.0
                ),
                cause: "ONNX Runtime failed on a batch, or the model could not load".into(),
                fix: "the node's log names each failure (search for the model's name)".into(),
            });
        }
        // Batching: requests queue up but run one at a time.
        let inferences = now.sum("mlbridge_inferences_total", &[("model", model)]);
        let executions = now.sum("mlbridge_executions_total", &[("model", model)]);
        let waited = now.mean("mlbridge_queue_wait_seconds", model).unwrap_or(0.0);
        let compute = now.mean("mlbridge_compute_seconds", model).unwrap_or(0.0);
        // Only while requests are queued: a lone request also waits for batch-mates and runs alone, rightly.
        let queued_here = now.sum("mlbridge_queue_depth", &[("model", model)]);
        if executions >= 100.0 && inferences / executions < 1.2 && waited > compute && queued_here > 0.0 {
            out.push(Finding {
                symptom: "batching_not_forming",
                evidence: format!(
                    "{model}: {:.2} samples per execution over {executions:.0} executions while requests wait {:.1} ms (compute {:.1} ms)",
                    inferences / executions, waited * 1e3, compute * 1e3
                ),
                cause: "requests queue up but each runs alone: the batcher does not wait for batch-mates, or max_batch_size is 1".into(),
                fix: format!("raise max_queue_delay_us a little (e.g. 500-2000) and make sure max_batch_size and preferred_batch_size are above 1{}", model_settings(context, model)),
            });
        }
        let hits = now.sum("mlbridge_cache_hits_total", &[("model", model)]);
        let misses = now.sum("mlbridge_cache_misses_total", &[("model", model)]);
        if misses >= 1_000.0 && hits / (hits + misses) < 0.02 {
            out.push(Finding {
                symptom: "cache_not_hitting",
                evidence: format!("{model}: {hits:.0} hits for {misses:.0} misses ({:.2}%)", 100.0 * hits / (hits + misses)),
                cause: "inputs rarely repeat (or differ in ways that change the key: another batch size, another float)".into(),
                fix: format!(
                    "the cache only costs memory here: [cache] enabled = false, or a shorter ttl_secs / smaller capacity_mib{}",
                    context.map_or(String::new(), |c| format!(
                        " (now: capacity_mib {}, ttl_secs {})",
                        c.node.cache.capacity_mib, c.node.cache.ttl_secs
                    ))
                ),
            });
        }
    }
    // The machine.
    let total = now.sum("mlbridge_system_memory_total_bytes", &[]);
    let available = now.sum("mlbridge_system_memory_available_bytes", &[]);
    let limit = now.sum("mlbridge_system_memory_limit_bytes", &[]);
    let rss = now.sum("process_resident_memory_bytes", &[]);
    let used = if total > 0.0 { 1.0 - available / total } else { 0.0 };
    let of_limit = if limit > 0.0 { rss / limit } else { 0.0 };
    if used > 0.9 || of_limit > 0.9 {
        out.push(Finding {
            symptom: "memory",
            evidence: format!(
                "the machine's memory is {:.0}% used; the node holds {:.0} MiB, {:.0}% of its limit of {:.0} MiB",
                used * 100.0, rss / 1048576.0, of_limit * 100.0, limit / 1048576.0
            ),
            cause: "the result cache, eagerly loaded models and inbound request buffers share the memory".into(),
            fix: format!(
                "lower [cache] capacity_mib, load rarely used models lazily (load = \"lazy\"), lower [p2p] inbound_budget_mib, or give the node more memory{}",
                context.map_or(String::new(), |c| format!(
                    " (now: capacity_mib {}, {} of {} models loaded eagerly, inbound_budget_mib {})",
                    c.node.cache.capacity_mib,
                    c.models.iter().filter(|m| m.load == crate::inference::LoadPolicy::Eager).count(),
                    c.models.len(),
                    c.node.p2p.inbound_budget_mib
                ))
            ),
        });
    }
    let cpus: Vec<f64> = now.series("mlbridge_system_cpu_usage_ratio", &[]).map(|(_, v)| v).collect();
    let cpu = if cpus.is_empty() { None } else { Some(cpus.iter().sum::<f64>() / cpus.len() as f64) };
    let queued: f64 = now.sum("mlbridge_queue_depth", &[]);
    if let Some(cpu) = cpu.filter(|c| *c < 0.5 && queued > 0.0) {
        out.push(Finding {
            symptom: "low_utilisation",
            evidence: format!("{queued:.0} requests queued while the CPUs are {:.0}% busy", cpu * 100.0),
            cause: "work waits while cores idle: a model runs on too few threads, or batches do not form".into(),
            fix: format!(
                "raise the models' intra_op_threads (up to the {} cores), and see batching_not_forming{}",
                cpus.len(),
                context.map_or(String::new(), |c| {
                    let threads: Vec<String> = c
                        .models
                        .iter()
                        .map(|m| format!("{} {}", m.key(), c.node.inference.threads.unwrap_or(m.intra_op_threads)))
                        .collect();
                    format!(" (now: intra_op_threads {})", threads.join(", "))
                })
            ),
        });
    }
    // Rates, when there are two snapshots: throughput below what was queued.
    if let Some(earlier) = earlier {
        let done = now.sum("mlbridge_inferences_total", &[]) - earlier.sum("mlbridge_inferences_total", &[]);
        if done <= 0.0 && queued > 0.0 {
            out.push(Finding {
                symptom: "low_throughput",
                evidence: format!("{queued:.0} requests queued and none finished between the two reads"),
                cause: "a model's thread is stuck on a long batch, or ONNX Runtime is starved of CPU".into(),
                fix: "check mlbridge_compute_seconds for that model and the machine's load; restart the node if a batch never ends".into(),
            });
        }
    }
    // Payments and settlement.
    let paid = now.sum("mlbridge_paid_jobs_total", &[]);
    let refused = now.sum("mlbridge_payments_refused_total", &[]);
    if refused >= 10.0 && refused > 0.2 * (paid + refused) {
        let mut reasons: Vec<(String, f64)> = now
            .label_values("mlbridge_payments_refused_total", "reason")
            .into_iter()
            .map(|r| {
                let n = now.sum("mlbridge_payments_refused_total", &[("reason", &r)]);
                (r, n)
            })
            .collect();
        reasons.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = reasons.first().map_or("", |(r, _)| r.as_str());
        let cause = match top {
            "unconfirmed" | "unknown_channel" => {
                "clients pay on channels the node does not see confirmed yet (clients too eager, or a lagging RPC)"
            }
            "bad_signature" | "replayed" | "below_accepted" => {
                "a client sends invalid or old vouchers (a bug or an attempt to cheat)"
            }
            "no_credit" => {
                "clients ask to draw on credit they did not pay ahead (a client restarted, or lost a voucher)"
            }
            "no_voucher" => "clients send no payment at all (free clients on a paid node)",
            "underpaid" | "over_deposit" => {
                "clients pay less than the advertised price, or more than their deposit holds"
            }
            "expiring" | "unsettleable" => "clients pay on channels about to expire or that settlement cannot redeem",
            _ => "see the reasons",
        };
        let listed: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} {n:.0}")).collect();
        out.push(Finding {
            symptom: "payments_refused",
            evidence: format!("{refused:.0} payments refused against {paid:.0} paid jobs ({})", listed.join(", ")),
            cause: cause.into(),
            fix: "check the RPC the node reads (payment.rpc_url) and the clients' SDK versions; refusals cost the node nothing".into(),
        });
    }
    // Sends count resubmissions too: pending = sent - resubmitted - confirmed - dropped (approximately: a fee bump is
    // a new transaction whose predecessor is dropped). Stuck = still pending after several resubmissions, or (live)
    // nothing confirmed between the two reads while resubmissions went on.
    let chain = |s: &Snapshot, name: &str| s.sum(name, &[]);
    let (sent, confirmed) =
        (chain(now, "mlbridge_chain_tx_sent_total"), chain(now, "mlbridge_chain_tx_confirmed_total"));
    let resubmitted = chain(now, "mlbridge_chain_tx_resubmitted_total");
    let pending = sent - resubmitted - confirmed - chain(now, "mlbridge_chain_tx_dropped_total");
    let unredeemed = now.sum("mlbridge_unredeemed_wei", &[]);
    let stuck = match earlier {
        Some(e) => {
            resubmitted > chain(e, "mlbridge_chain_tx_resubmitted_total")
                && confirmed == chain(e, "mlbridge_chain_tx_confirmed_total")
        }
        None => resubmitted >= 3.0,
    };
    if pending >= 1.0 && stuck && unredeemed > 0.0 {
        out.push(Finding {
            symptom: "settlement_stuck",
            evidence: format!(
                "{sent:.0} transactions sent ({resubmitted:.0} of them resubmissions), {confirmed:.0} confirmed, \
                 {pending:.0} pending; {:.6} ETH accepted and not redeemed",
                unredeemed / 1e18
            ),
            cause: "redemptions are not mined: the fee cap is below the chain's base fee, the operator lacks ETH for gas, or the RPC drops them".into(),
            fix: "fund the operator account and check payment.rpc_url (the node re-sends with higher fees by itself); vouchers stay in the ledger until they are redeemed".into(),
        });
    }
    if now.has("mlbridge_chain_rpc_errors_total") && now.sum("mlbridge_chain_rpc_errors_total", &[]) >= 10.0 {
        out.push(Finding {
            symptom: "chain_rpc",
            evidence: format!("{:.0} chain RPC errors", now.sum("mlbridge_chain_rpc_errors_total", &[])),
            cause: "the RPC endpoint fails or rate-limits the node".into(),
            fix: "check payment.rpc_url, or use a provider with higher limits".into(),
        });
    }
    // (Only for a node on the p2p network: an HTTP-only node has no peers by design.)
    if now.sum("mlbridge_p2p_enabled", &[]) > 0.0 && now.sum("mlbridge_p2p_peers", &[]) == 0.0 {
        out.push(Finding {
            symptom: "no_peers",
            evidence: "0 libp2p peers connected".into(),
            cause: "no bootstrap peer reachable, or the p2p port is closed".into(),
            fix: "give --bootstrap addresses of running nodes, open the p2p listen port, check --p2p-listen".into(),
        });
    }
    out
}

/// The report a person reads: each finding with its numbers, cause and fix, or that nothing is wrong.
pub fn render(findings: &[Finding], checked: &str) -> String {
    let mut s = String::new();
    if findings.is_empty() {
        let _ = writeln!(s, "No problems found in {checked}.");
        return s;
    }
    let _ = writeln!(s, "{} problem(s) found in {checked}:\n", findings.len());
    for f in findings {
        let _ = writeln!(s, "[{}] {}\n  likely cause: {}\n  fix: {}\n", f.symptom, f.evidence, f.cause, f.fix);
    }
    s
}

/// Read the metrics at `url` (twice, `interval` apart, for the rates) and diagnose them.
pub async fn diagnose_live(
    url: &str,
    interval: std::time::Duration,
    context: Option<&Context>,
) -> crate::Result<Vec<Finding>> {
    let fetch = || async {
        let fail = |e: reqwest::Error| crate::Error::Network(format!("cannot read {url}: {e}; is the node running?"));
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().map_err(fail)?;
        let resp = client.get(url).send().await.map_err(fail)?.error_for_status().map_err(fail)?;
        Ok::<_, crate::Error>(Snapshot::parse(&resp.text().await.map_err(fail)?))
    };
    let earlier = fetch().await?;
    tokio::time::sleep(interval).await;
    let now = fetch().await?;
    Ok(diagnose(&now, Some(&earlier), context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(name: &str) -> Snapshot {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/doctor").join(name);
        Snapshot::parse(&std::fs::read_to_string(&path).unwrap())
    }

    fn symptoms(name: &str) -> Vec<&'static str> {
        diagnose(&snapshot(name), None, None).iter().map(|f| f.symptom).collect()
    }

    #[test]
    fn a_healthy_node_has_no_findings() {
        assert_eq!(symptoms("healthy.prom"), Vec::<&str>::new());
    }

    #[test]
    fn each_symptom_is_named_with_its_numbers() {
        let slow = diagnose(&snapshot("slow_queueing.prom"), None, None);
        assert_eq!(
            slow.iter().map(|f| f.symptom).collect::<Vec<_>>(),
            ["high_latency", "queue_saturated", "low_utilisation"]
        );
        assert!(slow[0].evidence.contains("minilm-l6/2: p99"), "{:?}", slow[0]);
        assert!(slow[0].cause.contains("wait longer in the queue"), "{:?}", slow[0]);
        assert_eq!(symptoms("no_batching.prom"), ["batching_not_forming"]);
        assert_eq!(symptoms("cache_cold.prom"), ["cache_not_hitting"]);
        assert_eq!(symptoms("memory.prom"), ["memory"]);
        let money = diagnose(&snapshot("settlement.prom"), None, None);
        assert_eq!(
            money.iter().map(|f| f.symptom).collect::<Vec<_>>(),
            ["payments_refused", "settlement_stuck", "no_peers"]
        );
        assert!(money[0].evidence.contains("unconfirmed 40"), "{:?}", money[0]);
        assert!(
            money[1].evidence.contains("6 transactions sent (4 of them resubmissions), 1 confirmed, 1 pending"),
            "{:?}",
            money[1]
        );
        let report = render(&money, "a snapshot");
        assert!(report.starts_with("3 problem(s) found") && report.contains("likely cause:"), "{report}");
    }

    #[test]
    fn with_the_config_the_fixes_name_the_current_settings() {
        let dir = tempfile::tempdir().unwrap();
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let config = dir.path().join("node.toml");
        std::fs::write(&config, format!("model_repository = {models:?}\n[cache]\ncapacity_mib = 48\n")).unwrap();
        let context = Context::load(&config).unwrap();
        let batching = diagnose(&snapshot("no_batching.prom"), None, Some(&context));
        assert!(
            batching[0].fix.contains("(now: max_batch_size 64, preferred_batch_size 64, max_queue_delay_us 0"),
            "{:?}",
            batching[0]
        );
        let cache = diagnose(&snapshot("cache_cold.prom"), None, Some(&context));
        assert!(cache[0].fix.contains("capacity_mib 48"), "{:?}", cache[0]);
    }

    #[test]
    fn the_parser_takes_timestamps_exemplars_and_odd_label_values() {
        let s = Snapshot::parse(concat!(
            "a_total{l=\"x y\",m=\"q\\\"}\"} 3 1700000000000\n",
            "b_total 4 # {trace_id=\"1\"} 1\n",
            "e_total{k=\"v\"} 6 # {trace_id=\"2\"} 1\n",
            "c{l=\"}\"} NaN\n",
            "d +Inf\n",
            "broken{l=\"x\" 5\n",
        ));
        assert_eq!(s.sum("a_total", &[("l", "x y")]), 3.0);
        assert_eq!(s.label_values("a_total", "m"), ["q\"}"]);
        assert_eq!(s.sum("b_total", &[]), 4.0);
        assert_eq!(s.sum("e_total", &[("k", "v")]), 6.0);
        assert!(s.sum("c", &[]).is_nan());
        assert_eq!(s.sum("d", &[]), f64::INFINITY);
        assert!(!s.has("broken"));
    }

    #[test]
    fn quantiles_follow_prometheus() {
        let s = Snapshot::parse(
            "x_bucket{model=\"m\",le=\"0.1\"} 50\nx_bucket{model=\"m\",le=\"1\"} 100\nx_bucket{model=\"m\",le=\"+Inf\"} 100\n",
        );
        assert_eq!(s.quantile("x", "m", 0.5), Some(0.1));
        assert!((s.quantile("x", "m", 0.99).unwrap() - 0.982).abs() < 1e-9);
        assert_eq!(s.quantile("x", "other", 0.5), None);
    }
}

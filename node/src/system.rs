//! System metrics next to the node's own: CPU use per core, memory (the machine's, and the cgroup limit a container
//! runs under), network bytes per interface. Sampled every few seconds on a blocking thread (`sysinfo` reads
//! `/proc`), so a scrape never waits for them. GPU utilisation would come from a GPU execution provider; this build
//! runs ONNX Runtime on the CPU only, so there is none to report.

use std::time::Duration;

use prometheus::{GaugeVec, IntCounterVec, IntGauge, Opts, Registry};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, Networks, RefreshKind, System};
use tokio_util::sync::CancellationToken;

/// The gauges and counters, registered in the node's registry.
#[derive(Clone, Debug)]
pub struct SystemMetrics {
    cpu: GaugeVec,
    memory_total: IntGauge,
    memory_available: IntGauge,
    memory_limit: IntGauge,
    received: IntCounterVec,
    transmitted: IntCounterVec,
}

impl SystemMetrics {
    /// Register the system metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            cpu: GaugeVec::new(
                Opts::new("mlbridge_system_cpu_usage_ratio", "CPU use per core over the last sample (0 to 1)"),
                &["cpu"],
            )?,
            memory_total: IntGauge::new("mlbridge_system_memory_total_bytes", "The machine's memory")?,
            memory_available: IntGauge::new(
                "mlbridge_system_memory_available_bytes",
                "Memory available to new allocations without swapping",
            )?,
            memory_limit: IntGauge::new(
                "mlbridge_system_memory_limit_bytes",
                "The memory this process may use: the cgroup (container) limit, else the machine's memory",
            )?,
            received: IntCounterVec::new(
                Opts::new("mlbridge_system_network_received_bytes_total", "Bytes received per network interface"),
                &["interface"],
            )?,
            transmitted: IntCounterVec::new(
                Opts::new("mlbridge_system_network_transmitted_bytes_total", "Bytes sent per network interface"),
                &["interface"],
            )?,
        };
        registry.register(Box::new(m.cpu.clone()))?;
        registry.register(Box::new(m.memory_total.clone()))?;
        registry.register(Box::new(m.memory_available.clone()))?;
        registry.register(Box::new(m.memory_limit.clone()))?;
        registry.register(Box::new(m.received.clone()))?;
        registry.register(Box::new(m.transmitted.clone()))?;
        Ok(m)
    }

    /// Sample every `every` until `shutdown`.
    pub fn spawn(self, every: Duration, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut state: Option<(System, Networks)> = None;
            loop {
                let metrics = self.clone();
                let previous = state.take();
                let sampled = tokio::task::spawn_blocking(move || {
                    let (mut system, mut networks) = previous.unwrap_or_else(|| {
                        // CPU use is measured between two reads: the first needs a short gap before it means anything.
                        let kinds = RefreshKind::nothing()
                            .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                            .with_memory(MemoryRefreshKind::nothing().with_ram());
                        let system = System::new_with_specifics(kinds);
                        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
                        (system, Networks::new_with_refreshed_list())
                    });
                    metrics.sample(&mut system, &mut networks);
                    (system, networks)
                })
                .await;
                match sampled {
                    Ok(s) => state = Some(s),
                    Err(err) => {
                        tracing::warn!(target: "node", %err, "system metrics sampling stopped");
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    fn sample(&self, system: &mut System, networks: &mut Networks) {
        system.refresh_cpu_usage();
        system.refresh_memory();
        networks.refresh(true);
        for (i, cpu) in system.cpus().iter().enumerate() {
            self.cpu.with_label_values(&[&i.to_string()]).set(f64::from(cpu.cpu_usage()) / 100.0);
        }
        let total = system.total_memory();
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.memory_total.set(to_i64(total));
        self.memory_available.set(to_i64(system.available_memory()));
        let limit = system.cgroup_limits().map_or(total, |c| c.total_memory.min(total));
        self.memory_limit.set(to_i64(limit));
        for (name, data) in networks.iter() {
            self.received.with_label_values(&[name]).inc_by(data.received());
            self.transmitted.with_label_values(&[name]).inc_by(data.transmitted());
        }
    }
}

//! A row of the throughput bench's JSON (`throughput.json`): one method's step on one path at
//! one size, against the copy kernel. Shared with the web demo's benchmark panel
//! (`crates/bloop-web`), whose rows are in the same format.

use bloop::{Config, Layout};
use serde::Serialize;

/// The median over rounds of `times[r] / base[r]`: how many times the base's time a recording
/// takes, from runs taken in the same rounds (one run of each per round).
pub fn paired_ratio(times: &[f64], base: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = times.iter().zip(base).map(|(t, b)| t / b).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The unfused baseline's time and bytes, and the host baselines' times.
pub type Baseline = (Stats, u64, Option<f64>, Option<f64>);

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Stats {
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    pub fn of(mut ms: Vec<f64>) -> Stats {
        ms.sort_by(f64::total_cmp);
        Stats { median_ms: ms[ms.len() / 2], min_ms: ms[0], max_ms: ms[ms.len() - 1] }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub adapter: String,
    pub backend: String,
    pub clock: String,
    pub method: &'static str,
    pub guard: bool,
    pub dtype: &'static str,
    pub ema_dtype: &'static str,
    pub layout: String,
    pub leaves: usize,
    pub path: &'static str,
    pub elements: u64,
    pub bytes_per_element: u64,
    #[serde(flatten)]
    pub stats: Stats,
    pub elements_per_s: f64,
    pub gbps: f64,
    /// The copy kernel's GB/s (its median run, timed before the methods).
    pub copy_gbps: f64,
    /// The step's GB/s over the copy kernel's: the median over rounds of runs of both taken side
    /// by side.
    pub roofline_fraction: f64,
    pub unfused_median_ms: f64,
    pub unfused_bytes_per_element: u64,
    pub fused_speedup: f64,
    pub cpu_f32_threads_ms: Option<f64>,
    pub cpu_f64_reference_ms: Option<f64>,
    /// Dispatches of each stage over tiles, per step.
    pub dispatches: usize,
    /// This path's time over the pool's: the median of the ratios of runs taken in turn.
    pub pool_ratio: f64,
}

/// What every row of one size shares.
pub struct Setting<'a> {
    pub adapter: &'a wgpu::AdapterInfo,
    /// How the times were taken.
    pub clock: &'a str,
    pub layout_name: &'a str,
    pub layout: &'a Layout,
    /// Bytes one run of the copy kernel reads and writes, and its GB/s (its median run).
    pub copy_bytes: u64,
    pub copy_gbps: f64,
}

/// One path of a step, timed in turn with the pool's path and the copy kernel.
pub struct Timed<'a> {
    pub path: &'static str,
    pub times: &'a [f64],
    pub pool_times: &'a [f64],
    pub copy_times: &'a [f64],
    pub dispatches: usize,
}

impl Row {
    /// The row of `timed`, a path of the step `config` under the name `method`; `baseline`
    /// where the method has the unfused and host ones.
    pub fn new(
        setting: &Setting,
        method: &'static str,
        config: &Config,
        timed: &Timed,
        baseline: Option<Baseline>,
    ) -> Row {
        let elements = setting.layout.total_elements();
        let stats = Stats::of(timed.times.to_vec());
        let bytes = config.bytes_per_element();
        let seconds = stats.median_ms / 1e3;
        let gbps = (bytes * elements) as f64 / seconds / 1e9;
        // Per round, the step's GB/s over the copy kernel's; the median of those.
        let step_bytes = (bytes * elements) as f64 / setting.copy_bytes as f64;
        let (unfused, unfused_bytes, cpu32, cpu64) = match baseline {
            Some((unfused, bytes, cpu32, cpu64)) => (unfused.median_ms, bytes, cpu32, cpu64),
            // NaN is written as null.
            None => (f64::NAN, 0, None, None),
        };
        Row {
            adapter: setting.adapter.name.clone(),
            backend: format!("{:?}", setting.adapter.backend),
            clock: setting.clock.to_string(),
            method,
            guard: config.guard,
            dtype: config.types.gradients.name(),
            ema_dtype: config.types.ema.name(),
            layout: setting.layout_name.to_string(),
            leaves: setting.layout.len(),
            path: timed.path,
            elements,
            bytes_per_element: bytes,
            stats,
            elements_per_s: elements as f64 / seconds,
            gbps,
            copy_gbps: setting.copy_gbps,
            roofline_fraction: paired_ratio(timed.copy_times, timed.times) * step_bytes,
            unfused_median_ms: unfused,
            unfused_bytes_per_element: unfused_bytes,
            fused_speedup: unfused / stats.median_ms,
            cpu_f32_threads_ms: cpu32,
            cpu_f64_reference_ms: cpu64,
            dispatches: timed.dispatches,
            pool_ratio: paired_ratio(timed.times, timed.pool_times),
        }
    }
}

//! The page's benchmark panel: each method's step through the library's pool and through user
//! buffers (one buffer of the user's per role), against the throughput bench's copy kernel as
//! the roof, in the bench's JSON rows. The web has no timestamp queries: a round records many
//! steps into one submit and takes the wall time until the queue reports it done.

use std::cell::Cell;
use std::sync::Arc;

use bloop::rng::SplitMix64;
use bloop::{
    BloopState, Config, EmaInits, ExternalGradients, GpuContext, GradientPool, Kernels, Layout, LeafBuffer, Method,
    Output,
};

use crate::copy::{storage_buffer, CopyKernel};
use crate::report::{Row, Setting, Stats, Timed};

/// The four methods as the bench names them (its f32 rows with the guard).
const METHODS: [(&str, Method); 4] = [
    ("bloop", Method::Bloop),
    ("dynamic_barrier", Method::DynamicBarrier),
    ("pcgrad", Method::PcGrad),
    ("mixed", Method::Mixed),
];

/// Warm-up rounds before the timed ones, one step of each: the first compiles the pipelines,
/// the second's times size the submits.
const WARM_UP: usize = 2;

/// The longest a submit should take, in ms: a browser may take a long submit for a hung GPU
/// and lose the device, so large sizes on a slow adapter get fewer steps per submit.
const SUBMIT_BUDGET_MS: f64 = 500.0;

#[derive(Clone, Copy)]
pub struct Timing {
    /// Steps (or copies) recorded into one submit, at most: fewer where a submit would take
    /// longer than [`SUBMIT_BUDGET_MS`].
    pub steps_per_submit: usize,
    /// Timed rounds; each times the copy kernel, the pool's step and the user buffers' step.
    pub reps: usize,
}

fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        use wasm_bindgen::JsCast;
        let global = js_sys::global();
        let performance = js_sys::Reflect::get(&global, &"performance".into()).unwrap_or_default();
        let now = js_sys::Reflect::get(&performance, &"now".into()).unwrap_or_default();
        match now.dyn_into::<js_sys::Function>() {
            Ok(now) => now.call0(&performance).ok().and_then(|v| v.as_f64()).unwrap_or_else(js_sys::Date::now),
            Err(_) => js_sys::Date::now(),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

/// Milliseconds per recording: `steps` recordings in one submit, the wall time until done.
async fn time_submit(gpu: &GpuContext, steps: usize, record: &mut dyn FnMut(&mut wgpu::CommandEncoder)) -> f64 {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    for _ in 0..steps {
        record(&mut encoder);
    }
    let start = now_ms();
    gpu.queue.submit([encoder.finish()]);
    crate::queue_done(&gpu.queue).await;
    (now_ms() - start) / steps as f64
}

fn random_leaf(gpu: &GpuContext, leaf: &LeafBuffer, rng: &mut SplitMix64) {
    let values: Vec<f32> = (0..leaf.len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&values));
}

/// The rows, size after size and method after method (`print` gets each as a line); `None`
/// when `stop` was set.
pub async fn run(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    log2_sizes: &[u32],
    timing: Timing,
    print: impl Fn(&str),
    stop: &Cell<bool>,
) -> bloop::Result<Option<Vec<Row>>> {
    let info = gpu.adapter.get_info();
    let mut rng = SplitMix64::new(1);
    let mut rows = Vec::new();
    for &k in log2_sizes {
        let elements = 1u64 << k;
        let layout = Layout::from_lengths(&[elements])?;
        let layout_name = format!("leaf 2^{k}");
        let copy = CopyKernel::new(&gpu.device, elements);
        let pool = GradientPool::new(&gpu.device, &layout, false)?;
        let user = |label| LeafBuffer::new(&storage_buffer(&gpu.device, label, elements * 4), 0, elements);
        let (main, aux, out) = (user("main"), user("aux"), user("out"));
        for leaf in pool.main_leaves().iter().chain(pool.aux_leaves()).chain([&main, &aux]) {
            random_leaf(gpu, leaf, &mut rng);
        }
        for (method, kind) in METHODS {
            let config = Config::new(kind).ema(0.01).lambda(0.5);
            let mut pool_state = BloopState::new(kernels, &gpu.queue, &layout, config, EmaInits::zeros())?;
            let pool_bindings = pool_state.bind_pool(&pool)?;
            let mut user_state = BloopState::new(kernels, &gpu.queue, &layout, config, EmaInits::zeros())?;
            let gradients = ExternalGradients {
                main: std::slice::from_ref(&main),
                aux: std::slice::from_ref(&aux),
                output: Output::Buffers(std::slice::from_ref(&out)),
            };
            let user_bindings = user_state.bind_external(&gradients)?;
            // One run of each per round, so a drifting machine moves all three alike.
            let (mut copy_ms, mut pool_ms, mut user_ms) = (Vec::new(), Vec::new(), Vec::new());
            let mut steps = 1;
            for round in 0..WARM_UP + timing.reps {
                if stop.get() {
                    return Ok(None);
                }
                let c = time_submit(gpu, steps, &mut |e| copy.record(e, None)).await;
                let mut failed = Ok(());
                let mut pool_step = |e: &mut wgpu::CommandEncoder| {
                    failed = failed.clone().and(pool_state.record_step(e, &pool_bindings).map_err(|e| e.to_string()))
                };
                let p = time_submit(gpu, steps, &mut pool_step).await;
                let mut user_step = |e: &mut wgpu::CommandEncoder| {
                    failed = failed.clone().and(user_state.record_step(e, &user_bindings).map_err(|e| e.to_string()))
                };
                let u = time_submit(gpu, steps, &mut user_step).await;
                failed.map_err(|message| bloop::Error::Gpu { during: "recording a timed step", message })?;
                // Round 0 compiles the pipelines; round 1's single steps size the submits.
                if round == 1 {
                    let slowest = c.max(p).max(u).max(1e-3);
                    steps = ((SUBMIT_BUDGET_MS / slowest) as usize).clamp(1, timing.steps_per_submit);
                }
                if round >= WARM_UP {
                    copy_ms.push(c);
                    pool_ms.push(p);
                    user_ms.push(u);
                }
            }
            let clock = format!("wall time over {steps} steps per submit");
            let setting = Setting {
                adapter: &info,
                clock: &clock,
                layout_name: &layout_name,
                layout: &layout,
                copy_bytes: copy.bytes,
                copy_gbps: copy.gbps(Stats::of(copy_ms.clone()).median_ms),
            };
            for (path, times, bindings) in [("pool", &pool_ms, &pool_bindings), ("per-leaf", &user_ms, &user_bindings)]
            {
                let timed = Timed {
                    path,
                    times,
                    pool_times: &pool_ms,
                    copy_times: &copy_ms,
                    dispatches: bindings.dispatch_count(),
                };
                let row = Row::new(&setting, method, &config, &timed, None);
                print(&format!(
                    "{layout_name} {method} {path}: {:.4} ms per step, {:.2} GB/s, {:.2} of the copy kernel's {:.2} GB/s",
                    row.stats.median_ms, row.gbps, row.roofline_fraction, row.copy_gbps
                ));
                rows.push(row);
            }
        }
    }
    Ok(Some(rows))
}

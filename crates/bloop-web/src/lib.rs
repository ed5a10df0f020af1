//! The paper's quadratic experiment live in the browser, on the visitor's GPU through WebGPU,
//! and a throughput panel: the wasm32 side of the page in `www/` (built by `build.sh`).
//!
//! The training is the native example's own code (`examples/quadratics`: the problem, the
//! trainer's WGSL kernels, BLOOP's state and the fused SGD step, one async loop), included
//! here by path, so the page's losses are the native run's at the same seed and epochs.

mod bench;
#[path = "../../../benches/throughput/copy.rs"]
mod copy;
#[allow(dead_code)] // the host reference and the constants serve the native example
#[path = "../../../examples/quadratics/experiment.rs"]
mod experiment;
#[path = "../../../benches/throughput/report.rs"]
mod report;
#[path = "../../../examples/quadratics/summary.rs"]
mod summary;
#[allow(dead_code)] // the blocking forms are the native example's
#[path = "../../../examples/quadratics/trainer.rs"]
mod trainer;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use bloop::{GpuContext, Kernels};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use experiment::{batch_order, runs_at, History, Problem, Run, STEPS_PER_EPOCH};
use summary::{RunResult, Summary};
use trainer::{train, Plan, SgdStep};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(message: &str);
}

/// `logspace(-3, 3, 10)`, the sweep's lambdas (the native example's grid).
#[wasm_bindgen]
pub fn lambda_grid() -> Vec<f64> {
    experiment::lambda_grid()
}

/// The methods in the order of the native example's runs.
#[wasm_bindgen]
pub fn method_names() -> Vec<String> {
    runs_at(1.0).iter().map(|r| r.name.to_string()).collect()
}

/// The device the page trains on, the results of the runs that finished (for the Pareto front
/// and the summary), and the stop button's flag.
#[wasm_bindgen]
pub struct Demo {
    inner: Rc<Inner>,
}

struct Inner {
    gpu: GpuContext,
    kernels: Arc<Kernels>,
    stop: Cell<bool>,
    busy: Cell<bool>,
    /// Finished runs of the current seed and epochs, one per method and lambda.
    results: RefCell<Vec<RunResult>>,
    /// The seed and epochs of `results`; other values clear them.
    results_of: Cell<(u32, u32)>,
}

/// One run's losses after every epoch so far, as the page draws them.
#[derive(Serialize)]
struct Curve<'a> {
    method: &'a str,
    lambda: f64,
    main: &'a [f64],
    aux: &'a [f64],
}

fn curves_json(runs: &[Run], histories: &[History]) -> String {
    let curves: Vec<Curve> = runs
        .iter()
        .zip(histories)
        .map(|(r, h)| Curve { method: r.name, lambda: r.config.lambda, main: &h.main, aux: &h.aux })
        .collect();
    serde_json::to_string(&curves).unwrap_or_default()
}

fn js_error(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

#[wasm_bindgen]
impl Demo {
    /// Opens the browser's WebGPU adapter with its own limits; rejects with the reason (no
    /// `navigator.gpu`, no adapter, no device) where there is none.
    pub async fn open() -> Result<Demo, JsError> {
        std::panic::set_hook(Box::new(|info| console_error(&info.to_string())));
        let gpu = GpuContext::from_env_async().await.map_err(|e| JsError::new(&e.to_string()))?;
        let kernels = Kernels::new(&gpu.device);
        let inner = Inner {
            gpu,
            kernels,
            stop: Cell::new(false),
            busy: Cell::new(false),
            results: RefCell::new(Vec::new()),
            results_of: Cell::new((u32::MAX, u32::MAX)),
        };
        Ok(Demo { inner: Rc::new(inner) })
    }

    /// The adapter as wgpu sees it (name, back-end) and the device's limits that the kernels
    /// meet, as JSON.
    pub fn adapter(&self) -> String {
        let info = self.inner.gpu.adapter.get_info();
        let limits = self.inner.gpu.device.limits();
        serde_json::json!({
            "name": info.name,
            "backend": format!("{:?}", info.backend),
            "reduction": if self.inner.kernels.uses_subgroups() { "subgroups" } else { "shared-memory tree" },
            "limits": {
                "storage buffers per stage": limits.max_storage_buffers_per_shader_stage,
                "invocations per workgroup": limits.max_compute_invocations_per_workgroup,
                "workgroup storage (KiB)": limits.max_compute_workgroup_storage_size / 1024,
                "storage binding (MiB)": limits.max_storage_buffer_binding_size >> 20,
                "buffer (MiB)": limits.max_buffer_size >> 20,
            }
        })
        .to_string()
    }

    /// Asks the training or benchmark under way to stop after its current submit.
    pub fn stop(&self) {
        self.inner.stop.set(true);
    }

    /// Trains `method` (a name from [`method_names`], or `all`) at `lambda` for `epochs` epochs
    /// from `seed`'s problem and batch order (as `--seed` natively), recording
    /// `epochs_per_submit` epochs into each submit and awaiting each before the next, so the
    /// page keeps drawing. `progress(epoch, curves)` gets the losses read back so far as JSON.
    /// Resolves to the finished curves as JSON, or `null` when stopped; a finished run's result
    /// joins [`Demo::summary`].
    pub async fn train(
        &self,
        method: String,
        lambda: f64,
        epochs: u32,
        seed: u32,
        epochs_per_submit: u32,
        progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let inner = &self.inner;
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(js_error(format!("lambda must be a finite number >= 0, not {lambda}")));
        }
        if !(1..=100_000).contains(&epochs) {
            return Err(js_error(format!("epochs must be 1 to 100000, not {epochs}")));
        }
        let runs: Vec<Run> = runs_at(lambda).into_iter().filter(|r| method == "all" || r.name == method).collect();
        if runs.is_empty() {
            return Err(js_error(format!("no method `{method}`: one of {:?} or `all`", method_names())));
        }
        if inner.busy.replace(true) {
            return Err(js_error("a training or benchmark is already running"));
        }
        inner.stop.set(false);
        let epochs = epochs as usize;
        let problem = Problem::generate(seed as u64);
        let order = batch_order(seed as u64 + 1, epochs);
        let plan = Plan {
            problem: &problem,
            order: &order,
            runs: &runs,
            epochs,
            sgd_step: SgdStep::Fused,
            epochs_per_submit: epochs_per_submit.max(1) as usize,
        };
        let show = |epoch: usize, histories: &[History]| {
            let curves = JsValue::from_str(&curves_json(&runs, histories));
            let _ = progress.call2(&JsValue::NULL, &JsValue::from(epoch as u32), &curves);
        };
        let trained = train(&inner.gpu, &inner.kernels, plan, show, || submitted_work_done(inner)).await;
        inner.busy.set(false);
        let Some(histories) = trained.map_err(js_error)? else { return Ok(JsValue::NULL) };
        if inner.results_of.replace((seed, epochs as u32)) != (seed, epochs as u32) {
            inner.results.borrow_mut().clear();
        }
        let mut results = inner.results.borrow_mut();
        for (run, history) in runs.iter().zip(&histories) {
            results.retain(|r| !(r.method == run.name && r.lambda == lambda));
            results.push(RunResult::new(run, history));
        }
        // The native example's order: by lambda, then by method.
        let rank = |name: &str| method_names().iter().position(|m| m == name);
        results.sort_by(|a, b| a.lambda.total_cmp(&b.lambda).then(rank(a.method).cmp(&rank(b.method))));
        Ok(JsValue::from_str(&curves_json(&runs, &histories)))
    }

    /// The finished runs of the current seed and epochs (each method's best point per lambda,
    /// its final losses, how BLOOP's points stand) as the native example's `summary.json`.
    pub fn summary(&self) -> String {
        let (seed, epochs) = self.inner.results_of.get();
        let results = self.inner.results.borrow().clone();
        let summary = Summary::new(self.inner.gpu.adapter.get_info().name, seed as u64, epochs as usize, results);
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    }

    /// Forgets the finished runs (a new sweep).
    pub fn clear(&self) {
        self.inner.results.borrow_mut().clear();
    }

    /// SGD steps per epoch (mini-batches of 64 of the 256 rows).
    pub fn steps_per_epoch(&self) -> u32 {
        STEPS_PER_EPOCH as u32
    }

    /// Times each method's step through the pool and through user buffers at each size
    /// `2^k`, `k` in `log2_sizes`, against the copy kernel: `steps_per_submit` steps recorded
    /// into one submit, the wall time until the queue reports it done, over `reps` rounds taken
    /// in turn. `progress(line)` gets a line per row. Resolves to the rows as JSON in the
    /// throughput bench's format (`benches/throughput`), or `null` when stopped.
    pub async fn bench(
        &self,
        log2_sizes: Vec<u32>,
        steps_per_submit: u32,
        reps: u32,
        progress: js_sys::Function,
    ) -> Result<JsValue, JsValue> {
        let inner = &self.inner;
        if let Some(bad) = log2_sizes.iter().find(|k| !(4..=28).contains(*k)) {
            return Err(js_error(format!("sizes are 2^4 to 2^28 elements, not 2^{bad}")));
        }
        if steps_per_submit == 0 || reps == 0 {
            return Err(js_error("steps per submit and rounds must be at least 1"));
        }
        if inner.busy.replace(true) {
            return Err(js_error("a training or benchmark is already running"));
        }
        inner.stop.set(false);
        let print = |line: &str| {
            let _ = progress.call1(&JsValue::NULL, &JsValue::from_str(line));
        };
        let timing = bench::Timing { steps_per_submit: steps_per_submit as usize, reps: reps as usize };
        let rows = bench::run(&inner.gpu, &inner.kernels, &log2_sizes, timing, print, &inner.stop).await;
        inner.busy.set(false);
        match rows.map_err(js_error)? {
            Some(rows) => Ok(JsValue::from_str(&serde_json::to_string_pretty(&rows).map_err(js_error)?)),
            None => Ok(JsValue::NULL),
        }
    }
}

/// What the training loop awaits after each submit: the queue's report that the submit is done
/// (the event loop runs meanwhile, so the page draws and the losses' mappings land), then
/// whether the stop button was pressed.
async fn submitted_work_done(inner: &Inner) -> bloop::Result<bool> {
    queue_done(&inner.gpu.queue).await;
    Ok(!inner.stop.get())
}

/// Resolves once the GPU has finished everything submitted to `queue` so far.
pub(crate) async fn queue_done(queue: &wgpu::Queue) {
    let (sender, receiver) = futures::channel::oneshot::channel();
    queue.on_submitted_work_done(move || {
        let _ = sender.send(());
    });
    let _ = receiver.await;
}

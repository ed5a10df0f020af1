//! Golden cases: scenarios computed by the paper authors' reference implementation, in the
//! format of `tests/golden/README.md`, and the runner that replays them through the public
//! API (on the GPU over the pool or over external buffers, or on the CPU reference).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{Config, EmaInit, EmaInits, Method, Order};
use crate::dtype::{DType, ElementTypes};
use crate::error::Result;
use crate::kernels::Kernels;
use crate::layout::{Layout, LeafBuffer};
use crate::pool::GradientPool;
use crate::readback::read_leaves_async;
use crate::reference::{relative_error, widen, Leaves, ReferenceState};
use crate::state::{BloopState, EmaRole, ExternalGradients, Output};

/// Largest relative error a float32 implementation may show on any step.
pub const F32_BOUND: f64 = 1e-5;

/// The bound for a storage configuration: half-precision runs are judged against the f64
/// reference on the same rounded inputs (and with its averages rounded as they are stored),
/// so what is left is the rounding of what the GPU writes: at most half an ulp per element,
/// 2^-11 relative for f16 and 2^-8 for bf16, with room for a few values that round the
/// other way after f32 arithmetic.
pub fn bound(types: ElementTypes) -> f64 {
    let written = |d: DType| match d {
        DType::F32 => F32_BOUND,
        DType::F16 => 1e-3,
        DType::Bf16 => 8e-3,
    };
    written(types.output).max(written(types.ema))
}

/// The hyperparameters of a golden case.
#[derive(Clone, Debug, Deserialize)]
pub struct CaseConfig {
    /// EMA rate.
    pub ema: f64,
    /// Weight of the auxiliary gradient (absent for a hierarchy).
    #[serde(default)]
    pub lambda: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Whether the direction is scaled by `1 / (1 + lambda)`.
    pub rescale: bool,
    /// Whether the projection is applied as a scalar on the main gradient.
    pub ratio_only: bool,
    /// `update_first` (the default when absent) or `project_first`.
    #[serde(default)]
    pub order: Option<String>,
    /// A hierarchy's weights, in priority order.
    #[serde(default)]
    pub lambdas: Option<Vec<f64>>,
}

/// The averages a golden case starts from.
#[derive(Clone, Debug, Deserialize)]
pub struct CaseInit {
    /// Initial main-gradient average, per leaf (absent for a hierarchy).
    #[serde(default)]
    pub main_ema: Leaves,
    /// Initial aux-gradient average (`pcgrad` only).
    pub aux_ema: Option<Leaves>,
    /// A hierarchy's initial averages `e_0 .. e_{k-1}`.
    #[serde(default)]
    pub emas: Option<Vec<Leaves>>,
}

/// One step of a golden case: its inputs and the expected results.
#[derive(Clone, Debug, Deserialize)]
pub struct CaseStep {
    /// Main gradient, per leaf (absent for a hierarchy).
    #[serde(default)]
    pub grad_main: Leaves,
    /// Auxiliary gradient, per leaf (absent for a hierarchy).
    #[serde(default)]
    pub grad_aux: Leaves,
    /// Expected direction.
    pub direction: Leaves,
    /// Expected main average after the step (absent for a hierarchy).
    #[serde(default)]
    pub main_ema: Leaves,
    /// Expected aux average after the step (`pcgrad` only).
    pub aux_ema: Option<Leaves>,
    /// A hierarchy's gradients `g_0 .. g_k`.
    #[serde(default)]
    pub grads: Option<Vec<Leaves>>,
    /// A hierarchy's expected averages after the step.
    #[serde(default)]
    pub emas: Option<Vec<Leaves>>,
}

/// One scenario: a method, its config, a layout, initial averages and steps to replay.
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    /// The case's file name.
    pub name: String,
    /// Method name (see `Method::from_name`).
    pub method: String,
    /// Hyperparameters.
    pub config: CaseConfig,
    /// Element count of every leaf.
    pub leaf_sizes: Vec<u64>,
    /// Initial averages.
    pub init: CaseInit,
    /// Steps in order.
    pub steps: Vec<CaseStep>,
}

impl Case {
    /// Reads a case from its JSON file; the message names what is wrong.
    pub fn from_file(path: &Path) -> std::result::Result<Case, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Case::from_json(&path.display().to_string(), &text)
    }

    /// Reads a case from the text of its JSON file (hosts without files, such as wasm, read
    /// it themselves); `source` names it in the message.
    pub fn from_json(source: &str, text: &str) -> std::result::Result<Case, String> {
        let case: Case = serde_json::from_str(text).map_err(|e| format!("{source}: {e}"))?;
        case.config().map_err(|e| format!("{source}: {e}"))?;
        Ok(case)
    }

    /// The case's config, validated like any other.
    pub fn config(&self) -> Result<Config> {
        let method = Method::from_name(&self.method).ok_or_else(|| crate::Error::InvalidConfig {
            field: "method",
            problem: format!("`{}` is not bloop, dynamic_barrier, pcgrad, mixed or hierarchy", self.method),
        })?;
        let c = &self.config;
        let ratio_only = c.ratio_only && matches!(method, Method::Bloop | Method::DynamicBarrier);
        let order = match &c.order {
            None => Order::UpdateFirst,
            Some(name) => Order::from_name(name).ok_or_else(|| crate::Error::InvalidConfig {
                field: "order",
                problem: format!("`{name}` is not update_first or project_first"),
            })?,
        };
        let config = Config::new(method)
            .ema(c.ema)
            .lambda(c.lambda)
            .eps(c.eps)
            .rescale(c.rescale)
            .ratio_only(ratio_only)
            .order(order)
            .lambdas(c.lambdas.as_deref().filter(|_| method == Method::Hierarchy).unwrap_or(&[]));
        config.validate()?;
        Ok(config)
    }

    fn initial_aux(&self) -> &Leaves {
        self.init.aux_ema.as_ref().unwrap_or(&self.init.main_ema)
    }
}

/// Every `*.json` file of the folders, sorted by path.
pub fn load_cases(dirs: &[PathBuf]) -> std::result::Result<Vec<(PathBuf, Case)>, String> {
    let mut paths = Vec::new();
    for dir in dirs {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    paths.into_iter().map(|p| Case::from_file(&p).map(|c| (p, c))).collect()
}

/// How the GPU run receives its gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientPath {
    /// The library's pool.
    Pool,
    /// User-owned buffers: main and aux interleaved in one flat buffer, outputs in another,
    /// leaves at unaligned element offsets with 0 to 3 guard elements between them.
    External,
    /// Main, aux and output leaves interleaved in one flat buffer (the inputs are then bound
    /// writable); needs the output in the gradients' type.
    SharedBuffer,
}

/// Worst relative error over the steps of a case, per output.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CaseReport {
    /// Worst relative error of the direction.
    pub direction: f64,
    /// Worst relative error of the main average, where the method keeps one.
    pub main_ema: Option<f64>,
    /// Worst relative error of the aux average, where the method keeps one.
    pub aux_ema: Option<f64>,
    /// Output elements outside every leaf that changed (external path only).
    pub corrupted_guards: usize,
}

impl CaseReport {
    /// The worst relative error over every output.
    pub fn worst(&self) -> f64 {
        self.direction.max(self.main_ema.unwrap_or(0.0)).max(self.aux_ema.unwrap_or(0.0))
    }

    /// Whether every error is within `bound` and no guard word changed.
    pub fn passes(&self, bound: f64) -> bool {
        self.worst() <= bound && self.corrupted_guards == 0
    }

    fn record(&mut self, which: &str, error: f64) {
        let slot = match which {
            "direction" => return self.direction = self.direction.max(error),
            "main" => &mut self.main_ema,
            _ => &mut self.aux_ema,
        };
        *slot = Some(slot.unwrap_or(0.0).max(error));
    }
}

/// Replays a case on the CPU reference.
pub fn run_reference(case: &Case) -> std::result::Result<CaseReport, String> {
    let config = case.config().map_err(|e| e.to_string())?;
    if config.method == Method::Hierarchy {
        return run_hierarchy_reference(case, config);
    }
    let main = if config.method.has_main_ema() { case.init.main_ema.clone() } else { vec![] };
    let aux = if config.method.has_aux_ema() { case.initial_aux().clone() } else { vec![] };
    let mut state = ReferenceState::new(config, main, aux);
    let mut report = CaseReport::default();
    for step in &case.steps {
        let direction = state.step(&step.grad_main, &step.grad_aux);
        report.record("direction", relative_error(&direction, &step.direction));
        if config.method.has_main_ema() {
            report.record("main", relative_error(&state.main_ema, &step.main_ema));
        }
        if let (true, Some(expected)) = (config.method.has_aux_ema(), &step.aux_ema) {
            report.record("aux", relative_error(&state.aux_ema, expected));
        }
    }
    Ok(report)
}

/// Guard value written around external leaves (as each type stores it); any change to it is
/// corruption.
const GUARD: f32 = -1234.0;

/// A user-style flat buffer: leaves of one element type at unaligned element offsets (16-bit
/// leaves may share a word with a neighbour), guards between them, and a host copy of its
/// bytes so leaves that do not start on a word boundary can be written.
struct Flat {
    buffer: wgpu::Buffer,
    bytes: Vec<u8>,
    dtype: DType,
    /// Per role: one leaf per layout leaf.
    roles: Vec<Vec<LeafBuffer>>,
}

/// Writes one step into user-style buffers: `grads[r]` into the inputs' role r, NaN into the
/// outputs (in the inputs' host copy where they share a buffer, which then has no bytes of its
/// own), and uploads them.
fn write_external_step(
    queue: &wgpu::Queue,
    inputs: &mut Flat,
    outputs: &mut Flat,
    grads: &[&[Vec<f32>]],
    nan: &[Vec<f32>],
) {
    for (role, values) in grads.iter().enumerate() {
        for (leaf, v) in inputs.roles[role].clone().iter().zip(values.iter()) {
            inputs.set(leaf, v);
        }
    }
    let out_leaves = outputs.roles[0].clone();
    let target = if outputs.bytes.is_empty() { &mut *inputs } else { &mut *outputs };
    for (leaf, v) in out_leaves.iter().zip(nan) {
        target.set(leaf, v);
    }
    inputs.upload(queue);
    if !outputs.bytes.is_empty() {
        outputs.upload(queue);
    }
}

impl Flat {
    fn new(device: &wgpu::Device, sizes: &[u64], roles: usize, dtype: DType, label: &str) -> Flat {
        let mut at = 0u64;
        let mut places = vec![Vec::new(); roles];
        for (i, &len) in sizes.iter().enumerate() {
            for (r, place) in places.iter_mut().enumerate() {
                at += ((i * 5 + r * 3) % 4) as u64; // 0 to 3 guard elements: neighbours may share a word
                place.push((at, len));
                at += len;
            }
        }
        let size = ((at + 3) * dtype.size()).next_multiple_of(4);
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: crate::pool::POOL_USAGE,
            mapped_at_creation: false,
        });
        let guard = dtype.encode(&[GUARD]);
        let bytes = guard.iter().copied().cycle().take(size as usize).collect();
        let roles = places
            .into_iter()
            .map(|p| p.iter().map(|&(o, n)| LeafBuffer::typed(&buffer, o * dtype.size(), n, dtype)).collect())
            .collect();
        Flat { buffer, bytes, dtype, roles }
    }

    fn set(&mut self, leaf: &LeafBuffer, values: &[f32]) {
        let at = leaf.offset as usize;
        let encoded = self.dtype.encode(values);
        self.bytes[at..at + encoded.len()].copy_from_slice(&encoded);
    }

    fn upload(&self, queue: &wgpu::Queue) {
        queue.write_buffer(&self.buffer, 0, &self.bytes);
    }

    /// Elements outside every leaf (its own and `more`) that no longer hold the guard.
    async fn corrupted(&self, device: &wgpu::Device, queue: &wgpu::Queue, more: &[Vec<LeafBuffer>]) -> Result<usize> {
        let size = self.dtype.size();
        let whole = LeafBuffer::typed(&self.buffer, 0, self.bytes.len() as u64 / size, self.dtype);
        let after = &read_leaves_async(device, queue, &[whole]).await?[0];
        let mut inside = vec![false; after.len()];
        for leaf in self.roles.iter().chain(more).flatten() {
            let start = (leaf.offset / size) as usize;
            inside[start..start + leaf.len as usize].fill(true);
        }
        let guard = self.dtype.round(GUARD).to_bits();
        Ok(after.iter().zip(&inside).filter(|(v, inside)| !**inside && v.to_bits() != guard).count())
    }
}

/// Replays a case through the public GPU API and measures every step against the case.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_gpu(kernels: &Arc<Kernels>, queue: &wgpu::Queue, case: &Case, path: GradientPath) -> Result<CaseReport> {
    run_gpu_typed(kernels, queue, case, path, ElementTypes::default())
}

/// [`run_gpu`] with gradients, output and averages stored as `types` says. The case's inputs
/// and initial averages are rounded to their storage types; with any 16-bit storage the
/// expected values come from the f64 reference on those rounded inputs (averages rounded as
/// stored), judged against [`bound`].
#[cfg(not(target_arch = "wasm32"))]
pub fn run_gpu_typed(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    path: GradientPath,
    types: ElementTypes,
) -> Result<CaseReport> {
    pollster::block_on(run_gpu_typed_async(kernels, queue, case, path, types))
}

/// [`run_gpu_typed`] as a future (the form for wasm, where readbacks are awaited).
pub async fn run_gpu_typed_async(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    path: GradientPath,
    types: ElementTypes,
) -> Result<CaseReport> {
    run_gpu_inner(kernels, queue, case, path, types, &|c| c).await
}

/// [`run_gpu`] over the pool with the case's config changed by `tweak` (switches that must not
/// change the results, such as the guard or diagnostics).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_gpu_with(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    tweak: impl Fn(Config) -> Config,
) -> Result<CaseReport> {
    pollster::block_on(run_gpu_inner(kernels, queue, case, GradientPath::Pool, ElementTypes::default(), &tweak))
}

async fn run_gpu_inner(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    path: GradientPath,
    types: ElementTypes,
    tweak: &dyn Fn(Config) -> Config,
) -> Result<CaseReport> {
    let device = kernels.device();
    let config = tweak(case.config()?.types(types));
    if config.method == Method::Hierarchy {
        return run_hierarchy_gpu(kernels, queue, case, path, config).await;
    }
    let layout = Layout::from_lengths(&case.leaf_sizes)?;
    let round = |leaves: &[Vec<f64>], d: DType| -> Vec<Vec<f32>> {
        leaves.iter().map(|l| l.iter().map(|&x| d.round(x as f32)).collect()).collect()
    };
    let (init_main, init_aux) = (round(&case.init.main_ema, types.ema), round(case.initial_aux(), types.ema));
    let inits = EmaInits { main: EmaInit::Values(init_main.clone()), aux: EmaInit::Values(init_aux.clone()) };
    let mut state = BloopState::new(kernels, queue, &layout, config, inits)?;
    // f32 storage is judged against the case itself; 16-bit storage against the reference.
    let mut reference = (types != ElementTypes::default()).then(|| {
        let kept = |on: bool, v: &[Vec<f32>]| if on { widen(v) } else { vec![] };
        ReferenceState::new(
            config,
            kept(config.method.has_main_ema(), &init_main),
            kept(config.method.has_aux_ema(), &init_aux),
        )
    });
    let (bindings, pool, mut inputs, mut outputs) = match path {
        GradientPath::Pool => {
            let pool = GradientPool::typed(device, &layout, false, types)?;
            (state.bind_pool(&pool)?, Some(pool), None, None)
        }
        GradientPath::SharedBuffer => {
            let mut shared = Flat::new(device, &case.leaf_sizes, 3, types.gradients, "conformance shared");
            let out = shared.roles.pop().unwrap();
            let bindings = state.bind_external(&ExternalGradients {
                main: &shared.roles[0],
                aux: &shared.roles[1],
                output: Output::Buffers(&out),
            })?;
            // The output role lives in the same buffer: one host copy serves both.
            let outputs =
                Flat { buffer: shared.buffer.clone(), bytes: Vec::new(), dtype: shared.dtype, roles: vec![out] };
            (bindings, None, Some(shared), Some(outputs))
        }
        GradientPath::External => {
            let inputs = Flat::new(device, &case.leaf_sizes, 2, types.gradients, "conformance inputs");
            let outputs = Flat::new(device, &case.leaf_sizes, 1, types.output, "conformance outputs");
            let bindings = state.bind_external(&ExternalGradients {
                main: &inputs.roles[0],
                aux: &inputs.roles[1],
                output: Output::Buffers(&outputs.roles[0]),
            })?;
            (bindings, None, Some(inputs), Some(outputs))
        }
    };
    let mut report = CaseReport::default();
    let nan: Vec<Vec<f32>> = layout.lengths().iter().map(|&n| vec![f32::NAN; n as usize]).collect();
    for step in &case.steps {
        let (g_main, g_aux) = (round(&step.grad_main, types.gradients), round(&step.grad_aux, types.gradients));
        // NaN where the outputs go: stale or skipped outputs show.
        match (&pool, &mut inputs, &mut outputs) {
            (Some(pool), _, _) => {
                crate::readback::write_leaves(queue, pool.main_leaves(), &g_main);
                crate::readback::write_leaves(queue, pool.aux_leaves(), &g_aux);
                crate::readback::write_leaves(queue, pool.output_leaves(), &nan);
            }
            (None, Some(inputs), Some(outputs)) => {
                write_external_step(queue, inputs, outputs, &[&g_main, &g_aux], &nan);
            }
            _ => unreachable!("one of the two paths"),
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings)?;
        queue.submit([encoder.finish()]);

        let expected = match &mut reference {
            Some(reference) => {
                let direction = reference.step(&widen(&g_main), &widen(&g_aux));
                (direction, reference.main_ema.clone(), Some(reference.aux_ema.clone()))
            }
            None => (step.direction.clone(), step.main_ema.clone(), step.aux_ema.clone()),
        };
        let direction = widen(&read_leaves_async(device, queue, bindings.output_leaves()).await?);
        report.record("direction", relative_error(&direction, &expected.0));
        if config.method.has_main_ema() {
            let ema = widen(&state.read_ema_async(EmaRole::Main).await?);
            report.record("main", relative_error(&ema, &expected.1));
        }
        if let (true, Some(expected)) = (config.method.has_aux_ema(), &expected.2) {
            let ema = widen(&state.read_ema_async(EmaRole::Aux).await?);
            report.record("aux", relative_error(&ema, expected));
        }
        if let (Some(inputs), Some(outputs)) = (&inputs, &outputs) {
            report.corrupted_guards += inputs.corrupted(device, queue, &outputs.roles).await?;
            if !outputs.bytes.is_empty() {
                report.corrupted_guards += outputs.corrupted(device, queue, &[]).await?;
            }
        }
    }
    Ok(report)
}

/// Per step of a hierarchy case: its gradients and expected averages.
type HierarchySteps<'a> = Vec<(&'a Vec<Leaves>, &'a Vec<Leaves>)>;

fn hierarchy_parts(case: &Case) -> std::result::Result<(&Vec<Leaves>, HierarchySteps<'_>), String> {
    let init = case.init.emas.as_ref().ok_or("a hierarchy case needs `init.emas`")?;
    let steps = case
        .steps
        .iter()
        .map(|s| Ok((s.grads.as_ref().ok_or("a hierarchy step needs `grads`")?, s.emas.as_ref().ok_or("no `emas`")?)))
        .collect::<std::result::Result<Vec<_>, &str>>()?;
    Ok((init, steps))
}

/// Worst relative error over the averages of a hierarchy (recorded as the main average's).
fn record_emas(report: &mut CaseReport, got: &[Leaves], expected: &[Leaves]) {
    for (g, e) in got.iter().zip(expected) {
        report.record("main", relative_error(g, e));
    }
}

fn run_hierarchy_reference(case: &Case, config: Config) -> std::result::Result<CaseReport, String> {
    let (init, steps) = hierarchy_parts(case)?;
    let mut state = crate::hierarchy::HierarchyReference::new(config, init.clone());
    let mut report = CaseReport::default();
    for (step, (grads, emas)) in case.steps.iter().zip(steps) {
        let direction = state.step(grads);
        report.record("direction", relative_error(&direction, &step.direction));
        record_emas(&mut report, &state.emas, emas);
    }
    Ok(report)
}

/// A hierarchy case on the GPU: k + 1 gradients per leaf in the pool, or interleaved in one
/// flat user buffer (outputs in another) for the external path. 16-bit storage is judged
/// against the f64 reference on the rounded inputs, as for the other methods.
async fn run_hierarchy_gpu(
    kernels: &Arc<Kernels>,
    queue: &wgpu::Queue,
    case: &Case,
    path: GradientPath,
    config: Config,
) -> Result<CaseReport> {
    let device = kernels.device();
    let types = config.types;
    let bad = |e: String| crate::Error::InvalidConfig { field: "case", problem: e };
    let (init, steps) = hierarchy_parts(case).map_err(bad)?;
    let layout = Layout::from_lengths(&case.leaf_sizes)?;
    let k = config.levels;
    let round = |leaves: &[Vec<f64>], d: DType| -> Vec<Vec<f32>> {
        leaves.iter().map(|l| l.iter().map(|&x| d.round(x as f32)).collect()).collect()
    };
    let inits: Vec<Vec<Vec<f32>>> = init.iter().map(|e| round(e, types.ema)).collect();
    let mut state = BloopState::new_hierarchy(
        kernels,
        queue,
        &layout,
        config,
        inits.iter().map(|v| EmaInit::Values(v.clone())).collect(),
    )?;
    let mut reference = (types != ElementTypes::default())
        .then(|| crate::hierarchy::HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect()));
    let (bindings, pool, mut inputs, mut outputs) = match path {
        GradientPath::Pool => {
            let pool = GradientPool::hierarchy(device, &layout, k, false, types)?;
            (state.bind_pool(&pool)?, Some(pool), None, None)
        }
        GradientPath::SharedBuffer => {
            // Gradients and outputs interleaved in one buffer (the inputs are bound writable).
            let mut shared = Flat::new(device, &case.leaf_sizes, k + 2, types.gradients, "conformance shared");
            let out = shared.roles.pop().unwrap_or_default();
            let gradients: Vec<&[LeafBuffer]> = shared.roles.iter().map(Vec::as_slice).collect();
            let bindings = state.bind_hierarchy(&gradients, Output::Buffers(&out))?;
            let outputs =
                Flat { buffer: shared.buffer.clone(), bytes: Vec::new(), dtype: shared.dtype, roles: vec![out] };
            (bindings, None, Some(shared), Some(outputs))
        }
        GradientPath::External => {
            let inputs = Flat::new(device, &case.leaf_sizes, k + 1, types.gradients, "conformance inputs");
            let outputs = Flat::new(device, &case.leaf_sizes, 1, types.output, "conformance outputs");
            let gradients: Vec<&[LeafBuffer]> = inputs.roles.iter().map(Vec::as_slice).collect();
            let bindings = state.bind_hierarchy(&gradients, Output::Buffers(&outputs.roles[0]))?;
            (bindings, None, Some(inputs), Some(outputs))
        }
    };
    let mut report = CaseReport::default();
    let nan: Vec<Vec<f32>> = layout.lengths().iter().map(|&n| vec![f32::NAN; n as usize]).collect();
    for (step, (grads, emas)) in case.steps.iter().zip(steps) {
        let grads: Vec<Vec<Vec<f32>>> = grads.iter().map(|g| round(g, types.gradients)).collect();
        match (&pool, &mut inputs, &mut outputs) {
            (Some(pool), _, _) => {
                for (level, g) in grads.iter().enumerate() {
                    crate::readback::write_leaves(queue, pool.gradient_leaves(level).unwrap_or(&[]), g);
                }
                crate::readback::write_leaves(queue, pool.output_leaves(), &nan);
            }
            (None, Some(inputs), Some(outputs)) => {
                let grads: Vec<&[Vec<f32>]> = grads.iter().map(Vec::as_slice).collect();
                write_external_step(queue, inputs, outputs, &grads, &nan);
            }
            _ => unreachable!("one of the two paths"),
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings)?;
        queue.submit([encoder.finish()]);
        let (direction, expected_emas) = match &mut reference {
            Some(reference) => {
                let wide: Vec<Leaves> = grads.iter().map(|g| widen(g)).collect();
                let direction = reference.step(&wide);
                (direction, reference.emas.clone())
            }
            None => (step.direction.clone(), emas.clone()),
        };
        let out = widen(&read_leaves_async(device, queue, bindings.output_leaves()).await?);
        report.record("direction", relative_error(&out, &direction));
        let mut got: Vec<Leaves> = Vec::with_capacity(k);
        for j in 0..k {
            got.push(widen(&state.read_ema_async(EmaRole::Level(j)).await?));
        }
        record_emas(&mut report, &got, &expected_emas);
        if let (Some(inputs), Some(outputs)) = (&inputs, &outputs) {
            report.corrupted_guards += inputs.corrupted(device, queue, &outputs.roles).await?;
            if !outputs.bytes.is_empty() {
                report.corrupted_guards += outputs.corrupted(device, queue, &[]).await?;
            }
        }
    }
    Ok(report)
}

/// The gradient paths a runner replays every case through, in its table's column order.
pub const RUNNER_PATHS: [GradientPath; 2] = [GradientPath::Pool, GradientPath::External];

/// How a case came out over the runner's paths and the CPU reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every path ran within the bound.
    Pass,
    /// Some path was refused with the typed error that names a device limit it exceeds (a
    /// hierarchy with more storage buffers than WebGPU's adapters allow), the others passed.
    Refused,
    /// A path ran outside the bound, changed a guard word, or failed otherwise.
    Fail,
}

/// One case's results, as the runners (the native `conformance` example and the wasm runner)
/// print them.
#[derive(Debug)]
pub struct CaseOutcome {
    /// The case's name (its file stem).
    pub name: String,
    /// One result per path of [`RUNNER_PATHS`].
    pub runs: Vec<Result<CaseReport>>,
    /// The CPU reference's result.
    pub reference: std::result::Result<CaseReport, String>,
}

/// Whether an error is the refusal of a configuration that exceeds one of the device's
/// limits (the error names the limit).
pub fn is_limit_refusal(error: &crate::Error) -> bool {
    matches!(error, crate::Error::ExceedsCount { .. } | crate::Error::ExceedsLimit { .. })
}

/// The lines a runner prints before its table.
pub fn preamble(adapter: &str, types: ElementTypes, kernels: &Kernels) -> Vec<String> {
    let f16_storage = match (types.gradients, kernels.uses_native_f16()) {
        (DType::F16, true) => " (f16 arrays)",
        (DType::F16, false) => " (f16 packed in u32)",
        _ => "",
    };
    let limits = kernels.device().limits();
    vec![
        format!("adapter: {adapter}"),
        format!(
            "limits: {} storage buffers per stage, {} invocations per workgroup, {} KiB workgroup storage, \
             {} MiB binding, f16 {}",
            limits.max_storage_buffers_per_shader_stage,
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_storage_size / 1024,
            limits.max_storage_buffer_binding_size >> 20,
            if kernels.device().features().contains(wgpu::Features::SHADER_F16) { "yes" } else { "no" }
        ),
        format!("storage: gradients {}, output {}, averages {}{f16_storage}", types.gradients, types.output, types.ema),
        format!("bound: relative error <= {:e} on every step", bound(types)),
        format!("{:<36} {:>11} {:>11} {:>11}  result", "case", "pool", "external", "cpu ref"),
    ]
}

impl CaseOutcome {
    /// The verdict against `bound` (the reference is always judged against [`F32_BOUND`]).
    pub fn verdict(&self, bound: f64) -> Verdict {
        let reference_passes = self.reference.as_ref().is_ok_and(|r| r.passes(F32_BOUND));
        let mut refused = false;
        for run in &self.runs {
            match run {
                Ok(report) if report.passes(bound) => {}
                Err(e) if is_limit_refusal(e) => refused = true,
                _ => return Verdict::Fail,
            }
        }
        match (reference_passes, refused) {
            (false, _) => Verdict::Fail,
            (true, true) => Verdict::Refused,
            (true, false) => Verdict::Pass,
        }
    }

    /// The case's table row, then one line per error.
    pub fn lines(&self, bound: f64) -> Vec<String> {
        let cell = |r: std::result::Result<&CaseReport, &crate::Error>| match r {
            Ok(r) if r.corrupted_guards > 0 => format!("{} GUARDS", r.corrupted_guards),
            Ok(r) => format!("{:.3e}", r.worst()),
            Err(e) if is_limit_refusal(e) => "refused".to_string(),
            Err(_) => "error".to_string(),
        };
        let reference = match &self.reference {
            Ok(r) => format!("{:.3e}", r.worst()),
            Err(_) => "error".to_string(),
        };
        let mut cells: Vec<String> = self.runs.iter().map(|r| cell(r.as_ref())).collect();
        cells.resize(2, String::new());
        let result = match self.verdict(bound) {
            Verdict::Pass => "ok",
            Verdict::Refused => "refused",
            Verdict::Fail => "FAIL",
        };
        let mut lines =
            vec![format!("{:<36} {:>11} {:>11} {:>11}  {result}", self.name, cells[0], cells[1], reference)];
        let errors = self.runs.iter().filter_map(|r| r.as_ref().err().map(|e| e.to_string()));
        for e in errors.chain(self.reference.as_ref().err().cloned()) {
            lines.push(format!("    error: {e}"));
        }
        lines
    }
}

/// The runner's last line: cases, passed, refused (when any), failed.
pub fn summary(verdicts: &[Verdict]) -> String {
    let count = |v: Verdict| verdicts.iter().filter(|&&x| x == v).count();
    let refused = match count(Verdict::Refused) {
        0 => String::new(),
        n => format!(", {n} refused by the device's limits"),
    };
    format!("{} cases, {} passed{refused}, {} failed", verdicts.len(), count(Verdict::Pass), count(Verdict::Fail))
}

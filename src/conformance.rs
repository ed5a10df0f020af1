//! Golden cases: scenarios computed by the paper authors' reference implementation, in the
//! format of `tests/golden/README.md`, and the runner that replays them through the public
//! API (on the GPU over the pool or over external buffers, or on the CPU reference).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{Config, EmaInit, EmaInits, Method};
use crate::error::Result;
use crate::kernels::Kernels;
use crate::layout::{Layout, LeafBuffer};
use crate::pool::GradientPool;
use crate::readback::read_leaves;
use crate::reference::{relative_error, widen, Leaves, ReferenceState};
use crate::state::{BloopState, EmaRole, ExternalGradients, Output};

/// Largest relative error a float32 implementation may show on any step.
pub const F32_BOUND: f64 = 1e-5;

#[derive(Clone, Debug, Deserialize)]
pub struct CaseConfig {
    pub ema: f64,
    pub lambda: f64,
    pub eps: f64,
    pub rescale: bool,
    pub ratio_only: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CaseInit {
    pub main_ema: Leaves,
    pub aux_ema: Option<Leaves>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CaseStep {
    pub grad_main: Leaves,
    pub grad_aux: Leaves,
    pub direction: Leaves,
    pub main_ema: Leaves,
    pub aux_ema: Option<Leaves>,
}

/// One scenario: a method, its config, a layout, initial averages and steps to replay.
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub config: CaseConfig,
    pub leaf_sizes: Vec<u64>,
    pub init: CaseInit,
    pub steps: Vec<CaseStep>,
}

impl Case {
    pub fn from_file(path: &Path) -> std::result::Result<Case, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let case: Case = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        case.config().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(case)
    }

    /// The case's config, validated like any other.
    pub fn config(&self) -> Result<Config> {
        let method = Method::from_name(&self.method).ok_or_else(|| crate::Error::InvalidConfig {
            field: "method",
            problem: format!("`{}` is not bloop, dynamic_barrier, pcgrad or mixed", self.method),
        })?;
        let c = &self.config;
        let ratio_only = c.ratio_only && matches!(method, Method::Bloop | Method::DynamicBarrier);
        let config =
            Config::new(method).ema(c.ema).lambda(c.lambda).eps(c.eps).rescale(c.rescale).ratio_only(ratio_only);
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
    /// leaves at unaligned element offsets with guard elements between them.
    External,
}

/// Worst relative error over the steps of a case, per output.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CaseReport {
    pub direction: f64,
    pub main_ema: Option<f64>,
    pub aux_ema: Option<f64>,
    /// Output elements outside every leaf that changed (external path only).
    pub corrupted_guards: usize,
}

impl CaseReport {
    pub fn worst(&self) -> f64 {
        self.direction.max(self.main_ema.unwrap_or(0.0)).max(self.aux_ema.unwrap_or(0.0))
    }

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

fn narrow(leaves: &[Vec<f64>]) -> Vec<Vec<f32>> {
    leaves.iter().map(|l| l.iter().map(|&x| x as f32).collect()).collect()
}

/// Replays a case on the CPU reference.
pub fn run_reference(case: &Case) -> std::result::Result<CaseReport, String> {
    let config = case.config().map_err(|e| e.to_string())?;
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

/// Guard value written around external leaves; any change to it is corruption.
const GUARD: f32 = -7.25e13;

/// Flat buffers holding every leaf at an unaligned offset, with guard elements around.
struct FlatLeaves {
    buffer: wgpu::Buffer,
    leaves: Vec<LeafBuffer>,
    contents: Vec<f32>,
}

fn flat_leaves(device: &wgpu::Device, sizes: &[u64], copies: usize, label: &str) -> Vec<FlatLeaves> {
    let mut offset = 0u64;
    let mut places = vec![Vec::new(); copies];
    for (i, &len) in sizes.iter().enumerate() {
        for (c, place) in places.iter_mut().enumerate() {
            offset += 1 + ((i * 5 + c * 3) % 7) as u64; // a few guard elements, never aligned
            place.push((offset, len));
            offset += len;
        }
    }
    let total = offset + 3;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: total * 4,
        usage: crate::pool::POOL_USAGE,
        mapped_at_creation: false,
    });
    places
        .into_iter()
        .map(|place| FlatLeaves {
            buffer: buffer.clone(),
            leaves: place.iter().map(|&(o, len)| LeafBuffer::new(&buffer, o * 4, len)).collect(),
            contents: vec![GUARD; total as usize],
        })
        .collect()
}

/// Replays a case through the public GPU API and measures every step against the case.
pub fn run_gpu(kernels: &Arc<Kernels>, queue: &wgpu::Queue, case: &Case, path: GradientPath) -> Result<CaseReport> {
    let device = kernels.device();
    let config = case.config()?;
    let layout = Layout::from_lengths(&case.leaf_sizes)?;
    let inits = EmaInits {
        main: EmaInit::Values(narrow(&case.init.main_ema)),
        aux: EmaInit::Values(narrow(case.initial_aux())),
    };
    let mut state = BloopState::new(kernels, queue, &layout, config, inits)?;
    let (bindings, main, aux, output_buffer) = match path {
        GradientPath::Pool => {
            let pool = GradientPool::new(device, &layout, false)?;
            let bindings = state.bind_pool(&pool)?;
            (bindings, pool.main_leaves().to_vec(), pool.aux_leaves().to_vec(), None)
        }
        GradientPath::External => {
            let mut inputs = flat_leaves(device, &case.leaf_sizes, 2, "conformance inputs");
            let out = flat_leaves(device, &case.leaf_sizes, 1, "conformance outputs").remove(0);
            queue.write_buffer(&inputs[0].buffer, 0, bytemuck::cast_slice(&inputs[0].contents));
            let aux = inputs.pop().unwrap().leaves;
            let main = inputs.pop().unwrap().leaves;
            let bindings = state.bind_external(&ExternalGradients {
                main: &main,
                aux: &aux,
                output: Output::Buffers(&out.leaves),
            })?;
            (bindings, main, aux, Some(out))
        }
    };
    let mut report = CaseReport::default();
    for step in &case.steps {
        crate::readback::write_leaves(queue, &main, &narrow(&step.grad_main));
        crate::readback::write_leaves(queue, &aux, &narrow(&step.grad_aux));
        match &output_buffer {
            // Guards everywhere, NaN where the leaves go: stale or skipped outputs show.
            Some(out) => {
                let mut poisoned = out.contents.clone();
                for leaf in &out.leaves {
                    let start = (leaf.offset / 4) as usize;
                    poisoned[start..start + leaf.len as usize].fill(f32::NAN);
                }
                queue.write_buffer(&out.buffer, 0, bytemuck::cast_slice(&poisoned));
            }
            None => {
                let nan: Vec<Vec<f32>> = layout.lengths().iter().map(|&n| vec![f32::NAN; n as usize]).collect();
                crate::readback::write_leaves(queue, bindings.output_leaves(), &nan);
            }
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings)?;
        queue.submit([encoder.finish()]);

        let direction = widen(&read_leaves(device, queue, bindings.output_leaves())?);
        report.record("direction", relative_error(&direction, &step.direction));
        if config.method.has_main_ema() {
            let ema = widen(&state.read_ema(EmaRole::Main)?);
            report.record("main", relative_error(&ema, &step.main_ema));
        }
        if let (true, Some(expected)) = (config.method.has_aux_ema(), &step.aux_ema) {
            let ema = widen(&state.read_ema(EmaRole::Aux)?);
            report.record("aux", relative_error(&ema, expected));
        }
        if let Some(out) = &output_buffer {
            let whole = LeafBuffer::new(&out.buffer, 0, out.contents.len() as u64);
            let after = &read_leaves(device, queue, &[whole])?[0];
            let mut inside = vec![false; after.len()];
            for leaf in &out.leaves {
                let start = (leaf.offset / 4) as usize;
                inside[start..start + leaf.len as usize].fill(true);
            }
            report.corrupted_guards +=
                after.iter().zip(&inside).filter(|(v, inside)| !**inside && v.to_bits() != GUARD.to_bits()).count();
        }
    }
    Ok(report)
}

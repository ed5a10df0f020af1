//! The paper's quadratic experiment (the reference repository's `quadratics` notebook), on the
//! GPU through the library and on the host through the f64 reference.
//!
//! Main loss: least squares with more parameters than rows, `1/2 mean((X theta - y)^2)`, with
//! `X = Z diag(linspace(1, 10, p))`, `Z` standard normal, `n = 256`, `p = 300`,
//! `y = X theta_true + 0.05 noise`. It has many minimisers; the aux loss
//! `1/2 |theta - theta*|^2`, `theta* = 10 N(0, I)`, should pick among them. SGD on mini-batches
//! of 64 rows, learning rate 1e-3, theta from zeros, EMAs from zeros.

use std::sync::Arc;

use bloop::reference::ReferenceState;
use bloop::rng::SplitMix64;
use bloop::{BloopState, Config, EmaInits, GpuContext, GradientPool, Kernels, Layout, Method};

pub const ROWS: usize = 256;
pub const COLS: usize = 300;
pub const BATCH: usize = 64;
pub const STEPS_PER_EPOCH: usize = ROWS / BATCH;
pub const LEARNING_RATE: f64 = 1e-3;

/// The data, shared by every run.
pub struct Problem {
    /// `ROWS x COLS`, row-major.
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub target: Vec<f32>,
}

impl Problem {
    pub fn generate(seed: u64) -> Problem {
        let mut rng = SplitMix64::new(seed);
        let theta_true: Vec<f64> = (0..COLS).map(|_| rng.next_normal()).collect();
        let target = (0..COLS).map(|_| (10.0 * rng.next_normal()) as f32).collect();
        let scale = |j: usize| 1.0 + 9.0 * j as f64 / (COLS - 1) as f64;
        let x: Vec<f32> = (0..ROWS * COLS).map(|k| (rng.next_normal() * scale(k % COLS)) as f32).collect();
        let y = (0..ROWS)
            .map(|i| {
                let clean: f64 = (0..COLS).map(|j| x[i * COLS + j] as f64 * theta_true[j]).sum();
                (clean + 0.05 * rng.next_normal()) as f32
            })
            .collect();
        Problem { x, y, target }
    }

    pub fn main_loss(&self, theta: &[f64]) -> f64 {
        let sq: f64 = (0..ROWS).map(|i| (self.row_dot(i, theta) - self.y[i] as f64).powi(2)).sum();
        0.5 * sq / ROWS as f64
    }

    pub fn aux_loss(&self, theta: &[f64]) -> f64 {
        0.5 * theta.iter().zip(&self.target).map(|(t, s)| (t - *s as f64).powi(2)).sum::<f64>()
    }

    fn row_dot(&self, row: usize, theta: &[f64]) -> f64 {
        (0..COLS).map(|j| self.x[row * COLS + j] as f64 * theta[j]).sum()
    }
}

/// The mini-batch order: a permutation of the rows for each epoch (Fisher-Yates).
pub fn batch_order(seed: u64, epochs: usize) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut order = Vec::with_capacity(epochs * ROWS);
    for _ in 0..epochs {
        let mut perm: Vec<u32> = (0..ROWS as u32).collect();
        for i in (1..ROWS).rev() {
            perm.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        order.extend(perm);
    }
    order
}

/// One method at one lambda.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub name: &'static str,
    pub config: Config,
}

/// The methods of the notebook: mixing, PCGrad on the current gradients, the dynamic barrier
/// (ema 1.0) and BLOOP (ema 0.01).
pub fn runs_at(lambda: f64) -> [Run; 4] {
    let run = |name, method, ema| Run { name, config: Config::new(method).ema(ema).lambda(lambda) };
    [
        run("mixed", Method::Mixed, 1.0),
        run("pcgrad", Method::PcGrad, 1.0),
        run("dynamic_barrier", Method::DynamicBarrier, 1.0),
        run("bloop", Method::Bloop, 0.01),
    ]
}

/// `logspace(-3, 3, 10)`.
pub fn lambda_grid() -> Vec<f64> {
    (0..10).map(|i| 10f64.powf(-3.0 + 6.0 * i as f64 / 9.0)).collect()
}

/// Main and aux loss after 0, 1, 2, ... epochs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub main: Vec<f64>,
    pub aux: Vec<f64>,
}

impl History {
    /// The lowest main loss seen, and the aux loss at that evaluation.
    pub fn best(&self) -> (f64, f64) {
        let k = (0..self.main.len())
            .filter(|&k| self.main[k].is_finite())
            .min_by(|&a, &b| self.main[a].total_cmp(&self.main[b]))
            .unwrap_or(0);
        (self.main[k], self.aux[k])
    }
}

/// The experiment on the host: f64 gradients, the f64 reference combination.
pub fn run_cpu(problem: &Problem, order: &[u32], run: &Run, epochs: usize) -> History {
    let mut theta = vec![0f64; COLS];
    let zeros = vec![vec![0f64; COLS]];
    let aux_ema = if run.config.method == Method::PcGrad { zeros.clone() } else { vec![] };
    let main_ema = if run.config.method == Method::Mixed { vec![] } else { zeros };
    let mut state = ReferenceState::new(run.config, main_ema, aux_ema);
    let mut history = History::default();
    for epoch in 0..=epochs {
        history.main.push(problem.main_loss(&theta));
        history.aux.push(problem.aux_loss(&theta));
        if epoch == epochs {
            break;
        }
        for b in 0..STEPS_PER_EPOCH {
            let rows = &order[epoch * ROWS + b * BATCH..][..BATCH];
            let residual: Vec<f64> =
                rows.iter().map(|&r| problem.row_dot(r as usize, &theta) - problem.y[r as usize] as f64).collect();
            let g_main: Vec<f64> = (0..COLS)
                .map(|j| {
                    rows.iter().zip(&residual).map(|(&r, e)| problem.x[r as usize * COLS + j] as f64 * e).sum::<f64>()
                        / BATCH as f64
                })
                .collect();
            let g_aux: Vec<f64> = theta.iter().zip(&problem.target).map(|(t, s)| t - *s as f64).collect();
            let direction = state.step(&[g_main], &[g_aux]);
            for (t, d) in theta.iter_mut().zip(&direction[0]) {
                *t -= LEARNING_RATE * d;
            }
        }
    }
    history
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ProblemUniform {
    rows: u32,
    cols: u32,
    batch: u32,
    learning_rate: f32,
}

struct GpuRun {
    state: BloopState,
    bindings: bloop::StepBindings,
    group: wgpu::BindGroup,
    _pool: GradientPool,
    _theta: wgpu::Buffer,
}

/// How the GPU run takes its SGD step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgdStep {
    /// The library applies SGD to the parameters in its direction pass (no direction written).
    Fused,
    /// The library writes the direction, and the trainer's own `sgd` kernel applies it.
    Separate,
}

/// The experiment on the GPU with the fused SGD step; see [`run_gpu_with`] (the tests use it).
#[allow(dead_code)]
pub fn run_gpu(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    problem: &Problem,
    order: &[u32],
    runs: &[Run],
    epochs: usize,
    progress: impl FnMut(usize, &[History]),
) -> bloop::Result<Vec<History>> {
    run_gpu_with(gpu, kernels, problem, order, runs, epochs, SgdStep::Fused, progress)
}

/// The experiment on the GPU: every run at once, each step recorded without host input.
/// Evaluation losses accumulate in a GPU buffer; `progress` sees them (up to some epoch) through
/// non-blocking readbacks while later epochs run.
#[allow(clippy::too_many_arguments)]
pub fn run_gpu_with(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    problem: &Problem,
    order: &[u32],
    runs: &[Run],
    epochs: usize,
    sgd_step: SgdStep,
    mut progress: impl FnMut(usize, &[History]),
) -> bloop::Result<Vec<History>> {
    use wgpu::util::DeviceExt;
    let device = &gpu.device;
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("quadratics trainer"),
        source: wgpu::ShaderSource::Wgsl(include_str!("trainer.wgsl").into()),
    });
    let entry =
        |binding, ty| wgpu::BindGroupLayoutEntry { binding, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None };
    let storage = |read_only| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let uniform = wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Uniform,
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let data_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("data"),
        entries: &[
            entry(0, uniform),
            entry(1, storage(true)),
            entry(2, storage(true)),
            entry(3, storage(true)),
            entry(4, storage(true)),
        ],
    });
    let run_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("run"),
        entries: &(0..6).map(|b| entry(b, storage(false))).collect::<Vec<_>>(),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&data_layout), Some(&run_layout)],
        immediate_size: 0,
    });
    let [gradients, sgd, advance, evaluate] = ["gradients", "sgd", "advance", "evaluate"].map(|name| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(name),
            compilation_options: Default::default(),
            cache: None,
        })
    });
    let init = |label, contents: &[u8], usage| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents, usage })
    };
    let read_only = wgpu::BufferUsages::STORAGE;
    let uniform_data = ProblemUniform {
        rows: ROWS as u32,
        cols: COLS as u32,
        batch: BATCH as u32,
        learning_rate: LEARNING_RATE as f32,
    };
    let params = init("problem", bytemuck::bytes_of(&uniform_data), wgpu::BufferUsages::UNIFORM);
    let x = init("x", bytemuck::cast_slice(&problem.x), read_only);
    let y = init("y", bytemuck::cast_slice(&problem.y), read_only);
    let target = init("target", bytemuck::cast_slice(&problem.target), read_only);
    let order = init("order", bytemuck::cast_slice(order), read_only);
    let data = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("data"),
        layout: &data_layout,
        entries: &[&params, &x, &y, &target, &order]
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect::<Vec<_>>(),
    });

    // Every run's losses in one buffer, each run's slice at an aligned offset.
    let slice = (((epochs + 1) * 2 * 4) as u64).next_multiple_of(256);
    let histories = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("histories"),
        size: slice * runs.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let layout = Layout::new([("theta", COLS as u64)])?;
    let mut gpu_runs = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let fused = sgd_step == SgdStep::Fused;
        let config = if fused { run.config.optimizer(bloop::Optimizer::sgd(LEARNING_RATE)) } else { run.config };
        let state = BloopState::new(kernels, &gpu.queue, &layout, config, EmaInits::zeros())?;
        let mut pool = GradientPool::new(device, &layout, false)?;
        if fused {
            // theta lives in the pool's params role (zeros, as the separate run's buffer).
            pool = pool.with_params(device, bloop::DType::F32)?;
        }
        let bindings = state.bind_pool_with(&pool, fused)?;
        let storage_rw = wgpu::BufferUsages::STORAGE;
        let own_theta = init("theta", bytemuck::cast_slice(&[0f32; COLS]), storage_rw);
        let theta = if fused { view(pool.params(0)?) } else { own_theta.as_entire_binding() };
        let step = init("step", bytemuck::cast_slice(&[0u32; 4]), storage_rw);
        fn view(leaf: &bloop::LeafBuffer) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &leaf.buffer,
                offset: leaf.offset,
                size: std::num::NonZeroU64::new(leaf.len * 4),
            })
        }
        let history = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &histories,
            offset: slice * i as u64,
            size: std::num::NonZeroU64::new(slice),
        });
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(run.name),
            layout: &run_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: theta },
                wgpu::BindGroupEntry { binding: 1, resource: step.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: view(pool.main(0)?) },
                wgpu::BindGroupEntry { binding: 3, resource: view(pool.aux(0)?) },
                wgpu::BindGroupEntry { binding: 4, resource: view(pool.output(0)?) },
                wgpu::BindGroupEntry { binding: 5, resource: history },
            ],
        });
        gpu_runs.push(GpuRun { state, bindings, group, _pool: pool, _theta: own_theta });
    }

    let dispatch = |encoder: &mut wgpu::CommandEncoder, pipeline: &wgpu::ComputePipeline, group: &wgpu::BindGroup| {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &data, &[]);
        pass.set_bind_group(1, group, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    };
    // Epochs per submit: enough to amortise submission, few enough to report progress. Each
    // submit also copies the losses so far into a free buffer of a small ring; a copy that has
    // landed is shown through `progress` at a later iteration, so the loop never waits.
    let chunk = 10;
    let ring: Vec<(wgpu::Buffer, Arc<std::sync::atomic::AtomicBool>)> = (0..3)
        .map(|_| {
            let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("losses readback"),
                size: histories.size(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (buffer, Arc::new(std::sync::atomic::AtomicBool::new(false)))
        })
        .collect();
    // Per ring slot: the epoch whose losses it holds, while a copy is in flight or mapped.
    let mut in_flight: Vec<Option<usize>> = vec![None; ring.len()];
    let decode = |all: &[f32], upto: usize| -> Vec<History> {
        (0..runs.len())
            .map(|i| {
                let values = &all[(slice / 4) as usize * i..][..(upto + 1) * 2];
                History {
                    main: values.iter().step_by(2).map(|&v| v as f64).collect(),
                    aux: values.iter().skip(1).step_by(2).map(|&v| v as f64).collect(),
                }
            })
            .collect()
    };
    for start in (0..=epochs).step_by(chunk) {
        let end = (start + chunk).min(epochs + 1);
        let mut encoder = device.create_command_encoder(&Default::default());
        for epoch in start..end {
            for run in &gpu_runs {
                dispatch(&mut encoder, &evaluate, &run.group);
            }
            if epoch == epochs {
                break;
            }
            for _ in 0..STEPS_PER_EPOCH {
                for run in &mut gpu_runs {
                    dispatch(&mut encoder, &gradients, &run.group);
                    run.state.record_step(&mut encoder, &run.bindings)?;
                    match sgd_step {
                        SgdStep::Fused => dispatch(&mut encoder, &advance, &run.group),
                        SgdStep::Separate => dispatch(&mut encoder, &sgd, &run.group),
                    }
                }
            }
        }
        let free = in_flight.iter().position(Option::is_none);
        if let Some(slot) = free {
            encoder.copy_buffer_to_buffer(&histories, 0, &ring[slot].0, 0, histories.size());
        }
        gpu.queue.submit([encoder.finish()]);
        if let Some(slot) = free {
            let landed = ring[slot].1.clone();
            ring[slot].0.map_async(wgpu::MapMode::Read, .., move |r| {
                landed.store(r.is_ok(), std::sync::atomic::Ordering::Release)
            });
            in_flight[slot] = Some(end - 1);
        }
        device.poll(wgpu::PollType::Poll).map_err(|e| bloop::Error::Readback(e.to_string()))?;
        // Oldest first, so progress only moves forward.
        let mut slots: Vec<usize> = (0..ring.len()).filter(|&s| in_flight[s].is_some()).collect();
        slots.sort_by_key(|&s| in_flight[s]);
        for slot in slots {
            let (buffer, landed) = &ring[slot];
            if let (Some(epoch), true) = (in_flight[slot], landed.swap(false, std::sync::atomic::Ordering::AcqRel)) {
                let view = buffer.get_mapped_range(..).map_err(|e| bloop::Error::Readback(e.to_string()))?;
                progress(epoch, &decode(bytemuck::cast_slice(&view), epoch));
                drop(view);
                buffer.unmap();
                in_flight[slot] = None;
            }
        }
    }

    let all = bloop::read_leaves(device, &gpu.queue, &[bloop::LeafBuffer::new(&histories, 0, histories.size() / 4)])?
        .remove(0);
    Ok(decode(&all, epochs))
}

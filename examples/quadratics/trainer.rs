//! The quadratic experiment on the GPU: the trainer's WGSL kernels write both gradients into
//! the library's pool, the library combines them (and, by default, takes the SGD step in the
//! same pass). One async loop serves the native example and its tests (through `pollster`) and
//! the web demo (`crates/bloop-web`, on the browser's event loop).

use std::future::Future;
use std::sync::Arc;

use bloop::{BloopState, EmaInits, GpuContext, GradientPool, Kernels, Layout};

use crate::experiment::{History, Problem, Run, BATCH, COLS, LEARNING_RATE, ROWS, STEPS_PER_EPOCH};

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

/// What one training trains: every run at once over the same data and batch order.
#[derive(Clone, Copy)]
pub struct Plan<'a> {
    pub problem: &'a Problem,
    pub order: &'a [u32],
    pub runs: &'a [Run],
    pub epochs: usize,
    pub sgd_step: SgdStep,
    /// Epochs recorded into one submit: enough to amortise submission, few enough to report
    /// progress (and, on the web, to keep the page responsive).
    pub epochs_per_submit: usize,
}

/// The experiment on the GPU with the fused SGD step; see [`run_gpu_with`] (the tests use it).
#[cfg(not(target_arch = "wasm32"))]
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

/// The experiment on the GPU, natively: [`train`] driven by `pollster`, the device polled
/// without waiting after each submit of 10 epochs.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
pub fn run_gpu_with(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    problem: &Problem,
    order: &[u32],
    runs: &[Run],
    epochs: usize,
    sgd_step: SgdStep,
    progress: impl FnMut(usize, &[History]),
) -> bloop::Result<Vec<History>> {
    let plan = Plan { problem, order, runs, epochs, sgd_step, epochs_per_submit: 10 };
    let poll = || {
        let polled = gpu.device.poll(wgpu::PollType::Poll).map(|_| true);
        std::future::ready(polled.map_err(|e| bloop::Error::Readback(e.to_string())))
    };
    let trained = pollster::block_on(train(gpu, kernels, plan, progress, poll))?;
    Ok(trained.expect("the native loop never stops early"))
}

/// The experiment on the GPU: every run at once, each step recorded without host input.
/// Evaluation losses accumulate in a GPU buffer; `progress` sees them (up to some epoch) through
/// readbacks that never hold the loop up while later epochs run. After each submit the loop
/// awaits `after_submit`, which polls the device natively and yields to the event loop on the
/// web; `Ok(false)` from it stops the training (`Ok(None)`). Resolves to the losses after every
/// epoch of every run, read back once all epochs ran.
pub async fn train<F: Future<Output = bloop::Result<bool>>>(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    plan: Plan<'_>,
    mut progress: impl FnMut(usize, &[History]),
    mut after_submit: impl FnMut() -> F,
) -> bloop::Result<Option<Vec<History>>> {
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
    let x = init("x", bytemuck::cast_slice(&plan.problem.x), read_only);
    let y = init("y", bytemuck::cast_slice(&plan.problem.y), read_only);
    let target = init("target", bytemuck::cast_slice(&plan.problem.target), read_only);
    let order = init("order", bytemuck::cast_slice(plan.order), read_only);
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
    let slice = (((plan.epochs + 1) * 2 * 4) as u64).next_multiple_of(256);
    let histories = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("histories"),
        size: slice * plan.runs.len() as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let layout = Layout::new([("theta", COLS as u64)])?;
    let mut gpu_runs = Vec::new();
    for (i, run) in plan.runs.iter().enumerate() {
        let fused = plan.sgd_step == SgdStep::Fused;
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
    // Each submit (`plan.epochs_per_submit` epochs) also copies the losses so far into a free
    // buffer of a small ring; a copy that has landed is shown through `progress` at a later
    // iteration, so the loop never waits for one.
    let (runs, epochs, chunk) = (plan.runs, plan.epochs, plan.epochs_per_submit.max(1));
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
                    match plan.sgd_step {
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
        if !after_submit().await? {
            return Ok(None);
        }
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

    let leaf = bloop::LeafBuffer::new(&histories, 0, histories.size() / 4);
    let all = bloop::read_leaves_async(device, &gpu.queue, &[leaf]).await?.remove(0);
    Ok(Some(decode(&all, epochs)))
}

//! Fused optimizer against a separate one, in the same run: the BLOOP step with SGD, SGD with
//! momentum or Adam applied in its direction pass (no direction written), against the BLOOP
//! step writing the direction followed by the trainer's own optimizer kernel
//! (`optimizer.wgsl`). Both are timed as one span (the first pass's start to the last pass's
//! end) over the same pool, in interleaved repetitions; bytes per f32 element from `Config::fused_bytes_per_element` and
//! `Config::separate_bytes_per_element`.

use bloop::{BloopState, Config, DType, EmaInits, GpuContext, GradientPool, Kernels, Layout, Method, Optimizer};
use serde::Serialize;

use super::{Clock, Record, Stats};

#[derive(Clone, Debug, Serialize)]
pub struct OptimizerRow {
    pub adapter: String,
    pub layout: String,
    pub leaves: usize,
    pub elements: u64,
    pub optimizer: &'static str,
    pub fused: Stats,
    pub separate: Stats,
    pub fused_bytes_per_element: u64,
    pub separate_bytes_per_element: u64,
    /// Separate median over fused median.
    pub speedup: f64,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Constants {
    n: u32,
    lr: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    step_size: f32,
    bc2_sqrt: f32,
    eps: f32,
}

pub fn optimizers() -> [(&'static str, Optimizer); 3] {
    [
        ("sgd", Optimizer::sgd(1e-3)),
        ("sgd_momentum", Optimizer::sgd(1e-3).momentum(0.9)),
        ("adam", Optimizer::adam(1e-3)),
    ]
}

/// Both ways of one optimizer over `layout`'s pool; prints and returns the row.
pub fn measure(
    gpu: &GpuContext,
    kernels: &std::sync::Arc<Kernels>,
    clock: &Clock,
    reps: usize,
    name: &str,
    layout: &Layout,
    (opt_name, optimizer): (&'static str, Optimizer),
) -> OptimizerRow {
    use wgpu::util::DeviceExt;
    let device = &gpu.device;
    let base = Config::new(Method::Bloop).ema(0.01).lambda(0.5);
    let fused_config = base.optimizer(optimizer);
    let pool = GradientPool::new(device, layout, false).unwrap().with_params(device, DType::F32).unwrap();
    assert_eq!(pool.buffers().len(), 3, "the gradients as planes of one buffer, the output, the parameters");
    let mut rng = bloop::rng::SplitMix64::new(3);
    for leaves in [pool.main_leaves(), pool.aux_leaves(), pool.params_leaves().unwrap()] {
        for leaf in leaves {
            let values: Vec<f32> = (0..leaf.len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&values));
        }
    }

    let mut fused = BloopState::new(kernels, &gpu.queue, layout, fused_config, EmaInits::zeros()).unwrap();
    let fused_bindings = fused.bind_pool_with(&pool, true).unwrap();
    let record_fused: &mut Record = &mut |encoder, t| fused.record_step_timed(encoder, &fused_bindings, t).unwrap();

    // The separate kernel runs over the pool's flat buffers (leaves and their padding).
    let mut separate = BloopState::new(kernels, &gpu.queue, layout, base, EmaInits::zeros()).unwrap();
    let separate_bindings = separate.bind_pool(&pool).unwrap();
    let direction = &pool.output(0).unwrap().buffer;
    let params = &pool.params(0).unwrap().buffer;
    let n = direction.size() / 4;
    let (m, v) = (super::storage_buffer(gpu, "m", n * 4), super::storage_buffer(gpu, "v", n * 4));
    let (b1, b2) = (0.9f64, 0.999f64);
    let constants = Constants {
        n: n as u32,
        lr: 1e-3,
        momentum: 0.9,
        beta1: b1 as f32,
        beta2: b2 as f32,
        step_size: (1e-3 / (1.0 - b1)) as f32,
        bc2_sqrt: (1.0 - b2).sqrt() as f32,
        eps: 1e-8,
    };
    let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("optimizer constants"),
        contents: bytemuck::bytes_of(&constants),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("optimizer"),
        source: wgpu::ShaderSource::Wgsl(include_str!("optimizer.wgsl").into()),
    });
    let bind_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: None,
        entries: &[
            wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            },
            super::eager::storage(1, true),
            super::eager::storage(2, false),
            super::eager::storage(3, false),
            super::eager::storage(4, false),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: None,
        bind_group_layouts: &[Some(&bind_layout)],
        immediate_size: 0,
    });
    let entry = match optimizer.kind() {
        bloop::OptKind::Sgd => "sgd",
        bloop::OptKind::Momentum => "momentum",
        bloop::OptKind::Adam => "adam",
    };
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &bind_layout,
        entries: &[&uniform, direction, params, &m, &v]
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect::<Vec<_>>(),
    });
    let [x, y] = super::eager::grid(n.div_ceil(256), device.limits().max_compute_workgroups_per_dimension as u64);
    let record_separate: &mut Record = &mut |encoder, t| {
        // One span: the step's pass starts it, the optimizer's pass ends it.
        let first = t.as_ref().map(|w| wgpu::ComputePassTimestampWrites {
            query_set: w.query_set,
            beginning_of_pass_write_index: w.beginning_of_pass_write_index,
            end_of_pass_write_index: None,
        });
        let last = t.map(|w| wgpu::ComputePassTimestampWrites {
            query_set: w.query_set,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: w.end_of_pass_write_index,
        });
        separate.record_step_timed(encoder, &separate_bindings, first).unwrap();
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("optimizer"), timestamp_writes: last });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    };
    // Interleaved repetitions, so both see the same load on a shared machine.
    let mut times = clock.interleaved(gpu, reps, &mut [record_fused, record_separate]);
    let (separate_stats, fused_stats) = (Stats::of(times.pop().unwrap()), Stats::of(times.pop().unwrap()));
    let row = OptimizerRow {
        adapter: gpu.adapter.get_info().name,
        layout: name.to_string(),
        leaves: layout.len(),
        elements: layout.total_elements(),
        optimizer: opt_name,
        fused: fused_stats,
        separate: separate_stats,
        fused_bytes_per_element: fused_config.fused_bytes_per_element(false),
        separate_bytes_per_element: fused_config.separate_bytes_per_element(),
        speedup: separate_stats.median_ms / fused_stats.median_ms,
    };
    println!(
        "{:<18} {:>10} bloop+{:<13} fused {:>3} B {:>9.3} ms (min {:>8.3})  separate {:>3} B {:>9.3} ms (min {:>8.3})  {:.2}x",
        row.layout,
        row.elements,
        row.optimizer,
        row.fused_bytes_per_element,
        row.fused.median_ms,
        row.fused.min_ms,
        row.separate_bytes_per_element,
        row.separate.median_ms,
        row.separate.min_ms,
        row.speedup
    );
    row
}

//! Rows for hierarchies of k = 2 and 4 auxiliary losses: the fused step over the pool (k + 1
//! gradients per leaf) and over a buffer of its own per leaf and loss. No unfused or host
//! baseline: those cover the two-loss methods.

use bloop::rng::SplitMix64;
use bloop::{
    BloopState, Config, ElementTypes, EmaInits, GpuContext, GradientPool, Kernels, Layout, LeafBuffer, Output,
};

/// (row name, k).
pub const LEVELS: [(&str, usize); 2] = [("hierarchy_k2", 2), ("hierarchy_k4", 4)];

/// Per path ("pool", "per-leaf"): the step's timing and its config.
pub fn measure(
    gpu: &GpuContext,
    kernels: &std::sync::Arc<Kernels>,
    layout: &Layout,
    k: usize,
    rng: &mut SplitMix64,
    time: &mut dyn FnMut(&mut BloopState, &bloop::StepBindings) -> super::Stats,
) -> Vec<(&'static str, super::Stats, Config)> {
    let config = Config::hierarchy(&vec![0.5 / k as f64; k]).ema(0.01);
    let pool = GradientPool::hierarchy(&gpu.device, layout, k, false, ElementTypes::default()).unwrap();
    for level in 0..=k {
        super::fill(gpu, pool.gradient_leaves(level).unwrap(), rng);
    }
    let per_leaf = |label: &str| -> Vec<LeafBuffer> {
        layout
            .lengths()
            .iter()
            .map(|&n| {
                let b = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: n * 4,
                    usage: bloop::pool::POOL_USAGE,
                    mapped_at_creation: false,
                });
                LeafBuffer::new(&b, 0, n)
            })
            .collect()
    };
    let gradients: Vec<Vec<LeafBuffer>> = (0..=k).map(|_| per_leaf("hierarchy gradient")).collect();
    for leaves in &gradients {
        super::fill(gpu, leaves, rng);
    }
    let out = per_leaf("hierarchy output");
    let mut rows = Vec::new();
    for path in ["pool", "per-leaf"] {
        let mut state = BloopState::new(kernels, &gpu.queue, layout, config, EmaInits::zeros()).unwrap();
        let bindings = match path {
            "pool" => state.bind_pool(&pool).unwrap(),
            _ => {
                let lists: Vec<&[LeafBuffer]> = gradients.iter().map(Vec::as_slice).collect();
                state.bind_hierarchy(&lists, Output::Buffers(&out)).unwrap()
            }
        };
        rows.push((path, time(&mut state, &bindings), config));
    }
    rows
}

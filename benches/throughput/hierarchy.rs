//! Rows for hierarchies of k = 2 and 4 auxiliary losses: the fused step over the pool (k + 1
//! gradients per leaf) and over a buffer of its own per leaf and loss. No unfused or host
//! baseline: those cover the two-loss methods.

use bloop::rng::SplitMix64;
use bloop::{
    BloopState, Config, ElementTypes, EmaInits, GpuContext, GradientPool, Kernels, Layout, LeafBuffer, Output,
    StepBindings,
};

/// (row name, k).
pub const LEVELS: [(&str, usize); 2] = [("hierarchy_k2", 2), ("hierarchy_k4", 4)];

/// A hierarchy's step, bound through the pool and through a buffer per leaf and loss, ready to
/// be timed like the two-loss methods' paths (the pool first).
pub struct Step {
    pub config: Config,
    pub paths: Vec<(&'static str, BloopState, StepBindings)>,
    // The buffers the bindings read and write, held while they are timed.
    _pool: GradientPool,
    _buffers: Vec<Vec<LeafBuffer>>,
}

impl Step {
    pub fn new(
        gpu: &GpuContext,
        kernels: &std::sync::Arc<Kernels>,
        layout: &Layout,
        k: usize,
        rng: &mut SplitMix64,
    ) -> bloop::Result<Step> {
        let config = Config::hierarchy(&vec![0.5 / k as f64; k]).ema(0.01);
        let pool = GradientPool::hierarchy(&gpu.device, layout, k, false, ElementTypes::default())?;
        for level in 0..=k {
            super::fill(gpu, pool.gradient_leaves(level).expect("levels 0 ..= k"), rng);
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
        let mut buffers: Vec<Vec<LeafBuffer>> = (0..=k).map(|_| per_leaf("hierarchy gradient")).collect();
        for leaves in &buffers {
            super::fill(gpu, leaves, rng);
        }
        let out = per_leaf("hierarchy output");
        let pool_state = BloopState::new(kernels, &gpu.queue, layout, config, EmaInits::zeros())?;
        let pool_bindings = pool_state.bind_pool(&pool)?;
        let leaf_state = BloopState::new(kernels, &gpu.queue, layout, config, EmaInits::zeros())?;
        let lists: Vec<&[LeafBuffer]> = buffers.iter().map(Vec::as_slice).collect();
        let leaf_bindings = leaf_state.bind_hierarchy(&lists, Output::Buffers(&out))?;
        buffers.push(out);
        let paths = vec![("pool", pool_state, pool_bindings), ("per-leaf", leaf_state, leaf_bindings)];
        Ok(Step { config, paths, _pool: pool, _buffers: buffers })
    }
}

//! What each leaf adds to a step: a model of many small leaves against one leaf of the same
//! total size, both through the pool, timed in turn round by round (`Clock::interleaved`), so
//! that the per-leaf overhead is a paired figure on a machine whose speed drifts.

use bloop::rng::SplitMix64;
use bloop::{BloopState, Config, EmaInits, GpuContext, GradientPool, Layout, Method};
use serde::Serialize;

use super::{fill, path_rows, Clock, Context, CopyKernel, Row, Workload};

/// (leaves, elements per leaf). First a control, one leaf against the same one leaf: its
/// ratio should be 1, and where it is not, the timing is off. Then the cases; `--quick`
/// keeps the control and the two the 0.5 us target is measured with (10^4 leaves of 64
/// elements, 10^5 one-element leaves).
pub const CASES: [(u64, u64); 6] = [(1, 640_000), (256, 64), (2_048, 64), (10_000, 64), (16_384, 1), (100_000, 1)];

/// Whether `--quick` keeps the case.
pub fn in_quick(case: (u64, u64)) -> bool {
    matches!(case, (1, _) | (10_000, 64) | (100_000, 1))
}

/// The overhead target of issue 23, microseconds per leaf and step on lavapipe.
pub const TARGET_US: f64 = 0.5;

/// One case's figures: the many-leaf step's row (its `pool_ratio` is its time over the
/// one-leaf step's, paired, as `paired_ratio`), the one-leaf step's median, and the overhead
/// per leaf.
#[derive(Clone, Debug, Serialize)]
pub struct LeavesRow {
    pub leaves: u64,
    pub leaf_len: u64,
    pub one_leaf_median_ms: f64,
    /// The one-leaf step's GB/s over the copy kernel's, paired (`Row::roofline_fraction`).
    pub one_leaf_roofline_fraction: f64,
    /// Time with the leaves over time with one leaf: the geometric mean of the medians over
    /// rounds of that ratio timed in one order and the inverse timed in the other.
    pub paired_ratio: f64,
    /// (time with the leaves - time with one leaf) / leaves, from the paired ratio and the
    /// one-leaf median, in microseconds.
    pub overhead_us_per_leaf: f64,
    pub target_us_per_leaf: f64,
    pub row: Row,
}

impl LeavesRow {
    pub fn line(&self) -> String {
        if self.leaves == 1 {
            return format!(
                "control: one leaf of {} against itself (other buffers): {:.3} ms, paired x{:.2}",
                self.leaf_len, self.one_leaf_median_ms, self.paired_ratio
            );
        }
        format!(
            "{:>7} x {:<3} one leaf {:>9.3} ms (roof {:.2}), leaves {:>9.3} ms, paired x{:>7.2}, {:>7.3} us per leaf (target {})",
            self.leaves,
            self.leaf_len,
            self.one_leaf_median_ms,
            self.one_leaf_roofline_fraction,
            self.row.stats.median_ms,
            self.paired_ratio,
            self.overhead_us_per_leaf,
            self.target_us_per_leaf
        )
    }
}

/// What the rows are timed with.
#[derive(Clone, Copy)]
pub struct Timing<'a> {
    pub gpu: &'a GpuContext,
    pub info: &'a wgpu::AdapterInfo,
    pub clock: &'a Clock,
    pub reps: usize,
}

/// Times `bloop` (guard on, f32) through the pool on `leaves` leaves of `leaf_len` elements
/// against one leaf of the same size, in turn with the copy kernel.
pub fn measure(
    timing: Timing,
    kernels: &std::sync::Arc<bloop::Kernels>,
    (leaves, leaf_len): (u64, u64),
    rng: &mut SplitMix64,
) -> bloop::Result<LeavesRow> {
    let Timing { gpu, info, clock, reps } = timing;
    let many = Layout::from_lengths(&vec![leaf_len; leaves as usize])?;
    let one = Layout::from_lengths(&[leaves * leaf_len])?;
    let config = Config::new(Method::Bloop).ema(0.01).lambda(0.5);
    let mut pools = Vec::new();
    let mut paths = Vec::new();
    for (path, layout) in [("one leaf", &one), ("pool", &many)] {
        let pool = GradientPool::new(&gpu.device, layout, false)?;
        fill(gpu, pool.main_leaves(), rng);
        fill(gpu, pool.aux_leaves(), rng);
        let state = BloopState::new(kernels, &gpu.queue, layout, config, EmaInits::zeros())?;
        let bindings = state.bind_pool(&pool)?;
        paths.push((path, state, bindings));
        pools.push(pool);
    }
    let workload = Workload { name: format!("{leaves} x {leaf_len}"), layout: many };
    let copy_kernel = CopyKernel::new(&gpu.device, leaves * leaf_len);
    let copy_gbps =
        copy_kernel.gbps(clock.stats(gpu, reps, &mut |encoder, t| copy_kernel.record(encoder, t)).median_ms);
    let context = Context { gpu, info, clock, reps, workload: &workload, copy_kernel: &copy_kernel, copy_gbps };
    // Timed in both orders: on lavapipe the second step of a round ran up to 1.2 times the
    // first even when both were the same step (the control), so one order alone would charge
    // that to the leaves. The geometric mean of the two orders' paired ratios cancels it.
    let mut rows = path_rows(&context, "bloop", &config, &mut paths, None);
    paths.reverse();
    let backward = path_rows(&context, "bloop", &config, &mut paths, None);
    let mut row = rows.pop().expect("the many-leaf path's row");
    let (one_leaf_median_ms, one_leaf_roofline_fraction) = (rows[0].stats.median_ms, rows[0].roofline_fraction);
    let paired_ratio = (row.pool_ratio / backward[1].pool_ratio).sqrt();
    // The row's `pool_ratio` is the time over the one leaf's, both orders.
    row.pool_ratio = paired_ratio;
    Ok(LeavesRow {
        leaves,
        leaf_len,
        one_leaf_median_ms,
        one_leaf_roofline_fraction,
        paired_ratio,
        overhead_us_per_leaf: (paired_ratio - 1.0) * one_leaf_median_ms * 1e3 / leaves as f64,
        target_us_per_leaf: TARGET_US,
        row,
    })
}

//! Sharded steps over MPI: run with `mpirun -n N target/release/deps/mpi_sharded-*` (`.ci/run`
//! does, at 2, 3 and 4 ranks); `cargo test -p bloop-mpi` runs it on one rank.
//!
//! Every rank draws the same random layouts, configs and gradients, owns an uneven share of the
//! leaves (the last rank none, from 3 ranks up), and checks its shard of the result against the
//! f64 reference over the whole model; the errors are summed over the ranks, so every rank
//! judges the global relative error. Then: mismatched configs and layouts fail on every rank,
//! and a NaN on one rank skips the step on every rank.

use std::sync::Arc;

use bloop::reference::{widen, ReferenceState};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, Collective, Config, EmaInit, EmaInits, EmaRole, Error, GpuContext, GradientPool, Kernels, Layout,
    Method, ShardedBindings, ShardedState,
};
use bloop_mpi::MpiCollective;

/// The golden cases' bound for f32 (`bloop::conformance::F32_BOUND`, test scaffolding).
const BOUND: f64 = 1e-5;

struct Rank {
    gpu: GpuContext,
    kernels: Arc<Kernels>,
    comm: MpiCollective,
    checks: usize,
}

fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    rng.next_u64() % n
}

fn normal_leaves(rng: &mut SplitMix64, lengths: &[u64], scale: f64) -> Vec<Vec<f32>> {
    lengths.iter().map(|&n| (0..n).map(|_| (rng.next_normal() * scale) as f32).collect()).collect()
}

fn pick<T: Clone>(all: &[T], indices: &[usize]) -> Vec<T> {
    indices.iter().map(|&i| all[i].clone()).collect()
}

/// Uneven shares: rank 0 about half the leaves, the last rank none from 3 ranks up.
fn split(rng: &mut SplitMix64, leaves: usize, size: usize) -> Vec<Vec<usize>> {
    let owners = if size >= 3 { size - 1 } else { size };
    let mut shards = vec![Vec::new(); size];
    for i in 0..leaves {
        let rank = if below(rng, 2) == 0 { 0 } else { below(rng, owners as u64) as usize };
        shards[rank].push(i);
    }
    shards
}

impl Rank {
    fn bind(&self, state: &ShardedState) -> (Option<GradientPool>, ShardedBindings) {
        let pool = state.local_layout().map(|l| GradientPool::new(&self.gpu.device, l, false).unwrap());
        let bindings = state.bind_pool(pool.as_ref()).unwrap();
        (pool, bindings)
    }

    fn step(
        &self,
        state: &mut ShardedState,
        pool: Option<&GradientPool>,
        bindings: &ShardedBindings,
        g_main: &[Vec<f32>],
        g_aux: &[Vec<f32>],
    ) -> bloop::GlobalSums {
        let (device, queue) = (&self.gpu.device, &self.gpu.queue);
        if let Some(pool) = pool {
            for (k, &i) in state.owned().iter().enumerate() {
                let leaf = pool.main(k).unwrap();
                queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&g_main[i]));
                let leaf = pool.aux(k).unwrap();
                queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&g_aux[i]));
                let nan = vec![f32::NAN; g_main[i].len()];
                let leaf = pool.output(k).unwrap();
                queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&nan));
            }
        }
        let mut encoder = device.create_command_encoder(&Default::default());
        state.record_sums(&mut encoder, bindings).unwrap();
        queue.submit([encoder.finish()]);
        let sums = state.exchange_sums(&self.comm).unwrap();
        let mut encoder = device.create_command_encoder(&Default::default());
        state.record_apply(&mut encoder, bindings).unwrap();
        queue.submit([encoder.finish()]);
        sums
    }

    /// This rank's (direction, main EMA, aux EMA) per owned leaf.
    fn results(&self, state: &ShardedState, pool: Option<&GradientPool>) -> [Vec<Vec<f32>>; 3] {
        let (Some(local), Some(pool)) = (state.local_state(), pool) else { return [vec![], vec![], vec![]] };
        let out = read_leaves(&self.gpu.device, &self.gpu.queue, pool.output_leaves()).unwrap();
        let method = state.config().method;
        let ema = |role, kept: bool| if kept { local.read_ema(role).unwrap() } else { vec![] };
        [out, ema(EmaRole::Main, method.has_main_ema()), ema(EmaRole::Aux, method.has_aux_ema())]
    }

    /// `||mine - expected|| / ||expected||` over every rank's leaves.
    fn global_error(&self, mine: &[Vec<f32>], expected: &[Vec<f64>]) -> f64 {
        let mut sums = [0.0, 0.0];
        for (a, b) in mine.iter().zip(expected) {
            for (&x, &y) in a.iter().zip(b) {
                sums[0] += (x as f64 - y) * (x as f64 - y);
                sums[1] += y * y;
            }
        }
        self.comm.all_reduce_sum(&mut sums).unwrap();
        if sums[1] == 0.0 {
            sums[0].sqrt()
        } else {
            (sums[0] / sums[1]).sqrt()
        }
    }

    fn sharded_equals_reference(&mut self, seed: u64, method: Method) {
        let mut rng = SplitMix64::new(seed);
        let count = 2 + below(&mut rng, 10) as usize;
        let lengths: Vec<u64> = (0..count)
            .map(|_| if below(&mut rng, 3) == 0 { 1 + below(&mut rng, 16) } else { 1 + below(&mut rng, 6000) })
            .collect();
        let layout = Layout::from_lengths(&lengths).unwrap();
        let ratio_only = matches!(method, Method::Bloop | Method::DynamicBarrier) && below(&mut rng, 2) == 0;
        let config = Config::new(method)
            .ema(rng.next_f64())
            .lambda(10f64.powf(rng.next_f64() * 4.0 - 3.0))
            .rescale(below(&mut rng, 2) == 0)
            .ratio_only(ratio_only)
            .guard(below(&mut rng, 4) != 0)
            .diagnostics(below(&mut rng, 2) == 0);
        let init = normal_leaves(&mut rng, &lengths, 1.0);
        let shards = split(&mut rng, count, self.comm.size());
        let owned = &shards[self.comm.rank()];
        let inits = EmaInits::both(EmaInit::Values(pick(&init, owned)));
        let mut state =
            ShardedState::new(&self.kernels, &self.gpu.queue, &layout, owned, config, inits, &self.comm).unwrap();
        let kept = |on: bool| if on { widen(&init) } else { vec![] };
        let mut reference = ReferenceState::new(config, kept(method.has_main_ema()), kept(method.has_aux_ema()));
        let (pool, bindings) = self.bind(&state);
        for step in 0..3 {
            let scale = 10f64.powf(rng.next_f64() * 2.0 - 1.0);
            let g_main = normal_leaves(&mut rng, &lengths, scale);
            let aux_scale = scale * (0.1 + rng.next_f64());
            let g_aux = normal_leaves(&mut rng, &lengths, aux_scale);
            self.step(&mut state, pool.as_ref(), &bindings, &g_main, &g_aux);
            let direction = reference.step(&widen(&g_main), &widen(&g_aux));
            let [d, e, a] = self.results(&state, pool.as_ref());
            let mut errors = [self.global_error(&d, &pick(&direction, owned)), 0.0, 0.0];
            if method.has_main_ema() {
                errors[1] = self.global_error(&e, &pick(&reference.main_ema, owned));
            }
            if method.has_aux_ema() {
                errors[2] = self.global_error(&a, &pick(&reference.aux_ema, owned));
            }
            assert!(
                errors.iter().all(|&e| e <= BOUND),
                "rank {}: seed {seed} step {step}: errors {errors:?}; {config:?}, shards {shards:?}, lengths {lengths:?}",
                self.comm.rank()
            );
            self.checks += 1;
        }
    }

    fn mismatches_fail_everywhere(&mut self) {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let layout = Layout::from_lengths(&[10, 20, 30, 40]).unwrap();
        let owned = &bloop::balanced_shards(&layout, size)[rank];
        let build = |layout: &Layout, config: Config| {
            ShardedState::new(&self.kernels, &self.gpu.queue, layout, owned, config, EmaInits::zeros(), &self.comm)
        };
        let last = size - 1;
        let config = Config::new(Method::Bloop).lambda(if rank == last && size > 1 { 0.25 } else { 0.5 });
        match build(&layout, config) {
            Err(Error::ShardMismatch { detail, .. }) if size > 1 => {
                assert!(detail.contains(&format!("rank {last}'s config differs")), "rank {rank}: {detail}")
            }
            Ok(_) if size == 1 => {}
            other => panic!("rank {rank}: expected a config mismatch, got {other:?}"),
        }
        let lengths: &[u64] = if rank == last && size > 1 { &[10, 20, 30, 41] } else { &[10, 20, 30, 40] };
        match build(&Layout::from_lengths(lengths).unwrap(), Config::new(Method::PcGrad)) {
            Err(Error::ShardMismatch { detail, .. }) if size > 1 => {
                assert!(detail.contains(&format!("rank {last}'s layout differs")), "rank {rank}: {detail}")
            }
            Ok(_) if size == 1 => {}
            other => panic!("rank {rank}: expected a layout mismatch, got {other:?}"),
        }
        self.checks += 2;
    }

    fn nan_on_one_rank_skips_everywhere(&mut self) {
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let layout = Layout::from_lengths(&[300, 17, 4100, 5, 999]).unwrap();
        let lengths = layout.lengths();
        let shards = bloop::balanced_shards(&layout, size);
        let owned = &shards[rank];
        // The NaN lies in the last leaf, owned by the last rank that owns any.
        let mut rng = SplitMix64::new(33);
        let init = normal_leaves(&mut rng, &lengths, 1.0);
        let mut poisoned = normal_leaves(&mut rng, &lengths, 1.0);
        poisoned[4][7] = f32::NAN;
        let g_aux = normal_leaves(&mut rng, &lengths, 1.0);
        for method in [Method::Bloop, Method::PcGrad, Method::Mixed] {
            let inits = EmaInits::both(EmaInit::Values(pick(&init, owned)));
            let config = Config::new(method).lambda(0.5);
            let mut state =
                ShardedState::new(&self.kernels, &self.gpu.queue, &layout, owned, config, inits, &self.comm).unwrap();
            let (pool, bindings) = self.bind(&state);
            let sums = self.step(&mut state, pool.as_ref(), &bindings, &poisoned, &g_aux);
            assert!(sums.skipped, "rank {rank} {method:?}");
            let [d, e, _] = self.results(&state, pool.as_ref());
            assert!(d.iter().flatten().all(|&x| x == 0.0), "rank {rank} {method:?}: a skipped step writes zeros");
            if method.has_main_ema() {
                assert_eq!(e, pick(&init, owned), "rank {rank} {method:?}: averages bit for bit");
            }
            if let Some(local) = state.local_state() {
                assert_eq!(local.skipped_steps().unwrap(), 1, "rank {rank} {method:?}");
            }
            self.checks += 1;
        }
    }
}

fn main() {
    let (_universe, comm) = bloop_mpi::init().expect("MPI");
    let gpu = GpuContext::from_env().expect("a GPU adapter (lavapipe is enough)");
    let kernels = Kernels::new(&gpu.device);
    let mut rank = Rank { gpu, kernels, comm, checks: 0 };
    let methods = [Method::Bloop, Method::DynamicBarrier, Method::PcGrad, Method::Mixed];
    for (m, method) in methods.into_iter().enumerate() {
        for trial in 0..4 {
            rank.sharded_equals_reference(1000 * (m as u64 + 1) + trial, method);
        }
    }
    rank.mismatches_fail_everywhere();
    rank.nan_on_one_rank_skips_everywhere();
    println!("mpi_sharded: rank {} of {}: {} checks passed", rank.comm.rank(), rank.comm.size(), rank.checks);
}

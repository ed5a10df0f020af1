//! Sharded steps (leaves split across ranks, sums reduced through a collective) against the
//! unsharded step and the f64 reference, with ranks as threads of one process.

mod common;

use bloop::reference::{relative_error, widen, ReferenceState};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Collective, Config, EmaInit, EmaInits, EmaRole, Error, GradientPool, Layout, Method,
    ShardedBindings, ShardedState, SingleRank, ThreadGroup,
};
use common::{below, normal_leaves};

const BOUND: f64 = bloop::conformance::F32_BOUND;

/// Runs `f` on `size` ranks, each a thread with its member of one [`ThreadGroup`].
fn on_ranks<T: Send>(size: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadGroup::new(size).into_iter().map(|member| scope.spawn(|| f(member))).collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

fn pick<T: Clone>(all: &[T], indices: &[usize]) -> Vec<T> {
    indices.iter().map(|&i| all[i].clone()).collect()
}

/// One rank's pool and bindings (none for an empty shard).
fn bind(state: &ShardedState) -> (Option<GradientPool>, ShardedBindings) {
    let pool = state.local_layout().map(|l| GradientPool::new(&common::gpu().device, l, false).unwrap());
    let bindings = state.bind_pool(pool.as_ref()).unwrap();
    (pool, bindings)
}

/// One sharded step of this rank: its leaves' gradients in, outputs poisoned, the three phases.
fn sharded_step(
    state: &mut ShardedState,
    pool: Option<&GradientPool>,
    bindings: &ShardedBindings,
    collective: &impl Collective,
    g_main: &[Vec<f32>],
    g_aux: &[Vec<f32>],
) -> bloop::GlobalSums {
    let gpu = common::gpu();
    if let Some(pool) = pool {
        let owned = state.owned();
        for (k, &i) in owned.iter().enumerate() {
            let leaf = pool.main(k).unwrap();
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&g_main[i]));
            let leaf = pool.aux(k).unwrap();
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&g_aux[i]));
            let nan = vec![f32::NAN; g_main[i].len()];
            let leaf = pool.output(k).unwrap();
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&nan));
        }
    }
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    state.record_sums(&mut encoder, bindings).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let sums = state.exchange_sums(collective).unwrap();
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    state.record_apply(&mut encoder, bindings).unwrap();
    gpu.queue.submit([encoder.finish()]);
    sums
}

/// Per-leaf values of one role.
type Gradients = Vec<Vec<f32>>;

/// This rank's outputs and averages, as (global leaf index, direction, main EMA, aux EMA).
type LeafResults = Vec<(usize, Vec<f32>, Vec<f32>, Vec<f32>)>;

fn results(state: &ShardedState, pool: Option<&GradientPool>) -> LeafResults {
    let (Some(local), Some(pool)) = (state.local_state(), pool) else { return vec![] };
    let gpu = common::gpu();
    let out = read_leaves(&gpu.device, &gpu.queue, pool.output_leaves()).unwrap();
    let method = state.config().method;
    let ema = |role, kept: bool| if kept { local.read_ema(role).unwrap() } else { vec![vec![]; out.len()] };
    let main = ema(EmaRole::Main, method.has_main_ema());
    let aux = ema(EmaRole::Aux, method.has_aux_ema());
    state.owned().iter().enumerate().map(|(k, &i)| (i, out[k].clone(), main[k].clone(), aux[k].clone())).collect()
}

/// Per-rank results put back in global leaf order.
fn assemble(per_rank: Vec<LeafResults>, leaves: usize) -> [Vec<Vec<f32>>; 3] {
    let mut all = [vec![vec![]; leaves], vec![vec![]; leaves], vec![vec![]; leaves]];
    for (i, d, e, a) in per_rank.into_iter().flatten() {
        all[0][i] = d;
        all[1][i] = e;
        all[2][i] = a;
    }
    all
}

/// Leaves split at random over `size` ranks (unevenly), the last rank owning none when
/// `leave_one_empty`.
fn random_split(rng: &mut SplitMix64, leaves: usize, size: usize, leave_one_empty: bool) -> Vec<Vec<usize>> {
    let owners = if leave_one_empty && size > 1 { size - 1 } else { size };
    let mut shards = vec![Vec::new(); size];
    for i in 0..leaves {
        // Skewed: rank 0 gets about half.
        let rank = if below(rng, 2) == 0 { 0 } else { below(rng, owners as u64) as usize };
        shards[rank].push(i);
    }
    shards
}

fn random_layout(rng: &mut SplitMix64) -> Layout {
    let count = 2 + below(rng, 12);
    let lengths: Vec<u64> =
        (0..count).map(|_| if below(rng, 3) == 0 { 1 + below(rng, 16) } else { 1 + below(rng, 6000) }).collect();
    Layout::from_lengths(&lengths).unwrap()
}

fn random_full_config(rng: &mut SplitMix64, method: Method) -> Config {
    common::random_config(rng, method).guard(below(rng, 4) != 0).diagnostics(below(rng, 2) == 0)
}

/// Three steps sharded over `size` ranks against the unsharded GPU step and the f64 reference.
fn check_trial(seed: u64, method: Method, size: usize) {
    let mut rng = SplitMix64::new(seed);
    let layout = random_layout(&mut rng);
    let lengths = layout.lengths();
    let config = random_full_config(&mut rng, method);
    let main_init = common::random_init(&mut rng, &lengths);
    let aux_init = common::random_init(&mut rng, &lengths);
    let shards = random_split(&mut rng, layout.len(), size, seed.is_multiple_of(2));
    let steps: Vec<(Gradients, Gradients)> = (0..3)
        .map(|_| {
            let scale = 10f64.powf(rng.next_f64() * 2.0 - 1.0);
            let aux_scale = scale * (0.1 + rng.next_f64());
            (normal_leaves(&mut rng, &lengths, scale), normal_leaves(&mut rng, &lengths, aux_scale))
        })
        .collect();
    let context = format!("seed {seed}, {size} ranks {shards:?}, {config:?}, lengths {lengths:?}");

    // The unsharded step on the GPU, and the reference.
    let (mut whole, mut reference) = common::state_with(&layout, config, main_init.clone(), aux_init.clone());
    let leaves = common::Leaves::new(&mut rng, common::gpu(), &layout, common::Arrangement::Pool { in_place: false });
    let whole_bindings = leaves.bind(&whole);
    let mut expected = Vec::new();
    for (g_main, g_aux) in &steps {
        common::run_step(&mut whole, &leaves, &whole_bindings, g_main, g_aux);
        let direction = reference.step(&widen(g_main), &widen(g_aux));
        let [d, _, _] = common::compare_step(&whole, &reference, &direction, leaves.output_leaves());
        assert!(d <= BOUND, "unsharded step: {d}; {context}");
        let gpu = common::gpu();
        expected.push((read_leaves(&gpu.device, &gpu.queue, leaves.output_leaves()).unwrap(), direction));
    }

    let per_rank: Vec<Vec<LeafResults>> = on_ranks(size, |comm| {
        let owned = &shards[comm.rank()];
        let inits =
            EmaInits { main: EmaInit::Values(pick(&main_init, owned)), aux: EmaInit::Values(pick(&aux_init, owned)) };
        let mut state =
            ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, owned, config, inits, &comm).unwrap();
        let (pool, bindings) = bind(&state);
        steps
            .iter()
            .map(|(g_main, g_aux)| {
                sharded_step(&mut state, pool.as_ref(), &bindings, &comm, g_main, g_aux);
                results(&state, pool.as_ref())
            })
            .collect()
    });
    let mut ref_state = ReferenceState::new(
        config,
        if method.has_main_ema() { widen(&main_init) } else { vec![] },
        if method.has_aux_ema() { widen(&aux_init) } else { vec![] },
    );
    for (step, (g_main, g_aux)) in steps.iter().enumerate() {
        let [direction, main, aux] = assemble(per_rank.iter().map(|r| r[step].clone()).collect(), layout.len());
        let (unsharded, reference_direction) = &expected[step];
        let _ = ref_state.step(&widen(g_main), &widen(g_aux));
        let errors = [
            relative_error(&widen(&direction), &widen(unsharded)),
            relative_error(&widen(&direction), reference_direction),
            if method.has_main_ema() { relative_error(&widen(&main), &ref_state.main_ema) } else { 0.0 },
            if method.has_aux_ema() { relative_error(&widen(&aux), &ref_state.aux_ema) } else { 0.0 },
        ];
        assert!(errors.iter().all(|&e| e <= BOUND), "step {step}: errors {errors:?}; {context}");
    }
}

fn check_method(method: Method, first_seed: u64) {
    for (trial, size) in [2, 3, 4, 2, 3, 4].into_iter().enumerate() {
        check_trial(first_seed + trial as u64, method, size);
    }
}

#[test]
fn sharded_bloop_equals_unsharded() {
    check_method(Method::Bloop, 100);
}

#[test]
fn sharded_dynamic_barrier_equals_unsharded() {
    check_method(Method::DynamicBarrier, 200);
}

#[test]
fn sharded_pcgrad_equals_unsharded() {
    check_method(Method::PcGrad, 300);
}

#[test]
fn sharded_mixed_equals_unsharded() {
    check_method(Method::Mixed, 400);
}

#[test]
fn every_switch_sharded_equals_unsharded() {
    // ratio_only, rescale, guard and diagnostics on and off, at 3 ranks with an empty one.
    let mut seed = 500;
    for method in [Method::Bloop, Method::DynamicBarrier] {
        for _ in 0..4 {
            check_trial(seed, method, 3);
            seed += 2;
        }
    }
}

#[test]
fn one_rank_equals_the_ordinary_step_bit_for_bit() {
    let mut rng = SplitMix64::new(9);
    let layout = Layout::from_lengths(&[5000, 7, 301]).unwrap();
    let lengths = layout.lengths();
    for method in [Method::Bloop, Method::DynamicBarrier, Method::PcGrad, Method::Mixed] {
        let config = Config::new(method).lambda(0.7).ema(0.2).diagnostics(true);
        let init = normal_leaves(&mut rng, &lengths, 1.0);
        let (mut whole, _) = common::state_with(&layout, config, init.clone(), init.clone());
        let leaves =
            common::Leaves::new(&mut rng, common::gpu(), &layout, common::Arrangement::Pool { in_place: false });
        let whole_bindings = leaves.bind(&whole);
        let inits = EmaInits::both(EmaInit::Values(init));
        let owned = [0, 1, 2];
        let mut sharded =
            ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, &owned, config, inits, &SingleRank)
                .unwrap();
        let (pool, bindings) = bind(&sharded);
        for _ in 0..2 {
            let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 0.5));
            common::run_step(&mut whole, &leaves, &whole_bindings, &g_main, &g_aux);
            sharded_step(&mut sharded, pool.as_ref(), &bindings, &SingleRank, &g_main, &g_aux);
            let gpu = common::gpu();
            let a = read_leaves(&gpu.device, &gpu.queue, leaves.output_leaves()).unwrap();
            let b = read_leaves(&gpu.device, &gpu.queue, pool.as_ref().unwrap().output_leaves()).unwrap();
            assert_eq!(a, b, "{method:?}");
            let local = sharded.local_state().unwrap();
            if method.has_main_ema() {
                assert_eq!(whole.read_ema(EmaRole::Main).unwrap(), local.read_ema(EmaRole::Main).unwrap());
            }
            let (d1, d2) = (whole.read_diagnostics().unwrap(), local.read_diagnostics().unwrap());
            assert_eq!(
                (d1.ratio, d1.ratio_aux, d1.dot_ema_aux, d1.main_sq_norm),
                (d2.ratio, d2.ratio_aux, d2.dot_ema_aux, d2.main_sq_norm)
            );
        }
        assert_eq!(sharded.steps(), 2);
        assert_eq!(sharded.local_state().unwrap().steps(), 2);
    }
}

#[test]
fn a_nan_on_one_rank_skips_the_step_on_every_rank() {
    let layout = Layout::from_lengths(&[300, 17, 4100, 5]).unwrap();
    let lengths = layout.lengths();
    let shards = [vec![0, 3], vec![1], vec![2]];
    let mut rng = SplitMix64::new(21);
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let mut poisoned = normal_leaves(&mut rng, &lengths, 1.0);
    poisoned[1][5] = f32::NAN; // on rank 1 only
    let clean = normal_leaves(&mut rng, &lengths, 1.0);
    let g_aux = normal_leaves(&mut rng, &lengths, 1.0);
    for method in [Method::Bloop, Method::PcGrad, Method::Mixed] {
        let config = Config::new(method).lambda(0.5);
        let per_rank = on_ranks(3, |comm| {
            let owned = &shards[comm.rank()];
            let inits = EmaInits::both(EmaInit::Values(pick(&init, owned)));
            let mut state =
                ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, owned, config, inits, &comm)
                    .unwrap();
            let (pool, bindings) = bind(&state);
            let skipped = sharded_step(&mut state, pool.as_ref(), &bindings, &comm, &poisoned, &g_aux);
            let after_skip = results(&state, pool.as_ref());
            let counter = state.local_state().unwrap().skipped_steps().unwrap();
            let normal = sharded_step(&mut state, pool.as_ref(), &bindings, &comm, &clean, &g_aux);
            (skipped, after_skip, counter, normal, results(&state, pool.as_ref()))
        });
        for (rank, (skipped, after_skip, counter, normal, after_normal)) in per_rank.into_iter().enumerate() {
            assert!(skipped.skipped, "{method:?} rank {rank}");
            assert!(!normal.skipped, "{method:?} rank {rank}");
            assert_eq!(counter, 1, "{method:?} rank {rank}");
            for (i, direction, main_ema, _) in after_skip {
                assert!(direction.iter().all(|&d| d == 0.0), "{method:?} rank {rank} leaf {i}");
                if method.has_main_ema() {
                    // Bit for bit as they were.
                    assert_eq!(main_ema, init[i], "{method:?} rank {rank} leaf {i}");
                }
            }
            for (i, direction, _, _) in after_normal {
                assert!(direction.iter().all(|d| d.is_finite() && *d != 0.0), "{method:?} rank {rank} leaf {i}");
            }
        }
    }
}

/// Every rank's result of `ShardedState::new` with per-rank layout, owned leaves and config.
fn build_on_ranks(
    size: usize,
    setup: impl Fn(usize) -> (Layout, Vec<usize>, Config) + Sync,
) -> Vec<Result<ShardedState, Error>> {
    on_ranks(size, |comm| {
        let (layout, owned, config) = setup(comm.rank());
        ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, &owned, config, EmaInits::zeros(), &comm)
    })
}

fn assert_mismatch_everywhere(results: Vec<Result<ShardedState, Error>>, words: &str) {
    for (rank, result) in results.into_iter().enumerate() {
        match result {
            Err(Error::ShardMismatch { rank: r, size, detail }) => {
                assert_eq!((r, size), (rank, 3));
                assert!(detail.contains(words), "rank {rank}: {detail}");
            }
            other => panic!("rank {rank}: expected ShardMismatch about {words}, got {other:?}"),
        }
    }
}

#[test]
fn mismatched_configs_layouts_and_owners_fail_on_every_rank() {
    let layout = Layout::from_lengths(&[10, 20, 30]).unwrap();
    let owned = |rank: usize| vec![rank];
    let config = Config::new(Method::Bloop).lambda(0.5);
    assert_mismatch_everywhere(
        build_on_ranks(3, |r| (layout.clone(), owned(r), config.lambda(if r == 2 { 0.25 } else { 0.5 }))),
        "rank 2's config differs from rank 0's in `lambda`",
    );
    assert_mismatch_everywhere(
        build_on_ranks(3, |r| {
            let lengths = if r == 1 { [10, 20, 31] } else { [10, 20, 30] };
            (Layout::from_lengths(&lengths).unwrap(), owned(r), config)
        }),
        "rank 1's layout differs",
    );
    assert_mismatch_everywhere(
        build_on_ranks(3, |r| (layout.clone(), if r == 2 { vec![1] } else { owned(r) }, config)),
        "leaf `leaf1` is owned by 2 ranks",
    );
    assert_mismatch_everywhere(
        build_on_ranks(3, |r| (layout.clone(), if r == 2 { vec![] } else { owned(r) }, config)),
        "leaf `leaf2` is owned by 0 ranks",
    );
    // A rank whose own arguments are invalid gets its error; the others are told which rank.
    let results = build_on_ranks(3, |r| (layout.clone(), owned(r), config.lambda(if r == 0 { -1.0 } else { 0.5 })));
    for (rank, result) in results.into_iter().enumerate() {
        match (rank, result) {
            (0, Err(Error::InvalidConfig { field: "lambda", .. })) => {}
            (_, Err(Error::ShardMismatch { detail, .. })) if rank != 0 => assert!(detail.contains("rank 0 could not")),
            (rank, other) => panic!("rank {rank}: {other:?}"),
        }
    }
}

#[test]
fn phases_out_of_order_are_refused() {
    let layout = Layout::from_lengths(&[10]).unwrap();
    let config = Config::new(Method::Bloop);
    let mut state = ShardedState::new(
        &common::kernels(),
        &common::gpu().queue,
        &layout,
        &[0],
        config,
        EmaInits::zeros(),
        &SingleRank,
    )
    .unwrap();
    let (_pool, bindings) = bind(&state);
    let gpu = common::gpu();
    assert!(matches!(state.exchange_sums(&SingleRank), Err(Error::StepOrder(_))));
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    assert!(matches!(state.record_apply(&mut encoder, &bindings), Err(Error::StepOrder(_))));
    state.record_sums(&mut encoder, &bindings).unwrap();
    assert!(matches!(state.record_sums(&mut encoder, &bindings), Err(Error::StepOrder(_))));
    gpu.queue.submit([encoder.finish()]);
    state.exchange_sums(&SingleRank).unwrap();
    assert_eq!(state.steps(), 0);
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    state.record_apply(&mut encoder, &bindings).unwrap();
    gpu.queue.submit([encoder.finish()]);
    assert_eq!(state.steps(), 1);
    // An empty shard binds nothing; a non-empty one needs its buffers.
    assert!(matches!(state.bind_pool(None), Err(Error::Mismatch(_))));
}

#[test]
fn exchanging_sums_whose_encoder_was_not_submitted_is_refused() {
    let layout = Layout::from_lengths(&[300, 7]).unwrap();
    let config = Config::new(Method::Bloop).lambda(0.5);
    let mut state = ShardedState::new(
        &common::kernels(),
        &common::gpu().queue,
        &layout,
        &[0, 1],
        config,
        EmaInits::zeros(),
        &SingleRank,
    )
    .unwrap();
    let (pool, bindings) = bind(&state);
    let mut rng = SplitMix64::new(8);
    let (g_main, g_aux) =
        (normal_leaves(&mut rng, &layout.lengths(), 1.0), normal_leaves(&mut rng, &layout.lengths(), 1.0));
    let first = sharded_step(&mut state, pool.as_ref(), &bindings, &SingleRank, &g_main, &g_aux);
    let before = state.local_state().unwrap().read_ema(EmaRole::Main).unwrap();
    let gpu = common::gpu();
    for _ in 0..2 {
        let mut unsubmitted = gpu.device.create_command_encoder(&Default::default());
        state.record_sums(&mut unsubmitted, &bindings).unwrap();
        let err = state.exchange_sums(&SingleRank).unwrap_err();
        assert!(matches!(err, Error::StepOrder(m) if m.contains("submit the encoder of record_sums")), "{err}");
        assert_eq!(state.steps(), 1);
        assert_eq!(state.local_state().unwrap().read_ema(EmaRole::Main).unwrap(), before);
    }
    // The state is back before record_sums: a submitted step goes through with real sums.
    let second = sharded_step(&mut state, pool.as_ref(), &bindings, &SingleRank, &g_main, &g_aux);
    assert!(second.dots[1] > 0.0 && first.grads[0] > 0.0 && second.grads[0] == first.grads[0], "{second:?}");
}

#[test]
fn a_rank_that_leaves_fails_the_others_instead_of_hanging() {
    let results = on_ranks(3, |comm| {
        if comm.rank() == 1 {
            drop(comm);
            return Ok(());
        }
        let mut values = [1.0];
        comm.all_reduce_sum(&mut values)
    });
    assert!(matches!(&results[0], Err(Error::Collective { operation: "all_reduce_sum", .. })), "{results:?}");
    assert!(matches!(&results[2], Err(Error::Collective { .. })), "{results:?}");
}

#[test]
fn thread_group_reductions_agree_on_every_rank() {
    let results = on_ranks(4, |comm| {
        let r = comm.rank() as f64;
        let mut sum = [r, 1.0, 0.1 * r];
        comm.all_reduce_sum(&mut sum).unwrap();
        let mut max = [r, -r, if comm.rank() == 2 { f64::NAN } else { 0.0 }];
        comm.all_reduce_max(&mut max).unwrap();
        let gathered = comm.all_gather(&[comm.rank() as u64, 7]).unwrap();
        (sum, max, gathered)
    });
    for (sum, max, gathered) in &results {
        assert_eq!(sum[..2], [6.0, 4.0]);
        assert_eq!(sum[2].to_bits(), results[0].0[2].to_bits());
        assert_eq!(max[..2], [3.0, 0.0]);
        assert!(max[2].is_nan());
        assert_eq!(gathered, &vec![0, 7, 1, 7, 2, 7, 3, 7]);
    }
}

#[test]
fn balanced_shards_cover_every_leaf_once() {
    let layout = Layout::from_lengths(&[100, 1, 1, 50, 300, 2, 2]).unwrap();
    for ranks in 1..=9 {
        let shards = balanced_shards_checked(&layout, ranks);
        assert_eq!(shards.len(), ranks);
    }
    assert_eq!(bloop::balanced_shards(&layout, 2), vec![vec![0, 1, 2, 3], vec![4, 5, 6]]);
}

fn balanced_shards_checked(layout: &Layout, ranks: usize) -> Vec<Vec<usize>> {
    let shards = bloop::balanced_shards(layout, ranks);
    let mut all: Vec<usize> = shards.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..layout.len()).collect::<Vec<_>>());
    shards
}

/// Writes f32 values into leaves of any element type the library placed (word-aligned).
fn write_typed(leaves: &[bloop::LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        let mut bytes = leaf.dtype.encode(v);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        common::gpu().queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}

#[test]
fn half_precision_sharded_equals_unsharded() {
    use bloop::{DType, ElementTypes};
    let gpu = common::gpu();
    let layout = Layout::from_lengths(&[999, 3, 4097, 18, 255]).unwrap();
    let lengths = layout.lengths();
    let shards = [vec![0, 3], vec![], vec![1, 2, 4]];
    let mut rng = SplitMix64::new(71);
    let steps: Vec<(Gradients, Gradients)> =
        (0..2).map(|_| (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 0.7))).collect();
    for types in [ElementTypes::gradients_and_output(DType::F16), ElementTypes::all(DType::Bf16)] {
        for method in [Method::Bloop, Method::PcGrad] {
            let config = Config::new(method).lambda(0.6).ema(0.3).types(types);
            let mut whole =
                BloopState::new(&common::kernels(), &gpu.queue, &layout, config, EmaInits::zeros()).unwrap();
            let pool = GradientPool::typed(&gpu.device, &layout, false, types).unwrap();
            let bindings = whole.bind_pool(&pool).unwrap();
            let mut expected = Vec::new();
            for (g_main, g_aux) in &steps {
                write_typed(pool.main_leaves(), g_main);
                write_typed(pool.aux_leaves(), g_aux);
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                whole.record_step(&mut encoder, &bindings).unwrap();
                gpu.queue.submit([encoder.finish()]);
                expected.push(read_leaves(&gpu.device, &gpu.queue, pool.output_leaves()).unwrap());
            }
            let per_rank = on_ranks(3, |comm| {
                let owned = &shards[comm.rank()];
                let mut state =
                    ShardedState::new(&common::kernels(), &gpu.queue, &layout, owned, config, EmaInits::zeros(), &comm)
                        .unwrap();
                let pool = state.local_layout().map(|l| GradientPool::typed(&gpu.device, l, false, types).unwrap());
                let bindings = state.bind_pool(pool.as_ref()).unwrap();
                let mut outputs = Vec::new();
                for (g_main, g_aux) in &steps {
                    if let Some(pool) = &pool {
                        write_typed(pool.main_leaves(), &pick(g_main, owned));
                        write_typed(pool.aux_leaves(), &pick(g_aux, owned));
                    }
                    let mut encoder = gpu.device.create_command_encoder(&Default::default());
                    state.record_sums(&mut encoder, &bindings).unwrap();
                    gpu.queue.submit([encoder.finish()]);
                    state.exchange_sums(&comm).unwrap();
                    let mut encoder = gpu.device.create_command_encoder(&Default::default());
                    state.record_apply(&mut encoder, &bindings).unwrap();
                    gpu.queue.submit([encoder.finish()]);
                    let out = pool.as_ref().map(|p| read_leaves(&gpu.device, &gpu.queue, p.output_leaves()).unwrap());
                    outputs.push(owned.iter().copied().zip(out.unwrap_or_default()).collect::<Vec<_>>());
                }
                outputs
            });
            for (step, expected) in expected.iter().enumerate() {
                let mut direction = vec![vec![]; layout.len()];
                for (i, d) in per_rank.iter().flat_map(|r| r[step].clone()) {
                    direction[i] = d;
                }
                // Only the order of the sums differs: a 16-bit rounding may flip, no more.
                let error = relative_error(&widen(&direction), &widen(expected));
                assert!(error <= 1e-3, "{types:?} {method:?} step {step}: {error}");
            }
        }
    }
}

#[test]
fn a_fused_optimizer_is_refused_on_every_rank() {
    let layout = Layout::from_lengths(&[10, 3]).unwrap();
    let config = Config::new(Method::Bloop).optimizer(bloop::Optimizer::sgd(0.1));
    let results = on_ranks(2, |comm| {
        let owned = [comm.rank()];
        ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, &owned, config, EmaInits::zeros(), &comm)
            .map(drop)
    });
    for result in &results {
        assert!(matches!(result, Err(Error::Optimizer(m)) if m.contains("sharded")), "{results:?}");
    }
}

#[test]
fn a_hierarchy_is_refused_on_every_rank() {
    let layout = Layout::from_lengths(&[10, 3]).unwrap();
    let config = Config::hierarchy(&[0.5, 0.25]);
    let results = on_ranks(2, |comm| {
        let owned = [comm.rank()];
        ShardedState::new(&common::kernels(), &common::gpu().queue, &layout, &owned, config, EmaInits::zeros(), &comm)
            .map(drop)
    });
    for result in &results {
        assert!(matches!(result, Err(Error::InvalidConfig { field: "method", .. })), "{results:?}");
    }
}

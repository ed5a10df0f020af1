//! A hierarchy of auxiliary losses: what it converges to (the lexicographic optimum of three
//! quadratics), the guard, diagnostics, checkpoints, and every refusal.

mod common;

use bloop::hierarchy::HierarchyReference;
use bloop::reference::{relative_error, widen};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Checkpoint, Config, DType, ElementTypes, EmaInit, EmaInits, EmaRole, Error,
    ExternalGradients, GpuContext, GradientPool, Kernels, Layout, LeafBuffer, Method, Order, Output,
};
use common::{gpu, kernels, normal_leaves};

type Matrix = Vec<Vec<f64>>;

fn random_matrix(rng: &mut SplitMix64, rows: usize, cols: usize) -> Matrix {
    let scale = 1.0 / (cols as f64).sqrt();
    (0..rows).map(|_| (0..cols).map(|_| rng.next_normal() * scale).collect()).collect()
}

fn mat_vec(a: &Matrix, x: &[f64]) -> Vec<f64> {
    a.iter().map(|row| row.iter().zip(x).map(|(a, x)| a * x).sum()).collect()
}

fn mat_t_vec(a: &Matrix, y: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; a[0].len()];
    for (row, y) in a.iter().zip(y) {
        for (o, a) in out.iter_mut().zip(row) {
            *o += a * y;
        }
    }
    out
}

/// Solves `m x = rhs` (m square, well conditioned) by Gaussian elimination with pivoting.
#[allow(clippy::needless_range_loop)]
fn solve(mut m: Matrix, mut rhs: Vec<f64>) -> Vec<f64> {
    let n = rhs.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs())).unwrap();
        m.swap(col, pivot);
        rhs.swap(col, pivot);
        for row in col + 1..n {
            let f = m[row][col] / m[col][col];
            for c in col..n {
                m[row][c] -= f * m[col][c];
            }
            rhs[row] -= f * rhs[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|c| m[row][c] * x[c]).sum();
        x[row] = (rhs[row] - s) / m[row][row];
    }
    x
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt()
}

fn norm(a: &[f64]) -> f64 {
    a.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Three quadratics over 24 parameters: main `1/2 |A0 x - b0|^2`, first aux
/// `1/2 |A1 x - b1|^2` (underdetermined least squares, one row each), second aux
/// `1/2 |x - x*|^2`.
struct Problem {
    a0: Matrix,
    b0: Vec<f64>,
    a1: Matrix,
    b1: Vec<f64>,
    target: Vec<f64>,
}

impl Problem {
    fn gradients(&self, x: &[f64]) -> [Vec<f64>; 3] {
        let r0: Vec<f64> = mat_vec(&self.a0, x).iter().zip(&self.b0).map(|(a, b)| a - b).collect();
        let r1: Vec<f64> = mat_vec(&self.a1, x).iter().zip(&self.b1).map(|(a, b)| a - b).collect();
        [mat_t_vec(&self.a0, &r0), mat_t_vec(&self.a1, &r1), x.iter().zip(&self.target).map(|(x, t)| x - t).collect()]
    }

    /// The best second-aux value among the best first-aux values among the main minimisers.
    /// Both least-squares problems are underdetermined and together still are (full row rank),
    /// so the main minimisers are `{A0 x = b0}`, the best first-aux
    /// values among them `{A0 x = b0, A1 x = b1}`, and the optimum is the projection of `x*`
    /// onto that affine set: `x* - A^+ (A x* - b)` with `A = [A0; A1]`, `A^+ = A^T (A A^T)^-1`.
    fn lexicographic_optimum(&self) -> Vec<f64> {
        let a: Matrix = self.a0.iter().chain(&self.a1).cloned().collect();
        let b: Vec<f64> = self.b0.iter().chain(&self.b1).copied().collect();
        let gram: Matrix =
            a.iter().map(|r| a.iter().map(|s| r.iter().zip(s).map(|(x, y)| x * y).sum()).collect()).collect();
        let residual: Vec<f64> = mat_vec(&a, &self.target).iter().zip(&b).map(|(x, y)| x - y).collect();
        let step = mat_t_vec(&a, &solve(gram, residual));
        self.target.iter().zip(&step).map(|(t, s)| t - s).collect()
    }
}

#[test]
fn gradient_descent_with_the_hierarchy_reaches_the_lexicographic_optimum() {
    // One row per least-squares loss: each loss's gradients then span one direction, which the
    // hierarchy's averaged gradient (ema 1: the gradient itself) spans too, so its projections
    // remove exactly what would move a higher loss. With several rows the average spans only
    // one direction of the loss's gradient space, and gradient descent hovers around the
    // optimum at a distance that shrinks with the learning rate (about 0.2 at 0.3, 0.07 at 0.1
    // with two rows, in f64), so this test uses one.
    const N: usize = 24;
    const STEPS: usize = 1000;
    const LR: f64 = 0.3;
    // Distance from the optimum, relative to its norm, the GPU run must end within.
    const TOLERANCE: f64 = 1e-3;
    let mut rng = SplitMix64::new(2024);
    let problem = Problem {
        a0: random_matrix(&mut rng, 1, N),
        b0: vec![rng.next_normal()],
        a1: random_matrix(&mut rng, 1, N),
        b1: vec![rng.next_normal()],
        target: (0..N).map(|_| rng.next_normal()).collect(),
    };
    let optimum = problem.lexicographic_optimum();
    // The closed form really is feasible for both least squares.
    assert!(norm(&problem.gradients(&optimum)[0]) < 1e-10 && norm(&problem.gradients(&optimum)[1]) < 1e-10);

    // The hierarchy on the GPU: full-batch gradients, ema 1 (the averages are the gradients).
    let gpu = gpu();
    let layout = Layout::from_lengths(&[N as u64]).unwrap();
    let config = Config::hierarchy(&[1.0, 1.0]).ema(1.0).eps(1e-12);
    let mut state = BloopState::new(&kernels(), &gpu.queue, &layout, config, EmaInits::zeros()).unwrap();
    let pool = GradientPool::hierarchy(&gpu.device, &layout, 2, false, ElementTypes::default()).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    let mut x = vec![0.0; N];
    for _ in 0..STEPS {
        for (level, g) in problem.gradients(&x).iter().enumerate() {
            let g: Vec<f32> = g.iter().map(|&v| v as f32).collect();
            let leaf = pool.gradient(level, 0).unwrap();
            gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&g));
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings).unwrap();
        gpu.queue.submit([encoder.finish()]);
        let d = &read_leaves(&gpu.device, &gpu.queue, bindings.output_leaves()).unwrap()[0];
        for (x, d) in x.iter_mut().zip(d) {
            *x -= LR * *d as f64;
        }
    }
    let hierarchy = distance(&x, &optimum) / norm(&optimum);

    // Mixing the three with the same weights, same steps, in f64 on the host.
    let mut m = vec![0.0; N];
    for _ in 0..STEPS {
        let [g0, g1, g2] = problem.gradients(&m);
        for i in 0..N {
            m[i] -= LR * (g0[i] + g1[i] + g2[i]);
        }
    }
    let mixing = distance(&m, &optimum) / norm(&optimum);
    println!("relative distance to the lexicographic optimum: hierarchy {hierarchy:.3e}, mixing {mixing:.3e}");
    assert!(hierarchy < TOLERANCE, "hierarchy ends {hierarchy:e} from the optimum");
    assert!(mixing > 50.0 * TOLERANCE, "mixing ends {mixing:e} from the optimum");
}

fn random_grads(rng: &mut SplitMix64, lengths: &[u64], k: usize) -> Vec<Vec<Vec<f32>>> {
    (0..=k).map(|_| normal_leaves(rng, lengths, 1.0)).collect()
}

fn write_pool(pool: &GradientPool, grads: &[Vec<Vec<f32>>]) {
    for (level, g) in grads.iter().enumerate() {
        for (leaf, v) in pool.gradient_leaves(level).unwrap().iter().zip(g) {
            gpu().queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
        }
    }
}

fn step(state: &mut BloopState, bindings: &bloop::StepBindings) -> Vec<Vec<f32>> {
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    state.record_step(&mut encoder, bindings).unwrap();
    gpu().queue.submit([encoder.finish()]);
    read_leaves(&gpu().device, &gpu().queue, bindings.output_leaves()).unwrap()
}

fn emas(state: &BloopState, k: usize) -> Vec<Vec<Vec<f32>>> {
    (0..k).map(|j| state.read_ema(EmaRole::Level(j)).unwrap()).collect()
}

#[test]
fn the_guard_skips_a_step_with_any_non_finite_gradient() {
    let layout = Layout::from_lengths(&[5, 300, 4097]).unwrap();
    let lengths = layout.lengths();
    let mut rng = SplitMix64::new(3);
    let k = 3;
    let config = Config::hierarchy(&[0.5, 0.3, 0.2]).ema(0.2);
    let init = EmaInits::both(EmaInit::Normal { seed: 4 });
    let mut state = BloopState::new(&kernels(), &gpu().queue, &layout, config, init).unwrap();
    let pool = GradientPool::hierarchy(&gpu().device, &layout, k, false, ElementTypes::default()).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    let before = emas(&state, k);
    for level in 0..=k {
        let mut grads = random_grads(&mut rng, &lengths, k);
        grads[level][2][4000] = if level % 2 == 0 { f32::NAN } else { f32::INFINITY };
        write_pool(&pool, &grads);
        let out = step(&mut state, &bindings);
        assert!(out.iter().flatten().all(|&x| x == 0.0), "level {level}: zeros out");
        let after = emas(&state, k);
        let bits = |v: &Vec<Vec<Vec<f32>>>| v.iter().flatten().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&after), bits(&before), "level {level}: averages untouched");
    }
    assert_eq!(state.skipped_steps().unwrap(), (k + 1) as u64);
    // A finite step goes on from the same averages.
    let grads = random_grads(&mut rng, &lengths, k);
    write_pool(&pool, &grads);
    let out = step(&mut state, &bindings);
    let mut reference = HierarchyReference::new(config, before.iter().map(|e| widen(e)).collect());
    let expected = reference.step(&grads.iter().map(|g| widen(g)).collect::<Vec<_>>());
    assert!(relative_error(&widen(&out), &expected) < 1e-5);
}

#[test]
fn ratios_per_level_and_checkpoints_follow_the_reference() {
    let layout = Layout::from_lengths(&[7, 1000]).unwrap();
    let lengths = layout.lengths();
    let mut rng = SplitMix64::new(8);
    let k = 4;
    let dir = std::env::temp_dir().join(format!("bloop-hierarchy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for order in [Order::UpdateFirst, Order::ProjectFirst] {
        let config = Config::hierarchy(&[0.4, 0.3, 0.2, 0.1]).ema(0.3).order(order).rescale(true);
        let inits: Vec<Vec<Vec<f32>>> = (0..k).map(|_| normal_leaves(&mut rng, &lengths, 1.0)).collect();
        let values = inits.iter().map(|v| EmaInit::Values(v.clone())).collect();
        let mut state = BloopState::new_hierarchy(&kernels(), &gpu().queue, &layout, config, values).unwrap();
        let mut reference = HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect());
        let pool = GradientPool::hierarchy(&gpu().device, &layout, k, true, ElementTypes::default()).unwrap();
        let bindings = state.bind_pool(&pool).unwrap();
        for _ in 0..3 {
            let grads = random_grads(&mut rng, &lengths, k);
            write_pool(&pool, &grads);
            let out = step(&mut state, &bindings);
            let expected = reference.step(&grads.iter().map(|g| widen(g)).collect::<Vec<_>>());
            assert!(relative_error(&widen(&out), &expected) < 1e-5, "{order:?} in place");
            let ratios = state.read_level_ratios().unwrap();
            assert_eq!(ratios.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
            for (got, want) in ratios.iter().flatten().zip(reference.ratios.iter().flatten()) {
                assert!((*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
            }
        }
        // Every average travels through a checkpoint file.
        let path = dir.join(format!("{order:?}.safetensors"));
        state.save_checkpoint(&path).unwrap();
        let checkpoint = Checkpoint::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(checkpoint.config, config);
        assert_eq!(checkpoint.level_emas.len(), k - 1);
        let restored = BloopState::from_checkpoint(&kernels(), &gpu().queue, &checkpoint).unwrap();
        assert_eq!(emas(&restored, k), emas(&state, k));
        assert_eq!(restored.checkpoint().unwrap(), checkpoint);
        // A hierarchy with other weights refuses it.
        let other = Config::hierarchy(&[0.4, 0.3, 0.2, 0.2]).ema(0.3).order(order).rescale(true);
        let mut other = BloopState::new(&kernels(), &gpu().queue, &layout, other, EmaInits::zeros()).unwrap();
        let err = other.restore(&checkpoint).unwrap_err().to_string();
        assert!(err.contains("lambdas"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn half_precision_and_external_buffers() {
    let layout = Layout::from_lengths(&[3, 513]).unwrap();
    let lengths = layout.lengths();
    let mut rng = SplitMix64::new(13);
    let k = 2;
    for dtype in [DType::F16, DType::Bf16] {
        let types = ElementTypes::all(dtype);
        let config = Config::hierarchy(&[0.6, 0.3]).ema(0.5).types(types);
        let mut state = BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::zeros()).unwrap();
        let pool = GradientPool::hierarchy(&gpu().device, &layout, k, false, types).unwrap();
        let bindings = state.bind_pool(&pool).unwrap();
        let mut reference = HierarchyReference::new(config, vec![widen(&[vec![0.0; 3], vec![0.0; 513]]); k]);
        for _ in 0..2 {
            let grads: Vec<Vec<Vec<f32>>> = random_grads(&mut rng, &lengths, k)
                .into_iter()
                .map(|g| g.into_iter().map(|l| l.into_iter().map(|x| dtype.round(x)).collect()).collect())
                .collect();
            for (level, g) in grads.iter().enumerate() {
                for (leaf, v) in pool.gradient_leaves(level).unwrap().iter().zip(g) {
                    // Whole words (the pool's leaves are aligned and padded).
                    let mut bytes = dtype.encode(v);
                    bytes.resize(bytes.len().next_multiple_of(4), 0);
                    gpu().queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
                }
            }
            let out = step(&mut state, &bindings);
            let expected = reference.step(&grads.iter().map(|g| widen(g)).collect::<Vec<_>>());
            let bound = bloop::conformance::bound(types);
            assert!(relative_error(&widen(&out), &expected) <= bound, "{dtype}");
        }
    }
    // A one-level hierarchy also takes the two-gradient external form.
    let config = Config::hierarchy(&[0.5]);
    let state = BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(&gpu().device, &layout, false).unwrap();
    let external = ExternalGradients {
        main: pool.main_leaves(),
        aux: pool.aux_leaves(),
        output: Output::Buffers(pool.output_leaves()),
    };
    state.bind_external(&external).unwrap();
}

#[test]
fn bad_hierarchies_are_refused_with_typed_errors() {
    let layout = Layout::from_lengths(&[4, 9]).unwrap();
    let new = |config: Config| BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::zeros());
    let field = |config: Config| match new(config) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(field(Config::hierarchy(&[])), "lambdas");
    assert_eq!(field(Config::hierarchy(&[0.1; 9])), "lambdas");
    assert_eq!(field(Config::hierarchy(&[0.1, -1.0])), "lambdas");
    assert_eq!(field(Config::hierarchy(&[0.1, f64::NAN])), "lambdas");
    assert_eq!(field(Config::new(Method::Bloop).lambdas(&[0.1])), "lambdas");
    assert_eq!(field(Config::hierarchy(&[0.1]).ratio_only(true)), "ratio_only");

    let config = Config::hierarchy(&[0.5, 0.2]);
    let err = BloopState::new_hierarchy(&kernels(), &gpu().queue, &layout, config, vec![EmaInit::Zeros; 3]);
    assert!(matches!(err, Err(Error::LevelCount { expected: 2, got: 3, .. })), "{err:?}");
    let state = new(config).unwrap();
    let pool = GradientPool::hierarchy(&gpu().device, &layout, 2, false, ElementTypes::default()).unwrap();
    let two = [pool.main_leaves(), pool.aux_leaves()];
    let err = state.bind_hierarchy(&two, Output::InPlace).unwrap_err();
    assert!(matches!(err, Error::LevelCount { expected: 3, got: 2, .. }), "{err}");
    let external = ExternalGradients { main: two[0], aux: two[1], output: Output::InPlace };
    assert!(matches!(state.bind_external(&external), Err(Error::LevelCount { .. })));
    // A pool of two gradients is too few for two aux losses.
    let small = GradientPool::new(&gpu().device, &layout, false).unwrap();
    assert!(matches!(state.bind_pool(&small), Err(Error::LevelCount { expected: 3, got: 2, .. })));
    // A wrong leaf names its loss.
    let short: Vec<LeafBuffer> = vec![pool.gradient(2, 0).unwrap().clone()];
    let three = [pool.main_leaves(), pool.aux_leaves(), &short];
    let err = state.bind_hierarchy(&three, Output::InPlace).unwrap_err();
    assert!(matches!(err, Error::LeafCount { role: bloop::Role::Gradient(2), .. }), "{err}");
    assert!(err.to_string().contains("gradient of loss 2"), "{err}");
    // The output may not overlap a lower loss's gradient.
    let err = state.bind_hierarchy(
        &[pool.main_leaves(), pool.aux_leaves(), pool.gradient_leaves(2).unwrap()],
        Output::Buffers(pool.aux_leaves()),
    );
    assert!(matches!(err, Err(Error::OverlappingOutput { .. })), "{err:?}");
    assert!(matches!(state.read_ema(EmaRole::Level(2)), Err(Error::NoSuchEma { .. })));
    // The weights may change between steps, the number of levels not (it selects kernels).
    let mut state = state;
    state.set_config(Config::hierarchy(&[0.1, 0.9])).unwrap();
    assert!(matches!(state.set_config(Config::hierarchy(&[0.1, 0.9, 0.1])), Err(Error::Mismatch(_))));
    assert_eq!(state.config().level_lambdas(), &[0.1, 0.9]);
}

/// Steps of a hierarchy of `k` aux losses through a pool on `gpu` (kernels made for it), each
/// checked against the f64 reference: the direction and every average.
/// Returns the storage buffers the step bound, or the error binding the pool gave.
fn pool_steps_match_the_reference(
    gpu: &GpuContext,
    kernels: &std::sync::Arc<Kernels>,
    lengths: &[u64],
    k: usize,
) -> Result<u32, Error> {
    let layout = Layout::from_lengths(lengths).unwrap();
    let mut rng = SplitMix64::new(40 + k as u64);
    let lambdas: Vec<f64> = (0..k).map(|i| 0.6 / (i + 1) as f64).collect();
    let config = Config::hierarchy(&lambdas).ema(0.3);
    let inits: Vec<Vec<Vec<f32>>> = (0..k).map(|_| normal_leaves(&mut rng, lengths, 1.0)).collect();
    let values = inits.iter().map(|v| EmaInit::Values(v.clone())).collect();
    let mut state = BloopState::new_hierarchy(kernels, &gpu.queue, &layout, config, values).unwrap();
    let mut reference = HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect());
    let pool = GradientPool::hierarchy(&gpu.device, &layout, k, false, ElementTypes::default()).unwrap();
    let bindings = state.bind_pool(&pool)?;
    for _ in 0..2 {
        let grads = random_grads(&mut rng, lengths, k);
        for (level, g) in grads.iter().enumerate() {
            for (leaf, v) in pool.gradient_leaves(level).unwrap().iter().zip(g) {
                gpu.queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
            }
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings).unwrap();
        gpu.queue.submit([encoder.finish()]);
        let out = read_leaves(&gpu.device, &gpu.queue, bindings.output_leaves()).unwrap();
        let expected = reference.step(&grads.iter().map(|g| widen(g)).collect::<Vec<_>>());
        assert!(relative_error(&widen(&out), &expected) < 1e-5, "k = {k}: direction");
        for (j, want) in reference.emas.iter().enumerate() {
            let got = widen(&state.read_ema(EmaRole::Level(j)).unwrap());
            assert!(relative_error(&got, want) < 1e-5, "k = {k}: average {j}");
        }
    }
    Ok(bindings.storage_buffers())
}

#[test]
fn every_level_up_to_eight_fits_webgpu_limits_through_the_pool() {
    // WebGPU's defaults (wgpu's too): 8 storage buffers per stage, 256 invocations, 16 KiB of
    // workgroup storage. Through the pool, the gradients of every loss and the averages of
    // every level are each bound as planes of one buffer: 6 storage buffers whatever k is.
    let limited = pollster::block_on(GpuContext::from_env_with_limits(|_| wgpu::Limits::default())).unwrap();
    let limits = limited.device.limits();
    assert_eq!(limits.max_storage_buffers_per_shader_stage, 8);
    assert_eq!(limits.max_compute_invocations_per_workgroup, 256);
    assert_eq!(limits.max_compute_workgroup_storage_size, 16 << 10);
    let kernels = Kernels::new(&limited.device);
    for k in 1..=bloop::MAX_LEVELS {
        assert_eq!(pool_steps_match_the_reference(&limited, &kernels, &[5, 300, 4097], k).unwrap(), 6, "k = {k}");
    }
    // The user's buffers, one per loss, need a binding each: k + 6, so 8 allow k = 2, and
    // three aux losses are refused naming the limit, the state left as it was.
    let layout = Layout::from_lengths(&[10]).unwrap();
    for k in [2, 3] {
        let config = Config::hierarchy(&vec![0.1; k]);
        let state = BloopState::new(&kernels, &limited.queue, &layout, config, EmaInits::zeros()).unwrap();
        let pools: Vec<GradientPool> =
            (0..=k).map(|_| GradientPool::new(&limited.device, &layout, false).unwrap()).collect();
        let gradients: Vec<&[LeafBuffer]> = pools.iter().map(|p| p.main_leaves()).collect();
        let output = Output::Buffers(pools[0].output_leaves());
        match (k, state.bind_hierarchy(&gradients, output)) {
            (2, Ok(_)) => {}
            (3, Err(Error::ExceedsCount { needed: 9, limit: 8, limit_name, .. })) => {
                assert_eq!(limit_name, "max_storage_buffers_per_shader_stage")
            }
            (_, other) => panic!("k = {k}: {other:?}"),
        }
        assert_eq!(state.steps(), 0);
    }
}

#[test]
fn leaves_too_large_for_one_window_of_planes_bind_each_level_alone() {
    // 16 KiB bindings: a leaf of 3000 f32 (12 KB) fits one, but not with the other levels
    // beside it, so its planes are bound one binding each, as the user's buffers are.
    let small = pollster::block_on(GpuContext::from_env_with_limits(|limits| wgpu::Limits {
        max_storage_buffer_binding_size: 16 << 10,
        ..limits
    }))
    .unwrap();
    let limit = small.device.limits().max_storage_buffers_per_shader_stage as usize;
    // Slots: WebGPU has no binding arrays.
    let slots = bloop::KernelOptions { binding_arrays: Some(false), ..Default::default() };
    let one_slot = bloop::KernelOptions { max_slots: 1, ..slots };
    for kernels in [Kernels::with_options(&small.device, slots), Kernels::with_options(&small.device, one_slot)] {
        for k in [2, 3] {
            // With one slot: scalars, partials, table, output, a binding per gradient, and the
            // averages as planes only where two (24 KB) fit 16 KiB. With more, windows of one
            // buffer may also share a dispatch as slots. A device that allows fewer (SwiftShader's
            // 10 at k = 3) refuses the binding naming the limit.
            let least = 4 + (k + 1) + if k == 2 { 1 } else { k };
            match pool_steps_match_the_reference(&small, &kernels, &[3000, 7, 900], k) {
                Ok(bound) => {
                    let bound = bound as usize;
                    let one_slot = kernels.options().max_slots == 1;
                    assert!(least <= limit && bound >= least && (!one_slot || bound == least), "k = {k}: {bound}");
                }
                Err(Error::ExceedsCount { needed, limit_name, .. }) => {
                    assert!(least > limit && needed as usize == least, "k = {k}: {needed}");
                    assert_eq!(limit_name, "max_storage_buffers_per_shader_stage");
                }
                Err(e) => panic!("k = {k}: {e}"),
            }
        }
    }
}

#[test]
fn a_hierarchy_moves_20k_plus_12_bytes_per_f32_element() {
    for k in 1..=bloop::MAX_LEVELS {
        assert_eq!(Config::hierarchy(&vec![0.1; k]).bytes_per_element(), 20 * k as u64 + 12);
    }
    // k = 1 moves what bloop does; 16-bit storage: (2k + 2) g + 3k e + o.
    assert_eq!(Config::hierarchy(&[0.5]).bytes_per_element(), Config::new(Method::Bloop).bytes_per_element());
    let half = Config::hierarchy(&[0.5, 0.5]).types(ElementTypes::all(DType::Bf16));
    assert_eq!(half.bytes_per_element(), 6 * 2 + 6 * 2 + 2);
}

#[test]
fn the_diagnostics_ring_carries_the_ratios_per_level() {
    let layout = Layout::from_lengths(&[50, 3000]).unwrap();
    let lengths = layout.lengths();
    let mut rng = SplitMix64::new(17);
    let k = 3;
    let config = Config::hierarchy(&[0.3, 0.2, 0.1]).ema(0.5);
    let init = EmaInits::both(EmaInit::Normal { seed: 1 });
    let mut state = BloopState::new(&kernels(), &gpu().queue, &layout, config, init).unwrap();
    let pool = GradientPool::hierarchy(&gpu().device, &layout, k, false, ElementTypes::default()).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    let mut ring = bloop::DiagnosticsRing::new(&gpu().device, 4);
    let mut direct = Vec::new();
    for _ in 0..3 {
        write_pool(&pool, &random_grads(&mut rng, &lengths, k));
        let mut encoder = gpu().device.create_command_encoder(&Default::default());
        state.record_step(&mut encoder, &bindings).unwrap();
        ring.record(&mut encoder, &state).unwrap();
        gpu().queue.submit([encoder.finish()]);
        ring.submitted();
        direct.push(state.read_level_ratios().unwrap());
    }
    let landed = ring.flush().unwrap();
    assert_eq!(landed.len(), 3);
    for (d, ratios) in landed.iter().zip(&direct) {
        assert_eq!(d.levels, 3);
        assert_eq!(&d.level_ratios(), ratios);
        assert_eq!(d.ratio, ratios[0][0], "the first aux loss against the main average");
    }
    assert!(landed[2].level_ratios()[2].iter().all(|r| r.is_finite()));
}

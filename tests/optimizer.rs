//! The fused optimizer stage against the f64 reference (PyTorch's SGD, Adam and AdamW rules):
//! random layouts, every option, over several steps with a learning rate that changes between
//! them; through the pool, user buffers (flat with guards around every range, one buffer per
//! leaf, gradients and parameters sharing a buffer) and 16-bit storage; the guard keeps the
//! parameters, the optimizer's state and its step count bit for bit; checkpoints resume bit
//! for bit; every refusal names the problem and changes nothing.

mod common;

use bloop::reference::{relative_error, widen, ReferenceOptimizer, ReferenceState};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Config, DType, ElementTypes, EmaInit, EmaInits, EmaRole, Error, ExternalGradients,
    GradientPool, Layout, LeafBuffer, Method, Optimizer, Output, Role, StepBindings,
};
use common::{below, gpu, kernels, normal_leaves, GuardedBuffer};

/// Every option at least once: plain SGD, weight decay, momentum with dampening, Nesterov, Adam
/// with L2 decay, AdamW.
fn optimizers(rng: &mut SplitMix64) -> Vec<Optimizer> {
    let mut lr = || 10f64.powf(-1.0 - 2.0 * rng.next_f64());
    vec![
        Optimizer::sgd(lr()),
        Optimizer::sgd(lr()).weight_decay(0.05),
        Optimizer::sgd(lr()).momentum(0.9).dampening(0.3).weight_decay(0.01),
        Optimizer::sgd(lr()).momentum(0.7).nesterov(true),
        Optimizer::adam(lr()).betas(0.85, 0.995).weight_decay(0.02),
        Optimizer::adamw(lr()).eps(1e-6),
    ]
}

/// 1 to 12 leaves of 1 to 3000 elements, never a multiple of 4.
fn random_layout(rng: &mut SplitMix64) -> Layout {
    let lengths: Vec<u64> = (0..1 + below(rng, 12))
        .map(|_| {
            let n = if below(rng, 3) == 0 { 1 + below(rng, 16) } else { 1 + below(rng, 3000) };
            if n % 4 == 0 {
                n - 1
            } else {
                n
            }
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
}

/// How the parameters and gradients are handed over.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// A pool with a params role; output written, in place, or discarded.
    Pool { in_place: bool, discard: bool },
    /// Gradients, output and parameters at random offsets in one guarded buffer each.
    Flat { discard: bool },
    /// Gradients and parameters in one guarded buffer (so the inputs are bound writable).
    Shared,
    /// Every leaf of every role in a buffer of its own.
    PerLeaf,
}

struct Setup {
    main: Vec<LeafBuffer>,
    aux: Vec<LeafBuffer>,
    output: Option<Vec<LeafBuffer>>,
    params: Vec<LeafBuffer>,
    guarded: Vec<GuardedBuffer>,
    pool: Option<GradientPool>,
    discard: bool,
}

fn place(rng: &mut SplitMix64, buffer: &mut GuardedBuffer, at: &mut u64, n: u64) -> LeafBuffer {
    let leaf = buffer.leaf(*at, n);
    *at += n + below(rng, 10);
    leaf
}

impl Setup {
    fn new(rng: &mut SplitMix64, layout: &Layout, path: Path, types: ElementTypes, params: DType) -> Setup {
        let (device, queue) = (&gpu().device, &gpu().queue);
        let lengths = layout.lengths();
        let room = |roles: u64| lengths.iter().sum::<u64>() * roles + 10 * (lengths.len() as u64 + 1) * roles;
        let role = |rng: &mut SplitMix64, buffer: &mut GuardedBuffer, at: &mut u64| -> Vec<LeafBuffer> {
            lengths.iter().map(|&n| place(rng, buffer, at, n)).collect()
        };
        match path {
            Path::Pool { in_place, discard } => {
                let pool =
                    GradientPool::typed(device, layout, in_place, types).unwrap().with_params(device, params).unwrap();
                Setup {
                    main: pool.main_leaves().to_vec(),
                    aux: pool.aux_leaves().to_vec(),
                    output: (!in_place && !discard).then(|| pool.output_leaves().to_vec()),
                    params: pool.params_leaves().unwrap().to_vec(),
                    guarded: vec![],
                    pool: Some(pool),
                    discard,
                }
            }
            Path::Flat { discard } => {
                let mut grads = GuardedBuffer::new(device, queue, room(2));
                let mut at = below(rng, 10);
                let main = role(rng, &mut grads, &mut at);
                let aux = role(rng, &mut grads, &mut at);
                let mut p = GuardedBuffer::new(device, queue, room(1));
                let mut at = below(rng, 10);
                let params = role(rng, &mut p, &mut at);
                let mut guarded = vec![grads, p];
                let output = (!discard).then(|| {
                    let mut o = GuardedBuffer::new(device, queue, room(1));
                    let mut at = below(rng, 10);
                    let out = role(rng, &mut o, &mut at);
                    guarded.push(o);
                    out
                });
                Setup { main, aux, output, params, guarded, pool: None, discard }
            }
            Path::Shared => {
                let mut all = GuardedBuffer::new(device, queue, room(4));
                let mut at = below(rng, 10);
                let main = role(rng, &mut all, &mut at);
                let aux = role(rng, &mut all, &mut at);
                let params = role(rng, &mut all, &mut at);
                let output = Some(role(rng, &mut all, &mut at));
                Setup { main, aux, output, params, guarded: vec![all], pool: None, discard: false }
            }
            Path::PerLeaf => {
                let mut guarded = vec![];
                let mut per_leaf = |rng: &mut SplitMix64, dtype: DType| -> Vec<LeafBuffer> {
                    lengths
                        .iter()
                        .map(|&n| {
                            let at = below(rng, 10);
                            let mut b = GuardedBuffer::new(device, queue, at + n + 10);
                            // 16-bit leaves fill whole words but the last one (odd lengths).
                            b.owned.push((at, (n * dtype.size()).div_ceil(4)));
                            let leaf = LeafBuffer::typed(&b.buffer, at * 4, n, dtype);
                            guarded.push(b);
                            leaf
                        })
                        .collect()
                };
                let (main, aux) = (per_leaf(rng, types.gradients), per_leaf(rng, types.gradients));
                let (output, params) = (per_leaf(rng, types.output), per_leaf(rng, params));
                Setup { main, aux, output: Some(output), params, guarded, pool: None, discard: false }
            }
        }
    }

    fn bind(&self, state: &BloopState) -> StepBindings {
        if let Some(pool) = &self.pool {
            return state.bind_pool_with(pool, self.discard).unwrap();
        }
        let output = match (&self.output, self.discard) {
            (_, true) => Output::Discard,
            (Some(out), false) => Output::Buffers(out),
            (None, false) => Output::InPlace,
        };
        let gradients = ExternalGradients { main: &self.main, aux: &self.aux, output };
        state.bind_external_with_params(&gradients, &self.params).unwrap()
    }

    /// Where the direction lands, if it is written.
    fn direction_leaves(&self) -> Option<&[LeafBuffer]> {
        match (&self.output, self.discard) {
            (_, true) => None,
            (Some(out), false) => Some(out),
            (None, false) => Some(&self.main),
        }
    }

    fn corrupted_guards(&self) -> usize {
        self.guarded.iter().map(|g| g.corrupted()).sum()
    }
}

/// Writes values into word-aligned leaves of any element type.
fn write(leaves: &[LeafBuffer], values: &[Vec<f32>]) {
    for (leaf, v) in leaves.iter().zip(values) {
        assert_eq!(leaf.offset % 4, 0);
        let mut bytes = leaf.dtype.encode(v);
        if bytes.len() % 4 != 0 {
            // Keep the neighbouring half of the last word: only the pool's padding is there.
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        gpu().queue.write_buffer(&leaf.buffer, leaf.offset, &bytes);
    }
}

fn rounded(values: Vec<Vec<f32>>, dtype: DType) -> Vec<Vec<f32>> {
    values.into_iter().map(|l| l.into_iter().map(|x| dtype.round(x)).collect()).collect()
}

fn read(leaves: &[LeafBuffer]) -> Vec<Vec<f32>> {
    read_leaves(&gpu().device, &gpu().queue, leaves).unwrap()
}

fn bits(values: &[Vec<f32>]) -> Vec<u32> {
    values.iter().flatten().map(|x| x.to_bits()).collect()
}

struct Run {
    state: BloopState,
    reference: ReferenceState,
    optimizer: ReferenceOptimizer,
    setup: Setup,
    bindings: StepBindings,
    lengths: Vec<u64>,
}

/// The most storage buffers per stage a fused optimizer's kernels bind today (one slot: the
/// scalars, partials, schedule, tile table, gradients, output, parameters, two moments and two
/// averages).
const FUSED_MOST_STORAGE_BUFFERS: u32 = 12;

/// A state of `config` with its gradients and parameters placed as `path`, and the references;
/// `None` where the device has too few storage buffers per stage for the fused kernels (the
/// typed refusal checked, the reason printed).
fn start(
    rng: &mut SplitMix64,
    kernels: &std::sync::Arc<bloop::Kernels>,
    config: Config,
    path: Path,
    layout: &Layout,
) -> Option<Run> {
    let lengths = layout.lengths();
    let opt = config.optimizer.unwrap();
    let ema = config.types.ema;
    let main = rounded(common::random_init(rng, &lengths), ema);
    let aux = rounded(common::random_init(rng, &lengths), ema);
    let reference = ReferenceState::new(
        config,
        if config.method.has_main_ema() { widen(&main) } else { vec![] },
        if config.method.has_aux_ema() { widen(&aux) } else { vec![] },
    );
    let inits = EmaInits { main: EmaInit::Values(main), aux: EmaInit::Values(aux) };
    let state = common::unless_too_many_storage_buffers(
        BloopState::new(kernels, &gpu().queue, layout, config, inits),
        common::storage_buffer_limit(),
        FUSED_MOST_STORAGE_BUFFERS,
        &format!("{config:?}"),
    )?;
    let setup = Setup::new(rng, layout, path, config.types, opt.params);
    let params = rounded(normal_leaves(rng, &lengths, 1.0), opt.params);
    write(&setup.params, &params);
    let optimizer = ReferenceOptimizer::new(opt, widen(&params));
    let bindings = setup.bind(&state);
    Some(Run { state, reference, optimizer, setup, bindings, lengths })
}

impl Run {
    /// Writes the gradients, poisons the output, records the step (after an optional
    /// learning-rate copy on the GPU) and submits it; the reference takes the same step.
    fn step(&mut self, g_main: &[Vec<f32>], g_aux: &[Vec<f32>], lr_source: Option<&wgpu::Buffer>) -> Vec<Vec<f64>> {
        let gpu = gpu();
        write(&self.setup.main, g_main);
        write(&self.setup.aux, g_aux);
        if let (Some(out), false) = (&self.setup.output, self.setup.discard) {
            write(out, &out.iter().map(|l| vec![f32::NAN; l.len as usize]).collect::<Vec<_>>());
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        if let Some(source) = lr_source {
            encoder.copy_buffer_to_buffer(
                source,
                0,
                self.state.learning_rate_buffer().unwrap(),
                bloop::state::LEARNING_RATE_OFFSET,
                4,
            );
        }
        self.state.record_step(&mut encoder, &self.bindings).unwrap();
        gpu.queue.submit([encoder.finish()]);
        self.reference.step_with(&widen(g_main), &widen(g_aux), &mut self.optimizer)
    }

    /// Worst relative error over direction, averages, parameters and optimizer state.
    fn errors(&self, direction: &[Vec<f64>]) -> Vec<f64> {
        let mut errors = vec![relative_error(&widen(&read(&self.setup.params)), &self.optimizer.params)];
        for (gpu_state, reference) in self.state.read_optimizer_state().unwrap().iter().zip(&self.optimizer.state) {
            errors.push(relative_error(&widen(gpu_state), reference));
        }
        if let Some(out) = self.setup.direction_leaves() {
            errors.push(relative_error(&widen(&read(out)), direction));
        }
        if self.state.config().method.has_main_ema() {
            errors.push(relative_error(&widen(&self.state.read_ema(EmaRole::Main).unwrap()), &self.reference.main_ema));
        }
        errors
    }

    fn gradients(&self, rng: &mut SplitMix64, dtype: DType) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let scale = 10f64.powf(rng.next_f64() - 0.5);
        let g_main = rounded(normal_leaves(rng, &self.lengths, scale), dtype);
        let aux_scale = scale * (0.1 + rng.next_f64());
        let g_aux = rounded(normal_leaves(rng, &self.lengths, aux_scale), dtype);
        (g_main, g_aux)
    }
}

fn check_trial(seed: u64, method: Method, optimizer: Optimizer, path: Path, types: ElementTypes, bound: f64) {
    check_trial_on(&kernels(), seed, method, optimizer, path, types, bound)
}

fn check_trial_on(
    kernels: &std::sync::Arc<bloop::Kernels>,
    seed: u64,
    method: Method,
    optimizer: Optimizer,
    path: Path,
    types: ElementTypes,
    bound: f64,
) {
    let mut rng = SplitMix64::new(seed);
    let layout = random_layout(&mut rng);
    let config = common::random_config(&mut rng, method).types(types).optimizer(optimizer);
    check_config(kernels, &mut rng, &layout, config, path, bound);
}

/// Four steps of `config` against the reference, with a learning rate changed from the host
/// before the third and on the GPU before the fourth.
fn check_config(
    kernels: &std::sync::Arc<bloop::Kernels>,
    rng: &mut SplitMix64,
    layout: &Layout,
    config: Config,
    path: Path,
    bound: f64,
) {
    let (method, optimizer, types) = (config.method, config.optimizer.unwrap(), config.types);
    let Some(mut run) = start(rng, kernels, config, path, layout) else { return };
    let context = format!("{path:?}, {config:?}, lengths {:?}", run.lengths);
    let mut worst = 0f64;
    for step in 0..4 {
        // A schedule: the learning rate changes between steps, from the host or on the GPU.
        let mut lr_source = None;
        if step == 2 {
            run.optimizer.lr = (run.optimizer.lr * 0.5) as f32 as f64;
            run.state.set_learning_rate(run.optimizer.lr).unwrap();
        }
        if step == 3 {
            run.optimizer.lr = (run.optimizer.lr * 3.0) as f32 as f64;
            let buffer = gpu().device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("schedule"),
                size: 4,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            gpu().queue.write_buffer(&buffer, 0, bytemuck::bytes_of(&(run.optimizer.lr as f32)));
            lr_source = Some(buffer);
        }
        let (g_main, g_aux) = run.gradients(rng, types.gradients);
        let direction = run.step(&g_main, &g_aux, lr_source.as_ref());
        let errors = run.errors(&direction);
        assert!(errors.iter().all(|&e| e <= bound), "step {step}: errors {errors:?}; {context}");
        worst = errors.iter().fold(worst, |w, &e| w.max(e));
    }
    eprintln!(
        "worst relative error {worst:.2e} (bound {bound:.0e}): {} {} {path:?} {types:?}",
        method.name(),
        optimizer.name()
    );
    let (lr, t) = run.state.read_schedule().unwrap();
    assert_eq!((lr, t), (run.optimizer.lr as f32, 4), "{context}");
    assert_eq!(run.setup.corrupted_guards(), 0, "writes outside the leaves; {context}");
}

const F32_BOUND: f64 = 1e-5;

#[test]
fn every_optimizer_matches_reference_through_the_pool() {
    let mut rng = SplitMix64::new(1);
    let mut seed = 100;
    for optimizer in optimizers(&mut rng) {
        for (method, path) in [
            (Method::Bloop, Path::Pool { in_place: false, discard: false }),
            (Method::PcGrad, Path::Pool { in_place: true, discard: false }),
            (Method::Mixed, Path::Pool { in_place: false, discard: true }),
            (Method::DynamicBarrier, Path::Pool { in_place: false, discard: true }),
        ] {
            seed += 1;
            check_trial(seed, method, optimizer, path, ElementTypes::default(), F32_BOUND);
        }
    }
}

#[test]
fn every_optimizer_matches_reference_through_user_buffers() {
    let mut rng = SplitMix64::new(2);
    let mut seed = 200;
    for optimizer in optimizers(&mut rng) {
        for (method, path) in [
            (Method::Bloop, Path::Flat { discard: false }),
            (Method::Mixed, Path::Flat { discard: true }),
            (Method::Bloop, Path::Shared),
            (Method::PcGrad, Path::PerLeaf),
        ] {
            seed += 1;
            check_trial(seed, method, optimizer, path, ElementTypes::default(), F32_BOUND);
        }
    }
}

#[test]
fn shared_memory_reduction_with_optimizers() {
    let kernels = common::kernels_with_options(bloop::KernelOptions { subgroups: false, ..Default::default() });
    let mut rng = SplitMix64::new(3);
    for (i, optimizer) in optimizers(&mut rng).into_iter().enumerate() {
        let path =
            if i % 2 == 0 { Path::Pool { in_place: false, discard: false } } else { Path::Flat { discard: true } };
        check_trial_on(&kernels, 300 + i as u64, Method::Bloop, optimizer, path, ElementTypes::default(), F32_BOUND);
    }
}

#[test]
fn unguarded_ratio_only_and_mixing_with_diagnostics_only() {
    // The stage sets the random configs do not reach: ratio_only writing its average in the
    // first pass, mixing with an accumulate stage for diagnostics but no guard.
    let mut rng = SplitMix64::new(5);
    for (i, optimizer) in optimizers(&mut rng).into_iter().enumerate() {
        let layout = random_layout(&mut rng);
        let config = if i % 2 == 0 {
            Config::new(Method::Bloop).ratio_only(true).guard(false).lambda(0.7).ema(0.3)
        } else {
            Config::new(Method::Mixed).guard(false).diagnostics(true).lambda(0.7)
        };
        let path =
            if i % 3 == 0 { Path::Flat { discard: true } } else { Path::Pool { in_place: false, discard: false } };
        check_config(&kernels(), &mut rng, &layout, config.optimizer(optimizer), path, F32_BOUND);
    }
}

#[test]
fn half_precision_params_and_state() {
    let packed = common::kernels_with_options(bloop::KernelOptions { native_f16: false, ..Default::default() });
    let mut sets = vec![packed];
    if kernels().uses_native_f16() {
        sets.push(kernels());
    }
    let mut rng = SplitMix64::new(4);
    let mut seed = 400;
    for kernels in &sets {
        for (half, bound) in [(DType::F16, 2e-3), (DType::Bf16, 1.5e-2)] {
            for (k, optimizer) in optimizers(&mut rng).into_iter().enumerate() {
                // Parameters and state in 16 bits, or one of them; gradients too, or f32.
                let (params, state, types) = match k % 3 {
                    0 => (half, half, ElementTypes::all(half)),
                    1 => (half, DType::F32, ElementTypes::gradients_and_output(half)),
                    _ => (DType::F32, half, ElementTypes::default()),
                };
                let optimizer = optimizer.params_type(params).state_type(state);
                let path = match k % 4 {
                    0 => Path::Pool { in_place: false, discard: false },
                    1 => Path::Pool { in_place: true, discard: false },
                    _ => Path::Pool { in_place: false, discard: true },
                };
                seed += 1;
                check_trial_on(kernels, seed, Method::Bloop, optimizer, path, types, bound);
            }
        }
    }
}

#[test]
fn half_params_in_user_buffers() {
    // One buffer per leaf, 16-bit parameters at word-aligned offsets with guards around them.
    let mut rng = SplitMix64::new(6);
    for (i, optimizer) in optimizers(&mut rng).into_iter().enumerate() {
        let (half, bound) = if i % 2 == 0 { (DType::F16, 2e-3) } else { (DType::Bf16, 1.5e-2) };
        let optimizer = optimizer.params_type(half).state_type(half);
        let types = if i % 3 == 0 { ElementTypes::all(half) } else { ElementTypes::default() };
        check_trial(600 + i as u64, Method::Bloop, optimizer, Path::PerLeaf, types, bound);
    }
}

#[test]
fn user_buffers_over_more_buffers_than_slots_and_the_fallback() {
    // One buffer per leaf and role: 4 slots (fewer than the leaves, so several dispatches
    // each binding 4 buffers of each user role, the last ones placeholders) and one buffer
    // per dispatch; parameters in f32 and in 16 bits. Where the device has binding arrays,
    // also through arrays of every leaf and of 4.
    let mut rng = SplitMix64::new(8);
    let arrays = common::kernels().has_binding_arrays();
    let paths: &[Option<bool>] = if arrays { &[Some(false), Some(true)] } else { &[Some(false)] };
    let optimizers = optimizers(&mut rng);
    for (i, (optimizer, &binding_arrays)) in
        optimizers.iter().flat_map(|o| paths.iter().map(move |p| (*o, p))).enumerate()
    {
        let trial = i / paths.len();
        let options = bloop::KernelOptions {
            max_slots: if trial.is_multiple_of(2) { 4 } else { 1 },
            binding_arrays,
            max_array_buffers: if trial.is_multiple_of(2) { 4 } else { 4096 },
            ..Default::default()
        };
        let kernels = common::kernels_with_options(options);
        let method = [Method::Bloop, Method::PcGrad, Method::Mixed][trial % 3];
        check_trial_on(&kernels, 800 + i as u64, method, optimizer, Path::PerLeaf, ElementTypes::default(), F32_BOUND);
        let optimizer = optimizer.params_type(DType::Bf16).state_type(DType::F16);
        let types = ElementTypes::all(DType::F16);
        check_trial_on(&kernels, 900 + i as u64, Method::Bloop, optimizer, Path::PerLeaf, types, 1.5e-2);
    }
}

#[test]
fn a_wrong_reference_is_caught() {
    let mut rng = SplitMix64::new(7);
    let layout = Layout::from_lengths(&[1001, 37]).unwrap();
    let config = Config::new(Method::Bloop).optimizer(Optimizer::adam(1e-2));
    let path = Path::Pool { in_place: false, discard: false };
    let Some(mut run) = start(&mut rng, &kernels(), config, path, &layout) else { return };
    run.optimizer.optimizer = Optimizer::adam(1e-2).betas(0.9, 0.99);
    let (g_main, g_aux) = run.gradients(&mut rng, DType::F32);
    let direction = run.step(&g_main, &g_aux, None);
    let (g_main, g_aux) = run.gradients(&mut rng, DType::F32);
    let direction2 = run.step(&g_main, &g_aux, None);
    let _ = direction;
    assert!(run.errors(&direction2)[0] > F32_BOUND);
}

#[test]
fn a_skipped_step_leaves_params_and_state_bit_for_bit() {
    let mut rng = SplitMix64::new(8);
    for (method, optimizer) in [
        (Method::Bloop, Optimizer::adamw(1e-2)),
        (Method::Mixed, Optimizer::sgd(1e-2).momentum(0.9)),
        (Method::PcGrad, Optimizer::adam(1e-3).weight_decay(0.1)),
        (Method::Mixed, Optimizer::adam(1e-3)),
    ] {
        let layout = Layout::from_lengths(&[4099, 3, 517]).unwrap();
        let config = Config::new(method).lambda(0.5).optimizer(optimizer);
        let path = Path::Pool { in_place: false, discard: false };
        let Some(mut run) = start(&mut rng, &kernels(), config, path, &layout) else { continue };
        for _ in 0..2 {
            let (g_main, g_aux) = run.gradients(&mut rng, DType::F32);
            run.step(&g_main, &g_aux, None);
        }
        let before = (
            bits(&read(&run.setup.params)),
            run.state.read_optimizer_state().unwrap(),
            run.state.read_schedule().unwrap(),
        );
        let (mut g_main, g_aux) = run.gradients(&mut rng, DType::F32);
        g_main[2][100] = f32::NAN;
        let direction = run.step(&g_main, &g_aux, None);
        let after = (
            bits(&read(&run.setup.params)),
            run.state.read_optimizer_state().unwrap(),
            run.state.read_schedule().unwrap(),
        );
        assert_eq!(before.0, after.0, "{method:?} {optimizer:?}: params changed");
        let state_bits = |s: &Vec<Vec<Vec<f32>>>| s.iter().map(|t| bits(t)).collect::<Vec<_>>();
        assert_eq!(state_bits(&before.1), state_bits(&after.1), "{method:?}: optimizer state changed");
        assert_eq!(before.2, after.2, "{method:?}: schedule changed");
        assert_eq!(after.2 .1, 2);
        assert!(read(run.setup.output.as_ref().unwrap()).iter().flatten().all(|&x| x == 0.0));
        assert!(direction.iter().flatten().all(|&x| x == 0.0));
        assert_eq!(run.state.skipped_steps().unwrap(), 1);
        // The next finite step goes on as the reference does.
        let (g_main, g_aux) = run.gradients(&mut rng, DType::F32);
        let direction = run.step(&g_main, &g_aux, None);
        let errors = run.errors(&direction);
        assert!(errors.iter().all(|&e| e <= F32_BOUND), "{method:?}: {errors:?}");
        assert_eq!(run.state.read_schedule().unwrap().1, 3);
    }
}

#[test]
fn checkpoint_resumes_the_optimizer_bit_for_bit() {
    let dir = std::env::temp_dir().join(format!("bloop-optimizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let layout = Layout::from_lengths(&[300, 7, 1025]).unwrap();
    for (i, optimizer) in
        [Optimizer::adamw(1e-2), Optimizer::sgd(1e-2).momentum(0.9).nesterov(true)].into_iter().enumerate()
    {
        let config = Config::new(Method::Bloop).lambda(0.4).optimizer(optimizer);
        // Two identical runs; the second is saved after 2 steps and continued in a new state.
        let path = Path::Pool { in_place: false, discard: true };
        let Some(mut runs) = (0..2)
            .map(|_| start(&mut SplitMix64::new(9), &kernels(), config, path, &layout))
            .collect::<Option<Vec<Run>>>()
        else {
            continue;
        };
        let mut rng = SplitMix64::new(10);
        for step in 0..4 {
            let (g_main, g_aux) = runs[0].gradients(&mut rng, DType::F32);
            if step == 2 {
                runs[1].state.set_learning_rate(0.03).unwrap();
                runs[0].state.set_learning_rate(0.03).unwrap();
                let path = dir.join(format!("{i}.safetensors"));
                runs[1].state.save_checkpoint(&path).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                for name in optimizer.kind().state_names() {
                    assert!(file.tensor(&format!("optimizer/{name}/leaf2")).is_ok(), "{name}");
                }
                let fresh = BloopState::from_checkpoint(
                    &kernels(),
                    &gpu().queue,
                    &bloop::Checkpoint::from_bytes(&bytes).unwrap(),
                )
                .unwrap();
                assert_eq!(fresh.read_schedule().unwrap(), (0.03, 2));
                runs[1].state = fresh;
                runs[1].bindings = runs[1].setup.bind(&runs[1].state);
            }
            for run in &mut runs {
                run.step(&g_main, &g_aux, None);
            }
        }
        let finals: Vec<_> = runs
            .iter()
            .map(|r| {
                (
                    bits(&read(&r.setup.params)),
                    r.state.read_optimizer_state().unwrap(),
                    r.state.read_schedule().unwrap(),
                )
            })
            .collect();
        assert_eq!(finals[0].0, finals[1].0, "params differ after resuming");
        assert_eq!(finals[0].1, finals[1].1);
        assert_eq!(finals[0].2, finals[1].2);
    }
    // A checkpoint of a state without an optimizer does not fit one with it, and vice versa.
    let plain =
        BloopState::new(&kernels(), &gpu().queue, &layout, Config::new(Method::Bloop), EmaInits::zeros()).unwrap();
    let mut with = BloopState::new(
        &kernels(),
        &gpu().queue,
        &layout,
        Config::new(Method::Bloop).optimizer(Optimizer::sgd(0.1)),
        EmaInits::zeros(),
    )
    .unwrap();
    let err = with.restore(&plain.checkpoint().unwrap()).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint(m) if m.contains("optimizer")), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn refusals_name_the_problem_and_change_nothing() {
    let (device, queue) = (&gpu().device, &gpu().queue);
    let layout = Layout::from_lengths(&[100, 30]).unwrap();
    let config = Config::new(Method::Bloop).optimizer(Optimizer::sgd(0.1));
    let state = BloopState::new(&kernels(), queue, &layout, config, EmaInits::zeros()).unwrap();
    let plain = BloopState::new(&kernels(), queue, &layout, Config::new(Method::Bloop), EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(device, &layout, false).unwrap();
    // An optimizer needs parameters.
    assert!(matches!(state.bind_pool(&pool), Err(Error::Optimizer(_))));
    let gradients = ExternalGradients {
        main: pool.main_leaves(),
        aux: pool.aux_leaves(),
        output: Output::Buffers(pool.output_leaves()),
    };
    assert!(matches!(state.bind_external(&gradients), Err(Error::Optimizer(_))));
    // Parameters or a discarded output without an optimizer.
    assert!(matches!(plain.bind_external_with_params(&gradients, pool.output_leaves()), Err(Error::Optimizer(_))));
    let discard = ExternalGradients { output: Output::Discard, ..gradients };
    assert!(matches!(plain.bind_external(&discard), Err(Error::Optimizer(_))));
    // Wrong length, type, usage; overlaps with gradients, output and each other.
    let buffer = GuardedBuffer::new(device, queue, 1000).buffer;
    let short = [LeafBuffer::new(&buffer, 0, 100), LeafBuffer::new(&buffer, 400, 29)];
    let err = state.bind_external_with_params(&gradients, &short).unwrap_err();
    assert!(matches!(&err, Error::LeafLength { role: Role::Params, got: 29, .. }), "{err}");
    let half = [LeafBuffer::typed(&buffer, 0, 100, DType::F16), LeafBuffer::typed(&buffer, 400, 30, DType::F16)];
    assert!(matches!(
        state.bind_external_with_params(&gradients, &half),
        Err(Error::WrongType { role: Role::Params, .. })
    ));
    let uniform = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1024,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let no_storage = [LeafBuffer::new(&uniform, 0, 100), LeafBuffer::new(&uniform, 512, 30)];
    assert!(matches!(state.bind_external_with_params(&gradients, &no_storage), Err(Error::MissingUsage { .. })));
    let on_main = [pool.main(0).unwrap().clone(), LeafBuffer::new(&buffer, 400, 30)];
    let err = state.bind_external_with_params(&gradients, &on_main).unwrap_err();
    assert!(matches!(&err, Error::OverlappingParams { other_role: Role::MainGrad, .. }), "{err}");
    let on_output = [LeafBuffer::new(&buffer, 0, 100), pool.output(1).unwrap().clone()];
    let err = state.bind_external_with_params(&gradients, &on_output).unwrap_err();
    assert!(matches!(&err, Error::OverlappingParams { other_role: Role::Output, .. }), "{err}");
    let each_other = [LeafBuffer::new(&buffer, 0, 100), LeafBuffer::new(&buffer, 396, 30)];
    let err = state.bind_external_with_params(&gradients, &each_other).unwrap_err();
    assert!(matches!(&err, Error::OverlappingParams { other_role: Role::Params, .. }), "{err}");
    // Invalid optimizer constants, named.
    for (optimizer, field) in [
        (Optimizer::sgd(-1.0), "optimizer.lr"),
        (Optimizer::sgd(0.1).momentum(0.9).dampening(0.1).nesterov(true), "optimizer.nesterov"),
        (Optimizer::sgd(0.1).nesterov(true), "optimizer.nesterov"),
        (Optimizer::adam(0.1).betas(1.0, 0.9), "optimizer.beta1"),
        (Optimizer::adam(0.1).betas(0.9, -0.1), "optimizer.beta2"),
        (Optimizer::adam(0.1).eps(f64::NAN), "optimizer.eps"),
        (Optimizer::adamw(0.1).weight_decay(-1.0), "optimizer.weight_decay"),
    ] {
        let err = BloopState::new(
            &kernels(),
            queue,
            &layout,
            Config::new(Method::Bloop).optimizer(optimizer),
            EmaInits::zeros(),
        )
        .unwrap_err();
        assert!(matches!(&err, Error::InvalidConfig { field: f, .. } if *f == field), "{err}");
    }
    // The learning rate must be finite; the optimizer's kind cannot change.
    let mut state = state;
    assert!(matches!(state.set_learning_rate(f64::NAN), Err(Error::InvalidConfig { .. })));
    assert!(matches!(plain.set_learning_rate(0.1), Err(Error::Optimizer(_))));
    assert!(matches!(
        state.set_config(Config::new(Method::Bloop).optimizer(Optimizer::adam(0.1))),
        Err(Error::Mismatch(_))
    ));
    assert!(matches!(state.set_config(Config::new(Method::Bloop)), Err(Error::Mismatch(_))));
    assert_eq!(state.read_schedule().unwrap(), (0.1, 0));
    // Constants and the learning rate may change.
    state.set_config(Config::new(Method::Bloop).optimizer(Optimizer::sgd(0.25).weight_decay(0.1))).unwrap();
    assert_eq!(state.read_schedule().unwrap(), (0.25, 0));
    assert_eq!(state.steps(), 0);
}

#[test]
fn bytes_per_element_of_fused_and_separate_steps() {
    // The table: separate kernels against fused (direction not written).
    let sgd = Optimizer::sgd(0.1);
    for (optimizer, separate, fused) in [(sgd, 44, 36), (sgd.momentum(0.9), 52, 44), (Optimizer::adam(1e-3), 60, 52)] {
        let config = Config::new(Method::Bloop).optimizer(optimizer);
        assert_eq!([config.separate_bytes_per_element(), config.fused_bytes_per_element(false)], [separate, fused]);
        assert_eq!(config.fused_bytes_per_element(true), fused + 4);
    }
    // 16-bit parameters and state halve their share.
    let half =
        Config::new(Method::Bloop).optimizer(Optimizer::adam(1e-3).params_type(DType::Bf16).state_type(DType::F16));
    assert_eq!(half.fused_bytes_per_element(false), 28 + 4 + 8);
}

#[test]
fn fused_f32_optimizers_use_vector_loads_and_match_the_scalar_kernels() {
    // The pool's leaves are vec4-aligned in every role, so each f32 optimizer fused into a
    // projecting, ratio_only or mixing step takes the vector-load kernels; three steps against
    // the reference, and parameters and state against the scalar kernels on the same inputs.
    let scalar = common::kernels_with_options(bloop::KernelOptions { vec4: false, ..Default::default() });
    let mut rng = SplitMix64::new(11);
    for (i, optimizer) in optimizers(&mut rng).into_iter().enumerate() {
        let method = [Method::Bloop, Method::Mixed, Method::DynamicBarrier][i % 3];
        let ratio_only = i % 2 == 1 && method != Method::Mixed;
        let config = Config::new(method).ema(0.2).lambda(0.7).ratio_only(ratio_only).optimizer(optimizer);
        let layout = Layout::from_lengths(&[4099, 3, 517, 1024]).unwrap();
        let path = Path::Pool { in_place: false, discard: i % 2 == 0 };
        let mut params = Vec::new();
        for (kernels, vec4) in [(kernels(), true), (scalar.clone(), false)] {
            let mut rng = SplitMix64::new(100 + i as u64);
            let Some(mut run) = start(&mut rng, &kernels, config, path, &layout) else { break };
            assert_eq!(run.bindings.vector_loads(), vec4, "{config:?}");
            for step in 0..3 {
                let (g_main, g_aux) = run.gradients(&mut rng, DType::F32);
                let direction = run.step(&g_main, &g_aux, None);
                let errors = run.errors(&direction);
                assert!(errors.iter().all(|&e| e <= F32_BOUND), "vec4 {vec4}, step {step}: {errors:?}; {config:?}");
            }
            assert_eq!(run.setup.corrupted_guards(), 0, "{config:?}");
            params.push((widen(&read(&run.setup.params)), run.state.read_optimizer_state().unwrap()));
        }
        if params.len() < 2 {
            continue; // refused on this device (the reason printed)
        }
        let apart = relative_error(&params[0].0, &params[1].0);
        assert!(apart <= F32_BOUND, "parameters {apart} apart; {config:?}");
        for (a, b) in params[0].1.iter().zip(&params[1].1) {
            let apart = relative_error(&widen(a), &widen(b));
            assert!(apart <= F32_BOUND, "optimizer state {apart} apart; {config:?}");
        }
    }
}

#[test]
fn every_fused_optimizer_fits_webgpu_limits_through_the_pool() {
    // WebGPU's (and wgpu's) default 8 storage buffers per stage: through the pool, the
    // gradients, the averages and the moments are each planes of one buffer and the schedule
    // lies in the scalars' buffer, so PCGrad with Adam binds 8, the others fewer.
    let limited = pollster::block_on(bloop::GpuContext::from_env_with_limits(|_| wgpu::Limits::default())).unwrap();
    assert_eq!(limited.device.limits().max_storage_buffers_per_shader_stage, 8);
    let (device, queue) = (&limited.device, &limited.queue);
    let kernels = bloop::Kernels::new(device);
    let write = |leaves: &[LeafBuffer], values: &[Vec<f32>]| {
        for (leaf, v) in leaves.iter().zip(values) {
            queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
        }
    };
    let read = |leaves: &[LeafBuffer]| widen(&read_leaves(device, queue, leaves).unwrap());
    let mut rng = SplitMix64::new(77);
    let layout = Layout::from_lengths(&[5, 3001, 130]).unwrap();
    let lengths = layout.lengths();
    for optimizer in optimizers(&mut rng) {
        for method in [Method::Bloop, Method::PcGrad, Method::Mixed] {
            let config = Config::new(method).ema(0.3).lambda(0.7).optimizer(optimizer);
            let (main, aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
            let inits = EmaInits { main: EmaInit::Values(main.clone()), aux: EmaInit::Values(aux.clone()) };
            let mut state = BloopState::new(&kernels, queue, &layout, config, inits).unwrap();
            let kept = |on: bool, values: &[Vec<f32>]| if on { widen(values) } else { vec![] };
            let mut reference =
                ReferenceState::new(config, kept(method.has_main_ema(), &main), kept(method.has_aux_ema(), &aux));
            let pool = GradientPool::new(device, &layout, false).unwrap().with_params(device, DType::F32).unwrap();
            let params = normal_leaves(&mut rng, &lengths, 1.0);
            write(pool.params_leaves().unwrap(), &params);
            let mut reference_optimizer = ReferenceOptimizer::new(optimizer, widen(&params));
            let bindings = state.bind_pool(&pool).unwrap();
            let context = format!("{} {}", method.name(), optimizer.name());
            assert!(bindings.storage_buffers() <= 8, "{context}: {bindings:?}");
            for step in 0..3 {
                let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 0.5));
                write(pool.main_leaves(), &g_main);
                write(pool.aux_leaves(), &g_aux);
                let mut encoder = device.create_command_encoder(&Default::default());
                state.record_step(&mut encoder, &bindings).unwrap();
                queue.submit([encoder.finish()]);
                let direction = reference.step_with(&widen(&g_main), &widen(&g_aux), &mut reference_optimizer);
                let mut errors = vec![
                    relative_error(&read(pool.output_leaves()), &direction),
                    relative_error(&read(pool.params_leaves().unwrap()), &reference_optimizer.params),
                ];
                for (got, want) in state.read_optimizer_state().unwrap().iter().zip(&reference_optimizer.state) {
                    errors.push(relative_error(&widen(got), want));
                }
                if method.has_aux_ema() {
                    errors.push(relative_error(&widen(&state.read_ema(EmaRole::Aux).unwrap()), &reference.aux_ema));
                }
                assert!(errors.iter().all(|&e| e <= F32_BOUND), "{context}, step {step}: {errors:?}");
            }
            assert_eq!(state.read_schedule().unwrap().1, 3, "{context}");
        }
    }
}

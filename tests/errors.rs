//! Every error path returns its typed error and leaves the state exactly as it was.

mod common;

use bloop::rng::SplitMix64;
use bloop::{
    BloopState, Config, EmaInit, EmaInits, EmaRole, Error, ExternalGradients, GradientPool, Layout, LeafBuffer, Method,
    Output, Role,
};
use common::{gpu, kernels, normal_leaves, GuardedBuffer};

fn layout() -> Layout {
    Layout::new([("w", 300u64), ("b", 7)]).unwrap()
}

fn state(method: Method) -> BloopState {
    let init = EmaInits::both(EmaInit::Normal { seed: 9 });
    BloopState::new(&kernels(), &gpu().queue, &layout(), Config::new(method), init).unwrap()
}

/// Everything observable about a state: steps, config, and every EMA's values.
fn snapshot(state: &BloopState) -> (u64, Config, Vec<Vec<Vec<f32>>>) {
    let emas = [EmaRole::Main, EmaRole::Aux].into_iter().filter_map(|r| state.read_ema(r).ok()).collect();
    (state.steps(), *state.config(), emas)
}

/// A flat buffer with `layout`'s leaves for main, aux and output, packed back to back.
fn flat(usage: wgpu::BufferUsages) -> (wgpu::Buffer, [Vec<LeafBuffer>; 3]) {
    let buffer = gpu().device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 3 * 307 * 4,
        usage,
        mapped_at_creation: false,
    });
    let role = |base: u64| vec![LeafBuffer::new(&buffer, base * 4, 300), LeafBuffer::new(&buffer, (base + 300) * 4, 7)];
    let roles = [role(0), role(307), role(614)];
    (buffer, roles)
}

fn config_error(config: Config) -> &'static str {
    match BloopState::new(&kernels(), &gpu().queue, &layout(), config, EmaInits::zeros()) {
        Err(Error::InvalidConfig { field, .. }) => field,
        other => panic!("{config:?}: expected InvalidConfig, got {other:?}"),
    }
}

#[test]
fn invalid_configs_name_their_field() {
    let bloop = Config::new(Method::Bloop);
    assert_eq!(config_error(bloop.ema(-0.1)), "ema");
    assert_eq!(config_error(bloop.ema(1.5)), "ema");
    assert_eq!(config_error(bloop.ema(f64::NAN)), "ema");
    assert_eq!(config_error(bloop.lambda(-1.0)), "lambda");
    assert_eq!(config_error(bloop.lambda(f64::INFINITY)), "lambda");
    assert_eq!(config_error(bloop.lambda(f64::NAN)), "lambda");
    assert_eq!(config_error(bloop.lambda(1e300)), "lambda");
    assert_eq!(config_error(bloop.eps(0.0)), "eps");
    assert_eq!(config_error(bloop.eps(-1e-7)), "eps");
    assert_eq!(config_error(bloop.eps(f64::NAN)), "eps");
    assert_eq!(config_error(Config::new(Method::PcGrad).ratio_only(true)), "ratio_only");
    assert_eq!(config_error(Config::new(Method::Mixed).ratio_only(true)), "ratio_only");
    assert_eq!(config_error(Config::hierarchy(&[0.5]).optimizer(bloop::Optimizer::sgd(0.1))), "optimizer");
    let message = BloopState::new(&kernels(), &gpu().queue, &layout(), bloop.lambda(-2.0), EmaInits::zeros())
        .unwrap_err()
        .to_string();
    assert!(message.contains("lambda") && message.contains("-2"), "{message}");
}

#[test]
fn invalid_layouts_are_refused() {
    assert!(matches!(Layout::from_lengths(&[]), Err(Error::InvalidLayout(_))));
    assert!(matches!(Layout::new([("a", 3u64), ("a", 4)]), Err(Error::InvalidLayout(m)) if m.contains("duplicate")));
    assert!(matches!(Layout::new([("a", 0u64)]), Err(Error::InvalidLayout(m)) if m.contains("`a`")));
    assert!(matches!(Layout::from_shapes([("a", vec![3u64, 0])]), Err(Error::InvalidLayout(_))));
    let leaf = bloop::Leaf { name: "a".into(), len: 5, shape: Some(vec![2, 3]) };
    assert!(matches!(Layout::from_leaves([leaf]), Err(Error::InvalidLayout(m)) if m.contains("shape")));
    assert_eq!(Layout::from_shapes([("a", vec![2u64, 3])]).unwrap().total_elements(), 6);
    let err = Layout::new([("a", 3u64), ("", 4)]).unwrap_err();
    assert!(matches!(&err, Error::InvalidLayout(m) if m.contains("leaf 1 has an empty name")), "{err}");
}

#[test]
fn invalid_initial_values_are_refused() {
    let new = |init: EmaInit| {
        BloopState::new(&kernels(), &gpu().queue, &layout(), Config::new(Method::Bloop), EmaInits::both(init))
    };
    assert!(matches!(new(EmaInit::Values(vec![vec![0.0; 300]])), Err(Error::LeafCount { expected: 2, got: 1, .. })));
    let err = new(EmaInit::Values(vec![vec![0.0; 300], vec![0.0; 8]])).unwrap_err();
    assert!(matches!(&err, Error::LeafLength { leaf, expected: 7, got: 8, .. } if leaf == "b"), "{err}");
    let (_, [main, ..]) = flat(wgpu::BufferUsages::STORAGE);
    let err = new(EmaInit::Buffers(main)).unwrap_err();
    assert!(matches!(err, Error::MissingUsage { missing: wgpu::BufferUsages::COPY_SRC, .. }), "{err}");
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut values = vec![vec![0.5; 300], vec![0.25; 7]];
        values[1][6] = bad;
        let err = new(EmaInit::Values(values)).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteValue { leaf, index: 6, value, .. } if leaf == "b" && value.to_bits() == bad.to_bits()),
            "{err}"
        );
    }
}

/// Asserts `bind_external` refuses `gradients` with an error `check` accepts, and changes
/// nothing.
fn refuse(state: &BloopState, gradients: ExternalGradients, check: impl Fn(&Error) -> bool) {
    let before = snapshot(state);
    let err = state.bind_external(&gradients).unwrap_err();
    assert!(check(&err), "unexpected error: {err}");
    assert_eq!(snapshot(state), before);
}

#[test]
fn bad_external_buffers_are_refused_with_the_leaf_named() {
    let state = state(Method::PcGrad);
    let usage = bloop::pool::POOL_USAGE;
    let (buffer, [main, aux, out]) = flat(usage);
    let ok = ExternalGradients { main: &main, aux: &aux, output: Output::Buffers(&out) };
    state.bind_external(&ok).unwrap();

    refuse(&state, ExternalGradients { main: &main[..1], ..ok }, |e| {
        matches!(e, Error::LeafCount { role: Role::MainGrad, expected: 2, got: 1 })
    });
    let mut long = aux.clone();
    long[1].len = 8;
    refuse(
        &state,
        ExternalGradients { aux: &long, ..ok },
        |e| matches!(e, Error::LeafLength { leaf, role: Role::AuxGrad, expected: 7, got: 8 } if leaf == "b"),
    );
    let (_, [no_storage, ..]) = flat(wgpu::BufferUsages::COPY_DST);
    refuse(
        &state,
        ExternalGradients { main: &no_storage, ..ok },
        |e| matches!(e, Error::MissingUsage { leaf, missing: wgpu::BufferUsages::STORAGE, .. } if leaf == "w"),
    );
    let mut misaligned = out.clone();
    misaligned[1].offset += 2;
    refuse(
        &state,
        ExternalGradients { output: Output::Buffers(&misaligned), ..ok },
        |e| matches!(e, Error::MisalignedOffset { leaf, role: Role::Output, offset, alignment: 4 } if leaf == "b" && offset % 4 == 2),
    );
    let mut past_end = out.clone();
    past_end[1].offset = buffer.size() - 6 * 4;
    refuse(
        &state,
        ExternalGradients { output: Output::Buffers(&past_end), ..ok },
        |e| matches!(e, Error::OutOfRange { leaf, role: Role::Output, .. } if leaf == "b"),
    );
    let mut huge = out.clone();
    huge[0].offset = u64::MAX - 3;
    refuse(&state, ExternalGradients { output: Output::Buffers(&huge), ..ok }, |e| {
        matches!(e, Error::OutOfRange { .. })
    });
    // The output of `w` on top of the aux gradient of `b`.
    let mut onto_aux = out.clone();
    onto_aux[0].offset = aux[1].offset;
    refuse(
        &state,
        ExternalGradients { output: Output::Buffers(&onto_aux), ..ok },
        |e| matches!(e, Error::OverlappingOutput { leaf, other, other_role: Role::AuxGrad } if leaf == "w" && other == "b"),
    );
    // Two outputs sharing elements.
    let mut twice = out.clone();
    twice[1].offset = twice[0].offset + 4;
    refuse(&state, ExternalGradients { output: Output::Buffers(&twice), ..ok }, |e| {
        matches!(e, Error::OverlappingOutput { other_role: Role::Output, .. })
    });
    // In place, but the main leaves overlap each other.
    let mut overlapping_main = main.clone();
    overlapping_main[1].offset = 8;
    refuse(&state, ExternalGradients { main: &overlapping_main, output: Output::InPlace, ..ok }, |e| {
        matches!(e, Error::OverlappingOutput { .. })
    });
    // An output inside another leaf's main gradient is not "in place".
    let mut onto_other_main = out.clone();
    onto_other_main[1] = LeafBuffer::new(&buffer, main[0].offset, 7);
    refuse(
        &state,
        ExternalGradients { output: Output::Buffers(&onto_other_main), ..ok },
        |e| matches!(e, Error::OverlappingOutput { leaf, other, other_role: Role::MainGrad } if leaf == "b" && other == "w"),
    );
    // One leaf in place and the other not is fine.
    let mut partly_in_place = out.clone();
    partly_in_place[1] = main[1].clone();
    state.bind_external(&ExternalGradients { output: Output::Buffers(&partly_in_place), ..ok }).unwrap();
    // Inputs may overlap each other: they are only read.
    state.bind_external(&ExternalGradients { aux: &main, ..ok }).unwrap();
}

#[test]
fn foreign_bindings_and_pools_are_refused() {
    let mut a = state(Method::Bloop);
    let b = state(Method::Bloop);
    let pool = GradientPool::new(&gpu().device, &layout(), false).unwrap();
    let foreign = b.bind_pool(&pool).unwrap();
    let before = snapshot(&a);
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    assert!(matches!(a.record_step(&mut encoder, &foreign), Err(Error::Mismatch(_))));
    gpu().queue.submit([encoder.finish()]);
    assert_eq!(snapshot(&a), before);

    let other_layout = Layout::from_lengths(&[300, 7]).unwrap(); // same sizes, other names
    let other_pool = GradientPool::new(&gpu().device, &other_layout, false).unwrap();
    assert!(matches!(a.bind_pool(&other_pool), Err(Error::Mismatch(_))));
    assert_eq!(snapshot(&a), before);
}

#[test]
fn ema_access_errors_leave_the_ema_alone() {
    let mut state = state(Method::Bloop);
    let before = snapshot(&state);
    assert!(matches!(state.read_ema(EmaRole::Aux), Err(Error::NoSuchEma { method: "bloop", role: "aux" })));
    assert!(matches!(state.write_ema(EmaRole::Aux, &[]), Err(Error::NoSuchEma { .. })));
    assert!(matches!(
        state.write_ema(EmaRole::Main, &[vec![1.0; 300], vec![1.0; 6]]),
        Err(Error::LeafLength { expected: 7, got: 6, .. })
    ));
    assert!(matches!(state.write_ema(EmaRole::Main, &[vec![1.0; 300]]), Err(Error::LeafCount { .. })));
    assert!(matches!(
        state.write_ema(EmaRole::Main, &[vec![f32::NAN; 300], vec![1.0; 7]]),
        Err(Error::NonFiniteValue { index: 0, .. })
    ));
    let (_, [sources, ..]) = flat(wgpu::BufferUsages::STORAGE);
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    assert!(matches!(
        state.record_ema_copy(&mut encoder, EmaRole::Main, &sources),
        Err(Error::MissingUsage { missing: wgpu::BufferUsages::COPY_SRC, .. })
    ));
    gpu().queue.submit([encoder.finish()]);
    assert_eq!(snapshot(&state), before);
    let mixed = self::state(Method::Mixed);
    assert!(matches!(mixed.read_ema(EmaRole::Main), Err(Error::NoSuchEma { method: "mixed", role: "main" })));
}

#[test]
fn set_config_refuses_bad_values_and_other_kernels() {
    let mut state = state(Method::Bloop);
    let before = snapshot(&state);
    assert!(matches!(
        state.set_config(Config::new(Method::Bloop).ema(2.0)),
        Err(Error::InvalidConfig { field: "ema", .. })
    ));
    assert!(matches!(state.set_config(Config::new(Method::PcGrad)), Err(Error::Mismatch(_))));
    assert!(matches!(state.set_config(Config::new(Method::Bloop).ratio_only(true)), Err(Error::Mismatch(_))));
    assert_eq!(snapshot(&state), before);
    state.set_config(Config::new(Method::Bloop).lambda(3.0)).unwrap();
    assert_eq!(state.config().lambda, 3.0);
}

#[test]
fn set_config_applies_to_later_steps() {
    let mut rng = SplitMix64::new(3);
    let layout = layout();
    let lengths = layout.lengths();
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let config = Config::new(Method::DynamicBarrier).lambda(0.5).ema(0.25);
    let (mut state, mut reference) = common::state_with(&layout, config, init.clone(), init);
    let leaves = common::Leaves::new(&mut rng, gpu(), &layout, common::Arrangement::Pool { in_place: false });
    let bindings = leaves.bind(&state);
    for lambda in [0.5, 2.0] {
        let changed = config.lambda(lambda).rescale(lambda > 1.0);
        state.set_config(changed).unwrap();
        reference.config = changed;
        let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
        common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&bloop::reference::widen(&g_main), &bloop::reference::widen(&g_aux));
        let errors = common::compare_step(&state, &reference, &expected, leaves.output_leaves());
        assert!(errors.iter().all(|&e| e <= 1e-5), "lambda {lambda}: {errors:?}");
    }
}

#[test]
fn guard_buffers_detect_stray_writes() {
    // The guard check the property tests rely on must be able to fail.
    let mut guarded = GuardedBuffer::new(&gpu().device, &gpu().queue, 64);
    let leaf = guarded.leaf(10, 5);
    assert_eq!(guarded.corrupted(), 0);
    gpu().queue.write_buffer(&leaf.buffer, leaf.offset + 5 * 4, bytemuck::cast_slice(&[1.0f32]));
    assert_eq!(guarded.corrupted(), 1);
}

#[test]
fn buffers_of_another_device_are_refused() {
    // A second device of the same adapter (wgpu cannot tell buffers of another *instance*
    // apart: their ids collide, so those are the caller's responsibility).
    let (device, _queue) = pollster::block_on(gpu().adapter.request_device(&Default::default())).unwrap();
    let foreign = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("another device's"),
        size: 3 * 307 * 4,
        usage: bloop::pool::POOL_USAGE,
        mapped_at_creation: false,
    });
    let leaves = vec![LeafBuffer::new(&foreign, 0, 300), LeafBuffer::new(&foreign, 300 * 4, 7)];
    let mut state = state(Method::Bloop);
    let before = snapshot(&state);
    let (_, [main, aux, out]) = flat(bloop::pool::POOL_USAGE);
    let err = state
        .bind_external(&ExternalGradients { main: &leaves, aux: &aux, output: Output::Buffers(&out) })
        .unwrap_err();
    assert!(matches!(err, Error::Gpu { .. }), "{err}");
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    let err = state.record_ema_copy(&mut encoder, EmaRole::Main, &leaves).unwrap_err();
    assert!(matches!(err, Error::Gpu { .. }), "{err}");
    gpu().queue.submit([encoder.finish()]);
    assert_eq!(snapshot(&state), before);
    let init = EmaInits::both(EmaInit::Buffers(leaves));
    let err = BloopState::new(&kernels(), &gpu().queue, &layout(), Config::new(Method::Bloop), init).unwrap_err();
    assert!(matches!(err, Error::Gpu { .. }), "{err}");
    let _ = main;
}

#[test]
fn set_config_cannot_switch_the_guard_or_diagnostics() {
    let mut state = state(Method::PcGrad);
    let before = snapshot(&state);
    assert!(matches!(state.set_config(Config::new(Method::PcGrad).guard(false)), Err(Error::Mismatch(_))));
    assert!(matches!(state.set_config(Config::new(Method::PcGrad).diagnostics(true)), Err(Error::Mismatch(_))));
    assert_eq!(snapshot(&state), before);
}

#[test]
fn pool_accessors_refuse_indices_past_the_leaves_and_losses() {
    let pool = GradientPool::hierarchy(&gpu().device, &layout(), 2, false, Default::default()).unwrap();
    let past = |e: Error, what: &str, index: usize, count: usize| {
        assert!(
            matches!(&e, Error::IndexOutOfRange { what: w, index: i, count: c } if *w == what && *i == index && *c == count),
            "{e}"
        );
    };
    past(pool.main(2).unwrap_err(), "leaf", 2, 2);
    past(pool.aux(usize::MAX).unwrap_err(), "leaf", usize::MAX, 2);
    past(pool.output(7).unwrap_err(), "leaf", 7, 2);
    past(pool.gradient(3, 0).unwrap_err(), "loss", 3, 3);
    past(pool.gradient(2, 2).unwrap_err(), "leaf", 2, 2);
    assert_eq!(pool.gradient(2, 1).unwrap().len, 7);
    assert!(matches!(pool.params(0), Err(Error::Optimizer(m)) if m.contains("with_params")));
    let with_params =
        GradientPool::new(&gpu().device, &layout(), true).unwrap().with_params(&gpu().device, bloop::DType::F32);
    past(with_params.unwrap().params(2).unwrap_err(), "leaf", 2, 2);
}

#[test]
fn shapes_whose_product_overflows_are_refused_as_too_large() {
    for shape in [vec![u64::MAX, 2], vec![1 << 32, 1 << 32], vec![3, 1 << 40, 1 << 30]] {
        let err = Layout::from_shapes([("ok", vec![2u64]), ("huge", shape.clone())]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidLayout(m) if m.contains("`huge`") && m.contains("2^64")),
            "{shape:?}: {err}"
        );
    }
    // A product that fits u64 but not a leaf is refused for its size, not its shape.
    let err = Layout::from_shapes([("big", vec![1u64 << 20, 1 << 20])]).unwrap_err();
    assert!(matches!(&err, Error::InvalidLayout(m) if m.contains("at most")), "{err}");
}

/// Per-leaf bits of one role.
type Bits = Vec<Vec<u32>>;

/// A checkpoint's damage, named by the words its error must contain.
type Damage = (&'static str, Box<dyn Fn(&mut bloop::Checkpoint)>);

/// The optimizer's learning rate bits, step and state tensors.
type OptimizerBits = Option<(u32, u64, Vec<Bits>)>;

/// Every observable part of a state with an optimizer, for bit-for-bit comparisons: steps,
/// skipped steps, the main average, and the optimizer's part.
fn full_snapshot(state: &BloopState) -> (u64, u64, Bits, OptimizerBits) {
    let bits = |v: Vec<Vec<f32>>| v.into_iter().map(|l| l.into_iter().map(f32::to_bits).collect()).collect::<Vec<_>>();
    let optimizer = state
        .read_schedule()
        .ok()
        .map(|(lr, step)| (lr.to_bits(), step, state.read_optimizer_state().unwrap().into_iter().map(bits).collect()));
    (state.steps(), state.skipped_steps().unwrap(), bits(state.read_ema(EmaRole::Main).unwrap()), optimizer)
}

#[test]
fn restore_refuses_checkpoints_whose_vectors_or_counters_do_not_fit() {
    let config = Config::new(Method::Bloop).optimizer(bloop::Optimizer::adam(1e-3).state_type(bloop::DType::F32));
    let init = EmaInits::both(EmaInit::Normal { seed: 4 });
    let mut state = BloopState::new(&kernels(), &gpu().queue, &layout(), config, init).unwrap();
    let good = state.checkpoint().unwrap();
    let before = full_snapshot(&state);
    let cases: Vec<Damage> = vec![
        (
            "leaf `b` (main EMA): layout says 7 elements, got 6",
            Box::new(|c| {
                c.main_ema[1].pop();
            }),
        ),
        ("leaf `w` (main EMA): layout says 300 elements, got 301", Box::new(|c| c.main_ema[0].push(1.0))),
        (
            "main EMA: expected one entry per leaf (2 leaves), got 1",
            Box::new(|c| {
                c.main_ema.pop();
            }),
        ),
        ("main EMA: expected one entry per leaf (2 leaves), got 0", Box::new(|c| c.main_ema.clear())),
        ("element 3 is NaN", Box::new(|c| c.main_ema[0][3] = f32::NAN)),
        ("element 6 is inf", Box::new(|c| c.main_ema[1][6] = f32::INFINITY)),
        ("aux EMA: 1 vectors, but bloop keeps none", Box::new(|c| c.aux_ema = vec![vec![0.0; 300]])),
        ("1 level averages, the config keeps 0", Box::new(|c| c.level_emas = vec![vec![]])),
        (
            "at most 4294967295 (the GPU counts in u32)",
            Box::new(|c| {
                c.steps = 1 << 40;
                c.skipped_steps = 1 << 33;
            }),
        ),
        (
            "3 skipped steps out of 2",
            Box::new(|c| {
                c.steps = 2;
                c.skipped_steps = 3;
            }),
        ),
        ("optimizer step 4294967296 exceeds u32", Box::new(|c| c.optimizer.as_mut().unwrap().step = 1 << 32)),
        ("learning rate NaN", Box::new(|c| c.optimizer.as_mut().unwrap().learning_rate = f32::NAN)),
        (
            "1 optimizer state tensors, adam keeps 2",
            Box::new(|c| {
                c.optimizer.as_mut().unwrap().tensors.pop();
            }),
        ),
        (
            "leaf `w` (optimizer state): element 0 is NaN",
            Box::new(|c| c.optimizer.as_mut().unwrap().tensors[1][0][0] = f32::NAN),
        ),
        ("no optimizer state", Box::new(|c| c.optimizer = None)),
    ];
    for (words, damage) in cases {
        let mut bad = good.clone();
        damage(&mut bad);
        let err = state.restore(&bad).unwrap_err();
        assert!(matches!(&err, Error::Checkpoint(m) if m.contains(words)), "{words}: {err}");
        assert_eq!(full_snapshot(&state), before, "{words}");
        // Nor is it written to a file.
        let err = bad.to_bytes().unwrap_err();
        assert!(matches!(&err, Error::Checkpoint(m) if m.contains(words)), "{words}: {err}");
    }
    state.restore(&good).unwrap();
    assert_eq!(full_snapshot(&state), before);
}

#[test]
fn a_checkpoint_mismatch_names_the_method_first() {
    let mut state = state(Method::Bloop);
    let before = snapshot(&state);
    let pcgrad = self::state(Method::PcGrad).checkpoint().unwrap();
    let err = state.restore(&pcgrad).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint(m) if m.contains("config `method` is \"pcgrad\" in the file")), "{err}");
    let other = self::state(Method::Bloop);
    let mut lambda = other.checkpoint().unwrap();
    lambda.config = lambda.config.lambda(0.5);
    let err = state.restore(&lambda).unwrap_err();
    assert!(matches!(&err, Error::Checkpoint(m) if m.contains("config `lambda` is 0.5 in the file")), "{err}");
    assert_eq!(snapshot(&state), before);
}

#[test]
fn hyperparameters_outside_f32_name_their_own_field() {
    let bloop = Config::new(Method::Bloop);
    assert_eq!(config_error(bloop.eps(1e-50)), "eps");
    assert_eq!(config_error(bloop.eps(1e300)), "eps");
    let message = BloopState::new(&kernels(), &gpu().queue, &layout(), bloop.eps(1e-50), EmaInits::zeros())
        .unwrap_err()
        .to_string();
    assert!(message.contains("underflows f32"), "{message}");
    let sgd = bloop::Optimizer::sgd(0.1);
    let adam = bloop::Optimizer::adam(0.1);
    assert_eq!(config_error(bloop.optimizer(sgd.weight_decay(1e300))), "optimizer.weight_decay");
    assert_eq!(config_error(bloop.optimizer(sgd.momentum(1e300))), "optimizer.momentum");
    assert_eq!(config_error(bloop.optimizer(sgd.momentum(0.9).dampening(-1e300))), "optimizer.dampening");
    assert_eq!(config_error(bloop.optimizer(adam.eps(1e300))), "optimizer.eps");
    assert_eq!(config_error(bloop.optimizer(adam.eps(1e-50))), "optimizer.eps");
    assert_eq!(config_error(bloop.optimizer(adam.weight_decay(4e38))), "optimizer.weight_decay");
    // Zero stays allowed, as in PyTorch.
    BloopState::new(&kernels(), &gpu().queue, &layout(), bloop.optimizer(adam.eps(0.0)), EmaInits::zeros()).unwrap();
}

#[test]
fn values_that_overflow_the_stored_type_are_refused() {
    use bloop::{DType, ElementTypes};
    for (dtype, big) in [(DType::F16, 70000.0f32), (DType::Bf16, f32::MAX)] {
        let config = Config::new(Method::Bloop).types(ElementTypes::all(dtype));
        let mut values = vec![vec![0.5; 300], vec![0.25; 7]];
        values[0][11] = big;
        let init = EmaInits::both(EmaInit::Values(values.clone()));
        let err = BloopState::new(&kernels(), &gpu().queue, &layout(), config, init).unwrap_err();
        let named = |e: &Error| matches!(e, Error::Unrepresentable { leaf, index: 11, dtype: d, value, .. } if leaf == "w" && *d == dtype && *value == big);
        assert!(named(&err), "{err}");
        let init = EmaInits::both(EmaInit::Normal { seed: 3 });
        let mut state = BloopState::new(&kernels(), &gpu().queue, &layout(), config, init).unwrap();
        let before = snapshot(&state);
        assert!(named(&state.write_ema(EmaRole::Main, &values).unwrap_err()));
        let mut checkpoint = state.checkpoint().unwrap();
        checkpoint.main_ema = values.clone();
        let err = state.restore(&checkpoint).unwrap_err();
        assert!(matches!(&err, Error::Checkpoint(m) if m.contains("overflows")), "{err}");
        assert_eq!(snapshot(&state), before);
    }
    let adam = bloop::Optimizer::adam(1e-3).state_type(DType::F16);
    let mut state = BloopState::new(
        &kernels(),
        &gpu().queue,
        &layout(),
        Config::new(Method::Bloop).optimizer(adam),
        EmaInits::zeros(),
    )
    .unwrap();
    let before = full_snapshot(&state);
    let mut moments = vec![vec![vec![0.0; 300], vec![0.0; 7]]; 2];
    moments[1][1][2] = 1e5;
    let err = state.write_optimizer_state(&moments, 3).unwrap_err();
    assert!(matches!(&err, Error::Unrepresentable { leaf, index: 2, .. } if leaf == "b"), "{err}");
    assert_eq!(full_snapshot(&state), before);
}

#[test]
fn mapped_and_destroyed_buffers_are_refused_at_bind_and_record_time() {
    let mut state = state(Method::Bloop);
    let before = snapshot(&state);
    let (_, [main, aux, out]) = flat(bloop::pool::POOL_USAGE);
    let mapped = gpu().device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("mapped at creation"),
        size: 307 * 4,
        usage: bloop::pool::POOL_USAGE,
        mapped_at_creation: true,
    });
    let on_mapped = vec![LeafBuffer::new(&mapped, 0, 300), LeafBuffer::new(&mapped, 300 * 4, 7)];
    let ok = ExternalGradients { main: &main, aux: &aux, output: Output::Buffers(&out) };
    let err = state.bind_external(&ExternalGradients { aux: &on_mapped, ..ok }).unwrap_err();
    assert!(matches!(&err, Error::BufferMapped { leaf, role: Role::AuxGrad } if leaf == "w"), "{err}");
    let err = bloop::read_leaves(&gpu().device, &gpu().queue, &on_mapped).unwrap_err();
    assert!(matches!(err, Error::BufferMapped { .. }), "{err}");
    mapped.unmap();
    let bindings = state.bind_external(&ExternalGradients { aux: &on_mapped, ..ok }).unwrap();
    mapped.destroy();
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    let err = state.record_step(&mut encoder, &bindings).unwrap_err();
    assert!(matches!(&err, Error::BufferDestroyed { leaf, role: Role::AuxGrad } if leaf == "w"), "{err}");
    gpu().queue.submit([encoder.finish()]);
    let err = state.bind_external(&ExternalGradients { aux: &on_mapped, ..ok }).unwrap_err();
    assert!(matches!(err, Error::BufferDestroyed { .. }), "{err}");
    assert_eq!(snapshot(&state), before);
}

#[test]
fn read_leaves_refuses_ranges_outside_the_buffer() {
    let (buffer, _) = flat(bloop::pool::POOL_USAGE);
    for (offset, len) in [(buffer.size() - 8, 3), (u64::MAX - 3, 2), (0, u64::MAX / 2)] {
        let leaf = LeafBuffer::new(&buffer, offset, len);
        let err = bloop::read_leaves(&gpu().device, &gpu().queue, &[leaf]).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "{offset} {len}: {err}");
    }
    let leaf = LeafBuffer::new(&buffer, 2, 3);
    assert!(matches!(bloop::read_leaves(&gpu().device, &gpu().queue, &[leaf]), Err(Error::MisalignedOffset { .. })));
}

#[test]
fn a_ring_refuses_a_state_of_another_device_and_an_early_submitted_is_harmless() {
    let (device, _queue) = pollster::block_on(gpu().adapter.request_device(&Default::default())).unwrap();
    let mut foreign_ring = bloop::DiagnosticsRing::new(&device, 2);
    let mut state = state(Method::Bloop);
    let pool = GradientPool::new(&gpu().device, &layout(), false).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    state.record_step(&mut encoder, &bindings).unwrap();
    let err = foreign_ring.record(&mut encoder, &state).unwrap_err();
    assert!(matches!(err, Error::OtherDevice { what: "the state", .. }), "{err}");
    // `submitted` before the submit used to map the slot and make the submit fail.
    let mut ring = bloop::DiagnosticsRing::new(&gpu().device, 2);
    assert!(ring.record(&mut encoder, &state).unwrap());
    ring.submitted();
    gpu().queue.submit([encoder.finish()]);
    let landed = ring.flush().unwrap();
    assert_eq!(landed.iter().map(|d| d.step).collect::<Vec<_>>(), vec![0]);
}

#[test]
fn a_state_whose_checkpoint_header_could_not_be_read_is_refused_at_creation() {
    let lengths = vec![1u64; 1_000_000];
    let layout = Layout::from_lengths(&lengths).unwrap();
    let err =
        BloopState::new(&kernels(), &gpu().queue, &layout, Config::new(Method::Bloop), EmaInits::zeros()).unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointHeader { leaves: 1_000_000, limit: 100_000_000, header_bytes, .. } if *header_bytes > 100_000_000),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("1000000 leaves") && message.contains("too many leaves"), "{message}");
    // Mixing keeps no averages: its checkpoint holds the layout alone, which fits.
    BloopState::new(&kernels(), &gpu().queue, &layout, Config::new(Method::Mixed), EmaInits::zeros()).unwrap();
}

#[test]
fn the_header_bound_holds_for_real_checkpoints() {
    use bloop::checkpoint::header_bytes_bound;
    let adam = bloop::Optimizer::adamw(1e-3);
    let layout =
        Layout::from_shapes([("w \"quoted\"\n", vec![30u64, 10]), ("b", vec![7]), ("ü", vec![1, 1, 3])]).unwrap();
    for config in
        [Config::new(Method::PcGrad), Config::new(Method::Bloop).optimizer(adam), Config::hierarchy(&[0.5, 0.25])]
    {
        let state =
            BloopState::new(&kernels(), &gpu().queue, &layout, config, EmaInits::both(EmaInit::Normal { seed: 1 }))
                .unwrap();
        let bytes = state.checkpoint().unwrap().to_bytes().unwrap();
        let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let bound = header_bytes_bound(&layout, &config);
        assert!(header <= bound && bound < header + 1024, "{:?}: header {header}, bound {bound}", config.method);
    }
}

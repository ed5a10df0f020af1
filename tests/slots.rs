//! Leaves in many distinct buffers share dispatches: each dispatch binds several slots of the
//! user's buffers, and each segment names its slot. Against the f64 references, with poisoned
//! outputs and guards around every user range, for one buffer per leaf, more buffers than one
//! dispatch's slots, shared buffers and pooled pages with live data between; every method, the
//! hierarchy and 16-bit storage; with the default slot counts, 4 slots and the one-buffer
//! fallback.

mod common;

use std::sync::Arc;

use bloop::hierarchy::HierarchyReference;
use bloop::reference::{relative_error, widen};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Config, DType, ElementTypes, EmaInit, EmaRole, GpuContext, KernelOptions, Kernels,
    LeafBuffer, Method, Optimizer, Output,
};
use common::{
    below, gpu, normal_leaves, odd_layout, per_leaf, rounded_leaves, varied_configs, write_leaves, Arrangement, Leaves,
};

const BOUND: f64 = 1e-5;

/// Slots, not binding arrays (`tests/binding_arrays.rs`), even where the device has them.
fn kernels_with(max_slots: u32) -> Arc<Kernels> {
    common::kernels_with_options(KernelOptions { max_slots, ..slots_only() })
}

fn slots_only() -> KernelOptions {
    KernelOptions { binding_arrays: Some(false), ..Default::default() }
}

/// Three steps of `config` over `arrangement` against the reference; returns the leaves and
/// the dispatches per stage.
fn check(
    kernels: &Arc<Kernels>,
    seed: u64,
    config: Config,
    arrangement: Arrangement,
    in_place: bool,
) -> (usize, usize) {
    let mut rng = SplitMix64::new(seed);
    let count = 5 + below(&mut rng, 40) as usize;
    let layout = odd_layout(&mut rng, count);
    let lengths = layout.lengths();
    let main = normal_leaves(&mut rng, &lengths, 1.0);
    let aux = normal_leaves(&mut rng, &lengths, 1.0);
    let (mut state, mut reference) = common::state_on(kernels, &layout, config, main, aux);
    let mut leaves = Leaves::new(&mut rng, gpu(), &layout, arrangement);
    if in_place {
        leaves.output = None;
    }
    let bindings = leaves.bind(&state);
    let context = format!("seed {seed}, {arrangement:?}, in place {in_place}, {config:?}, {bindings:?}");
    common::check_three_steps(&mut rng, &mut state, &mut reference, &leaves, &bindings, &lengths, BOUND, &context);
    assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
    (count, bindings.dispatch_count())
}

#[test]
fn one_buffer_per_leaf_takes_a_dispatch_per_slots_of_leaves() {
    // Every leaf's gradients and output in buffers of their own: each leaf takes a slot.
    let limit = gpu().device.limits().max_storage_buffers_per_shader_stage;
    eprintln!("max_storage_buffers_per_shader_stage: {limit}");
    for (i, config) in varied_configs().into_iter().enumerate() {
        for slots in [16, 4, 1] {
            let kernels = kernels_with(slots);
            let (leaves, dispatches) = check(&kernels, 100 + i as u64, config, Arrangement::PerLeaf, i % 2 == 1);
            // Each slot binds 3 buffers (gradients, output); 4 more (scalars, partials, table,
            // and the averages, PCGrad's two as planes of one buffer).
            let most = slots.min((limit - 4) / 3);
            assert_eq!(dispatches, leaves.div_ceil(most as usize), "{config:?}, {slots} slots");
        }
    }
}

#[test]
fn more_buffers_than_slots_shared_buffers_and_pages() {
    // Pages shared by every role (inputs bound writable), leaves interleaved with live data, in
    // more pages than one dispatch's slots.
    for (i, config) in varied_configs().into_iter().enumerate() {
        for (slots, arrangement) in [
            (4, Arrangement::ManyPages { pages: 7 }),
            (16, Arrangement::ManyPages { pages: 5 }),
            (4, Arrangement::Pages),
            (4, Arrangement::Flat { in_place: false }),
            (1, Arrangement::ManyPages { pages: 3 }),
        ] {
            let (_, dispatches) = check(&kernels_with(slots), 200 + i as u64, config, arrangement, false);
            if matches!(arrangement, Arrangement::Flat { .. }) {
                assert_eq!(dispatches, 1);
            }
        }
        check(&kernels_with(4), 300 + i as u64, config, Arrangement::ManyPages { pages: 6 }, true);
    }
}

#[test]
fn hierarchies_over_one_buffer_per_leaf() {
    // k + 1 gradients and the output in a buffer per leaf each; f32 and 16-bit storage; the
    // most slots the device allows, 4, and the fallback.
    let packed = common::kernels_with_options(KernelOptions { native_f16: false, ..slots_only() });
    let cases: [(usize, Arc<Kernels>, DType); 5] = [
        (2, kernels_with(16), DType::F32),
        (3, kernels_with(4), DType::F32),
        (1, kernels_with(1), DType::F32),
        (2, packed, DType::F16),
        (2, kernels_with(4), DType::Bf16),
    ];
    for (case, (k, kernels, dtype)) in cases.into_iter().enumerate() {
        let mut rng = SplitMix64::new(400 + case as u64);
        let count = 5 + below(&mut rng, 30) as usize;
        let layout = odd_layout(&mut rng, count);
        let lengths = layout.lengths();
        let types = if dtype == DType::F32 { ElementTypes::default() } else { ElementTypes::all(dtype) };
        let lambdas: Vec<f64> = (0..k).map(|j| 0.7 / (j + 1) as f64).collect();
        let config = Config::hierarchy(&lambdas).ema(0.4).types(types);
        let inits = rounded_leaves(&mut rng, k, &lengths, dtype);
        let state = BloopState::new_hierarchy(
            &kernels,
            &gpu().queue,
            &layout,
            config,
            inits.iter().map(|v| EmaInit::Values(v.clone())).collect(),
        );
        let limit = common::storage_buffer_limit();
        let most = common::hierarchy_most_storage_buffers(k);
        let what = format!("a hierarchy of {k} in {dtype}");
        let Some(mut state) = common::unless_too_many_storage_buffers(state, limit, most, &what) else { continue };
        let mut reference = HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect());
        let mut guarded = Vec::new();
        let grads: Vec<Vec<LeafBuffer>> = (0..=k).map(|_| per_leaf(&mut rng, &lengths, dtype, &mut guarded)).collect();
        let out = per_leaf(&mut rng, &lengths, dtype, &mut guarded);
        let lists: Vec<&[LeafBuffer]> = grads.iter().map(|g| g.as_slice()).collect();
        let bindings = state.bind_hierarchy(&lists, Output::Buffers(&out)).unwrap();
        let context = format!("k = {k}, {dtype}, {bindings:?}");
        let bound = bloop::conformance::bound(types);
        for _ in 0..2 {
            let values: Vec<Vec<Vec<f32>>> = (0..=k)
                .map(|_| {
                    normal_leaves(&mut rng, &lengths, 1.0)
                        .into_iter()
                        .map(|l| l.into_iter().map(|x| dtype.round(x)).collect())
                        .collect()
                })
                .collect();
            for (leaves, v) in grads.iter().zip(&values) {
                write_leaves(leaves, v);
            }
            write_leaves(&out, &lengths.iter().map(|&n| vec![f32::NAN; n as usize]).collect::<Vec<_>>());
            let mut encoder = gpu().device.create_command_encoder(&Default::default());
            state.record_step(&mut encoder, &bindings).unwrap();
            gpu().queue.submit([encoder.finish()]);
            let expected = reference.step(&values.iter().map(|v| widen(v)).collect::<Vec<_>>());
            let got = widen(&read_leaves(&gpu().device, &gpu().queue, &out).unwrap());
            let error = relative_error(&got, &expected);
            assert!(error <= bound, "{error}; {context}");
            for j in 0..k {
                let ema = widen(&state.read_ema(EmaRole::Level(j)).unwrap());
                assert!(relative_error(&ema, &reference.emas[j]) <= bound, "average {j}; {context}");
            }
        }
        assert_eq!(guarded.iter().map(|g| g.corrupted()).sum::<usize>(), 0, "{context}");
        if k == 3 {
            // 4 fixed (scalars, partials, table, the averages as planes), k + 2 per slot.
            let limit = gpu().device.limits().max_storage_buffers_per_shader_stage as usize;
            let slots = 4.min((limit - 4) / (k + 2));
            assert_eq!(bindings.dispatch_count(), count.div_ceil(slots), "{context}");
        }
    }
}

#[test]
fn slots_stay_within_the_device_limits() {
    // At wgpu's default 8 storage buffers per stage BLOOP fits one slot only (7 buffers): one
    // dispatch per leaf, still right. At 16, four slots (4 + 3 per slot); on a device with
    // fewer (SwiftShader's 10), as many as its limit allows.
    let mut rng = SplitMix64::new(500);
    let layout = odd_layout(&mut rng, 9);
    let lengths = layout.lengths();
    let most = common::storage_buffer_limit().min(16);
    for (limit, slots) in [(8u32, 1usize), (most, (most as usize - 4) / 3)] {
        let limited = pollster::block_on(GpuContext::from_env_with_limits(|limits| wgpu::Limits {
            max_storage_buffers_per_shader_stage: limit,
            ..limits
        }))
        .unwrap();
        let kernels = Kernels::with_options(&limited.device, slots_only());
        let config = Config::new(Method::Bloop).ema(0.5).lambda(0.9);
        let init = normal_leaves(&mut rng, &lengths, 1.0);
        let inits = bloop::EmaInits { main: EmaInit::Values(init.clone()), aux: EmaInit::Zeros };
        let mut state = BloopState::new(&kernels, &limited.queue, &layout, config, inits).unwrap();
        let mut reference = bloop::ReferenceState::new(config, widen(&init), vec![]);
        let leaves = Leaves::new(&mut rng, &limited, &layout, Arrangement::PerLeaf);
        let bindings = leaves.bind(&state);
        assert_eq!(bindings.dispatch_count(), layout.len().div_ceil(slots), "limit {limit}");
        let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
        common::run_step_on(&limited, &mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&widen(&g_main), &widen(&g_aux));
        let out = widen(&read_leaves(&limited.device, &limited.queue, leaves.output_leaves()).unwrap());
        assert!(relative_error(&out, &expected) <= BOUND, "limit {limit}");
        // PCGrad with Adam binds 8 through a pool (its averages and moments as planes); the
        // user's buffers, one per leaf, take one slot more than that and are refused when bound.
        if limit == 8 {
            let adam = Config::new(Method::PcGrad).optimizer(Optimizer::adam(1e-3));
            let state = BloopState::new(&kernels, &limited.queue, &layout, adam, bloop::EmaInits::zeros()).unwrap();
            let leaves = Leaves::new(&mut rng, &limited, &layout, Arrangement::PerLeaf);
            let params = Leaves::new(&mut rng, &limited, &layout, Arrangement::PerLeaf).main;
            match state.bind_external_with_params(&leaves.gradients(), &params) {
                Err(bloop::Error::ExceedsCount { needed: 9, limit: 8, limit_name, .. }) => {
                    assert_eq!(limit_name, "max_storage_buffers_per_shader_stage")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

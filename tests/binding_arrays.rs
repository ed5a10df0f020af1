//! The user's buffers bound as one binding array per role (`KernelOptions::binding_arrays`):
//! a step over any number of distinct buffers takes one dispatch per stage. The cases of
//! `tests/slots.rs` (every method, hierarchies, f16 and bf16, in place, more buffers than one
//! array holds, shared buffers and pooled pages with live data between, guards around every
//! user range), against the f64 references, with the arrays forced. On a device without the
//! features (lavapipe 22, GL) forcing them is refused by name and the default takes the slots,
//! as asserted here; on one with them (lavapipe 25) a device made without them checks the same.
//! SwiftShader lists the features but its steps through them came out NaN, so the library does
//! not use them there: the same refusal and fallback, asserted.

mod common;

use std::sync::Arc;

use bloop::hierarchy::HierarchyReference;
use bloop::reference::{relative_error, widen};
use bloop::rng::SplitMix64;
use bloop::{
    read_leaves, BloopState, Config, DType, ElementTypes, EmaInit, EmaRole, GpuContext, KernelOptions, Kernels,
    LeafBuffer, Output, BINDING_ARRAY_FEATURES,
};
use common::{
    below, gpu, normal_leaves, odd_layout, per_leaf, rounded_leaves, varied_configs, write_leaves, Arrangement, Leaves,
};

const BOUND: f64 = 1e-5;

/// Kernels on `gpu` that take binding arrays as `binding_arrays` says, at most `max` windows
/// of a role per array.
fn kernels_on(gpu: &GpuContext, binding_arrays: Option<bool>, max: u32) -> Arc<Kernels> {
    let options = KernelOptions { binding_arrays, max_array_buffers: max, ..Default::default() };
    Kernels::with_options(&gpu.device, options)
}

/// Kernels forced onto binding arrays, or `None` (with a note) where the device lacks them:
/// the refusal and the fallback are checked by `without_the_features_the_slots_are_taken`.
fn forced(max: u32) -> Option<Arc<Kernels>> {
    let kernels = kernels_on(gpu(), Some(true), max);
    if !kernels.has_binding_arrays() {
        eprintln!("no binding arrays on {}: checked as a refusal instead", gpu().describe());
        return None;
    }
    Some(kernels)
}

/// Three steps of `config` over `arrangement` on `gpu` against the reference; returns the
/// leaves and the bindings' dispatches per stage and path.
fn check_on(
    gpu: &GpuContext,
    kernels: &Arc<Kernels>,
    seed: u64,
    config: Config,
    arrangement: Arrangement,
    in_place: bool,
) -> (usize, usize, bool) {
    let mut rng = SplitMix64::new(seed);
    let count = 5 + below(&mut rng, 40) as usize;
    let layout = odd_layout(&mut rng, count);
    let lengths = layout.lengths();
    let main = normal_leaves(&mut rng, &lengths, 1.0);
    let aux = normal_leaves(&mut rng, &lengths, 1.0);
    let reference_main = if config.method.has_main_ema() { widen(&main) } else { vec![] };
    let reference_aux = if config.method.has_aux_ema() { widen(&aux) } else { vec![] };
    let mut reference = bloop::ReferenceState::new(config, reference_main, reference_aux);
    let inits = bloop::EmaInits { main: EmaInit::Values(main), aux: EmaInit::Values(aux) };
    let mut state = BloopState::new(kernels, &gpu.queue, &layout, config, inits).unwrap();
    let mut leaves = Leaves::new(&mut rng, gpu, &layout, arrangement);
    if in_place {
        leaves.output = None;
    }
    let bindings = leaves.bind(&state);
    let context = format!("seed {seed}, {arrangement:?}, in place {in_place}, {config:?}, {bindings:?}");
    for step in 0..3 {
        let g_main = normal_leaves(&mut rng, &lengths, 1.0);
        let g_aux = normal_leaves(&mut rng, &lengths, 0.7);
        common::run_step_on(gpu, &mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&widen(&g_main), &widen(&g_aux));
        let out = widen(&read_leaves(&gpu.device, &gpu.queue, leaves.output_leaves()).unwrap());
        let error = relative_error(&out, &expected);
        assert!(error <= BOUND, "step {step}: direction {error}; {context}");
        for (role, kept, want) in [
            (EmaRole::Main, config.method.has_main_ema(), &reference.main_ema),
            (EmaRole::Aux, config.method.has_aux_ema(), &reference.aux_ema),
        ] {
            if kept {
                let ema = widen(&state.read_ema(role).unwrap());
                assert!(relative_error(&ema, want) <= BOUND, "step {step}: {role:?} average; {context}");
            }
        }
    }
    assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
    (count, bindings.dispatch_count(), bindings.binding_arrays())
}

fn check(
    kernels: &Arc<Kernels>,
    seed: u64,
    config: Config,
    arrangement: Arrangement,
    in_place: bool,
) -> (usize, usize) {
    let (count, dispatches, arrays) = check_on(gpu(), kernels, seed, config, arrangement, in_place);
    assert!(arrays, "forced binding arrays, seed {seed}, {config:?}, {arrangement:?}");
    (count, dispatches)
}

#[test]
fn one_buffer_per_leaf_takes_one_dispatch() {
    // Every leaf's gradients and output in buffers of their own: one dispatch per stage for
    // all of them, or one per `max` leaves where the arrays are shorter than that.
    let limit = gpu().device.limits().max_binding_array_elements_per_shader_stage;
    eprintln!("max_binding_array_elements_per_shader_stage: {limit}");
    for (i, config) in varied_configs().into_iter().enumerate() {
        for max in [4096, 16, 4] {
            let Some(kernels) = forced(max) else { return };
            let (leaves, dispatches) = check(&kernels, 100 + i as u64, config, Arrangement::PerLeaf, i % 2 == 1);
            assert_eq!(dispatches, leaves.div_ceil(max as usize), "{config:?}, arrays of {max}");
        }
    }
}

#[test]
fn more_buffers_than_the_arrays_hold_shared_buffers_and_pages() {
    // Pages shared by every role (inputs bound writable), leaves interleaved with live data, in
    // more pages than one array holds; a flat buffer and a pool through arrays of one.
    for (i, config) in varied_configs().into_iter().enumerate() {
        for (max, arrangement, dispatches) in [
            // An element of the arrays holds one window of each role, so leaves whose main,
            // aux and output lie in another combination of pages take another element.
            (4, Arrangement::ManyPages { pages: 7 }, None),
            (16, Arrangement::ManyPages { pages: 5 }, None),
            (4, Arrangement::Pages, None),
            (4, Arrangement::Flat { in_place: false }, Some(1)),
            (4, Arrangement::Pool { in_place: i % 2 == 0 }, Some(1)),
            (2, Arrangement::ManyPages { pages: 3 }, None),
        ] {
            let Some(kernels) = forced(max) else { return };
            let (_, got) = check(&kernels, 200 + i as u64, config, arrangement, false);
            if let Some(dispatches) = dispatches {
                assert_eq!(got, dispatches, "{config:?}, {arrangement:?}, arrays of {max}");
            }
        }
        let Some(kernels) = forced(4096) else { return };
        check(&kernels, 300 + i as u64, config, Arrangement::ManyPages { pages: 6 }, true);
    }
}

#[test]
fn hierarchies_over_one_buffer_per_leaf() {
    // k + 1 gradients and the output in a buffer per leaf each, in place or not; f32, native
    // and packed f16, bf16; arrays holding every leaf, and 4 of them.
    let packed = |max| {
        let options = KernelOptions {
            binding_arrays: Some(true),
            max_array_buffers: max,
            native_f16: false,
            ..Default::default()
        };
        Kernels::with_options(&gpu().device, options)
    };
    let Some(native) = forced(4096) else { return };
    let cases: [(usize, Arc<Kernels>, DType, bool); 6] = [
        (2, native.clone(), DType::F32, false),
        (3, forced(4).unwrap(), DType::F32, false),
        (8, native.clone(), DType::F32, true),
        (2, native.clone(), DType::F16, false),
        (2, packed(4096), DType::F16, true),
        (2, forced(4).unwrap(), DType::Bf16, false),
    ];
    for (case, (k, kernels, dtype, in_place)) in cases.into_iter().enumerate() {
        let mut rng = SplitMix64::new(400 + case as u64);
        let count = 5 + below(&mut rng, 30) as usize;
        let layout = odd_layout(&mut rng, count);
        let lengths = layout.lengths();
        let types = if dtype == DType::F32 { ElementTypes::default() } else { ElementTypes::all(dtype) };
        let lambdas: Vec<f64> = (0..k).map(|j| 0.7 / (j + 1) as f64).collect();
        let config = Config::hierarchy(&lambdas).ema(0.4).types(types);
        let inits = rounded_leaves(&mut rng, k, &lengths, dtype);
        let inits_gpu = inits.iter().map(|v| EmaInit::Values(v.clone())).collect();
        let mut state = BloopState::new_hierarchy(&kernels, &gpu().queue, &layout, config, inits_gpu).unwrap();
        let mut reference = HierarchyReference::new(config, inits.iter().map(|v| widen(v)).collect());
        let mut guarded = Vec::new();
        let grads: Vec<Vec<LeafBuffer>> = (0..=k).map(|_| per_leaf(&mut rng, &lengths, dtype, &mut guarded)).collect();
        let out = if in_place { grads[0].clone() } else { per_leaf(&mut rng, &lengths, dtype, &mut guarded) };
        let lists: Vec<&[LeafBuffer]> = grads.iter().map(|g| g.as_slice()).collect();
        let output = if in_place { Output::InPlace } else { Output::Buffers(&out) };
        let bindings = state.bind_hierarchy(&lists, output).unwrap();
        let context = format!("k = {k}, {dtype}, in place {in_place}, {bindings:?}");
        assert!(bindings.binding_arrays(), "{context}");
        let max = kernels.options().max_array_buffers as usize;
        assert_eq!(bindings.dispatch_count(), count.div_ceil(max), "{context}");
        let bound = bloop::conformance::bound(types);
        for _ in 0..2 {
            let values = rounded_leaves(&mut rng, k + 1, &lengths, dtype);
            for (leaves, v) in grads.iter().zip(&values) {
                write_leaves(leaves, v);
            }
            if !in_place {
                write_leaves(&out, &lengths.iter().map(|&n| vec![f32::NAN; n as usize]).collect::<Vec<_>>());
            }
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
    }
}

#[test]
fn the_default_takes_arrays_only_where_one_slot_would_not_do() {
    // Chosen by the features: a buffer per leaf through arrays, a pool through the one-slot
    // kernels (no array to index); `Some(false)` keeps the slots.
    let config = varied_configs()[0];
    let chosen = kernels_on(gpu(), None, 4096);
    let has = chosen.has_binding_arrays();
    let (_, dispatches, arrays) = check_on(gpu(), &chosen, 600, config, Arrangement::PerLeaf, false);
    assert_eq!(arrays, has);
    if has {
        assert_eq!(dispatches, 1);
    }
    let (_, dispatches, arrays) = check_on(gpu(), &chosen, 601, config, Arrangement::Pool { in_place: false }, false);
    assert!(!arrays && dispatches == 1);
    let slots = kernels_on(gpu(), Some(false), 4096);
    let (_, _, arrays) = check_on(gpu(), &slots, 602, config, Arrangement::PerLeaf, false);
    assert!(!arrays);
}

/// A device of the same adapter made without the binding-array features (the device itself
/// where it has none).
fn without_features() -> GpuContext {
    let gpu = gpu();
    if !gpu.device.features().contains(BINDING_ARRAY_FEATURES) {
        return gpu.clone();
    }
    let features = gpu.device.features() - BINDING_ARRAY_FEATURES;
    let (device, queue) = pollster::block_on(gpu.adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("bloop without binding arrays"),
        required_features: features,
        required_limits: gpu.device.limits(),
        ..Default::default()
    }))
    .unwrap();
    GpuContext { device, queue, ..gpu.clone() }
}

#[test]
fn without_the_features_the_slots_are_taken() {
    // The fallback, asserted: forcing arrays is refused by name, with the state unchanged and
    // usable; the default binds the slots and steps right.
    let lacking = without_features();
    let forced = kernels_on(&lacking, Some(true), 4096);
    assert!(!forced.has_binding_arrays());
    let mut rng = SplitMix64::new(700);
    let layout = odd_layout(&mut rng, 9);
    let config = varied_configs()[0];
    let state = BloopState::new(&forced, &lacking.queue, &layout, config, bloop::EmaInits::zeros()).unwrap();
    let leaves = Leaves::new(&mut rng, &lacking, &layout, Arrangement::PerLeaf);
    match state.bind_external(&leaves.gradients()) {
        Err(bloop::Error::MissingFeatures { missing, .. }) => {
            assert!(missing.contains("BUFFER_BINDING_ARRAY"), "{missing}")
        }
        other => panic!("{other:?}"),
    }
    let chosen = kernels_on(&lacking, None, 4096);
    for (i, config) in varied_configs().into_iter().enumerate() {
        let (leaves, dispatches, arrays) =
            check_on(&lacking, &chosen, 800 + i as u64, config, Arrangement::PerLeaf, i % 2 == 1);
        assert!(!arrays, "{config:?}");
        // As in `tests/slots.rs`: 3 buffers per slot, 4 fixed, at most 16 slots.
        let limit = lacking.device.limits().max_storage_buffers_per_shader_stage;
        let most = 16.min((limit - 4) / 3) as usize;
        assert_eq!(dispatches, leaves.div_ceil(most), "{config:?}");
    }
}

#[test]
fn a_driver_whose_arrays_give_wrong_values_keeps_the_slots() {
    // SwiftShader lists every binding-array feature, but its steps through them came out NaN:
    // the library does not trust them there, the default takes the slots, forcing is refused.
    let gpu = gpu();
    let listed = gpu.device.features().contains(BINDING_ARRAY_FEATURES);
    let name = gpu.adapter.get_info().name;
    if !(listed && name.contains("SwiftShader")) {
        eprintln!("{name} is not SwiftShader listing binding arrays: nothing to check");
        return;
    }
    let forced = kernels_on(gpu, Some(true), 4096);
    assert!(!forced.has_binding_arrays());
    let mut rng = SplitMix64::new(900);
    let layout = odd_layout(&mut rng, 9);
    let state = BloopState::new(&forced, &gpu.queue, &layout, varied_configs()[0], bloop::EmaInits::zeros()).unwrap();
    let leaves = Leaves::new(&mut rng, gpu, &layout, Arrangement::PerLeaf);
    match state.bind_external(&leaves.gradients()) {
        Err(bloop::Error::MissingFeatures { missing, .. }) => assert!(missing.contains("wrong values"), "{missing}"),
        other => panic!("{other:?}"),
    }
    let chosen = kernels_on(gpu, None, 4096);
    let (_, _, arrays) = check_on(gpu, &chosen, 901, varied_configs()[0], Arrangement::PerLeaf, false);
    assert!(!arrays, "the default took binding arrays on {name}");
}

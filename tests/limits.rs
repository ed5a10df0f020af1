//! Pools and leaves larger than the device's binding and buffer limits, on a device created
//! with lowered limits so the test stays small.

mod common;

use std::sync::Arc;

use bloop::reference::{widen, ReferenceState};
use bloop::rng::SplitMix64;
use bloop::{BloopState, Config, EmaInit, EmaInits, GpuContext, Kernels, Layout, Method};
use common::{normal_leaves, Arrangement, Leaves};

/// 64 KiB bindings (16384 f32).
const BINDING_LIMIT: u64 = 64 << 10;

fn small_device(buffer_limit: u64) -> GpuContext {
    pollster::block_on(GpuContext::from_env_with_limits(|limits| wgpu::Limits {
        max_storage_buffer_binding_size: BINDING_LIMIT,
        max_buffer_size: buffer_limit,
        ..limits
    }))
    .unwrap()
}

fn run(gpu: &GpuContext, kernels: &Arc<Kernels>, method: Method, arrangement: Arrangement, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    // 160k elements: several leaves larger than one binding, the total larger than one buffer.
    let layout = Layout::from_lengths(&[40_001, 3, 16_385, 60_001, 5, 33_333, 9_999]).unwrap();
    let lengths = layout.lengths();
    let config = Config::new(method).ema(0.2).lambda(0.8);
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let inits = EmaInits { main: EmaInit::Values(init.clone()), aux: EmaInit::Values(init.clone()) };
    let mut state = BloopState::new(kernels, &gpu.queue, &layout, config, inits).unwrap();
    let ema = |on: bool| if on { widen(&init) } else { vec![] };
    let mut reference = ReferenceState::new(config, ema(method.has_main_ema()), ema(method.has_aux_ema()));
    let leaves = Leaves::new(&mut rng, gpu, &layout, arrangement);
    let bindings = leaves.bind(&state);
    // Windows of one buffer share a dispatch as its slots, but as many as one has.
    let least = 10usize.div_ceil(bindings_slots(kernels));
    assert!(bindings.dispatch_count() >= least, "160k elements in 16k-element windows: {bindings:?}");
    for _ in 0..2 {
        let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 0.5));
        common::run_step_on(gpu, &mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&widen(&g_main), &widen(&g_aux));
        let out = widen(&bloop::read_leaves(&gpu.device, &gpu.queue, leaves.output_leaves()).unwrap());
        let error = bloop::reference::relative_error(&out, &expected);
        assert!(error <= 1e-5, "{method:?} {arrangement:?}: {error}");
        if method.has_main_ema() {
            let ema = widen(&state.read_ema(bloop::EmaRole::Main).unwrap());
            assert!(bloop::reference::relative_error(&ema, &reference.main_ema) <= 1e-5);
        }
    }
}

/// The most slots `kernels` bind per role (at most 16 by default).
fn bindings_slots(kernels: &Arc<Kernels>) -> usize {
    if kernels.options().max_slots == 1 {
        1
    } else {
        16
    }
}

#[test]
fn steps_split_over_binding_windows_match_the_reference() {
    // Buffers large enough for the tests' flat buffers of all roles; windows of one buffer as
    // slots of one dispatch, and as one dispatch each.
    let gpu = small_device(2 << 20);
    assert_eq!(gpu.device.limits().max_storage_buffer_binding_size, BINDING_LIMIT);
    let fallback = bloop::KernelOptions { max_slots: 1, binding_arrays: Some(false), ..Default::default() };
    let kernels = Kernels::new(&gpu.device);
    for kernels in [kernels.clone(), kernels.with_other_options(fallback)] {
        for (i, method) in [Method::Bloop, Method::PcGrad, Method::Mixed].into_iter().enumerate() {
            run(&gpu, &kernels, method, Arrangement::Pool { in_place: false }, 10 + i as u64);
            run(&gpu, &kernels, method, Arrangement::FlatSeparateOutput, 20 + i as u64);
        }
        run(&gpu, &kernels, Method::Bloop, Arrangement::Pool { in_place: true }, 30);
    }
}

#[test]
fn pools_spread_over_several_buffers_without_splitting_leaves() {
    const BUFFER_LIMIT: u64 = 256 << 10;
    let gpu = small_device(BUFFER_LIMIT);
    let layout = Layout::from_lengths(&[40_001, 3, 16_385, 60_001, 5, 33_333, 9_999]).unwrap();
    let pool = bloop::GradientPool::new(&gpu.device, &layout, false).unwrap();
    assert!(pool.buffers().len() > 3, "3 roles of 640 KB in 256 KiB buffers");
    for i in 0..layout.len() {
        let leaf = pool.main(i).unwrap();
        assert!(leaf.byte_range().end <= leaf.buffer.size());
        assert_eq!(leaf.offset % bloop::layout::PLACEMENT_ALIGNMENT, 0);
    }
    let too_big = Layout::from_lengths(&[BUFFER_LIMIT / 4 + 1]).unwrap();
    let error = bloop::GradientPool::new(&gpu.device, &too_big, false).unwrap_err();
    assert!(matches!(error, bloop::Error::ExceedsLimit { limit_name: "max_buffer_size", .. }), "{error}");
}

#[test]
fn many_tiny_leaves_share_tiles_and_split_their_tables_over_dispatches() {
    // 3000 leaves of 1 to 5 elements: 3000 segments, 8 words each, are more than one 64 KiB
    // table can hold, so even one flat buffer needs several dispatches.
    let gpu = small_device(2 << 20);
    let kernels = Kernels::new(&gpu.device);
    let lengths: Vec<u64> = (0..3000).map(|i| 1 + i % 5).collect();
    let layout = Layout::from_lengths(&lengths).unwrap();
    let mut rng = SplitMix64::new(8);
    let config = Config::new(Method::PcGrad).ema(0.3).lambda(2.0).rescale(true);
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let inits = EmaInits { main: EmaInit::Values(init.clone()), aux: EmaInit::Values(init.clone()) };
    let mut state = BloopState::new(&kernels, &gpu.queue, &layout, config, inits).unwrap();
    let mut reference = ReferenceState::new(config, widen(&init), widen(&init));
    let leaves = Leaves::new(&mut rng, &gpu, &layout, Arrangement::FlatSeparateOutput);
    let bindings = leaves.bind(&state);
    assert!(bindings.dispatch_count() >= 2, "{bindings:?}");
    let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
    common::run_step_on(&gpu, &mut state, &leaves, &bindings, &g_main, &g_aux);
    let expected = reference.step(&widen(&g_main), &widen(&g_aux));
    let out = widen(&bloop::read_leaves(&gpu.device, &gpu.queue, leaves.output_leaves()).unwrap());
    assert!(bloop::reference::relative_error(&out, &expected) <= 1e-5);
}

//! Initial values, EMA transfers and shared pipelines.

mod common;

use bloop::rng::{normal_leaves, SplitMix64};
use bloop::{BloopState, Config, EmaInit, EmaInits, EmaRole, GradientPool, Kernels, Layout, Method};
use common::gpu;

fn layout() -> Layout {
    Layout::new([("w", 1000u64), ("b", 13)]).unwrap()
}

fn new_state(kernels: &std::sync::Arc<Kernels>, method: Method, init: EmaInits) -> BloopState {
    BloopState::new(kernels, &gpu().queue, &layout(), Config::new(method), init).unwrap()
}

#[test]
fn normal_init_is_reproducible_from_the_seed() {
    let kernels = common::kernels();
    let a = new_state(&kernels, Method::PcGrad, EmaInits::both(EmaInit::Normal { seed: 42 }));
    let b = new_state(&kernels, Method::PcGrad, EmaInits::both(EmaInit::Normal { seed: 42 }));
    let c = new_state(&kernels, Method::PcGrad, EmaInits::both(EmaInit::Normal { seed: 43 }));
    let main = a.read_ema(EmaRole::Main).unwrap();
    assert_eq!(main, b.read_ema(EmaRole::Main).unwrap());
    assert_eq!(main, normal_leaves(42, &[1000, 13]));
    assert_ne!(main, c.read_ema(EmaRole::Main).unwrap());
    assert_ne!(main, a.read_ema(EmaRole::Aux).unwrap(), "the two averages get their own streams");
    // Standard normal: mean near 0 and variance near 1 over 1013 values.
    let values: Vec<f64> = main.iter().flatten().map(|&x| x as f64).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / values.len() as f64;
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean}, var {var}");
}

#[test]
fn split_mix_matches_its_published_sequence() {
    // First outputs of SplitMix64 seeded with 0 (Vigna's reference implementation).
    let mut rng = SplitMix64::new(0);
    assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
}

#[test]
fn zeros_and_values_inits_land_as_given() {
    let kernels = common::kernels();
    let zeros = new_state(&kernels, Method::Bloop, EmaInits::zeros());
    assert!(zeros.read_ema(EmaRole::Main).unwrap().iter().flatten().all(|&x| x == 0.0));
    let values = vec![(0..1000).map(|i| i as f32).collect(), vec![-1.5; 13]];
    let given = new_state(&kernels, Method::Bloop, EmaInits::both(EmaInit::Values(values.clone())));
    assert_eq!(given.read_ema(EmaRole::Main).unwrap(), values);
}

#[test]
fn ema_can_start_from_gpu_buffers() {
    let kernels = common::kernels();
    let pool = GradientPool::new(&gpu().device, &layout(), false).unwrap();
    let grads = vec![(0..1000).map(|i| (i as f32).sin()).collect::<Vec<f32>>(), vec![2.5; 13]];
    for (leaf, v) in pool.main_leaves().iter().zip(&grads) {
        gpu().queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(v));
    }
    // At creation (the library submits the copy) ...
    let at_creation = new_state(&kernels, Method::Bloop, EmaInits::both(EmaInit::Buffers(pool.main_leaves().to_vec())));
    assert_eq!(at_creation.read_ema(EmaRole::Main).unwrap(), grads);
    // ... or recorded into the caller's encoder, e.g. before the first step.
    let mut state = new_state(&kernels, Method::PcGrad, EmaInits::zeros());
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    state.record_ema_copy(&mut encoder, EmaRole::Aux, pool.main_leaves()).unwrap();
    gpu().queue.submit([encoder.finish()]);
    assert_eq!(state.read_ema(EmaRole::Aux).unwrap(), grads);
    assert!(state.read_ema(EmaRole::Main).unwrap().iter().flatten().all(|&x| x == 0.0));
}

#[test]
fn write_then_read_round_trips() {
    let mut state = new_state(&common::kernels(), Method::Bloop, EmaInits::zeros());
    let values = vec![vec![0.25; 1000], (0..13).map(|i| -(i as f32)).collect()];
    state.write_ema(EmaRole::Main, &values).unwrap();
    assert_eq!(state.read_ema(EmaRole::Main).unwrap(), values);
}

#[test]
fn states_on_one_device_share_compiled_kernels() {
    let kernels = Kernels::new(&gpu().device);
    let a = new_state(&kernels, Method::Bloop, EmaInits::zeros());
    let _b = new_state(&kernels, Method::DynamicBarrier, EmaInits::zeros());
    assert_eq!(kernels.compiled_variants(), 1, "bloop and the dynamic barrier share kernels");
    let pool = GradientPool::new(&gpu().device, &layout(), false).unwrap();
    a.bind_pool(&pool).unwrap();
    assert_eq!(kernels.compiled_variants(), 1);
    let _c = new_state(&kernels, Method::PcGrad, EmaInits::zeros());
    assert_eq!(kernels.compiled_variants(), 2);
    kernels.compile_all().unwrap();
    // Every f32 variant of this device's reduction: 4 kinds x 2 input bindings x 3 settings of
    // the guard and diagnostics, and project_first for the 3 kinds with averages x 2 input
    // bindings x guard off and on; and those with vector loads: bloop, ratio_only and mixing
    // x 2 input bindings x 3 settings, and project_first for the first two x 2 x 2.
    // Hierarchies of k = 1, 2, 3, 4 and 8 aux losses, where the device binds the 6 storage
    // buffers per stage of a pool's (levels as planes): 2 input bindings x guard off and on x
    // 2 orders.
    let limit = gpu().device.limits().max_storage_buffers_per_shader_stage;
    let levels = if limit >= 6 { 5 } else { 0 };
    assert_eq!(kernels.compiled_variants(), 4 * 2 * 3 + 3 * 2 * 2 + 3 * 2 * 3 + 2 * 2 * 2 + levels * 2 * 2 * 2);
}

#[test]
fn kernels_with_other_options_share_compiled_variants() {
    let kernels = Kernels::new(&gpu().device);
    let _a = new_state(&kernels, Method::Bloop, EmaInits::zeros());
    // Another tile length and fewer slots choose the same variant: compiled once for both.
    let options = bloop::KernelOptions { tile_len: Some(1024), max_slots: 4, ..Default::default() };
    let other = kernels.with_other_options(options);
    assert_eq!((other.tile_len(), other.options().max_slots), (1024, 4));
    assert_eq!(kernels.tile_len(), Kernels::new(&gpu().device).tile_len(), "the first set keeps its options");
    let _b = new_state(&other, Method::Bloop, EmaInits::zeros());
    assert_eq!((kernels.compiled_variants(), other.compiled_variants()), (1, 1));
    // A variant that only a third set asks for (scalar loads) is compiled for all three.
    let scalar = other.with_other_options(bloop::KernelOptions { vec4: false, ..Default::default() });
    let _c = new_state(&scalar, Method::Bloop, EmaInits::zeros());
    assert_eq!((kernels.compiled_variants(), scalar.compiled_variants()), (2, 2));
}

#[test]
fn scalars_hold_the_ratio_of_the_last_step() {
    // e = (1, 0), g_aux = (3, 4), ema 0: r = <e, g_aux> / (<e, e> + eps) = 3 / (1 + 1e-7).
    let layout = Layout::from_lengths(&[2]).unwrap();
    let init = EmaInits::both(EmaInit::Values(vec![vec![1.0, 0.0]]));
    let mut state =
        BloopState::new(&common::kernels(), &gpu().queue, &layout, Config::new(Method::Bloop).ema(0.0), init).unwrap();
    let pool = GradientPool::new(&gpu().device, &layout, false).unwrap();
    gpu().queue.write_buffer(
        &pool.aux(0).unwrap().buffer,
        pool.aux(0).unwrap().offset,
        bytemuck::cast_slice(&[3.0f32, 4.0]),
    );
    let bindings = state.bind_pool(&pool).unwrap();
    let mut encoder = gpu().device.create_command_encoder(&Default::default());
    state.record_step(&mut encoder, &bindings).unwrap();
    gpu().queue.submit([encoder.finish()]);
    let d = state.read_diagnostics().unwrap();
    assert_eq!((d.dot_ema_aux, d.ema_sq_norm), (3.0, 1.0));
    assert!((d.ratio - 3.0).abs() < 1e-6, "{d:?}");
    // The guard (on by default) sums the gradients too: g_main = 0, g_aux = (3, 4).
    assert_eq!((d.main_sq_norm, d.aux_sq_norm, d.dot_main_aux, d.non_finite), (0.0, 25.0, 0.0, 0.0));
    assert!(!d.skipped && d.skipped_steps == 0 && d.step == 0);
    // direction = g_main + 0.1 * (g_aux - r e) = (0, 0) + 0.1 * (0, 4)
    let out = &bloop::read_leaves(&gpu().device, &gpu().queue, &[pool.output(0).unwrap().clone()]).unwrap()[0];
    assert!(out[0].abs() < 1e-6 && (out[1] - 0.4).abs() < 1e-6, "{out:?}");
}

#[test]
fn small_leaves_share_tiles() {
    // Leaves of 17 elements cost one loop round each: 16 share a 4096-element tile. Leaves of
    // at most 16 elements (the tile's rounds) are walked one per invocation: 100 fit one tile.
    for (len, tiles) in [(17, 7), (16, 1), (10, 1)] {
        let layout = Layout::from_lengths(&[len; 100]).unwrap();
        let config = Config::new(Method::Bloop);
        let state = BloopState::new(&common::kernels(), &gpu().queue, &layout, config, EmaInits::zeros()).unwrap();
        let pool = GradientPool::new(&gpu().device, &layout, false).unwrap();
        let bindings = state.bind_pool(&pool).unwrap();
        assert_eq!((bindings.dispatch_count(), bindings.tile_count()), (1, tiles), "leaves of {len}");
    }
    // A leaf of 4096 + 1 elements fills one tile and starts another.
    let layout = Layout::from_lengths(&[4097, 3]).unwrap();
    let state =
        BloopState::new(&common::kernels(), &gpu().queue, &layout, Config::new(Method::Bloop), EmaInits::zeros())
            .unwrap();
    let pool = GradientPool::new(&gpu().device, &layout, false).unwrap();
    assert_eq!(state.bind_pool(&pool).unwrap().tile_count(), 2);
}

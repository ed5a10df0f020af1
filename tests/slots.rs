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
    read_leaves, BloopState, Config, DType, ElementTypes, EmaInits, Error, GpuContext, KernelOptions, Kernels, Layout,
    LeafBuffer, Method, Optimizer, Output,
};
use common::{below, gpu, normal_leaves, Arrangement, GuardedBuffer, Leaves};

const BOUND: f64 = 1e-5;

fn kernels_with(max_slots: u32) -> Arc<Kernels> {
    Kernels::with_options(&gpu().device, KernelOptions { max_slots, ..Default::default() })
}

/// `count` leaves of 1 to 6000 elements (some past one tile), never a multiple of 4.
fn layout(rng: &mut SplitMix64, count: usize) -> Layout {
    let lengths: Vec<u64> = (0..count)
        .map(|_| {
            let n = if below(rng, 3) == 0 { 1 + below(rng, 16) } else { 1 + below(rng, 6000) };
            n - (n % 4 == 0) as u64
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
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
    let layout = layout(&mut rng, count);
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
    for step in 0..3 {
        let g_main = normal_leaves(&mut rng, &lengths, 1.0);
        let g_aux = normal_leaves(&mut rng, &lengths, 0.7);
        common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&widen(&g_main), &widen(&g_aux));
        let errors = common::compare_step(&state, &reference, &expected, leaves.output_leaves());
        assert!(errors.iter().all(|&e| e <= BOUND), "step {step}: {errors:?}; {context}");
    }
    assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
    (count, bindings.dispatch_count())
}

fn configs() -> [Config; 6] {
    [
        Config::new(Method::Bloop).ema(0.3).lambda(0.8),
        Config::new(Method::Bloop).ema(0.3).lambda(0.8).ratio_only(true).guard(false),
        Config::new(Method::DynamicBarrier).ema(0.6).lambda(2.0).order(bloop::Order::ProjectFirst),
        Config::new(Method::PcGrad).ema(0.2).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5).guard(false),
    ]
}

#[test]
fn one_buffer_per_leaf_takes_a_dispatch_per_slots_of_leaves() {
    // Every leaf's gradients and output in buffers of their own: each leaf takes a slot.
    let limit = gpu().device.limits().max_storage_buffers_per_shader_stage;
    eprintln!("max_storage_buffers_per_shader_stage: {limit}");
    for (i, config) in configs().into_iter().enumerate() {
        for slots in [16, 4, 1] {
            let kernels = kernels_with(slots);
            let (leaves, dispatches) = check(&kernels, 100 + i as u64, config, Arrangement::PerLeaf, i % 2 == 1);
            // Each slot binds 3 buffers (gradients, output); PCGrad 5 more, the others 4.
            let fixed = if config.method == Method::PcGrad { 5 } else { 4 };
            let most = slots.min((limit - fixed) / 3);
            assert_eq!(dispatches, leaves.div_ceil(most as usize), "{config:?}, {slots} slots");
        }
    }
}

#[test]
fn more_buffers_than_slots_shared_buffers_and_pages() {
    // Pages shared by every role (inputs bound writable), leaves interleaved with live data, in
    // more pages than one dispatch's slots.
    for (i, config) in configs().into_iter().enumerate() {
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

//! Vector loads and stores: segments whose offsets are all multiples of 4 elements move whole
//! vec4s, the rest one element at a time. Against the f64 reference and against the scalar
//! kernels on the same inputs, with poisoned outputs and guards around every user range, for
//! leaves at aligned and unaligned offsets with lengths that are and are not multiples of 4,
//! in a pool, flat buffers, pages (several slots) and a buffer per leaf; the methods without a
//! vec4 form, and bindings whose ranges are not whole vec4s, fall back to scalar kernels.

mod common;

use std::sync::Arc;

use bloop::reference::{relative_error, widen};
use bloop::rng::SplitMix64;
use bloop::{Config, KernelOptions, Kernels, Layout, LeafBuffer, Method, Output};
use common::{below, gpu, normal_leaves, Arrangement, GuardedBuffer, Leaves};

const BOUND: f64 = 1e-5;

fn kernels_with(vec4: bool, max_slots: u32) -> Arc<Kernels> {
    common::kernels_with_options(KernelOptions { vec4, max_slots, ..Default::default() })
}

/// `count` leaves of 1 to 9000 elements (some past two tiles), about half of them multiples of
/// 4 and the rest not.
fn layout(rng: &mut SplitMix64, count: usize) -> Layout {
    let lengths: Vec<u64> = (0..count)
        .map(|_| {
            let n = if below(rng, 4) == 0 { 1 + below(rng, 16) } else { 1 + below(rng, 9000) };
            if below(rng, 2) == 0 {
                n.next_multiple_of(4)
            } else {
                n - (n % 4 == 0) as u64
            }
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
}

/// Three steps of `config` over `arrangement`, once with vector loads allowed and once without,
/// each against the reference, and the two directions against each other. Returns whether the
/// first binding used vector loads.
fn check(seed: u64, config: Config, arrangement: Arrangement, max_slots: u32) -> bool {
    let mut directions = Vec::new();
    let mut used = false;
    for vec4 in [true, false] {
        // The same seed: the same layout, placement and gradients for both kernels.
        let draw = |rng: &mut SplitMix64| {
            let count = 3 + below(rng, 30) as usize;
            layout(rng, count)
        };
        let context = format!("vec4 {vec4}");
        let (bindings, direction) =
            common::check_seeded(&kernels_with(vec4, max_slots), seed, config, arrangement, draw, BOUND, &context);
        if vec4 {
            used = bindings.vector_loads();
        } else {
            assert!(!bindings.vector_loads(), "seed {seed}, {arrangement:?}, {config:?}, {bindings:?}");
        }
        directions.push(direction);
    }
    let apart = relative_error(&directions[0], &directions[1]);
    assert!(apart <= BOUND, "vec4 and scalar kernels {apart} apart; seed {seed}, {arrangement:?}, {config:?}");
    used
}

/// Every method: the first five have a vec4 form (f32, no optimizer), PCGrad has not.
fn configs() -> [(Config, bool); 7] {
    [
        (Config::new(Method::Bloop).ema(0.3).lambda(0.8), true),
        (Config::new(Method::Bloop).ema(0.3).lambda(0.8).ratio_only(true), true),
        (Config::new(Method::Bloop).ema(0.3).lambda(0.8).ratio_only(true).guard(false), true),
        (Config::new(Method::DynamicBarrier).ema(0.6).lambda(2.0).order(bloop::Order::ProjectFirst), true),
        (Config::new(Method::Mixed).lambda(0.5), true),
        (Config::new(Method::Mixed).lambda(0.5).guard(false), true),
        (Config::new(Method::PcGrad).ema(0.2).lambda(0.5), false),
    ]
}

#[test]
fn aligned_and_unaligned_leaves_in_pools_flat_buffers_and_pages() {
    // Pool leaves start at multiples of 4; flat buffers and pages put leaves at any element
    // offset, so one binding mixes vec4 and scalar segments. Every range here has room to
    // round up to whole vec4s, so the vec4-able methods use vector loads.
    for (i, (config, vec4_able)) in configs().into_iter().enumerate() {
        for (j, (arrangement, max_slots)) in [
            (Arrangement::Pool { in_place: false }, 16),
            (Arrangement::Pool { in_place: true }, 16),
            (Arrangement::Flat { in_place: false }, 16),
            (Arrangement::Flat { in_place: true }, 16),
            (Arrangement::FlatSeparateOutput, 16),
            (Arrangement::ManyPages { pages: 6 }, 4),
        ]
        .into_iter()
        .enumerate()
        {
            let used = check(1000 + 10 * i as u64 + j as u64, config, arrangement, max_slots);
            assert_eq!(used, vec4_able, "{config:?}, {arrangement:?}");
        }
    }
}

#[test]
fn a_buffer_per_leaf_at_random_offsets() {
    // Buffers of random sizes: a binding whose last range cannot round up to a whole vec4
    // runs the scalar kernels; either way the results match.
    for (i, (config, _)) in configs().into_iter().enumerate() {
        for seed in 0..2 {
            check(2000 + 10 * i as u64 + seed, config, Arrangement::PerLeaf, 16);
        }
    }
}

#[test]
fn a_range_that_ends_inside_a_vec4_at_the_buffers_end_falls_back() {
    // One leaf of 4097 elements filling its buffers exactly: a vec4 view of them would end 4
    // bytes short of the last element, so the binding takes the scalar kernels.
    let n = 4097;
    let layout = Layout::from_lengths(&[n]).unwrap();
    let config = Config::new(Method::Bloop).ema(0.3).lambda(0.8);
    let mut rng = SplitMix64::new(7);
    let main = normal_leaves(&mut rng, &[n], 1.0);
    let aux = normal_leaves(&mut rng, &[n], 1.0);
    let (mut state, mut reference) = common::state_on(&kernels_with(true, 16), &layout, config, main, aux);
    let mut buffers: Vec<GuardedBuffer> = (0..3).map(|_| GuardedBuffer::new(&gpu().device, &gpu().queue, n)).collect();
    let leaves: Vec<LeafBuffer> = buffers.iter_mut().map(|b| b.leaf(0, n)).collect();
    let gradients =
        bloop::ExternalGradients { main: &leaves[0..1], aux: &leaves[1..2], output: Output::Buffers(&leaves[2..3]) };
    let bindings = state.bind_external(&gradients).unwrap();
    assert!(!bindings.vector_loads());
    let g_main = normal_leaves(&mut rng, &[n], 1.0);
    let g_aux = normal_leaves(&mut rng, &[n], 0.7);
    let wrapped = Leaves {
        main: leaves[0..1].to_vec(),
        aux: leaves[1..2].to_vec(),
        output: Some(leaves[2..3].to_vec()),
        guarded: buffers,
        pool: None,
    };
    common::run_step(&mut state, &wrapped, &bindings, &g_main, &g_aux);
    let expected = reference.step(&widen(&g_main), &widen(&g_aux));
    let errors = common::compare_step(&state, &reference, &expected, wrapped.output_leaves());
    assert!(errors.iter().all(|&e| e <= BOUND), "{errors:?}");
}

//! The GPU against the f64 reference on random layouts, configs and buffer arrangements, over
//! several steps, with outputs poisoned before each step and guards around user leaves.

mod common;

use bloop::rng::SplitMix64;
use bloop::{Layout, Method};
use common::{below, normal_leaves, Arrangement, Leaves};

const BOUND: f64 = 1e-5;

/// 1 to 60 leaves of 1 to 5000 elements, never a multiple of 4 (so never of the workgroup
/// size or of a vector width either).
fn random_layout(rng: &mut SplitMix64) -> Layout {
    let count = 1 + below(rng, 60);
    let lengths: Vec<u64> = (0..count)
        .map(|_| {
            let n = match below(rng, 4) {
                0 => 1 + below(rng, 16),
                _ => 1 + below(rng, 5000),
            };
            if n % 4 == 0 {
                n - 1
            } else {
                n
            }
        })
        .collect();
    Layout::from_lengths(&lengths).unwrap()
}

fn check_trial(seed: u64, method: Method, arrangement: Arrangement) {
    check_trial_on(&common::kernels(), seed, method, arrangement);
}

fn check_trial_on(kernels: &std::sync::Arc<bloop::Kernels>, seed: u64, method: Method, arrangement: Arrangement) {
    let mut rng = SplitMix64::new(seed);
    let layout = random_layout(&mut rng);
    let lengths = layout.lengths();
    let config = common::random_config(&mut rng, method);
    let main = common::random_init(&mut rng, &lengths);
    let aux = common::random_init(&mut rng, &lengths);
    let (mut state, mut reference) = common::state_on(kernels, &layout, config, main, aux);
    let leaves = Leaves::new(&mut rng, common::gpu(), &layout, arrangement);
    let bindings = leaves.bind(&state);
    let context = format!("seed {seed}, {arrangement:?}, {config:?}, lengths {lengths:?}");
    for step in 0..3 {
        let scale = 10f64.powf(rng.next_f64() * 2.0 - 1.0);
        let g_main = normal_leaves(&mut rng, &lengths, scale);
        let aux_scale = scale * (0.1 + rng.next_f64());
        let g_aux = normal_leaves(&mut rng, &lengths, aux_scale);
        common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
        let expected = reference.step(&bloop::reference::widen(&g_main), &bloop::reference::widen(&g_aux));
        let errors = common::compare_step(&state, &reference, &expected, leaves.output_leaves());
        assert!(errors.iter().all(|&e| e <= BOUND), "step {step}: errors {errors:?}; {context}");
    }
    assert_eq!(state.steps(), 3);
    assert_eq!(leaves.corrupted_guards(), 0, "writes outside the leaves; {context}");
}

fn check_method(method: Method, first_seed: u64) {
    let arrangements = [
        Arrangement::Pool { in_place: false },
        Arrangement::Pool { in_place: true },
        Arrangement::Flat { in_place: false },
        Arrangement::Flat { in_place: true },
        Arrangement::FlatSeparateOutput,
        Arrangement::PerLeaf,
        Arrangement::Pages,
    ];
    for (i, arrangement) in arrangements.into_iter().enumerate() {
        for trial in 0..4 {
            check_trial(first_seed + (i * 4 + trial) as u64, method, arrangement);
        }
    }
}

#[test]
fn bloop_matches_reference_on_random_layouts() {
    check_method(Method::Bloop, 1000);
}

#[test]
fn dynamic_barrier_matches_reference_on_random_layouts() {
    check_method(Method::DynamicBarrier, 2000);
}

#[test]
fn pcgrad_matches_reference_on_random_layouts() {
    check_method(Method::PcGrad, 3000);
}

#[test]
fn mixed_matches_reference_on_random_layouts() {
    check_method(Method::Mixed, 4000);
}

#[test]
fn shared_memory_reduction_matches_reference_on_random_layouts() {
    let kernels = common::kernels_with_options(bloop::KernelOptions { subgroups: false, ..Default::default() });
    for (i, method) in [Method::Bloop, Method::DynamicBarrier, Method::PcGrad, Method::Mixed].into_iter().enumerate() {
        for (j, arrangement) in [
            Arrangement::Pool { in_place: false },
            Arrangement::Flat { in_place: true },
            Arrangement::PerLeaf,
            Arrangement::Pages,
        ]
        .into_iter()
        .enumerate()
        {
            check_trial_on(&kernels, 5000 + (i * 4 + j) as u64, method, arrangement);
        }
    }
}

#[test]
fn a_wrong_reference_is_caught() {
    // The comparison must be able to fail: a reference with another lambda disagrees.
    let mut rng = SplitMix64::new(77);
    let layout = Layout::from_lengths(&[1001, 37]).unwrap();
    let lengths = layout.lengths();
    let config = bloop::Config::new(Method::Bloop).lambda(0.5);
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let (mut state, _) = common::state_with(&layout, config, init.clone(), init.clone());
    let (_, mut wrong) = common::state_with(&layout, config.lambda(0.5001), init.clone(), init);
    let leaves = Leaves::new(&mut rng, common::gpu(), &layout, Arrangement::Pool { in_place: false });
    let bindings = leaves.bind(&state);
    let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
    common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
    let expected = wrong.step(&bloop::reference::widen(&g_main), &bloop::reference::widen(&g_aux));
    let errors = common::compare_step(&state, &wrong, &expected, leaves.output_leaves());
    assert!(errors[0] > BOUND, "{errors:?}");
}

#[test]
fn in_place_output_overwrites_the_main_gradient() {
    let mut rng = SplitMix64::new(5);
    let layout = Layout::from_lengths(&[4097, 3, 250]).unwrap();
    let lengths = layout.lengths();
    let config = bloop::Config::new(Method::Bloop).lambda(0.7).ema(0.3);
    let init = normal_leaves(&mut rng, &lengths, 1.0);
    let (mut state, mut reference) = common::state_with(&layout, config, init.clone(), init);
    let leaves = Leaves::new(&mut rng, common::gpu(), &layout, Arrangement::Flat { in_place: true });
    let bindings = leaves.bind(&state);
    assert!(leaves.output.is_none());
    let (g_main, g_aux) = (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
    common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
    let expected = reference.step(&bloop::reference::widen(&g_main), &bloop::reference::widen(&g_aux));
    // The direction is read from where the main gradient was.
    let errors = common::compare_step(&state, &reference, &expected, &leaves.main);
    assert!(errors.iter().all(|&e| e <= BOUND), "{errors:?}");
    assert_eq!(bindings.output_leaves()[0].byte_range(), leaves.main[0].byte_range());
}

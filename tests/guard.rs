//! The non-finite guard: a step with an inf or NaN gradient element writes zeros, leaves every
//! average bit for bit as it was, and counts itself on the GPU; normal steps are unaffected.

mod common;

use bloop::reference::widen;
use bloop::rng::SplitMix64;
use bloop::{Config, EmaRole, Layout, Method};
use common::{normal_leaves, Arrangement, Leaves};

fn ema_bits(state: &bloop::BloopState) -> Vec<Vec<u32>> {
    [EmaRole::Main, EmaRole::Aux]
        .into_iter()
        .filter_map(|r| state.read_ema(r).ok())
        .flatten()
        .map(|leaf| leaf.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn configs() -> Vec<Config> {
    vec![
        Config::new(Method::Bloop).ema(0.3).lambda(0.5),
        Config::new(Method::DynamicBarrier).ema(0.3).lambda(2.0),
        Config::new(Method::Bloop).ema(0.3).lambda(0.5).ratio_only(true),
        Config::new(Method::PcGrad).ema(0.3).lambda(0.5),
        Config::new(Method::Mixed).lambda(0.5),
    ]
}

#[test]
fn skipped_steps_keep_the_averages_bit_for_bit() {
    let layout = Layout::from_lengths(&[5001, 3, 300]).unwrap();
    let lengths = layout.lengths();
    for (i, config) in configs().into_iter().enumerate() {
        for arrangement in [Arrangement::Pool { in_place: false }, Arrangement::Flat { in_place: true }] {
            let mut rng = SplitMix64::new(40 + i as u64);
            let init = normal_leaves(&mut rng, &lengths, 1.0);
            let (mut state, mut reference) = common::state_with(&layout, config, init.clone(), init);
            let leaves = Leaves::new(&mut rng, common::gpu(), &layout, arrangement);
            let bindings = leaves.bind(&state);
            let bad =
                [(0usize, 17usize, f32::NAN, true), (2, 299, f32::INFINITY, false), (1, 0, f32::NEG_INFINITY, true)];
            for step in 0..5 {
                let mut g_main = normal_leaves(&mut rng, &lengths, 1.0);
                let mut g_aux = normal_leaves(&mut rng, &lengths, 1.0);
                let poisoned = step % 2 == 1;
                if poisoned {
                    let (leaf, at, value, main) = bad[step / 2];
                    if main {
                        g_main[leaf][at] = value
                    } else {
                        g_aux[leaf][at] = value
                    }
                }
                let before = ema_bits(&state);
                common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
                let expected = reference.step(&widen(&g_main), &widen(&g_aux));
                let context = format!("{config:?} {arrangement:?} step {step}");
                if poisoned {
                    assert_eq!(ema_bits(&state), before, "averages changed; {context}");
                    let out = bloop::read_leaves(&common::gpu().device, &common::gpu().queue, leaves.output_leaves())
                        .unwrap();
                    assert!(out.iter().flatten().all(|&x| x.to_bits() == 0), "output not zeros; {context}");
                } else {
                    let errors = common::compare_step(&state, &reference, &expected, leaves.output_leaves());
                    assert!(errors.iter().all(|&e| e <= 1e-5), "{errors:?}; {context}");
                }
                let d = state.read_diagnostics().unwrap();
                assert_eq!(d.skipped, poisoned, "{context}");
                assert_eq!(d.skipped_steps as u64, reference.skipped_steps, "{context}");
                assert_eq!(d.non_finite, if poisoned { 1.0 } else { 0.0 }, "{context}");
            }
            assert_eq!(state.skipped_steps().unwrap(), 2);
            assert_eq!(state.steps(), 5);
        }
    }
}

#[test]
fn without_the_guard_non_finite_values_spread() {
    // What the guard prevents: one NaN poisons the average for good, and the output.
    let layout = Layout::from_lengths(&[100]).unwrap();
    let mut rng = SplitMix64::new(3);
    let init = normal_leaves(&mut rng, &[100], 1.0);
    let (mut state, _) = common::state_with(&layout, Config::new(Method::Bloop).guard(false), init.clone(), init);
    let leaves = Leaves::new(&mut rng, common::gpu(), &layout, Arrangement::Pool { in_place: false });
    let bindings = leaves.bind(&state);
    let mut g_main = normal_leaves(&mut rng, &[100], 1.0);
    g_main[0][5] = f32::NAN;
    common::run_step(&mut state, &leaves, &bindings, &g_main, &normal_leaves(&mut rng, &[100], 1.0));
    let out = bloop::read_leaves(&common::gpu().device, &common::gpu().queue, leaves.output_leaves()).unwrap();
    assert!(out[0][5].is_nan() && out[0].iter().filter(|x| !x.is_finite()).count() > 1, "{out:?}");
    assert!(state.read_ema(EmaRole::Main).unwrap()[0][5].is_nan());
    assert_eq!(state.skipped_steps().unwrap(), 0);
}

#[test]
fn overflowing_sums_are_skipped_too() {
    // Finite gradients whose squares overflow f32 would give a NaN ratio: skipped as well.
    let layout = Layout::from_lengths(&[64]).unwrap();
    let mut rng = SplitMix64::new(4);
    let init = normal_leaves(&mut rng, &[64], 1.0);
    let (mut state, _) = common::state_with(&layout, Config::new(Method::Bloop).ema(1.0), init.clone(), init);
    let leaves = Leaves::new(&mut rng, common::gpu(), &layout, Arrangement::Pool { in_place: false });
    let bindings = leaves.bind(&state);
    let before = ema_bits(&state);
    common::run_step(&mut state, &leaves, &bindings, &[vec![3e30; 64]], &[vec![1.0; 64]]);
    assert!(state.read_diagnostics().unwrap().skipped);
    assert_eq!(ema_bits(&state), before);
}

//! Several states and pools on one device at once, from several threads, sharing one `Kernels`.

mod common;

use bloop::reference::widen;
use bloop::rng::SplitMix64;
use bloop::{Config, Layout, Method};
use common::{normal_leaves, Arrangement, Leaves};

#[test]
fn states_on_one_device_from_several_threads() {
    let kernels = bloop::Kernels::new(&common::gpu().device);
    let methods = [Method::Bloop, Method::PcGrad, Method::DynamicBarrier, Method::Mixed, Method::Bloop, Method::PcGrad];
    std::thread::scope(|scope| {
        for (t, method) in methods.into_iter().enumerate() {
            let kernels = kernels.clone();
            scope.spawn(move || {
                let mut rng = SplitMix64::new(100 + t as u64);
                let lengths: Vec<u64> = (0..1 + t as u64 * 3).map(|i| 1 + (i * 977 + t as u64 * 31) % 3000).collect();
                let layout = Layout::from_lengths(&lengths).unwrap();
                let config = Config::new(method).ema(0.25).lambda(0.5 + t as f64);
                let init = normal_leaves(&mut rng, &lengths, 1.0);
                let (mut state, mut reference) = common::state_on(&kernels, &layout, config, init.clone(), init);
                let arrangement =
                    if t % 2 == 0 { Arrangement::Pool { in_place: false } } else { Arrangement::FlatSeparateOutput };
                let leaves = Leaves::new(&mut rng, common::gpu(), &layout, arrangement);
                let bindings = leaves.bind(&state);
                for step in 0..4 {
                    let (g_main, g_aux) =
                        (normal_leaves(&mut rng, &lengths, 1.0), normal_leaves(&mut rng, &lengths, 1.0));
                    common::run_step(&mut state, &leaves, &bindings, &g_main, &g_aux);
                    let expected = reference.step(&widen(&g_main), &widen(&g_aux));
                    let errors = common::compare_step(&state, &reference, &expected, leaves.output_leaves());
                    assert!(errors.iter().all(|&e| e <= 1e-5), "thread {t} step {step}: {errors:?}");
                }
            });
        }
    });
    // Three kernel sets (bloop and the dynamic barrier share one; pcgrad; mixed), each compiled
    // once, whichever thread came first.
    assert_eq!(kernels.compiled_variants(), 3);
}

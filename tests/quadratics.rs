//! The quadratic experiment: a short GPU run (trainer kernels + the library) against the same
//! run on the f64 host reference, step for step.

mod common;
#[path = "../examples/quadratics/experiment.rs"]
#[allow(dead_code)] // the example uses the rest
mod experiment;
#[path = "../examples/quadratics/trainer.rs"]
mod trainer;

use experiment::{batch_order, run_cpu, runs_at, Problem, Run};
use trainer::{run_gpu, run_gpu_with, SgdStep};

/// GPU losses are f32 sums over f32 parameters; the reference is f64 throughout.
const TOLERANCE: f64 = 1e-3;

fn runs() -> Vec<Run> {
    [0.01, 1.0, 46.4].into_iter().flat_map(runs_at).collect()
}

#[test]
fn gpu_training_matches_the_f64_reference() {
    let epochs = 6;
    let problem = Problem::generate(0);
    let order = batch_order(1, epochs);
    let runs = runs();
    let mut progress_calls = 0;
    let gpu = run_gpu(common::gpu(), &common::kernels(), &problem, &order, &runs, epochs, |_, h| {
        progress_calls += 1;
        assert_eq!(h.len(), runs.len());
    })
    .unwrap();
    for (run, g) in runs.iter().zip(&gpu) {
        let c = run_cpu(&problem, &order, run, epochs);
        assert_eq!(g.main.len(), epochs + 1);
        for e in 0..=epochs {
            let main = (g.main[e] - c.main[e]).abs() / c.main[e];
            let aux = (g.aux[e] - c.aux[e]).abs() / c.aux[e];
            assert!(
                main <= TOLERANCE && aux <= TOLERANCE,
                "{} lambda {}: epoch {e}: gpu {g:?} cpu {c:?}",
                run.name,
                run.config.lambda
            );
        }
        // Training moves: where the aux loss does not dominate, the main loss falls.
        if run.config.lambda <= 1.0 {
            assert!(g.main[epochs] < 0.5 * g.main[0], "{} lambda {}: {g:?}", run.name, run.config.lambda);
        }
    }
    let _ = progress_calls; // may be 0 on a fast adapter: progress never waits
}

#[test]
fn a_fixed_seed_gives_the_same_numbers() {
    let epochs = 3;
    let problem = Problem::generate(7);
    let order = batch_order(8, epochs);
    let runs = runs_at(0.5);
    let first = run_gpu(common::gpu(), &common::kernels(), &problem, &order, &runs, epochs, |_, _| {}).unwrap();
    let second = run_gpu(common::gpu(), &common::kernels(), &problem, &order, &runs, epochs, |_, _| {}).unwrap();
    assert_eq!(first, second);
    // And the comparison above can fail: another seed gives other data.
    let other = Problem::generate(8);
    assert_ne!(run_cpu(&problem, &order, &runs[3], epochs), run_cpu(&other, &order, &runs[3], epochs));
}

#[test]
fn fused_sgd_matches_the_separate_kernel() {
    // The default run takes SGD through the library's fused optimizer; the trainer's own SGD
    // kernel after a written direction must give the same losses within rounding.
    let epochs = 4;
    let problem = Problem::generate(3);
    let order = batch_order(4, epochs);
    let runs = runs();
    let run = |step| run_gpu_with(common::gpu(), &common::kernels(), &problem, &order, &runs, epochs, step, |_, _| {});
    let (fused, separate) = (run(SgdStep::Fused).unwrap(), run(SgdStep::Separate).unwrap());
    let mut worst = 0f64;
    for ((f, s), r) in fused.iter().zip(&separate).zip(&runs) {
        for e in 0..=epochs {
            for (a, b) in [(f.main[e], s.main[e]), (f.aux[e], s.aux[e])] {
                let relative = (a - b).abs() / b.abs();
                worst = worst.max(relative);
                assert!(
                    relative <= 1e-5,
                    "{} lambda {}: epoch {e}: fused {f:?} separate {s:?}",
                    r.name,
                    r.config.lambda
                );
            }
        }
    }
    eprintln!("fused against separate SGD: worst relative loss difference {worst:.2e}");
}

#[test]
fn standings_rank_bloop_against_the_other_fronts() {
    use experiment::{bloop_standings, fronts, Standing};
    // mixed's front runs from (aux 1, main 100) to (aux 10, main 10): at aux 5 it is at main 20
    // (log-log), so bloop at main 15 ranks first there and at main 25 does not.
    let mixed = [("mixed", (1.0, 100.0)), ("mixed", (10.0, 10.0))];
    let standing = |point| bloop_standings(&fronts(mixed.into_iter().chain([("bloop", point)])))[0].clone();
    assert_eq!(standing((5.0, 15.0)), Standing::First);
    assert_eq!(standing((5.0, 25.0)), Standing::BeatenBy(vec!["mixed"]));
    // Below the front's lowest aux loss and lower on main: first; past its end: not comparable.
    assert_eq!(standing((0.5, 50.0)), Standing::First);
    assert_eq!(standing((20.0, 5.0)), Standing::NotComparable);
    assert!(bloop_standings(&fronts(mixed)).is_empty());
}

#[test]
fn training_stops_when_after_submit_says_so() {
    let epochs = 30;
    let problem = Problem::generate(0);
    let order = batch_order(1, epochs);
    let runs = runs_at(1.0);
    let plan = trainer::Plan {
        problem: &problem,
        order: &order,
        runs: &runs,
        epochs,
        sgd_step: SgdStep::Fused,
        epochs_per_submit: 10,
    };
    let mut submits = 0;
    let stop_after_two = || {
        submits += 1;
        std::future::ready(Ok(submits < 2))
    };
    let trained =
        pollster::block_on(trainer::train(common::gpu(), &common::kernels(), plan, |_, _| {}, stop_after_two));
    assert!(trained.unwrap().is_none());
    assert_eq!(submits, 2);
}

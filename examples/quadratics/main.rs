//! The paper's quadratic experiment, end to end on the GPU: `cargo run --release --example
//! quadratics -- --help` lists the options.
//!
//! Trains every method over the lambda grid `logspace(-3, 3, 10)` and once more at lambda = 1
//! for the loss curves; gradients come from a WGSL kernel straight into the library's pool, the
//! library combines them and takes the SGD step in the same pass (the fused optimizer;
//! `--separate-sgd` writes the direction and takes the step in a WGSL kernel of the trainer's,
//! for comparison). The same runs go through the f64
//! host reference for comparison. Prints the table, writes `pareto.csv`, `curves.csv`,
//! `pareto.svg`, `curves.svg` and `summary.json` (each grid run's final and best losses and
//! how BLOOP's points stand, also what the web demo's browser test compares against) into DIR
//! (default `target/quadratics`).

mod experiment;
mod plots;
mod summary;
mod trainer;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use experiment::{
    batch_order, bloop_standings, fronts, lambda_grid, run_cpu, runs_at, History, Problem, Run, Standing,
};
use summary::{RunResult, Summary};
use trainer::{run_gpu_with, SgdStep};

/// The paper's quadratic experiment on the GPU: every method over the lambda grid, with the f64
/// host reference beside it.
#[derive(clap::Parser)]
struct Args {
    /// Epochs of 4 SGD steps each (mini-batches of 64 rows).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: u64,
    /// The paper's 1000 epochs (overrides --epochs).
    #[arg(long)]
    paper: bool,
    /// Seed of the problem and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the CSV files and the plots.
    #[arg(long, default_value = "target/quadratics")]
    out: std::path::PathBuf,
    /// Take the SGD step with the trainer's own kernel after the library writes the direction,
    /// instead of fusing it into the library's direction pass (for comparison: same results).
    #[arg(long)]
    separate_sgd: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A bar with an ETA on a terminal; hidden (and silent) when stderr is not one.
fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(what.to_string());
    bar.set_style(
        ProgressStyle::with_template("  {msg}: {bar:30} {pos}/{len} epochs, {elapsed} elapsed, ETA {eta}")
            .expect("a valid template"),
    );
    bar
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let epochs = if args.paper { 1000 } else { args.epochs as usize };
    let gpu = bloop::GpuContext::from_env()?;
    let kernels = bloop::Kernels::new(&gpu.device);
    let problem = Problem::generate(args.seed);
    let order = batch_order(args.seed + 1, epochs);
    let grid = lambda_grid();
    let mut runs: Vec<(f64, Run)> = grid.iter().flat_map(|&l| runs_at(l).map(|r| (l, r))).collect();
    runs.extend(runs_at(1.0).map(|r| (1.0, r)));
    println!("adapter: {}", gpu.describe());
    println!(
        "{} runs ({} methods x {} lambdas + the lambda = 1 curves), {} epochs of {} SGD steps, seed {}",
        runs.len(),
        4,
        grid.len(),
        epochs,
        experiment::STEPS_PER_EPOCH,
        args.seed
    );

    let started = Instant::now();
    let configs: Vec<Run> = runs.iter().map(|(_, r)| *r).collect();
    let sgd_step = if args.separate_sgd { SgdStep::Separate } else { SgdStep::Fused };
    println!("SGD step: {sgd_step:?}");
    let bar = progress_bar(epochs as u64, "GPU");
    let gpu_histories = run_gpu_with(&gpu, &kernels, &problem, &order, &configs, epochs, sgd_step, |epoch, _| {
        bar.set_position(epoch as u64)
    })?;
    bar.finish_and_clear();
    let gpu_seconds = started.elapsed().as_secs_f64();
    println!("  GPU: {epochs} epochs in {gpu_seconds:.1} s");
    let started = Instant::now();
    let cpu_histories: Vec<History> = configs.iter().map(|r| run_cpu(&problem, &order, r, epochs)).collect();
    println!("  CPU f64 reference: {:.1} s", started.elapsed().as_secs_f64());

    std::fs::create_dir_all(&args.out)?;
    let mut csv = String::from("method,lambda,gpu_best_main,gpu_aux_at_best,cpu_best_main,cpu_aux_at_best\n");
    println!("\nbest main loss over the run, and the aux loss at that point (GPU; f64 host reference)");
    println!(
        "{:<16} {:>9} {:>12} {:>12} {:>12} {:>12} {:>9}",
        "method", "lambda", "main", "aux", "ref main", "ref aux", "rel diff"
    );
    let mut results = Vec::new();
    for (k, ((lambda, run), (g, c))) in runs.iter().zip(gpu_histories.iter().zip(&cpu_histories)).enumerate() {
        if k >= 4 * grid.len() {
            break;
        }
        let ((gm, ga), (cm, ca)) = (g.best(), c.best());
        let diff = ((gm - cm) / cm).abs().max(((ga - ca) / ca).abs());
        println!(
            "{:<16} {:>9.3e} {:>12.4e} {:>12.4e} {:>12.4e} {:>12.4e} {:>9.1e}",
            run.name, lambda, gm, ga, cm, ca, diff
        );
        csv += &format!("{},{lambda},{gm},{ga},{cm},{ca}\n", run.name);
        results.push(RunResult::new(run, g));
    }
    std::fs::write(args.out.join("pareto.csv"), csv)?;
    let pareto = fronts(results.iter().map(|r| (r.method, (r.best_aux, r.best_main))));

    // Where bloop's points lie against the other methods' curves at the same aux loss.
    let (_, bloop) = pareto.iter().find(|(n, _)| *n == "bloop").ok_or("the grid has no bloop run")?;
    for (standing, (lambda, point)) in bloop_standings(&pareto).iter().zip(grid.iter().zip(bloop)) {
        match standing {
            Standing::First => {}
            Standing::NotComparable => {
                println!("  lambda {lambda:.3e}: no other method reaches aux loss {:.3e}", point.0)
            }
            Standing::BeatenBy(beaten) => println!(
                "  lambda {lambda:.3e}: bloop (aux {:.3e}, main {:.3e}) is not below {beaten:?}",
                point.0, point.1
            ),
        }
    }
    let summary = Summary::new(gpu.adapter.get_info().name, args.seed, epochs, results);
    println!(
        "bloop has the lowest main loss at comparable aux loss on {} of {} comparable lambda points (of {})",
        summary.bloop_first,
        summary.bloop_comparable,
        grid.len()
    );
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;

    let curves: Vec<(&str, &History, &History)> = runs[4 * grid.len()..]
        .iter()
        .zip(&gpu_histories[4 * grid.len()..])
        .zip(&cpu_histories[4 * grid.len()..])
        .map(|(((_, r), g), c)| (r.name, g, c))
        .collect();
    let mut csv = String::from("method,epoch,gpu_main,gpu_aux,cpu_main,cpu_aux\n");
    for (name, g, c) in &curves {
        for e in 0..g.main.len() {
            csv += &format!("{name},{e},{},{},{},{}\n", g.main[e], g.aux[e], c.main[e], c.aux[e]);
        }
    }
    std::fs::write(args.out.join("curves.csv"), csv)?;
    let title = format!("{} epochs, {}", epochs, gpu.adapter.get_info().name);
    plots::pareto(&pareto, &title, &args.out.join("pareto.svg"))?;
    plots::curves(&curves.iter().map(|(n, g, _)| (*n, *g)).collect::<Vec<_>>(), &title, &args.out.join("curves.svg"))?;
    println!("wrote pareto.csv, curves.csv, pareto.svg, curves.svg and summary.json to {}", args.out.display());
    Ok(())
}

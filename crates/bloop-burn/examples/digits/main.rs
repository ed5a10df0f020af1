//! The paper's smooth-MLP experiment on the UCI handwritten digits, trained with burn on wgpu
//! and combined with BLOOP through the adapter.
//!
//! A ReLU MLP 64 -> 256 -> 128 -> 10 (LeCun-normal truncated init, zero biases) learns the
//! digits with softmax cross-entropy as the main loss; the aux loss is
//! `log prod_l ||W_l||_2^2` over the three weight matrices, with the exact spectral norms at
//! every step as the authors compute them (or `--power-steps N` carried power-iteration steps).
//! Adam (lr 3e-4, batch 256). Every method runs over `logspace(-4, 0, 9)`, BLOOP also at two
//! stronger lambdas; runs are independent and several can run at once on threads sharing the
//! device.

mod data;
mod plots;
mod spectral;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bloop::Kernels;
use bloop_burn::{BurnBloop, Config, EmaInit, EmaInits, Method};
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{activation, Device, Int, Tensor, TensorData};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use data::{Digits, Rng};
use spectral::SpectralNorm;

#[derive(Parser, Debug)]
#[command(about = "BLOOP vs mixing, PCGrad and the dynamic barrier on the UCI digits (burn + wgpu)")]
struct Args {
    /// Epochs per run (5 Adam steps each: 1437 training rows, batch 256, incomplete batches dropped).
    #[arg(long, default_value_t = 250)]
    epochs: usize,
    /// Methods to run, comma separated (bloop, mixed, pcgrad, dynamic_barrier).
    #[arg(long, value_delimiter = ',', default_value = "bloop,mixed,pcgrad,dynamic_barrier")]
    methods: Vec<String>,
    /// Lambdas, comma separated (default logspace(-4, 0, 9)).
    #[arg(long, value_delimiter = ',')]
    lambdas: Option<Vec<f64>>,
    /// BLOOP's lambdas beyond `--lambdas`, comma separated: its aux loss falls more slowly with
    /// lambda than the others', so these stretch its front over their strong-aux points
    /// (default 10^-0.25 and 10^-0.125 with the default lambdas, none with `--lambdas`).
    #[arg(long, value_delimiter = ',')]
    bloop_lambdas: Option<Vec<f64>>,
    /// Spectral norms from this many power-iteration steps per training step, singular vectors
    /// carried between steps, instead of the exact norm (an SVD per weight matrix per step).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    power_steps: Option<u32>,
    /// Skip the runs already in `--out`'s digits-partial.csv (a grid stopped part way, or
    /// spread over several sittings) and append the new ones to it.
    #[arg(long)]
    resume: bool,
    /// Averages start at zero instead of as a copy of the initial parameters.
    #[arg(long)]
    zero_ema: bool,
    /// Runs trained at once (threads sharing the device); 0 picks 1 on a CPU adapter (its
    /// driver already spreads every dispatch over the cores: two at once were 10% slower per
    /// step on lavapipe) and the number of CPUs on a GPU.
    #[arg(long, default_value_t = 0)]
    jobs: usize,
    /// Seeds, comma separated: each seeds the initialisation, the power-iteration vectors and
    /// the batch order of one run per method and lambda; the comparison of the fronts is made
    /// within each seed.
    #[arg(long, alias = "seed", value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Train nothing: read the results of earlier runs from this CSV (as this example writes
    /// it; without a `seed` column every row is seed 0) and print their table and comparison and
    /// draw their plots. `--epochs` then only labels the plots.
    #[arg(long, value_name = "CSV")]
    report: Option<PathBuf>,
    /// Folder with digits.csv.gz and split.json.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/digits"))]
    data: PathBuf,
    /// Where the table, CSV and plots go.
    #[arg(long, default_value = "target/digits")]
    out: PathBuf,
}

const BATCH: usize = 256;
const LR: f64 = 3e-4;
const SIZES: [usize; 4] = [64, 256, 128, 10];

#[derive(Module, Debug)]
struct Mlp {
    w1: Param<Tensor<2>>,
    b1: Param<Tensor<1>>,
    w2: Param<Tensor<2>>,
    b2: Param<Tensor<1>>,
    w3: Param<Tensor<2>>,
    b3: Param<Tensor<1>>,
}

/// flax's `lecun_normal`: a normal truncated to two standard deviations, rescaled so the
/// variance is `1 / fan_in`.
fn lecun_normal(rng: &mut Rng, fan_in: usize, fan_out: usize) -> Vec<f32> {
    let std = (1.0 / fan_in as f64).sqrt() / 0.879_625_661_034_239_8;
    (0..fan_in * fan_out).map(|_| (rng.truncated_normal(2.0) * std) as f32).collect()
}

impl Mlp {
    fn new(seed: u64, device: &Device) -> Mlp {
        let mut rng = Rng::new(seed);
        let mut weight = |i: usize| {
            let (a, b) = (SIZES[i], SIZES[i + 1]);
            Param::from_tensor(Tensor::from_data(TensorData::new(lecun_normal(&mut rng, a, b), [a, b]), device))
        };
        let (w1, w2, w3) = (weight(0), weight(1), weight(2));
        let bias = |n: usize| Param::from_tensor(Tensor::zeros([n], device));
        Mlp { w1, b1: bias(SIZES[1]), w2, b2: bias(SIZES[2]), w3, b3: bias(SIZES[3]) }
    }

    fn weights(&self) -> [Tensor<2>; 3] {
        [self.w1.val(), self.w2.val(), self.w3.val()]
    }

    fn logits(&self, x: Tensor<2>) -> Tensor<2> {
        let x = activation::relu(x.matmul(self.w1.val()) + self.b1.val().unsqueeze());
        let x = activation::relu(x.matmul(self.w2.val()) + self.b2.val().unsqueeze());
        x.matmul(self.w3.val()) + self.b3.val().unsqueeze()
    }

    /// Mean softmax cross-entropy against one-hot labels.
    fn cross_entropy(&self, x: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
        let log_p = activation::log_softmax(self.logits(x), 1);
        (log_p * one_hot).sum_dim(1).mean().neg()
    }
}

/// The weight matrices' shapes, `[rows, cols]` as `x.matmul(W)` uses them.
fn weight_shapes() -> [(usize, usize); 3] {
    [(SIZES[0], SIZES[1]), (SIZES[1], SIZES[2]), (SIZES[2], SIZES[3])]
}

/// `log prod ||W_l||_2^2` of the final weights, exact (an SVD per matrix on the host in f64),
/// whichever way training computed it.
fn exact_aux(model: &Mlp) -> f64 {
    model
        .weights()
        .into_iter()
        .zip(weight_shapes())
        .map(|(w, (rows, cols))| spectral::top_singular(&spectral::host_matrix(w), rows, cols).sigma.powi(2).ln())
        .sum()
}

/// How a run computed its spectral norms, as the CSV's `spectral_norm` column names it.
fn norm_name(power_steps: Option<u32>) -> String {
    match power_steps {
        None => "exact".to_string(),
        Some(n) => format!("power-{n}"),
    }
}

/// One run of the grid: seed, method and lambda.
type Run = (u64, Method, f64);

#[derive(Clone, Debug)]
struct RunResult {
    seed: u64,
    method: Method,
    lambda: f64,
    /// `exact`, or `power-N` for N carried power-iteration steps per training step.
    spectral_norm: String,
    train_ce: f64,
    test_ce: f64,
    test_acc: f64,
    aux: f64,
    seconds: f64,
}

struct Shared {
    digits: Digits,
    kernels: Arc<Kernels>,
    queue: wgpu::Queue,
    device: Device,
    epochs: usize,
    zero_ema: bool,
    power_steps: Option<u32>,
}

fn method_config(method: Method, lambda: f64) -> Config {
    let ema = if method == Method::Bloop { 0.01 } else { 1.0 };
    Config::new(method).ema(ema).lambda(lambda)
}

fn train(shared: &Shared, (seed, method, lambda): Run, bar: &ProgressBar) -> Result<RunResult, String> {
    let started = Instant::now();
    let device = shared.device.clone().autodiff();
    let mut model = Mlp::new(seed, &device);
    let power_steps = shared.power_steps.map(|n| n as usize);
    let mut spectral = SpectralNorm::new(power_steps, &weight_shapes(), seed + 1, &device);
    let init = if shared.zero_ema { EmaInit::Zeros } else { EmaInit::Values(bloop_burn::param_values(&model)) };
    let config = method_config(method, lambda);
    let mut bloop = BurnBloop::new(&model, config, &shared.kernels, &shared.queue, EmaInits::both(init))
        .map_err(|e| e.to_string())?;
    let mut optimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let d = &shared.digits;
    let train_x = d.features(&d.train, &device);
    let train_y = d.one_hot(&d.train, &device);
    let mut order_rng = Rng::new(seed + 2);
    let n = d.train.len();
    for _epoch in 0..shared.epochs {
        let perm = order_rng.permutation(n);
        for b in 0..n / BATCH {
            let idx: Vec<i32> = perm[b * BATCH..(b + 1) * BATCH].iter().map(|&i| i as i32).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [BATCH]), &device);
            let x = train_x.clone().select(0, idx.clone());
            let y = train_y.clone().select(0, idx);
            let main = GradientsParams::from_grads(model.cross_entropy(x, y).backward(), &model);
            let aux = GradientsParams::from_grads(spectral.aux_loss(model.weights().to_vec()).backward(), &model);
            let grads = bloop.combine(main, aux).map_err(|e| e.to_string())?;
            model = optimizer.step(LR, model, grads);
        }
        bar.inc(1);
    }
    let scalar = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap()[0] as f64;
    let train_ce = scalar(model.cross_entropy(train_x, train_y));
    let test_x = d.features(&d.test, &device);
    let test_ce = scalar(model.cross_entropy(test_x.clone(), d.one_hot(&d.test, &device)));
    let predicted = model.logits(test_x).argmax(1).into_data().try_into_vec_as::<i64>().unwrap();
    let correct = predicted.iter().zip(&d.test).filter(|(&p, &i)| p as u8 == d.labels[i]).count();
    Ok(RunResult {
        seed,
        method,
        lambda,
        spectral_norm: norm_name(shared.power_steps),
        train_ce,
        test_ce,
        test_acc: correct as f64 / d.test.len() as f64,
        aux: exact_aux(&model),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// For a point `(aux, ce)` of another method: BLOOP's CE at the same aux loss, linearly
/// interpolated in (aux, log ce) between BLOOP's neighbouring points; `None` outside its range.
fn bloop_at(front: &[(f64, f64)], aux: f64) -> Option<f64> {
    let mut points = front.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points.windows(2).find(|w| w[0].0 <= aux && aux <= w[1].0).map(|w| {
        let t = if w[1].0 > w[0].0 { (aux - w[0].0) / (w[1].0 - w[0].0) } else { 0.0 };
        (w[0].1.ln() + t * (w[1].1.ln() - w[0].1.ln())).exp()
    })
}

/// The lower-left envelope (Pareto front) of a set of (aux, ce) points.
fn front(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if out.last().is_none_or(|q| p.1 < q.1) {
            out.push(p);
        }
    }
    out
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

const CSV_HEADER: &str = "seed,method,lambda,spectral_norm,train_ce,test_ce,test_acc,aux_loss,seconds";

fn csv_line(r: &RunResult) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{:.1}",
        r.seed,
        r.method.name(),
        r.lambda,
        r.spectral_norm,
        r.train_ce,
        r.test_ce,
        r.test_acc,
        r.aux,
        r.seconds
    )
}

/// Results as `csv_line` writes them; columns are found by name, so the files of the earlier
/// formats read too: without `seed` every row is seed 0, and without `spectral_norm` every row
/// is `power-1` (those runs took one carried power-iteration step per training step).
fn read_results(path: &std::path::Path) -> Result<Vec<RunResult>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or_else(|| format!("{}: empty", path.display()))?.1.split(',').collect();
    let column = |name: &str| header.iter().position(|h| h.trim() == name);
    let required = |name: &str| column(name).ok_or_else(|| format!("{}: no `{name}` column", path.display()));
    let (method, lambda, train_ce, test_ce, test_acc, aux) = (
        required("method")?,
        required("lambda")?,
        required("train_ce")?,
        required("test_ce")?,
        required("test_acc")?,
        required("aux_loss")?,
    );
    let (seed, seconds, spectral_norm) = (column("seed"), column("seconds"), column("spectral_norm"));
    lines
        .map(|(row, line)| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let at = |i: usize| {
                fields.get(i).copied().ok_or_else(|| format!("{} line {}: too few fields", path.display(), row + 1))
            };
            let number = |i: usize| -> Result<f64, String> {
                at(i)?.parse::<f64>().map_err(|e| format!("{} line {}: {e}", path.display(), row + 1))
            };
            Ok(RunResult {
                seed: match seed {
                    Some(i) => at(i)?.parse().map_err(|e| format!("{} line {}: seed: {e}", path.display(), row + 1))?,
                    None => 0,
                },
                method: Method::from_name(at(method)?).ok_or_else(|| {
                    format!("{} line {}: unknown method `{}`", path.display(), row + 1, fields[method])
                })?,
                lambda: number(lambda)?,
                spectral_norm: match spectral_norm {
                    Some(i) => at(i)?.to_string(),
                    None => norm_name(Some(1)),
                },
                train_ce: number(train_ce)?,
                test_ce: number(test_ce)?,
                test_acc: number(test_acc)?,
                aux: number(aux)?,
                seconds: seconds.map(number).transpose()?.unwrap_or(f64::NAN),
            })
        })
        .collect()
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| Method::from_name(m).ok_or_else(|| format!("unknown method `{m}`")))
        .collect::<Result<_, _>>()?;
    let lambdas = args.lambdas.clone().unwrap_or_else(|| (0..9).map(|i| 10f64.powf(-4.0 + 0.5 * i as f64)).collect());
    let bloop_lambdas = match (&args.bloop_lambdas, &args.lambdas) {
        (Some(extra), _) => extra.clone(),
        (None, None) => vec![10f64.powf(-0.25), 10f64.powf(-0.125)],
        (None, Some(_)) => Vec::new(),
    };
    if let Some(bad) = lambdas.iter().chain(&bloop_lambdas).find(|l| !(l.is_finite() && **l >= 0.0)) {
        return Err(format!("lambda {bad} is not a finite value >= 0").into());
    }
    // Training writes its partial results here as it goes; the report writes the rest.
    std::fs::create_dir_all(&args.out)?;
    let (results, heading) = match &args.report {
        Some(path) => (read_results(path)?, format!("results read from {}", path.display())),
        None => {
            // Seed by seed, so a grid stopped part way leaves whole seeds behind.
            let mut runs: Vec<Run> = Vec::new();
            for &s in &args.seeds {
                for &m in &methods {
                    runs.extend(lambdas.iter().map(|&l| (s, m, l)));
                    if m == Method::Bloop {
                        runs.extend(bloop_lambdas.iter().filter(|l| !lambdas.contains(l)).map(|&l| (s, m, l)));
                    }
                }
            }
            train_grid(&args, &runs)?
        }
    };
    report(&results, &heading, args.epochs, &args.out)
}

/// Trains every run (`--jobs` at once on threads sharing burn's device), appending each result
/// to `digits-partial.csv` in `--out` (which `run` has created), and returns the results with a
/// line saying how long the grid took on which adapter.
fn train_grid(args: &Args, all_runs: &[Run]) -> Result<(Vec<RunResult>, String), Box<dyn std::error::Error>> {
    let digits = Digits::load(&args.data)?;
    let partial_path = args.out.join("digits-partial.csv");
    let norm = norm_name(args.power_steps);
    // With --resume, the runs of this grid that an earlier sitting finished are read back, not
    // trained again.
    let earlier: Vec<RunResult> = if args.resume && partial_path.exists() {
        read_results(&partial_path)?
            .into_iter()
            .filter(|r| r.spectral_norm == norm && all_runs.contains(&(r.seed, r.method, r.lambda)))
            .collect()
    } else {
        Vec::new()
    };
    let runs: Vec<Run> = all_runs
        .iter()
        .filter(|&&(s, m, l)| !earlier.iter().any(|r| (r.seed, r.method, r.lambda) == (s, m, l)))
        .copied()
        .collect();
    let runs = &runs[..];
    // burn's own wgpu device, shared with the adapter (cubecl needs every feature the adapter
    // offers, which burn's setup requests).
    let (device, setup) = Device::wgpu_options().init_with_setup()?;
    let info = setup.adapter.get_info();
    let adapter_name = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
    let jobs = match (args.jobs, info.device_type) {
        (0, wgpu::DeviceType::Cpu) => 1,
        (0, _) => std::thread::available_parallelism().map_or(2, |n| n.get()),
        (jobs, _) => jobs,
    };
    let distinct = |f: fn(&Run) -> String| runs.iter().map(f).collect::<std::collections::BTreeSet<_>>().len();
    println!("adapter: {}", adapter_name);
    println!(
        "{} runs to train ({} seeds, {} methods, {} lambdas; {} read back from {}), {} epochs of {} Adam steps, {} at once, averages from {}, spectral norms {}",
        runs.len(),
        distinct(|r| r.0.to_string()),
        distinct(|r| r.1.name().to_string()),
        distinct(|r| r.2.to_string()),
        earlier.len(),
        partial_path.display(),
        args.epochs,
        digits.train.len() / BATCH,
        jobs,
        if args.zero_ema { "zeros" } else { "the initial parameters" },
        match args.power_steps {
            None => "exact (an SVD per weight matrix per step)".to_string(),
            Some(n) => format!("from {n} carried power-iteration step(s) per training step"),
        }
    );
    let shared = Shared {
        digits,
        kernels: Kernels::new(&setup.device),
        queue: setup.queue.clone(),
        device,
        epochs: args.epochs,
        zero_ema: args.zero_ema,
        power_steps: args.power_steps,
    };
    // Each finished run is appended here at once, so a long grid leaves its results behind
    // even if it is stopped.
    let partial = if args.resume && partial_path.exists() {
        std::fs::OpenOptions::new().append(true).open(&partial_path)?
    } else {
        use std::io::Write;
        let mut file = std::fs::File::create(&partial_path)?;
        writeln!(file, "{CSV_HEADER}")?;
        file
    };
    let partial = Mutex::new(partial);
    let bar = ProgressBar::new((runs.len() * args.epochs) as u64);
    bar.set_style(ProgressStyle::with_template("  {bar:30} {pos}/{len} epochs, {elapsed} elapsed, ETA {eta}")?);
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    // One slot per run, in the order of `runs`, whichever thread finishes it.
    let slots: Mutex<Vec<Option<Result<RunResult, String>>>> = Mutex::new(vec![None; runs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(runs.len()) {
            let (shared, next, slots, bar, partial) = (&shared, &next, &slots, &bar, &partial);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(seed, method, lambda)) = runs.get(i) else { break };
                let result = train(shared, (seed, method, lambda), bar);
                match &result {
                    Ok(r) => {
                        let line = format!(
                            "  seed {seed} {:<16} lambda {:>8.2e}: train CE {:.4}, test CE {:.4}, acc {:.3}, aux {:.3} ({:.0} s; {:.0} s into the grid)",
                            method.name(),
                            lambda,
                            r.train_ce,
                            r.test_ce,
                            r.test_acc,
                            r.aux,
                            r.seconds,
                            started.elapsed().as_secs_f64()
                        );
                        if let Ok(mut file) = partial.lock() {
                            use std::io::Write;
                            let _ = writeln!(file, "{}", csv_line(r));
                        }
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                    Err(e) => eprintln!("  seed {seed} {} lambda {lambda:.2e} failed: {e}", method.name()),
                }
                slots.lock().expect("no thread panicked")[i] = Some(result);
            });
        }
    });
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let trained: Vec<RunResult> = slots
        .into_inner()?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not run".into())))
        .collect::<Result<_, _>>()?;
    // In the grid's order, whichever sitting trained each run.
    let results = all_runs
        .iter()
        .filter_map(|&(s, m, l)| {
            earlier.iter().chain(&trained).find(|r| (r.seed, r.method, r.lambda) == (s, m, l)).cloned()
        })
        .collect();
    let resumed = if earlier.is_empty() { String::new() } else { format!(" (and {} runs read back)", earlier.len()) };
    Ok((results, format!("{seconds:.0} s for {} runs{resumed} on {adapter_name}", trained.len())))
}

/// Prints the table and the comparison of the fronts, writes `digits.csv` and draws the plots.
fn report(
    results: &[RunResult],
    heading: &str,
    epochs: usize,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("\nfinal losses after {epochs} epochs ({heading})");
    println!(
        "{:>4} {:<16} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "seed", "method", "lambda", "train CE", "test CE", "test acc", "aux loss"
    );
    let mut csv = format!("{CSV_HEADER}\n");
    for r in results {
        println!(
            "{:>4} {:<16} {:>9.2e} {:>10.4} {:>10.4} {:>9.3} {:>10.3}",
            r.seed,
            r.method.name(),
            r.lambda,
            r.train_ce,
            r.test_ce,
            r.test_acc,
            r.aux
        );
        csv += &csv_line(r);
        csv.push('\n');
    }
    std::fs::write(out.join("digits.csv"), csv)?;

    let norms: std::collections::BTreeSet<&str> = results.iter().map(|r| r.spectral_norm.as_str()).collect();
    if norms.len() > 1 {
        return Err(format!(
            "the results mix spectral norms ({norms:?}): their fronts are not comparable; report them apart"
        )
        .into());
    }
    let seeds: Vec<u64> =
        results.iter().map(|r| r.seed).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if seeds.len() > 1 {
        print!("\n{}", SeedSummary::new(results).render());
    }
    let mut methods: Vec<Method> = Vec::new();
    for r in results {
        if !methods.contains(&r.method) {
            methods.push(r.method);
        }
    }
    for (what, pick, file) in [
        ("train CE", (|r: &RunResult| r.train_ce) as fn(&RunResult) -> f64, "pareto-train.svg"),
        ("test CE", |r: &RunResult| r.test_ce, "pareto-test.svg"),
    ] {
        let curve = |m: Method, s: u64| -> Vec<(f64, f64)> {
            results.iter().filter(|r| r.method == m && r.seed == s).map(|r| (r.aux, pick(r))).collect()
        };
        let mut curves: Vec<plots::Curve> = Vec::new();
        for (i, &m) in methods.iter().enumerate() {
            for (k, &s) in seeds.iter().enumerate() {
                curves.push(plots::Curve { color: i, label: (k == 0).then(|| m.name()), points: curve(m, s) });
            }
        }
        let seeds_text = seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let seed_word = if seeds.len() == 1 { "seed" } else { "seeds" };
        let caption = format!("UCI digits, {epochs} epochs, {seed_word} {seeds_text}: aux loss vs {what}");
        plots::pareto(&curves, &caption, what, &out.join(file))?;
        if methods.contains(&Method::Bloop) {
            let comparison = Comparison::new(results, pick);
            print!("\n{what}: {}", comparison.render(&seeds));
            if seeds.len() > 1 {
                let means = Comparison::new(&SeedSummary::new(results).means(), pick);
                print!("\n{what}, over seeds: {}", means.render(&[MEAN_SEED]));
            }
        }
    }
    println!("\nwrote {}/digits.csv, pareto-train.svg, pareto-test.svg", out.display());
    Ok(())
}

/// Stands for "the mean over seeds" where a seed is expected.
const MEAN_SEED: u64 = u64::MAX;

fn seed_label(seed: u64) -> String {
    if seed == MEAN_SEED {
        "mean".to_string()
    } else {
        format!("seed {seed}")
    }
}

/// Each method and lambda over the seeds that ran it: the mean and the spread (sample standard
/// deviation) of every reported loss.
struct SeedSummary {
    /// (method, lambda, the runs' results)
    groups: Vec<(Method, f64, Vec<RunResult>)>,
}

impl SeedSummary {
    fn new(results: &[RunResult]) -> SeedSummary {
        let mut groups: Vec<(Method, f64, Vec<RunResult>)> = Vec::new();
        for r in results {
            match groups.iter_mut().find(|g| g.0 == r.method && g.1 == r.lambda) {
                Some(g) => g.2.push(r.clone()),
                None => groups.push((r.method, r.lambda, vec![r.clone()])),
            }
        }
        SeedSummary { groups }
    }

    /// Mean and sample standard deviation (0 for one run).
    fn mean_sd(runs: &[RunResult], pick: fn(&RunResult) -> f64) -> (f64, f64) {
        let n = runs.len() as f64;
        let mean = runs.iter().map(pick).sum::<f64>() / n;
        let var =
            if runs.len() > 1 { runs.iter().map(|r| (pick(r) - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        (mean, var.sqrt())
    }

    /// One result per method and lambda holding the means over its seeds, as seed `MEAN_SEED`.
    fn means(&self) -> Vec<RunResult> {
        self.groups
            .iter()
            .map(|(m, l, runs)| {
                let mean = |pick: fn(&RunResult) -> f64| Self::mean_sd(runs, pick).0;
                RunResult {
                    seed: MEAN_SEED,
                    method: *m,
                    lambda: *l,
                    spectral_norm: runs[0].spectral_norm.clone(),
                    train_ce: mean(|r| r.train_ce),
                    test_ce: mean(|r| r.test_ce),
                    test_acc: mean(|r| r.test_acc),
                    aux: mean(|r| r.aux),
                    seconds: mean(|r| r.seconds),
                }
            })
            .collect()
    }

    fn render(&self) -> String {
        let mut text = String::from("mean +- standard deviation over seeds\n");
        text += &format!(
            "  {:<16} {:>9} {:>5} {:>17} {:>17} {:>15} {:>13}\n",
            "method", "lambda", "seeds", "train CE", "test CE", "test acc", "aux loss"
        );
        for (m, l, runs) in &self.groups {
            let cell = |pick: fn(&RunResult) -> f64, digits: usize| {
                let (mean, sd) = Self::mean_sd(runs, pick);
                format!("{mean:.digits$} +- {sd:.digits$}")
            };
            text += &format!(
                "  {:<16} {:>9.2e} {:>5} {:>17} {:>17} {:>15} {:>13}\n",
                m.name(),
                l,
                runs.len(),
                cell(|r| r.train_ce, 5),
                cell(|r| r.test_ce, 5),
                cell(|r| r.test_acc, 4),
                cell(|r| r.aux, 3)
            );
        }
        text
    }
}

/// Every other method's point set against BLOOP's front of the same seed, at that point's aux
/// loss: the paper's claim is that BLOOP's front is at least as low everywhere.
struct Comparison {
    /// (method, lambda, seed) -> Some(BLOOP's CE / the point's CE), or None outside BLOOP's
    /// aux range.
    cells: Vec<(Method, f64, u64, Option<f64>)>,
}

impl Comparison {
    fn new(results: &[RunResult], pick: fn(&RunResult) -> f64) -> Comparison {
        // BLOOP's front of each seed, built once.
        let mut fronts: std::collections::BTreeMap<u64, Vec<(f64, f64)>> = std::collections::BTreeMap::new();
        for b in results.iter().filter(|b| b.method == Method::Bloop) {
            fronts.entry(b.seed).or_default().push((b.aux, pick(b)));
        }
        for points in fronts.values_mut() {
            *points = front(points);
        }
        let cells = results
            .iter()
            .filter(|r| r.method != Method::Bloop)
            .map(|r| {
                let ratio = fronts.get(&r.seed).and_then(|f| bloop_at(f, r.aux)).map(|b| b / pick(r));
                (r.method, r.lambda, r.seed, ratio)
            })
            .collect();
        Comparison { cells }
    }

    /// A row per method and lambda, a column per seed: BLOOP's front over the point, in percent
    /// (negative: BLOOP lower); `out` outside BLOOP's aux range, `-` not run. Then a count per
    /// method.
    fn render(&self, seeds: &[u64]) -> String {
        let mut text = String::from("BLOOP's front at the aux loss of every other method's point, relative to it\n");
        text += &format!("  {:<16} {:>9}", "method", "lambda");
        for &s in seeds {
            text += &format!(" {:>8}", seed_label(s));
        }
        text.push('\n');
        let mut rows: Vec<(Method, f64)> = Vec::new();
        for &(m, l, _, _) in &self.cells {
            if !rows.contains(&(m, l)) {
                rows.push((m, l));
            }
        }
        for &(m, l) in &rows {
            text += &format!("  {:<16} {:>9.2e}", m.name(), l);
            for &s in seeds {
                let cell = match self.cells.iter().find(|c| c.0 == m && c.1 == l && c.2 == s) {
                    None => "-".to_string(),
                    Some((.., None)) => "out".to_string(),
                    Some((.., Some(ratio))) => format!("{:+.1}%", (ratio - 1.0) * 100.0),
                };
                text += &format!(" {cell:>8}");
            }
            text.push('\n');
        }
        let mut done: Vec<Method> = Vec::new();
        for &(m, ..) in &self.cells {
            if done.contains(&m) {
                continue;
            }
            done.push(m);
            let mine = || self.cells.iter().filter(|c| c.0 == m);
            let lower = mine().filter(|c| c.3.is_some_and(|r| r <= 1.0)).count();
            let higher = mine().filter(|c| c.3.is_some_and(|r| r > 1.0)).count();
            let outside = mine().filter(|c| c.3.is_none()).count();
            text += &format!(
                "  vs {:<16} BLOOP lower or equal at {lower}, higher at {higher}, outside BLOOP's aux range {outside}\n",
                m.name()
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(seed: u64, method: Method, lambda: f64, aux: f64, train_ce: f64) -> RunResult {
        let spectral_norm = norm_name(None);
        RunResult {
            seed,
            method,
            lambda,
            spectral_norm,
            train_ce,
            test_ce: 2.0 * train_ce,
            test_acc: 0.9,
            aux,
            seconds: 1.0,
        }
    }

    #[test]
    fn the_summary_gives_mean_and_spread_over_seeds_and_its_means_compare_like_a_seed() {
        let results = vec![
            result(0, Method::Bloop, 0.1, 1.0, 0.1),
            result(0, Method::Bloop, 0.01, 3.0, 0.001),
            result(0, Method::Mixed, 0.1, 2.0, 0.02),
            result(1, Method::Bloop, 0.1, 3.0, 0.1),
            result(1, Method::Bloop, 0.01, 5.0, 0.001),
            result(1, Method::Mixed, 0.1, 4.0, 0.04),
        ];
        let summary = SeedSummary::new(&results);
        let mixed = &summary.groups.iter().find(|g| g.0 == Method::Mixed).unwrap().2;
        let (mean, sd) = SeedSummary::mean_sd(mixed, |r| r.aux);
        assert_eq!(mean, 3.0);
        assert!((sd - 2f64.sqrt()).abs() < 1e-12, "{sd}");
        let text = summary.render();
        assert!(text.contains("0.03000 +- 0.01414") && text.contains("3.000 +- 1.414"), "{text}");
        // The means: BLOOP (2.0, 0.1) and (4.0, 0.001); mixing (3.0, 0.03); BLOOP's front at
        // aux 3 is 0.01, a third of mixing's.
        let means = Comparison::new(&summary.means(), |r| r.train_ce);
        assert_eq!(means.cells.len(), 1);
        assert!((means.cells[0].3.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!(means.render(&[MEAN_SEED]).contains("mean"));
    }

    #[test]
    fn the_front_keeps_only_points_no_other_point_beats_in_both_losses() {
        let points = [(3.0, 0.01), (1.0, 0.5), (2.0, 0.6), (4.0, 0.02), (2.5, 0.1)];
        assert_eq!(front(&points), vec![(1.0, 0.5), (2.5, 0.1), (3.0, 0.01)]);
    }

    #[test]
    fn bloop_at_interpolates_log_ce_linearly_in_aux_and_is_none_outside() {
        let front = [(3.0, 0.001), (1.0, 0.1)];
        let at_two = bloop_at(&front, 2.0).unwrap();
        assert!((at_two - 0.01).abs() < 1e-12, "{at_two}");
        assert!((bloop_at(&front, 1.0).unwrap() - 0.1).abs() < 1e-15);
        assert_eq!(bloop_at(&front, 0.99), None);
        assert_eq!(bloop_at(&front, 3.01), None);
    }

    #[test]
    fn the_comparison_is_made_within_each_seed_and_counts_lower_higher_and_outside() {
        let results = vec![
            result(0, Method::Bloop, 0.1, 1.0, 0.1),
            result(0, Method::Bloop, 0.01, 3.0, 0.001),
            result(0, Method::Mixed, 0.1, 2.0, 0.02), // BLOOP's front there: 0.01, half of it
            result(0, Method::Mixed, 0.01, 4.0, 0.001), // beyond BLOOP's aux range
            // Seed 1: BLOOP's front is ten times higher, so the same mixing point beats it.
            result(1, Method::Bloop, 0.1, 1.0, 1.0),
            result(1, Method::Bloop, 0.01, 3.0, 0.01),
            result(1, Method::Mixed, 0.1, 2.0, 0.02),
        ];
        let comparison = Comparison::new(&results, |r| r.train_ce);
        let ratio = |seed: u64, lambda: f64| {
            comparison.cells.iter().find(|c| c.0 == Method::Mixed && c.1 == lambda && c.2 == seed).unwrap().3
        };
        assert!((ratio(0, 0.1).unwrap() - 0.5).abs() < 1e-12);
        assert!((ratio(1, 0.1).unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(ratio(0, 0.01), None);
        let text = comparison.render(&[0, 1]);
        assert!(text.contains("-50.0%") && text.contains("+400.0%"), "{text}");
        // Seed 1 has no mixing run at lambda 0.01: "-", not "out".
        let row = text.lines().find(|l| l.contains("mixed") && l.contains("1.00e-2")).unwrap();
        assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["mixed", "1.00e-2", "out", "-"]);
        assert!(
            text.contains("vs mixed            BLOOP lower or equal at 1, higher at 1, outside BLOOP's aux range 1"),
            "{text}"
        );
    }

    #[test]
    fn results_read_back_as_written_and_old_files_without_seed_are_seed_zero() {
        let dir = std::env::temp_dir().join(format!("bloop-digits-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = vec![result(3, Method::PcGrad, 0.25, 2.5, 0.125), result(4, Method::Bloop, 1e-4, 5.0, 0.0018)];
        let path = dir.join("new.csv");
        let text: String = written.iter().map(|r| csv_line(r) + "\n").collect();
        std::fs::write(&path, format!("{CSV_HEADER}\n{text}")).unwrap();
        let read = read_results(&path).unwrap();
        assert_eq!(read.len(), 2);
        for (a, b) in read.iter().zip(&written) {
            assert_eq!(
                (a.seed, a.method, a.lambda, &a.spectral_norm, a.train_ce, a.test_ce, a.aux),
                (b.seed, b.method, b.lambda, &b.spectral_norm, b.train_ce, b.test_ce, b.aux)
            );
        }

        let old = dir.join("old.csv");
        std::fs::write(
            &old,
            "method,lambda,train_ce,test_ce,test_acc,aux_loss,seconds\nmixed,0.1,0.05,0.09,0.98,2.7,96.5\n",
        )
        .unwrap();
        let read = read_results(&old).unwrap();
        assert_eq!((read[0].seed, read[0].method, read[0].aux), (0, Method::Mixed, 2.7));
        assert_eq!(read[0].spectral_norm, "power-1", "the old files come from one carried power step");

        let bad = dir.join("bad.csv");
        std::fs::write(&bad, "method,lambda,train_ce,test_ce,test_acc,aux_loss\nsgd,0.1,0.05,0.09,0.98,2.7\n").unwrap();
        assert!(read_results(&bad).unwrap_err().contains("line 2: unknown method `sgd`"));
        std::fs::write(&bad, "method,lambda,train_ce,test_ce,test_acc\nmixed,0.1,0.05,0.09,0.98\n").unwrap();
        assert!(read_results(&bad).unwrap_err().contains("no `aux_loss` column"));
        std::fs::write(&bad, "method,lambda,train_ce,test_ce,test_acc,aux_loss\nmixed,0.1,0.05,x,0.98,2.7\n").unwrap();
        assert!(read_results(&bad).unwrap_err().contains("line 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

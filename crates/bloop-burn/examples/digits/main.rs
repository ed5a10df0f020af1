//! The paper's smooth-MLP experiment on the UCI handwritten digits, trained with burn on wgpu
//! and combined with BLOOP through the adapter.
//!
//! A ReLU MLP 64 -> 256 -> 128 -> 10 (LeCun-normal truncated init, zero biases) learns the
//! digits with softmax cross-entropy as the main loss; the aux loss is
//! `log prod_l ||W_l||_2^2` over the three weight matrices, with spectral norms from power
//! iteration (singular vectors carried between steps, gradient through `sigma = u^T W v`).
//! Adam (lr 3e-4, batch 256). Every method runs over `logspace(-4, 0, 9)`; runs are independent
//! and several run at once on threads sharing the device.

mod data;
mod plots;

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

/// Power iteration with carried singular vectors: one step per training step, then
/// `sigma = u^T W v` with `u`, `v` held constant, so the gradient is `u v^T / sigma` per term.
struct Spectral {
    u: Vec<Tensor<2>>, // [1, in]
    v: Vec<Tensor<2>>, // [out, 1]
}

fn normalize(t: Tensor<2>) -> Tensor<2> {
    let norm = t.clone().powi_scalar(2).sum().sqrt().unsqueeze::<2>();
    t / norm
}

impl Spectral {
    fn new(seed: u64, device: &Device) -> Spectral {
        let mut rng = Rng::new(seed);
        let mut unit = |n: usize, shape: [usize; 2]| {
            let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            normalize(Tensor::from_data(TensorData::new(x, shape), device))
        };
        let u = (0..3).map(|i| unit(SIZES[i], [1, SIZES[i]])).collect();
        let v = (0..3).map(|i| unit(SIZES[i + 1], [SIZES[i + 1], 1])).collect();
        Spectral { u, v }
    }

    /// `sum_l log sigma_l^2`, differentiable in the weights. One power-iteration step per
    /// call: `v = W^T u / |W^T u|` from the carried `u`, then `s = W v` and `u' = s / |s|`.
    /// `sigma = u'^T W v = |W v|` with `u'`, `v` held constant, so `sigma^2` is computed as
    /// `|W v|^2` (same value and same gradient `2 u' v^T / sigma` per `log sigma^2`, two
    /// kernels fewer per layer on the GPU).
    fn aux_loss(&mut self, model: &Mlp) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for (l, w) in model.weights().into_iter().enumerate() {
            let v = normalize(self.u[l].clone().matmul(w.clone().detach()).transpose()); // [out, 1]
            let s = w.matmul(v.clone()); // [in, 1], tracked
            self.u[l] = normalize(s.clone().detach().transpose());
            self.v[l] = v;
            let term = s.powi_scalar(2).sum().log();
            total = Some(match total {
                None => term,
                Some(t) => t + term,
            });
        }
        total.expect("three layers")
    }
}

/// `log prod ||W_l||_2^2` of the final weights, by 200 power iterations on the host in f64.
fn exact_aux(model: &Mlp) -> f64 {
    let mut total = 0.0;
    for (l, w) in model.weights().into_iter().enumerate() {
        let (rows, cols) = (SIZES[l], SIZES[l + 1]);
        let w: Vec<f64> = w.into_data().try_into_vec_as::<f32>().unwrap().iter().map(|&x| x as f64).collect();
        let mut v = vec![1.0 / (cols as f64).sqrt(); cols];
        let mut sigma = 0.0;
        for _ in 0..200 {
            let u: Vec<f64> = (0..rows).map(|i| (0..cols).map(|j| w[i * cols + j] * v[j]).sum()).collect();
            let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nv: Vec<f64> = (0..cols).map(|j| (0..rows).map(|i| w[i * cols + j] * u[i] / un).sum()).collect();
            sigma = nv.iter().map(|x| x * x).sum::<f64>().sqrt();
            v = nv.iter().map(|x| x / sigma).collect();
        }
        total += (sigma * sigma).ln();
    }
    total
}

/// One run of the grid: seed, method and lambda.
type Run = (u64, Method, f64);

#[derive(Clone, Debug)]
struct RunResult {
    seed: u64,
    method: Method,
    lambda: f64,
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
}

fn method_config(method: Method, lambda: f64) -> Config {
    let ema = if method == Method::Bloop { 0.01 } else { 1.0 };
    Config::new(method).ema(ema).lambda(lambda)
}

fn train(shared: &Shared, (seed, method, lambda): Run, bar: &ProgressBar) -> Result<RunResult, String> {
    let started = Instant::now();
    let device = shared.device.clone().autodiff();
    let mut model = Mlp::new(seed, &device);
    let mut spectral = Spectral::new(seed + 1, &device);
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
            let aux = GradientsParams::from_grads(spectral.aux_loss(&model).backward(), &model);
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

const CSV_HEADER: &str = "seed,method,lambda,train_ce,test_ce,test_acc,aux_loss,seconds";

fn csv_line(r: &RunResult) -> String {
    format!(
        "{},{},{},{},{},{},{},{:.1}",
        r.seed,
        r.method.name(),
        r.lambda,
        r.train_ce,
        r.test_ce,
        r.test_acc,
        r.aux,
        r.seconds
    )
}

/// Results as `csv_line` writes them; columns are found by name, so the files of the earlier
/// format without `seed` (every row seed 0) read too.
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
    let (seed, seconds) = (column("seed"), column("seconds"));
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
    if let Some(bad) = lambdas.iter().find(|l| !(l.is_finite() && **l >= 0.0)) {
        return Err(format!("lambda {bad} is not a finite value >= 0").into());
    }
    // Training writes its partial results here as it goes; the report writes the rest.
    std::fs::create_dir_all(&args.out)?;
    let (results, heading) = match &args.report {
        Some(path) => (read_results(path)?, format!("results read from {}", path.display())),
        None => {
            let mut runs: Vec<Run> = Vec::new();
            for &s in &args.seeds {
                for &m in &methods {
                    runs.extend(lambdas.iter().map(|&l| (s, m, l)));
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
fn train_grid(args: &Args, runs: &[Run]) -> Result<(Vec<RunResult>, String), Box<dyn std::error::Error>> {
    let digits = Digits::load(&args.data)?;
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
        "{} runs ({} seeds x {} methods x {} lambdas), {} epochs of {} Adam steps, {} at once, averages from {}",
        runs.len(),
        distinct(|r| r.0.to_string()),
        distinct(|r| r.1.name().to_string()),
        distinct(|r| r.2.to_string()),
        args.epochs,
        digits.train.len() / BATCH,
        jobs,
        if args.zero_ema { "zeros" } else { "the initial parameters" }
    );
    let shared = Shared {
        digits,
        kernels: Kernels::new(&setup.device),
        queue: setup.queue.clone(),
        device,
        epochs: args.epochs,
        zero_ema: args.zero_ema,
    };
    // Each finished run is appended here at once, so a long grid leaves its results behind
    // even if it is stopped.
    let partial = Mutex::new(std::fs::File::create(args.out.join("digits-partial.csv"))?);
    {
        use std::io::Write;
        writeln!(partial.lock().expect("fresh"), "{CSV_HEADER}")?;
    }
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
    let results: Vec<RunResult> = slots
        .into_inner()?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not run".into())))
        .collect::<Result<_, _>>()?;
    Ok((results, format!("{:.0} s for the grid on {}", seconds, adapter_name)))
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

    let seeds: Vec<u64> =
        results.iter().map(|r| r.seed).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
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
        }
    }
    println!("\nwrote {}/digits.csv, pareto-train.svg, pareto-test.svg", out.display());
    Ok(())
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
        for s in seeds {
            text += &format!(" {:>8}", format!("seed {s}"));
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
        RunResult { seed, method, lambda, train_ce, test_ce: 2.0 * train_ce, test_acc: 0.9, aux, seconds: 1.0 }
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
                (a.seed, a.method, a.lambda, a.train_ce, a.test_ce, a.aux),
                (b.seed, b.method, b.lambda, b.train_ce, b.test_ce, b.aux)
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

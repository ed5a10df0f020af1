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
    /// Seed of the initialisation, the power-iteration vectors and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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

#[derive(Clone, Debug)]
struct RunResult {
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
    seed: u64,
}

fn method_config(method: Method, lambda: f64) -> Config {
    let ema = if method == Method::Bloop { 0.01 } else { 1.0 };
    Config::new(method).ema(ema).lambda(lambda)
}

fn train(shared: &Shared, method: Method, lambda: f64, bar: &ProgressBar) -> Result<RunResult, String> {
    let started = Instant::now();
    let device = shared.device.clone().autodiff();
    let mut model = Mlp::new(shared.seed, &device);
    let mut spectral = Spectral::new(shared.seed + 1, &device);
    let init = if shared.zero_ema { EmaInit::Zeros } else { EmaInit::Values(bloop_burn::param_values(&model)) };
    let config = method_config(method, lambda);
    let mut bloop = BurnBloop::new(&model, config, &shared.kernels, &shared.queue, EmaInits::both(init))
        .map_err(|e| e.to_string())?;
    let mut optimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let d = &shared.digits;
    let train_x = d.features(&d.train, &device);
    let train_y = d.one_hot(&d.train, &device);
    let mut order_rng = Rng::new(shared.seed + 2);
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
    let runs: Vec<(Method, f64)> = methods.iter().flat_map(|&m| lambdas.iter().map(move |&l| (m, l))).collect();
    println!("adapter: {}", adapter_name);
    println!(
        "{} runs ({} methods x {} lambdas), {} epochs of {} Adam steps, {} at once, seed {}, averages from {}",
        runs.len(),
        methods.len(),
        lambdas.len(),
        args.epochs,
        digits.train.len() / BATCH,
        jobs,
        args.seed,
        if args.zero_ema { "zeros" } else { "the initial parameters" }
    );
    let shared = Arc::new(Shared {
        digits,
        kernels: Kernels::new(&setup.device),
        queue: setup.queue.clone(),
        device,
        epochs: args.epochs,
        zero_ema: args.zero_ema,
        seed: args.seed,
    });
    std::fs::create_dir_all(&args.out)?;
    // Each finished run is appended here at once, so a long grid leaves its results behind
    // even if it is stopped.
    let partial = Mutex::new(std::fs::File::create(args.out.join("digits-partial.csv"))?);
    {
        use std::io::Write;
        writeln!(partial.lock().expect("fresh"), "method,lambda,train_ce,test_ce,test_acc,aux_loss,seconds")?;
    }
    let bar = ProgressBar::new((runs.len() * args.epochs) as u64);
    bar.set_style(ProgressStyle::with_template("  {bar:30} {pos}/{len} epochs, {elapsed} elapsed, ETA {eta}")?);
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Option<Result<RunResult, String>>>>> = Arc::new(Mutex::new(vec![None; runs.len()]));
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(runs.len()) {
            let (shared, next, results, runs, bar, partial) =
                (shared.clone(), next.clone(), results.clone(), &runs, &bar, &partial);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(method, lambda)) = runs.get(i) else { break };
                let result = train(&shared, method, lambda, bar);
                match &result {
                    Ok(r) => {
                        let line = format!(
                            "  {:<16} lambda {:>8.2e}: train CE {:.4}, test CE {:.4}, acc {:.3}, aux {:.3} ({:.0} s; {:.0} s into the grid)",
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
                            let _ = writeln!(
                                file,
                                "{},{},{},{},{},{},{:.1}",
                                method.name(),
                                lambda,
                                r.train_ce,
                                r.test_ce,
                                r.test_acc,
                                r.aux,
                                r.seconds
                            );
                        }
                        if bar.is_hidden() {
                            eprintln!("{line}");
                        } else {
                            bar.println(line);
                        }
                    }
                    Err(e) => eprintln!("  {} lambda {lambda:.2e} failed: {e}", method.name()),
                }
                results.lock().expect("no thread panicked")[i] = Some(result);
            });
        }
    });
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let results: Vec<RunResult> = Arc::try_unwrap(results)
        .map_err(|_| "threads still hold the results")?
        .into_inner()?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not run".into())))
        .collect::<Result<_, _>>()?;

    std::fs::create_dir_all(&args.out)?;
    let mut csv = String::from("method,lambda,train_ce,test_ce,test_acc,aux_loss,seconds\n");
    println!("\nfinal losses after {} epochs ({:.0} s for the grid on {})", args.epochs, seconds, adapter_name);
    println!(
        "{:<16} {:>9} {:>10} {:>10} {:>9} {:>10}",
        "method", "lambda", "train CE", "test CE", "test acc", "aux loss"
    );
    for r in &results {
        println!(
            "{:<16} {:>9.2e} {:>10.4} {:>10.4} {:>9.3} {:>10.3}",
            r.method.name(),
            r.lambda,
            r.train_ce,
            r.test_ce,
            r.test_acc,
            r.aux
        );
        csv += &format!(
            "{},{},{},{},{},{},{:.1}\n",
            r.method.name(),
            r.lambda,
            r.train_ce,
            r.test_ce,
            r.test_acc,
            r.aux,
            r.seconds
        );
    }
    std::fs::write(args.out.join("digits.csv"), csv)?;

    let curve = |m: Method, pick: fn(&RunResult) -> f64| -> Vec<(f64, f64)> {
        results.iter().filter(|r| r.method == m).map(|r| (r.aux, pick(r))).collect()
    };
    for (what, pick, file) in [
        ("train CE", (|r: &RunResult| r.train_ce) as fn(&RunResult) -> f64, "pareto-train.svg"),
        ("test CE", |r: &RunResult| r.test_ce, "pareto-test.svg"),
    ] {
        let curves: Vec<(&str, Vec<(f64, f64)>)> = methods.iter().map(|&m| (m.name(), curve(m, pick))).collect();
        plots::pareto(&curves, what, args.epochs, &args.out.join(file))?;
        if methods.contains(&Method::Bloop) {
            let bloop_front = front(&curve(Method::Bloop, pick));
            println!("\n{what}: BLOOP's front at the aux loss of every other method's point");
            for &m in methods.iter().filter(|&&m| m != Method::Bloop) {
                let (mut better, mut worse, mut outside) = (0, 0, 0);
                for (aux, ce) in curve(m, pick) {
                    match bloop_at(&bloop_front, aux) {
                        Some(b) if b <= ce => better += 1,
                        Some(b) => {
                            worse += 1;
                            println!("    {} at aux {aux:.3}: {ce:.4} < BLOOP {b:.4}", m.name());
                        }
                        None => outside += 1,
                    }
                }
                println!(
                    "  vs {:<16} BLOOP lower or equal at {better}, higher at {worse}, outside BLOOP's aux range {outside}",
                    m.name()
                );
            }
        }
    }
    println!("\nwrote {}/digits.csv, pareto-train.svg, pareto-test.svg", args.out.display());
    Ok(())
}

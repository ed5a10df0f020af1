//! The paper's quadratic problem (`examples/quadratics` of the core crate), trained
//! data-parallel over MPI with sharded BLOOP state:
//!
//! ```sh
//! mpirun -n 3 target/release/examples/distributed_quadratics [--epochs N] [--seed S] [--lambda L]
//! ```
//!
//! theta (300 parameters) is cut into 7 leaves of uneven sizes, and the leaves are sharded over
//! the ranks ([`bloop::balanced_shards`]). Every step, on every rank:
//!
//! 1. **compute**: the main-loss gradient of this rank's share of the mini-batch rows (in f64,
//!    on the host), and the aux-loss gradient of its own leaves (the aux loss is separable);
//! 2. **reduce-scatter** (MPI): each rank receives the global-batch main gradient of its leaves;
//! 3. **the sharded BLOOP step** on this rank's GPU, with this rank's averages only: the sums
//!    pass, one 32-byte readback and an all-reduce of 8 numbers, the apply pass;
//! 4. **all-gather** (MPI) of the directions; every rank takes the SGD step on its copy of theta.
//!
//! Rank 0 also trains the same problem in one process with the ordinary step
//! ([`bloop::BloopState::record_step`] over all leaves) and compares the losses after every
//! epoch: the job fails if any differs by more than 1e-5 relative. It prints the mean time per
//! step of each part (the slowest rank's).

#[allow(dead_code)]
#[path = "../../../examples/quadratics/experiment.rs"]
mod experiment;

use std::time::Instant;

use bloop::{
    BloopState, Collective, Config, EmaInits, GpuContext, GradientPool, Kernels, LeafBuffer, Method, ShardedState,
};
use bloop_mpi::MpiCollective;
use experiment::{batch_order, runs_at, Problem, Run, BATCH, COLS, LEARNING_RATE, ROWS, STEPS_PER_EPOCH};
use mpi::collective::SystemOperation;
use mpi::traits::CommunicatorCollectives;

/// theta's leaves: uneven, one tiny.
const LEAVES: [u64; 7] = [61, 17, 45, 52, 3, 70, 52];
const TOLERANCE: f64 = 1e-5;

/// The paper's quadratic problem trained data-parallel over MPI ranks with a sharded BLOOP step,
/// checked against a single-process run of the same problem (run it under `mpirun -n N`).
#[derive(clap::Parser)]
#[command(name = "distributed_quadratics")]
struct Args {
    /// Epochs of SGD steps over the mini-batches.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    epochs: u64,
    /// Seed of the problem and of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the auxiliary loss.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
}

/// Main and aux loss after 0, 1, 2, ... epochs.
type Losses = Vec<(f64, f64)>;

/// `sum over rows of x[row] * (x[row] . theta - y[row]) / BATCH`, for the given rows, over all
/// columns.
fn main_gradient(problem: &Problem, rows: &[u32], theta: &[f32]) -> Vec<f64> {
    let mut g = vec![0f64; COLS];
    for &r in rows {
        let x = &problem.x[r as usize * COLS..][..COLS];
        let residual: f64 =
            x.iter().zip(theta).map(|(&a, &t)| a as f64 * t as f64).sum::<f64>() - problem.y[r as usize] as f64;
        for (g, &a) in g.iter_mut().zip(x) {
            *g += a as f64 * residual / BATCH as f64;
        }
    }
    g
}

fn losses(problem: &Problem, theta: &[f32]) -> (f64, f64) {
    let theta: Vec<f64> = theta.iter().map(|&t| t as f64).collect();
    (problem.main_loss(&theta), problem.aux_loss(&theta))
}

fn upload(queue: &wgpu::Queue, leaves: &[LeafBuffer], values: &[f32]) {
    let mut at = 0;
    for leaf in leaves {
        queue.write_buffer(&leaf.buffer, leaf.offset, bytemuck::cast_slice(&values[at..at + leaf.len as usize]));
        at += leaf.len as usize;
    }
}

fn download(gpu: &GpuContext, leaves: &[LeafBuffer]) -> Vec<f32> {
    bloop::read_leaves(&gpu.device, &gpu.queue, leaves).expect("reading the direction back").concat()
}

/// The single-process run: every row, every leaf, the ordinary step.
fn single_process(
    gpu: &GpuContext,
    kernels: &std::sync::Arc<Kernels>,
    problem: &Problem,
    order: &[u32],
    run: &Run,
    epochs: usize,
) -> Losses {
    let layout = bloop::Layout::from_lengths(&LEAVES).unwrap();
    let mut state = BloopState::new(kernels, &gpu.queue, &layout, run.config, EmaInits::zeros()).unwrap();
    let pool = GradientPool::new(&gpu.device, &layout, false).unwrap();
    let bindings = state.bind_pool(&pool).unwrap();
    let mut theta = vec![0f32; COLS];
    let mut history = vec![losses(problem, &theta)];
    for epoch in 0..epochs {
        for b in 0..STEPS_PER_EPOCH {
            let rows = &order[epoch * ROWS + b * BATCH..][..BATCH];
            let g_main: Vec<f32> = main_gradient(problem, rows, &theta).iter().map(|&g| g as f32).collect();
            let g_aux: Vec<f32> =
                theta.iter().zip(&problem.target).map(|(&t, &s)| (t as f64 - s as f64) as f32).collect();
            upload(&gpu.queue, pool.main_leaves(), &g_main);
            upload(&gpu.queue, pool.aux_leaves(), &g_aux);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            state.record_step(&mut encoder, &bindings).unwrap();
            gpu.queue.submit([encoder.finish()]);
            let direction = download(gpu, pool.output_leaves());
            for (t, d) in theta.iter_mut().zip(direction) {
                *t -= (LEARNING_RATE as f32) * d;
            }
        }
        history.push(losses(problem, &theta));
    }
    history
}

/// Seconds per part, summed over the steps.
#[derive(Default)]
struct Timing {
    compute: f64,
    communication: f64,
    bloop: f64,
    exchange: f64,
    transfers: f64,
}

/// The distributed run on this rank; every rank returns the same losses.
#[allow(clippy::too_many_arguments)]
fn distributed(
    gpu: &GpuContext,
    kernels: &std::sync::Arc<Kernels>,
    comm: &MpiCollective,
    problem: &Problem,
    order: &[u32],
    run: &Run,
    epochs: usize,
    timing: &mut Timing,
) -> Losses {
    let (rank, size) = (comm.rank(), comm.size());
    let world = comm.communicator();
    let layout = bloop::Layout::from_lengths(&LEAVES).unwrap();
    let shards = bloop::balanced_shards(&layout, size);
    // Each rank's leaves are contiguous: its element range of theta.
    let ranges: Vec<std::ops::Range<usize>> = shards
        .iter()
        .map(|s| {
            let start: u64 = LEAVES[..s.first().copied().unwrap_or(0)].iter().sum();
            let len: u64 = s.iter().map(|&i| LEAVES[i]).sum();
            start as usize..(start + len) as usize
        })
        .collect();
    let mine = ranges[rank].clone();
    let block = ranges.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut state =
        ShardedState::new(kernels, &gpu.queue, &layout, &shards[rank], run.config, EmaInits::zeros(), comm).unwrap();
    let pool = state.local_layout().map(|l| GradientPool::new(&gpu.device, l, false).unwrap());
    let bindings = state.bind_pool(pool.as_ref()).unwrap();

    let mut theta = vec![0f32; COLS];
    let mut history = vec![losses(problem, &theta)];
    for epoch in 0..epochs {
        for b in 0..STEPS_PER_EPOCH {
            let started = Instant::now();
            let rows = &order[epoch * ROWS + b * BATCH..][..BATCH];
            let my_rows = &rows[rank * BATCH / size..(rank + 1) * BATCH / size];
            let partial = main_gradient(problem, my_rows, &theta);
            let mut send = vec![0f64; block * size];
            for (q, range) in ranges.iter().enumerate() {
                send[q * block..][..range.len()].copy_from_slice(&partial[range.clone()]);
            }
            let g_aux: Vec<f32> = theta[mine.clone()]
                .iter()
                .zip(&problem.target[mine.clone()])
                .map(|(&t, &s)| (t as f64 - s as f64) as f32)
                .collect();
            let computed = Instant::now();
            let mut received = vec![0f64; block];
            world.reduce_scatter_block_into(&send[..], &mut received[..], SystemOperation::sum());
            let g_main: Vec<f32> = received[..mine.len()].iter().map(|&g| g as f32).collect();
            let scattered = Instant::now();

            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            if let Some(pool) = &pool {
                upload(&gpu.queue, pool.main_leaves(), &g_main);
                upload(&gpu.queue, pool.aux_leaves(), &g_aux);
            }
            state.record_sums(&mut encoder, &bindings).unwrap();
            gpu.queue.submit([encoder.finish()]);
            let before_exchange = Instant::now();
            state.exchange_sums(comm).unwrap();
            let exchanged = Instant::now();
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            state.record_apply(&mut encoder, &bindings).unwrap();
            gpu.queue.submit([encoder.finish()]);
            let stepped = Instant::now();
            let mut direction = pool.as_ref().map(|p| download(gpu, p.output_leaves())).unwrap_or_default();
            direction.resize(block, 0.0);
            let downloaded = Instant::now();
            let mut all = vec![0f32; block * size];
            world.all_gather_into(&direction[..], &mut all[..]);
            for (q, range) in ranges.iter().enumerate() {
                for (t, d) in theta[range.clone()].iter_mut().zip(&all[q * block..]) {
                    *t -= (LEARNING_RATE as f32) * d;
                }
            }
            let gathered = Instant::now();
            let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
            timing.compute += s(started, computed);
            timing.communication += s(computed, scattered) + s(downloaded, gathered);
            timing.bloop += s(scattered, stepped);
            timing.exchange += s(before_exchange, exchanged);
            timing.transfers += s(stepped, downloaded);
        }
        history.push(losses(problem, &theta));
    }
    history
}

fn relative(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }
}

fn main() {
    let (_universe, comm) = bloop_mpi::init().unwrap_or_else(|e| panic!("{e}"));
    let args = <Args as clap::Parser>::parse();
    let epochs = args.epochs as usize;
    let (rank, size) = (comm.rank(), comm.size());
    let gpu = GpuContext::from_env().unwrap_or_else(|e| panic!("rank {rank}: {e}"));
    let kernels = Kernels::new(&gpu.device);
    let problem = Problem::generate(args.seed);
    let order = batch_order(args.seed + 1, epochs);
    let mut runs: Vec<Run> = runs_at(args.lambda).to_vec();
    let ratio_only = Config::new(Method::Bloop).ema(0.01).lambda(args.lambda).ratio_only(true).rescale(true);
    runs.push(Run { name: "bloop ratio_only", config: ratio_only });
    if rank == 0 {
        println!("adapter (rank 0): {}", gpu.describe());
        println!(
            "{size} ranks; theta in {} leaves {LEAVES:?}, shards {:?}; {} epochs of {STEPS_PER_EPOCH} steps, lambda {}",
            LEAVES.len(),
            bloop::balanced_shards(&bloop::Layout::from_lengths(&LEAVES).unwrap(), size),
            epochs,
            args.lambda
        );
        println!(
            "{:<18} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "method", "main", "aux", "1-proc main", "1-proc aux", "max rel"
        );
    }
    let mut worst = 0f64;
    let mut timing = Timing::default();
    for run in &runs {
        let sharded = distributed(&gpu, &kernels, &comm, &problem, &order, run, epochs, &mut timing);
        if rank == 0 {
            let single = single_process(&gpu, &kernels, &problem, &order, run, epochs);
            let diff = sharded
                .iter()
                .zip(&single)
                .map(|(a, b)| relative(a.0, b.0).max(relative(a.1, b.1)))
                .fold(0.0, f64::max);
            worst = worst.max(diff);
            let (last, one) = (sharded.last().unwrap(), single.last().unwrap());
            println!(
                "{:<18} {:>12.5e} {:>12.5e} {:>12.5e} {:>12.5e} {:>10.1e}",
                run.name, last.0, last.1, one.0, one.1, diff
            );
        }
    }
    let steps = (runs.len() * epochs * STEPS_PER_EPOCH) as f64;
    let mut per_step = [timing.compute, timing.communication, timing.bloop, timing.exchange, timing.transfers]
        .map(|t| t / steps * 1e6);
    comm.all_reduce_max(&mut per_step).unwrap();
    if rank == 0 {
        let [compute, communication, bloop, exchange, transfers] = per_step;
        println!("mean per step, slowest rank, microseconds:");
        println!("  compute (gradients of this rank's rows)        {compute:>10.1}");
        println!("  communication (reduce-scatter + all-gather)    {communication:>10.1}");
        println!("  BLOOP step (upload, sums pass, exchange, apply) {bloop:>9.1}");
        println!("    of which exchange_sums (readback + all-reduce) {exchange:>8.1}");
        println!("  direction readback for the all-gather          {transfers:>10.1}");
        println!(
            "max relative difference of any loss from the single-process run: {worst:.2e} (tolerance {TOLERANCE:e})"
        );
        if worst > TOLERANCE || worst.is_nan() {
            eprintln!("FAILED: the sharded run does not match the single-process run");
            comm.abort(1);
        }
        println!("OK: {size} ranks match the single-process run");
    }
}

//! How long binding takes for models with very many leaves, measured from outside the crate
//! through the public API: a pool of N tiny leaves, a state over it, and `bind_pool`.
//!
//! `cargo run --release --example bind_time` (10^3, 10^4 and 10^5 leaves of 3 elements);
//! `-- --help` lists the options.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use bloop::{BloopState, Config, EmaInits, GpuContext, GradientPool, Kernels, Layout, Method};

/// Times pool creation, state creation and `bind_pool` for layouts of many tiny leaves.
#[derive(Parser)]
#[command(name = "bind_time")]
struct Args {
    /// Leaf counts to time, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000u64, 10_000, 100_000])]
    leaves: Vec<u64>,
    /// Elements per leaf.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    leaf_len: u64,
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

fn run(args: Args) -> bloop::Result<()> {
    let gpu = GpuContext::from_env()?;
    let kernels = Kernels::new(&gpu.device);
    println!("adapter: {}", gpu.describe());
    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>10} {:>11}",
        "leaves", "elements", "pool s", "state s", "bind s", "dispatches"
    );
    for &count in &args.leaves {
        let layout = Layout::from_lengths(&vec![args.leaf_len; count as usize])?;
        let started = Instant::now();
        let pool = GradientPool::new(&gpu.device, &layout, false)?;
        let pool_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let state = BloopState::new(&kernels, &gpu.queue, &layout, Config::new(Method::Bloop), EmaInits::zeros())?;
        let state_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let bindings = state.bind_pool(&pool)?;
        let bind_s = started.elapsed().as_secs_f64();
        println!(
            "{count:>8} {:>9} {pool_s:>10.3} {state_s:>10.3} {bind_s:>10.3} {:>11}",
            layout.total_elements(),
            bindings.dispatch_count()
        );
    }
    Ok(())
}
